"""Sampling and inpainting with the bundle's prior graphs (numpy + onnxruntime).

Masked positions are visited in sequence order; kept positions are never sampled. A known run of tokens
(the prefix, or the kept tokens between two masked ones) goes through the step graph in one call, and every
call reuses the key/value cache, so a full generation costs one call per sampled token. Top inpainting then
resamples the bottom cells under the edited top cells, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from server import codemaps
from server.bundle import Bundle, cache_names
from server.protocol import DEFAULTS

WIDE_STEP = 32  # decoder inputs from which a step call goes to the all-threads session (see Bundle)
NULL_LABEL = -1  # a label the unconditional prediction drops (priors trained with label dropout)
# The server's defaults, written once in the settings table (docs/ablations.md says why these values).
DEFAULT_GUIDANCE = DEFAULTS["guidance"]  # classifier-free guidance weight; 1 is the plain conditional model
DEFAULT_HARMONIC = DEFAULTS["harmonic"]  # harmonic guidance weight; 0 is the model alone
DEFAULT_TIMBRE = DEFAULTS["timbre"]  # family guidance weight, where the bundle has its tables; 0: the model alone


@dataclass(frozen=True)
class Conditioning:
    pitch: int  # MIDI number within the bundle's pitch range
    family: int  # index into the bundle's families
    temperature: float = 1.0
    top_p: float = 0.8  # the paper's audio examples: temperature 1, nucleus 0.8
    # Classifier-free guidance: logits u + guidance (c - u) from the conditional (c) and unconditional (u)
    # predictions, both in one batched call. Above 1 the sound follows the pitch and family more strictly.
    guidance: float = DEFAULT_GUIDANCE
    # Harmonic guidance: + harmonic x (how well each code's partials sit on the pitch's harmonics in its band),
    # an output of the step graph. 0 leaves the model alone; higher pulls every partial into tune.
    harmonic: float = DEFAULT_HARMONIC
    # Family guidance: + timbre x log p(code | position, family) / p(code | position), counted from the training
    # codes (the bundle's optional tables). 0 leaves the model alone; higher leans towards the family's codes.
    timbre: float = DEFAULT_TIMBRE


def sample_logits(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One draw from (V,) logits with temperature and nucleus (top-p) filtering; temperature <= 0 is argmax."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    weights = np.exp(z - z.max())  # unnormalised: the draw below scales by the kept total
    descending = np.sort(weights)[::-1]
    cumulative = np.cumsum(descending)
    keep = min(int(np.searchsorted(cumulative, min(top_p, 1.0) * cumulative[-1])) + 1, weights.size)
    # The nucleus is every token at least as likely as the last one needed to reach top_p. The draw runs over
    # it in token order, not sorted order, so two runtimes whose logits differ by float rounding (and might
    # sort near-equal tokens differently) still draw the same token.
    kept = np.where(weights >= descending[keep - 1], weights, 0.0)
    cumulative = np.cumsum(kept)
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return min(pick, weights.size - 1)


NUCLEUS_CANDIDATES = 64  # sample_rows sorts only this many most likely tokens of a row, unless its nucleus is wider


def sample_rows(
    logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`sample_logits` on every row of (N, V) logits at once → draws (N,) and their log-probabilities (N,)
    under the tempered distribution (the masked kind's confidence). A nucleus is found among a row's
    NUCLEUS_CANDIDATES most likely tokens (a partition, not a sort of all V), a row whose nucleus is wider is
    sorted whole: the same draws, five times faster at V = 512."""
    n, v = logits.shape
    z = logits.astype(np.float64) / max(temperature, 1e-6)
    z -= z.max(1, keepdims=True)
    weights = np.exp(z)
    total = weights.sum(1)
    rows = np.arange(n)
    if temperature <= 0:
        pick = np.argmax(logits, 1)
        return pick, np.log(weights[rows, pick] / total)
    k = min(NUCLEUS_CANDIDATES, v)
    descending = -np.sort(-np.partition(weights, v - k, 1)[:, v - k :], 1)  # (N, k) the most likely, sorted
    target = min(top_p, 1.0) * total
    cumulative = np.cumsum(descending, 1)
    wide = cumulative[:, -1] < target  # rows whose nucleus holds more than k tokens
    keep = np.minimum((cumulative < target[:, None]).sum(1) + 1, k)
    floor = descending[rows, keep - 1]
    if wide.any():
        full = -np.sort(-weights[wide], 1)
        needed = (np.cumsum(full, 1) < target[wide, None]).sum(1) + 1
        floor[wide] = full[np.arange(full.shape[0]), np.minimum(needed, v) - 1]
    kept = np.cumsum(np.where(weights >= floor[:, None], weights, 0.0), 1)
    pick = np.minimum((kept <= rng.random((n, 1)) * kept[:, -1:]).sum(1), v - 1)
    return pick, np.log(weights[rows, pick] / total)


# The masked kind's decoding (MaskGIT, Chang et al. 2022): every pass draws all masked cells, keeps the most
# confident of them (log-probability + Gumbel noise, CHOICE_NOISE x the fraction of passes left) and masks the
# rest again; the number still masked after pass k of K is n cos(pi/2 k/K).
CHOICE_NOISE = 4.5


def pass_guidance(guidance: float, i: int, passes: int, anneal: bool) -> float:
    """The classifier-free guidance weight of pass i of `passes`: `guidance` throughout, or annealed (MAGNeT)
    linearly from it in the first pass to 1 (the plain conditional model) in the last."""
    if not anneal or passes == 1:
        return guidance
    return 1 + (guidance - 1) * (1 - i / (passes - 1))


def unmask_counts(n: int, passes: int) -> list[int]:
    """Cells each pass keeps, for n masked cells: min(passes, n) passes, each keeping at least one."""
    k = min(passes, n)
    counts, left = [], n
    for i in range(1, k + 1):
        remaining = 0 if i == k else min(int(n * np.cos(np.pi / 2 * i / k)), left - 1)
        counts.append(left - remaining)
        left = remaining
    return counts


class _LabelledPrior:
    """What every prior kind's sampler shares: its encoder (the memory, cached while its source is unchanged),
    its label rows (row 0 conditional, row 1 unconditional under guidance) and the family guidance."""

    def __init__(self, bundle: Bundle, layer: str):
        self.shape = bundle.manifest.priors[layer]
        self.start = bundle.manifest.start_token
        self._encoder = bundle.sessions[f"{layer}_prior_encoder"]
        self._layer, self._family_tables = layer, bundle.family_tables
        self._memory_names = cache_names("memory", self.shape.n_layers)
        self._memory: tuple[tuple, dict[str, np.ndarray]] | None = None

    def family_bias(self, cond: Conditioning) -> np.ndarray | None:
        """(L, V) family log-ratios at this pitch (a float16 view, unscaled: `sample` scales the one row each draw
        needs), or None."""
        if self._family_tables is None or cond.timbre == 0:
            return None
        return self._family_tables.bias(self._layer, cond.family, cond.pitch)

    def guided(self, cond: Conditioning) -> bool:
        return self.shape.unconditional and cond.guidance != 1

    def encode(self, src: np.ndarray, cond: Conditioning) -> dict[str, np.ndarray]:
        """(S,) source tokens → the memory: {memory.l.key / .value: (B, H, S, Dh)}, reused while unchanged
        (B = 2 under guidance, else 1)."""
        key = (src.astype(np.int64).tobytes(), cond.pitch, cond.family, self.guided(cond))
        if self._memory is not None and self._memory[0] == key:
            return self._memory[1]
        labels = self._labels(cond)
        memory = self._run_encoder(np.repeat(src[None].astype(np.int64), labels["pitch"].size, axis=0), labels)
        self._memory = (key, memory)
        self._forget()
        return memory

    def _forget(self) -> None:
        """A new memory: drop what was computed under the old one."""

    def _labels(self, cond: Conditioning) -> dict[str, np.ndarray]:
        """(B,) pitch and family: the conditional row, then the unconditional one under guidance."""
        unconditional = (NULL_LABEL if "pitch" in self.shape.null_labels else cond.pitch, NULL_LABEL)
        rows = [(cond.pitch, cond.family)] + [unconditional] * self.guided(cond)
        pitch, family = np.array(rows, np.int64).T
        return {"pitch": pitch, "family": family}

    def _run_encoder(self, src: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._memory_names, self._encoder.run(None, {"src": src, **labels}), strict=True))

    def sample(
        self,
        known: np.ndarray,
        mask: np.ndarray,
        memory: dict[str, np.ndarray],
        cond: Conditioning,
        rng: np.random.Generator,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Resample the masked positions of the (T,) sequence `known`; `progress(done, total)` after each call of
        the decoding graph (raising from it cancels). Returns a new sequence."""
        raise NotImplementedError

    def warm(self, seq: np.ndarray, cond: Conditioning, memory: dict[str, np.ndarray], chunk: int = 64) -> bool:
        """Idle-time work for a later edit; True while more remains (nothing, unless a kind says otherwise)."""
        return False


class PriorSampler(_LabelledPrior):
    """The autoregressive kind: the encoder and step graphs of one prior ('top' or 'bottom').

    Under guidance every graph runs on a batch of two, row 0 conditional and row 1 unconditional, caches
    included; `step` returns the combined logits.
    """

    def __init__(self, bundle: Bundle, layer: str):
        super().__init__(bundle, layer)
        self._step = bundle.sessions[f"{layer}_prior_step"]
        self._single_step = bundle.single_step[layer]
        self._past_names = cache_names("past", self.shape.n_layers)
        # The decoder cache over the inputs fed under the last memory: an edit that keeps the encoder's source and
        # the start of the sequence reuses it instead of recomputing it.
        self._prefix: tuple[dict[str, np.ndarray], np.ndarray, list[np.ndarray]] | None = None

    def _forget(self) -> None:
        self._prefix = None

    def empty_cache(self, memory: dict[str, np.ndarray]) -> list[np.ndarray]:
        """A cache of no inputs, for `memory`'s batch."""
        s, batch = self.shape, next(iter(memory.values())).shape[0]
        return [np.zeros((batch, s.n_heads, 0, s.head_dim), np.float32)] * (2 * s.n_layers)

    def step(
        self, tokens: np.ndarray, cond: Conditioning, past: list[np.ndarray], memory: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(N,) decoder inputs → logits of the last one (V,), new cache (2L arrays (B, H, P+N, Dh))."""
        labels = self._labels(cond)
        batch = np.repeat(tokens[None].astype(np.int64), labels["pitch"].size, axis=0)  # (B, N)
        last, harmonic, present = self._run_step(batch, labels, past, memory)  # (B, V) each
        logits = last[1] + cond.guidance * (last[0] - last[1]) if last.shape[0] == 2 else last[0]
        return logits + cond.harmonic * harmonic[0], present

    # The two graph calls (`_run_encoder`, `_run_step`); the torch baseline (export.sampling_speed) overrides
    # these and nothing else.

    def _run_step(
        self, tokens: np.ndarray, labels: dict[str, np.ndarray], past: list[np.ndarray], memory: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(B, N) tokens → the last input's logits and harmonic guidance (B, V each) and the new cache."""
        feed = {"tokens": tokens, **labels, **memory}
        feed.update(zip(self._past_names, past, strict=True))
        session = self._step if tokens.shape[1] >= WIDE_STEP else self._single_step
        logits, harmonic, *present = session.run(None, feed)
        return logits[:, -1], harmonic[:, -1], present

    def sample(
        self,
        known: np.ndarray,
        mask: np.ndarray,
        memory: dict[str, np.ndarray],
        cond: Conditioning,
        rng: np.random.Generator,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Resample the masked positions of the (T,) sequence `known`, left to right; returns a new sequence.

        `progress(done, total)` is called after each sampled token; raising from it cancels the sampling.
        """
        seq = known.astype(np.int64).copy()
        positions = np.flatnonzero(mask)
        if positions.size == 0:
            return seq
        first = positions[0]
        inputs = np.concatenate([[self.start], seq[:first]])  # start symbol + the known prefix, one call
        logits, past = self._feed(inputs, cond, memory)
        bias = self.family_bias(cond)
        for i, pos in enumerate(positions):
            z = logits if bias is None else logits + cond.timbre * bias[pos].astype(np.float32)
            seq[pos] = sample_logits(z, cond.temperature, cond.top_p, rng)
            if progress is not None:
                progress(i + 1, positions.size)
            if i + 1 == positions.size:
                break
            # Feed the new token and the kept ones up to the next masked position in one call.
            logits, past = self.step(seq[pos : positions[i + 1]], cond, past, memory)
        self._prefix = (memory, np.concatenate([[self.start], seq[: positions[-1]]]), past)
        return seq

    def _cached(self, inputs: np.ndarray, memory: dict[str, np.ndarray], limit: int) -> tuple[int, list[np.ndarray]]:
        """How many leading `inputs` (at most `limit`) the cache already holds under `memory`, and that cache."""
        if self._prefix is None or self._prefix[0] is not memory:
            return 0, self.empty_cache(memory)
        cached = self._prefix[1][:limit]
        differ = np.flatnonzero(cached != inputs[: cached.size])
        reuse = cached.size if differ.size == 0 else int(differ[0])
        return reuse, [p[:, :, :reuse] for p in self._prefix[2]]

    def _feed(
        self, inputs: np.ndarray, cond: Conditioning, memory: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits after `inputs` (start symbol + known tokens) and the cache, reusing the cached prefix that
        matches under the same memory; at least the last input is fed, as its logits are needed."""
        reuse, past = self._cached(inputs, memory, inputs.size - 1)
        return self.step(inputs[reuse:], cond, past, memory)

    def warm(self, seq: np.ndarray, cond: Conditioning, memory: dict[str, np.ndarray], chunk: int = 64) -> bool:
        """Idle-time work: extend the cached prefix over `seq` by up to `chunk` tokens, so that a later edit
        anywhere in it starts from the cache. Returns True while more remains."""
        inputs = np.concatenate([[self.start], seq[:-1]]).astype(np.int64)
        reuse, past = self._cached(inputs, memory, inputs.size)
        if reuse >= inputs.size:
            return False
        end = min(reuse + chunk, inputs.size)
        _, past = self.step(inputs[reuse:end], cond, past, memory)
        self._prefix = (memory, inputs[:end], past)
        return end < inputs.size


class MaskedSampler(_LabelledPrior):
    """The masked kind: the encoder and the denoise graph of one prior. A sampling of n of the T cells is
    `unmask_counts(n, ceil(passes n / T))` graph calls over the whole sequence, each seeing every kept cell on
    both sides."""

    def __init__(self, bundle: Bundle, layer: str):
        super().__init__(bundle, layer)
        self._denoise = bundle.sessions[f"{layer}_prior_denoise"]
        self.mask = bundle.manifest.mask_token

    def logits(
        self, seq: np.ndarray, cond: Conditioning, memory: dict[str, np.ndarray], at: np.ndarray, guidance: float
    ) -> np.ndarray:
        """(T,) tokens → the combined logits (len(at), V) at positions `at` (guidance at this weight, harmonic
        guidance). A weight of 1 runs the conditional row alone, whatever the memory holds."""
        labels = self._labels(cond)
        if guidance == 1 and labels["pitch"].size == 2:
            labels, memory = {k: v[:1] for k, v in labels.items()}, {k: v[:1] for k, v in memory.items()}
        tokens = np.repeat(seq[None].astype(np.int64), labels["pitch"].size, axis=0)  # (B, T)
        logits, harmonic = self._denoise.run(None, {"tokens": tokens, **labels, **memory})  # (B, T, V) each
        logits = logits[:, at]
        z = logits[1] + guidance * (logits[0] - logits[1]) if logits.shape[0] == 2 else logits[0]
        return z + cond.harmonic * harmonic[0, at]

    def sample(
        self,
        known: np.ndarray,
        mask: np.ndarray,
        memory: dict[str, np.ndarray],
        cond: Conditioning,
        rng: np.random.Generator,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Resample the masked positions of the (T,) sequence `known`; returns a new sequence."""
        seq = known.astype(np.int64).copy()
        hidden = np.flatnonzero(mask)
        seq[hidden] = self.mask
        bias = self.family_bias(cond)
        # A part of the map takes its share of the passes (one cell, or the four under a top cell: one pass),
        # so every pass keeps about the same fraction of the map as a whole-map decoding's do.
        counts = unmask_counts(hidden.size, -(-self.shape.passes * hidden.size // seq.size))
        done = 0
        for i, count in enumerate(counts):
            if i and self._layer == "top":  # its encoder reads its own map, trained on the decoder's gaps
                memory = self.encode(seq, cond)
            guidance = pass_guidance(cond.guidance, i, len(counts), self.shape.anneal_guidance)
            z = self.logits(seq, cond, memory, hidden, guidance)
            if bias is not None:
                z = z + cond.timbre * bias[hidden].astype(np.float32)
            draws, log_p = sample_rows(z, cond.temperature, cond.top_p, rng)
            noise = CHOICE_NOISE * (1 - (i + 1) / len(counts))
            chosen = np.argsort(-(log_p + noise * rng.gumbel(size=hidden.size)), kind="stable")[:count]
            seq[hidden[chosen]] = draws[chosen]
            hidden = np.delete(hidden, chosen)
            done += count
            if progress is not None:
                progress(done, done + hidden.size)
        return seq


def sampler_for(bundle: Bundle, layer: str) -> PriorSampler | MaskedSampler:
    """The sampler of the kind the bundle's `layer` prior is."""
    return (
        MaskedSampler(bundle, layer) if bundle.manifest.priors[layer].kind == "masked" else PriorSampler(bundle, layer)
    )


class Inpainter:
    """Generation and inpainting on (F, T) codemaps with a loaded bundle."""

    def __init__(self, top: _LabelledPrior, bottom: _LabelledPrior, mask_token: int):
        self.top, self.bottom, self.mask_token = top, bottom, mask_token

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> Inpainter:
        return cls(sampler_for(bundle, "top"), sampler_for(bundle, "bottom"), bundle.manifest.mask_token)

    def inpaint(
        self,
        codes_top: np.ndarray,
        codes_bottom: np.ndarray,
        layer: str,
        mask: np.ndarray,
        cond: Conditioning,
        rng: np.random.Generator,
        progress: Callable[[float], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Regenerate the cells of `layer` where `mask` (F, T) is True; a top edit also resamples the bottom
        cells beneath it. Returns new (top (32, 4), bottom (64, 8)) maps; the inputs are not modified."""
        if mask.shape != codemaps.layer_shape(layer):
            raise ValueError(f"{layer} mask has shape {mask.shape}, expected {codemaps.layer_shape(layer)}")
        top_seq = codemaps.to_sequence(codes_top, "top")
        if layer == "top":
            top_mask = codemaps.to_sequence(mask, "top")
            bottom_mask = codemaps.to_sequence(codemaps.upsample_mask(mask), "bottom")
        else:
            top_mask = np.zeros_like(top_seq, bool)
            bottom_mask = codemaps.to_sequence(mask, "bottom")
        n_top = int(top_mask.sum())
        total = max(n_top + int(bottom_mask.sum()), 1)

        def report(offset: int) -> Callable[[int, int], None] | None:
            """Per-layer (done, n) → overall fraction for `progress`."""
            return None if progress is None else (lambda done, _n: progress((offset + done) / total))

        if top_mask.any():
            src = np.where(top_mask, self.mask_token, top_seq)
            memory = self.top.encode(src, cond)
            top_seq = self.top.sample(top_seq, top_mask, memory, cond, rng, report(0))
        bottom_seq = codemaps.to_sequence(codes_bottom, "bottom")
        if bottom_mask.any():
            memory = self.bottom.encode(top_seq, cond)
            bottom_seq = self.bottom.sample(bottom_seq, bottom_mask, memory, cond, rng, report(n_top))
        return codemaps.from_sequence(top_seq, "top"), codemaps.from_sequence(bottom_seq, "bottom")

    def generate(
        self, cond: Conditioning, rng: np.random.Generator, progress: Callable[[float], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A new sound from nothing: the whole top map, then the whole bottom map."""
        top = np.zeros(codemaps.TOP_SHAPE, np.int64)
        bottom = np.zeros(codemaps.BOTTOM_SHAPE, np.int64)
        return self.inpaint(top, bottom, "top", np.ones(codemaps.TOP_SHAPE, bool), cond, rng, progress)

    def resample_bottom(
        self,
        codes_top: np.ndarray,
        codes_bottom: np.ndarray,
        cond: Conditioning,
        rng: np.random.Generator,
        progress: Callable[[float], None] | None = None,
    ) -> np.ndarray:
        """Keep the top map, draw a whole new bottom map (the paper's third experiment)."""
        whole = np.ones(codemaps.BOTTOM_SHAPE, bool)
        _, bottom = self.inpaint(codes_top, codes_bottom, "bottom", whole, cond, rng, progress)
        return bottom
