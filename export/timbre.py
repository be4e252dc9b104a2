"""Timbre, measured the way pitch is: the family judge's verdicts on real, reconstructed and generated notes.

The judge (`export.family_judge`) learns real notes of the training split, and some of them after the bundle's
VQ-VAE; its accuracy on validation notes after that VQ-VAE is the *ceiling* generated notes are held against
(they pass through the same decoder, so its artefacts cost both alike). Beside accuracy: the Fréchet distance
between generated and reconstructed validation notes in the judge's embedding, and diversity: the distance
between two seeds of one (family, pitch) cell against the distance between two real instruments of one family
at one pitch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.family_judge import FamilyJudge, frechet_distance, per_family_accuracy, timbre_features
from export.nsynth import Note, read_note
from server import dsp, vqvae_audio
from server.bundle import Bundle

JUDGE_NOTES = 6000  # real training notes the judge learns from (seeded draw)
JUDGE_RECON_NOTES = 3000  # of which this many are also learned after the bundle's VQ-VAE


def instrument_of(note: Note) -> str:
    """`brass_fluidr3_061-060-100` → `brass_fluidr3_061` (NSynth names: instrument-pitch-velocity)."""
    return note.note_str.rsplit("-", 2)[0]


@dataclass
class JudgeData:
    judge: FamilyJudge
    features: np.ndarray  # (N, D) of the real notes it learned
    notes: list[Note]


def _features(notes: list[Note], cache: Path, audio_of) -> np.ndarray:
    """(N, D) features of `audio_of(note)` for each note, kept in `cache` (.npz) by note name: a note already
    there (from this draw or a larger one) is not measured again, and the cache keeps every note it held."""
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        z = np.load(cache)
        known = dict(zip(z["names"].tolist(), z["features"], strict=True))
    missing = [note for note in notes if note.note_str not in known]
    if missing:
        known.update({note.note_str: timbre_features(audio_of(note), note.pitch) for note in missing})
        np.savez(cache, names=np.array(list(known)), features=np.stack(list(known.values())))
    return np.stack([known[note.note_str] for note in notes])


def _vqvae_id(bundle: Bundle, phase: str) -> str:
    """What a reconstruction depends on: the VQ-VAE graphs, the spectrogram settings and the inversion."""
    h = hashlib.blake2b(digest_size=6)
    for graph in ("vqvae_encoder", "vqvae_decoder"):
        h.update((bundle.path / bundle.manifest.graphs[graph]).read_bytes())
    h.update(repr(bundle.manifest.spectrogram).encode())
    if phase != "if":  # the inversion every cache made before the peak-locked phase existed keeps its name
        h.update(phase.encode())
    return h.hexdigest()


def train_judge(train: list[Note], bundle: Bundle, data: Path, n: int = JUDGE_NOTES,
                n_recon: int = JUDGE_RECON_NOTES, phase: str = dsp.PHASES[0]) -> JudgeData:  # fmt: skip
    """The judge of `n` real training notes (a seeded draw) and of the first `n_recon` of them after the
    bundle's VQ-VAE and the `phase` inversion: it knows what this model's reconstructions of each family sound
    like, so the decoder's and the inversion's artefacts are no cue. Features are cached in the dataset folder
    (per VQ-VAE and inversion for the reconstructions)."""

    p = bundle.manifest.spectrogram
    notes = [train[i] for i in sorted(np.random.default_rng(0).permutation(len(train))[:n])]
    real = _features(notes, data / "timbre-real.npz", lambda note: read_note(note, p))
    recon_notes = [notes[i] for i in sorted(np.random.default_rng(1).permutation(len(notes))[:n_recon])]
    recon = _features(
        recon_notes,
        data / f"timbre-recon-{_vqvae_id(bundle, phase)}.npz",
        lambda note: vqvae_audio.render(bundle, *vqvae_audio.encode_audio(bundle, read_note(note, p)), phase),
    )
    labels = np.array([note.family for note in notes + recon_notes])
    judge = FamilyJudge.train(np.concatenate([real, recon]), labels, bundle.manifest.families)
    return JudgeData(judge, real, notes)


def program_distance(data: JudgeData) -> float:
    """Mean embedding distance between two real instruments of one family at one pitch and velocity."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, note in enumerate(data.notes):
        groups[(note.family, note.pitch, note.velocity)].append(i)
    embedded = data.judge.embed(data.features)
    distances = []
    for members in groups.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                if instrument_of(data.notes[i]) != instrument_of(data.notes[j]):
                    distances.append(np.linalg.norm(embedded[i] - embedded[j]))
    return float(np.mean(distances)) if distances else float("nan")


def seed_distance(judge: FamilyJudge, cells: dict[tuple, list[np.ndarray]]) -> float:
    """Mean embedding distance between two generated notes of one (family, pitch) cell."""
    distances = []
    for features in cells.values():
        e = judge.embed(np.stack(features))
        distances += [np.linalg.norm(e[a] - e[b]) for a in range(len(e)) for b in range(a + 1, len(e))]
    return float(np.mean(distances)) if distances else float("nan")


@dataclass
class Judged:
    """Family accuracy of one set of notes: overall and per family."""

    accuracy: float
    by_family: np.ndarray  # (n_families,), NaN where the set has none

    @classmethod
    def of(cls, judge: FamilyJudge, features: np.ndarray, labels: np.ndarray) -> Judged:
        predicted = judge.predict(features)
        return cls(float(np.mean(predicted == labels)), per_family_accuracy(predicted, labels, len(judge.families)))


def timbre_figures(
    data: JudgeData,
    real: tuple[np.ndarray, np.ndarray],
    recon: np.ndarray,
    generated: tuple[np.ndarray, np.ndarray, np.ndarray],
    inpainted: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict:
    """real: (features, families) of validation notes; recon: features of their reconstructions;
    generated: (features, families, pitches); inpainted: kind → (features, families)."""
    judge = data.judge
    ceiling = Judged.of(judge, recon, real[1])
    gen = Judged.of(judge, generated[0], generated[1])
    cells: dict[tuple, list[np.ndarray]] = defaultdict(list)
    for f, fam, pitch in zip(*generated, strict=True):
        cells[(int(fam), int(pitch))].append(f)
    reference = judge.embed(recon)
    return {
        "ceiling_real": Judged.of(judge, real[0], real[1]),
        "ceiling": ceiling,
        "generation": gen,
        "inpainting": {kind: Judged.of(judge, f, fam) for kind, (f, fam) in inpainted.items()},
        "frechet_generated": frechet_distance(judge.embed(generated[0]), reference),
        "frechet_real": frechet_distance(judge.embed(real[0]), reference),
        "seed_distance": seed_distance(judge, cells),
        "program_distance": program_distance(data),
    }


def of_ceiling(accuracy: float | np.ndarray, ceiling: float | np.ndarray):
    """Accuracy as a fraction of the judge's ceiling; NaN where the ceiling is 0 (a judge that hears nothing)."""
    return np.divide(accuracy, ceiling, out=np.full(np.shape(accuracy), np.nan), where=np.asarray(ceiling) > 0)[()]


def summary(figures: dict) -> dict:
    """The figures a table row or a JSON report needs, as plain floats."""
    ceiling = figures["ceiling"].accuracy
    gen = figures["generation"]
    ratio_by_family = of_ceiling(gen.by_family, figures["ceiling"].by_family)
    return {
        "family_ceiling_real": figures["ceiling_real"].accuracy,
        "family_ceiling": ceiling,
        "generation_family": gen.accuracy,
        "generation_family_of_ceiling": float(of_ceiling(gen.accuracy, ceiling)),
        "worst_family_of_ceiling": float(np.nanmin(ratio_by_family)) if np.isfinite(ratio_by_family).any() else np.nan,
        **{f"inpainting_family_{k}": v.accuracy for k, v in figures["inpainting"].items()},
        "frechet_generated": figures["frechet_generated"],
        "frechet_real": figures["frechet_real"],
        "diversity": figures["seed_distance"] / figures["program_distance"],
    }


def timbre_section(figures: dict, families: tuple[str, ...]) -> list[str]:
    def pct(x: float) -> str:
        return "–" if np.isnan(x) else f"{100 * x:.1f} %"

    ceiling = figures["ceiling"]
    rows = [
        ("validation notes, real", figures["ceiling_real"]),
        ("validation notes through the VQ-VAE (**the ceiling**)", ceiling),
        ("generated (the grid above)", figures["generation"]),
        *((f"inpainted: {kind}", j) for kind, j in figures["inpainting"].items()),
    ]
    s = summary(figures)
    lines = [
        "## Timbre: is the family heard?",
        "",
        f"A family judge (`export/family_judge.py`: timbre features, a two-layer classifier) learned "
        f"{JUDGE_NOTES} real training notes, {JUDGE_RECON_NOTES} of them also after this bundle's VQ-VAE (so its "
        "artefacts are no cue); it never heard a generated note. Its accuracy on the validation notes after the "
        "VQ-VAE is the ceiling: generated notes carry the same decoder's artefacts. "
        f"Chance is {pct(1 / len(families))}.",
        "",
        "| notes judged | family recognised | of the ceiling |",
        "|---|---|---|",
        *(f"| {name} | {pct(j.accuracy)} | {of_ceiling(j.accuracy, ceiling.accuracy):.2f} |" for name, j in rows),
        "",
        "| family | " + " | ".join(name for name, _ in rows) + " |",
        "|---|" + "---|" * len(rows),
        *(f"| {fam} | " + " | ".join(pct(j.by_family[i]) for _, j in rows) + " |" for i, fam in enumerate(families)),
        "",
        f"Fréchet distance in the judge's embedding to the reconstructed validation notes: generated "
        f"{s['frechet_generated']:.1f}, the real validation notes themselves {s['frechet_real']:.1f} (what the "
        f"VQ-VAE alone moves them). Diversity: two seeds of one cell lie {figures['seed_distance']:.2f} apart, two "
        f"real instruments of one family at one pitch {figures['program_distance']:.2f}: "
        f"**{s['diversity']:.2f}** of it.",
        "",
    ]
    return lines
