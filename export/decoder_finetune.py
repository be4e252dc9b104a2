"""`inpaint-train finetune-decoder BUNDLE --data DATA --out DIR --minutes M`: a bundle's VQ-VAE decoder trained
on, its encoder and codebooks frozen.

Every note keeps the codes it had, bit for bit, so the priors and the family tables, trained and counted on
those codes, stay valid: only `vqvae_decoder.onnx` changes. The torch VQ-VAE is read back from the bundle's
graphs (`export.live_vs_eager`, checked against onnxruntime); the decoder (the top map's upsampling and the
decoder stack) trains on the training split of DATA with the VQ-VAE's reconstruction loss
(`VQVAE2.reconstruction_error`, `vqvae.audible_weight` included). A note's codes come from the frozen encoder
the first time it is drawn and are kept (in the checkpoint too), so later epochs skip the encoder.

DIR is a run folder: `run.json` (the bundle's config, with the fine-tune's `train.*` settings and
`vqvae.audible_weight`), `commands.jsonl`, and `decoder.pt` (the decoder, its optimiser, the step, the codes so
far), written by `export.train.optimise` every `train.checkpoint_every` steps and when the budget ends: a rerun
continues where the last one stopped. Then `DIR/bundle` is BUNDLE with only its decoder graph re-exported
(every other file checked byte-identical) and `DIR/finetune.json` holds the losses and the VQ-VAE's figures
(`export.vqvae_ablation.measure`) before and after.
"""

from __future__ import annotations

import copy
import datetime
import filecmp
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from export import run_folder, train
from export.bundle_torch import check_read_back, read_torch_models
from export.config import RunConfig, override
from export.nsynth import load_splits
from export.onnx_export import _read_command_log, export_checked
from export.spectrogram_torch import MelIF
from export.vqvae import VQVAE2
from export.vqvae_ablation import measure
from server import bundle as bundle_io
from server import codemaps
from server.bundle import Bundle

CHECKPOINT = "decoder"  # DIR/decoder.pt
RESULTS = "finetune.json"
GRAPH = "vqvae_decoder"
TRAINED = ("upsample_t", "dec")  # the VQVAE2 modules behind the decoder graph that have weights of their own
# Before any --set: CPU-sized batches, a fine-tune's learning rate, checkpoints every few minutes on a CPU, and
# no step limit (the budget is --minutes).
SETTINGS = (
    "train.vqvae_batch_size=16",
    "train.lr=1e-4",
    "train.vqvae_steps=1000000000",
    "train.checkpoint_every=100",
    "train.log_every=10",
)
EVAL_NOTES = 64  # notes of each split the loss is measured on before and after


class Decoder(nn.Module):
    """The trainable part: codebook vectors → normalised spectrogram (`VQVAE2.decode_normalized`), its modules
    shared with the VQ-VAE, so its state dict is the decoder's alone."""

    def __init__(self, vqvae: VQVAE2):
        super().__init__()
        for name in TRAINED:
            setattr(self, name, getattr(vqvae, name))
        self.decode = vqvae.decode_normalized

    def forward(self, q_top: torch.Tensor, q_bottom: torch.Tensor) -> torch.Tensor:
        return self.decode(q_top, q_bottom)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_config(out: Path, base: RunConfig, data: Path, overrides: list[str]) -> RunConfig:
    """DIR's config: created from the bundle's with `SETTINGS` and `overrides`, or read back on a rerun (which
    takes no new settings and no other data)."""
    if (out / run_folder.RUN_FILE).is_file():
        if overrides:
            raise ValueError(f"{out} already has its settings (run.json); resume without --set")
        config, trained_on = run_folder.load_run(out)
        if data.resolve() != trained_on:
            raise ValueError(f"{out} fine-tunes on {trained_on}, not {data}; use a new --out for new data")
        return config
    for item in overrides:
        key = item.partition("=")[0]
        if not (key.startswith("train.") or key == "vqvae.audible_weight"):
            raise ValueError(f"--set {item}: only train.* and vqvae.audible_weight (the architecture is the bundle's)")
    config = override(override(base, list(SETTINGS)), overrides)
    run_folder.create_run(out, config, data)
    return config


def losses(vqvae: VQVAE2, splits: dict, config: RunConfig, device: torch.device) -> dict:
    """Reconstruction loss and MSE on the first `EVAL_NOTES` notes of each split."""
    return {
        k: v
        for split in ("train", "valid")
        for k, v in train.evaluate_vqvae(vqvae, splits[split], config, device, EVAL_NOTES, split).items()
        if k.endswith(("_reconstruction", "_mse"))
    }


def fit(
    out: Path, vqvae: VQVAE2, config: RunConfig, notes: list, device: torch.device, minutes: float, source: str
) -> dict:
    """Train the decoder on `notes` for `minutes`, resuming DIR's checkpoint; optimise's figures."""
    ckpt = run_folder.load_checkpoint(out / f"{CHECKPOINT}.pt")
    if ckpt is not None and ckpt["source"] != source:
        raise ValueError(f"{out} fine-tunes another decoder (sha256 {ckpt['source'][:12]}); use a new --out")
    n = len(notes)
    # Each training note's codes (-1: not drawn yet), on the CPU whatever the device.
    cached = {
        "codes_top": torch.full((n, *codemaps.TOP_SHAPE), -1, dtype=torch.int16),
        "codes_bottom": torch.full((n, *codemaps.BOTTOM_SHAPE), -1, dtype=torch.int16),
    }
    if ckpt is not None:
        for key, codes in cached.items():
            codes.copy_(ckpt[key])
    ctx = train.Dist(0, 1, device)
    melif = MelIF(config.spectrogram).to(device)
    decoder = Decoder(vqvae).requires_grad_(True)

    def codes_of(idx: torch.Tensor, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top, bottom = cached["codes_top"], cached["codes_bottom"]
        missing = top[idx, 0, 0] < 0
        if missing.any():
            # float32 under autocast too: the codes are the exported encoder's
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                *_, new_top, new_bottom, _ = vqvae.encode(spec[missing.to(device)])
            top[idx[missing]], bottom[idx[missing]] = new_top.to("cpu", torch.int16), new_bottom.to("cpu", torch.int16)
        return top[idx].long().to(device), bottom[idx].long().to(device)

    def batches(seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for (idx,) in train.shuffled_batches((torch.arange(n),), config.train.vqvae_batch_size, ctx, seed):
            yield idx, train.load_audio([notes[i] for i in idx.tolist()], config, device)

    def train_step(model: nn.Module, batch: tuple) -> train.StepResult:
        idx, audio = batch
        spec = melif(train.to_float(audio))
        loss, mse = vqvae.reconstruction_error(model(*vqvae.quantized(*codes_of(idx, spec))), spec)
        return train.StepResult(loss, lambda: {"loss": loss.item(), "mse": mse.item()})

    return train.optimise(
        ctx,
        out,
        CHECKPOINT,
        decoder,
        config.train.vqvae_steps,
        config.train.vqvae_batch_size,
        batches,
        train_step,
        dict,
        config,
        config.train.lr,
        minutes,
        source=source,
        codes_top=cached["codes_top"],
        codes_bottom=cached["codes_bottom"],
    )


def write_bundle(source: Path, out: Path, vqvae: VQVAE2, provenance: dict) -> dict:
    """`source` copied into `out` with its decoder graph re-exported from `vqvae` (checked against torch) and
    the manifest's parity and provenance updated; every other file is checked byte-identical. The manifest is
    written last, as `export_bundle` does."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(bundle_io.MANIFEST))
    manifest = copy.deepcopy(bundle_io.read_manifest(source).raw)
    entry, parity = export_checked(GRAPH, vqvae, {}, out)
    if entry != manifest["graphs"][GRAPH]:
        raise ValueError(f"{source}: its decoder graph entry {manifest['graphs'][GRAPH]} is not the export's {entry}")
    unchanged = sorted(p.name for p in source.iterdir() if p.name not in (entry["file"], bundle_io.MANIFEST))
    differ = [name for name in unchanged if not filecmp.cmp(source / name, out / name, shallow=False)]
    if differ:
        raise ValueError(f"{out}: only {entry['file']} may differ from {source}, but so do {', '.join(differ)}")
    manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest["parity"]["max_abs_diff"][GRAPH] = parity
    manifest["provenance"]["decoder_finetune"] = {**provenance, "unchanged_files": unchanged}
    bundle_io.write_manifest(out, manifest)
    return manifest


def finetune_decoder(
    bundle_dir: Path, data: Path, out: Path, minutes: float, overrides: list[str], notes: int, device: str = "auto"
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    dev = train.resolve_device(device)
    base, vqvae, _ = read_torch_models(bundle_dir, priors=False)
    read_back = check_read_back(Bundle(bundle_dir), vqvae, {})
    config = run_config(out, base, data, overrides)
    vqvae.cfg = config.vqvae  # the loss's audible_weight
    vqvae.requires_grad_(False).eval().to(dev)  # eval: the codebooks' EMA never moves
    splits = load_splits(data, config.data)
    results_path = out / RESULTS
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    source = sha256(bundle_dir / bundle_io.read_manifest(bundle_dir).graphs[GRAPH])

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=2))

    if "loss_before" not in results:
        results.update(bundle=str(bundle_dir), source_decoder_sha256=source, sessions=[])
        results["loss_before"] = losses(vqvae, splits, config, dev)
        save()
    figures = fit(out, vqvae, config, splits["train"], dev, minutes, source)
    step = figures["step"]
    results["sessions"].append({k: figures[k] for k in ("steps_run", "train_seconds", "examples_per_s", "step")})
    results["loss_after"] = losses(vqvae, splits, config, dev)
    save()
    vqvae.cpu()
    provenance = {
        "from": {"bundle": str(bundle_dir), "vqvae_decoder_sha256": source},
        "trained": [f"vqvae.{name}" for name in TRAINED],
        "frozen": "the encoder and both codebooks: every note's codes are unchanged",
        "data": str(data.resolve()),
        "steps": step,
        "batch_size": config.train.vqvae_batch_size,
        "minutes": round(sum(s["train_seconds"] for s in results["sessions"]) / 60, 2),
        "settings": {
            **{
                key: getattr(config.train, key)
                for key in ("vqvae_batch_size", "lr", "warmup_steps", "cooldown", "seed")
            },
            "audible_weight": config.vqvae.audible_weight,
        },
        "commands": _read_command_log(out),
        "read_back_parity": read_back,
        "loss_before": results["loss_before"],
        "loss_after": results["loss_after"],
    }
    write_bundle(bundle_dir, out / "bundle", vqvae, provenance)
    summary = {
        "bundle": str(out / "bundle"),
        "steps": step,
        "batch_size": config.train.vqvae_batch_size,
        "steps_per_s": round(figures["steps_run"] / figures["train_seconds"], 3) if figures["train_seconds"] else 0,
        **{f"loss_{when}": results[f"loss_{when}"] for when in ("before", "after")},
    }
    if notes <= 0:  # training in several sessions: measure at the last
        results.pop("after", None)
        save()
        return summary
    if results.get("before", {}).get("notes") != notes:
        results["before"] = {"notes": notes, **measure(bundle_dir, data, notes)}
        save()
    results["after"] = {"notes": notes, **measure(out / "bundle", data, notes)}
    save()
    return {**summary, **{when: results[when] for when in ("before", "after")}}
