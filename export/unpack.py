"""A run folder from a bundle: train on from exactly what the server plays.

A shipped bundle is all that is left of a GPU run (its checkpoints stay on the machine that trained it). Its
graphs keep the parameter names, so the torch models read back from them (`live_vs_eager`) are the weights the
server runs; written as checkpoints beside the bundle's config and the dataset's codemaps, they make a run
folder that `fork --warm-start`, `prior` and `export` take like any other.
"""

from __future__ import annotations

import json
from pathlib import Path

from export import run_folder, train
from export.bundle_torch import read_torch_models, training_codes
from export.config import override
from server import codemaps
from server.bundle import Bundle, read_manifest


def unpack(
    bundle_dir: Path,
    data: Path,
    run: Path,
    overrides: list[str],
    train_notes: int | None = None,
    codes_cache: Path | None = None,
) -> dict:
    """RUN: the bundle's config (changed by `overrides`, train.* only), its VQ-VAE and priors as model-only
    checkpoints at step 0 (a stage trained on starts a fresh optimizer), and the codes of DATA's both splits.
    With `train_notes`, the training codes are the first that many of `reguide`'s fixed draw, read from (and
    added to) its `codes_cache` when given: a bundle reguided before needs no training note encoded again."""
    if (run / run_folder.RUN_FILE).is_file():
        raise ValueError(f"{run} exists already; unpack into a new folder")
    for item in overrides:
        if not item.startswith("train."):
            raise ValueError(f"--set {item}: only train.* (the models are the bundle's; fork to change a design)")
    base, vqvae, priors = read_torch_models(bundle_dir)
    config = override(base, overrides)
    run_folder.create_run(run, config, data)
    manifest = read_manifest(bundle_dir).raw
    # The run's history starts with the bundle's: a bundle exported from it names every command behind it.
    log = run / run_folder.COMMAND_LOG
    earlier = "".join(json.dumps(c) + "\n" for c in manifest.get("provenance", {}).get("commands", []))
    log.write_text(earlier + (log.read_text() if log.is_file() else ""))
    normalizer = manifest["normalizer"]
    (run / run_folder.STATS_FILE).write_text(json.dumps(normalizer, indent=2))
    run_folder.save_checkpoint(run / run_folder.VQVAE_FILE, model=vqvae.state_dict(), step=0, normalizer=normalizer)
    for layer in codemaps.LAYERS:
        state = priors[layer].state_dict()
        run_folder.save_checkpoint(run_folder.prior_file(run, layer), model=state, step=0, config=config.to_dict())
    if train_notes is None:
        counts = train.extract_codes(run)
    else:
        codes = training_codes(Bundle(bundle_dir), data, train_notes, codes_cache)
        fields = (codes[k] for k in ("top", "bottom", "pitch", "family"))
        counts = {"train": run_folder.write_codes(run, "train", *fields), **train.extract_codes(run, splits=("valid",))}
    return {"run": str(run), "bundle": str(bundle_dir), "codes": counts}
