"""A family judge: does a note sound like the instrument family it was asked for?

Pitch is measured with an f0 tracker; timbre has no such instrument, so the evaluation trains one, as the field
judges generative audio (GANSynth's Inception score and FID, FAD): a small classifier of the 11 NSynth
families over pitch-independent timbre features, trained on real notes of the training split. Its accuracy
on validation notes is its *ceiling*, once on the real notes and once on the same notes after the bundle's
VQ-VAE (what the model can give back at best: generated notes carry the same decoder's artefacts). Generated
notes are then scored as a fraction of that ceiling. Its penultimate layer is the embedding of the Fréchet
distance and of the diversity figure.

Features (per note, level-normalised, so loudness says nothing): the mean log-mel spectrum of the held part
(64 bands to 8 kHz), its spread over time, the amplitudes of the first 16 harmonics of the requested pitch
relative to the strongest (the envelope over the partials, what tells a flute from a brass at the same pitch),
how fast each decays, and the energy envelope over the whole 4 s (attack, sustain, release).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from export.metrics import midi_to_hz, stft_magnitudes
from server import dsp

RATE = 16_000
N_FFT, HOP = 1024, 256
N_BANDS = 64
N_HARMONICS = 16
N_SEGMENTS = 20  # energy envelope over the whole note
HELD = (0.1, 3.0)  # seconds: the held part (notes are released at 3 s)
FLOOR_DB = -80.0
EMBEDDING = 64


@lru_cache(maxsize=1)
def _bands() -> np.ndarray:
    p = dsp.SpectrogramParams(n_fft=N_FFT, hop=HOP, n_mels=N_BANDS, mel_break_hz=700.0, min_band_width_bins=1.0)
    fb = dsp.mel_filterbank(p)  # (64, 512)
    return np.concatenate([fb, np.zeros((N_BANDS, 1))], 1)  # the Nyquist bin of a 1024-point rfft


def timbre_features(audio: np.ndarray, pitch: int) -> np.ndarray:
    """(samples,) 16 kHz audio of a note at MIDI `pitch` → (n_features,) float32."""
    mag = stft_magnitudes(audio, N_FFT, HOP)  # (frames, 513)
    power = mag**2
    frame_db = 10 * np.log10(power.sum(1) + 1e-10)
    peak = frame_db.max()
    held = slice(int(HELD[0] * RATE / HOP), int(HELD[1] * RATE / HOP))

    mel_db = 10 * np.log10(power[held] @ _bands().T + 1e-10) - peak  # (held frames, 64)
    mel_db = np.maximum(mel_db, FLOOR_DB)
    envelope = mel_db.mean(0)
    spread = mel_db.std(0)

    # Harmonic k of the requested pitch: the strongest bin within a quarter tone of k f0.
    f0 = midi_to_hz(pitch)
    k = np.arange(1, N_HARMONICS + 1)
    centre = k * f0 * N_FFT / RATE
    half = np.maximum(centre * (2 ** (1 / 24) - 1), 1.0)
    amps = np.full((N_HARMONICS, 2), FLOOR_DB)
    early, late = power[held][:8], power[held][-40:]  # ~0.13 s after the onset, and the last ~0.6 s held
    for i, (c, h) in enumerate(zip(centre, half, strict=True)):
        lo, hi = int(np.floor(c - h)), int(np.ceil(c + h)) + 1
        if hi >= mag.shape[1]:
            break  # above Nyquist: left at the floor
        for j, part in enumerate((early, late)):
            amps[i, j] = 10 * np.log10(part[:, lo:hi].max(1).mean() + 1e-10) - peak
    amps = np.maximum(amps, FLOOR_DB)
    harmonics = amps[:, 0] - amps[:, 0].max()
    decay = amps[:, 1] - amps[:, 0]

    segments = np.array_split(np.maximum(frame_db - peak, FLOOR_DB), N_SEGMENTS)
    energy = np.array([s.mean() for s in segments])
    return np.concatenate([envelope, spread, harmonics, decay, energy]).astype(np.float32)


class _Net(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(n_in, 256), torch.nn.GELU(), torch.nn.Dropout(0.2),
            torch.nn.Linear(256, EMBEDDING), torch.nn.GELU(),
        )  # fmt: skip
        self.head = torch.nn.Linear(EMBEDDING, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.dropout(self.body(x), 0.2, self.training))


@dataclass
class FamilyJudge:
    """Standardisation and a two-layer classifier over `timbre_features`."""

    mean: np.ndarray
    scale: np.ndarray
    net: _Net
    families: tuple[str, ...]

    @classmethod
    def train(
        cls, features: np.ndarray, labels: np.ndarray, families: tuple[str, ...], epochs: int = 60, seed: int = 0
    ) -> FamilyJudge:
        """(N, D) features, (N,) family indices → a judge (seconds on a CPU for a few thousand notes)."""
        torch.manual_seed(seed)
        mean, scale = features.mean(0), features.std(0) + 1e-3
        x = torch.from_numpy((features - mean) / scale)
        y = torch.from_numpy(labels.astype(np.int64))
        net = _Net(x.shape[1], len(families))
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-2)
        # Families are not equally common (guitar and string notes outnumber vocal ones): weight them evenly.
        counts = torch.bincount(y, minlength=len(families)).float()
        weight = counts.sum() / counts.clamp(min=1) / len(families)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for batch in torch.randperm(len(x), generator=generator).split(128):
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        return cls(mean, scale, net, tuple(families))

    @torch.no_grad()
    def _forward(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(((np.atleast_2d(features) - self.mean) / self.scale).astype(np.float32))
        body = self.net.body(x)
        return self.net.head(body).numpy(), body.numpy()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N, D) → (N,) family indices."""
        return self._forward(features)[0].argmax(1)

    def embed(self, features: np.ndarray) -> np.ndarray:
        """(N, D) → (N, EMBEDDING): the penultimate layer, for Fréchet distance and diversity."""
        return self._forward(features)[1]

    def save(self, path: Path) -> None:
        torch.save({"mean": self.mean, "scale": self.scale, "net": self.net.state_dict(),
                    "families": self.families, "n_in": self.mean.size}, path)  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> FamilyJudge:
        state = torch.load(path, weights_only=False)
        net = _Net(state["n_in"], len(state["families"]))
        net.load_state_dict(state["net"])
        net.eval()
        return cls(state["mean"], state["scale"], net, tuple(state["families"]))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) embedding sets (FID/FAD):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr (S_a S_b)^1/2 = sum of sqrt of the eigenvalues of S_a S_b (real, >= 0 up to rounding).
    eig = np.linalg.eigvals(sa @ sb)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def per_family_accuracy(predicted: np.ndarray, labels: np.ndarray, n_families: int) -> np.ndarray:
    """(n_families,) fraction of each family's notes judged as that family (NaN where none)."""
    hits = [np.mean(predicted[labels == f] == f) if (labels == f).any() else np.nan for f in range(n_families)]
    return np.array(hits)
