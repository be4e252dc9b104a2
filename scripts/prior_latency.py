"""Latency decided before training: a prior design's decoding of a whole map, timed with random weights.

Exports the `--layer` prior (default bottom) of each design (the `small` preset changed by `--set` lists)
with random weights and times, with onnxruntime on the server's threads, what a fresh note costs it: the
autoregressive kind's encoder plus one-token steps over the layer (512 bottom, 128 top), or the masked kind's
encoder plus its passes over the whole sequence. Every design is timed in the same run, so the ratios hold on
a noisy machine.

    python scripts/prior_latency.py --design ar= --design masked8=bottom_prior.kind=masked \\
        --design masked4=bottom_prior.kind=masked,bottom_prior.passes=4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.config import override, preset
from export.onnx_export import example_inputs, export_graph, graph_module, n_layers
from export.run_folder import build_prior
from export.vqvae import VQVAE2
from server.bundle import PRIOR_KINDS, cache_names, session_options


def decode_once(sessions: dict, prior, kind: str, passes: int) -> None:
    """One whole map's graph calls (the sampling's numpy work is left out: it is the same for any shape)."""
    labels = {"pitch": np.array([60]), "family": np.array([2])}
    src = np.zeros((1, prior.src_len), np.int64)
    memory = dict(
        zip(
            cache_names("memory", len(prior.decoder)),
            sessions["encoder"].run(None, {"src": src, **labels}),
            strict=True,
        )
    )
    if kind == "masked":
        tokens = np.full((1, prior.tgt_len), prior.mask_token, np.int64)
        for _ in range(passes):
            sessions["denoise"].run(None, {"tokens": tokens, **labels, **memory})
        return
    shape = (1, prior.cfg.n_heads, 0, prior.head_dim)
    past = [np.zeros(shape, np.float32)] * (2 * len(prior.decoder))
    names = cache_names("past", len(prior.decoder))
    token = np.full((1, 1), prior.start_token, np.int64)
    for _ in range(prior.tgt_len):
        _, _, *past = sessions["step"].run(
            None, {"tokens": token, **labels, **memory, **dict(zip(names, past, strict=True))}
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", action="append", required=True, help="NAME=section.key=value,... (small preset)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", choices=("top", "bottom"), default="bottom")
    args = parser.parse_args()
    torch.manual_seed(0)
    designs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.design:
            name, _, sets = spec.partition("=")
            config = override(preset("small"), [s for s in sets.split(",") if s])
            vqvae = VQVAE2(config.vqvae).eval()
            priors = {layer: build_prior(config, layer).eval() for layer in ("top", "bottom")}
            prior = priors[args.layer]
            kind = getattr(config, f"{args.layer}_prior").kind
            import onnxruntime as ort

            sessions = {}
            for part in ("encoder", PRIOR_KINDS[kind]):
                graph = f"{args.layer}_prior_{part}"
                path = Path(tmp) / f"{name}_{graph}.onnx"
                module = graph_module(graph, vqvae, priors)
                export_graph(graph, module, example_inputs(graph, vqvae, priors), path, n_layers(graph, priors))
                # The server runs one-token steps of a narrow prior on one thread (server.bundle.Bundle).
                threads = 1 if part == "step" and prior.cfg.d_model <= 256 else args.threads
                sessions[part] = ort.InferenceSession(str(path), session_options(threads))
            params = sum(p.numel() for p in prior.parameters())
            designs[name] = (sessions, prior, kind, getattr(config, f"{args.layer}_prior").passes, params)
        times: dict[str, list[float]] = {name: [] for name in designs}
        for _ in range(args.repeats):  # interleaved, so that drift hits every design alike
            for name, (sessions, prior, kind, passes, _) in designs.items():
                decode_once(sessions, prior, kind, passes)  # warm
                t0 = time.perf_counter()
                decode_once(sessions, prior, kind, passes)
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(next(iter(times.values())))
    print(f"| design | kind | passes | parameters | {args.layer} map p50 (ms) | ratio to the first |")
    print("|---|---|---|---|---|---|")
    for name, (_, _, kind, passes, params) in designs.items():
        p50 = statistics.median(times[name])
        shown = passes if kind == "masked" else "-"
        print(f"| {name} | {kind} | {shown} | {params / 1e6:.2f} M | {p50 * 1e3:.1f} | {p50 / base:.2f} |")


if __name__ == "__main__":
    main()
