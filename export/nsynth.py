"""NSynth-layout datasets (`examples.json` + `audio/<note_str>.wav`) and the paper's custom split.

Works on the real NSynth folders and on the datasets `export.soundfont_dataset` renders. The split follows
the paper: official train and valid pooled (test kept aside), notes sorted by name, pitches 24..84, then a
seeded 80/20 shuffle split (the same permutation scikit-learn's `train_test_split(train_size=0.8,
random_state=20200117)` draws, without needing scikit-learn).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from export.config import DataConfig
from server.dsp import SpectrogramParams, fit_length


@dataclass(frozen=True)
class Note:
    note_str: str
    path: Path
    pitch: int
    family: int
    velocity: int


def find_example_files(root: Path) -> list[Path]:
    """`root/examples.json`, or the non-test `nsynth-*/examples.json` beneath it (train and valid pooled)."""
    root = Path(root)
    if (root / "examples.json").is_file():
        return [root / "examples.json"]
    found = sorted(p for p in root.glob("*/examples.json") if not p.parent.name.endswith("test"))
    if not found:
        raise FileNotFoundError(f"{root}: no examples.json here nor in a nsynth-train/nsynth-valid folder")
    return found


def read_notes(root: Path, cfg: DataConfig = DataConfig()) -> list[Note]:
    """All usable notes under `root`, sorted by note name: pitch in range, family known, audio present."""
    families = {name: i for i, name in enumerate(cfg.families)}
    notes = []
    for examples in find_example_files(root):
        for note_str, ex in json.loads(examples.read_text()).items():
            family = families.get(ex["instrument_family_str"])
            if family is None or not cfg.pitch_min <= ex["pitch"] <= cfg.pitch_max:
                continue
            path = examples.parent / "audio" / f"{note_str}.wav"
            notes.append(Note(note_str, path, int(ex["pitch"]), family, int(ex["velocity"])))
    notes.sort(key=lambda n: n.note_str)
    return notes


def split(notes: list[Note], cfg: DataConfig = DataConfig()) -> dict[str, list[Note]]:
    """Seeded shuffle split → {'train': ..., 'valid': ...}."""
    n = len(notes)
    n_train = math.floor(cfg.train_fraction * n)
    perm = np.random.RandomState(cfg.split_seed).permutation(n)
    valid, train = perm[: n - n_train], perm[n - n_train :]
    return {"train": [notes[i] for i in train], "valid": [notes[i] for i in valid]}


def read_note(note: Note, p: SpectrogramParams) -> np.ndarray:
    """A note's audio at the bundle's rate, cut or padded to the note's length."""
    audio, rate = sf.read(str(note.path), dtype="float32")
    if rate != p.sample_rate:
        raise ValueError(f"{note.path}: {rate} Hz, the bundle expects {p.sample_rate} Hz")
    return fit_length(audio, p)


def load_splits(root: Path, cfg: DataConfig = DataConfig()) -> dict[str, list[Note]]:
    notes = read_notes(root, cfg)
    if len(notes) < 2:
        raise ValueError(f"{root}: {len(notes)} usable notes (pitch {cfg.pitch_min}..{cfg.pitch_max}); need at least 2")
    return split(notes, cfg)


class NoteAudio(torch.utils.data.Dataset):
    """Yields (audio (n_samples,) float32, pitch, family); spectrograms are computed batched on the device."""

    def __init__(self, notes: list[Note], spec: SpectrogramParams = SpectrogramParams()):
        self.notes, self.spec = notes, spec

    def __len__(self) -> int:
        return len(self.notes)

    def __getitem__(self, i: int):
        note = self.notes[i]
        audio, rate = sf.read(str(note.path), dtype="float32", always_2d=True)
        if rate != self.spec.sample_rate:
            raise ValueError(f"{note.path}: {rate} Hz, expected {self.spec.sample_rate} Hz (NSynth is 16 kHz)")
        return torch.from_numpy(fit_length(audio.mean(1), self.spec)), note.pitch, note.family
