"""Reading user files: any rate, channel count and length → 4 s mono at 16 kHz; clear errors otherwise."""

import numpy as np
import pytest
import soundfile as sf

from export.metrics import estimate_f0
from server.audio import AudioError, load_audio, resample


def test_stereo_44k_long_file_becomes_4s_mono_16k_with_pitch_kept(tmp_path):
    rate = 44_100
    t = np.arange(int(6.5 * rate)) / rate
    tone = 0.4 * np.sin(2 * np.pi * 330 * t)
    path = tmp_path / "long.flac"
    sf.write(str(path), np.stack([tone, 0.5 * tone], axis=1), rate)
    audio = load_audio(path)
    assert audio.shape == (64_000,) and audio.dtype == np.float32
    assert estimate_f0(audio, 16_000) == pytest.approx(330, rel=0.003)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.75 * 0.4 / np.sqrt(2), rel=0.02)  # channel mean


def test_short_8k_file_is_padded_with_silence(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), 0.5 * np.ones(4000), 8000)  # 0.5 s
    audio = load_audio(path)
    assert audio.shape == (64_000,)
    assert np.all(audio[9000:] == 0) and np.abs(audio[1000:7000]).min() > 0.4


def test_resample_is_band_limited():
    rate = 48_000
    t = np.arange(rate) / rate
    mix = np.sin(2 * np.pi * 1000 * t) + np.sin(2 * np.pi * 12_000 * t)  # 12 kHz cannot survive 16 kHz
    out = resample(mix, rate, 16_000)
    spectrum = np.abs(np.fft.rfft(out[2000:14000]))
    freqs = np.fft.rfftfreq(12000, 1 / 16_000)
    assert abs(freqs[spectrum.argmax()] - 1000) < 3
    assert spectrum[freqs > 4000].max() < 0.01 * spectrum.max()


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "no such file"),
        (b"", "not a readable audio file"),
        (b"RIFF\x00\x00\x00\x00WAVEjunk", "not a readable audio file"),
    ],
)
def test_unreadable_files_raise_a_clear_error(tmp_path, content, needle):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=needle):
        load_audio(path)


def test_empty_audio_file_is_an_error(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0), 16_000)
    with pytest.raises(AudioError, match="no audio frames"):
        load_audio(path)


def _mixer_note(seconds_held: float, rate: int = 16_000, pedal: bool = False):
    """A 4 s 220 Hz note through --play's mixer, held `seconds_held`, mixed for 12 s in 512-frame blocks."""
    from server.playback import Mixer

    t = np.arange(4 * rate) / rate
    note = (0.3 * np.sin(2 * np.pi * 220 * t) * np.clip(4.0 - t, 0.0, 1.0)).astype(np.float32)
    mixer = Mixer(rate)
    mixer.add(note, pitch=57)
    if pedal:
        mixer.sustain(True)
    out = []
    for block in range(12 * rate // 512):
        if block == int(seconds_held * rate / 512):
            mixer.release(57, 0.15)
        out.append(mixer.mix(512))
    return np.concatenate(out), mixer


def _db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)


def test_a_note_held_10_s_through_play_sounds_for_10_s_and_the_pedal_holds_it():
    """Issue 28: --play's voices played the 4 s render once; held notes died after about 3 s."""
    rate = 16_000
    audio, _ = _mixer_note(10.0)
    held = _db(audio[rate : 2 * rate])
    for s in range(3, 10):  # still sounding at its held level, long after the render's end
        assert abs(_db(audio[s * rate : (s + 1) * rate]) - held) < 6.0, s
    assert _db(audio[int(10.8 * rate) :]) < held - 60  # released at 10 s
    audio, mixer = _mixer_note(2.0, pedal=True)  # note-off at 2 s with the pedal down: it sounds on
    assert abs(_db(audio[5 * rate : 6 * rate]) - held) < 6.0
    mixer.sustain(False)  # pedal up: released now
    assert _db(np.concatenate([mixer.mix(512) for _ in range(40)])[-2048:]) < held - 60


def test_a_bend_of_two_semitones_reads_200_cents():
    from export.metrics import cents, estimate_f0
    from server.playback import Mixer

    rate = 16_000
    t = np.arange(4 * rate) / rate
    mixer = Mixer(rate)
    mixer.add((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), pitch=57)
    straight = np.concatenate([mixer.mix(512) for _ in range(40)])
    mixer.bend(2.0)
    bent = np.concatenate([mixer.mix(512) for _ in range(60)])  # 1.9 s: round the sustain loop, bent
    for audio, expected in ((straight, 0.0), (bent, 200.0)):
        f0 = estimate_f0(audio, rate, start_s=0.2, duration_s=0.8, fmin=100, fmax=600)
        assert abs(cents(f0, 220.0) - expected) < 10, (expected, f0)


def test_the_pitch_wheel_maps_to_bend():
    import mido

    from server.midi import to_osc

    assert to_osc(mido.Message("pitchwheel", pitch=8191)) == ("/bend", [round(2 * 8191 / 8192, 4)])
    assert to_osc(mido.Message("pitchwheel", pitch=-8192)) == ("/bend", [-2.0])


def test_a_note_tagged_ahead_starts_at_its_tag_to_the_sample_and_its_keys_note_off_spares_it():
    """Issue 28: live coders schedule ahead; --play started a tagged note a render's time after its tag."""
    from server.playback import Mixer

    rate, block = 48_000, 512
    mixer = Mixer(rate)
    old = np.full(rate, 0.5, np.float32)  # the key's previous note, sounding
    mixer.add(old, pitch=60)
    t0 = 1000.0  # the block clock: block k's first sample sounds at t0 + k * block / rate
    tag = t0 + 0.1234  # the next note of the key, rendered ahead, to start at its tag
    new = np.full(rate, 0.25, np.float32)
    new[0] = 1.0  # its first sample marked
    mixer.add(new, pitch=60, struck=tag, at=tag)
    mixer.release(60, 0.5, at=tag)  # the previous note's note-off, tagged with the new note-on
    out = np.concatenate([mixer.mix(block, t0 + k * block / rate) for k in range(20)])
    start = round((tag - t0) * rate)
    assert np.argmax(out > 0.9) == start  # to the sample: the tag is 5923.2 samples in
    assert np.all(out[:start] <= 0.5) and out[start] > 0.9  # the old note until then, fading after its note-off
    assert abs(out[start + 2 * block] - 0.25) < 0.05  # the new note sounds on, the old one faded (10 ms)
