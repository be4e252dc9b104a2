"""Frozen configuration dataclasses and the presets `paper`, `small` and `tiny`.

The resolved `RunConfig` is written to the run folder, embedded in every checkpoint and copied into every
bundle manifest; the model classes in `export.vqvae` and `export.prior` take plain sub-configs.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field

from server.bundle import FAMILIES, PITCH_MAX, PITCH_MIN
from server.dsp import SpectrogramParams


@dataclass(frozen=True)
class VQVAEConfig:
    hidden: int = 128  # C: encoder/decoder width (paper default)
    res_channels: int = 32  # residual block bottleneck
    n_res_blocks: int = 2
    embed_dim: int = 64  # D: codebook vector size
    n_codes: int = 512  # codes per layer (top and bottom)
    ema_decay: float = 0.99
    commitment: float = 0.25  # beta
    # Not in the paper: a code whose EMA usage falls below this many vectors per batch is re-seeded from a
    # random encoder output of the batch (as Jukebox does). Without it the codebook collapsed to 1 top and
    # 3 bottom codes in 600 steps of `small`. 0 disables.
    dead_code_threshold: float = 1.0
    # Not in the paper: the reconstruction error of each (band, frame) weighted by 1 + audible_weight x L, L the
    # target's loudness (0 at -10 log power or below, 1 at 0 and above), so the partials one hears count more
    # than the floor between them. 0: the paper's plain MSE on the normalised spectrogram.
    audible_weight: float = 0.0


PRIOR_KINDS = ("autoregressive", "masked")


@dataclass(frozen=True)
class PriorConfig:
    # How the prior decodes (docs/priors.md). "autoregressive": one token per step, left to right, as the paper.
    # "masked" (MaskGIT): the decoder sees its whole sequence, masked tokens included, and fills every masked
    # position in `passes` parallel passes, the most confident first; trained on masked tokens only.
    kind: str = "autoregressive"
    passes: int = 8  # masked kind: decoding passes for a whole map (fewer for fewer masked tokens)
    # masked kind: classifier-free guidance from its full weight in the first pass to 1 in the last (MAGNeT),
    # where the label matters most (little is unmasked yet); the last pass then runs without its unguided row
    anneal_guidance: bool = False
    d_model: int = 512
    n_heads: int = 16
    n_encoder_layers: int = 6
    n_decoder_layers: int = 8
    d_ff: int = 2048
    dropout: float = 0.1
    d_condition: int = 16  # pitch and family embeddings, each this wide, concatenated to every token
    # Not in the paper. Harmonic conditioning: every token also receives, projected, the slice of the requested
    # pitch's harmonic template (export.harmonics) under its frequency row: where the partials fall in its band.
    harmonic: bool = False
    # Classifier-free guidance: in training, an example's pitch and family are both replaced by a learned null
    # label with this probability, so the same model also predicts unconditionally. 0: no null label.
    cond_dropout: float = 0.0
    # Classifier-free guidance on the family alone: in training (after `cond_dropout`) the family alone becomes
    # the null family with this probability, the pitch kept; the unconditional row then keeps the pitch, so
    # `/guidance` amplifies the instrument without loosening the pitch.
    family_dropout: float = 0.0
    # Training only: a hinge on the family, max(0, margin - (loss under a wrong family - loss under the true one)),
    # per token, added to the loss. Teacher-forced, a prior reads the instrument from the codes already drawn
    # and hardly from its label (0.09 nats per token); the margin asks every token to follow the label. 0: off.
    family_margin: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    pitch_min: int = PITCH_MIN
    pitch_max: int = PITCH_MAX  # inclusive
    split_seed: int = 20200117  # the paper's seeded 80/20 split of pooled train + valid
    train_fraction: float = 0.8
    families: tuple[str, ...] = FAMILIES


@dataclass(frozen=True)
class TrainConfig:
    vqvae_steps: int = 100_000
    prior_steps: int = 100_000
    vqvae_batch_size: int = 64
    prior_batch_size: int = 32
    lr: float = 3e-4  # the VQ-VAE's
    prior_lr: float = 3e-4
    warmup_steps: int = 200  # linear warm-up of the learning rate
    cooldown: float = 0.2  # linear decay to 0 over this last fraction of the budget (steps or minutes)
    amp: bool = True  # bf16 autocast on CUDA (CPU always trains in float32)
    num_workers: int = 4  # code extraction's audio readers
    log_every: int = 50
    checkpoint_every: int = 1000
    image_every: int = 1000
    monitor_every: int = 2000  # prior stages: pitch sensitivity and generation pitch accuracy (0: only at the end)
    monitor_notes: int = 44  # notes the monitor generates or inpaints (spread over families and pitches)
    valid_limit: int = 0  # prior validation on the first this many validation notes (0: all)
    stats_examples: int = 2000  # notes read to fit the normaliser
    seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    preset: str = "paper"
    spectrogram: SpectrogramParams = field(default_factory=SpectrogramParams)
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    top_prior: PriorConfig = field(default_factory=PriorConfig)
    bottom_prior: PriorConfig = field(default_factory=PriorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def from_dict(cls, data: dict):
    """Rebuild a (nested) frozen dataclass from `asdict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


# What the ablations kept for the presets this project trains (docs/ablations.md): harmonic conditioning. Label
# dropout for classifier-free guidance measured no gain, so it stays off (`tiny` keeps it, to test that path).
# `paper` stays the paper's.
PITCH_AIDS = {"harmonic": True, "cond_dropout": 0.0}


def _paper() -> RunConfig:
    return RunConfig(preset="paper")


def _small() -> RunConfig:
    # Trains on a CPU in hours, samples 640 tokens in well under a second.
    prior = PriorConfig(
        d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=3, d_ff=384, d_condition=16, **PITCH_AIDS
    )
    return RunConfig(
        preset="small",
        vqvae=VQVAEConfig(hidden=64, res_channels=32, n_res_blocks=2, embed_dim=64, n_codes=512),
        top_prior=prior,
        bottom_prior=prior,
        # Measured on 2 CPU cores: VQ-VAE 0.62 s/step, top prior 0.21 s, bottom prior 0.82 s: about 4.6 h in all.
        train=TrainConfig(vqvae_steps=10_000, prior_steps=10_000, vqvae_batch_size=16, prior_batch_size=16),
    )


def _tiny() -> RunConfig:
    # For tests: every stage runs in seconds on one CPU core.
    prior = PriorConfig(
        d_model=32,
        n_heads=2,
        n_encoder_layers=1,
        n_decoder_layers=1,
        d_ff=64,
        d_condition=4,
        harmonic=True,
        cond_dropout=0.2,
    )
    return RunConfig(
        preset="tiny",
        vqvae=VQVAEConfig(hidden=8, res_channels=4, n_res_blocks=1, embed_dim=8, n_codes=64),
        top_prior=prior,
        bottom_prior=prior,
        train=TrainConfig(
            vqvae_steps=3,
            prior_steps=3,
            vqvae_batch_size=2,
            prior_batch_size=2,
            num_workers=0,
            log_every=1,
            checkpoint_every=2,
            image_every=2,
            monitor_notes=4,
            stats_examples=8,
        ),
    )


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def override(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `section.key=value` strings, e.g. `vqvae.hidden=96` or `train.lr=1e-4`."""
    for item in assignments:
        path, sep, raw = item.partition("=")
        section, dot, key = path.partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r}: expected section.key=value")
        sub = getattr(config, section, None)
        if not dataclasses.is_dataclass(sub) or key not in {f.name for f in dataclasses.fields(sub)}:
            raise ValueError(f"override {item!r}: no setting {path}")
        hint = typing.get_type_hints(type(sub))[key]
        value = json.loads(raw) if hint not in (str,) else raw
        if hint is float:
            value = float(value)
        config = dataclasses.replace(config, **{section: dataclasses.replace(sub, **{key: value})})
    return config
