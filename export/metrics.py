"""Audio metrics for tests and evaluation (numpy): f0 by YIN, log-spectral distance, cents."""

from __future__ import annotations

import math

import numpy as np

from server import dsp


def midi_to_hz(pitch: float) -> float:
    return 440.0 * 2 ** ((pitch - 69) / 12)


def cents(f: float, reference: float) -> float:
    return 1200 * math.log2(f / reference)


def estimate_f0(
    audio: np.ndarray,
    sample_rate: int = 16_000,
    fmin: float = 25.0,
    fmax: float = 2100.0,
    start_s: float = 0.25,
    duration_s: float = 1.0,
    threshold: float = 0.1,
) -> float | None:
    """YIN (de Cheveigné & Kawahara 2002) over one window of the held part of a note; None when silent."""
    x = np.asarray(audio, np.float64)[int(start_s * sample_rate) : int((start_s + duration_s) * sample_rate)]
    if x.size == 0 or np.sqrt(np.mean(x**2)) < 1e-5:
        return None
    tau_min, tau_max = int(sample_rate / fmax), int(sample_rate / fmin)
    w = x.size - tau_max
    if w <= tau_max:
        raise ValueError("window too short for fmin")
    head = x[:w]
    # d(tau) = sum (x_j - x_{j+tau})^2 = E(head) + E(x[tau:tau+w]) - 2 acf(tau), acf by FFT.
    n = 1 << int(np.ceil(np.log2(x.size + w)))
    acf = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(head, n)), n)[: tau_max + 1]
    sq = np.concatenate([[0.0], np.cumsum(x**2)])
    shifted = sq[np.arange(tau_max + 1) + w] - sq[np.arange(tau_max + 1)]
    d = np.maximum(sq[w] + shifted - 2 * acf, 0.0)
    cmnd = np.ones_like(d)
    cmnd[1:] = d[1:] * np.arange(1, tau_max + 1) / np.maximum(np.cumsum(d[1:]), 1e-12)
    below = np.flatnonzero(cmnd[tau_min:] < threshold)
    if below.size:
        tau = tau_min + below[0]
        while tau + 1 <= tau_max and cmnd[tau + 1] < cmnd[tau]:  # walk down to the dip's bottom
            tau += 1
    else:
        tau = tau_min + int(np.argmin(cmnd[tau_min:]))
    if 0 < tau < tau_max:  # parabolic interpolation of the dip
        a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        denom = a - 2 * b + c
        tau = tau + (0.5 * (a - c) / denom if denom > 0 else 0.0)
    return sample_rate / tau


def pitch_kept(audio: np.ndarray, pitch: int, sample_rate: int = 16_000, tolerance_cents: float = 50.0) -> bool:
    """f0 within `tolerance_cents` of the MIDI pitch (searching one octave either side)."""
    target = midi_to_hz(pitch)
    f0 = estimate_f0(audio, sample_rate, fmin=max(20.0, target / 2.2), fmax=min(sample_rate / 2.5, target * 2.2))
    return f0 is not None and abs(cents(f0, target)) <= tolerance_cents


def stft_magnitudes(audio: np.ndarray, n_fft: int, hop: int | None = None) -> np.ndarray:
    """(samples,) → (frames, n_fft / 2 + 1) magnitudes: centred Hann frames, hop n_fft / 4 unless given."""
    hop = hop or n_fft // 4
    padded = np.pad(np.asarray(audio, np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]  # (frames, n_fft)
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1))


def high_band_db(audio: np.ndarray, split_hz: float = 2700.0, sample_rate: int = 16_000) -> float:
    """Power above `split_hz` against below, in dB, over the held part (the first 3 s): how bright a note is."""
    power = stft_magnitudes(np.asarray(audio)[: 3 * sample_rate], 1024) ** 2  # (frames, 513)
    split = int(split_hz / sample_rate * 1024)
    return float(10 * np.log10(power[:, split:].sum() + 1e-12) - 10 * np.log10(power[:, :split].sum() + 1e-12))


def log_spectral_distance(
    reference: np.ndarray,
    estimate: np.ndarray,
    p: dsp.SpectrogramParams = dsp.SpectrogramParams(),
    floor_db: float = -80.0,
) -> float:
    """Mean over frames of the RMS over bins of the dB difference of power spectra (n_fft 2048, hop 512).

    Powers are floored `floor_db` below the reference's peak, so silent bins do not dominate.
    """
    a = np.abs(dsp.stft(reference, p)) ** 2
    b = np.abs(dsp.stft(estimate, p)) ** 2
    floor = a.max() * 10 ** (floor_db / 10)
    diff = 10 * np.log10(np.maximum(a, floor)) - 10 * np.log10(np.maximum(b, floor))
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=0))))
