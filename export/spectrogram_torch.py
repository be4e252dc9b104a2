"""Torch twin of `server.dsp.analyze`: batched Mel-IF analysis on the training device (GPU or CPU).

Same parameters, same filterbank (built once by server.dsp), same framing; tests check the two agree.
"""

from __future__ import annotations

import math

import torch

from server import dsp


def unwrap(phase: torch.Tensor) -> torch.Tensor:
    """numpy.unwrap along the last axis (same π/-π tie-break, threshold π)."""
    d = torch.diff(phase, dim=-1)
    dd = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
    dd = torch.where((dd == -math.pi) & (d > 0), torch.full_like(dd, math.pi), dd)
    correction = torch.where(d.abs() < math.pi, torch.zeros_like(d), dd - d)
    return torch.cat([phase[..., :1], phase[..., 1:] + torch.cumsum(correction, dim=-1)], dim=-1)


class MelIF(torch.nn.Module):
    """(B, n_samples) audio in [-1, 1] → (B, 2, n_mels, n_frames) [log mel power, mel IF], thresholded."""

    def __init__(self, params: dsp.SpectrogramParams = dsp.SpectrogramParams(), dtype=torch.float32):
        super().__init__()
        self.p = params
        self.register_buffer("filterbank", torch.as_tensor(dsp.mel_filterbank(params), dtype=dtype))
        self.register_buffer("window", torch.hann_window(params.n_fft, periodic=False, dtype=dtype))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        # Full float32 whatever the caller's autocast or TF32 settings: the unwrapped phase reaches 1e5 rad, so
        # a 10-bit mantissa (bf16 or TF32 products) would wreck the IF channel.
        with torch.autocast(audio.device.type, enabled=False):
            if audio.device.type == "cuda":
                allow, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, False
                try:
                    return self._forward(audio)
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = allow
            return self._forward(audio)

    def _forward(self, audio: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = audio.to(self.window.dtype)[..., : p.n_samples]
        x = torch.nn.functional.pad(x, (0, p.padded_samples - x.shape[-1]))  # (B, 65 024)
        spec = torch.stft(
            x,
            p.n_fft,
            hop_length=p.hop,
            win_length=p.n_fft,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )[:, : p.n_bins]  # (B, 1024, 128), Nyquist dropped
        log_mel = torch.log(self.filterbank @ spec.abs().square() + p.eps)
        mel_phase = unwrap(self.filterbank @ unwrap(torch.angle(spec)))
        mel_if = torch.cat([mel_phase[..., :1], torch.diff(mel_phase, dim=-1)], dim=-1) / math.pi
        quiet = log_mel < p.phase_threshold
        log_mel = torch.where(quiet, torch.full_like(log_mel, p.phase_threshold), log_mel)
        mel_if = torch.where(quiet, torch.zeros_like(mel_if), mel_if)
        return torch.stack([log_mel, mel_if], dim=1).float()  # (B, 2, 1024, 128)
