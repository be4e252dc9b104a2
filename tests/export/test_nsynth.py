"""The NSynth loader on the real folder layout, and the paper's seeded split."""

import json

import numpy as np
import pytest
import soundfile as sf

from export.config import DataConfig
from export.nsynth import NoteAudio, load_splits, read_notes, split


def _write_split(root, name, notes):
    folder = root / f"nsynth-{name}"
    (folder / "audio").mkdir(parents=True)
    examples = {}
    for i, (family, pitch) in enumerate(notes):
        note_str = f"{family}_acoustic_{i:03d}-{pitch:03d}-100"
        examples[note_str] = {
            "note": i,
            "note_str": note_str,
            "pitch": pitch,
            "velocity": 100,
            "instrument_family_str": family,
            "sample_rate": 16000,
        }
        sf.write(str(folder / "audio" / f"{note_str}.wav"), np.full(64000, 0.01 * (i + 1)), 16000, subtype="PCM_16")
    (folder / "examples.json").write_text(json.dumps(examples))


@pytest.fixture()
def nsynth_root(tmp_path):
    _write_split(tmp_path, "train", [("guitar", 60), ("bass", 30), ("flute", 90), ("mallet", 24), ("vocal", 84)] * 4)
    _write_split(tmp_path, "valid", [("organ", 50), ("reed", 20)])
    _write_split(tmp_path, "test", [("brass", 60)])
    return tmp_path


def test_train_and_valid_are_pooled_test_is_kept_aside_and_pitches_filtered(nsynth_root):
    notes = read_notes(nsynth_root)
    assert len(notes) == 4 * 4 + 1  # flute 90 and reed 20 are out of 24..84, brass is in test
    assert all(24 <= n.pitch <= 84 for n in notes)
    assert "brass" not in {n.note_str.split("_")[0] for n in notes}
    assert [n.note_str for n in notes] == sorted(n.note_str for n in notes)


def test_split_is_seeded_80_20_and_disjoint(nsynth_root):
    a, b = load_splits(nsynth_root), load_splits(nsynth_root)
    assert [n.note_str for n in a["train"]] == [n.note_str for n in b["train"]]
    assert len(a["train"]) == 13 and len(a["valid"]) == 4  # floor(0.8 * 17) = 13
    assert not {n.note_str for n in a["train"]} & {n.note_str for n in a["valid"]}
    other = split(read_notes(nsynth_root), DataConfig(split_seed=1))
    assert [n.note_str for n in other["train"]] != [n.note_str for n in a["train"]]


def test_split_matches_the_scikit_learn_permutation():
    """train_test_split(train_size=0.8, random_state=s) takes test = perm[:n_test], train = perm[n_test:]."""
    notes = list(range(10))
    perm = np.random.RandomState(20200117).permutation(10)
    out = split(notes)
    assert out["valid"] == list(perm[:2]) and out["train"] == list(perm[2:])


def test_a_rendered_folder_with_examples_json_at_its_root_is_read(dataset):
    splits = load_splits(dataset)
    assert len(splits["train"]) + len(splits["valid"]) == 33
    audio, pitch, family = NoteAudio(splits["train"])[0]
    assert audio.shape == (64000,) and 48 <= pitch <= 72 and 0 <= family < 11


def test_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no examples.json"):
        read_notes(tmp_path)
