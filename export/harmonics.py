"""Harmonic templates: where the partials of each conditioning pitch fall on the mel axis.

A prior told only "pitch 60" through a learned embedding has to discover, row by row, where that pitch puts
its partials; measured, it hardly did (shifting the pitch moved its loss by 0.01-0.14 nats per token). Told
instead, for the frequency band under each token, what a harmonic tone at that pitch looks like there, the
prior reads the answer off its input. The template is the log-mel spectrum of an ideal harmonic tone (every
partial up to Nyquist at equal amplitude), analysed by the representation's own STFT and filterbank, so a
partial lands exactly where a real note's would.

The same tone also gives harmonic guidance its target: at sampling time every code is scored on how well what
it decodes to (its profile: log-mel shape and phase advance in its band) matches the tone in that band.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from export.metrics import midi_to_hz
from server import dsp

DYNAMIC_RANGE = 40.0  # dB below the loudest band that map to 0; the template lies in [0, 1]
IF_WEIGHT = 3.0  # harmonic guidance: the phase term against the partial-position term (docs/ablations.md)


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


@lru_cache(maxsize=4)
def harmonic_phase_advance(params: dsp.SpectrogramParams, pitch_min: int, pitch_max: int) -> np.ndarray:
    """(n_pitches, n_mels) float32, radians per hop: the mel IF channel (times pi) of the same harmonic tone,
    analysed by the representation itself (circular mean over frames). Below a few hundred hertz a mel band is
    wider than a semitone, so the log-mel cannot tell neighbouring pitches apart; the IF can (measured: 82.4 and
    87.3 Hz peak in the same band, at IF -0.49 and -0.28)."""
    t = np.arange(params.n_samples) / params.sample_rate
    rng = np.random.default_rng(0)
    rows = []
    for pitch in range(pitch_min, pitch_max + 1):
        f0 = midi_to_hz(pitch)
        k = np.arange(1, int(params.sample_rate / 2 / f0) + 1)
        tone = np.cos(2 * np.pi * f0 * k[:, None] * t[None, :] + rng.uniform(0, 2 * np.pi, (k.size, 1))).sum(0)
        spec = dsp.analyze(0.5 * tone / np.abs(tone).max(), params)
        held = np.pi * spec[1][:, params.n_frames // 8 : params.n_frames * 7 // 8]
        rows.append(np.angle(np.exp(1j * held).mean(1)))
    return np.stack(rows).astype(np.float32)


def _unit(bands: np.ndarray) -> np.ndarray:
    """Each row slice scaled to unit norm; zero where it is (nearly) zero."""
    norm = np.linalg.norm(bands, axis=-1, keepdims=True)
    return np.where(norm > 1e-3, bands / np.maximum(norm, 1e-12), 0.0)


def guidance_bands(params: dsp.SpectrogramParams, pitch_min: int, pitch_max: int, n_rows: int) -> np.ndarray:
    """(n_pitches + 1, n_rows, 3 bins) float32: what a code in each row should look like at each pitch, in the
    layout of `code_profiles`: [where the partials are (the template's slice, mean removed, unit norm),
    IF_WEIGHT x w cos(phase advance), IF_WEIGHT x w sin(phase advance)] with w the template slice at unit norm
    (the phase only counts where there is a partial). A dot product with a code's profile scores the code; the
    last row (the null pitch) is zero."""
    template = band_template(harmonic_template(params, pitch_min, pitch_max), n_rows)
    advance = band_template(harmonic_phase_advance(params, pitch_min, pitch_max), n_rows)
    where = _unit(template - template.mean(-1, keepdims=True))
    weight = IF_WEIGHT * _unit(template)
    bands = np.concatenate([where, weight * np.cos(advance), weight * np.sin(advance)], -1)
    return np.concatenate([bands, np.zeros_like(bands[:1])]).astype(np.float32)


PROFILE_RECIPES = ("level", "shape")
DEFAULT_RECIPE = "level"  # kept: `shape` measured worse on pitch and no better on timbre (docs/ablations.md)


def code_statistics(decode, top: np.ndarray, bottom: np.ndarray, n_codes: int, batch: int = 50) -> dict:
    """What each code puts in its own frequency band, averaged over its occurrences in the given codemaps:
    per layer, (n_codes, bins) means of the decoded log-mel slice under its cells (mean over each cell's
    frames), of L cos(pi IF), L sin(pi IF) and L, where L is a loudness weight (0 at -10 log power or below,
    1 at 0 and above: a silent cell has no phase to speak of), and (n_codes,) occurrence counts.
    decode((B, 32, 4), (B, 64, 8)) → (B, 2, n_mels, n_frames) [log mel, IF]."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for i in range(0, len(top), batch):
        t, b = top[i : i + batch], bottom[i : i + batch]
        spec = decode(t, b)  # (B, 2, F, T)
        loud = np.clip((spec[:, 0] + 10) / 10, 0, 1)
        feats = np.stack([spec[:, 0], loud * np.cos(np.pi * spec[:, 1]), loud * np.sin(np.pi * spec[:, 1]), loud], 1)
        for layer, codes in (("top", t), ("bottom", b)):
            n, rows, cols = codes.shape
            bins, frames = feats.shape[2] // rows, feats.shape[3] // cols
            cells = feats.reshape(n, 4, rows, bins, cols, frames).mean(-1)  # (B, 4, rows, bins, cols)
            cells = cells.transpose(0, 2, 4, 1, 3).reshape(-1, 4, bins)  # (B * rows * cols, 4, bins)
            sums.setdefault(layer, np.zeros((n_codes, 4, bins)))
            counts.setdefault(layer, np.zeros(n_codes))
            np.add.at(sums[layer], codes.reshape(-1), cells)
            np.add.at(counts[layer], codes.reshape(-1), 1)
    out = {}
    for layer, total in sums.items():
        mean = total / np.maximum(counts[layer], 1)[:, None, None]
        out[layer] = {"logmel": mean[:, 0], "lcos": mean[:, 1], "lsin": mean[:, 2], "loud": mean[:, 3],
                      "count": counts[layer]}  # fmt: skip
    return out


def profiles_from(stats: dict, recipe: str = DEFAULT_RECIPE) -> dict[str, np.ndarray]:
    """Code statistics → {'top': (n_codes, 3 n_mels / 32), 'bottom': (n_codes, 3 n_mels / 64)} in the layout
    of `guidance_bands`; an unseen code gets zeros. The recipe decides what a code's score may depend on:

    - `level`: the log-mel slice with its mean removed, and the loudness-weighted phasor. The score then grows
      with a code's within-band contrast and its loudness: guidance pulls every family towards one loud,
      bright tone (measured: the families' long-term spectra 8.6 dB apart without it, 5.3 dB with it).
    - `shape`: the same slice at unit norm (where its partials are, not how loud or how peaky) and the phasor
      divided by the mean loudness (how steadily the phase advances as the pitch asks, not how loud): the
      score says nothing about level. Measured (docs/ablations.md), it does not give the timbre back and
      keeps the pitch worse: a near-silent code whose slice looks harmonic scores as well as a loud one."""
    if recipe not in PROFILE_RECIPES:
        raise ValueError(f"unknown profile recipe {recipe!r}; known: {', '.join(PROFILE_RECIPES)}")
    out = {}
    for layer, st in stats.items():
        shape = st["logmel"] - st["logmel"].mean(-1, keepdims=True)
        phase = np.stack([st["lcos"], st["lsin"]], 1)  # (n_codes, 2, bins)
        if recipe == "shape":
            shape = _unit(shape)
            phase = phase / np.maximum(st["loud"], 1e-3)[:, None]
        profile = np.concatenate([shape[:, None], phase], 1)  # (n_codes, 3, bins)
        seen = st["count"][:, None, None] > 0
        out[layer] = np.where(seen, profile, 0.0).reshape(len(profile), -1).astype(np.float32)
    return out


def code_profiles(
    decode, top: np.ndarray, bottom: np.ndarray, n_codes: int, recipe: str = DEFAULT_RECIPE
) -> dict[str, np.ndarray]:
    """What each code puts in its band, as harmonic guidance scores it (`code_statistics`, `profiles_from`)."""
    return profiles_from(code_statistics(decode, top, bottom, n_codes), recipe)
