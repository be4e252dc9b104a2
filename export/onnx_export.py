"""Export a trained run to a model bundle: six ONNX graphs (a decoding graph per prior of its kind: step or
denoise) plus `manifest.json`, checked against torch.

All export-time surgery lives here (thin wrapper modules with fixed input/output names); the training
models stay as they are. Names and shapes of every graph are fixed by `server.bundle.graph_io`.
"""

from __future__ import annotations

import datetime
import json
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export import run_folder
from export.family_guidance import write_family_tables
from export.prior import Prior
from export.soundfont_dataset import DATASET_FILE
from export.vqvae import VQVAE2
from server import bundle, codemaps

OPSET = 17
PARITY_TOLERANCE = 1e-3  # max |onnxruntime - torch| allowed on any float output


class ParityError(ValueError):
    """An exported graph does not compute what the torch model computes."""


class EncoderGraph(nn.Module):
    def __init__(self, vqvae: VQVAE2):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, spectrogram):
        *_, codes_top, codes_bottom, _ = self.vqvae.encode(spectrogram)
        return codes_top, codes_bottom


class DecoderGraph(nn.Module):
    def __init__(self, vqvae: VQVAE2):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, codes_top, codes_bottom):
        return self.vqvae.decode_codes(codes_top, codes_bottom)


class PriorEncoderGraph(nn.Module):
    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, src, pitch, family):
        return tuple(self.prior.encode(src, pitch, family))


class PriorStepGraph(nn.Module):
    """Inputs tokens, pitch, family, then the 2L past tensors, then the 2L memory tensors; outputs the logits,
    the harmonic guidance of the same positions, then the 2L present tensors."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens, pitch, family, *caches):
        n = 2 * len(self.prior.decoder)
        past = list(caches[:n])
        logits, present = self.prior.step(tokens, pitch, family, past, list(caches[n:]))
        positions = torch.arange(tokens.shape[1]) + past[0].shape[2]
        return (logits, self.prior.harmonic_bias(pitch, positions), *present)


class PriorDenoiseGraph(nn.Module):
    """The masked kind: inputs tokens, pitch, family, then the 2L memory tensors; outputs the logits and the
    harmonic guidance at every position."""

    def __init__(self, prior: Prior):
        super().__init__()
        self.prior = prior

    def forward(self, tokens, pitch, family, *memory):
        logits = self.prior.denoise(tokens, pitch, family, list(memory))
        return logits, self.prior.harmonic_bias(pitch, torch.arange(tokens.shape[1]))


def n_layers(name: str, priors: dict[str, Prior]) -> int:
    layer = name.split("_")[0]
    return len(priors[layer].decoder) if layer in priors else 0


def example_inputs(
    name: str, vqvae: VQVAE2, priors: dict[str, Prior], batch: int = 2, past: int = 3, new: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Valid inputs for graph `name`, keyed and ordered by its input names (also used for parity checks)."""
    g = torch.Generator().manual_seed(seed)
    k = vqvae.cfg.n_codes
    if name == "vqvae_encoder":
        spec = torch.randn(batch, 2, 1024, 128, generator=g)
        spec[:, 0] = spec[:, 0] * 4 - 6  # roughly the range of log mel power
        return {"spectrogram": spec}
    if name == "vqvae_decoder":
        return {
            "codes_top": torch.randint(0, k, (batch, *codemaps.TOP_SHAPE), generator=g),
            "codes_bottom": torch.randint(0, k, (batch, *codemaps.BOTTOM_SHAPE), generator=g),
        }
    prior = priors[name.split("_")[0]]
    labels = {
        "pitch": torch.randint(24, 85, (batch,), generator=g),
        "family": torch.randint(0, 11, (batch,), generator=g),
    }
    src = torch.randint(0, k + 1, (batch, prior.src_len), generator=g)
    if name.endswith("encoder"):
        return {"src": src, **labels}
    with torch.no_grad():
        memory = prior.encode(src, labels["pitch"], labels["family"])
    n = len(prior.decoder)
    memory_inputs = dict(zip(bundle.cache_names("memory", n), memory, strict=True))
    if name.endswith("denoise"):  # a whole sequence, some of it masked
        tokens = torch.randint(0, k + 1, (batch, prior.tgt_len - past), generator=g)
        return {"tokens": tokens, **labels, **memory_inputs}
    cache = [torch.randn(batch, prior.cfg.n_heads, past, prior.head_dim, generator=g) for _ in range(2 * n)]
    tokens = torch.randint(0, k + 1, (batch, new), generator=g)
    return {
        "tokens": tokens,
        **labels,
        **dict(zip(bundle.cache_names("past", n), cache, strict=True)),
        **memory_inputs,
    }


def dynamic_axes(name: str, n: int) -> dict[str, dict[int, str]]:
    """Batch everywhere; the number of new tokens and the cache lengths of the step graph."""
    names_in, names_out = bundle.graph_io(name, n)
    axes = {key: {0: "batch"} for key in (*names_in, *names_out)}
    axes.update({key: {0: "batch", 1: "new"} for key in ("tokens", "logits") if key in axes})
    axes.update({key: {0: "batch", 2: "past"} for key in bundle.cache_names("past", n) if key in axes})
    axes.update({key: {0: "batch", 2: "total"} for key in bundle.cache_names("present", n) if key in axes})
    return axes


def graph_module(name: str, vqvae: VQVAE2, priors: dict[str, Prior]) -> nn.Module:
    if name == "vqvae_encoder":
        return EncoderGraph(vqvae)
    if name == "vqvae_decoder":
        return DecoderGraph(vqvae)
    prior = priors[name.split("_")[0]]
    if name.endswith("encoder"):
        return PriorEncoderGraph(prior)
    return PriorDenoiseGraph(prior) if name.endswith("denoise") else PriorStepGraph(prior)


def export_graph(name: str, module: nn.Module, inputs: dict[str, torch.Tensor], path: Path, n: int = 0) -> None:
    """`n`: the prior's decoder layers (0 for the VQ-VAE graphs)."""
    names_in, names_out = bundle.graph_io(name, n)
    axes = dynamic_axes(name, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice; it is the faster graph
        torch.onnx.export(
            module.eval(),
            tuple(inputs[n] for n in names_in),
            str(path),
            input_names=list(names_in),
            output_names=list(names_out),
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def code_gap(vqvae: VQVAE2, spectrogram: torch.Tensor, codes: list[np.ndarray]) -> float:
    """How far the codes onnxruntime chose are from torch's nearest codes, as the largest relative excess
    distance. Near-identical codes (re-seeded from the same data) make argmin ties, so comparing indices
    would fail on equivalent choices; 0 means every choice is a nearest code."""
    latents: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, key=key: latents.__setitem__(key, out))
        for key, module in (("top", vqvae.pre_q_t), ("bottom", vqvae.pre_q_b))
    ]
    with torch.no_grad():
        vqvae.encode(spectrogram)
    for hook in hooks:
        hook.remove()
    worst = 0.0
    for key, quantizer, chosen in zip(("top", "bottom"), (vqvae.quantize_t, vqvae.quantize_b), codes, strict=True):
        d = quantizer.distances(latents[key].permute(0, 2, 3, 1))  # (N, K)
        best = d.min(1).values
        picked = d.gather(1, torch.from_numpy(chosen).reshape(-1, 1).long())[:, 0]
        worst = max(worst, ((picked - best) / (1 + best.abs())).max().item())
    return worst


def check_parity(name: str, module: nn.Module, path: Path, inputs: dict[str, torch.Tensor]) -> float:
    """Run torch and onnxruntime on the same inputs; returns max |difference| (codes: see `code_gap`)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    if name == "vqvae_encoder":
        return code_gap(module.vqvae, inputs["spectrogram"], got)
    with torch.no_grad():
        expected = module(*inputs.values())
    expected = expected if isinstance(expected, tuple) else (expected,)
    worst = 0.0
    for e, o in zip(expected, got, strict=True):
        e = e.numpy()
        if e.shape != o.shape:
            raise ParityError(f"{name}: onnxruntime shape {o.shape} != torch shape {e.shape}")
        worst = max(worst, float(np.max(np.abs(e - o))))
    return worst


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _read_command_log(run: Path) -> list[dict]:
    path = run / run_folder.COMMAND_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def _family_guidance(run: Path, out: Path, config) -> dict:
    """{'family_guidance': manifest entry} from the run's training codes, or {} for a run without codes."""
    path = run_folder.codes_file(run, "train")
    if not path.is_file():
        return {}
    z = np.load(path)
    codes = {"top": z["top"], "bottom": z["bottom"], "family": z["family"], "pitch": z["pitch"]}
    pitch_range = (config.data.pitch_min, config.data.pitch_max)
    entry = write_family_tables(out, codes, len(config.data.families), config.vqvae.n_codes, pitch_range)
    return {"family_guidance": entry}


def export_checked(graph: str, vqvae: VQVAE2, priors: dict[str, Prior], out: Path) -> tuple[dict, float]:
    """Export one graph into `out` and check it against torch: (its manifest entry, its parity)."""
    module = graph_module(graph, vqvae, priors)
    path = out / f"{graph}.onnx"
    n = n_layers(graph, priors)
    export_graph(graph, module, example_inputs(graph, vqvae, priors), path, n)
    # Check on inputs other than the tracing ones: batch 1, another cache length, another N.
    parity = check_parity(graph, module, path, example_inputs(graph, vqvae, priors, 1, 11, 5, seed=1))
    if parity > PARITY_TOLERANCE:
        raise ParityError(f"{graph}: onnxruntime differs from torch by {parity:.3g} (tolerance {PARITY_TOLERANCE})")
    names_in, names_out = bundle.graph_io(graph, n)
    return {"file": path.name, "inputs": list(names_in), "outputs": list(names_out)}, parity


def export_bundle(run: Path, out: Path, name: str | None = None) -> dict:
    """Export every graph of `run` into `out`, check parity, write the manifest; returns the manifest."""
    config, data = run_folder.load_run(run)
    vqvae = run_folder.load_vqvae(run, config)
    priors, prior_ckpts = {}, {}
    for layer in codemaps.LAYERS:
        priors[layer], prior_ckpts[layer] = run_folder.load_prior(run, config, layer)
    vq_ckpt = run_folder.load_checkpoint(run / run_folder.VQVAE_FILE)
    run_folder.set_code_profiles(run, vqvae, list(priors.values()))  # baked into the step graphs
    out.mkdir(parents=True, exist_ok=True)
    # The manifest is written last: a folder being (re-)exported, or whose export failed, is never a bundle.
    (out / bundle.MANIFEST).unlink(missing_ok=True)
    graphs, parity = {}, {}
    for graph in bundle.bundle_graphs({layer: p.cfg.kind for layer, p in priors.items()}):
        graphs[graph], parity[graph] = export_checked(graph, vqvae, priors, out)
    manifest = {
        "format_version": bundle.FORMAT_VERSION,
        "name": name or run.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "spectrogram": config.spectrogram.to_dict(),
        "normalizer": vq_ckpt["normalizer"],
        "pitch_range": [config.data.pitch_min, config.data.pitch_max],
        "families": list(config.data.families),
        "n_codes": config.vqvae.n_codes,
        "codemaps": {
            "top": {"shape": list(codemaps.TOP_SHAPE), "order": "time-major, frequency first: t * 32 + f"},
            "bottom": {
                "shape": list(codemaps.BOTTOM_SHAPE),
                "order": "2x2 patches in top order; inside (t0,f0) (t0,f1) (t1,f0) (t1,f1): 4 (t*32+f) + 2 dt + df",
            },
            "rows": "row 0 is the lowest frequency",
        },
        "tokens": {"mask": priors["top"].mask_token, "start": priors["top"].start_token},
        "priors": {
            layer: {
                "n_layers": len(p.decoder),
                "n_heads": p.cfg.n_heads,
                "head_dim": p.head_dim,
                "src_len": p.src_len,
                "tgt_len": p.tgt_len,
                "unconditional": bool(p.null_labels),
                "null_labels": list(p.null_labels),
                "harmonic_conditioning": p.cfg.harmonic,
                "kind": p.cfg.kind,
                **(
                    {"passes": p.cfg.passes, "anneal_guidance": p.cfg.anneal_guidance} if p.cfg.kind == "masked" else {}
                ),
            }
            for layer, p in priors.items()
        },
        "graphs": graphs,
        **_family_guidance(run, out, config),
        "parity": {
            "tolerance": PARITY_TOLERANCE,
            "max_abs_diff": parity,
            "note": "vqvae_encoder: largest relative excess distance of the chosen codes over the nearest",
        },
        "provenance": {
            "data": str(data),
            "dataset": _read_json(data / DATASET_FILE),
            "commands": _read_command_log(run),
            "steps": {"vqvae": vq_ckpt["step"], **{f"{k}_prior": v["step"] for k, v in prior_ckpts.items()}},
            "metrics": {
                "vqvae": vq_ckpt.get("metrics", {}),
                **{f"{k}_prior": v.get("metrics", {}) for k, v in prior_ckpts.items()},
            },
            "torch": torch.__version__,
            "python": platform.python_version(),
            "opset": OPSET,
        },
        "config": config.to_dict(),
    }
    bundle.write_manifest(out, manifest)
    return manifest
