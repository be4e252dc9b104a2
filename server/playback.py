"""Playback on the server's own audio output through sounddevice, when PortAudio and a device exist.

sounddevice is imported on first use: without libportaudio2 (or with no output device, as on headless
machines) the server still runs and `/play` answers `/error` saying why.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


class PlaybackError(RuntimeError):
    """No audio output: the message says what is missing."""


class Player:
    """One output for the worker (--play) and /play: a lock keeps their calls from interleaving."""

    def __init__(self) -> None:
        self._sd: Any = None
        self._lock = threading.Lock()

    def _device(self) -> Any:
        if self._sd is None:
            try:
                import sounddevice
            except (ImportError, OSError) as exc:  # OSError: the PortAudio library itself is missing
                raise PlaybackError(f"no audio output: sounddevice/PortAudio unavailable ({exc})") from None
            self._sd = sounddevice
        try:
            self._sd.query_devices(kind="output")
        except Exception as exc:  # PortAudioError, ValueError: no default output device
            raise PlaybackError(f"no audio output device ({exc})") from None
        return self._sd

    def play(self, audio: np.ndarray, sample_rate: int, loop: bool = False) -> None:
        with self._lock:
            sd = self._device()
            try:
                sd.play(audio, sample_rate, loop=loop)
            except Exception as exc:
                raise PlaybackError(f"playback failed ({exc})") from None

    def stop(self) -> None:
        with self._lock:
            if self._sd is not None:
                self._sd.stop()
