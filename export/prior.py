"""Transformer priors over codemap sequences: one encoder-decoder class, used for the top and bottom layers.

- top prior: the encoder reads the top sequence with the cells to regenerate replaced by a mask token; the
  causal decoder models p(c_i | c_<i, m ⊙ c) (unmasked future cells are visible through the encoder);
- bottom prior: the encoder reads the whole top sequence; the decoder is causal over the bottom sequence in
  2 x 2 patch order (server.codemaps), so bottom positions 4i..4i+3 sit under top position i.
- the masked kind (`PriorConfig.kind`, MaskGIT): the same layers, but the decoder reads its own sequence with
  the cells to draw replaced by the mask token and attends both ways, so every position is predicted at once
  from the kept cells on both sides; `denoise` is that pass, trained on masked positions only (`mask_target`).
  The weights are those of the autoregressive kind (the mask token is the start symbol's row), so a masked prior
  can start from a trained autoregressive one.
Pitch and family embeddings are concatenated to every token and to the start symbol; with `harmonic`, each
token also gets the requested pitch's harmonic template under its frequency row; with `cond_dropout`, a null
label stands for "no pitch, no family" (classifier-free guidance). The decoder runs one
code path for training and for sampling: `step` takes N >= 1 new tokens plus a key/value cache, which is
exactly what the exported step graph does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.config import PRIOR_KINDS, PriorConfig
from export.harmonics import band_template, guidance_bands, harmonic_template
from server import codemaps
from server.dsp import SpectrogramParams


class Attention(nn.Module):
    """Multi-head attention with head-major weights (H, d, Dh).

    Exported, (B, T, d) @ (H, d, Dh) broadcasts straight to (B, H, T, Dh): no reshapes, so the step graph
    carries no shape arithmetic (2.5x fewer nodes; a token step is mostly per-node overhead at these sizes).
    In torch the same weights run as one wide matmul and a view, which is faster for training and eager use.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.scale = self.head_dim**-0.5

        def weight(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * d_model**-0.5)

        self.w_q, self.w_k, self.w_v = (weight(n_heads, d_model, self.head_dim) for _ in range(3))
        self.b_q, self.b_k, self.b_v = (nn.Parameter(torch.zeros(n_heads, 1, self.head_dim)) for _ in range(3))
        self.w_out = weight(n_heads, self.head_dim, d_model)
        self.b_out = nn.Parameter(torch.zeros(d_model))

    def _project(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, T, d) → (B, H, T, Dh)."""
        if torch.onnx.is_in_onnx_export():
            return x.unsqueeze(1) @ w + b
        y = x @ w.transpose(0, 1).reshape(x.shape[-1], -1)  # (B, T, H * Dh)
        return y.view(*x.shape[:2], self.n_heads, self.head_dim).transpose(1, 2) + b

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) → keys, values, each (B, H, T, Dh)."""
        return self._project(x, self.w_k, self.b_k), self._project(x, self.w_v, self.b_v)

    def attend(self, x, keys, values, bias: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
        """Queries from x (B, N, d) over keys, values (B, H, T, Dh); bias (N, T) additive (-inf: hidden).

        No dropout on attention weights: on CPU it cost a quarter of a training step and blocks SDPA's fused
        kernels; residual and embedding dropout regularise instead.
        """
        q = self._project(x, self.w_q, self.b_q)  # (B, H, N, Dh)
        if torch.onnx.is_in_onnx_export():  # plain softmax attention exports to fewer nodes than SDPA
            y = torch.softmax(q @ keys.transpose(-1, -2) * self.scale + (0 if bias is None else bias), -1) @ values
            return (y @ self.w_out).sum(1) + self.b_out  # (B, N, d)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, is_causal=causal)
        return y.transpose(1, 2).flatten(2) @ self.w_out.flatten(0, 1) + self.b_out  # (B, N, d)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    """Pre-LN, bidirectional self-attention."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn.attend(h, *self.attn.keys_values(h)))
        return x + self.ff(self.ln2(x))


class DecoderLayer(nn.Module):
    """Pre-LN: causal self-attention over a key/value cache, cross-attention to the encoder memory, FFN."""

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = Attention(cfg.d_model, cfg.n_heads)
        self.cross_attn = Attention(cfg.d_model, cfg.n_heads)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, past: tuple, memory: tuple, bias, causal: bool = False):
        """x (B, N, d); past (key, value) (B, H, P, Dh); memory (key, value) (B, H, S, Dh)
        → x, present (key, value) (B, H, P+N, Dh)."""
        h = self.ln1(x)
        new_k, new_v = self.self_attn.keys_values(h)
        keys, values = torch.cat([past[0], new_k], dim=2), torch.cat([past[1], new_v], dim=2)
        x = x + self.drop(self.self_attn.attend(h, keys, values, bias, causal))
        x = x + self.drop(self.cross_attn.attend(self.ln2(x), *memory))
        return x + self.ff(self.ln3(x)), (keys, values)


class Prior(nn.Module):
    """Shapes: src (B, S) top-order tokens with vocabulary n_codes + 1 (the last is the mask token); target
    (B, T) codes in `layer`'s order; pitch (B,) MIDI numbers; family (B,) ids. A label of -1 is its null label:
    pitch and family both with `cond_dropout`, the family alone with `family_dropout` (`null_labels`)."""

    def __init__(
        self,
        cfg: PriorConfig,
        n_codes: int,
        layer: str = "top",
        pitch_min: int = 24,
        pitch_max: int = 84,
        n_families: int = 11,
        spectrogram: SpectrogramParams = SpectrogramParams(),
    ):
        super().__init__()
        if cfg.d_model % cfg.n_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_heads {cfg.n_heads}")
        if cfg.kind not in PRIOR_KINDS:
            raise ValueError(f"prior kind {cfg.kind!r}: choose one of {', '.join(PRIOR_KINDS)}")
        src_len, tgt_len = (int(np.prod(codemaps.layer_shape(x))) for x in ("top", layer))
        self.cfg, self.layer, self.n_codes, self.src_len, self.tgt_len = cfg, layer, n_codes, src_len, tgt_len
        self.pitch_min, self.n_pitches, self.n_families = pitch_min, pitch_max - pitch_min + 1, n_families
        d_token = cfg.d_model - 2 * cfg.d_condition
        self.mask_token = self.start_token = n_codes  # src: mask token; target input: start symbol
        self.src_embed = nn.Embedding(n_codes + 1, d_token)
        self.tgt_embed = nn.Embedding(n_codes + 1, d_token)
        # The labels the unconditional prediction drops; each one's null label is the last row of its table.
        self.null_labels: tuple[str, ...] = (
            ("pitch", "family") if cfg.cond_dropout > 0 else ("family",) if cfg.family_dropout > 0 else ()
        )
        self.pitch_embed = nn.Embedding(self.n_pitches + ("pitch" in self.null_labels), cfg.d_condition)
        self.family_embed = nn.Embedding(n_families + ("family" in self.null_labels), cfg.d_condition)
        self.src_pos = nn.Parameter(torch.randn(src_len, cfg.d_model) * 0.02)
        self.tgt_pos = nn.Parameter(torch.randn(tgt_len, cfg.d_model) * 0.02)
        template = harmonic_template(spectrogram, pitch_min, pitch_max)  # (P, n_mels)
        template = np.concatenate([template, np.zeros_like(template[:1])])  # the null pitch: no harmonics
        # Buffers rebuilt from the config (not saved): each sequence position's frequency row, the template under
        # every row (harmonic conditioning) and the target a code is scored against (harmonic guidance).
        for side, grid in (("src", "top"), ("tgt", layer)):
            rows, cols = codemaps.layer_shape(grid)
            self.register_buffer(f"{side}_rows", torch.from_numpy(codemaps.order(grid) // cols), persistent=False)
            self.register_buffer(f"{side}_cols", torch.from_numpy(codemaps.order(grid) % cols), persistent=False)
            if cfg.harmonic:
                bands = torch.from_numpy(band_template(template, rows))  # (P + 1, rows, n_mels / rows)
                self.register_buffer(f"{side}_bands", bands, persistent=False)
                setattr(self, f"{side}_harmonic", nn.Linear(bands.shape[-1], cfg.d_model))
        rows = codemaps.layer_shape(layer)[0]
        guide = torch.from_numpy(guidance_bands(spectrogram, pitch_min, pitch_max, rows))  # (P + 1, rows, 3 bins)
        self.register_buffer("tgt_guide", guide, persistent=False)
        # What each code puts in its band (export.harmonics.code_profiles): measured on the run's VQ-VAE by the
        # export and the training monitor, zero until then (no harmonic guidance).
        self.register_buffer("code_profiles", torch.zeros(n_codes, guide.shape[-1]), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.enc_ln = nn.LayerNorm(cfg.d_model)
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.dec_ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, n_codes)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def head_dim(self) -> int:
        return self.cfg.d_model // self.cfg.n_heads

    def label_index(self, pitch: torch.Tensor, family: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MIDI pitch and family id (B,) → embedding rows; -1 is the null label when there is one."""
        p = (pitch - self.pitch_min).clamp(0, self.n_pitches - 1)
        f = family.clamp(0, self.n_families - 1)
        if "pitch" in self.null_labels:
            p = torch.where(pitch < 0, torch.full_like(p, self.n_pitches), p)
        if "family" in self.null_labels:
            f = torch.where(family < 0, torch.full_like(f, self.n_families), f)
        return p, f

    def unconditional(self, pitch: torch.Tensor, family: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The labels of the unconditional row under guidance: (B,) each, -1 where `null_labels` drops it."""
        null = torch.full_like(family, -1)
        return (null if "pitch" in self.null_labels else pitch), null

    def _embed(self, side: str, tokens, pitch, family, positions) -> torch.Tensor:
        """Token ‖ pitch ‖ family, plus position (and the harmonic template of each token's row).
        (B, N) tokens at sequence `positions` (N,) → (B, N, d)."""
        p, f = self.label_index(pitch, family)
        cond = torch.cat([self.pitch_embed(p), self.family_embed(f)], -1)  # (B, 2 d_cond)
        tok = getattr(self, f"{side}_embed")(tokens)
        x = torch.cat([tok, cond[:, None].expand(-1, tok.shape[1], -1)], -1) + getattr(self, f"{side}_pos")[positions]
        if self.cfg.harmonic:
            rows = getattr(self, f"{side}_rows")[positions]  # (N,)
            x = x + getattr(self, f"{side}_harmonic")(getattr(self, f"{side}_bands")[p][:, rows])  # (B, N, bins) → d
        return self.drop(x)

    # Caches are flat lists [key_0, value_0, key_1, value_1, ...], one (B, H, T, Dh) tensor each: separate
    # graph inputs and outputs per layer, so a step never splits or stacks (copies) the whole cache.

    def encode(self, src: torch.Tensor, pitch: torch.Tensor, family: torch.Tensor) -> list[torch.Tensor]:
        """(B, S) → the cross-attention keys and values of every decoder layer (the memory), 2L x (B, H, S, Dh)."""
        x = self._embed("src", src, pitch, family, torch.arange(src.shape[1], device=src.device))
        for layer in self.encoder:
            x = layer(x)
        memory = self.enc_ln(x)
        return [t for layer in self.decoder for t in layer.cross_attn.keys_values(memory)]

    def empty_cache(self, batch: int, device=None) -> list[torch.Tensor]:
        shape = (batch, self.cfg.n_heads, 0, self.head_dim)
        return [torch.zeros(shape, device=device) for _ in range(2 * len(self.decoder))]

    def step(self, tokens, pitch, family, past: list[torch.Tensor], memory: list[torch.Tensor]):
        """N new decoder inputs after P cached ones → logits (B, N, n_codes), present 2L x (B, H, P+N, Dh).

        Decoder input j is the start symbol (j = 0) or target token j-1; its logits predict target token j.
        """
        n, past_len = tokens.shape[1], past[0].shape[2]
        positions = torch.arange(n, device=tokens.device) + past_len
        x = self._embed("tgt", tokens, pitch, family, positions)
        # Training (no cache) takes SDPA's fused causal path; cached steps and the exported graph use the
        # explicit (N, P+N) mask. Tests check both give the same logits.
        causal = not torch.onnx.is_in_onnx_export() and past_len == 0 and n > 1
        bias = None
        if not causal:  # (N, P+N): new token j sees the cache and new tokens up to itself
            visible = torch.arange(past_len + n, device=tokens.device)[None, :] <= positions[:, None]
            bias = torch.zeros(visible.shape, device=tokens.device).masked_fill(~visible, float("-inf"))
        present = []
        for i, layer in enumerate(self.decoder):
            x, kv = layer(x, past[2 * i : 2 * i + 2], memory[2 * i : 2 * i + 2], bias, causal)
            present.extend(kv)
        return self.head(self.dec_ln(x)), present

    def harmonic_bias(self, pitch: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Harmonic guidance: (B,) pitch, (N,) target positions → (B, N, n_codes), how well each code's partials
        sit where the pitch puts them in the position's band (0 for the null pitch). Added to the logits only
        when sampling (scaled by the performer's weight), never in training: the model learns the data, and
        the sampler leans it towards the harmonics of the pitch asked for."""
        p = (pitch - self.pitch_min).clamp(0, self.n_pitches - 1)
        p = torch.where(pitch < 0, torch.full_like(p, self.n_pitches), p)  # the template's last row is empty
        guide = self.tgt_guide[p][:, self.tgt_rows[positions]]  # (B, N, 3 bins)
        return guide @ self.code_profiles.t()

    def denoise(self, tokens, pitch, family, memory: list[torch.Tensor]) -> torch.Tensor:
        """The masked kind's pass: (B, T) tokens, the mask token where a cell is to be drawn → logits
        (B, T, n_codes) at every position, each seeing the whole sequence."""
        x = self._embed("tgt", tokens, pitch, family, torch.arange(tokens.shape[1], device=tokens.device))
        past = self.empty_cache(tokens.shape[0], tokens.device)
        for i, layer in enumerate(self.decoder):
            x, _ = layer(x, past[2 * i : 2 * i + 2], memory[2 * i : 2 * i + 2], None)
        return self.head(self.dec_ln(x))

    def forward(self, src, target, pitch, family) -> torch.Tensor:
        """Training logits (B, T, n_codes). Autoregressive: `target` (B, T) teacher-forced. Masked: `target`
        holds the mask token where a cell is hidden (`mask_target`)."""
        memory = self.encode(src, pitch, family)
        if self.cfg.kind == "masked":
            return self.denoise(target, pitch, family, memory)
        start = torch.full_like(target[:, :1], self.start_token)
        inputs = torch.cat([start, target[:, :-1]], 1)
        logits, _ = self.step(inputs, pitch, family, self.empty_cache(target.shape[0], target.device), memory)
        return logits

    def scored(self, src, target, pitch, family, generator: torch.Generator | None = None, model=None):
        """Training logits (B, T, n_codes) and the positions the loss scores (B, T) bool: every position
        (autoregressive) or the masked ones (masked kind, drawn from `generator`). `model`: the wrapper to call
        (DDP), this prior by default."""
        if self.cfg.kind == "masked":
            inputs, mask = self.mask_target(target, generator)
            if self.layer == "top":  # its encoder reads the map with the same gaps, as when inpainting
                src = inputs
            return (model or self)(src, inputs, pitch, family), mask
        return (model or self)(src, target, pitch, family), torch.ones_like(target, dtype=torch.bool)

    def mask_target(self, target: torch.Tensor, generator: torch.Generator | None = None):
        """The masked kind's training masks, target (B, T) → (decoder input (B, T), mask (B, T) bool).

        Half the examples hide a random set of cells, a fraction cos(pi/2 u) of them (u ~ U(0, 1): MaskGIT's
        schedule, so every pass of decoding is trained for); the other half hide a box of time columns x
        frequency rows, the regions a performer redraws (a time range, a band, the whole map), with the cells
        around it kept. At least one cell of each example is hidden."""
        b, t = target.shape
        dev = target.device

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=dev)

        ratio = torch.cos(torch.pi / 2 * uniform(b, 1))
        scattered = uniform(b, t) < ratio
        rows, cols = (
            self.tgt_rows.float() / (self.tgt_rows.max() + 1),
            self.tgt_cols.float() / (self.tgt_cols.max() + 1),
        )
        lo, hi = (uniform(b, 2, 2).sort(1).values * 1.25 - 0.125).unbind(1)  # (B, 2): a box edge may leave the map
        box = (cols >= lo[:, :1]) & (cols < hi[:, :1]) & (rows >= lo[:, 1:]) & (rows < hi[:, 1:])
        mask = torch.where(uniform(b, 1) < 0.5, scattered, box)
        first = torch.randint(0, t, (b,), generator=generator, device=dev)
        mask[torch.arange(b, device=dev), first] |= ~mask.any(1)
        return torch.where(mask, torch.full_like(target, self.mask_token), target), mask


def mask_source(top: torch.Tensor, mask_token: int, generator: torch.Generator | None = None):
    """Training masks for the top prior: per example p ~ U(0, 1), each cell masked with probability p.

    top (B, S) → (masked source (B, S), mask (B, S) bool). Per-example p (the paper draws one per batch)
    shows every batch the whole range from light touch-ups to generation from nothing.
    """
    p = torch.rand(top.shape[0], 1, generator=generator, device=top.device)
    mask = torch.rand(top.shape, generator=generator, device=top.device) < p
    return torch.where(mask, torch.full_like(top, mask_token), top), mask
