"""Level and playback arithmetic: normalisation, the velocity curve, the limiter, the --play mixer."""

import numpy as np
import pytest

from server import level
from server.playback import Mixer

RATE = 16_000


def tone(seconds: float = 4.0, amplitude: float = 0.1, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def test_a_render_is_brought_to_the_target_over_its_held_part():
    audio = tone(amplitude=0.01)
    audio[3 * RATE :] *= 10  # the release does not count
    out, lvl = level.shape(audio, RATE, -18.0)
    assert lvl.level_db == pytest.approx(-18.0, abs=0.01) and not lvl.silent
    assert lvl.measured_db == pytest.approx(20 * np.log10(0.01 / np.sqrt(2)), abs=0.01)
    assert level.held_rms_db(out, RATE) == pytest.approx(-18.0, abs=0.01)


def test_silence_is_reported_and_not_raised():
    audio = tone(amplitude=1e-6)
    out, lvl = level.shape(audio, RATE, -18.0)
    assert lvl.silent and out is audio and lvl.level_db < level.SILENT_DBFS


@pytest.mark.parametrize(
    "velocity,curve,db", [(127, 2, 0.0), (64, 2, -11.90), (30, 2, -25.07), (30, 1, -12.53), (1, 0, 0.0)]
)
def test_velocity_follows_the_curve(velocity, curve, db):
    assert level.velocity_db(velocity, curve) == pytest.approx(db, abs=0.01)


def test_the_limiter_glides_at_the_edges_too():
    audio = tone(amplitude=0.5)
    audio[3], audio[-3] = 3.0, -3.0  # peaks in the first and last samples: the look-ahead runs past the ends
    out = level.limit(audio, RATE)
    assert np.abs(out).max() <= 10 ** (level.CEILING_DBFS / 20) + 1e-6
    for part in (slice(0, 400), slice(-400, None)):
        a, o = audio[part], out[part]
        gain = o[np.abs(a) > 0.05] / a[np.abs(a) > 0.05]
        assert np.abs(np.diff(gain)).max() < 0.2  # no one-sample dip


def test_the_limiter_keeps_every_peak_under_the_ceiling_and_leaves_the_rest():
    audio = tone(amplitude=0.5)
    audio[20_000:20_010] = 3.0  # a click 20 dB over the ceiling
    out = level.limit(audio, RATE)
    ceiling = 10 ** (level.CEILING_DBFS / 20)
    assert np.abs(out).max() <= ceiling + 1e-6
    w = int(level.LOOKAHEAD_S * RATE)
    far = np.r_[0 : 20_000 - 3 * w, 20_010 + 3 * w : audio.size]
    np.testing.assert_array_equal(out[far], audio[far])  # untouched away from the peak
    gain = out[19_000:21_000] / np.where(np.abs(audio[19_000:21_000]) > 1e-3, audio[19_000:21_000], np.nan)
    steps = np.abs(np.diff(gain[np.isfinite(gain)]))
    assert steps.max() < 0.2  # the gain glides into the peak instead of jumping (no click)


def test_the_mixer_overlaps_voices_and_a_release_fades_one_out():
    m = Mixer(RATE)
    m.add(np.full(RATE, 0.25, np.float32), pitch=60)
    m.add(np.full(RATE, 0.5, np.float32), pitch=64)
    assert m.mix(100) == pytest.approx(np.full(100, 0.75))
    m.release(60, 0.01)  # 160 samples
    out = m.mix(400)
    assert out[0] == pytest.approx(0.75, abs=0.01) and out[200:] == pytest.approx(np.full(200, 0.5))
    assert [v.pitch for v in m.voices] == [64]
    m.add(np.full(RATE, 0.1, np.float32), pitch=64)  # the key again: the old voice makes way, quickly
    m.mix(int(0.02 * RATE))
    assert [v.pitch for v in m.voices] == [64] and m.mix(10) == pytest.approx(np.full(10, 0.1))


def test_a_note_released_before_its_render_is_not_played():
    import time

    m = Mixer(RATE)
    struck = time.perf_counter()
    m.release(60, 0.1)  # the note-off came while the note was still rendering
    m.add(np.full(RATE, 0.25, np.float32), pitch=60, struck=struck)
    m.add(np.full(RATE, 0.5, np.float32), pitch=62, struck=struck)
    assert [v.pitch for v in m.voices] == [62]
    m.add(np.full(RATE, 0.25, np.float32), pitch=60, struck=time.perf_counter())  # struck again: plays
    assert [v.pitch for v in m.voices] == [62, 60]


@pytest.mark.parametrize(("n", "width"), [(64_000, 161), (100, 7), (7, 7), (10, 3), (300, 161)])
def test_the_running_minimum_is_every_windows_minimum(n, width):
    x = np.random.default_rng(n).random(n)
    expected = np.lib.stride_tricks.sliding_window_view(x, width).min(axis=1)
    np.testing.assert_array_equal(level.running_min(x, width), expected)
