"""Where rendered sound goes: float32 WAV files in the output folder, sample chunks, and spectrogram pictures.

Every file is written under a temporary name and renamed, so a client reading on `/render/done` (Max
`buffer~ replace`, Pd `soundfiler`) never sees half a file. Names come from the server alone (a counter), so
nothing a client sends can choose where a file goes; the oldest renders are deleted past `keep`.
"""

from __future__ import annotations

import os
import re
import struct
from collections import deque
from pathlib import Path

import numpy as np

from server.dsp import SpectrogramParams
from server.files import atomic_write
from server.picture import encode_png, spectrogram_picture
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
        # Renders of servers that have ended count too, oldest first, so restarts do not fill the folder; only
        # files named as a server names them, by a process that is gone: a running server's renders (its patch
        # may be loading one) and the performer's own files are never deleted.
        self.recent: dict[str, deque[Path]] = {
            kind: deque(sorted(filter(_left_by_ended_server, self.folder.glob(f"render-*.{kind}")), key=_mtime))
            for kind in ("wav", "png")
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

    def write_png(
        self, spectrogram: np.ndarray, layer: str, request_id: int, p: SpectrogramParams, edited: np.ndarray | None
    ) -> tuple[Path, int, int]:
        pixels = spectrogram_picture(spectrogram, layer, p=p, edited=edited)
        path = atomic_write(self._next("png", request_id), encode_png(pixels))
        return path, pixels.shape[1], pixels.shape[0]


def _left_by_ended_server(path: Path) -> bool:
    named = re.fullmatch(r"render-(\d+)-\d{6}-\d+\.(wav|png)", path.name)
    if named is None or path.is_symlink():
        return False
    pid = int(named.group(1))
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would end the process there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


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
