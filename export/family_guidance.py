"""Family guidance: a per-token family classifier, counted from the training codes, that leans each draw towards
the codes the requested family uses at that position.

The priors were trained conditioned on the family, but measured they hardly use it (generated notes are
recognised as their family far less often than their reconstructions are), and classifier-free guidance
needs a model trained with label dropout. Classifier guidance needs only a classifier: here the simplest
one, naive Bayes over the codes, whose log-likelihood ratio for a code at a position is

    bias[family, position, code] = log p(code | position, family) - log p(code | position)

counted over the training codemaps (the family-conditional counts smoothed towards the position's own
histogram, so a rare code is not banned on little evidence). Sampling adds `weight x bias` to the prior's
logits: a product of experts p_prior(code | context) x p(family | code, position)^weight, as harmonic guidance
does for the pitch. It shifts which codes are drawn, not how a code sounds, so the pitch guidance still holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server import codemaps
from server.bundle import pitch_region

SMOOTHING = 30.0  # pseudo-counts of the position's own histogram added to each family's counts
FAMILY_NOTES = 8000  # training notes `inpaint-train reguide` counts codes over (the export counts all of a run's)
FILE = "family_guidance.npz"  # in the bundle, named by the manifest's `family_guidance.file`


@dataclass(frozen=True)
class FamilyRecipe:
    """How the tables are counted and what of them the bundle keeps.

    region: width in semitones of the pitch regions counted apart (0: one table over every pitch);
    notes: training notes counted; layers: the priors the tables guide (a layer left out samples unguided);
    floor: the lowest log-ratio kept (None: all). A floor keeps the tables from all but banning a code the
    family seldom used at that position (with 30 pseudo-counts over ~700 notes a code it never used there is
    at -3.2, x `/timbre` 2 on the logits), which may be the very code the requested pitch needs. Measured,
    neither a floor nor one prior alone moves the pitch-family front (docs/ablations.md): both stay for the
    ablations that showed it."""

    region: int = 0
    notes: int = FAMILY_NOTES
    layers: tuple[str, ...] = codemaps.LAYERS
    floor: float | None = None

    def __post_init__(self):
        if not self.layers or set(self.layers) - set(codemaps.LAYERS):
            raise ValueError(f"family guidance layers {self.layers}: some of {codemaps.LAYERS}")
        if self.region < 0 or self.notes <= 0:
            raise ValueError(f"family tables: region {self.region} must be >= 0 and notes {self.notes} > 0")


def family_tables(
    codes: dict[str, np.ndarray],
    n_families: int,
    n_codes: int,
    smoothing: float = SMOOTHING,
    regions: Sequence[int] = (0,),
    floor: float | None = None,
) -> dict[str, np.ndarray]:
    """codes: {'top': (N, 32, 4), 'bottom': (N, 64, 8), 'family': (N,), 'pitch': (N,) when `regions` has more
    than one} → {layer: (n_families, len(regions), L, n_codes) float32 log-ratios}, L the layer's sequence
    length in the priors' order. `regions`: the lowest pitch of each pitch region, ascending; each region's
    table is counted over its own notes, against its own code histogram: what tells the families apart at
    that register, not what tells registers apart (the prior and harmonic guidance see to the pitch). `floor`:
    log-ratios below it are raised to it."""
    families = codes["family"].astype(np.int64)
    region = pitch_region(codes["pitch"], np.asarray(regions)) if len(regions) > 1 else np.zeros_like(families)
    out = {}
    for layer in codemaps.LAYERS:
        seq = codemaps.to_sequence(codes[layer].astype(np.int64), layer)  # (N, L)
        length = seq.shape[1]
        counts = np.zeros((n_families, len(regions), length, n_codes))  # (F, R, L, V)
        np.add.at(counts, (families[:, None], region[:, None], np.arange(length)[None, :], seq), 1.0)
        # p(code | region, position): every family pooled, with one pseudo-count spread over the codebook.
        pooled = counts.sum(0)  # (R, L, V)
        marginal = (pooled + 1.0 / n_codes) / (pooled.sum(-1, keepdims=True) + 1.0)
        per_family = counts.sum(-1, keepdims=True)  # (F, R, L, 1): notes of each family in each region
        conditional = (counts + smoothing * marginal) / (per_family + smoothing)
        ratio = np.log(conditional) - np.log(marginal)
        out[layer] = (ratio if floor is None else np.maximum(ratio, floor)).astype(np.float32)
    return out


def pitch_regions(pitch_range: Sequence[int], width: int) -> tuple[int, ...]:
    """The lowest pitch of each region `width` semitones wide from the bottom of `pitch_range`, the last one
    taking what is left over (24-84 by 12: 24, 36, 48, 60, 72, the last 13 wide); width 0: one region."""
    low, high = pitch_range[0], pitch_range[1]
    return tuple(range(low, max(low + 1, high - width + 2), width)) if width > 0 else (low,)


def write_family_tables(
    bundle_dir: Path,
    codes: dict[str, np.ndarray],
    n_families: int,
    n_codes: int,
    pitch_range: Sequence[int],
    recipe: FamilyRecipe = FamilyRecipe(),
) -> dict:
    """The tables of `codes` (counted by `recipe`) into the bundle folder, float16 compressed (2.8 MB per pitch
    region for 11 families at 512 codes); returns the manifest entry."""
    regions = pitch_regions(pitch_range, recipe.region)
    tables = family_tables(codes, n_families, n_codes, regions=regions, floor=recipe.floor)
    np.savez_compressed(
        Path(bundle_dir) / FILE,
        pitch_regions=np.asarray(regions, np.int64),
        **{layer: tables[layer].astype(np.float16) for layer in recipe.layers},
    )
    entry = {"file": FILE, "notes": int(len(codes["family"])), "smoothing": SMOOTHING, "pitch_regions": list(regions)}
    return entry | {"layers": list(recipe.layers), "floor": recipe.floor}
