"""Where rendered sound goes: float32 WAV files in the output folder, sample chunks, and spectrogram pictures.

Every file is written under a temporary name and renamed, so a client reading on `/render/done` (Max
`buffer~ replace`, Pd `soundfiler`) never sees half a file. Names come from the server alone (a counter), so
nothing a client sends can choose where a file goes; the oldest renders are deleted past `keep`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from pathlib import Path

import numpy as np

from server import codemaps
from server.files import atomic_write
from server.protocol import CHUNK_FRAMES


class OutputFolder:
    """Numbered WAV and PNG files in one folder, the newest `keep` of each kind kept."""

    def __init__(self, folder: Path, keep: int = 32):
        self.folder = folder.resolve()
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: renders are the performer's
        if hasattr(os, "getuid") and self.folder.stat().st_uid != os.getuid():
            raise OSError(f"{self.folder} belongs to another user; choose another --out")
        self.keep = keep
        self.count = 0
        # Renders of earlier processes count too, oldest first: the folder never holds more than `keep` of each.
        self.recent: dict[str, deque[Path]] = {
            kind: deque(sorted(self.folder.glob(f"render-*.{kind}"), key=_mtime)) for kind in ("wav", "png")
        }

    def _next(self, kind: str, request_id: int) -> Path:
        self.count += 1
        path = self.folder / f"render-{os.getpid()}-{self.count:06d}-{request_id & 0xFFFFFFFF}.{kind}"
        recent = self.recent[kind]
        recent.append(path)
        while len(recent) > self.keep:
            recent.popleft().unlink(missing_ok=True)
        return path

    def write_wav(self, audio: np.ndarray, sample_rate: int, request_id: int) -> Path:
        return write_wav(self._next("wav", request_id), audio, sample_rate)

    def write_png(self, spectrogram: np.ndarray, layer: str, request_id: int) -> tuple[Path, int, int]:
        pixels = spectrogram_picture(spectrogram, layer)
        path = atomic_write(self._next("png", request_id), encode_png(pixels))
        return path, pixels.shape[1], pixels.shape[0]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 32-bit float WAV (WAVE_FORMAT_IEEE_FLOAT with its `fact` chunk): the header by hand costs 0.1 ms
    where a general writer costs 1-2 ms, on every render."""
    data = np.ascontiguousarray(audio, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, 4 * sample_rate, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"fact" + struct.pack("<II", 4, audio.size)
    chunks += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> Path:
    return atomic_write(path, wav_bytes(audio, sample_rate))


def chunks(audio: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(offset, samples) pieces of at most CHUNK_FRAMES: one `/render/chunk` datagram each (about 4.2 kB)."""
    return [(start, audio[start : start + CHUNK_FRAMES]) for start in range(0, audio.shape[0], CHUNK_FRAMES)]


# Eight stops of a dark-to-bright perceptual ramp (close to matplotlib's viridis), interpolated per pixel.
_RAMP = np.array(
    [(68, 1, 84), (70, 50, 127), (54, 92, 141), (39, 127, 142)]
    + [(31, 161, 135), (74, 194, 109), (159, 218, 58), (253, 231, 37)],
    np.float64,
)
GRID = np.array([255, 255, 255], np.uint8)


def spectrogram_picture(spectrogram: np.ndarray, layer: str, width_scale: int = 4) -> np.ndarray:
    """(2, 1024, 128) spectrogram → (512, 512, 3) uint8 RGB: log power, frequency upwards, time to the right,
    white lines on the boundaries of the layer's cells."""
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
    return rgb


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes (8-bit RGB, no filtering): a few lines, no imaging library needed."""
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, -1)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
