"""Spectrogram pictures for `/image` and the evaluation: a colour ramp, the layer's grid, the last edit's
cells and the axes, written as PNG with nothing but zlib.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from server import codemaps
from server.dsp import SpectrogramParams, hz_to_mel

# Eight stops of a dark-to-bright perceptual ramp (close to matplotlib's viridis), interpolated per pixel.
_RAMP = np.array(
    [(68, 1, 84), (70, 50, 127), (54, 92, 141), (39, 127, 142)]
    + [(31, 161, 135), (74, 194, 109), (159, 218, 58), (253, 231, 37)],
    np.float64,
)
GRID = np.array([255, 255, 255], np.uint8)


def spectrogram_picture(
    spectrogram: np.ndarray,
    layer: str,
    width_scale: int = 4,
    p: SpectrogramParams | None = None,
    edited: np.ndarray | None = None,
) -> np.ndarray:
    """(2, 1024, 128) spectrogram → (512, 512, 3) uint8 RGB: log power, frequency upwards, time to the right,
    white lines on the boundaries of the layer's cells. With the spectrogram's parameters `p`, frequencies
    (Hz, on its mel scale) are marked up the left edge and seconds along the bottom, inside the picture so that
    a patch's grid of cells still lies on it; `edited` (rows, cols) bool outlines the cells the last edit
    changed."""
    power = spectrogram[0].reshape(512, 2, -1).mean(axis=1)  # (512, 128): pairs of mel rows averaged
    lo, hi = np.percentile(power, [1, 99.9])
    x = np.clip((power - lo) / max(hi - lo, 1e-6), 0, 1) * (len(_RAMP) - 1)
    i = np.minimum(x.astype(int), len(_RAMP) - 2)
    rgb = (_RAMP[i] * (1 - (x - i))[..., None] + _RAMP[i + 1] * (x - i)[..., None]).astype(np.uint8)
    rgb = np.repeat(rgb, width_scale, axis=1)[::-1]  # (512, 512, 3), row 0 = the highest band
    rows, cols = codemaps.layer_shape(layer)
    height, width = rgb.shape[:2]
    for r in range(1, rows):
        rgb[height - r * height // rows] = GRID
    for c in range(1, cols):
        rgb[:, c * width // cols] = GRID
    if edited is not None:
        _outline(rgb, edited)
    if p is not None:
        _axes(rgb, p, spectrogram.shape[1])
    return rgb


EDITED = np.array([255, 64, 160], np.uint8)  # the last edit's cells: magenta, apart from the ramp's colours
LABEL = np.array([255, 255, 255], np.uint8)
TICKS_HZ = (100, 250, 500, 1000, 2000, 4000)


def _outline(rgb: np.ndarray, edited: np.ndarray, thickness: int = 2) -> None:
    """A border inside each edited cell (rows counted from the lowest, as the codemaps)."""
    height, width = rgb.shape[:2]
    rows, cols = edited.shape
    for r, c in zip(*np.nonzero(edited), strict=True):
        top, bottom = height - (r + 1) * height // rows, height - r * height // rows
        left, right = c * width // cols, (c + 1) * width // cols
        rgb[top : top + thickness, left:right] = EDITED
        rgb[bottom - thickness : bottom, left:right] = EDITED
        rgb[top:bottom, left : left + thickness] = EDITED
        rgb[top:bottom, right - thickness : right] = EDITED


def _axes(rgb: np.ndarray, p: SpectrogramParams, n_mels: int) -> None:
    """Frequency ticks with their labels up the left edge, one tick a second along the bottom."""
    height, width = rgb.shape[:2]
    low, high = (hz_to_mel(f, p.mel_break_hz) for f in (p.mel_low_hz, p.mel_high_hz))
    for hz in TICKS_HZ:
        y = height - 1 - int((hz_to_mel(hz, p.mel_break_hz) - low) / (high - low) * height)
        if 8 < y < height - 1:
            rgb[y, :10] = LABEL
            _text(rgb, 12, y - 5, f"{hz // 1000}k" if hz >= 1000 else str(hz))
    seconds = p.n_samples / p.sample_rate
    for s in range(1, int(seconds)):
        x = int(s / seconds * width)
        rgb[height - 10 :, x] = LABEL
        _text(rgb, x + 3, height - 11, f"{s}s")


# 3 x 5 pixel glyphs, row by row: enough for the axes' labels, with no font or imaging library.
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", "k": "100101110101101", "s": "011100010001110",
}  # fmt: skip


def _text(rgb: np.ndarray, x: int, y: int, text: str, scale: int = 2) -> None:
    """`text` with its top-left corner at (x, y), each glyph pixel `scale` x `scale`, on its box darkened to a
    third so that it reads on any colour."""
    for i, char in enumerate(text):
        glyph = np.array([int(b) for b in _GLYPHS[char]], bool).reshape(5, 3)
        mask = np.kron(glyph, np.ones((scale, scale), bool))
        gx = x + i * 4 * scale
        region = rgb[y : y + mask.shape[0], gx : gx + mask.shape[1]]
        if region.shape[:2] != mask.shape:
            continue  # at the picture's edge: left out rather than cut
        region //= 3
        region[mask] = LABEL


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes (8-bit RGB, no filtering): a few lines, no imaging library needed."""
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
