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

from pathlib import Path

import numpy as np

from server import codemaps

SMOOTHING = 30.0  # pseudo-counts of the position's own histogram added to each family's counts
FILE = "family_guidance.npz"  # in the bundle, named by the manifest's `family_guidance.file`


def family_tables(
    codes: dict[str, np.ndarray], n_families: int, n_codes: int, smoothing: float = SMOOTHING
) -> dict[str, np.ndarray]:
    """codes: {'top': (N, 32, 4), 'bottom': (N, 64, 8), 'family': (N,)} → {layer: (n_families, L, n_codes)
    float32 log-ratios, L the layer's sequence length, in the priors' order}."""
    families = codes["family"].astype(np.int64)
    out = {}
    for layer in codemaps.LAYERS:
        seq = codemaps.to_sequence(codes[layer].astype(np.int64), layer)  # (N, L)
        n, length = seq.shape
        counts = np.zeros((n_families, length, n_codes))
        np.add.at(counts, (families[:, None], np.arange(length)[None, :], seq), 1.0)
        # p(code | position): every family pooled, with one pseudo-count spread over the codebook.
        marginal = (counts.sum(0) + 1.0 / n_codes) / (n + 1.0)  # (L, V)
        per_family = counts.sum(-1, keepdims=True)  # (F, L, 1): notes of each family
        conditional = (counts + smoothing * marginal) / (per_family + smoothing)
        out[layer] = (np.log(conditional) - np.log(marginal)).astype(np.float32)
    return out


def write_family_tables(bundle_dir: Path, codes: dict[str, np.ndarray], n_families: int, n_codes: int) -> dict:
    """The tables of `codes` into the bundle folder, float16 compressed (2.8 MB for 11 families at 512 codes);
    returns the manifest entry."""
    tables = family_tables(codes, n_families, n_codes)
    np.savez_compressed(Path(bundle_dir) / FILE, **{layer: t.astype(np.float16) for layer, t in tables.items()})
    return {"file": FILE, "notes": int(len(codes["family"])), "smoothing": SMOOTHING}
