"""Codemap geometry: shapes, the priors' token orders, and masks between the two layers.

Codemaps are (F, T) integer arrays, row 0 the lowest frequency: top (32, 4), bottom (64, 8). The priors read
them as sequences:
- top: time-major, frequency first: position t * F_top + f;
- bottom: 2 x 2 patches under each top cell, patches in top order, inside a patch (t0,f0) (t0,f1) (t1,f0)
  (t1,f1), so top position i owns bottom positions 4i .. 4i+3.
The export side imports this module, so training and serving linearise identically.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TOP_SHAPE = (32, 4)
BOTTOM_SHAPE = (64, 8)
LAYERS = ("top", "bottom")


def layer_shape(layer: str) -> tuple[int, int]:
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: expected 'top' or 'bottom'")
    return TOP_SHAPE if layer == "top" else BOTTOM_SHAPE


@lru_cache(maxsize=4)
def order(layer: str) -> np.ndarray:
    """Flat (row-major, F x T) cell index for each sequence position of `layer`. (F*T,) int64."""
    f_top, t_top = TOP_SHAPE
    if layer == "top":
        times, freqs = np.meshgrid(np.arange(t_top), np.arange(f_top), indexing="ij")  # time-major
        return (freqs * t_top + times).reshape(-1)
    f_bot, t_bot = layer_shape(layer)
    idx = []
    for t in range(t_top):
        for f in range(f_top):
            for dt in range(2):
                for df in range(2):
                    idx.append((2 * f + df) * t_bot + 2 * t + dt)
    return np.asarray(idx, np.int64)


def to_sequence(codemap: np.ndarray, layer: str) -> np.ndarray:
    """(..., F, T) → (..., F*T) in the prior's order."""
    flat = codemap.reshape(*codemap.shape[:-2], -1)
    return flat[..., order(layer)]


def from_sequence(seq: np.ndarray, layer: str) -> np.ndarray:
    """(..., F*T) in the prior's order → (..., F, T)."""
    flat = np.empty_like(seq)
    flat[..., order(layer)] = seq
    return flat.reshape(*seq.shape[:-1], *layer_shape(layer))


def upsample_mask(mask_top: np.ndarray) -> np.ndarray:
    """(32, 4) bool → (64, 8): each top cell covers the 2 x 2 bottom cells beneath it."""
    return np.repeat(np.repeat(mask_top, 2, axis=0), 2, axis=1)


def rectangle_mask(layer: str, t0: int, t1: int, f0: int, f1: int) -> np.ndarray:
    """Half-open time [t0, t1) and frequency [f0, f1) ranges in `layer`'s grid → (F, T) bool."""
    rows, cols = layer_shape(layer)
    if not (0 <= t0 < t1 <= cols and 0 <= f0 < f1 <= rows):
        raise ValueError(f"{layer} range t[{t0},{t1}) f[{f0},{f1}) is outside the {rows} x {cols} grid or empty")
    mask = np.zeros((rows, cols), bool)
    mask[f0:f1, t0:t1] = True
    return mask
