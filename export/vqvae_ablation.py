"""`inpaint-train ablate-vqvae BASE_RUN --out DIR`: VQ-VAE training choices on the same budget, judged by what
the reconstructions give back: log-spectral distance against the representation's own floor, pitch kept, the
family judge's accuracy on them (the ceiling every generated note is held to), and how much darker they are
than the originals (the level above 2.7 kHz against below).

Each variant forks the base run (its VQ-VAE, normaliser and priors, warm-started), changes the VQ-VAE's
config, trains the VQ-VAE on for the same minutes, and is exported and measured through onnxruntime.
Resumable: a variant already in `vqvae.json` is kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from export import run_folder, timbre, train
from export.config import RunConfig, from_dict
from export.evaluate import reconstruct
from export.nsynth import load_splits
from export.onnx_export import export_bundle
from server.bundle import Bundle

VARIANTS = {  # name → VQ-VAE config changes
    "mse": [],
    "audible": ["vqvae.audible_weight=4.0"],
}


def measure(bundle_dir: Path, data: Path, notes: int, seed: int = 1) -> dict:
    """What the bundle's VQ-VAE gives back of `notes` validation notes of `data` (a seeded draw; the split the
    bundle's config names), through onnxruntime."""
    bundle = Bundle(bundle_dir)
    split = load_splits(data, from_dict(RunConfig, bundle.manifest.raw["config"]).data)
    valid = split["valid"]
    picked = [valid[i] for i in sorted(np.random.default_rng(seed).permutation(len(valid))[:notes])]
    rows = reconstruct(bundle, picked)
    judge = timbre.train_judge(split["train"], bundle, data, n_recon=1000).judge
    families = np.array([r.family for r in rows])
    return {
        "lsd": float(np.mean([r.lsd for r in rows])),
        "lsd_representation": float(np.mean([r.lsd_representation for r in rows])),
        "pitch_kept": float(np.mean([r.recon_kept for r in rows if r.input_kept])),
        "family_ceiling": timbre.Judged.of(judge, np.stack([r.timbre for r in rows]), families).accuracy,
        "family_real": timbre.Judged.of(judge, np.stack([r.timbre_original for r in rows]), families).accuracy,
        "darker_db": float(np.mean([r.darker_db for r in rows])),
    }


def ablate_vqvae(base: Path, out: Path, variants: list[str], minutes: float, overrides: list[str], notes: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "vqvae.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    data = run_folder.load_run(base)[1]

    def save(name: str, figures: dict) -> None:
        results[name] = figures
        results_path.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: figures}), flush=True)

    if "base" not in results:
        export_bundle(base, out / "base-bundle", "base")
        save("base", measure(out / "base-bundle", data, notes))
    for name in variants:
        if name in results:
            continue
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        # Minutes are the budget: the step limit is lifted above wherever the base run stopped.
        run_folder.fork_run(base, run, ["train.vqvae_steps=100000000", *overrides, *VARIANTS[name]], warm_start=True)
        trained = train.train_vqvae(run, "cpu", minutes)
        export_bundle(run, run / "bundle", name)
        save(name, {"steps_run": trained.get("steps_run"), **measure(run / "bundle", data, notes)})
    return results
