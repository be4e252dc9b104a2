"""Training stages: VQ-VAE, code extraction, and the two priors. Each resumes from its checkpoint.

A run folder holds everything: `run.json` (resolved config and data path), `stats.json` (normaliser),
`vqvae.pt`, `codes/{train,valid}.npz`, `top_prior.pt`, `bottom_prior.pt`, and TensorBoard logs in `tb/`.
On one process it runs on CPU or one GPU; under `torchrun` each process trains a DDP replica (NCCL on GPUs,
gloo on CPU), rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from export.config import RunConfig, from_dict
from export.nsynth import NoteAudio, load_splits
from export.prior import Prior, mask_source
from export.spectrogram_torch import MelIF
from export.vqvae import VQVAE2
from server import codemaps
from server.dsp import Normalizer

RUN_FILE = "run.json"
COMMAND_LOG = "commands.jsonl"  # every inpaint-train command run on this folder, in order


# ---------------------------------------------------------------- run folder and checkpoints


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


# ---------------------------------------------------------------- processes and devices


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str) -> torch.device:
    """'auto' (the GPU when there is one), 'cpu' or 'cuda'; asking for CUDA without it is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def distributed(device: str = "auto"):
    """One process, or a DDP group when started by torchrun (RANK/WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = resolve_device(device).type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        dist.barrier()  # rank 0 has written run.json before any rank reads it
    try:
        yield Dist(dist.get_rank() if world > 1 else 0, world, dev)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _loader(dataset, batch_size: int, ctx: Dist, workers: int, seed: int):
    """Shuffled batches; under DDP each rank reads its own shard."""
    sampler = DistributedSampler(dataset, ctx.world, ctx.rank, shuffle=True, seed=seed) if ctx.world > 1 else None
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(dataset) >= batch_size * ctx.world,
        generator=gen,
        persistent_workers=workers > 0,
    )


def _forever(loader):
    """Endless batches; reshuffles each epoch (and tells a DistributedSampler which epoch it is)."""
    epoch = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _writer(run: Path, ctx: Dist):
    if not ctx.main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run / "tb"))


def _progress(total: int, start: int, ctx: Dist, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, disable=not ctx.main, dynamic_ncols=True)


def _spectrogram_image(spec: torch.Tensor) -> torch.Tensor:
    """(2, F, T) → (1, F, T) log-mel picture in [0, 1], low frequencies at the bottom."""
    x = spec[0].float()
    x = (x - x.min()) / (x.max() - x.min() + 1e-8)
    return x.flip(0)[None]


@dataclass
class StepResult:
    """What one optimisation step reports; `scalars` and `images` are only evaluated on logging steps."""

    loss: torch.Tensor
    scalars: Callable[[], dict[str, float]]
    images: Callable[[], dict[str, torch.Tensor]] = dict


def optimise(
    ctx: Dist,
    run: Path,
    name: str,
    model: nn.Module,
    total_steps: int,
    make_loader: Callable[[int], Any],
    train_step: Callable[[nn.Module, Any], StepResult],
    evaluate: Callable[[], dict],
    config: RunConfig,
    **state,
) -> dict:
    """The loop every stage shares: resume from `<run>/<name>.pt`, optimise with Adam, log to TensorBoard,
    checkpoint every `checkpoint_every` steps and at the end (with the validation metrics and `state`)."""
    tc = config.train
    ckpt_path = run / f"{name}.pt"
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    step, ckpt = 0, load_checkpoint(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    wrapped = DDP(model) if ctx.world > 1 else model
    writer, bar = _writer(run, ctx), _progress(total_steps, step, ctx, name)

    def save(metrics: dict) -> None:
        if ctx.main:
            save_checkpoint(
                ckpt_path,
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                step=step,
                config=config.to_dict(),
                metrics=metrics,
                **state,
            )

    batches = _forever(make_loader(tc.seed + step))  # a resumed run does not replay the same batches
    while step < total_steps:
        result = train_step(wrapped, next(batches))
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if writer and step % tc.log_every == 0:
            scalars = result.scalars()
            for key, value in scalars.items():
                writer.add_scalar(f"{name}/{key}", value, step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k in ("loss", "accuracy")})
        if writer and step % tc.image_every == 0:
            for key, image in result.images().items():
                writer.add_image(f"{name}/{key}", image, step)
        if step % tc.checkpoint_every == 0:
            save({})
    bar.close()
    metrics = evaluate() if ctx.main else {}
    if writer:
        for key, value in metrics.items():
            writer.add_scalar(f"{name}/{key}", value, step)
        writer.close()
    save(metrics)
    return {**metrics, "world_size": ctx.world}


# ---------------------------------------------------------------- VQ-VAE


@torch.no_grad()
def fit_normalizer(notes, config: RunConfig, device: torch.device) -> Normalizer:
    """Per-channel min / max over the first `stats_examples` training notes."""
    melif = MelIF(config.spectrogram).to(device)
    loader = DataLoader(NoteAudio(notes[: config.train.stats_examples], config.spectrogram), batch_size=16)
    lo, hi = torch.full((2,), np.inf), torch.full((2,), -np.inf)
    for audio, _, _ in loader:
        spec = melif(audio.to(device)).cpu()
        lo = torch.minimum(lo, spec.amin(dim=(0, 2, 3)))
        hi = torch.maximum(hi, spec.amax(dim=(0, 2, 3)))
    return Normalizer.fit(lo.numpy(), hi.numpy())


@torch.no_grad()
def evaluate_vqvae(model: VQVAE2, notes, config: RunConfig, device, max_notes: int = 64) -> dict:
    """Validation MSE (normalised) and codebook usage on up to `max_notes` held-out notes."""
    model.eval()
    melif = MelIF(config.spectrogram).to(device)
    mse, used_t, used_b, n = 0.0, set(), set(), 0
    for audio, _, _ in DataLoader(NoteAudio(notes[:max_notes], config.spectrogram), batch_size=8):
        out = model(melif(audio.to(device)))
        mse += out["mse"].item() * audio.shape[0]
        used_t.update(out["codes_top"].unique().tolist())
        used_b.update(out["codes_bottom"].unique().tolist())
        n += audio.shape[0]
    model.train()
    k = config.vqvae.n_codes
    return {
        "valid_mse": mse / max(n, 1),
        "valid_codes_used_top": len(used_t) / k,
        "valid_codes_used_bottom": len(used_b) / k,
        "valid_notes": n,
    }


def train_vqvae(run: Path, device: str = "auto") -> dict:
    with distributed(device) as ctx:
        config, data = load_run(run)
        splits = load_splits(data, config.data)
        torch.manual_seed(config.train.seed)
        ckpt = load_checkpoint(run / "vqvae.pt")
        if ckpt is None:
            normalizer = fit_normalizer(splits["train"], config, ctx.device)
            if ctx.main:
                (run / "stats.json").write_text(json.dumps(normalizer.to_dict(), indent=2))
        else:
            normalizer = Normalizer.from_dict(ckpt["normalizer"])
        model = VQVAE2(config.vqvae, config.spectrogram, normalizer).to(ctx.device)
        melif = MelIF(config.spectrogram).to(ctx.device)
        notes = NoteAudio(splits["train"], config.spectrogram)

        def train_step(wrapped, batch) -> StepResult:
            spec = melif(batch[0].to(ctx.device))  # (B, 2, 1024, 128)
            out = wrapped(spec)
            keys = ("loss", "mse", "commitment", "perplexity_top", "perplexity_bottom")
            return StepResult(
                out["loss"],
                lambda: {k: out[k].item() for k in keys},
                lambda: {
                    "input": _spectrogram_image(model.normalize(spec)[0]),
                    "reconstruction": _spectrogram_image(out["recon"][0]),
                },
            )

        return optimise(
            ctx,
            run,
            "vqvae",
            model,
            config.train.vqvae_steps,
            lambda seed: _loader(notes, config.train.vqvae_batch_size, ctx, config.train.num_workers, seed),
            train_step,
            lambda: evaluate_vqvae(model, splits["valid"], config, ctx.device),
            config,
            normalizer=normalizer.to_dict(),
        )


def load_vqvae(run: Path, config: RunConfig) -> VQVAE2:
    ckpt = load_checkpoint(run / "vqvae.pt")
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no vqvae.pt; run `inpaint-train vqvae` first")
    model = VQVAE2(config.vqvae, config.spectrogram, Normalizer.from_dict(ckpt["normalizer"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


# ---------------------------------------------------------------- codes


@torch.no_grad()
def extract_codes(run: Path, device: str = "auto", batch_size: int = 32) -> dict:
    """Encode every note of both splits → codes/{split}.npz: top (N, 32, 4), bottom (N, 64, 8) uint16, labels."""
    from tqdm import tqdm

    config, data = load_run(run)
    dev = resolve_device(device)
    model = load_vqvae(run, config).to(dev)
    melif = MelIF(config.spectrogram).to(dev)
    (run / "codes").mkdir(exist_ok=True)
    counts = {}
    for name, notes in load_splits(data, config.data).items():
        tops, bottoms, pitches, families = [], [], [], []
        loader = DataLoader(
            NoteAudio(notes, config.spectrogram), batch_size=batch_size, num_workers=config.train.num_workers
        )
        for audio, pitch, family in tqdm(loader, desc=f"codes {name}"):
            *_, codes_t, codes_b, _ = model.encode(melif(audio.to(dev)))
            tops.append(codes_t.cpu().numpy().astype(np.uint16))
            bottoms.append(codes_b.cpu().numpy().astype(np.uint16))
            pitches.append(pitch.numpy())
            families.append(family.numpy())
        np.savez(
            run / "codes" / f"{name}.npz",
            top=np.concatenate(tops),
            bottom=np.concatenate(bottoms),
            pitch=np.concatenate(pitches).astype(np.int16),
            family=np.concatenate(families).astype(np.int16),
        )
        counts[name] = sum(len(t) for t in tops)
    return counts


# ---------------------------------------------------------------- priors


def build_prior(config: RunConfig, layer: str) -> Prior:
    cfg = config.top_prior if layer == "top" else config.bottom_prior
    tgt = codemaps.TOP_SHAPE if layer == "top" else codemaps.BOTTOM_SHAPE
    top_len = codemaps.TOP_SHAPE[0] * codemaps.TOP_SHAPE[1]
    return Prior(
        cfg,
        config.vqvae.n_codes,
        top_len,
        tgt[0] * tgt[1],
        config.data.pitch_min,
        config.data.pitch_max,
        len(config.data.families),
    )


def code_dataset(run: Path, split_name: str) -> TensorDataset:
    """(top sequence (128,), bottom sequence (512,), pitch, family) in the priors' token orders."""
    path = run / "codes" / f"{split_name}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `inpaint-train codes` first")
    z = np.load(path)
    top = codemaps.to_sequence(z["top"].astype(np.int64), "top")
    bottom = codemaps.to_sequence(z["bottom"].astype(np.int64), "bottom")
    return TensorDataset(
        torch.from_numpy(top),
        torch.from_numpy(bottom),
        torch.from_numpy(z["pitch"].astype(np.int64)),
        torch.from_numpy(z["family"].astype(np.int64)),
    )


def prior_batch(layer: str, top, bottom, mask_token: int):
    """(src, target) for one batch: the top prior sees a randomly masked copy of its target."""
    if layer == "top":
        src, _ = mask_source(top, mask_token)
        return src, top
    return top, bottom


@torch.no_grad()
def evaluate_prior(model: Prior, layer: str, dataset, device, batch_size: int = 32) -> dict:
    model.eval()
    loss, correct, n = 0.0, 0, 0
    gen = torch.Generator().manual_seed(0)
    for top, bottom, pitch, family in DataLoader(dataset, batch_size=batch_size):
        top, bottom, pitch, family = (t.to(device) for t in (top, bottom, pitch, family))
        if layer == "top":  # the same masks at every evaluation: one seeded generator
            src, target = mask_source(top, model.mask_token, gen)[0], top
        else:
            src, target = top, bottom
        logits = model(src, target, pitch, family)
        loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
        n += target.numel()
    model.train()
    return {"valid_loss": loss / max(n, 1), "valid_accuracy": correct / max(n, 1)}


def train_prior(run: Path, layer: str, device: str = "auto") -> dict:
    if layer not in codemaps.LAYERS:
        raise ValueError(f"layer must be 'top' or 'bottom', not {layer!r}")
    with distributed(device) as ctx:
        config, _ = load_run(run)
        train_set, valid_set = code_dataset(run, "train"), code_dataset(run, "valid")
        torch.manual_seed(config.train.seed)
        model = build_prior(config, layer).to(ctx.device)

        def train_step(wrapped, batch) -> StepResult:
            top, bottom, pitch, family = (t.to(ctx.device) for t in batch)
            src, target = prior_batch(layer, top, bottom, model.mask_token)
            logits = wrapped(src, target, pitch, family)  # (B, T, n_codes)
            loss = F.cross_entropy(logits.transpose(1, 2), target)
            return StepResult(
                loss, lambda: {"loss": loss.item(), "accuracy": (logits.argmax(-1) == target).float().mean().item()}
            )

        return optimise(
            ctx,
            run,
            f"{layer}_prior",
            model,
            config.train.prior_steps,
            lambda seed: _loader(train_set, config.train.prior_batch_size, ctx, 0, seed),
            train_step,
            lambda: evaluate_prior(model, layer, valid_set, ctx.device),
            config,
        )


def load_prior(run: Path, config: RunConfig, layer: str) -> tuple[Prior, dict]:
    ckpt = load_checkpoint(run / f"{layer}_prior.pt")
    if ckpt is None:
        raise FileNotFoundError(f"{run}: no {layer}_prior.pt; run `inpaint-train prior {run} --layer {layer}` first")
    model = build_prior(config, layer)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
