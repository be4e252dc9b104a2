"""inpaint-train: from audio to a verified model bundle.

  inpaint-train dataset --soundfont SF2 --out DATA        render an NSynth-format dataset with FluidSynth
  inpaint-train vqvae RUN --data DATA --preset small      train the VQ-VAE-2 (creates the run folder)
  inpaint-train codes RUN                                 encode both splits into codemaps
  inpaint-train prior RUN --layer top|bottom              train one Transformer prior
  inpaint-train export RUN --out BUNDLE                   write the ONNX bundle, checked against torch
  inpaint-train pipeline RUN --data DATA --out BUNDLE     all training stages, then export
  inpaint-train evaluate BUNDLE --data DATA                measure a bundle (pitch and timbre): markdown report
  inpaint-train reguide BUNDLE --data DATA --out NEW       re-measure a bundle's harmonic guidance (no training)
  inpaint-train ablate-guidance BUNDLE --data DATA --out DIR   guidance recipes, by pitch and family side by side
  inpaint-train ablate-vqvae RUN --out DIR                 VQ-VAE losses on the same minutes, by what it gives back
  inpaint-train unpack BUNDLE --data DATA --out RUN         a run folder from a bundle, to train its priors on
  inpaint-train finetune-decoder BUNDLE --data DATA --out DIR --minutes M   train a bundle's decoder on (codes kept)
  inpaint-train bench [--server [--markdown docs/benchmarks.md]]   onnxruntime vs torch eager; --server: over OSC

Every training stage resumes from its checkpoint. For several GPUs or nodes, start a stage with torchrun:
  torchrun --nproc_per_node 4 -m export vqvae RUN ...    (one node)
  torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:PORT -m export prior RUN --layer top
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from export.config import PRESETS
from server.codemaps import LAYERS


def _pitches(text: str) -> list[int]:
    """'24:84' (inclusive range) or '48,60,72'."""
    if ":" in text:
        lo, _, hi = text.partition(":")
        return list(range(int(lo), int(hi) + 1))
    return _ints(text)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def cmd_dataset(args) -> dict:
    from export.soundfont_dataset import render_dataset

    return render_dataset(
        args.soundfont,
        args.out,
        pitches=args.pitches,
        velocities=args.velocities,
        workers=args.workers,
        programs=set(args.programs) if args.programs else None,
    )


def _start_run(args) -> None:
    from export import config as cfg
    from export import run_folder, train

    if not train.is_main_process():
        return  # rank 0 writes the run folder; the others read it after the group's first barrier
    steps = [
        f"train.{key}={value}"
        for key, value in (("vqvae_steps", args.vqvae_steps), ("prior_steps", args.prior_steps))
        if value is not None
    ]
    if (args.run / run_folder.RUN_FILE).is_file():
        if args.set or args.preset_given:
            raise ValueError(f"{args.run} already exists with its own config; resume without --preset/--set")
        _, data = run_folder.load_run(args.run)
        if args.data is not None and args.data.resolve() != data:
            raise ValueError(f"{args.run} was trained on {data}, not {args.data}; start a new run for new data")
        _extend(args.run, steps)
        return
    if args.data is None:
        raise ValueError("--data DATA is needed to start a new run")
    run_folder.create_run(args.run, cfg.override(cfg.override(cfg.preset(args.preset), args.set), steps), args.data)


def _extend(run: Path, steps: list[str]) -> None:
    """Resuming with more steps (train longer) is the one change an existing run accepts."""
    from export import config as cfg
    from export import run_folder, train

    if steps and train.is_main_process():  # the other ranks read it after the group's first barrier
        config, data = run_folder.load_run(run)
        run_folder.create_run(run, cfg.override(config, steps), data)


def cmd_vqvae(args) -> dict:
    from export import train

    _start_run(args)
    return train.train_vqvae(args.run, args.device, args.minutes)


def cmd_codes(args) -> dict:
    from export import train

    return train.extract_codes(args.run, args.device)


def cmd_prior(args) -> dict:
    from export import train

    _extend(args.run, [f"train.prior_steps={args.steps}"] if args.steps else [])
    return train.train_prior(args.run, args.layer, args.device, args.minutes)


def cmd_export(args) -> dict:
    from export.onnx_export import export_bundle

    manifest = export_bundle(args.run, args.out, args.name)
    return {"bundle": str(args.out), "parity": manifest["parity"]["max_abs_diff"]}


def cmd_pipeline(args) -> dict:
    import time

    from export import train
    from export.onnx_export import export_bundle

    _start_run(args)
    started = time.monotonic()
    shares = dict(zip(("vqvae", "bottom", "top"), args.split, strict=True))

    def minutes(stage: str) -> float | None:
        """The stage's share of what is left of the budget (codes and export take their own time)."""
        if args.minutes is None:
            return None
        left = args.minutes - (time.monotonic() - started) / 60
        remaining = sum(v for k, v in shares.items() if k in stages)
        return max(left * shares[stage] / remaining, 0.0)

    stages = ["vqvae", "bottom", "top"]
    out = {"vqvae": train.train_vqvae(args.run, args.device, minutes("vqvae"))}
    stages.remove("vqvae")
    out["codes"] = train.extract_codes(args.run, args.device)
    # The bottom prior first: its monitor needs only real top maps, and the top prior's monitor then generates
    # whole notes with it.
    for layer in ("bottom", "top"):
        out[f"{layer}_prior"] = train.train_prior(args.run, layer, args.device, minutes(layer))
        stages.remove(layer)
    out["parity"] = export_bundle(args.run, args.out, args.name)["parity"]["max_abs_diff"]
    return out


def cmd_evaluate(args) -> dict:
    from dataclasses import replace

    from export.evaluate import DEFAULTS, evaluate

    settings = replace(
        DEFAULTS,
        guidance=DEFAULTS.guidance if args.guidance is None else args.guidance,
        harmonic=DEFAULTS.harmonic if args.harmonic is None else args.harmonic,
        timbre=DEFAULTS.timbre if args.timbre is None else args.timbre,
    )
    return evaluate(
        args.bundle, args.data, args.out, args.notes, args.samples, args.seed, args.test_note, args.unseen, settings
    )


def cmd_fork(args) -> dict:
    from export import run_folder

    config = run_folder.fork_run(args.base, args.run, args.set, args.warm_start)
    return {"run": str(args.run), "top_prior": config.top_prior, "bottom_prior": config.bottom_prior}


def cmd_unpack(args) -> dict:
    from export.unpack import unpack

    return unpack(args.bundle, args.data, args.run, args.set, args.train_notes, args.codes_cache)


def cmd_ablate(args) -> dict:
    from export.ablation import ablate

    return ablate(
        args.run,
        args.out,
        args.variants.split(","),
        (args.bottom_steps, args.top_steps),
        (args.bottom_minutes, args.top_minutes),
        args.init,
        args.notes,
        device=args.device,
        markdown=args.markdown,
        overrides=args.set,
        train_variants=not args.measure_only,
        reexport=not args.keep_bundles,
        harmonic=tuple(args.harmonic_weights),
    )


def cmd_reguide(args) -> dict:
    from export.family_guidance import FamilyRecipe
    from export.reguide import reguide

    weights = {"top": args.top, "bottom": args.bottom}
    family = FamilyRecipe(args.pitch_region, args.family_notes, tuple(args.family_layers), args.family_floor)
    command = shlex.join(["inpaint-train", *sys.argv[1:]])
    manifest = reguide(args.bundle, args.data, args.out, args.recipe, weights, args.codes_cache, family, command)
    guidance = manifest["provenance"]["harmonic_guidance"]
    return {"bundle": str(args.out), "harmonic_guidance": guidance, "family_guidance": manifest["family_guidance"]}


def cmd_ablate_guidance(args) -> dict:
    from export.guidance_ablation import Variant, ablate_guidance

    variants = [Variant.parse(v) for v in args.variants.split(",")]
    return ablate_guidance(
        args.bundle, args.data, args.out, variants, args.notes, args.samples, args.markdown, args.seed
    )


def cmd_ablate_vqvae(args) -> dict:
    from export.vqvae_ablation import ablate_vqvae

    return ablate_vqvae(args.run, args.out, args.variants.split(","), args.minutes, args.set, args.notes)


def cmd_finetune_decoder(args) -> dict:
    from export.decoder_finetune import finetune_decoder

    return finetune_decoder(args.bundle, args.data, args.run, args.minutes, args.set, args.notes, args.device)


def cmd_bench(args) -> dict:
    from export.sampling_speed import run_bench

    if args.server:
        from export.live_vs_eager import run_server_bench
        from server.__main__ import default_bundle

        bundle = args.bundle or default_bundle()
        return run_server_bench(bundle, args.threads, args.repeats or 50, args.markdown, args.osc)
    return run_bench(args.preset, args.threads, args.repeats or 7)


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="NSynth-layout dataset folder (needed for a new run)")
    p.add_argument("run", type=Path, help="run folder (created if missing)")
    p.add_argument("--preset", default=None, choices=list(PRESETS), help="model sizes (default: small)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. vqvae.hidden=96 or train.lr=1e-4",
    )
    p.add_argument("--vqvae-steps", type=int, help="shortcut for --set train.vqvae_steps=N")
    p.add_argument("--prior-steps", type=int, help="shortcut for --set train.prior_steps=N")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="inpaint-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    device = {"default": "auto", "choices": ["auto", "cpu", "cuda"], "help": "training device (default: %(default)s)"}

    p = sub.add_parser("dataset", help="render an NSynth-format dataset from GM soundfonts")
    p.add_argument("--soundfont", action="append", required=True, help="a .sf2/.sf3 file (repeatable)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--pitches",
        type=_pitches,
        default=list(range(24, 85)),
        help="LO:HI MIDI inclusive, or a comma list (default 24:84)",
    )
    p.add_argument("--velocities", type=_ints, default=[25, 50, 75, 100, 127], help="comma list (default NSynth's)")
    p.add_argument("--programs", type=_ints, default=None, help="only these GM programs (0-based, comma list)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")

    minutes = {"type": float, "help": "stop at this wall-clock budget (or the step count, whichever comes first)"}
    p = sub.add_parser("vqvae", help="train the VQ-VAE-2")
    _add_run_options(p)
    p.add_argument("--device", **device)
    p.add_argument("--minutes", **minutes)

    for name, helptext in (("codes", "extract codemaps of both splits"), ("prior", "train a prior")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("run", type=Path)
        p.add_argument("--device", **device)
        if name == "prior":
            p.add_argument("--layer", required=True, choices=LAYERS)
            p.add_argument("--steps", type=int, help="total steps (raise it to train an existing prior longer)")
            p.add_argument("--minutes", **minutes)

    p = sub.add_parser("export", help="export a run to an ONNX bundle")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", help="bundle name (default: the run folder's)")

    p = sub.add_parser("pipeline", help="every training stage, then export")
    _add_run_options(p)
    p.add_argument("--out", type=Path, required=True, help="bundle folder")
    p.add_argument("--name")
    p.add_argument("--device", **device)
    p.add_argument("--minutes", type=float, help="one wall-clock budget for the whole pipeline, split by --split")
    p.add_argument(
        "--split",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[0.4, 0.35, 0.25],
        help="shares of the training time: VQ-VAE, bottom prior, top prior (default 0.4,0.35,0.25)",
    )

    p = sub.add_parser("evaluate", help="measure a bundle; writes a markdown report with figures and audio")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on (its validation split)")
    p.add_argument("--out", type=Path, default=Path("docs/evaluation.md"), help="report (media in a folder beside)")
    p.add_argument("--notes", type=int, default=400, help="validation notes reconstructed (default %(default)s)")
    p.add_argument("--samples", type=int, default=2, help="generations per family and pitch (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-note", help="validation note of the inpainting experiments (default: a piano near C4)")
    p.add_argument(
        "--unseen", type=Path, help="a dataset from a soundfont never trained on: reconstruction and inpainting"
    )
    p.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the server's)")
    p.add_argument("--harmonic", type=float, help="harmonic guidance weight (default: the server's)")
    p.add_argument("--timbre", type=float, help="family guidance weight (default: the server's)")

    p = sub.add_parser("fork", help="a new run on another run's VQ-VAE and codes, with its own prior design")
    p.add_argument("base", type=Path, help="the run whose VQ-VAE, normaliser and codes are shared")
    p.add_argument("run", type=Path, help="the new run folder")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="e.g. top_prior.harmonic=true"
    )
    p.add_argument("--warm-start", action="store_true", help="the priors start from the base run's (grafted)")

    p = sub.add_parser("unpack", help="a run folder from a bundle: its models as checkpoints, the data's codes")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on (codes of both splits)")
    p.add_argument("--out", dest="run", metavar="RUN", type=Path, required=True, help="the new run folder")
    p.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE", help="e.g. train.num_workers=2")
    p.add_argument("--train-notes", type=int, help="training codes of this many notes (reguide's draw; default all)")
    p.add_argument("--codes-cache", type=Path, help="with --train-notes: reguide's cache of training codes (.npz)")

    p = sub.add_parser("ablate", help="prior designs on the same codes and budget, measured by pitch")
    p.add_argument("run", type=Path, help="the base run: its VQ-VAE and codes are shared")
    p.add_argument("--out", type=Path, required=True, help="folder of the variants' runs and ablation.json")
    p.add_argument("--variants", default="today,harmonic,cfg,harmonic+cfg", help="(default %(default)s)")
    p.add_argument("--bottom-steps", type=int, default=1000)
    p.add_argument("--top-steps", type=int, default=1000)
    p.add_argument("--bottom-minutes", type=float)
    p.add_argument("--top-minutes", type=float)
    p.add_argument("--init", action="store_true", help="fine-tune from the base run's priors instead of scratch")
    p.add_argument("--measure-only", action="store_true", help="re-export and re-measure the variants in --out")
    p.add_argument(
        "--keep-bundles", action="store_true", help="with --measure-only: measure each variant's bundle/ unexported"
    )
    p.add_argument(
        "--harmonic-weights",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[0.0, 1.0],
        help="harmonic guidance weights measured (default 0,1)",
    )
    p.add_argument("--notes", type=int, default=60, help="validation notes for inpainting (default %(default)s)")
    p.add_argument("--markdown", type=Path, help="also write the table, e.g. docs/ablations.md")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="e.g. train.prior_lr=1e-4")
    p.add_argument("--device", **device)

    from export.family_guidance import FAMILY_NOTES
    from export.harmonics import DEFAULT_RECIPE, PROFILE_RECIPES

    p = sub.add_parser("reguide", help="a bundle with its harmonic guidance re-measured (no training)")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on (its training split)")
    p.add_argument("--out", type=Path, required=True, help="the new bundle folder")
    p.add_argument("--recipe", choices=PROFILE_RECIPES, default=DEFAULT_RECIPE, help="(default %(default)s)")
    p.add_argument("--top", type=float, default=1.0, help="weight baked into the top prior (default 1)")
    p.add_argument("--bottom", type=float, default=1.0, help="weight baked into the bottom prior (default 1)")
    p.add_argument(
        "--pitch-region",
        type=int,
        default=0,
        help="family tables counted per pitch region this many semitones wide (default 0: one table)",
    )
    p.add_argument(
        "--family-notes",
        type=int,
        default=FAMILY_NOTES,
        help="training notes the family tables count (default %(default)s)",
    )
    p.add_argument(
        "--family-layers",
        nargs="+",
        choices=LAYERS,
        default=list(LAYERS),
        help="the priors family guidance leans (default: both)",
    )
    p.add_argument("--family-floor", type=float, help="the lowest log-ratio the family tables keep (default: all)")
    p.add_argument("--codes-cache", type=Path, help="an .npz keeping the training notes' codes between runs")

    p = sub.add_parser("ablate-guidance", help="harmonic guidance recipes on one bundle, by pitch and family")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on")
    p.add_argument("--out", type=Path, required=True, help="folder of the variants' bundles and guidance.json")
    p.add_argument(
        "--variants",
        default="level:0,level:1,shape:1",
        help="recipe:top:bottom:harmonic or recipe:harmonic, comma-separated (default %(default)s)",
    )
    p.add_argument("--notes", type=int, default=40, help="validation notes for inpainting (default %(default)s)")
    p.add_argument("--samples", type=int, default=2, help="notes per family and pitch (default %(default)s)")
    p.add_argument("--markdown", type=Path, help="also write the table")
    p.add_argument("--seed", type=int, default=0, help="of the notes generated and inpainted (default 0)")

    p = sub.add_parser("ablate-vqvae", help="VQ-VAE training choices, same minutes, by what reconstructions keep")
    p.add_argument("run", type=Path, help="the base run: its VQ-VAE is trained on in each variant")
    p.add_argument("--out", type=Path, required=True, help="folder of the variants' runs and vqvae.json")
    p.add_argument("--variants", default="mse,audible", help="(default %(default)s)")
    p.add_argument("--minutes", type=float, default=10.0, help="VQ-VAE training time per variant")
    p.add_argument("--notes", type=int, default=150, help="validation notes reconstructed (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="e.g. train.lr=1e-4")

    p = sub.add_parser("finetune-decoder", help="a bundle's VQ-VAE decoder trained on, encoder and codebooks frozen")
    p.add_argument("bundle", type=Path)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on (its training split)")
    p.add_argument(
        "--out", dest="run", metavar="DIR", type=Path, required=True, help="run folder (a rerun resumes); DIR/bundle"
    )
    p.add_argument("--minutes", type=float, required=True, help="training time of this session")
    p.add_argument(
        "--notes", type=int, default=100, help="validation notes measured before and after (%(default)s; 0: none)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="train.* or vqvae.audible_weight"
    )
    p.add_argument("--device", **device)

    p = sub.add_parser("bench", help="prior decoding step: onnxruntime vs torch eager, and full sampling time")
    p.add_argument("--preset", default="small", choices=list(PRESETS))
    p.add_argument("--threads", type=int, default=2, help="CPU threads for both runtimes (default %(default)s)")
    p.add_argument("--repeats", type=int, help="full samplings timed (default 7; 50 edits with --server)")
    p.add_argument("--server", action="store_true", help="every operation over OSC, against torch eager and the floor")
    p.add_argument("--bundle", type=Path, help="with --server: the bundle (default: the shipped one)")
    p.add_argument("--markdown", type=Path, help="with --server: also write the report, e.g. docs/benchmarks.md")
    p.add_argument(
        "--osc",
        type=Path,
        help="with --server: the figures of an earlier `inpaint-osc bench` (its JSON), not re-measured",
    )
    return ap


COMMANDS = {
    "dataset": cmd_dataset,
    "vqvae": cmd_vqvae,
    "codes": cmd_codes,
    "prior": cmd_prior,
    "export": cmd_export,
    "pipeline": cmd_pipeline,
    "evaluate": cmd_evaluate,
    "ablate": cmd_ablate,
    "reguide": cmd_reguide,
    "ablate-guidance": cmd_ablate_guidance,
    "ablate-vqvae": cmd_ablate_vqvae,
    "finetune-decoder": cmd_finetune_decoder,
    "fork": cmd_fork,
    "unpack": cmd_unpack,
    "bench": cmd_bench,
}


def _log_command(args, argv: list[str] | None) -> None:
    """Append this command line to the run folder's log: the bundle's manifest copies it as provenance."""
    from export.run_folder import COMMAND_LOG
    from export.train import is_main_process

    run = getattr(args, "run", None)
    if run is None or args.command == "ablate" or not is_main_process():
        return
    if not (run.is_dir() or args.command in ("vqvae", "pipeline", "fork", "unpack", "finetune-decoder")):
        return
    run.mkdir(parents=True, exist_ok=True)
    line = {
        "command": shlex.join(["inpaint-train", *(sys.argv[1:] if argv is None else argv)]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(run / COMMAND_LOG, "a") as f:
        f.write(json.dumps(line) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if hasattr(args, "preset") and args.command in ("vqvae", "pipeline"):
        args.preset_given = args.preset is not None
        args.preset = args.preset or "small"
    try:
        _log_command(args, argv)
        result = COMMANDS[args.command](args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"inpaint-train {args.command}: error: {exc}", file=sys.stderr)
        return 1
    from export.train import is_main_process

    if is_main_process():  # under torchrun, one report
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
