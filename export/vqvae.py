"""VQ-VAE-2 for (2, 1024, 128) Mel-IF spectrograms: bottom codemap (64, 8), top codemap (32, 4).

After rosinality's vq-vae-2-pytorch, with the paper's factors (16 for the bottom, then 2 for the top), EMA
codebooks, the dataset normaliser inside the model, and the phase threshold applied to decoded output.
`encode` / `decode_codes` are the seam the priors and the ONNX graphs use.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from export.config import VQVAEConfig
from server.dsp import Normalizer, SpectrogramParams


def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
    return x


class Quantizer(nn.Module):
    """Nearest-neighbour codebook with EMA updates (no codebook loss) and optional dead-code restarts."""

    def __init__(self, dim: int, n_codes: int, decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 1.0):
        super().__init__()
        self.dim, self.n_codes, self.decay, self.eps, self.dead_threshold = dim, n_codes, decay, eps, dead_threshold
        embed = torch.randn(dim, n_codes)
        self.register_buffer("embed", embed)  # (D, K)
        self.register_buffer("cluster_size", torch.ones(n_codes))
        self.register_buffer("embed_avg", embed.clone())

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(..., D) → (N, K) squared Euclidean distances to every code."""
        flat = z.reshape(-1, self.dim)
        return flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed + self.embed.pow(2).sum(0, keepdim=True)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, T, D) → (B, F, T) nearest code indices."""
        return self.distances(z).argmin(1).view(*z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, F, T) int → (B, F, T, D)."""
        return F.embedding(codes, self.embed.t())

    def forward(self, z: torch.Tensor):
        """(B, F, T, D) → quantised (straight-through), commitment loss, codes, perplexity.

        Always float32, under autocast too: nearest codes and EMA statistics in bf16 would pick wrong codes."""
        with torch.autocast(z.device.type, enabled=False):
            return self._forward(z.float())

    def _forward(self, z: torch.Tensor):
        codes = self.codes(z)
        q = self.lookup(codes)
        if self.training:
            self._ema_update(z.detach().reshape(-1, self.dim), codes.reshape(-1))
        commitment = (q.detach() - z).pow(2).mean()
        q = z + (q - z).detach()  # straight-through estimator
        probs = F.one_hot(codes.reshape(-1), self.n_codes).float().mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return q, commitment, codes, perplexity

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        onehot = F.one_hot(codes, self.n_codes).type(flat.dtype)  # (N, K)
        counts = _all_reduce(onehot.sum(0))
        sums = _all_reduce(flat.t() @ onehot)  # (D, K)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n  # Laplace smoothing
        self.embed.copy_(self.embed_avg / size.unsqueeze(0))
        # Codes start with usage 1, so at the first step every unused one is re-seeded: a data-dependent init.
        dead = self.cluster_size < self.dead_threshold
        if dead.any():
            picks = flat[torch.randint(0, flat.shape[0], (int(dead.sum()),), device=flat.device)].t()
            self.embed[:, dead] = picks
            self.embed_avg[:, dead] = picks * self.dead_threshold
            self.cluster_size[dead] = self.dead_threshold
            if dist.is_available() and dist.is_initialized():  # every rank keeps rank 0's codebook
                for buf in (self.embed, self.embed_avg, self.cluster_size):
                    dist.broadcast(buf, 0)


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def _res_stack(channels: int, res_channels: int, n: int) -> list[nn.Module]:
    return [ResBlock(channels, res_channels) for _ in range(n)] + [nn.ReLU()]


class VQVAE2(nn.Module):
    """Shapes: spectrogram (B, 2, 1024, 128) ⇄ codes_top (B, 32, 4), codes_bottom (B, 64, 8)."""

    def __init__(
        self, cfg: VQVAEConfig, spec: SpectrogramParams = SpectrogramParams(), normalizer: Normalizer = Normalizer()
    ):
        super().__init__()
        c, r, n, d = cfg.hidden, cfg.res_channels, cfg.n_res_blocks, cfg.embed_dim
        self.cfg, self.spec = cfg, spec
        widths = [2, c // 4, c // 2, 3 * c // 4, c]
        down = []
        for i in range(4):  # x16 in frequency and time: 1024 x 128 → 64 x 8
            down += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)] + ([nn.ReLU()] if i < 3 else [])
        self.enc_b = nn.Sequential(*down, nn.Conv2d(c, c, 3, padding=1), *_res_stack(c, r, n))
        self.enc_t = nn.Sequential(  # x2: 64 x 8 → 32 x 4
            nn.Conv2d(c, c // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c // 2, c, 3, padding=1),
            *_res_stack(c, r, n),
        )
        self.pre_q_t = nn.Conv2d(c, d, 1)
        self.quantize_t = Quantizer(d, cfg.n_codes, cfg.ema_decay, dead_threshold=cfg.dead_code_threshold)
        self.dec_t = nn.Sequential(
            nn.Conv2d(d, c, 3, padding=1),
            *_res_stack(c, r, n),
            nn.ConvTranspose2d(c, d, 4, stride=2, padding=1),
        )
        self.pre_q_b = nn.Conv2d(d + c, d, 1)
        self.quantize_b = Quantizer(d, cfg.n_codes, cfg.ema_decay, dead_threshold=cfg.dead_code_threshold)
        self.upsample_t = nn.ConvTranspose2d(d, d, 4, stride=2, padding=1)
        up = [nn.Conv2d(2 * d, c, 3, padding=1), *_res_stack(c, r, n)]
        widths_up = [c, 3 * c // 4, c // 2, c // 4, 2]
        for i in range(4):  # 64 x 8 → 1024 x 128, no output activation
            up += [nn.ConvTranspose2d(widths_up[i], widths_up[i + 1], 4, stride=2, padding=1)]
            up += [nn.ReLU()] if i < 3 else []
        self.dec = nn.Sequential(*up)
        self.register_buffer("norm_scale", torch.tensor(normalizer.scale).view(1, 2, 1, 1))
        self.register_buffer("norm_shift", torch.tensor(normalizer.shift).view(1, 2, 1, 1))

    def normalize(self, spec: torch.Tensor) -> torch.Tensor:
        return spec * self.norm_scale + self.norm_shift

    def _quantize(self, quantizer: Quantizer, pre: torch.Tensor):
        q, commitment, codes, perplexity = quantizer(pre.permute(0, 2, 3, 1))  # channels last for lookup
        return q.permute(0, 3, 1, 2), commitment, codes, perplexity

    def encode(self, spec: torch.Tensor):
        """Raw spectrogram (B, 2, 1024, 128) → (q_top, q_bottom, commitment, codes_top, codes_bottom, perplexities)."""
        x = self.normalize(spec)
        h_b = self.enc_b(x)  # (B, C, 64, 8)
        h_t = self.enc_t(h_b)  # (B, C, 32, 4)
        q_t, com_t, codes_t, ppl_t = self._quantize(self.quantize_t, self.pre_q_t(h_t))  # (B, D, 32, 4)
        d_t = self.dec_t(q_t)  # (B, D, 64, 8)
        q_b, com_b, codes_b, ppl_b = self._quantize(self.quantize_b, self.pre_q_b(torch.cat([d_t, h_b], 1)))
        return q_t, q_b, com_t + com_b, codes_t, codes_b, (ppl_t, ppl_b)

    def decode_normalized(self, q_t: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
        """(B, D, 32, 4), (B, D, 64, 8) → normalised spectrogram (B, 2, 1024, 128)."""
        return self.dec(torch.cat([self.upsample_t(q_t), q_b], 1))

    def postprocess(self, normalized: torch.Tensor) -> torch.Tensor:
        """Undo the normaliser and apply the phase threshold, as the inversion expects."""
        spec = (normalized - self.norm_shift) / self.norm_scale
        log_mel, mel_if = spec[:, 0], spec[:, 1]
        quiet = log_mel < self.spec.phase_threshold
        log_mel = torch.where(quiet, torch.full_like(log_mel, self.spec.phase_threshold), log_mel)
        mel_if = torch.where(quiet, torch.zeros_like(mel_if), mel_if)
        return torch.stack([log_mel, mel_if], 1)

    def quantized(self, codes_top: torch.Tensor, codes_bottom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 32, 4), (B, 64, 8) int → their codebook vectors (B, D, 32, 4), (B, D, 64, 8)."""
        return (
            self.quantize_t.lookup(codes_top).permute(0, 3, 1, 2),
            self.quantize_b.lookup(codes_bottom).permute(0, 3, 1, 2),
        )

    def decode_codes(self, codes_top: torch.Tensor, codes_bottom: torch.Tensor) -> torch.Tensor:
        """(B, 32, 4), (B, 64, 8) int → raw spectrogram (B, 2, 1024, 128)."""
        return self.postprocess(self.decode_normalized(*self.quantized(codes_top, codes_bottom)))

    def reconstruction_error(self, recon: torch.Tensor, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the reconstruction loss, the plain MSE) of a normalised reconstruction against the raw spectrogram
        it came from; with `audible_weight`, each cell's squared error weighted by 1 + w x its loudness."""
        error = (recon - self.normalize(spec)).pow(2)  # (B, 2, F, T)
        mse = error.mean()
        if not self.cfg.audible_weight:
            return mse, mse
        weight = 1 + self.cfg.audible_weight * ((spec[:, :1] + 10) / 10).clamp(0, 1)  # (B, 1, F, T)
        return (weight * error).mean() / weight.mean(), mse

    def forward(self, spec: torch.Tensor):
        """Training pass: loss terms on the normalised spectrogram, plus codes and perplexities."""
        q_t, q_b, commitment, codes_t, codes_b, perplexity = self.encode(spec)
        recon = self.decode_normalized(q_t, q_b)
        reconstruction, mse = self.reconstruction_error(recon, spec)
        return {
            "loss": reconstruction + self.cfg.commitment * commitment,
            "reconstruction": reconstruction.detach(),
            "mse": mse.detach(),
            "commitment": commitment.detach(),
            "perplexity_top": perplexity[0],
            "perplexity_bottom": perplexity[1],
            "recon": recon.detach(),
            "codes_top": codes_t,
            "codes_bottom": codes_b,
        }
