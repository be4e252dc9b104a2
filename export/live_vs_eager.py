"""`inpaint-train bench --server`: the live instrument's figures, side by side with what a user of the original
code would run, and with the hardware's floor.

- The OSC figures come from `server.tools.latency.run_bench`: a server process on the bundle, this process as the client
  over loopback (p50/p95/p99 per operation, the server's own stage times, peak RSS, cold start).
- torch eager: the same operations in this process on the same weights, read back from the bundle's ONNX graphs
  (and checked against onnxruntime), priors through the same key/value-cached sampling loop (so the baseline
  is the stronger one), the torch VQ-VAE, the same numpy inversion and WAV write.
- The compute floor: each operation's FLOPs (counted by torch while it runs the models) over this machine's
  measured float32 matrix-multiply throughput at the same thread count.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.bundle_torch import COND, check_read_back, read_torch_models
from export.prior import Prior
from export.sampling_speed import TorchPriorSampler, torch_sampler
from export.spectrogram_torch import MelIF
from export.vqvae import VQVAE2
from server import codemaps, dsp
from server.bundle import Bundle, PriorShape
from server.files import shown
from server.sampling import Inpainter


class EagerOps:
    """The benchmark's operations in torch eager, each split into stages like the server's /render/timing."""

    def __init__(
        self,
        vqvae: VQVAE2,
        priors: dict[str, Prior],
        mask_token: int,
        spec: dsp.SpectrogramParams,
        decoding: dict[str, PriorShape] | None = None,
    ):
        """`decoding`: the bundle's manifest priors, whose masked passes and guidance schedule it decodes with
        (the configs' otherwise)."""
        self.vqvae, self.spec = vqvae, spec
        self.melif = MelIF(spec)
        decoding = decoding or {}
        top, bottom = (torch_sampler(priors[k], k, decoding.get(k)) for k in ("top", "bottom"))
        self.inpainter = Inpainter(top, bottom, mask_token)
        self.top, self.bottom = self.inpainter.generate(COND, np.random.default_rng(0))
        self._shape_flops: dict[tuple, int] = {}  # (layer, call, input shapes) → FLOPs of one prior call
        self._flops = 0  # of the prior calls since `flops` began counting

    def edit(self, name: str, rng: np.random.Generator, note: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The model part of one operation: new (top, bottom) codes."""
        inp, top, bottom = self.inpainter, self.top, self.bottom
        if name == "generate":
            return inp.generate(COND, rng)
        if name == "resample_bottom":
            return top, inp.resample_bottom(top, bottom, COND, rng)
        if name == "analyze_4s_file":
            with torch.inference_mode():
                *_, codes_t, codes_b, _ = self.vqvae.encode(self.melif(torch.from_numpy(note[None])))
            return codes_t[0].numpy(), codes_b[0].numpy()
        layer, mask = _mask(name, rng)
        return inp.inpaint(top, bottom, layer, mask, COND, rng)

    def decode(self, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.vqvae.decode_codes(torch.from_numpy(top[None]), torch.from_numpy(bottom[None]))[0].numpy()

    def run(self, name: str, rng: np.random.Generator, note: np.ndarray, wav: Path) -> dict[str, float]:
        """Stage times (ms) of one operation, end to end."""
        t0 = time.perf_counter()
        top, bottom = self.edit(name, rng, note)
        t1 = time.perf_counter()
        spec = self.decode(top, bottom)
        t2 = time.perf_counter()
        audio = dsp.invert(spec, self.spec)
        t3 = time.perf_counter()
        sf.write(str(wav), audio, self.spec.sample_rate, subtype="FLOAT")
        t4 = time.perf_counter()
        ms = [1000 * d for d in (t1 - t0, t2 - t1, t3 - t2, t4 - t3)]
        return {"edit": ms[0], "decoder": ms[1], "inversion": ms[2], "wav": ms[3], "total": sum(ms)}

    def flops(self, name: str, note: np.ndarray) -> int:
        """FLOPs of the models in one operation (priors or encoder, and the decoder), counted as they run.

        A prior call's FLOPs depend on its shapes alone (tokens fed, cache and memory lengths), and counting
        slows a call about 6x: each shape is counted once and its count reused, by this operation and the
        next (they share most of their steps: a whole generate's, 640, counted the first time)."""
        self._flops = 0
        samplers = (self.inpainter.top, self.inpainter.bottom)
        counter = FlopCounterMode(display=False)
        try:
            for sampler in samplers:  # a masked sampler is its own denoise graph (`run`)
                for call, method in (("encoder", "_run_encoder"), ("step", "_run_step"), ("denoise", "run")):
                    if hasattr(type(sampler), method):
                        bound = getattr(type(sampler), method).__get__(sampler)
                        setattr(sampler, method, self._counting(sampler, call, bound))
            analyze = name == "analyze_4s_file"  # the VQ-VAE encoder, no prior: counted directly
            codes = None if analyze else self.edit(name, np.random.default_rng(0), note)  # priors, by shape
            with counter:  # one context: entering a FlopCounterMode clears its counts
                top, bottom = self.edit(name, np.random.default_rng(0), note) if codes is None else codes
                self.decode(top, bottom)
        finally:
            for sampler in samplers:
                for method in ("_run_encoder", "_run_step", "run"):
                    sampler.__dict__.pop(method, None)
        return self._flops + int(counter.get_total_flops())

    def _counting(self, sampler: TorchPriorSampler, call: str, run: Callable) -> Callable:
        def counted(*args):
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            caches = [a for a in args if isinstance(a, list | dict)]
            key = (sampler._layer, call, *(a.shape for a in arrays), *(_cache_shape(c) for c in caches))
            if key not in self._shape_flops:
                counter = FlopCounterMode(display=False)
                with counter:
                    run(*args)
                self._shape_flops[key] = int(counter.get_total_flops())
            self._flops += self._shape_flops[key]
            return run(*args)

        return counted


def _cache_shape(cache: list | dict) -> tuple:
    """The shapes of a key/value cache (a list of tensors) or of the labels or memory (a dict of arrays)."""
    values = cache.values() if isinstance(cache, dict) else cache
    return tuple(tuple(v.shape) for v in values)


def _mask(name: str, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    layer = "bottom" if name == "inpaint_bottom_cell" else "top"
    mask = np.zeros(codemaps.layer_shape(layer), bool)
    if name == "inpaint_time_range":
        mask[:, :2] = True
    elif name == "inpaint_frequency_band":
        mask[:8] = True
    else:  # one cell
        mask[int(rng.integers(mask.shape[0])), int(rng.integers(mask.shape[1]))] = True
    return layer, mask


def matmul_gflops(threads: int, n: int = 1024, repeats: int = 20) -> float:
    """This machine's float32 matrix-multiply throughput (best of `repeats` n x n products), GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_server_bench(
    bundle_dir: Path, threads: int = 2, repeats: int = 50, markdown: Path | None = None, osc: Path | None = None
) -> dict:
    """The server's figures over OSC (measured now, or read from `osc`: an earlier `inpaint-osc bench` run's
    JSON on the same bundle and threads) against torch eager running the same operations, and the floor."""
    from server.tools.latency import HEAVY, operations, write_test_note
    from server.tools.latency import run_bench as run_osc_bench

    if osc is None:
        result: dict[str, Any] = {"osc": run_osc_bench(bundle_dir, repeats=repeats, threads=threads)}
    else:
        result = {"osc": earlier_osc_figures(osc, bundle_dir, threads)}
    if osc is None and _cuda_available():
        result["osc_cuda"] = run_osc_bench(bundle_dir, repeats=repeats, threads=threads, provider="cuda")
    torch.set_num_threads(threads)
    bundle = Bundle(bundle_dir, "cpu", threads=threads)
    config, vqvae, priors = read_torch_models(bundle_dir)
    result["torch_parity_max_abs_diff"] = check_read_back(bundle, vqvae, priors)
    eager = EagerOps(vqvae, priors, bundle.manifest.mask_token, config.spectrogram, bundle.manifest.priors)
    gflops = matmul_gflops(threads)
    result["matmul_gflops"] = round(gflops, 1)
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        note_path = write_test_note(Path(tmp) / "note.wav")
        note = dsp.fit_length(sf.read(str(note_path), dtype="float32")[0], config.spectrogram)
        names = [n for n in operations(rng, note_path) if n != "note_cached"]  # the cache is the server's own
        eager.run("generate", rng, note, Path(tmp) / "x.wav")  # warm-up
        for name in names:
            n = max(3, repeats // 10) if name in HEAVY else max(5, repeats // 5)
            runs = [eager.run(name, rng, note, Path(tmp) / "x.wav") for _ in range(n)]
            ours = result["osc"][name]["p50_ms"]
            torch_ms = {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
            flops = eager.flops(name, note)
            floor_ms = flops / (gflops * 1e9) * 1000
            result[name] = {
                "torch_eager_ms": torch_ms,
                "speedup_vs_torch": round(torch_ms["total"] / ours, 2),
                "gflop": round(flops / 1e9, 3),
                "floor_ms": round(floor_ms, 2),
                "ours_over_floor": round(ours / floor_ms, 1),
            }
    result["machine"] = machine(threads)
    command = f"inpaint-train bench --server --bundle {shown(bundle_dir)} --threads {threads} --repeats {repeats}"
    result["command"] = command
    if osc is not None:
        result["command"] += f" --osc {osc}"
    if markdown is not None:
        markdown.write_text(benchmarks_markdown(result))
    return result


def earlier_osc_figures(path: Path, bundle_dir: Path, threads: int) -> dict[str, Any]:
    """An `inpaint-osc bench` JSON, checked to be of this bundle at these threads: torch is compared with it."""
    try:
        figures = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--osc {path}: not an inpaint-osc bench JSON ({exc})") from None
    if not isinstance(figures, dict) or "generate" not in figures or "playability" not in figures:
        raise ValueError(f"--osc {path}: not an inpaint-osc bench JSON (no generate or playability figures)")
    same_bundle = Path(figures.get("bundle", "")).resolve() == Path(bundle_dir).resolve()
    if not same_bundle or figures.get("threads") != threads or figures.get("provider") != "cpu":
        raise ValueError(
            f"--osc {path}: measured {figures.get('bundle')} on {figures.get('threads')} {figures.get('provider')} "
            f"threads, not {bundle_dir} on {threads} cpu threads"
        )
    return figures


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def machine(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_gb = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem_gb = float("nan")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads_used": threads,
        "memory_gb": round(mem_gb, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }


def playability_markdown(p: dict[str, Any]) -> list[str]:
    melody, k16, k48 = p["melody"], p["note_cached_16k"], p["note_cached_48k"]
    return [
        "## Playability",
        "",
        "The same server, after the figures above (which it measured with the note cache's background fill off):",
        "",
        f"- **Level.** Ten `/generate`s across families and registers, RMS of the held part (first 3 s) of each "
        f"WAV: {', '.join(f'{x:.1f}' for x in p['generate_levels_db'])} dBFS; the farthest is "
        f"{p['generate_level_max_off_median_db']:.2f} dB from their median. `/note 60 127` is "
        f"{p['velocity_127_over_30_db']:.1f} dB louder than `/note 60 30`.",
        f"- **Note cache.** `/note/fill 1` to `/note/cache {p['fill_notes']} {p['fill_notes']}` (every note of "
        f"the pitch range cached for the current settings): {p['fill_s']:.1f} s.",
        f"- **Melody.** {melody['notes']} cached notes, 8 per second (125 ms apart): {melody['cancelled']} "
        f"cancelled; arrival to `/render/done` at the server p50 {melody['p50_ms']:.2f} ms, p99 "
        f"{melody['p99_ms']:.2f}, max {melody['max_ms']:.2f} ms.",
        f"- **The host's rate.** A cached note's round trip at `/render/rate 16000` p50 {k16['p50_ms']:.2f} ms; "
        f"at 48000 p50 {k48['p50_ms']:.2f} ms ({k48['p50_ms'] / k16['p50_ms']:.2f}x, the resampling and the "
        "three times larger WAV).",
        "",
    ]


def benchmarks_markdown(r: dict[str, Any]) -> str:
    m, osc = r["machine"], r["osc"]
    names = [k for k in osc if isinstance(osc[k], dict) and "stages_ms" in osc[k]]
    stages = list(osc[names[0]]["stages_ms"])
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{r['command']}` (written by that command; do not edit by hand).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['threads_used']} threads used by the server and by torch), "
        f"{m['memory_gb']} GB, {m['os']}; Python {m['python']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}.",
        "",
        f"Bundle `{shown(osc['bundle'])}`. The server runs in its own process with a `--session` file (each edit saved "
        f"before it is acknowledged); this process is the OSC client over loopback, {osc['pause_between_edits_s']} s "
        "between requests (not timed). A render counts when its `/render/done` arrives with the WAV on disk.",
        "",
        "## Round trips over OSC, and where the time goes",
        "",
        "Stages are the server's own (`/timing 1` → `/render/timing`), medians in ms: queue (arrival to start), "
        "edit (the priors; file read and encoder for analyze; the cache lookup for a cached note), session save, "
        "VQ-VAE decoder, Mel-IF inversion, WAV write; osc is the rest of the round trip (sockets, parsing, the "
        "client).",
        "",
        "| operation | n | p50 | p95 | p99 | " + " | ".join(s for s in stages if s != "server") + " |",
        "|---|---|---|---|---|" + "---|" * (len(stages) - 1),
    ]
    for name in names:
        o = osc[name]
        cells = " | ".join(f"{o['stages_ms'][s]:.2f}" for s in stages if s != "server")
        lines.append(f"| {name} | {o['n']} | {o['p50_ms']:.1f} | {o['p95_ms']:.1f} | {o['p99_ms']:.1f} | {cells} |")
    for name in ("ping", "ping_during_generate"):
        o = osc[name]
        lines.append(f"| {name} | {o['n']} | {o['p50_ms']:.2f} | {o['p95_ms']:.2f} | {o['p99_ms']:.2f} |")
    lines += [
        "",
        f"Cold start (command to first `/pong`): {osc['cold_start_ms']:.0f} ms. Server peak RSS: "
        f"{osc['server_peak_rss_mb']:.0f} MB.",
        "",
        *playability_markdown(osc["playability"]),
        "## Against torch eager and against the hardware",
        "",
        f"torch eager runs the same operations in one process on the same weights (read back from the bundle, "
        f"max difference to onnxruntime {r['torch_parity_max_abs_diff']:.2g}), with no OSC. The floor is the "
        f"operation's FLOPs (counted by torch as it runs the priors or encoder and the decoder) at this machine's "
        f"measured float32 matrix-multiply throughput, {r['matmul_gflops']} GFLOP/s on {m['threads_used']} threads: "
        "the time the arithmetic alone would take.",
        "",
        "| operation | ours p50 (ms) | torch eager (ms) | torch edit / decoder / inversion / wav | speed-up | GFLOP "
        "| floor (ms) | ours / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if name not in r:
            continue
        t = r[name]["torch_eager_ms"]
        lines.append(
            f"| {name} | {osc[name]['p50_ms']:.1f} | {t['total']:.1f} | {t['edit']:.1f} / {t['decoder']:.1f} / "
            f"{t['inversion']:.1f} / {t['wav']:.1f} | {r[name]['speedup_vs_torch']:.1f}x | {r[name]['gflop']:.3f} | "
            f"{r[name]['floor_ms']:.2f} | {r[name]['ours_over_floor']:.0f}x |"
        )
    if "osc_cuda" in r:
        c = r["osc_cuda"]
        lines += ["", "## CUDA provider", "", "| operation | p50 | p95 | p99 |", "|---|---|---|---|"]
        lines += [f"| {n} | {c[n]['p50_ms']:.1f} | {c[n]['p95_ms']:.1f} | {c[n]['p99_ms']:.1f} |" for n in names]
    else:
        lines += ["", "No CUDA provider on this machine: no GPU table."]
    return "\n".join(lines) + "\n"
