"""The model bundle: a folder of ONNX graphs plus `manifest.json`, the one contract between export and server.

`export.onnx_export` writes bundles with `write_manifest`; the server opens them with `Bundle`, which validates
the manifest (keys, values, files confined to the bundle's folder) and opens one onnxruntime session per graph
on the provider the user chose.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server import codemaps
from server.dsp import Normalizer, SpectrogramParams
from server.protocol import RATES

FORMAT_VERSION = 2  # 2: prior step graphs also output the harmonic guidance
MANIFEST = "manifest.json"
# NSynth's families, in NSynth's id order (instrument_family 0..10).
FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string", "synth_lead", "vocal")
PITCH_MIN, PITCH_MAX = 24, 84  # inclusive MIDI range of the conditioning

# Every graph of a bundle. Input and output names (the export side writes exactly these, see `graph_io`):
#   codes_* (B, F, T) int64; spectrogram (B, 2, 1024, 128) float32, raw (the graphs normalise inside);
#   src (B, S) int64; pitch, family (B,) int64 (pitch as a MIDI number); tokens (B, N) int64;
#   logits (B, N, n_codes); harmonic (B, N, n_codes): how well each code fits the pitch's harmonics there;
#   memory.{l}.key / .value (B, H, S, Dh): decoder layer l's cross-attention inputs;
#   past.{l}.* (B, H, P, Dh) → present.{l}.* (B, H, P+N, Dh): its self-attention cache.
#   the masked kind's denoise graph: tokens (B, T) with the mask token where a cell is to be drawn, pitch, family,
#   memory → logits (B, T, n_codes), harmonic (B, T, n_codes) at every position.
# Each prior kind (`priors.{layer}.kind`, "autoregressive" when absent) has its encoder and one decoding graph.
PRIOR_KINDS = {"autoregressive": "step", "masked": "denoise"}
AUTOREGRESSIVE = "autoregressive"


def bundle_graphs(kinds: dict[str, str] | None = None) -> tuple[str, ...]:
    """Every graph of a bundle whose priors are of `kinds` ({layer: kind}; autoregressive when left out)."""
    kinds = kinds or {}
    priors = (f"{layer}_prior_{part}" for layer in ("top", "bottom")
              for part in ("encoder", PRIOR_KINDS[kinds.get(layer, AUTOREGRESSIVE)]))  # fmt: skip
    return ("vqvae_encoder", "vqvae_decoder", *priors)


GRAPHS = bundle_graphs()  # the autoregressive bundle's
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "coreml": ["CoreMLExecutionProvider", "CPUExecutionProvider"],
}


def cache_names(kind: str, n_layers: int) -> tuple[str, ...]:
    """'memory', 'past' or 'present' → (kind.0.key, kind.0.value, kind.1.key, ...)."""
    return tuple(f"{kind}.{layer}.{part}" for layer in range(n_layers) for part in ("key", "value"))


def graph_io(graph: str, n_layers: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input names, output names) of `graph`; prior graphs need their decoder's layer count."""
    if graph == "vqvae_encoder":
        return ("spectrogram",), ("codes_top", "codes_bottom")
    if graph == "vqvae_decoder":
        return ("codes_top", "codes_bottom"), ("spectrogram",)
    labels = ("pitch", "family")
    if graph.endswith("_prior_encoder"):
        return ("src", *labels), cache_names("memory", n_layers)
    if graph.endswith("_prior_step"):
        inputs = ("tokens", *labels, *cache_names("past", n_layers), *cache_names("memory", n_layers))
        return inputs, ("logits", "harmonic", *cache_names("present", n_layers))
    if graph.endswith("_prior_denoise"):
        return ("tokens", *labels, *cache_names("memory", n_layers)), ("logits", "harmonic")
    raise ValueError(f"unknown graph {graph!r}")


class BundleError(ValueError):
    """A bundle that cannot be used; the message says which file and what is wrong."""


@dataclass(frozen=True)
class PriorShape:
    """What a sampler needs to build an empty key/value cache."""

    n_layers: int
    n_heads: int
    head_dim: int
    # The labels the unconditional prediction drops (-1): ("pitch", "family"), ("family",) for guidance on the
    # family alone, or () for a prior trained without label dropout (no guidance possible).
    null_labels: tuple[str, ...] = ()
    kind: str = AUTOREGRESSIVE  # a key of PRIOR_KINDS
    passes: int = 8  # the masked kind: decoding passes for a whole map
    anneal_guidance: bool = False  # the masked kind: /guidance's weight in the first pass, fading to 1 in the last

    @property
    def unconditional(self) -> bool:
        return bool(self.null_labels)


@dataclass
class Manifest:
    spectrogram: SpectrogramParams
    normalizer: Normalizer
    families: tuple[str, ...]
    pitch_range: tuple[int, int]
    n_codes: int
    mask_token: int  # top-prior encoder input for a cell to regenerate
    start_token: int  # first decoder input of both priors
    priors: dict[str, PriorShape]
    graphs: dict[str, str]  # graph name → file name
    raw: dict[str, Any] = field(repr=False)
    # Optional: an .npz of per-layer (families, sequence length, n_codes) float log-ratios for family guidance
    # (export/family_guidance.py); a bundle without one samples without it.
    family_guidance: str | None = None

    @property
    def graph_names(self) -> tuple[str, ...]:
        return bundle_graphs({layer: p.kind for layer, p in self.priors.items()})

    def decoding_graph(self, layer: str) -> str:
        """The graph a `layer` prior decodes with: its step graph, or the masked kind's denoise graph."""
        return f"{layer}_prior_{PRIOR_KINDS[self.priors[layer].kind]}"


def _require(data: dict, key: str, where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing key {key!r}")
    return data[key]


def _null_labels(prior: dict, where: str) -> tuple[str, ...]:
    """A prior's `null_labels`; bundles before it say only `unconditional` (both labels dropped)."""
    labels = prior.get("null_labels", ["pitch", "family"] if prior.get("unconditional") else [])
    if not isinstance(labels, list) or not set(labels) <= {"pitch", "family"}:
        raise BundleError(f"{where}: null_labels must list 'pitch' and/or 'family', not {labels!r}")
    if labels and "family" not in labels:
        raise BundleError(f"{where}: null_labels {labels!r} drops the pitch but keeps the family (not a trained mode)")
    return tuple(labels)


def _kind(prior: dict, where: str) -> str:
    kind = prior.get("kind", AUTOREGRESSIVE)
    if kind not in PRIOR_KINDS:
        raise BundleError(
            f"{where}: kind {kind!r} is not a prior kind this inpaint-osc reads ({', '.join(PRIOR_KINDS)})"
        )
    return kind


def parse_manifest(data: Any, where: str = MANIFEST) -> Manifest:
    """Validate a manifest dictionary; any problem raises BundleError naming the key."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object")
    version = _require(data, "format_version", where)
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where}: format_version {version!r} is not supported (this inpaint-osc reads version "
            f"{FORMAT_VERSION}); re-export the bundle with a matching `inpaint-train export`"
        )
    try:
        spec = SpectrogramParams(**_require(data, "spectrogram", where))
        normalizer = Normalizer.from_dict(_require(data, "normalizer", where))
        priors = {
            layer: PriorShape(
                **{k: int(v[k]) for k in ("n_layers", "n_heads", "head_dim")},
                null_labels=_null_labels(v, f"{where}: priors.{layer}"),
                kind=_kind(v, f"{where}: priors.{layer}"),
                passes=int(v.get("passes", 8)),
                anneal_guidance=bool(v.get("anneal_guidance", False)),
            )
            for layer, v in _require(data, "priors", where).items()
        }
        graphs = {name: str(entry["file"]) for name, entry in _require(data, "graphs", where).items()}
        pitch_range = tuple(int(x) for x in _require(data, "pitch_range", where))
        manifest = Manifest(
            spectrogram=spec,
            normalizer=normalizer,
            families=tuple(_require(data, "families", where)),
            pitch_range=(pitch_range[0], pitch_range[1]),
            n_codes=int(_require(data, "n_codes", where)),
            mask_token=int(_require(data["tokens"], "mask", where + ": tokens")),
            start_token=int(_require(data["tokens"], "start", where + ": tokens")),
            priors=priors,
            graphs=graphs,
            raw=data,
            family_guidance=str(data["family_guidance"]["file"]) if "family_guidance" in data else None,
        )
    except BundleError:
        raise
    except (TypeError, KeyError, ValueError, IndexError) as exc:
        raise BundleError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") from None
    _check_values(manifest, where)
    missing = set(manifest.graph_names) - set(graphs)
    if missing:
        raise BundleError(f"{where}: graphs missing from the manifest: {', '.join(sorted(missing))}")
    if set(priors) != {"top", "bottom"}:
        raise BundleError(f"{where}: 'priors' must describe 'top' and 'bottom'")
    return manifest


def _check_values(m: Manifest, where: str) -> None:
    """Values a damaged manifest may hold that would load but play silence or fail on every request."""
    sp = m.spectrogram
    counts = {k: getattr(sp, k) for k in ("n_samples", "n_fft", "hop", "n_frames", "n_mels")}
    problems = [f"spectrogram.{k} {v!r} is not a positive integer" for k, v in counts.items()
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0]  # fmt: skip
    if not isinstance(sp.sample_rate, int) or not RATES[0] <= sp.sample_rate <= RATES[1]:
        problems.append(f"spectrogram.sample_rate {sp.sample_rate!r} is not a rate in {RATES[0]}..{RATES[1]} Hz")
    numbers = (sp.mel_low_hz, sp.mel_high_hz, sp.mel_break_hz, sp.min_band_width_bins, sp.eps, sp.phase_threshold)
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers) or sp.eps <= 0:
        problems.append("spectrogram: mel frequencies, eps and phase_threshold must be finite (eps above 0)")
    if not 2 <= m.n_codes <= 32767:  # sessions store codes as int16
        problems.append(f"n_codes {m.n_codes} is outside 2..32767")
    for name, token in (("mask", m.mask_token), ("start", m.start_token)):
        if not 0 <= token <= m.n_codes + 2:
            problems.append(f"tokens.{name} {token} is outside 0..{m.n_codes + 2} (the codes and the special tokens)")
    lo, hi = m.pitch_range
    if not 0 <= lo <= hi <= 127:
        problems.append(f"pitch_range {[lo, hi]} is not a MIDI range")
    if not m.families or not all(isinstance(f, str) and f for f in m.families):
        problems.append("families must be a list of names")
    files = [*m.graphs.values(), *([m.family_guidance] if m.family_guidance is not None else [])]
    for file in files:
        if Path(file).is_absolute() or ".." in Path(file).parts:
            problems.append(f"file {file!r} is not inside the bundle (a name relative to its folder)")
    for layer, p in m.priors.items():
        if p.kind == "masked" and not 1 <= p.passes <= 64:
            problems.append(f"priors.{layer}.passes {p.passes} is outside 1..64")
    if problems:
        raise BundleError(f"{where}: {'; '.join(problems)}")


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{path}: JSON nested too deep to be a manifest") from None
    return parse_manifest(data, str(path))


def write_manifest(bundle_dir: str | Path, data: dict) -> Path:
    """Validate, then write atomically (a half-written manifest must never be read)."""
    parse_manifest(data, "manifest to write")
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


def session_options(threads: int = 0) -> Any:  # onnxruntime.SessionOptions (imported lazily)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads  # 0: onnxruntime's choice (all physical cores)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # provider fall-back warnings are reported through `providers` instead
    # Idle pool threads would spin for a while after each call, stealing the next session's cores (on 2 cores a
    # top-cell inpaint plus render took 64 ms spinning, 36 ms not).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def resolve_providers(choice: str) -> list[str]:
    """'cpu', 'cuda', 'coreml' or 'auto' → the provider list handed to onnxruntime."""
    import onnxruntime as ort

    if choice == "auto":
        available = ort.get_available_providers()
        for name in ("cuda", "coreml"):
            if PROVIDERS[name][0] in available:
                return PROVIDERS[name]
        return PROVIDERS["cpu"]
    if choice not in PROVIDERS:
        raise BundleError(f"unknown provider {choice!r}: choose cpu, cuda, coreml or auto")
    return PROVIDERS[choice]


def pitch_region(pitch: Any, regions: np.ndarray) -> Any:
    """The region of each pitch (an int or an array): the last whose lowest pitch is at or below it, the first for
    any pitch below them all. The one rule for the tables' counting (export) and their use (sampling)."""
    return np.maximum(np.searchsorted(regions, pitch, side="right") - 1, 0)


@dataclass(frozen=True)
class FamilyTables:
    """Family guidance's log-ratios (export/family_guidance.py): per layer (families, pitch regions, L, n_codes),
    float16 as stored; region r holds the pitches from regions[r] up to the next region's lowest."""

    layers: dict[str, np.ndarray]
    regions: np.ndarray  # (R,) int64, ascending

    def bias(self, layer: str, family: int, pitch: int) -> np.ndarray | None:
        """(L, n_codes) log-ratios for this family at this pitch (a view), or None for a family it lacks."""
        table = self.layers.get(layer)
        if table is None or not 0 <= family < table.shape[0]:
            return None
        return table[family, int(pitch_region(pitch, self.regions))]


class Bundle:
    """An opened bundle: the manifest plus one onnxruntime session per graph.

    `provider` is what actually runs: onnxruntime silently falls back to CPU when CUDA or CoreML cannot load.
    """

    def __init__(
        self, bundle_dir: str | Path, provider: str = "cpu", threads: int = 0, prior_threads: int | None = None
    ):
        self.path = Path(bundle_dir)
        self.manifest = read_manifest(self.path)
        providers = resolve_providers(provider)
        if prior_threads is None:
            # A one-token step of a narrow prior is a chain of small products: a second thread costs as much in
            # hand-offs as it saves (d_model 128: 0.2 ms either way), while long known prefixes and the encoders
            # gain (296 tokens: 9.3 ms on one thread, 5.5 on two). Such priors get a second, one-thread session
            # for single steps. Wide priors gain everywhere (d_model 512: 8.8 ms on one thread, 6.2 on two).
            widest = max(p.n_heads * p.head_dim for p in self.manifest.priors.values())
            prior_threads = 1 if widest <= 256 else threads
        self.sessions: dict[str, Any] = {}  # name → onnxruntime.InferenceSession
        for name in self.manifest.graph_names:
            self.sessions[name] = self._open(name, session_options(threads), providers)
        # The session for one-token steps: the step graph again on `prior_threads` when that differs.
        self.single_step: dict[str, Any] = {}
        for layer, prior in self.manifest.priors.items():
            if prior.kind != AUTOREGRESSIVE:
                continue
            name = f"{layer}_prior_step"
            single = session_options(prior_threads)
            self.single_step[layer] = (
                self.sessions[name] if prior_threads == threads else self._open(name, single, providers)
            )
        self.provider = self.sessions["vqvae_decoder"].get_providers()[0]
        self.family_tables = self._family_tables()  # None: a bundle without family guidance
        self._check_priors()

    def _check_priors(self) -> None:
        """Each prior's decoding graph runs its layer's last position (a few ms). The two priors' graphs
        have the same inputs and outputs, so a bundle whose top and bottom graphs were swapped would load and
        then fail every /generate: it is refused here, in one line."""
        lengths = {layer: math.prod(codemaps.layer_shape(layer)) for layer in self.manifest.priors}
        labels = {"pitch": np.array([self.manifest.pitch_range[0]], np.int64), "family": np.zeros(1, np.int64)}
        for layer, shape in self.manifest.priors.items():
            encoder, step = f"{layer}_prior_encoder", self.manifest.decoding_graph(layer)
            try:
                # Both encoders read the top map.
                outputs = self.run(encoder, src=np.zeros((1, lengths["top"]), np.int64), **labels)
                feed: dict[str, np.ndarray] = dict(labels)
                feed.update(zip((o.name for o in self.sessions[encoder].get_outputs()), outputs, strict=True))
                if shape.kind == AUTOREGRESSIVE:  # one token after a full cache
                    feed["tokens"] = np.full((1, 1), self.manifest.start_token, np.int64)
                    past = np.zeros((1, shape.n_heads, lengths[layer] - 1, shape.head_dim), np.float32)
                    feed.update(dict.fromkeys(cache_names("past", shape.n_layers), past))
                else:  # the whole sequence
                    feed["tokens"] = np.full((1, lengths[layer]), self.manifest.mask_token, np.int64)
                self.run(step, **feed)
            except Exception as exc:  # onnxruntime's errors for out-of-range positions or mismatched shapes
                raise BundleError(
                    f"{self.path}: the {layer} prior's graphs cannot run its {lengths[layer]}-token sequence "
                    f"(are the top and bottom graphs swapped?): {type(exc).__name__}: {str(exc)[:200]}"
                ) from None

    def _family_tables(self) -> FamilyTables | None:
        name = self.manifest.family_guidance
        if name is None:
            return None
        file = self.path / name
        try:
            with np.load(file) as z:
                # A prior whose table the bundle leaves out samples without family guidance.
                tables = {layer: z[layer].astype(np.float16) for layer in self.manifest.priors if layer in z.files}
                regions = z["pitch_regions"].astype(np.int64) if "pitch_regions" in z.files else np.zeros(1, np.int64)
        except Exception as exc:  # numpy and zipfile raise many kinds on a truncated or empty file
            raise BundleError(f"{file}: family guidance tables unreadable ({type(exc).__name__}: {exc})") from None
        if not tables:
            raise BundleError(f"{file}: family guidance tables for none of the priors {list(self.manifest.priors)}")
        for layer, table in tables.items():
            if table.ndim == 3:  # tables of one pitch region (the first format)
                tables[layer] = table = table[:, None]
            expected = (len(self.manifest.families), len(regions), self.manifest.n_codes)
            if table.ndim != 4 or (table.shape[0], table.shape[1], table.shape[3]) != expected:
                raise BundleError(
                    f"{file}: {layer} table has shape {table.shape}, expected "
                    f"({expected[0]}, {expected[1]}, L, {expected[2]}) for {len(regions)} pitch regions"
                )
        if regions.ndim != 1 or (np.diff(regions) <= 0).any():
            raise BundleError(f"{file}: pitch_regions must be ascending lowest pitches, got {regions.tolist()}")
        return FamilyTables(tables, regions)

    def _open(self, name: str, options: Any, providers: list[str]) -> Any:
        import onnxruntime as ort

        inputs, outputs = graph_io(name, self.n_layers(name))
        file = self.path / self.manifest.graphs[name]
        if not file.is_file():
            raise BundleError(f"{self.path}: graph file {file.name} ({name}) is missing")
        try:
            sess = ort.InferenceSession(str(file), options, providers=providers)
        except Exception as exc:  # onnxruntime raises several unrelated types for bad files
            raise BundleError(f"{file}: onnxruntime cannot load it ({exc})") from None
        got_in = tuple(i.name for i in sess.get_inputs())
        got_out = tuple(o.name for o in sess.get_outputs())
        if set(got_in) != set(inputs) or set(got_out) != set(outputs):
            raise BundleError(f"{file}: inputs {got_in} / outputs {got_out}, expected {inputs} / {outputs}")
        return sess

    def n_layers(self, graph: str) -> int:
        """Decoder layers of the prior a graph belongs to (0 for the VQ-VAE graphs)."""
        layer = graph.split("_")[0]
        return self.manifest.priors[layer].n_layers if layer in self.manifest.priors else 0

    def run(self, graph: str, run_options: Any = None, **inputs: np.ndarray) -> list[np.ndarray]:
        """One graph call; `run_options` (from `stoppable`) lets another thread stop it between two nodes."""
        return self.sessions[graph].run(None, inputs, run_options)

    @staticmethod
    def stoppable() -> Any:  # onnxruntime.RunOptions
        """Run options whose `terminate = True`, set from any thread, stops the graph calls given them within a
        node or two (a few ms); the call then raises. One use: a new one for each piece of work."""
        import onnxruntime as ort

        return ort.RunOptions()
