"""The sampler instrument export, proven by real players: FluidSynth plays a melody through the SF2 (each note
at its pitch, at its velocity's level, held past the sample's end by its loop), sfzlint (the SFZ format's
opcode table) passes the SFZ with every key mapped to its WAV, sf2utils reads the SF2's structure; then the
export over real UDP (`/export/instrument`) and from the CLI on a tiny bundle."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from export.metrics import cents, estimate_f0, midi_to_hz
from server import instrument_export as ie
from server.engine import Settings
from server.level import held_rms_db, velocity_db
from tests.conftest import require, run_cli

RATE = 16_000
KEYS = range(55, 71)  # 16 keys: the melody's


def tone(key: int, seconds: float = 4.0) -> np.ndarray:
    """A harmonic note at the key's pitch, held 3 s then released over 1 s (the model's notes' shape)."""
    t = np.arange(int(seconds * RATE)) / RATE
    partials = sum(np.sin(2 * np.pi * midi_to_hz(key) * h * t + h) / h for h in (1, 2, 3))
    return (0.1 * partials * np.clip(4.0 - t, 0.0, 1.0)).astype(np.float32)


def instrument(curve: float = 2.0, release: float = 0.15, keys: range = KEYS) -> ie.Instrument:
    settings = Settings(velocity_curve=curve, release=release)
    notes = [(k, tone(k)) for k in keys]
    return ie.Instrument("test tones", RATE, ie.samples(notes, RATE, RATE, settings), curve, release, {"model": "x"})


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, Path]:
    return ie.write(tmp_path_factory.mktemp("inst") / "tones", instrument())


def test_the_loop_wraps_without_a_click():
    audio = tone(60)
    looped, start, end = ie.loop(audio, RATE)
    assert 0.95 * RATE <= start < end <= 2.95 * RATE and audio[start - 1] < 0 <= audio[start]
    steps = np.abs(np.diff(audio[RATE : 2 * RATE]))
    assert abs(looped[start] - looped[end - 1]) <= steps.max()  # the wrap is a step like any other
    assert np.array_equal(looped[:start], audio[:start]) and np.array_equal(looped[end:], audio[end:])


def fluidsynth_melody(sf2: Path, events: list[tuple[int, int, float]], tmp: Path) -> np.ndarray:
    """FluidSynth (the CLI, reverb and chorus off) plays `events` (key, velocity, held seconds), one a second
    or after the previous note's hold; returns the mono render at 16 kHz."""
    require(shutil.which("fluidsynth") is not None, "FluidSynth (fluidsynth)")
    import mido

    midi = mido.MidiFile(ticks_per_beat=480)  # 120 bpm: 960 ticks a second
    track = mido.MidiTrack()
    midi.tracks.append(track)
    for key, velocity, held in events:
        track.append(mido.Message("note_on", note=key, velocity=velocity, time=0))
        track.append(mido.Message("note_off", note=key, velocity=0, time=round(960 * held)))
        track.append(mido.MetaMessage("marker", text="rest", time=round(960 * max(1.0 - held, 0.5))))
    midi.save(str(tmp / "melody.mid"))
    out = tmp / "melody.wav"
    cmd = ["fluidsynth", "-ni", "-R", "0", "-C", "0", "-g", "1", "-F", str(out), "-r", str(RATE), str(sf2)]
    subprocess.run([*cmd, str(tmp / "melody.mid")], check=True, capture_output=True, timeout=60)
    audio, rate = sf.read(str(out), always_2d=True)
    assert rate == RATE
    return audio.mean(axis=1)


def rms_db(audio: np.ndarray, t0: float, t1: float) -> float:
    return held_rms_db(audio[int(t0 * RATE) : int(t1 * RATE)], RATE)


def test_fluidsynth_plays_a_melody_through_the_sf2_at_pitch(written, tmp_path):
    events = [(k, 100, 0.5) for k in KEYS]
    audio = fluidsynth_melody(written[1], events, tmp_path)
    for i, (key, _, _) in enumerate(events):
        f0 = estimate_f0(audio, RATE, fmin=midi_to_hz(key) / 2.2, fmax=midi_to_hz(key) * 2.2, start_s=i + 0.1,
                         duration_s=0.35)  # fmt: skip
        assert f0 is not None and abs(cents(f0, midi_to_hz(key))) < 50, (key, f0)


@pytest.mark.parametrize("curve", [2.0, 1.0, 0.0])
def test_fluidsynth_follows_the_velocity_curve(tmp_path, curve):
    """127 against 30 and 64: the level differences of /velocity/curve (curve 2: 25.1 and 11.9 dB)."""
    _, sf2 = ie.write(tmp_path / "inst", instrument(curve, keys=range(60, 61)))
    audio = fluidsynth_melody(sf2, [(60, 127, 0.5), (60, 30, 0.5), (60, 64, 0.5)], tmp_path)
    loud, soft, mid = (rms_db(audio, i + 0.1, i + 0.45) for i in range(3))
    assert loud - soft == pytest.approx(-velocity_db(30, curve), abs=0.5)
    assert loud - mid == pytest.approx(-velocity_db(64, curve), abs=0.5)


def test_a_held_key_loops_past_the_sample_and_fades_at_note_off(tmp_path):
    _, sf2 = ie.write(tmp_path / "inst", instrument(release=0.15, keys=range(60, 61)))
    audio = fluidsynth_melody(sf2, [(60, 127, 7.0)], tmp_path)  # the sample is 4 s long
    held = rms_db(audio, 1.0, 2.0)
    for t in (3.5, 4.5, 5.5, 6.5):  # still sounding, at the same level, long after the sample's end
        assert rms_db(audio, t, t + 0.4) == pytest.approx(held, abs=1.5), t
    f0 = estimate_f0(audio, RATE, start_s=5.0, duration_s=0.5, fmin=120, fmax=600)
    assert f0 is not None and abs(cents(f0, midi_to_hz(60))) < 50
    assert rms_db(audio, 7.6, 8.0) < held - 60  # released: the fade is over 0.6 s after the note-off


def test_keys_beyond_the_exported_range_sound_transposed(written, tmp_path):
    """Issue 28: keys 20 and 88 were silent in FluidSynth (the export stops at the model's 24-84)."""
    low, high = KEYS[0] - 4, KEYS[-1] + 4
    audio = fluidsynth_melody(written[1], [(low, 100, 1.0), (high, 100, 1.0)], tmp_path)
    for start, key in ((0.0, low), (1.5, high)):  # a second held, then half a second's rest
        assert rms_db(audio, start + 0.2, start + 0.8) > -40, key
        f0 = estimate_f0(audio, RATE, start_s=start + 0.2, duration_s=0.5, fmin=60, fmax=1000)
        assert f0 is not None and abs(cents(f0, midi_to_hz(key))) < 50, (key, f0)


def test_the_sfz_passes_sfzlint_and_maps_every_key_to_its_file(written):
    from sfzlint.parser import SFZValidatorConfig, validate

    sfz = written[0]
    problems: list[str] = []
    config = SFZValidatorConfig(file_path=sfz)
    parsed = validate(sfz, err_cb=lambda sev, msg, token, path: problems.append(f"{sev} {msg}"), config=config)
    assert not problems, problems
    regions = {int(r["pitch_keycenter"].value): r for r in parsed.regions}
    assert sorted(regions) == list(KEYS)
    for key, r in regions.items():  # the lowest and highest samples stretch to the ends of the MIDI range
        lo, hi = (0 if key == KEYS[0] else key), (127 if key == KEYS[-1] else key)
        assert (int(r["lokey"].value), int(r["hikey"].value)) == (lo, hi)
        wav = sfz.parent / "samples" / str(r["sample"].value)
        info = sf.info(str(wav))
        assert info.samplerate == RATE and info.frames == 4 * RATE
        assert 0 < int(r["loop_start"].value) < int(r["loop_end"].value) < info.frames
    text = sfz.read_text()
    assert "loop_mode=loop_sustain" in text and "ampeg_release=0.15" in text
    assert f"amp_velcurve_64={(64 / 127) ** 2:.6f}" in text


def test_sf2utils_reads_one_zone_per_key_with_its_loop_and_root(written):
    Sf2File = pytest.importorskip("sf2utils.sf2parse", reason="sf2utils imports audioop, gone in Python 3.13").Sf2File

    with open(written[1], "rb") as fh:
        font = Sf2File(fh)
        [preset] = [p for p in font.presets if p.name != "EOP"]
        assert (preset.bank, preset.preset) == (0, 0)
        [inst] = [i for i in font.instruments if i.name != "EOI"]
        zones = [b for b in inst.bags if b.sample is not None]
        expected = [(0 if k == KEYS[0] else k, 127 if k == KEYS[-1] else k) for k in KEYS]
        assert [tuple(z.key_range) for z in zones] == expected
        for key, zone in zip(KEYS, zones, strict=True):
            assert zone.base_note == key and zone.sample.sample_rate == RATE and zone.sample.original_pitch == key
            assert 0 < zone.sample.start_loop < zone.sample.end_loop < 4 * RATE  # sf2utils: from the sample's start
        [global_zone] = [b for b in inst.bags if b.sample is None]
        assert global_zone.gens[ie.GEN_SAMPLE_MODES].amount == ie.LOOP_SUSTAIN
        assert global_zone.gens[ie.GEN_RELEASE_VOL_ENV].short == round(1200 * math.log2(0.15))


def test_a_failed_write_leaves_nothing_and_an_earlier_export_whole(tmp_path, monkeypatch):
    folder = tmp_path / "inst"
    ie.write(folder, instrument(keys=range(60, 62)))
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))

    def broken(inst: ie.Instrument) -> bytes:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ie, "sf2_bytes", broken)
    with pytest.raises(OSError, match="No space"):
        ie.write(folder, instrument(keys=range(60, 63)))
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst"]  # no temporary folder left beside it


def test_folders_it_must_not_write_are_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ie.ExportError, match="is a file, not a folder"):
        ie.check_folder(tmp_path / "a-file")
    with pytest.raises(ie.ExportError, match="is a file, not a folder"):
        ie.check_folder(tmp_path / "a-file" / "inst")
    with pytest.raises(ie.ExportError, match="not empty and not an earlier export"):
        ie.check_folder(tmp_path / "mine")
    assert ie.check_folder(tmp_path / "new" / "deeper") == (tmp_path / "new" / "deeper").resolve()


def test_a_folder_with_an_instrument_json_of_its_own_keeps_every_file(tmp_path):
    """The attack of issue 26: a project folder that happens to hold an instrument.json is never replaced."""
    project = tmp_path / "synth-project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "src").mkdir()
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "instrument.json").write_text('{"name": "my own"}\n')
    before = {p.relative_to(project): p.read_bytes() for p in project.rglob("*") if p.is_file()}
    with pytest.raises(ie.ExportError, match="no files"):
        ie.write(project, instrument(keys=range(60, 61)))
    assert {p.relative_to(project): p.read_bytes() for p in project.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth-project"]  # no temporary folder left


def test_an_earlier_export_is_replaced_only_while_it_holds_exactly_its_own_files(tmp_path):
    folder = tmp_path / "inst"
    ie.write(folder, instrument(keys=range(60, 62)))
    assert json.loads((folder / ie.MARKER).read_text())["files"]["samples/060.wav"] > 0
    ie.write(folder, instrument(keys=range(60, 63)))  # its own export: replaced whole
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["060.wav", "061.wav", "062.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst"]  # the earlier one removed, nothing beside
    (folder / "samples" / "my-take.wav").write_bytes(b"mine")  # the performer adds a file: not replaceable now
    with pytest.raises(ie.ExportError, match="1 entry it did not write, such as samples/my-take.wav"):
        ie.check_folder(folder)
    (folder / "samples" / "my-take.wav").unlink()
    with open(folder / "samples" / "060.wav", "ab") as fh:  # or edits one of its files
        fh.write(b"edit")
    with pytest.raises(ie.ExportError, match="samples/060.wav changed"):
        ie.write(folder, instrument(keys=range(60, 61)))
    (folder / "samples" / "060.wav").unlink()
    (folder / "samples" / "060.wav").symlink_to(tmp_path / "elsewhere.wav")
    with pytest.raises(ie.ExportError, match="not an earlier export"):
        ie.check_folder(folder)


def test_the_server_replaces_only_the_exports_it_wrote_itself(tmp_path):
    performers = tmp_path / "piano"  # made earlier, elsewhere (the CLI, another session)
    ie.write(performers, instrument(keys=range(60, 61)))
    before = {p.name: p.read_bytes() for p in performers.rglob("*") if p.is_file()}
    with pytest.raises(ie.ExportError, match="holds an export this server did not write"):
        ie.check_folder(performers, replaceable=set())
    with pytest.raises(ie.ExportError, match="holds an export this server did not write"):
        ie.write(performers, instrument(keys=range(60, 62)), replaceable=set())
    assert {p.name: p.read_bytes() for p in performers.rglob("*") if p.is_file()} == before
    ours = tmp_path / "ours"
    ie.write(ours, instrument(keys=range(60, 61)), replaceable=set())  # a new folder: written
    ie.write(ours, instrument(keys=range(60, 62)), replaceable={ours})  # its own: replaced
    assert sorted(p.name for p in (ours / "samples").iterdir()) == ["060.wav", "061.wav"]


def test_an_empty_folder_is_filled_and_a_name_with_a_newline_writes_one_header_line(tmp_path):
    folder = tmp_path / "a\n<region> sample=x.wav lokey=0 hikey=127"
    folder.mkdir()
    inst = instrument(keys=range(60, 61))
    sfz, _ = ie.write(folder, ie.Instrument(folder.name, inst.rate, inst.samples, 2.0, 0.15, inst.about))
    regions = [line for line in sfz.read_text().splitlines() if line.startswith("<region>")]
    assert len(regions) == 1 and "sample=060.wav" in regions[0]


# ---- through the server and the CLI, on the tiny bundle ------------------------------------------------


def test_export_instrument_over_udp_then_an_unwritable_path_answers_error(live, tmp_path):
    c = live.client()
    folder = live.read_dir / "exported"
    c.send("/export/instrument", str(folder), 60, 62)
    progress = []
    while (reply := c.wait_for("/export/progress", "/export/done", "/error", timeout=120))[0] == "/export/progress":
        progress.append(reply[1])
    assert reply[0] == "/export/done", reply
    sfz, sf2, keys = reply[1]
    assert progress == [[1, 3], [2, 3], [3, 3]] and keys == 3
    assert Path(sfz) == folder / "exported.sfz" and Path(sf2).is_file()
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["060.wav", "061.wav", "062.wav"]
    about = json.loads((folder / "instrument.json").read_text())
    assert about["family"] and about["settings"]["velocity_curve"] == 2.0

    (live.read_dir / "a-file").write_text("x")
    for path, expected in (
        (str(live.read_dir / "a-file" / "inst"), "is a file, not a folder"),
        ("/proc/inpaint-osc-inst", "outside the folders the server may write"),
    ):
        c.send("/export/instrument", path, 60, 60)
        address, (where, message) = c.wait_for("/error", "/export/done")
        assert address == "/error" and where == "/export/instrument" and expected in message, message
    c.send("/export/instrument", str(folder), 70, 60)
    assert "low 70 is above high 60" in c.wait_for("/error")[1][1]
    c.send("/ping")
    assert c.wait_for("/pong")  # still serving


def test_cli_export_instrument_writes_the_keys_asked(tiny_bundle, tmp_path):
    out = tmp_path / "cli inst"
    result = run_cli("server", "export-instrument", str(out), "--bundle", str(tiny_bundle[1]), "--low", "60",
                     "--high", "61", "--velocity-curve", "1", "--rate", "48000", block_torch=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["keys"] == 2 and Path(report["sfz"]) == out / "cli-inst.sfz" and Path(report["sf2"]).is_file()
    assert sf.info(str(out / "samples" / "061.wav")).samplerate == 48_000
    assert "amp_velcurve_64=0.503937" in Path(report["sfz"]).read_text()
    again = run_cli("server", "export-instrument", str(tmp_path), "--bundle", str(tiny_bundle[1]), block_torch=True)
    assert again.returncode == 1 and "not an earlier export" in again.stderr  # tmp_path holds the first export


def test_a_killed_exports_leftovers_are_swept_and_nothing_else(tmp_path):
    import os
    import time

    folder = tmp_path / "inst"
    leftover = tmp_path / f".inst.{ie.TEMPORARY}abc12_xy.tmp"
    (leftover / "samples").mkdir(parents=True)
    (leftover / "samples" / "060.wav").write_bytes(b"half")
    (leftover / "inst.sf2").write_bytes(b"half")
    decoy = tmp_path / f".inst.{ie.TEMPORARY}minemine.tmp"  # the same name, something the performer keeps there
    decoy.mkdir()
    (decoy / "notes.txt").write_text("keep me")
    fresh = tmp_path / f".inst.{ie.TEMPORARY}running1.tmp"  # an export writing right now
    (fresh / "samples").mkdir(parents=True)
    users = [tmp_path / ".inst.old", tmp_path / ".inst.backup.tmp"]  # a user's own, holding only an export's kind
    for path in users:  # of files (a soundfont kept aside): never an export's, whatever they hold
        path.mkdir()
        (path / "FluidR3_GM.sf2").write_bytes(b"mine")
    old = time.time() - 2 * ie.LEFTOVER_AGE_S
    for path in (leftover, decoy, *users):
        os.utime(path, (old, old))
    ie.write(folder, instrument(keys=range(60, 61)))
    assert not leftover.exists() and (decoy / "notes.txt").read_text() == "keep me" and fresh.is_dir()
    assert all((path / "FluidR3_GM.sf2").read_bytes() == b"mine" for path in users)
