"""Codemaps ⇄ audio through the bundle's VQ-VAE graphs and the numpy Mel-IF inversion."""

from __future__ import annotations

from typing import Any

import numpy as np

from server import dsp
from server.bundle import Bundle


def decode(bundle: Bundle, codes_top: np.ndarray, codes_bottom: np.ndarray, run_options: Any = None) -> np.ndarray:
    """(32, 4), (64, 8) codes → raw spectrogram (2, 1024, 128). `run_options`: see `Bundle.stoppable`."""
    top, bottom = codes_top[None].astype(np.int64), codes_bottom[None].astype(np.int64)
    return bundle.run("vqvae_decoder", run_options, codes_top=top, codes_bottom=bottom)[0][0]


def render(bundle: Bundle, codes_top: np.ndarray, codes_bottom: np.ndarray, phase: str = dsp.PHASES[0]) -> np.ndarray:
    """(32, 4), (64, 8) codes → (64 000,) float32 audio at the bundle's sample rate (`phase`: see dsp.invert)."""
    return dsp.invert(decode(bundle, codes_top, codes_bottom), bundle.manifest.spectrogram, phase=phase)


def encode_audio(bundle: Bundle, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64 000,) audio → codes (32, 4), (64, 8) int64."""
    spec = dsp.analyze(audio, bundle.manifest.spectrogram)
    top, bottom = bundle.run("vqvae_encoder", spectrogram=spec[None])
    return top[0], bottom[0]
