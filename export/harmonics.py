"""Harmonic templates: where the partials of each conditioning pitch fall on the mel axis.

A prior told only "pitch 60" through a learned embedding has to discover, row by row, where that pitch puts
its partials; measured, it hardly did (shifting the pitch moved its loss by 0.01-0.14 nats per token). Told
instead, for the frequency band under each token, what a harmonic tone at that pitch looks like there, the
prior reads the answer off its input. The template is the log-mel spectrum of an ideal harmonic tone (every
partial up to Nyquist at equal amplitude), analysed by the representation's own STFT and filterbank, so a
partial lands exactly where a real note's would.
"""

from __future__ import annotations

import numpy as np

from export.metrics import midi_to_hz
from server import dsp

DYNAMIC_RANGE = 40.0  # dB below the loudest band that map to 0; the template lies in [0, 1]


def harmonic_template(params: dsp.SpectrogramParams, pitch_min: int, pitch_max: int) -> np.ndarray:
    """(n_pitches, n_mels) float32 in [0, 1]: 1 on a partial's band, 0 at least DYNAMIC_RANGE dB below."""
    rate = params.sample_rate
    t = np.arange(params.n_fft * 4) / rate  # 8 frames' worth: a stationary tone needs no more
    rng = np.random.default_rng(0)  # fixed phases: a waveform without a peaky sum of cosines
    fb = dsp.mel_filterbank(params)
    window = dsp.hann(params.n_fft)
    rows = []
    for pitch in range(pitch_min, pitch_max + 1):
        f0 = midi_to_hz(pitch)
        k = np.arange(1, int(rate / 2 / f0) + 1)
        tone = np.cos(2 * np.pi * f0 * k[:, None] * t[None, :] + rng.uniform(0, 2 * np.pi, (k.size, 1))).sum(0)
        frames = np.lib.stride_tricks.sliding_window_view(tone, params.n_fft)[:: params.hop]
        power = (np.abs(np.fft.rfft(frames * window, axis=-1)[:, : params.n_bins]) ** 2).mean(0)  # (n_bins,)
        db = 10 * np.log10(fb @ power + 1e-12)
        rows.append(np.clip(1 + (db - db.max()) / DYNAMIC_RANGE, 0.0, 1.0))
    return np.stack(rows).astype(np.float32)


def band_template(template: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_pitches, n_mels) → (n_pitches, n_rows, n_mels / n_rows): the slice of the template under each
    codemap row (row 0 the lowest band)."""
    n_pitches, n_mels = template.shape
    if n_mels % n_rows:
        raise ValueError(f"{n_mels} mel bands do not split into {n_rows} rows")
    return template.reshape(n_pitches, n_rows, n_mels // n_rows)
