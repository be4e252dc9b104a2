"""Harmonic templates: where the partials of each conditioning pitch fall on the mel axis.

A prior told only "pitch 60" through a learned embedding has to discover, row by row, where that pitch puts
its partials; measured, it hardly did (shifting the pitch moved its loss by 0.01-0.14 nats per token). Told
instead, for the frequency band under each token, what a harmonic tone at that pitch looks like there, the
prior reads the answer off its input. The template is the log-mel spectrum of an ideal harmonic tone (every
partial up to Nyquist at equal amplitude), analysed by the representation's own STFT and filterbank, so a
partial lands exactly where a real note's would.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from export.metrics import midi_to_hz
from server import dsp

DYNAMIC_RANGE = 40.0  # dB below the loudest band that map to 0; the template lies in [0, 1]


@lru_cache(maxsize=4)
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


def unit_bands(template: np.ndarray, n_rows: int) -> np.ndarray:
    """(n_pitches, n_mels) → (n_pitches, n_rows, bins): each row's slice with its mean removed, scaled to unit
    norm (zero where the slice is flat: below the fundamental, or where partials merge), so that a dot product
    with a code's profile says how well the code's partials sit where the pitch puts them."""
    bands = band_template(template, n_rows)
    bands = bands - bands.mean(-1, keepdims=True)
    norm = np.linalg.norm(bands, axis=-1, keepdims=True)
    return np.where(norm > 1e-3, bands / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def code_profiles(decode, top: np.ndarray, bottom: np.ndarray, n_codes: int, batch: int = 50) -> dict[str, np.ndarray]:
    """What each code puts in its own frequency band: for every code of each layer, the mean over its
    occurrences in the given codemaps of the decoded log-mel slice under its cell (averaged over the cell's
    frames), with the slice's mean removed. decode((B, 32, 4), (B, 64, 8)) → (B, n_mels, n_frames) log mel.
    Returns {'top': (n_codes, n_mels / 32), 'bottom': (n_codes, n_mels / 64)}; an unseen code gets zeros."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(0, len(top), batch):
        t, b = top[i : i + batch], bottom[i : i + batch]
        log_mel = decode(t, b)  # (B, F, T)
        for layer, codes in (("top", t), ("bottom", b)):
            n, rows, cols = codes.shape
            cells = log_mel.reshape(n, rows, log_mel.shape[1] // rows, cols, log_mel.shape[2] // cols).mean(-1)
            cells = cells.transpose(0, 1, 3, 2).reshape(-1, cells.shape[2])  # (B * rows * cols, bins)
            sums.setdefault(layer, np.zeros((n_codes, cells.shape[1])))
            counts.setdefault(layer, np.zeros(n_codes))
            np.add.at(sums[layer], codes.reshape(-1), cells)
            np.add.at(counts[layer], codes.reshape(-1), 1)
    out = {}
    for layer in sums:
        mean = sums[layer] / np.maximum(counts[layer], 1)[:, None]
        out[layer] = np.where(counts[layer][:, None] > 0, mean - mean.mean(1, keepdims=True), 0.0).astype(np.float32)
    return out
