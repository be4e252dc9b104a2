"""Pitch, measured while a prior trains: what the performer will hear, not only the loss.

Every `monitor_every` steps (and at the end) a prior stage logs:
- pitch sensitivity: teacher-forced loss (nats per token) with the pitch shifted by 1, 7, 12 and -12
  semitones, minus the loss at the true pitch, on a fixed set of validation notes (the top prior from an empty
  map, as when generating; the bottom prior under the real top map). Near 0: the prior ignores the pitch.
- family sensitivity: the same with the family label changed (moved by 1, 4 and 7 places among the 11, so
  every note gets three other families); near 0, `/instrument` changes nothing the prior does.
- pitch accuracy of real renders: the bottom stage resamples the whole bottom map of validation notes under
  their real top map (the paper's third experiment) and counts the notes whose f0 survives; the top stage
  generates new notes from nothing on a grid of families and pitches (off the evaluation grid, so nothing is
  tuned to the report's own notes) with the run's bottom prior, when there is one.
Sampling here is batched torch with a key/value cache; decoding and inversion are the bundle's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export import run_folder
from export.config import RunConfig
from export.metrics import pitch_kept
from export.prior import Prior
from server import codemaps, dsp
from server.sampling import CHOICE_NOISE, DEFAULT_GUIDANCE, DEFAULT_HARMONIC, pass_guidance, unmask_counts

SHIFTS = (1, 7, 12, -12)
FAMILY_SHIFTS = (1, 4, 7)
DEV_PITCHES = (27, 34, 41, 48, 55, 62, 69, 76)  # between the evaluation grid's 24, 31, ..., 80


def nucleus(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """(B, V) logits → (B,) draws with temperature and top-p, the rule of `server.sampling.sample_logits`:
    keep every token at least as likely as the last one needed to reach top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    ordered = probs.sort(-1, descending=True).values
    before = ordered.cumsum(-1) - ordered  # mass strictly above each sorted token
    needed = (before < top_p).sum(-1, keepdim=True).clamp(min=1)  # tokens needed to reach top_p
    floor = ordered.gather(-1, needed - 1)
    return torch.multinomial(torch.where(probs >= floor, probs, 0.0), 1, generator=generator)[:, 0]


def _guided_rows(prior: Prior, src, pitch, family, guidance: float):
    """(guided, src, pitch, family): under guidance (and a prior with a null label) the batch twice, its
    second half with the unconditional labels, as the server batches them."""
    guided = guidance != 1 and bool(prior.null_labels)
    if guided:
        null_pitch, null_family = prior.unconditional(pitch, family)
        src, pitch, family = torch.cat([src, src]), torch.cat([pitch, null_pitch]), torch.cat([family, null_family])
    return guided, src, pitch, family


@torch.no_grad()
def sample_all(
    prior: Prior,
    src: torch.Tensor,
    pitch: torch.Tensor,
    family: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 0.8,
    guidance: float = DEFAULT_GUIDANCE,
    harmonic: float = DEFAULT_HARMONIC,
) -> torch.Tensor:
    """Every target token of a batch, left to right (the masked kind: `sample_masked`): src (B, S), labels (B,)
    → (B, T).

    With guidance != 1 (and a prior that has a null label) each step runs the conditional and the
    unconditional rows in one batch and samples from u + guidance (c - u), as the server does; then
    + harmonic x the prior's harmonic guidance (zero until its code profiles are set).
    """
    if prior.cfg.kind == "masked":
        return sample_masked(prior, src, pitch, family, generator, temperature, top_p, guidance, harmonic)
    b = src.shape[0]
    requested = pitch
    guided, src, pitch, family = _guided_rows(prior, src, pitch, family, guidance)
    memory = prior.encode(src, pitch, family)
    past = prior.empty_cache(src.shape[0], src.device)
    tokens = torch.full((src.shape[0], 1), prior.start_token, dtype=torch.long, device=src.device)
    out = torch.empty(b, prior.tgt_len, dtype=torch.long, device=src.device)
    for j in range(prior.tgt_len):
        logits, past = prior.step(tokens, pitch, family, past, memory)
        z = logits[:, -1].float()
        if guided:
            z = z[b:] + guidance * (z[:b] - z[b:])
        if harmonic:
            z = z + harmonic * prior.harmonic_bias(requested, torch.tensor([j], device=src.device))[:, 0]
        out[:, j] = nucleus(z, temperature, top_p, generator)
        tokens = out[:, j : j + 1].repeat(2 if guided else 1, 1)
    return out


@torch.no_grad()
def sample_masked(
    prior: Prior,
    src: torch.Tensor,
    pitch: torch.Tensor,
    family: torch.Tensor,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_p: float = 0.8,
    guidance: float = DEFAULT_GUIDANCE,
    harmonic: float = DEFAULT_HARMONIC,
) -> torch.Tensor:
    """The masked kind's decoding of whole maps, batched: `server.sampling.MaskedSampler`'s rule (its schedule
    and its re-masking by confidence) in torch. src (B, S), labels (B,) → (B, T)."""
    b, t = src.shape[0], prior.tgt_len
    requested = pitch
    guided, src, pitch, family = _guided_rows(prior, src, pitch, family, guidance)
    memory = prior.encode(src, pitch, family)
    tokens = torch.full((b, t), prior.mask_token, dtype=torch.long, device=src.device)
    hidden = torch.ones(b, t, dtype=torch.bool, device=src.device)
    bias = harmonic * prior.harmonic_bias(requested, torch.arange(t, device=src.device)) if harmonic else 0.0
    counts = unmask_counts(t, prior.cfg.passes)
    for i, count in enumerate(counts):
        rows = tokens.repeat(2, 1) if guided else tokens
        if i and prior.layer == "top":  # its encoder reads its own map, trained on the decoder's gaps
            memory = prior.encode(rows, pitch, family)
        weight = pass_guidance(guidance, i, len(counts), prior.cfg.anneal_guidance)
        z = prior.denoise(rows, pitch, family, memory).float()  # (the server runs a weight of 1 unguided: equal)
        if guided:
            z = z[b:] + weight * (z[:b] - z[b:])
        z = (z + bias).flatten(0, 1)  # (B T, V)
        draws = nucleus(z, temperature, top_p, generator)
        log_p = torch.log_softmax(z / max(temperature, 1e-6), -1).gather(1, draws[:, None])[:, 0].view(b, t)
        uniform = torch.rand(b, t, generator=generator, device=src.device).clamp(1e-12, 1 - 1e-12)
        gumbel = -torch.log(-torch.log(uniform))
        confidence = (log_p + CHOICE_NOISE * (1 - (i + 1) / len(counts)) * gumbel).masked_fill(~hidden, -torch.inf)
        chosen = torch.zeros_like(hidden).scatter(1, confidence.topk(count, 1).indices, True) & hidden
        tokens = torch.where(chosen, draws.view(b, t), tokens)
        hidden &= ~chosen
    return tokens


class PitchMonitor:
    """Called by the training loop of one prior; returns the figures to log (empty parts are skipped)."""

    def __init__(self, run: Path, config: RunConfig, layer: str, model: Prior, valid, device: torch.device):
        self.run, self.config, self.layer, self.model, self.device = run, config, layer, model, device
        n = min(config.train.monitor_notes, valid[0].shape[0])
        pick = torch.from_numpy(np.random.default_rng(0).permutation(valid[0].shape[0])[:n]).to(device)
        self.notes = tuple(t[pick] for t in valid)  # top, bottom, pitch, family of n validation notes
        self._vqvae, self._reference_ok = None, None

    def __call__(self) -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            return {**self.sensitivity(), **self.renders()}
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def sensitivity(self) -> dict[str, float]:
        top, bottom, pitch, family = self.notes
        m = self.model
        src = torch.full_like(top, m.mask_token) if self.layer == "top" else top
        target = top if self.layer == "top" else bottom

        def loss(p: torch.Tensor, f: torch.Tensor) -> float:  # the masked kind: the same masks for every label
            logits, scored = m.scored(src, target, p, f, torch.Generator(device=self.device).manual_seed(0))
            return torch.nn.functional.cross_entropy(logits.float()[scored], target[scored]).item()

        true = loss(pitch, family)
        top_pitch = m.pitch_min + m.n_pitches - 1
        figures = {
            f"sensitivity_{s:+d}": loss((pitch + s).clamp(m.pitch_min, top_pitch), family) - true for s in SHIFTS
        }
        figures["sensitivity"] = float(np.mean(list(figures.values())))
        n_families = len(self.config.data.families)
        family_figures = {
            f"family_sensitivity_{s}": loss(pitch, (family + s) % n_families) - true for s in FAMILY_SHIFTS
        }
        return {**figures, **family_figures, "family_sensitivity": float(np.mean(list(family_figures.values())))}

    def _decoder(self):
        """The run's VQ-VAE; the first call also measures the code profiles of the harmonic guidance."""
        if self._vqvae is None:
            self._vqvae = run_folder.load_vqvae(self.run, self.config).to(self.device)
            run_folder.set_code_profiles(self.run, self._vqvae, [self.model])
        return self._vqvae

    def _kept(self, top_seq: torch.Tensor, bottom_seq: torch.Tensor, pitch: torch.Tensor) -> np.ndarray:
        """Decode and invert (B, 128), (B, 512) sequences; whether each note's f0 reads at its pitch."""
        top = torch.from_numpy(codemaps.from_sequence(top_seq.cpu().numpy(), "top")).to(self.device)
        bottom = torch.from_numpy(codemaps.from_sequence(bottom_seq.cpu().numpy(), "bottom")).to(self.device)
        kept = []
        with torch.no_grad():
            for t, b, p in zip(top.split(16), bottom.split(16), pitch.split(16), strict=True):
                specs = self._decoder().decode_codes(t, b).cpu().numpy()
                kept += [
                    pitch_kept(dsp.invert(s, self.config.spectrogram), int(q)) for s, q in zip(specs, p, strict=True)
                ]
        return np.array(kept)

    def renders(self) -> dict[str, float]:
        if not (self.run / run_folder.VQVAE_FILE).is_file():
            return {}
        gen = torch.Generator(device=self.device).manual_seed(0)
        if self.layer == "bottom":
            top, bottom, pitch, family = self.notes
            if self._reference_ok is None:  # notes whose reconstruction reads at pitch: the ones to judge
                self._reference_ok = self._kept(top, bottom, pitch)
            if not self._reference_ok.any():
                return {}
            resampled = sample_all(self.model, top, pitch, family, gen)
            kept = self._kept(top, resampled, pitch)[self._reference_ok]
            return {"resample_bottom_pitch_kept": float(kept.mean())}
        other = run_folder.prior_file(self.run, "bottom")
        if not other.is_file():
            return {}
        bottom_prior = run_folder.load_prior(self.run, self.config, "bottom")[0].to(self.device)
        run_folder.set_code_profiles(self.run, self._decoder(), [bottom_prior])
        n = self.notes[0].shape[0]
        grid = [(f, p) for p in DEV_PITCHES for f in range(len(self.config.data.families))]
        chosen = [grid[i] for i in np.random.default_rng(1).permutation(len(grid))[:n]]
        family = torch.tensor([f for f, _ in chosen], device=self.device)
        pitch = torch.tensor([p for _, p in chosen], device=self.device)
        empty = torch.full((n, self.model.src_len), self.model.mask_token, device=self.device)
        top = sample_all(self.model, empty, pitch, family, gen)
        bottom = sample_all(bottom_prior, top, pitch, family, gen)
        return {"generation_pitch_accuracy": float(self._kept(top, bottom, pitch).mean())}
