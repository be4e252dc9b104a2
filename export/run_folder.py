"""The run folder: where a training run lives and how it is opened, forked and read back.

`run.json` (resolved config and data path), `commands.jsonl` (every inpaint-train command run on it),
`stats.json` (normaliser), `vqvae.pt`, `codes/{train,valid}.npz`, `top_prior.pt`, `bottom_prior.pt`: created,
loaded and forked (with priors grafted) here, with the checkpoints, the models rebuilt from them, the code
loaders and the priors' code profiles. `export.train` runs the training loops over it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from export.config import RunConfig, from_dict
from export.prior import Prior
from export.vqvae import VQVAE2
from server import codemaps
from server.dsp import Normalizer

RUN_FILE = "run.json"
COMMAND_LOG = "commands.jsonl"  # every inpaint-train command run on this folder, in order
VQVAE_FILE = "vqvae.pt"
STATS_FILE = "stats.json"  # the spectrogram normaliser the VQ-VAE was trained with
CODES_DIR = "codes"
TENSORBOARD_DIR = "tb"


def prior_file(run: Path, layer: str) -> Path:
    return run / f"{layer}_prior.pt"


def codes_file(run: Path, split: str) -> Path:
    """RUN/codes/{split}.npz (`write_codes` writes it, `code_dataset` reads it)."""
    return run / CODES_DIR / f"{split}.npz"


def create_run(run: Path, config: RunConfig, data: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / RUN_FILE).write_text(json.dumps({"data": str(Path(data).resolve()), "config": config.to_dict()}, indent=2))


def load_run(run: Path) -> tuple[RunConfig, Path]:
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run}: not a run folder (no {RUN_FILE}); start one with `inpaint-train vqvae`")
    data = json.loads(path.read_text())
    return from_dict(RunConfig, data["config"]), Path(data["data"])


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a broken checkpoint


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def load_vqvae(run: Path, config: RunConfig) -> VQVAE2:
    ckpt = load_checkpoint(run / VQVAE_FILE)
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no vqvae.pt; run `inpaint-train vqvae` first")
    model = VQVAE2(config.vqvae, config.spectrogram, Normalizer.from_dict(ckpt["normalizer"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def build_prior(config: RunConfig, layer: str) -> Prior:
    return Prior(
        config.top_prior if layer == "top" else config.bottom_prior,
        config.vqvae.n_codes,
        layer,
        config.data.pitch_min,
        config.data.pitch_max,
        len(config.data.families),
        config.spectrogram,
    )


CodeSet = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # top (N, 128), bottom (N, 512), pitch, family


def code_dataset(run: Path, split_name: str, device: torch.device | str = "cpu") -> CodeSet:
    """(top sequences (N, 128), bottom sequences (N, 512), pitch (N,), family (N,)) in the priors' token
    orders, int64 on `device`."""
    path = codes_file(run, split_name)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `inpaint-train codes` first")
    z = np.load(path)
    top = codemaps.to_sequence(z["top"].astype(np.int64), "top")
    bottom = codemaps.to_sequence(z["bottom"].astype(np.int64), "bottom")
    fields = (top, bottom, z["pitch"].astype(np.int64), z["family"].astype(np.int64))
    return tuple(torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in fields)  # type: ignore[return-value]


def fork_run(base: Path, run: Path, overrides: list[str], warm_start: bool = False) -> RunConfig:
    """A new run folder sharing `base`'s VQ-VAE, normaliser and codes, its config changed by `overrides`
    (e.g. top_prior.harmonic=true, train.prior_batch_size=32): a prior design trained on the same codes.
    With `warm_start` its priors start from `base`'s (`graft`); otherwise they start from scratch."""
    from export.config import override

    config, data = load_run(base)
    config = override(config, overrides)
    if (run / RUN_FILE).is_file():
        raise ValueError(f"{run} exists already; fork into a new folder")
    create_run(run, config, data)
    for name in (VQVAE_FILE, STATS_FILE):
        shutil.copy(base / name, run / name)
    # The new run's history starts with the base run's: its manifest then names every command behind it.
    log, base_log = run / COMMAND_LOG, base / COMMAND_LOG
    own = log.read_text() if log.is_file() else ""
    log.write_text((base_log.read_text() if base_log.is_file() else "") + own)
    (run / CODES_DIR).symlink_to((base / CODES_DIR).resolve())
    if warm_start:
        for layer in codemaps.LAYERS:
            model = build_prior(config, layer)
            model.load_state_dict(graft(model.state_dict(), load_prior(base, load_run(base)[0], layer)[0].state_dict()))
            save_checkpoint(prior_file(run, layer), model=model.state_dict(), step=0, config=config.to_dict())
    return config


def graft(target: dict, source: dict) -> dict:
    """`source`'s weights wherever they fit `target`'s design: an embedding one row longer gets the mean row
    (a new null label), one row shorter loses its last (a null label no longer used), a parameter the source
    lacks (a harmonic projection) starts at zero, so the new model first computes exactly what the source did."""
    out = {}
    for key, value in target.items():
        old = source.get(key)
        if old is not None and old.shape == value.shape:
            out[key] = old
        elif old is not None and old.shape[1:] == value.shape[1:] and old.shape[0] + 1 == value.shape[0]:
            out[key] = torch.cat([old, old.mean(0, keepdim=True)])
        elif old is not None and old.shape[1:] == value.shape[1:] and old.shape[0] - 1 == value.shape[0]:
            out[key] = old[:-1]
        else:
            out[key] = torch.zeros_like(value)
    return out


@torch.no_grad()
def set_code_profiles(run: Path, vqvae: VQVAE2, priors: list[Prior], notes: int = 2000) -> None:
    """Measure what each code puts in its band (export.harmonics.code_profiles) on up to `notes` training
    codemaps of `run` (a fixed draw) through its VQ-VAE, and hand the profiles to the priors' harmonic
    guidance."""
    from export.harmonics import code_profiles

    path = codes_file(run, "train")
    if not path.is_file():  # an untrained run (benchmarks): no codes to measure, no harmonic guidance
        return
    z = np.load(path)
    pick = np.sort(np.random.default_rng(0).permutation(len(z["top"]))[:notes])
    device = next(vqvae.parameters()).device

    def decode(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        maps = (torch.from_numpy(x.astype(np.int64)).to(device) for x in (top, bottom))
        return vqvae.decode_codes(*maps).float().cpu().numpy()

    profiles = code_profiles(decode, z["top"][pick], z["bottom"][pick], vqvae.cfg.n_codes)
    for prior in priors:
        prior.code_profiles.copy_(torch.from_numpy(profiles[prior.layer]))


def load_prior(run: Path, config: RunConfig, layer: str) -> tuple[Prior, dict]:
    ckpt = load_checkpoint(prior_file(run, layer))
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no {layer}_prior.pt; run `inpaint-train prior {run} --layer {layer}` first")
    model = build_prior(config, layer)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def write_codes(run: Path, split: str, top, bottom, pitch, family) -> int:
    """RUN/codes/{split}.npz, the one layout of a code set: top (N, 32, 4) and bottom (N, 64, 8) uint16, pitch and
    family (N,) int16. Returns N."""
    codes_file(run, split).parent.mkdir(exist_ok=True)
    np.savez(
        codes_file(run, split),
        top=np.asarray(top).astype(np.uint16),
        bottom=np.asarray(bottom).astype(np.uint16),
        pitch=np.asarray(pitch).astype(np.int16),
        family=np.asarray(family).astype(np.int16),
    )
    return len(family)
