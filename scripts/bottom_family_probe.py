"""Does the bottom prior give the family back? `python scripts/bottom_family_probe.py BUNDLE [--data DIR] [--notes N]`

Real top maps of N validation notes (a seeded draw, another than the report's), the whole bottom map resampled
under the note's own family and under a wrong one (moved 1 to 10 places at random), at the server's defaults and
with the model alone (`/harmonic 0 /timbre 0`), each judged by the evaluation's family judge: how often the note
is heard as its own family, and as the label it was given. Then where the misjudged notes go. The figures of
docs/ablations.md, "Where the family is lost: the bottom prior" (about 3.5 minutes on 2 cores for 80 notes).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from export import timbre
from export.config import DataConfig
from export.evaluate import reconstruct
from export.family_judge import timbre_features
from export.nsynth import load_splits
from server import vqvae_audio
from server.bundle import Bundle
from server.sampling import Conditioning, Inpainter

SETTINGS = {"defaults": Conditioning(0, 0), "model alone": Conditioning(0, 0, harmonic=0.0, timbre=0.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, default=Path("data/gm"))
    parser.add_argument("--notes", type=int, default=80)
    args = parser.parse_args()
    bundle = Bundle(args.bundle)
    m = bundle.manifest
    config = DataConfig(pitch_min=m.pitch_range[0], pitch_max=m.pitch_range[1], families=m.families)
    split = load_splits(args.data, config)
    judge = timbre.train_judge(split["train"], bundle, args.data).judge
    valid = split["valid"]
    notes = [valid[i] for i in sorted(np.random.default_rng(5).permutation(len(valid))[: args.notes])]
    recon = reconstruct(bundle, notes)
    own = np.array([note.family for note in notes])
    rng = np.random.default_rng(0)
    wrong = np.array([(f + int(rng.integers(1, len(m.families)))) % len(m.families) for f in own])
    heard_recon = judge.predict(np.stack([r.timbre for r in recon]))
    figures: dict = {"notes": len(notes), "ceiling": float(np.mean(heard_recon == own))}
    inpainter = Inpainter.from_bundle(bundle)
    for name, settings in SETTINGS.items():
        for which, labels in (("own", own), ("wrong", wrong)):
            features = []
            for i, (note, r) in enumerate(zip(notes, recon, strict=True)):
                cond = replace(settings, pitch=note.pitch, family=int(labels[i]))
                bottom = inpainter.resample_bottom(r.top, r.bottom, cond, np.random.default_rng([0, i]))
                features.append(timbre_features(vqvae_audio.render(bundle, r.top, bottom), note.pitch))
            heard = judge.predict(np.stack(features))
            row: dict = {"heard_as_own": float(np.mean(heard == own))}
            row["heard_as_label"] = float(np.mean(heard == labels))
            if name == "defaults" and which == "own":  # the misses of notes whose reconstruction is heard right
                missed = (heard != own) & (heard_recon == own)
                families, counts = np.unique(heard[missed], return_counts=True)
                row["misses_heard_as"] = {m.families[k]: int(c) for k, c in zip(families, counts, strict=True)}
            figures[f"{name}, {which} family"] = row
            print(json.dumps({f"{name}, {which} family": row}), flush=True)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
