"""Benchmark: one prior decoding step and a full 640-token sampling, onnxruntime vs torch eager.

Both runtimes run the same weights (a randomly initialised model of the chosen preset: speed does not
depend on training), in one process, through the same sampling loop. onnxruntime runs the priors as the
server does (`server.bundle.Bundle` picks the threads); torch eager is timed at 1 and at `threads`
threads and, for each figure, its faster setting is the baseline, so a ratio never flatters onnxruntime.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export import config as cfg
from export import run_folder
from export.onnx_export import export_bundle
from export.prior import Prior
from export.vqvae import VQVAE2
from server.bundle import Bundle, FamilyTables, PriorShape, cache_names
from server.sampling import Conditioning, Inpainter, MaskedSampler, PriorSampler


class TorchPriorSampler(PriorSampler):
    """The server's sampling loop driven by torch eager instead of onnxruntime: the baseline."""

    def __init__(self, prior: Prior, layer: str, family_tables: FamilyTables | None = None):
        self.prior, self.start = prior, prior.start_token
        self.shape = PriorShape(len(prior.decoder), prior.cfg.n_heads, prior.head_dim, prior.null_labels)
        self._memory_names = cache_names("memory", len(prior.decoder))
        self._memory = self._prefix = None  # the caches of PriorSampler
        self._layer, self._family_tables = layer, family_tables  # a bundle's family tables, as the server samples

    def empty_cache(self, memory):
        return self.prior.empty_cache(next(iter(memory.values())).shape[0])

    def _run_encoder(self, src, labels):
        return _torch_encode(self.prior, self._memory_names, src, labels)

    def _run_step(self, tokens, labels, past, memory):
        with torch.inference_mode():
            pitch, family = (torch.from_numpy(labels[k]) for k in ("pitch", "family"))
            logits, present = self.prior.step(torch.from_numpy(tokens), pitch, family, past, list(memory.values()))
            last = torch.tensor([past[0].shape[2] + tokens.shape[1] - 1])
            harmonic = self.prior.harmonic_bias(pitch, last)
        return logits[:, -1].numpy(), harmonic[:, -1].numpy(), present


class TorchMaskedSampler(MaskedSampler):
    """The masked kind's sampling loop (the server's) driven by torch eager: the baseline. It is its own denoise
    "session": `MaskedSampler` calls `self._denoise.run(None, feeds)`."""

    def __init__(
        self, prior: Prior, layer: str, decoding: PriorShape | None = None, family_tables: FamilyTables | None = None
    ):
        """`decoding`: the bundle's manifest entry, whose passes and guidance schedule the bundle decodes with
        (its config's when None)."""
        self.prior, self.start, self.mask = prior, prior.start_token, prior.mask_token
        shape = (len(prior.decoder), prior.cfg.n_heads, prior.head_dim, prior.null_labels)
        decodes = decoding or prior.cfg  # both have `passes` and `anneal_guidance`
        self.shape = PriorShape(*shape, kind="masked", passes=decodes.passes, anneal_guidance=decodes.anneal_guidance)
        self._memory_names = cache_names("memory", len(prior.decoder))
        self._memory = None
        self._layer, self._family_tables = layer, family_tables
        self._denoise = self

    def _run_encoder(self, src, labels):
        return _torch_encode(self.prior, self._memory_names, src, labels)

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(B, T) tokens, labels and memory → logits and harmonic guidance (B, T, V), as the denoise graph."""
        with torch.inference_mode():
            pitch, family, tokens = (torch.from_numpy(feeds[k]) for k in ("pitch", "family", "tokens"))
            memory = [torch.as_tensor(feeds[name]) for name in self._memory_names]  # `_run_encoder` keeps tensors
            logits = self.prior.denoise(tokens, pitch, family, memory)
            harmonic = self.prior.harmonic_bias(pitch, torch.arange(tokens.shape[1]))
        return logits.numpy(), harmonic.numpy()


def torch_sampler(
    prior: Prior, layer: str, decoding: PriorShape | None = None
) -> TorchPriorSampler | TorchMaskedSampler:
    """The torch baseline of the kind `prior` is (`decoding`: the bundle's manifest entry, for the masked kind)."""
    if prior.cfg.kind == "masked":
        return TorchMaskedSampler(prior, layer, decoding)
    return TorchPriorSampler(prior, layer)


def _torch_encode(prior: Prior, names: tuple[str, ...], src: np.ndarray, labels: dict) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        pitch, family = (torch.from_numpy(labels[k]) for k in ("pitch", "family"))
        return dict(zip(names, prior.encode(torch.from_numpy(src), pitch, family), strict=True))


def write_random_run(run: Path, config: cfg.RunConfig, seed: int = 0) -> None:
    """A run folder holding untrained checkpoints of `config`: enough to export and time a bundle."""
    torch.manual_seed(seed)
    run_folder.create_run(run, config, Path("untrained"))
    vqvae = VQVAE2(config.vqvae, config.spectrogram)
    run_folder.save_checkpoint(
        run / run_folder.VQVAE_FILE,
        model=vqvae.state_dict(),
        step=0,
        config=config.to_dict(),
        normalizer={"scale": [0.1, 1.0], "shift": [0.0, 0.0]},
        metrics={},
    )
    for layer in ("top", "bottom"):
        prior = run_folder.build_prior(config, layer)
        run_folder.save_checkpoint(
            run_folder.prior_file(run, layer), model=prior.state_dict(), step=0, config=config.to_dict(), metrics={}
        )


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _time_sampler(inpainter: Inpainter, src: np.ndarray, cache_length: int, repeats: int) -> dict:
    cond = Conditioning(pitch=60, family=4, temperature=1.0, top_p=0.8)
    sampler, token = inpainter.bottom, np.array([5])
    memory = sampler.encode(src, cond)
    prefix = np.resize(src, cache_length)  # any valid codes: the cost does not depend on their values
    _, past = sampler.step(prefix, cond, sampler.empty_cache(memory), memory)
    for _ in range(20):  # warm-up
        sampler.step(token, cond, past, memory)
    step_ms = _median_ms(lambda: sampler.step(token, cond, past, memory), 300)
    inpainter.generate(cond, np.random.default_rng(0))  # warm-up
    full_ms = _median_ms(lambda: inpainter.generate(cond, np.random.default_rng(0)), repeats)
    return {"step_ms": step_ms, "generate_640_ms": full_ms}


def run_bench(preset: str = "small", threads: int = 2, repeats: int = 3, cache_length: int = 300) -> dict:
    """Bottom-prior step at `cache_length` (the prior that runs 512 of the 640 steps), batch 1, and a full
    generation (128 top + 512 bottom tokens, temperature 1, top-p 0.8)."""
    config = cfg.preset(preset)
    src = np.random.default_rng(0).integers(0, config.vqvae.n_codes, 128)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_random_run(run, config)
        export_bundle(run, Path(tmp) / "bundle")
        bundle = Bundle(Path(tmp) / "bundle", "cpu", threads=threads)
        results["onnxruntime"] = _time_sampler(Inpainter.from_bundle(bundle), src, cache_length, repeats)
        priors = {layer: run_folder.load_prior(run, config, layer)[0] for layer in ("top", "bottom")}
        eager = Inpainter(
            TorchPriorSampler(priors["top"], "top"),
            TorchPriorSampler(priors["bottom"], "bottom"),
            bundle.manifest.mask_token,
        )
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            results[f"torch_{n}_threads"] = _time_sampler(eager, src, cache_length, repeats)
    torch_runs = [r for k, r in results.items() if k.startswith("torch")]
    best_torch = {metric: min(r[metric] for r in torch_runs) for metric in ("step_ms", "generate_640_ms")}
    ort_r = results["onnxruntime"]
    summary = {
        "preset": preset,
        "cache_length": cache_length,
        **results,
        "step_speedup": best_torch["step_ms"] / ort_r["step_ms"],
        "generate_speedup": best_torch["generate_640_ms"] / ort_r["generate_640_ms"],
    }
    print(
        f"preset {preset}; bottom-prior step at cache length {cache_length}, batch 1; "
        "onnxruntime as the server runs it; speed-up against the faster torch setting"
    )
    print(f"{'':18}{'step (ms)':>12}{'640 tokens (ms)':>18}")
    for name, r in results.items():
        print(f"{name:18}{r['step_ms']:12.3f}{r['generate_640_ms']:18.1f}")
    print(f"{'speed-up':18}{summary['step_speedup']:11.2f}x{summary['generate_speedup']:17.2f}x")
    return summary
