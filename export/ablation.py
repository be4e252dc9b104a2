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
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import train
from export.evaluate import INPAINTING, generate_grid, inpaint_notes, reconstruct
from export.monitor import DEV_PITCHES
from export.nsynth import load_splits
from export.onnx_export import export_bundle
from server.bundle import Bundle
from server.sampling import DEFAULT_GUIDANCE, Conditioning

VARIANTS = {  # name → changes to both priors' config
    "today": {"harmonic": False, "cond_dropout": 0.0},
    "harmonic": {"harmonic": True, "cond_dropout": 0.0},
    "cfg": {"harmonic": False, "cond_dropout": 0.2},
    "harmonic+cfg": {"harmonic": True, "cond_dropout": 0.2},
}


def measure(bundle_dir: Path, notes, recon, guidance: float, seed: int = 0) -> dict:
    bundle = Bundle(bundle_dir)
    settings = Conditioning(0, 0, guidance=guidance)
    t0 = time.perf_counter()
    gens = generate_grid(bundle, 1, seed, settings, DEV_PITCHES)
    per_note = (time.perf_counter() - t0) / len(gens)
    inpainted = inpaint_notes(bundle, notes, recon, seed, settings)
    return {
        "generation": float(np.mean([g.kept for g in gens])),
        "worst_family": float(min(np.mean([g.kept for g in gens if g.family == f]) for f in {g.family for g in gens})),
        **{kind: float(np.mean([x.kept for x in inpainted if x.kind == kind])) for kind, _ in INPAINTING},
        "priors_ms": 1000 * float(np.median([g.priors_s for g in gens])),
        "note_ms": 1000 * per_note,
    }


def ablate(
    base: Path,
    out: Path,
    variants: list[str],
    steps: tuple[int, int],
    minutes: tuple[float | None, float | None] = (None, None),
    init: bool = False,
    notes: int = 60,
    guidance: float = DEFAULT_GUIDANCE,
    device: str = "auto",
    markdown: Path | None = None,
    overrides: list[str] = (),
) -> dict:
    """Train and measure each variant; `steps` and `minutes` are (bottom, top) budgets."""
    base_config, data = train.load_run(base)
    split = load_splits(data, base_config.data)
    valid = split["valid"]
    picked = [valid[i] for i in sorted(np.random.default_rng(1).permutation(len(valid))[: 3 * notes])]
    results: dict[str, dict] = {}
    reference = None
    for name in variants:
        folder = out / name
        changes = [
            f"{prior}.{k}={json.dumps(v)}" for prior in ("top_prior", "bottom_prior") for k, v in VARIANTS[name].items()
        ]
        shutil.rmtree(folder, ignore_errors=True)  # a variant is always trained anew
        config = train.fork_run(base, folder, [*overrides, *changes], init)
        figures: dict = {}
        for layer, layer_steps, layer_minutes in zip(("bottom", "top"), steps, minutes, strict=True):
            # The bottom prior first: the top prior's monitor then generates whole notes with it.
            config = replace(config, train=replace(config.train, prior_steps=layer_steps))
            train.create_run(folder, config, data)
            figures[layer] = train.train_prior(folder, layer, device, layer_minutes)
        bundle_dir = folder / "bundle"
        export_bundle(folder, bundle_dir, name)
        if reference is None:  # same VQ-VAE for every variant: the notes and their codes once
            bundle = Bundle(bundle_dir)
            recon = reconstruct(bundle, picked)
            keep = [i for i, r in enumerate(recon) if r.input_kept and r.recon_kept][:notes]
            reference = ([picked[i] for i in keep], [recon[i] for i in keep])
        weights = [1.0, guidance] if VARIANTS[name]["cond_dropout"] > 0 else [1.0]
        results[name] = {
            "config": {k: getattr(config.top_prior, k) for k in VARIANTS[name]},
            "train": {layer: _train_figures(f) for layer, f in figures.items()},
            "sampling": {f"guidance {w:g}": measure(bundle_dir, *reference, w) for w in weights},
        }
        print(json.dumps({name: results[name]}, indent=1), flush=True)
    summary = {"base": str(base), "steps": steps, "minutes": minutes, "init": init, "notes": len(reference[0]),
               "results": results}  # fmt: skip
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    if markdown is not None:
        markdown.write_text(ablation_markdown(summary))
    return summary


def _train_figures(metrics: dict) -> dict:
    keys = ("valid_loss", "valid_accuracy", "sensitivity", "examples_per_s", "steps_run", "step",
            "generation_pitch_accuracy", "resample_bottom_pitch_kept")  # fmt: skip
    return {k: metrics[k] for k in keys if k in metrics}


def ablation_markdown(summary: dict) -> str:
    how = "fine-tuned from the base run's priors" if summary["init"] else "trained from scratch"
    lines = [
        "| design | guidance | generation pitch accuracy (worst family) | keep top, resample bottom | first 2 s | "
        "lowest quarter | pitch sensitivity top / bottom (nats) | valid loss top / bottom | priors for a new note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in summary["results"].items():
        t, b = r["train"]["top"], r["train"]["bottom"]
        for weight, s in r["sampling"].items():
            lines.append(
                f"| {name} | {weight.split()[1]} | {100 * s['generation']:.0f} % ({100 * s['worst_family']:.0f} %) | "
                f"{100 * s['bottom']:.0f} % | {100 * s['time']:.0f} % | {100 * s['frequency']:.0f} % | "
                f"{t.get('sensitivity', float('nan')):.3f} / {b.get('sensitivity', float('nan')):.3f} | "
                f"{t['valid_loss']:.3f} / {b['valid_loss']:.3f} | {s['priors_ms']:.0f} ms |"
            )
    steps = summary["steps"]
    return "\n".join(
        [
            f"Both priors {how} on the same codes for the same budget (bottom {steps[0]}, top {steps[1]} steps"
            + (f", at most {summary['minutes']} minutes" if any(summary["minutes"]) else "")
            + f"). Generation: every family x pitches {', '.join(map(str, DEV_PITCHES))}, one note each. "
            f"Inpainting: {summary['notes']} validation notes whose original and reconstruction read at pitch.",
            "",
            *lines,
            "",
        ]
    )
