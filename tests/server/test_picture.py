"""`/image`'s pictures: the last edit's cells outlined, frequency and time marked inside the picture (so that a
patch's grid of cells still lies on it), all of it in the PNG the server writes."""

import numpy as np

from server.dsp import SpectrogramParams, hz_to_mel
from server.picture import EDITED, LABEL, TICKS_HZ, spectrogram_picture

P = SpectrogramParams()


def _spectrogram() -> np.ndarray:
    return np.random.default_rng(0).normal(-5, 1, (2, P.n_mels, 128)).astype(np.float32)


def test_the_last_edits_cells_are_outlined_and_no_other():
    edited = np.zeros((64, 8), bool)
    edited[3, 5] = True  # the fourth row from the lowest, the sixth column
    rgb = spectrogram_picture(_spectrogram(), "bottom", edited=edited)
    marked = np.all(rgb == EDITED, axis=-1)
    ys, xs = np.nonzero(marked)
    # One cell is 8 rows x 64 columns of the 512 x 512 picture; row 3 from the bottom spans rows 480-487.
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (480, 487, 320, 383)
    assert not marked[482:486, 322:382].any()  # an outline: the cell's inside still shows the spectrogram
    assert not np.all(spectrogram_picture(_spectrogram(), "bottom") == EDITED, axis=-1).any()


def test_frequencies_and_seconds_are_marked_inside_the_picture():
    plain = spectrogram_picture(_spectrogram(), "top")
    marked = spectrogram_picture(_spectrogram(), "top", p=P)
    assert marked.shape == plain.shape == (512, 512, 3)
    changed = np.any(marked != plain, axis=-1)
    ys, xs = np.nonzero(changed)
    left, bottom = xs < 48, ys >= 512 - 12
    assert np.all(left | bottom)  # the labels stay in a strip up the left edge and one along the bottom
    low, high = (hz_to_mel(f, P.mel_break_hz) for f in (P.mel_low_hz, P.mel_high_hz))
    for hz in TICKS_HZ:  # each tick at its frequency on the mel scale
        y = 511 - int((hz_to_mel(hz, P.mel_break_hz) - low) / (high - low) * 512)
        assert np.all(marked[y, :10] == LABEL), hz
    for second in (1, 2, 3):  # one tick a second along the bottom: a 4 s note is 512 pixels wide
        assert np.all(marked[-10:, 128 * second] == LABEL)


def test_the_engine_knows_the_cells_its_last_edit_changed(tiny_bundle):
    from server.bundle import Bundle
    from server.engine import Engine

    engine = Engine(Bundle(tiny_bundle[1]))
    assert engine.last_edit("bottom") is None  # nothing edited yet
    code = (int(engine.bottom[2, 6]) + 1) % engine.manifest.n_codes
    engine.set_cells("bottom", [(6, 2, code)])  # (t, f, code)
    expected = np.zeros((64, 8), bool)
    expected[2, 6] = True
    assert np.array_equal(engine.last_edit("bottom"), expected)
    assert not engine.last_edit("top").any()
