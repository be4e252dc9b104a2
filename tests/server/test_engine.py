"""The engine on a tiny bundle: what each operation changes and keeps, history, notes, caches and sessions
(SIGKILL recovery of the whole server is in test_stress.py)."""

import numpy as np
import pytest

from server import codemaps
from server.bundle import Bundle
from server.engine import Engine, EngineError


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle(tiny_bundle[1])


@pytest.fixture
def engine(bundle):
    e = Engine(bundle)
    e.generate()
    return e


def test_top_inpaint_changes_only_the_masked_cells_and_the_bottom_beneath(engine):
    top, bottom = engine.top.copy(), engine.bottom.copy()
    mask = engine.range_mask("top", 1, 3, 8, 12)
    engine.inpaint("top", mask)
    assert (engine.top[~mask] == top[~mask]).all()
    beneath = codemaps.upsample_mask(mask)
    assert (engine.bottom[~beneath] == bottom[~beneath]).all()
    assert engine.version == 2 and len(engine.undo_stack) == 2


def test_bottom_inpaint_keeps_the_top_map(engine):
    top, bottom = engine.top.copy(), engine.bottom.copy()
    mask = engine.cells_mask("bottom", [(0, 0), (7, 63)])
    engine.inpaint("bottom", mask)
    assert (engine.top == top).all() and (engine.bottom[~mask] == bottom[~mask]).all()


def test_erase_writes_the_codes_of_silence_and_randomize_stays_in_range(engine):
    mask = engine.range_mask("top", 0, 2, 0, 32)
    engine.erase("top", mask)
    assert (engine.top[:, :2] == engine.silence_top[:, :2]).all()
    assert (engine.bottom[:, :4] == engine.silence_bottom[:, :4]).all()
    before = engine.bottom.copy()
    mask = engine.range_mask("bottom", 4, 8, 0, 64)
    engine.randomize("bottom", mask)
    assert (engine.bottom[:, :4] == before[:, :4]).all()
    assert engine.bottom.min() >= 0 and engine.bottom.max() < engine.manifest.n_codes


def test_set_cells_undo_and_redo(engine):
    original = engine.top.copy()
    engine.set_cells("top", [(3, 31, 5)])
    assert engine.top[31, 3] == 5
    engine.undo()
    assert (engine.top == original).all()
    engine.redo()
    assert engine.top[31, 3] == 5
    with pytest.raises(EngineError, match="nothing to redo"):
        engine.redo()
    with pytest.raises(EngineError, match="code 64 is outside 0..63"):
        engine.set_cells("top", [(0, 0, 64)])
    with pytest.raises(EngineError, match=r"top cell \(t=4, f=0\) is outside the 32 x 4 grid"):
        engine.set_cells("top", [(4, 0, 1)])
    assert engine.top[31, 3] == 5  # a refused edit changed nothing


def test_the_history_is_bounded(bundle):
    e = Engine(bundle, history_limit=3)
    for code in range(6):
        e.set_cells("top", [(0, 0, code)])
    assert len(e.undo_stack) == 3


def test_a_seed_replays_the_same_sounds(engine):
    engine.update_settings(seed=7)
    engine.generate()
    first = engine.top.copy()
    engine.update_settings(seed=7)
    engine.generate()
    assert (engine.top == first).all()


def test_the_cached_key_value_prefix_gives_the_tokens_a_fresh_run_gives(engine):
    while engine.warm():
        pass
    mask = engine.cells_mask("bottom", [(5, 40)])
    state = (engine.top.copy(), engine.bottom.copy())
    cond = engine.settings.conditioning()
    cached = engine.inpainter.inpaint(*state, "bottom", mask, cond, np.random.default_rng(3))
    engine.inpainter.bottom._prefix = None  # forget the cache: everything recomputed
    fresh = engine.inpainter.inpaint(*state, "bottom", mask, cond, np.random.default_rng(3))
    assert (cached[1] == fresh[1]).all()


def test_a_note_is_deterministic_and_cached(engine):
    note = engine.make_note(62)
    assert engine.cached_note(62) is note
    engine.notes.clear()
    again = engine.make_note(62)
    assert (again.top == note.top).all() and (again.bottom == note.bottom).all()
    engine.play_note(62, again)
    assert engine.settings.pitch == 62 and (engine.top == note.top).all()


def test_a_note_stopped_between_its_stages_goes_on_from_there_and_sounds_the_same(engine):
    """The note cache's fill stops between stages when a request arrives; the next call does not sample again."""
    whole = engine.make_note(63)
    engine.notes.clear()

    class Stop(Exception):
        pass

    class Counter:
        def __init__(self, stop_at: int = 0) -> None:
            self.calls, self.tokens, self.stop_at = 0, 0, stop_at

        def between(self) -> None:
            self.calls += 1
            if self.calls == self.stop_at:
                raise Stop

        def progress(self, fraction: float) -> None:
            self.tokens += fraction < 1.0

    for stop_at in (1, 2, 4):  # before the decoder, before the projection, inside the inversion
        with pytest.raises(Stop):
            engine.make_note(63, between=Counter(stop_at).between)
        resumed = Counter()
        note = engine.make_note(63, resumed.progress)
        assert resumed.tokens == 0  # no token sampled again: it went on from the sampled codes
        assert (note.top == whole.top).all() and np.array_equal(note.audio, whole.audio)
        engine.notes.clear()


def test_a_session_round_trips_and_a_corrupt_one_is_refused(engine, bundle, tmp_path):
    engine.update_settings(pitch=50, temperature=0.7, family=2, guidance=3.5, harmonic=0.5)
    engine.set_cells("bottom", [(1, 1, 3)])
    path = tmp_path / "s.npz"
    engine.save(path)
    restored = Engine(bundle)
    restored.load(path)
    assert (restored.top == engine.top).all() and (restored.bottom == engine.bottom).all()
    assert restored.settings == engine.settings and restored.version == engine.version
    assert len(restored.undo_stack) == len(engine.undo_stack)
    restored.undo()
    assert (restored.bottom == engine.undo_stack[-1][1]).all()
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EngineError, match="not a readable session"):
        Engine(bundle).load(path)


def test_a_save_fsyncs_the_file_before_the_rename_and_the_folder_after(engine, tmp_path, monkeypatch):
    import os
    import stat

    real_fsync, real_replace, calls = os.fsync, os.replace, []

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst) -> None:
        calls.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", rename)
    path = tmp_path / "s.npz"
    engine.save(path)
    assert [kind for kind, _ in calls] == ["file", "rename", "folder"]
    assert calls[0][1].startswith(str(tmp_path / ".s.npz.")) and calls[0][1].endswith(".tmp")  # the temporary file
    assert calls[2][1] == str(tmp_path)
    calls.clear()
    engine.save(path, durable=False)  # what the benchmark compares against
    assert [kind for kind, _ in calls] == ["rename"]


def test_datagrams_from_outside_the_allow_list_are_dropped_unanswered(bundle, tmp_path):
    from server.osc import InstrumentServer
    from server.output import OutputFolder
    from server.wire import encode

    server = InstrumentServer(Engine(bundle), OutputFolder(tmp_path), port=0, allow=("10.0.0.0/8",))
    try:
        server.handle_datagram(encode("/pitch", 50), ("192.168.1.7", 5000))
        assert not server.clients and server.engine.settings.pitch == 60
        server.handle_datagram(encode("/pitch", 50), ("10.1.2.3", 5000))
        assert ("10.1.2.3", 5000) in server.clients and server.engine.settings.pitch == 50
    finally:
        server.udp.server_close()


def _session_with(path, edit) -> None:
    """Rewrite a saved session's meta with `edit(meta)`."""
    import json

    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps(edit(meta)))
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda m: {k: v for k, v in m.items() if k != "version"}, "session version is None, not a count"),
        (lambda m: {k: v for k, v in m.items() if k != "draws"}, "session draws is None, not a count"),
        (lambda m: [m], "session meta is a list"),
        (lambda m: {**m, "version": "x"}, "session version is 'x', not a count"),
        (lambda m: {**m, "settings": {**m["settings"], "pitch": "60"}}, "setting pitch is '60', not an integer"),
        (lambda m: {**m, "settings": {**m["settings"], "family": 4.0}}, "setting family is 4.0, not an integer"),
        (lambda m: {**m, "settings": {**m["settings"], "fill": 1}}, "setting fill is 1, not a boolean"),
        (lambda m: {**m, "settings": {**m["settings"], "temperature": None}}, "temperature is None"),
        (lambda m: {**m, "settings": {**m["settings"], "note_mode": "loud"}}, "unknown note mode"),
        (lambda m: {**m, "settings": {**m["settings"], "family": 99}}, "instrument 99 is outside"),
        (lambda m: {**m, "settings": []}, "settings missing or not an object"),
        (lambda m: {**m, "session_version": 7}, "session version 7 is not supported"),
    ],
)
def test_every_damaged_session_is_refused_with_one_line(engine, bundle, tmp_path, edit, why):
    path = tmp_path / "s.npz"
    engine.save(path)
    _session_with(path, edit)
    with pytest.raises(EngineError, match=why.replace("(", r"\(")):
        Engine(bundle).load(path)


def test_damaged_sessions_made_at_random_load_or_are_refused(engine, bundle, tmp_path):
    """Random bytes flipped in a saved session: every one loads, or raises EngineError (never anything else)."""
    path = tmp_path / "s.npz"
    engine.save(path)
    good, rng = path.read_bytes(), np.random.default_rng(3)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(60):
        data = bytearray(good)
        for i in rng.integers(0, len(data), int(rng.integers(1, 8))):
            data[i] = int(rng.integers(256))
        path.write_bytes(bytes(data))
        try:
            Engine(bundle).load(path)
            outcomes["loaded"] += 1
        except EngineError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 60


def test_a_planted_folder_at_any_temporary_name_cannot_stop_saves(engine, tmp_path):
    import os

    path = tmp_path / "s.npz"
    for name in (f".s.npz.{os.getpid()}.tmp", ".s.npz.tmp", "s.npz.tmp"):
        (tmp_path / name).mkdir()
    engine.set_cells("bottom", [(2, 2, 9)])
    engine.save(path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["s.npz"]  # no temporary file left


def test_a_redrawn_key_gets_a_new_note_and_every_other_key_keeps_its_own(engine, bundle, tmp_path):
    before = {p: engine.note_key(p) for p in (60, 62)}
    first = engine.make_note(60)
    engine.redraw(60)
    assert engine.note_key(62) == before[62] and engine.note_key(60) != before[60]
    again = engine.make_note(60)
    assert not np.array_equal(first.audio, again.audio)
    assert engine.cached_note(60) is again  # the redrawn note is the key's note from now on
    path = tmp_path / "s.npz"
    engine.save(path)
    restored = Engine(bundle)
    restored.load(path)
    assert restored.key_draws == {60: 1} and restored.note_key(60) == engine.note_key(60)


def test_a_channels_instrument_draws_its_notes_and_survives_a_restart(engine, bundle, tmp_path):
    flute = engine.family_index("flute")
    engine.set_channel_family(2, flute)
    assert engine.channel_settings(2).family == flute and engine.channel_settings(1) == engine.settings
    assert engine.note_key(60, engine.channel_settings(2)) != engine.note_key(60)
    note = engine.make_note(60, settings=engine.channel_settings(2))
    engine.update_settings(temperature=engine.settings.temperature + 0.1)  # a knob: every key is stale now
    assert engine.stale_note(60, flute) is note and engine.stale_note(60, engine.settings.family) is None
    path = tmp_path / "s.npz"
    engine.save(path)
    restored = Engine(bundle)
    restored.load(path)
    assert restored.channel_families == {2: flute}
    engine.set_channel_family(2, None)
    assert engine.channel_settings(2) == engine.settings


def test_every_setting_that_changes_a_notes_sound_is_in_the_note_cache_key(engine):
    """A setting the conditioning reads but the key leaves out would make the cache serve stale notes; one the
    key holds but the sound ignores (level, gain) would empty the cache for nothing."""
    import dataclasses

    from server.protocol import SOUND_FIELDS

    base = engine.settings
    for f in dataclasses.fields(base):
        value = getattr(base, f.name)
        changes = {str: lambda _: "resample", bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 0.25}
        changed = changes[type(value)](value)
        other = dataclasses.replace(base, **{f.name: changed})
        key_changed = engine.note_key(60, other) != engine.note_key(60, base)
        if other.conditioning(60) != base.conditioning(60):
            assert key_changed, f"{f.name} changes the sound but not the note cache key"
        assert key_changed == (f.name in SOUND_FIELDS), f.name
