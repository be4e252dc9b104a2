"""Training stages: VQ-VAE, code extraction, and the two priors. Each resumes from its checkpoint.

A run folder (`export.run_folder`: created, loaded, forked, its checkpoints and loaders) holds everything, and
TensorBoard logs in `tb/`.
On one process it runs on CPU or one GPU; under `torchrun` each process trains a DDP replica (NCCL on GPUs,
gloo on CPU), rank 0 logs and writes checkpoints.

Data lives where the model trains: the priors' codes as one tensor per field on the training device, the
VQ-VAE's audio read once into one int16 tensor (on the GPU when there is one) with the Mel-IF computed on the
device per batch; batches are index lookups, with no per-example Python on the hot path. On CUDA the forward
passes run under bf16 autocast (the codebooks and the spectrogram stay float32). Every stage stops at its step
count or its `minutes` budget, whichever comes first, with a final checkpoint and validation metrics.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from export.config import RunConfig
from export.nsynth import Note, NoteAudio, load_splits
from export.prior import Prior, mask_source
from export.run_folder import (
    STATS_FILE,
    TENSORBOARD_DIR,
    VQVAE_FILE,
    CodeSet,
    build_prior,
    code_dataset,
    codes_file,
    load_checkpoint,
    load_run,
    load_vqvae,
    save_checkpoint,
    write_codes,
)
from export.spectrogram_torch import MelIF
from export.vqvae import VQVAE2
from server import codemaps
from server.dsp import Normalizer, fit_length

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
        if world > 1:
            dist.barrier()  # rank 0 may still be evaluating: gloo aborts a rank that leaves a group in use
    finally:
        if world > 1:
            dist.destroy_process_group()


def shuffled_batches(tensors: tuple[torch.Tensor, ...], batch_size: int, ctx: Dist, seed: int) -> Iterator[tuple]:
    """Endless batches of rows of `tensors` (all on the training device), reshuffled every epoch; under DDP
    each rank takes its own slice of the permutation. A set smaller than a batch comes whole."""
    n = tensors[0].shape[0]
    gen = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=gen)[ctx.rank :: ctx.world].to(tensors[0].device)
        size = min(batch_size, perm.numel())
        for i in range(0, perm.numel() - size + 1, size):
            idx = perm[i : i + size]
            yield tuple(t[idx] for t in tensors)


def _writer(run: Path, ctx: Dist):
    if not ctx.main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run / TENSORBOARD_DIR))


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


def learning_rate(base: float, step: int, progress: float, warmup: int, cooldown: float) -> float:
    """Warm-up, constant, then a linear cool-down to 0 over the last `cooldown` of the budget (progress in
    [0, 1], by steps or by time, whichever ends first): any budget ends annealed, and a resumed run with a
    larger budget simply climbs back to the constant rate."""
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    cool = min(1.0, (1.0 - progress) / cooldown) if cooldown > 0 else 1.0
    return base * warm * max(cool, 0.0)


def _optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel updates every parameter in one launch on CUDA; on CPU the for-each path is as fast.
    return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (when enabled); a no-op context on CPU, where bf16 matmuls are slower."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def optimise(
    ctx: Dist,
    run: Path,
    name: str,
    model: nn.Module,
    total_steps: int,
    batch_size: int,
    batches: Callable[[int], Iterator],
    train_step: Callable[[nn.Module, tuple], StepResult],
    evaluate: Callable[[], dict],
    config: RunConfig,
    lr: float,
    minutes: float | None = None,
    monitor: Callable[[], dict] | None = None,
    **state,
) -> dict:
    """The loop every stage shares: resume from `<run>/<name>.pt`, optimise with Adam until `total_steps` or
    `minutes` (whichever ends first), log to TensorBoard, checkpoint every `checkpoint_every` steps and at the
    end (with the validation metrics, the throughput and `state`). `monitor()` runs on the main process every
    `monitor_every` steps and at the end; its figures go to TensorBoard and into the checkpoint's metrics."""
    tc = config.train
    ckpt_path = run / f"{name}.pt"
    opt = _optimizer(model, lr, ctx.device)
    step, ckpt = 0, load_checkpoint(ckpt_path)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if "optimizer" in ckpt:  # model-only checkpoints (shipped runs) resume with a fresh optimizer
            opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
    wrapped = DDP(model) if ctx.world > 1 else model
    writer, bar = _writer(run, ctx), _progress(total_steps, step, ctx, name)
    budget_s = math.inf if minutes is None else 60.0 * minutes
    started, first_step, training_s = time.monotonic(), step, 0.0

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

    def run_monitor() -> dict:
        figures = monitor() if monitor is not None and ctx.main else {}
        if writer:
            for key, value in figures.items():
                writer.add_scalar(f"{name}/monitor/{key}", value, step)
        return figures

    batch_iter = batches(tc.seed + step)  # a resumed run does not replay the same batches
    while step < total_steps and time.monotonic() - started < budget_s:
        tick = time.monotonic()
        progress = max(step / max(total_steps, 1), (tick - started) / budget_s)
        for group in opt.param_groups:
            group["lr"] = learning_rate(lr, step, progress, tc.warmup_steps, tc.cooldown)
        with autocast(ctx.device, tc.amp):
            result = train_step(wrapped, next(batch_iter))
        opt.zero_grad(set_to_none=True)
        result.loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if writer and step % tc.log_every == 0:
            scalars = result.scalars()
            for key, value in {**scalars, "lr": opt.param_groups[0]["lr"]}.items():
                writer.add_scalar(f"{name}/{key}", value, step)
            bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k in ("loss", "accuracy")})
        if writer and step % tc.image_every == 0:
            for key, image in result.images().items():
                writer.add_image(f"{name}/{key}", image, step)
        if ctx.device.type == "cuda" and step % tc.log_every == 0:
            torch.cuda.synchronize()  # host time below then counts the GPU's work, not just its queue
        training_s += time.monotonic() - tick
        if step % tc.checkpoint_every == 0:
            save({})
        if tc.monitor_every and step % tc.monitor_every == 0:
            run_monitor()
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    bar.close()
    trained = step - first_step
    throughput = {
        "steps_run": trained,
        "train_seconds": round(training_s, 2),
        "examples_per_s": round(trained * batch_size * ctx.world / training_s, 1) if training_s > 0 else 0.0,
    }
    metrics = {**(evaluate() if ctx.main else {}), **run_monitor(), **throughput}
    if writer:
        for key, value in metrics.items():
            writer.add_scalar(f"{name}/{key}", value, step)
        writer.close()
    save(metrics)
    if ctx.main:
        print(
            f"{name}: {trained} steps of {batch_size * ctx.world} in {training_s:.1f} s of training: "
            f"{throughput['examples_per_s']:.0f} examples/s on {ctx.device.type}"
            + (f" x {ctx.world}" if ctx.world > 1 else ""),
            file=sys.stderr,
        )
    return {**metrics, "step": step, "world_size": ctx.world}


# ---------------------------------------------------------------- VQ-VAE


def _read_int16(note: Note, spec) -> np.ndarray:
    audio, rate = sf.read(str(note.path), dtype="int16", always_2d=True)
    if rate != spec.sample_rate:
        raise ValueError(f"{note.path}: {rate} Hz, expected {spec.sample_rate} Hz (NSynth is 16 kHz)")
    mono = audio[:, 0] if audio.shape[1] == 1 else audio.mean(1).astype(np.int16)
    return fit_length(mono, spec)


def load_audio(notes: list[Note], config: RunConfig, device: torch.device) -> torch.Tensor:
    """Every note's audio, read once: (N, n_samples) int16 on `device` (NSynth and our renders are 16-bit
    PCM, so nothing is lost; 34 k notes take 4.4 GB)."""
    spec = config.spectrogram
    audio = np.empty((len(notes), spec.n_samples), np.int16)
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:  # libsndfile reads without the GIL
        for i, row in enumerate(pool.map(lambda n: _read_int16(n, spec), notes, chunksize=64)):
            audio[i] = row
    return torch.from_numpy(audio).to(device)


def to_float(audio: torch.Tensor) -> torch.Tensor:
    """int16 samples → float32 in [-1, 1), as soundfile reads them."""
    return audio.float() / 32768.0


@torch.no_grad()
def fit_normalizer(audio: torch.Tensor, config: RunConfig) -> Normalizer:
    """Per-channel min / max over the first `stats_examples` training notes ((N, n_samples) int16)."""
    melif = MelIF(config.spectrogram).to(audio.device)
    lo, hi = torch.full((2,), np.inf), torch.full((2,), -np.inf)
    for batch in audio[: config.train.stats_examples].split(16):
        spec = melif(to_float(batch)).cpu()
        lo = torch.minimum(lo, spec.amin(dim=(0, 2, 3)))
        hi = torch.maximum(hi, spec.amax(dim=(0, 2, 3)))
    return Normalizer.fit(lo.numpy(), hi.numpy())


@torch.no_grad()
def evaluate_vqvae(
    model: VQVAE2, notes: list[Note], config: RunConfig, device: torch.device, max_notes: int = 64, split: str = "valid"
) -> dict:
    """MSE (normalised), the reconstruction loss (`VQVAE2.reconstruction_error`) and codebook usage on up to
    `max_notes` notes (held-out ones: `split` names them in the keys), in eval mode (no codebook update); the
    model is left in the mode it came in."""
    was_training = model.training
    model.eval()
    melif = MelIF(config.spectrogram).to(device)
    mse, reconstruction, used_t, used_b, n = 0.0, 0.0, set(), set(), 0
    for audio, _, _ in DataLoader(NoteAudio(notes[:max_notes], config.spectrogram), batch_size=8):
        out = model(melif(audio.to(device)))
        mse += out["mse"].item() * audio.shape[0]
        reconstruction += out["reconstruction"].item() * audio.shape[0]
        used_t.update(out["codes_top"].unique().tolist())
        used_b.update(out["codes_bottom"].unique().tolist())
        n += audio.shape[0]
    model.train(was_training)
    k = config.vqvae.n_codes
    return {
        f"{split}_mse": mse / max(n, 1),
        f"{split}_reconstruction": reconstruction / max(n, 1),
        f"{split}_codes_used_top": len(used_t) / k,
        f"{split}_codes_used_bottom": len(used_b) / k,
        f"{split}_notes": n,
    }


def train_vqvae(run: Path, device: str = "auto", minutes: float | None = None) -> dict:
    with distributed(device) as ctx:
        config, data = load_run(run)
        splits = load_splits(data, config.data)
        torch.manual_seed(config.train.seed)
        t0 = time.monotonic()
        audio = load_audio(splits["train"], config, ctx.device)  # (N, n_samples) int16
        if ctx.main:
            print(f"vqvae: {len(audio)} notes read in {time.monotonic() - t0:.1f} s onto {ctx.device}", file=sys.stderr)
        ckpt = load_checkpoint(run / VQVAE_FILE)
        if ckpt is None:
            normalizer = fit_normalizer(audio, config)
            if ctx.main:
                (run / STATS_FILE).write_text(json.dumps(normalizer.to_dict(), indent=2))
        else:
            normalizer = Normalizer.from_dict(ckpt["normalizer"])
        model = VQVAE2(config.vqvae, config.spectrogram, normalizer).to(ctx.device)
        melif = MelIF(config.spectrogram).to(ctx.device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest convolutions

        def train_step(wrapped, batch) -> StepResult:
            spec = melif(to_float(batch[0]))  # (B, 2, 1024, 128), float32 even under autocast
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

        batch_size = config.train.vqvae_batch_size
        return optimise(
            ctx,
            run,
            "vqvae",
            model,
            config.train.vqvae_steps,
            batch_size,
            lambda seed: shuffled_batches((audio,), batch_size, ctx, seed),
            train_step,
            lambda: evaluate_vqvae(model, splits["valid"], config, ctx.device),
            config,
            config.train.lr,
            minutes,
            normalizer=normalizer.to_dict(),
        )


# ---------------------------------------------------------------- codes


@torch.no_grad()
def extract_codes(
    run: Path, device: str = "auto", batch_size: int = 32, splits: tuple[str, ...] = ("train", "valid")
) -> dict:
    """Encode every note of `splits` → codes/{split}.npz: top (N, 32, 4), bottom (N, 64, 8) uint16, labels."""
    from tqdm import tqdm

    config, data = load_run(run)
    dev = resolve_device(device)
    model = load_vqvae(run, config).to(dev)
    melif = MelIF(config.spectrogram).to(dev)
    codes_file(run, "train").parent.mkdir(exist_ok=True)
    counts = {}
    for name, notes in load_splits(data, config.data).items():
        if name not in splits:
            continue
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
        codes = (np.concatenate(tops), np.concatenate(bottoms), np.concatenate(pitches), np.concatenate(families))
        counts[name] = write_codes(run, name, *codes)
    return counts


# ---------------------------------------------------------------- priors


def prior_batch(layer: str, top, bottom, mask_token: int, generator: torch.Generator | None = None):
    """(src, target) for one batch: the top prior sees a randomly masked copy of its target."""
    if layer == "top":
        src, _ = mask_source(top, mask_token, generator)
        return src, top
    return top, bottom


def drop_labels(
    pitch: torch.Tensor, family: torch.Tensor, p: float, p_family: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier-free guidance training: each example's labels become the null label (-1) with probability p,
    then its family alone with probability `p_family`."""
    if p > 0:
        drop = torch.rand(pitch.shape, device=pitch.device) < p
        pitch, family = pitch.masked_fill(drop, -1), family.masked_fill(drop, -1)
    if p_family > 0:
        family = family.masked_fill(torch.rand(family.shape, device=family.device) < p_family, -1)
    return pitch, family


def wrong_families(family: torch.Tensor, n_families: int) -> torch.Tensor:
    """(B,) families, each real one moved by 1 to n-1 places at random; the null family (-1) stays."""
    shift = torch.randint(1, n_families, family.shape, device=family.device)
    return torch.where(family >= 0, (family + shift) % n_families, family)


def family_hinge(token_loss: torch.Tensor, wrong_loss: torch.Tensor, family: torch.Tensor, margin: float):
    """The family margin (`PriorConfig.family_margin`): over the examples with a real family, the mean of
    max(0, margin - (loss per token under a wrong family - under its own)). Losses (B, T) per token."""
    gap = wrong_loss.mean(1) - token_loss.mean(1)
    return F.relu(margin - gap)[family >= 0].mean()


@torch.no_grad()
def prior_loss(model: Prior, layer: str, codes: CodeSet, batch_size: int = 256, pitch_shift: int = 0, seed: int = 0):
    """(summed cross-entropy, correct tokens, tokens scored) over `codes`: teacher-forced, or on the masked
    positions of the masked kind; the same top-prior and masked-kind masks at every call (drawn on the CPU from
    one seeded generator, whatever the device). `pitch_shift` conditions every note on another pitch (clamped to
    the range): how much the prior listens to the pitch."""
    loss, correct, n = 0.0, 0, 0
    gen = torch.Generator().manual_seed(seed)
    for top, bottom, pitch, family in zip(*(t.split(batch_size) for t in codes), strict=True):
        if layer == "top":
            src = mask_source(top.cpu(), model.mask_token, gen)[0].to(top.device)
            target = top
        else:
            src, target = top, bottom
        if pitch_shift:
            pitch = (pitch + pitch_shift).clamp(model.pitch_min, model.pitch_min + model.n_pitches - 1)
        logits, scored = model.scored(src, target, pitch, family, mask_generator(gen, target.device))
        logits, target = logits.float()[scored], target[scored]  # (n, n_codes), (n,)
        loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
        n += target.numel()
    return loss, correct, n


def mask_generator(cpu: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded from `cpu`: the masked kind's validation masks, the same at every call."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=cpu)))


@torch.no_grad()
def evaluate_prior(model: Prior, layer: str, codes: CodeSet, batch_size: int | None = None) -> dict:
    """Validation loss and accuracy (per token) on a code set already on the model's device."""
    was_training = model.training
    model.eval()
    if batch_size is None:  # on 2 CPU cores batches of 256 bottom maps ran 35 % slower than 32
        batch_size = 256 if codes[0].is_cuda else 32
    loss, correct, n = prior_loss(model, layer, codes, batch_size)
    model.train(was_training)
    return {"valid_loss": loss / max(n, 1), "valid_accuracy": correct / max(n, 1)}


def train_prior(run: Path, layer: str, device: str = "auto", minutes: float | None = None) -> dict:
    if layer not in codemaps.LAYERS:
        raise ValueError(f"layer must be 'top' or 'bottom', not {layer!r}")
    with distributed(device) as ctx:
        config, _ = load_run(run)
        train_set, valid_set = code_dataset(run, "train", ctx.device), code_dataset(run, "valid", ctx.device)
        if config.train.valid_limit:  # the same first notes at every evaluation
            valid_set = tuple(t[: config.train.valid_limit] for t in valid_set)
        torch.manual_seed(config.train.seed)
        model = build_prior(config, layer).to(ctx.device)
        cfg = model.cfg
        if cfg.kind == "masked" and cfg.family_margin > 0:
            raise ValueError("family_margin is defined for the autoregressive kind only (its loss is teacher-forced)")

        def train_step(wrapped, batch) -> StepResult:
            top, bottom, pitch, family = batch
            src, target = prior_batch(layer, top, bottom, model.mask_token)
            pitch, family = drop_labels(pitch, family, cfg.cond_dropout, cfg.family_dropout)
            margin = cfg.family_margin if bool((family >= 0).any()) else 0.0
            if margin > 0:  # one forward of the batch under its own families and under wrong ones (DDP-safe)
                labels = torch.cat([family, wrong_families(family, model.n_families)])
                both = wrapped(src.repeat(2, 1), target.repeat(2, 1), pitch.repeat(2), labels).float()
                logits, wrong_logits = both.chunk(2)  # (B, T, n_codes) each
                scored = torch.ones_like(target, dtype=torch.bool)
            else:
                logits, scored = model.scored(src, target, pitch, family, model=wrapped)  # (B, T, n_codes), (B, T)
                logits = logits.float()
            token_loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T)
            loss = token_loss[scored].mean()
            hinge = None
            if margin > 0:
                wrong_loss = F.cross_entropy(wrong_logits.transpose(1, 2), target, reduction="none")
                hinge = family_hinge(token_loss, wrong_loss, family, margin)
            total = loss if hinge is None else loss + hinge
            return StepResult(
                total,
                lambda: {
                    "loss": loss.item(),
                    "accuracy": (logits.argmax(-1) == target)[scored].float().mean().item(),
                    **({} if hinge is None else {"family_hinge": hinge.item()}),
                },
            )

        from export.monitor import PitchMonitor

        monitor = PitchMonitor(run, config, layer, model, valid_set, ctx.device)
        batch_size = config.train.prior_batch_size
        return optimise(
            ctx,
            run,
            f"{layer}_prior",
            model,
            config.train.prior_steps,
            batch_size,
            lambda seed: shuffled_batches(train_set, batch_size, ctx, seed),
            train_step,
            lambda: evaluate_prior(model, layer, valid_set),
            config,
            config.train.prior_lr,
            minutes,
            monitor,
        )
