"""`inpaint-train ablate BASE_RUN`: prior designs compared on the same codes and the same budget, by pitch.

Each variant is a run folder beside the others (`<out>/<variant>`) sharing the base run's VQ-VAE and codes,
with only its priors' design changed; both priors are trained for the same steps or minutes (from scratch, or
fine-tuned from the base run's priors with `--init`), exported, and measured through the bundle as the server
runs it: generation pitch accuracy on the development grid (every family x pitches between the evaluation
grid's, so the report's own grid stays untouched), inpainting pitch kept on validation notes (the paper's
three experiments), teacher-forced pitch sensitivity and validation loss, and the time of a new note.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import run_folder, train
from export.evaluate import INPAINTING, generate_grid, inpaint_notes, reconstruct
from export.monitor import DEV_PITCHES
from export.nsynth import load_splits
from export.onnx_export import export_bundle
from server.bundle import Bundle
from server.sampling import DEFAULT_HARMONIC, Conditioning

GUIDANCE = 2.0  # the classifier-free guidance weight tried against 1 (off)
VARIANTS = {  # name → changes to both priors' config (--measure-only also takes any run folder under --out)
    "today": {"harmonic": False, "cond_dropout": 0.0},
    "harmonic": {"harmonic": True, "cond_dropout": 0.0},
    "cfg": {"harmonic": False, "cond_dropout": 0.2},
    "harmonic+cfg": {"harmonic": True, "cond_dropout": 0.2},
}


def pitch_figures(gens, inpainted) -> dict:
    """Generation pitch accuracy (overall, worst family), inpainting pitch kept per experiment, sampling time."""
    families = sorted({g.family for g in gens})
    return {
        "generation": float(np.mean([g.kept for g in gens])),
        "worst_family": float(min(np.mean([g.kept for g in gens if g.family == f]) for f in families)),
        **{kind: float(np.mean([x.kept for x in inpainted if x.kind == kind])) for kind, _ in INPAINTING},
        "priors_ms": 1000 * float(np.median([g.priors_s for g in gens])),
    }


def measure(bundle_dir: Path, notes, recon, settings: Conditioning, seed: int = 0) -> dict:
    bundle = Bundle(bundle_dir)
    gens = generate_grid(bundle, 1, seed, settings, DEV_PITCHES)
    return pitch_figures(gens, inpaint_notes(bundle, notes, recon, seed, settings))


def settings_for(design: dict, harmonic: tuple[float, ...] = (0.0, DEFAULT_HARMONIC)) -> list[tuple[float, float]]:
    """(guidance, harmonic) pairs worth measuring: the model alone, then each sampling aid it allows."""
    guidance = [1.0, GUIDANCE] if design["cond_dropout"] > 0 else [1.0]
    return [(g, h) for h in harmonic for g in guidance]


def ablate(
    base: Path,
    out: Path,
    variants: list[str],
    steps: tuple[int, int],
    minutes: tuple[float | None, float | None] = (None, None),
    init: bool = False,
    notes: int = 60,
    device: str = "auto",
    markdown: Path | None = None,
    overrides: list[str] = (),
    train_variants: bool = True,
    harmonic: tuple[float, ...] = (0.0, DEFAULT_HARMONIC),
    reexport: bool = True,
) -> dict:
    """Train (unless `train_variants` is False: the folders exist) and measure each variant; `steps` and
    `minutes` are (bottom, top) budgets. `reexport` False measures each folder's bundle/ as it is (a run
    trained elsewhere, brought back without its codes)."""
    base_config, data = run_folder.load_run(base)
    valid = load_splits(data, base_config.data)["valid"]
    picked = [valid[i] for i in sorted(np.random.default_rng(1).permutation(len(valid))[: 3 * notes])]
    results: dict[str, dict] = {}
    reference = None
    for name in variants:
        folder = out / name
        if train_variants:
            results[name] = {"train": _train_variant(base, folder, name, steps, minutes, init, overrides, device)}
        else:  # the figures each stage stored with its final checkpoint
            results[name] = {"train": {layer: _checkpoint_figures(folder, layer) for layer in ("bottom", "top")}}
        bundle_dir = folder / "bundle"
        if reexport or not (bundle_dir / "manifest.json").is_file():
            export_bundle(folder, bundle_dir, name)
        if reference is None:  # same VQ-VAE for every variant: the notes and their codes once
            bundle = Bundle(bundle_dir)
            recon = reconstruct(bundle, picked)
            keep = [i for i, r in enumerate(recon) if r.input_kept and r.recon_kept][:notes]
            reference = ([picked[i] for i in keep], [recon[i] for i in keep])
        results[name]["sampling"] = {
            f"{g:g}/{h:g}": measure(bundle_dir, *reference, Conditioning(0, 0, guidance=g, harmonic=h))
            for g, h in settings_for(_design(folder), harmonic)
        }
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    summary = {"base": str(base), "steps": steps, "minutes": minutes, "init": init, "notes": len(reference[0]),
               "results": results}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    if markdown is not None:
        markdown.write_text(ablation_markdown(summary))
    return summary


def _train_variant(base, folder, name, steps, minutes, init, overrides, device) -> dict:
    design = VARIANTS[name].items()
    changes = [f"{prior}.{k}={json.dumps(v)}" for prior in ("top_prior", "bottom_prior") for k, v in design]
    shutil.rmtree(folder, ignore_errors=True)  # a variant is always trained anew
    config = run_folder.fork_run(base, folder, [*overrides, *changes], init)
    _, data = run_folder.load_run(base)
    figures = {}
    for layer, layer_steps, layer_minutes in zip(("bottom", "top"), steps, minutes, strict=True):
        # The bottom prior first: the top prior's monitor then generates whole notes with it.
        config = replace(config, train=replace(config.train, prior_steps=layer_steps))
        run_folder.create_run(folder, config, data)
        figures[layer] = _train_figures(train.train_prior(folder, layer, device, layer_minutes))
    return figures


def _design(folder: Path) -> dict:
    prior = run_folder.load_run(folder)[0].top_prior
    return {"harmonic": prior.harmonic, "cond_dropout": prior.cond_dropout}


def _checkpoint_figures(folder: Path, layer: str) -> dict:
    ckpt = run_folder.load_checkpoint(run_folder.prior_file(folder, layer))
    return _train_figures({**ckpt["metrics"], "step": ckpt["step"]})


def _train_figures(metrics: dict) -> dict:
    keys = ("valid_loss", "valid_accuracy", "sensitivity", "family_sensitivity", "examples_per_s", "steps_run", "step",
            "generation_pitch_accuracy", "resample_bottom_pitch_kept")  # fmt: skip
    return {k: metrics[k] for k in keys if k in metrics}


def ablation_markdown(summary: dict) -> str:
    how = "fine-tuned from the base run's priors" if summary["init"] else "trained from scratch"
    lines = [
        "| design | guidance / harmonic guidance | generation pitch accuracy (worst family) | keep top, resample "
        "bottom | first 2 s | lowest quarter | pitch sensitivity top / bottom (nats) | family sensitivity top / bottom "
        "(nats) | valid loss top / bottom |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["results"].items():
        t, b = r["train"]["top"], r["train"]["bottom"]
        for weights, s in r["sampling"].items():
            lines.append(
                f"| {name} | {weights} | {100 * s['generation']:.0f} % ({100 * s['worst_family']:.0f} %) | "
                f"{100 * s['bottom']:.0f} % | {100 * s['time']:.0f} % | {100 * s['frequency']:.0f} % | "
                f"{t.get('sensitivity', float('nan')):.3f} / {b.get('sensitivity', float('nan')):.3f} | "
                f"{t.get('family_sensitivity', float('nan')):.3f} / {b.get('family_sensitivity', float('nan')):.3f} | "
                f"{t['valid_loss']:.3f} / {b['valid_loss']:.3f} |"
            )
    steps = summary["steps"]
    return "\n".join(
        [
            f"Both priors {how} on the same codes for the same budget (bottom {steps[0]}, top {steps[1]} steps"
            + (f", at most {summary['minutes']} minutes" if any(summary["minutes"]) else "")
            + f"). Generation: every family x pitches {', '.join(map(str, DEV_PITCHES))}, one note each. "
            "Guidance 1 is the conditional model alone; harmonic guidance 0 leaves the logits untouched. "
            "(Sampling times are in ablation.json; on a shared machine they are noise: see docs/benchmarks.md.) "
            f"Inpainting: {summary['notes']} validation notes whose original and reconstruction read at pitch.",
            "",
            *lines,
            "",
        ]
    )
