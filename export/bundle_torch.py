"""A bundle read back on the offline side: its torch models with the weights its graphs hold, their parity with
onnxruntime, and the codes its encoder gives the training notes. `unpack`, `finetune-decoder`, `reguide` and the
benchmarks start from a bundle through this module; `export.onnx_export` is the way in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export import config as cfg
from export import run_folder
from export.config import DataConfig
from export.nsynth import load_splits, read_note
from export.onnx_export import PARITY_TOLERANCE, code_gap, example_inputs
from export.prior import Prior
from export.sampling_speed import TorchPriorSampler
from export.vqvae import VQVAE2
from server import codemaps
from server.bundle import Bundle
from server.sampling import Conditioning, MaskedSampler, PriorSampler
from server.vqvae_audio import encode_audio

COND = Conditioning(pitch=60, family=4)  # keyboard, middle C: what the OSC bench's server starts with


TRAINING_ONLY = (".cluster_size", ".embed_avg")


def _module_path(scope: str) -> str:
    """ONNX node scope "/decoder.0/ff/ff.0/MatMul" → module path "decoder.0.ff.0" (a Sequential's children are
    scoped "ff.0" under "ff")."""
    parts = scope.strip("/").split("/")[:-1]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return ".".join(kept)


def read_torch_models(bundle_dir: Path, priors: bool = True) -> tuple[cfg.RunConfig, VQVAE2, dict[str, Prior]]:
    """The torch models of a bundle, weights read back from its ONNX graphs (the export keeps parameter names):
    the baseline runs exactly the weights the server runs, with no run folder needed. Without `priors`, the
    VQ-VAE alone (the priors' dict is empty; building them takes seconds)."""
    import onnx
    from onnx import numpy_helper

    from server.bundle import read_manifest
    from server.dsp import Normalizer

    manifest = read_manifest(bundle_dir)
    config = cfg.from_dict(cfg.RunConfig, manifest.raw["config"])
    built = {layer: run_folder.build_prior(config, layer) for layer in (("top", "bottom") if priors else ())}
    models: dict[str, torch.nn.Module] = {
        "vqvae": VQVAE2(config.vqvae, config.spectrogram, Normalizer.from_dict(manifest.raw["normalizer"])),
        **{f"{layer}_prior": prior for layer, prior in built.items()},
    }
    found: dict[str, dict[str, torch.Tensor]] = {name: {} for name in models}
    for graph in manifest.graph_names:
        owner = "vqvae" if graph.startswith("vqvae") else graph.rsplit("_", 1)[0]
        if owner not in models:
            continue
        prefix = "vqvae." if owner == "vqvae" else "prior."
        proto = onnx.load(str(bundle_dir / manifest.graphs[graph]))
        arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        for name, array in arrays.items():
            if name.startswith(prefix):
                found[owner][name[len(prefix) :]] = torch.from_numpy(array.copy())
        # A bias-free Linear is exported as MatMul with its weight transposed into an anonymous initializer;
        # the node's scope name ("/decoder.0/ff/ff.0/MatMul") says which module it was.
        for node in proto.graph.node:
            anonymous = [x for x in node.input if x in arrays and not x.startswith(prefix)]
            if node.op_type == "MatMul" and len(anonymous) == 1:
                found[owner][_module_path(node.name) + ".weight"] = torch.from_numpy(arrays[anonymous[0]].T.copy())
            # The harmonic guidance's code profiles are a buffer measured at export, folded into a constant
            # (bins, n_codes): the one constant of that shape in a step graph.
            if graph.endswith(("_step", "_denoise")) and node.op_type == "Constant":
                value = numpy_helper.to_array(node.attribute[0].t)
                if value.shape == tuple(models[owner].code_profiles.shape[::-1]):
                    models[owner].code_profiles.copy_(torch.from_numpy(value.T.copy()))
    for name, model in models.items():
        expected = model.state_dict()
        # The codebooks' EMA statistics only serve training: no graph holds them.
        missing = sorted(k for k in set(expected) - set(found[name]) if not k.endswith(TRAINING_ONLY))
        if missing:
            raise ValueError(f"{bundle_dir}: {name} weights not found in its graphs: {', '.join(missing[:5])}")
        model.load_state_dict({k: found[name].get(k, v).to(v.dtype) for k, v in expected.items()})
        model.eval()
    return config, models["vqvae"], built  # type: ignore[return-value]


def _denoise_gap(bundle: Bundle, layer: str, prior: Prior, src: np.ndarray, rng: np.random.Generator) -> float:
    """The masked kind: |onnxruntime - torch| over one pass of a half-masked sequence (logits and harmonic)."""
    sampler = MaskedSampler(bundle, layer)
    hidden = rng.random(prior.tgt_len) < 0.5
    seq = np.where(hidden, bundle.manifest.mask_token, rng.integers(0, bundle.manifest.n_codes, prior.tgt_len))
    everywhere = np.arange(prior.tgt_len)
    ours = sampler.logits(seq, COND, sampler.encode(src, COND), everywhere, COND.guidance)
    pitch, family = torch.tensor([COND.pitch]), torch.tensor([COND.family])
    with torch.inference_mode():
        memory = prior.encode(torch.from_numpy(src[None]), pitch, family)
        logits = prior.denoise(torch.from_numpy(seq[None]), pitch, family, memory)
        theirs = (logits + COND.harmonic * prior.harmonic_bias(pitch, torch.from_numpy(everywhere)))[0].numpy()
    return float(np.abs(ours - theirs).max())


def check_read_back(bundle: Bundle, vqvae: VQVAE2, priors: dict[str, Prior]) -> float:
    """Largest difference between torch and onnxruntime on one encode (the codes' excess distance over the
    nearest, `export.onnx_export.code_gap`), one decode and one prior step per layer of `priors`."""
    spectrogram = example_inputs("vqvae_encoder", vqvae, priors, batch=1)["spectrogram"]
    worst = code_gap(vqvae, spectrogram, bundle.run("vqvae_encoder", spectrogram=spectrogram.numpy()))
    rng = np.random.default_rng(0)
    top = rng.integers(0, bundle.manifest.n_codes, codemaps.TOP_SHAPE)
    bottom = rng.integers(0, bundle.manifest.n_codes, codemaps.BOTTOM_SHAPE)
    ours = bundle.run("vqvae_decoder", codes_top=top[None], codes_bottom=bottom[None])[0]
    with torch.inference_mode():
        theirs = vqvae.decode_codes(torch.from_numpy(top[None]), torch.from_numpy(bottom[None])).numpy()
    # The IF is zeroed below the phase threshold: where the log-mel sits on it (float32's last bit), the two
    # runtimes may gate differently. Those cells are a threshold decision, not a weight difference.
    on_threshold = np.abs(theirs[:, 0] - vqvae.spec.phase_threshold) < 1e-4
    decoded = max(np.abs(ours[:, 0] - theirs[:, 0]).max(), np.abs(ours[:, 1] - theirs[:, 1])[~on_threshold].max())
    worst = max(worst, float(decoded))
    src = codemaps.to_sequence(top, "top")
    tokens = np.concatenate([[bundle.manifest.start_token], src[:9]])
    for layer, prior in priors.items():
        if prior.cfg.kind == "masked":
            worst = max(worst, _denoise_gap(bundle, layer, prior, src, rng))
            continue
        sampler, eager = PriorSampler(bundle, layer), TorchPriorSampler(prior, layer)
        mine, theirs = sampler.encode(src, COND), eager.encode(src, COND)
        a, _ = sampler.step(tokens, COND, sampler.empty_cache(mine), mine)
        b, _ = eager.step(tokens, COND, eager.empty_cache(theirs), theirs)
        worst = max(worst, float(np.abs(a - b).max()))
    if worst > PARITY_TOLERANCE:
        raise ValueError(f"torch weights read from the bundle differ from onnxruntime by {worst:.3g}")
    return worst


def training_codes(bundle: Bundle, data: Path, notes: int, cache: Path | None = None) -> dict[str, np.ndarray]:
    """{'top': (n, 32, 4), 'bottom': (n, 64, 8), 'family': (n,), 'pitch': (n,)}: the first `notes` training notes
    of a fixed draw (the draw `export.run_folder.set_code_profiles` takes its first 2 000 from) through the bundle's
    encoder; kept in `cache` (an .npz) when given: a later call encodes only the notes the cache lacks."""
    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if "pitch" in z.files:
                have = {k: z[k] for k in z.files}
    done = len(have["family"]) if have else 0
    if done >= notes:
        return {k: v[:notes] for k, v in have.items()}
    m = bundle.manifest
    train = load_splits(data, DataConfig(pitch_min=m.pitch_range[0], pitch_max=m.pitch_range[1], families=m.families))
    pick = np.random.default_rng(0).permutation(len(train["train"]))[done:notes]
    tops, bottoms = [], []
    for i in pick:
        top, bottom = encode_audio(bundle, read_note(train["train"][i], m.spectrogram))
        tops.append(top)
        bottoms.append(bottom)
    new = {
        "top": np.stack(tops),
        "bottom": np.stack(bottoms),
        "family": np.array([train["train"][i].family for i in pick]),
        "pitch": np.array([train["train"][i].pitch for i in pick]),
    }
    codes = {k: np.concatenate([have[k], v]) if have else v for k, v in new.items()}
    if cache is not None:
        np.savez(cache, **codes)
    return codes
