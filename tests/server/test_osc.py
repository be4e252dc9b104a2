"""The OSC server over real UDP sockets, on a tiny bundle: every address's happy path and its /error path,
the audio it writes, and what it does with bursts, bad datagrams and cancellation."""

import struct

import numpy as np
import pytest
import soundfile as sf
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from server import protocol
from server.playback import PlaybackError, Player

# address → (messages sent first, the message, the reply that answers it)
HAPPY = {
    "/ping": ([], [], "/pong"),
    "/help": ([], [], "/help"),
    "/reply_port": ([], None, "/pong"),  # arguments filled in with the client's own port
    "/model/info": ([], [], "/model/info"),
    "/state": ([], [], "/codemap"),
    "/pitch": ([], [50], "/pitch"),
    "/instrument": ([], ["flute"], "/instrument"),
    "/temperature": ([], [0.9], "/temperature"),
    "/top_p": ([], [0.7], "/top_p"),
    "/guidance": ([], [3.0], "/guidance"),
    "/harmonic": ([], [0.5], "/harmonic"),
    "/timbre": ([], [1.0], "/timbre"),
    "/seed": ([], [3], "/seed"),
    "/level": ([], [-20.0], "/level"),
    "/gain": ([], [-3.0], "/gain"),
    "/velocity/curve": ([], [1.5], "/velocity/curve"),
    "/release": ([], [0.3], "/release"),
    "/generate": ([], [11], "/render/done"),
    "/analyze": ([], None, "/render/done"),  # a WAV written into the read folder
    "/inpaint": ([], ["top", 1, 3, 4, 8, 12], "/render/done"),
    "/inpaint/cells": ([], ["bottom", 0, 0, 7, 63, 13], "/render/done"),
    "/resample/bottom": ([], [14], "/render/done"),
    "/erase": ([], ["top", 0, 4, 0, 8, 15], "/render/done"),
    "/randomize": ([], ["bottom", 2, 4, 10, 20, 16], "/render/done"),
    "/codemap/set": ([], ["top", 0, 0, 5, 3, 31, 6, 17], "/render/done"),
    "/codemap/get": ([], ["bottom"], "/codemap"),
    "/undo": ([("/codemap/set", ["top", 1, 1, 9])], [18], "/render/done"),
    "/redo": ([("/codemap/set", ["top", 1, 1, 9]), ("/undo", [])], [19], "/render/done"),
    "/render": ([], [20], "/render/done"),
    "/cancel": ([("/generate", [21])], [21], "/render/cancelled"),
    "/note": ([], [60, 100, 22], "/render/done"),
    "/note/redraw": ([], [62, 24], "/render/done"),
    "/note/mode": ([], ["resample"], "/note/mode"),
    "/note/prefill": ([], [60, 61], None),
    "/note/fill": ([], [1], "/note/fill"),
    "/program": ([], [40], "/instrument"),
    "/channel/note": ([], [3, 60, 100, 24], "/render/done"),
    "/channel/instrument": ([], [3, "none"], "/channel/instrument"),
    "/channel/program": ([], [3, 40], "/channel/instrument"),
    "/bend": ([], [0.0], None),
    "/cc": ([], [1, 64], "/temperature"),
    "/cc/map": ([("/cc/map", [20, "top_p"])], None, "/top_p"),  # checked by a mapped /cc that follows
    "/render/mode": ([], ["both"], None),
    "/render/rate": ([], [16000], "/render/rate"),
    "/render/resend": ([("/render/mode", ["chunks"])], [30, 1024], "/render/chunk"),  # after render 30 (below)
    "/timing": ([], [0], None),
    "/image": ([], ["top", 23], "/image/done"),
    "/play": ([("/render", [])], [], None),
    "/stop": ([], [], None),
    "/export/instrument": ([], None, "/export/done"),  # a folder in the read folder, two keys
}

# address → (arguments, text the /error message must contain)
BAD = {
    "/ping": ([1], "expected no arguments"),
    "/help": (["x"], "expected no arguments"),
    "/reply_port": ([0], "port 0 is outside 1..65535"),
    "/model/info": ([1], "expected no arguments"),
    "/state": ([1], "expected no arguments"),
    "/pitch": ([100], "pitch 100 is outside the model's range 24..84"),
    "/instrument": (["banjo"], "unknown instrument 'banjo'"),
    "/temperature": ([-1], "temperature -1 is outside 0..10"),
    "/top_p": (["high"], "top_p must be a number"),
    "/guidance": ([12.0], "guidance 12.0 is outside 0..10"),
    "/harmonic": ([-1.0], "harmonic -1.0 is outside 0..10"),
    "/timbre": ([11.0], "timbre 11.0 is outside 0..10"),
    "/seed": ([-5], "seed -5 is outside"),
    "/level": ([3.0], "dbfs 3.0 is outside -60..0"),
    "/gain": ([30], "db 30 is outside -60..24"),
    "/velocity/curve": ([-1], "curve -1 is outside 0..4"),
    "/release": ([5.0], "seconds 5.0 is outside 0..4"),
    "/generate": (["now"], "request id must be a number"),
    "/analyze": (["/etc/passwd"], "outside the folders the server may read"),
    "/inpaint": (["top", 0, 5, 0, 1], "top range t[0,5) f[0,1) is outside the 32 x 4 grid"),
    "/inpaint/cells": (["middle", 0, 0], "unknown layer 'middle'"),
    "/resample/bottom": ([1, 2], "expected [i:id], got 2 arguments"),
    "/erase": (["bottom", 0, 1, 70, 71], "bottom range t[0,1) f[70,71) is outside the 64 x 8 grid"),
    "/randomize": (["top", 2, 2, 0, 1], "is outside the 32 x 4 grid or empty"),
    "/codemap/set": (["top", 0, 0, 99999], "code 99999 is outside 0.."),
    "/codemap/get": (["left"], "unknown layer 'left'"),
    "/undo": ([1.5], "request id must be a whole number"),
    "/redo": ([], "nothing to redo"),
    "/render": (["x", "y"], "expected [i:id], got 2 arguments"),
    "/cancel": ([987654], "no waiting or running request 987654"),
    "/note": ([10, 100], "pitch 10 is outside the model's range 24..84"),
    "/note/redraw": ([10], "pitch 10 is outside the model's range 24..84"),
    "/note/mode": (["loop"], "unknown note mode 'loop'"),
    "/note/prefill": ([70, 60], "low 70 is above high 60"),
    "/note/fill": ([2], "on 2 is outside 0..1"),
    "/program": ([47], "program 47 (0-based) has no instrument family"),
    "/channel/note": ([17, 60, 100], "channel 17 is outside 1..16"),
    "/channel/instrument": ([3, "kazoo"], "unknown instrument 'kazoo'"),
    "/channel/program": ([3, 47], "program 47 (0-based) has no instrument family"),
    "/bend": ([30.0], "semitones 30.0 is outside -24..24"),
    "/cc": ([1, 200], "value 200 is outside 0..127"),
    "/cc/map": ([1, "volume"], "unknown parameter 'volume'"),
    "/render/mode": (["stream"], "unknown render mode 'stream'"),
    "/render/rate": ([4000], "hz 4000 is outside 8000..192000"),
    "/render/resend": ([999_999, 0], "render 999999 is not among this client's last 2 streamed renders"),
    "/timing": ([2], "on 2 is outside 0..1"),
    "/image": (["side"], "unknown layer 'side'"),
    "/play": ([2], "loop 2 is outside 0..1"),
    "/stop": ([1], "expected no arguments"),
    "/export/instrument": (["/etc/inpaint-osc-instrument"], "outside the folders the server may write"),
}


def test_the_tables_cover_every_inbound_address():
    paths = {a.path for a in protocol.INBOUND}
    assert set(HAPPY) == paths and set(BAD) == paths


@pytest.fixture
def client(live):
    c = live.client()
    yield c
    c.drain(0.02)


def _play_is_possible() -> bool:
    try:
        Player()._device()
        return True
    except PlaybackError:
        return False


@pytest.mark.parametrize("address", sorted(HAPPY))
def test_happy_path(live, client, address):
    before, args, reply = HAPPY[address]
    if address == "/reply_port":
        args = [client.reply_port]
    if address == "/analyze":
        path = live.read_dir / "tone.wav"
        sf.write(str(path), 0.3 * np.sin(2 * np.pi * 220 * np.arange(64_000) / 16_000), 16_000)
        args = [str(path)]
    if address == "/export/instrument":
        args = [str(live.read_dir / "happy-instrument"), 60, 61]
    if address == "/cc/map":
        address, args = "/cc", [20, 127]  # the controller mapped just before now moves top-p
    if reply == "/render/done":  # at the default level: other tests of this module move it
        client.send("/level", -18.0)
        client.send("/gain", 0.0)
        echo(client, "/gain", [0.0])
    for a, v in before:
        client.send(a, *v)
    if address == "/render/resend":  # a streamed render of this client's to ask again
        client.send("/render", 30)
        client.wait_for("/render/done", timeout=30)
        client.send("/render/mode", "file")
    client.send(address, *args)
    if address == "/play" and not _play_is_possible():
        assert client.wait_for("/error", timeout=30)[1][1].startswith("no audio output")
        return
    if reply is None:  # acknowledged by silence: no /error, and the server still answers
        client.send("/ping")
        got = client.wait_for("/pong", "/error", timeout=30)
        assert got[0] == "/pong", got
        return
    has_id = reply in ("/render/done", "/render/cancelled") and args and isinstance(args[-1], int)
    wanted = args[-1] if has_id else None
    got = client.wait_for(reply, "/error", timeout=60)
    while wanted is not None and got[0] == reply and got[1][0] != wanted:  # answers to the messages sent first
        got = client.wait_for(reply, "/error", timeout=60)
    assert got[0] == reply, got
    if address == "/render/resend":
        assert got[1][:3] == [30, 1024, 1024], got[1][:3]
    if address == "/channel/program":
        client.send("/channel/instrument", 3, "none")  # later tests of this module play single-timbral
    if reply == "/render/done":
        _, wav, frames, rate, seconds, level_db = got[1]
        info = sf.info(wav)
        assert (info.frames, info.samplerate, info.subtype) == (frames, rate, "FLOAT") == (64_000, 16_000, "FLOAT")
        assert seconds > 0 and wav.startswith(str(live.out))
        audio = sf.read(wav, dtype="float32")[0]
        held = 20 * np.log10(np.sqrt(np.mean(audio[:48_000].astype(np.float64) ** 2)) + 1e-12)
        assert abs(held - level_db) < 0.01  # the level it reports is the file's
        at = {"/note": 1, "/channel/note": 2}.get(address)  # where the velocity is; a redraw plays at 100
        velocity = args[at] if at is not None else 100 if address == "/note/redraw" else 127
        expected = -18 + 40 * np.log10(velocity / 127)  # velocity: the GM curve
        assert abs(level_db - expected) < 0.5 or level_db < -90, (level_db, expected)  # normalised, or silence


@pytest.mark.parametrize("address", sorted(BAD))
def test_bad_input_answers_error_and_changes_nothing(live, client, address):
    args, text = BAD[address]
    client.send("/codemap/get", "top")
    _, before = client.wait_for("/codemap")
    if address == "/redo":
        client.send("/codemap/set", "top", 2, 2, 1)  # an edit clears the redo history
        client.wait_for("/render/done")
        client.send("/codemap/get", "top")
        _, before = client.wait_for("/codemap")
    client.send(address, *args)
    reply = client.wait_for("/error", timeout=30)
    assert reply[1][0] == address and text in reply[1][1], reply
    client.send("/codemap/get", "top")
    _, after = client.wait_for("/codemap")
    assert after == before  # same version, same codes


def test_edits_are_pushed_to_every_client_and_match_codemap_get(live):
    a, b = live.client(), live.client()
    a.send("/codemap/set", "bottom", 3, 40, 7, 4, 41, 8)
    _, pushed = b.wait_for("/codemap", timeout=30)
    while pushed[0] != "bottom":
        _, pushed = b.wait_for("/codemap", timeout=30)
    layer, version, rows, cols, *codes = pushed
    grid = np.array(codes).reshape(rows, cols)
    assert (rows, cols) == (64, 8) and grid[40, 3] == 7 and grid[41, 4] == 8
    b.send("/codemap/get", "bottom")
    assert b.wait_for("/codemap")[1] == pushed


def test_inpainting_a_top_cell_keeps_every_other_top_cell(live, client):
    client.send("/codemap/get", "top")
    before = np.array(client.wait_for("/codemap")[1][4:]).reshape(32, 4)
    client.send("/inpaint", "top", 2, 3, 10, 11, 71)
    assert client.wait_for("/render/done", timeout=30)[1][0] == 71
    client.send("/codemap/get", "top")
    after = np.array(client.wait_for("/codemap")[1][4:]).reshape(32, 4)
    changed = before != after
    changed[10, 2] = False
    assert not changed.any()


def echo(client, address, values):
    """Wait for the settings echo that carries `values` (earlier echoes may still be arriving)."""
    while (got := client.wait_for(address, timeout=10)[1]) != values:
        pass
    return got


def test_malformed_oversize_and_bundled_datagrams(live, client):
    client.send_raw(b"\x00garbage!")
    reply = client.wait_for("/error")
    assert reply[1][0] == "" and "malformed OSC datagram (9 bytes)" in reply[1][1]
    client.send_raw(b"/pitch\x00\x00,i\x00\x00\x00\x01")  # truncated: the int is missing two bytes
    assert "malformed" in client.wait_for("/error")[1][1]
    # 1 200 cells in one message: about 18 kB, twice python-osc's default receive limit.
    triples = [v for i in range(1200) for v in (i % 8, i % 64, i % 16)]
    client.send_typed("/codemap/set", ("s", "bottom"), *[("i", v) for v in [*triples, 81]])
    assert client.wait_for("/render/done", "/error", timeout=30)[0] == "/render/done"
    bundle = OscBundleBuilder(IMMEDIATELY)
    for address, value in (("/pitch", 52), ("/seed", 9)):
        message = OscMessageBuilder(address)
        message.add_arg(value, "i")
        bundle.add_content(message.build())
    client.send_raw(bundle.build().dgram)
    echo(client, "/pitch", [52])
    echo(client, "/seed", [9])
    client.send_typed("/temperature", ("d", 0.5))  # doubles and 64-bit ints from Python and SuperCollider
    echo(client, "/temperature", [0.5])
    client.send_typed("/seed", ("h", 12))
    echo(client, "/seed", [12])
    client.send_typed("/pitch", ("T", True))
    assert "pitch must be a number" in client.wait_for("/error")[1][1]
    client.send("/ping")
    assert client.wait_for("/pong")


def test_a_new_generate_supersedes_the_running_one_and_cancel_stops_work(live, client):
    client.send("/generate", 301)
    client.send("/generate", 302)
    replies = {}
    while len(replies) < 2:
        address, args = client.wait_for("/render/done", "/render/cancelled", timeout=60)
        replies[args[0]] = address
    assert replies == {301: "/render/cancelled", 302: "/render/done"}
    client.send("/generate", 303)
    client.send("/cancel")
    assert client.wait_for("/render/cancelled", "/render/done", timeout=60)[1][0] == 303


def test_one_clients_cancel_never_cancels_another_clients_request(live):
    """Two clients over real UDP: b's twenty edits are waiting or running when a sends /cancel with b's id,
    with an id both use, and with none; every one of b's requests still ends in /render/done."""
    a, b = live.client(), live.client()
    ids = list(range(1, 21))
    for i in ids:  # alternate layers: nothing merges, twenty sampling jobs wait
        layer, t, f = ("top", i % 4, i % 32) if i % 2 else ("bottom", i % 8, i % 64)
        b.send("/inpaint", layer, t, t + 1, f, f + 1, i)
    a.send("/cancel", 1)  # b's id, not a's
    a.send("/inpaint", "bottom", 0, 1, 0, 1, 3)  # a's own request 3, while b's 3 waits too
    a.send("/cancel", 3)
    a.send("/cancel")
    assert a.wait_for("/error", timeout=10)[1] == ["/cancel", "no waiting or running request 1 from this client"]
    assert a.wait_for("/render/cancelled", "/render/done", timeout=60)[1][:2] == [3, "cancelled by /cancel"]
    endings = {}
    while len(endings) < len(ids):
        address, args = b.wait_for("/render/done", "/render/cancelled", "/error", timeout=60)
        endings[args[0]] = address
    assert endings == {i: "/render/done" for i in ids}
    a.send("/ping")
    assert not [r for r in a.drain(0.2) if r[0] in ("/render/done", "/render/cancelled", "/error")]


def test_a_burst_of_edits_coalesces_and_every_request_is_answered(live, client):
    ids = list(range(401, 421))
    for i in ids:
        client.send("/inpaint", "bottom", i % 8, i % 8 + 1, i % 64, i % 64 + 1, i)
    done = {}
    while len(done) < len(ids):
        _, args = client.wait_for("/render/done", timeout=60)
        done[args[0]] = args[1]
    assert set(done) == set(ids)
    assert len(set(done.values())) < len(ids)  # fewer renders than requests: the burst was merged


def render_in_chunks(client, request_id: int) -> tuple[np.ndarray, int, list]:
    """/render in chunks mode: (the samples the chunks carried, /render/end's frame count, /render/done's args)."""
    client.send("/render", request_id)
    pieces, total = {}, None
    while True:
        address, args = client.wait_for("/render/chunk", "/render/end", "/render/done", timeout=30)
        if address == "/render/chunk":
            assert args[2] <= protocol.CHUNK_FRAMES and len(args) == 3 + args[2]
            pieces[args[1]] = np.array(args[3:], np.float32)
        elif address == "/render/end":
            total = args[1]
        else:
            return np.concatenate([pieces[k] for k in sorted(pieces)]), total, args


def test_chunks_mode_sends_the_samples_of_the_wav(live, client):
    client.send("/render/mode", "chunks")
    audio, total, (_, wav, *_) = render_in_chunks(client, 501)
    assert total == audio.size == 64_000
    np.testing.assert_array_equal(audio, sf.read(wav, dtype="float32")[0])
    client.send("/render/mode", "file")


def test_resend_streams_a_clients_own_chunks_again_and_nobody_elses(live, client):
    client.send("/render/mode", "chunks")
    audio, _, _ = render_in_chunks(client, 502)
    client.send("/render/mode", "file")
    client.send("/render/resend", 502, 62 * 1024, 0, 0)  # each chunk once, in order, then the ending again
    got = [client.wait_for("/render/chunk", "/render/end", timeout=30) for _ in range(3)]
    assert [(a, args[:3]) for a, args in got] == [
        ("/render/chunk", [502, 0, 1024]),
        ("/render/chunk", [502, 62 * 1024, 512]),
        ("/render/end", [502, 64_000]),
    ]
    np.testing.assert_array_equal(np.array(got[1][1][3:], np.float32), audio[62 * 1024 :])
    client.send("/render/resend", 502, 1000)
    assert "offset 1000 is not a chunk's (multiples of 1024 below 64000)" in client.wait_for("/error")[1][1]
    other = live.client()
    try:
        other.send("/render/resend", 502, 0)  # the same id, another sender: not its to read
        assert other.wait_for("/error")[1] == [
            "/render/resend",
            "render 502 is not among this client's last 2 streamed renders",
        ]
        assert not [r for r in other.drain(0.2) if r[0] == "/render/chunk"]
    finally:
        other.close()


def test_image_is_a_png_with_the_grid(live, client):
    client.send("/image", "bottom", 601)
    _, (request_id, path, width, height) = client.wait_for("/image/done", timeout=30)
    data = open(path, "rb").read()
    assert request_id == 601 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (width, height) == (512, 512)


def _cache_holds(client, ready: int, timeout: float = 60.0) -> None:
    """Wait until `ready` notes of the current settings are cached (asked with /state, whose /note/cache says)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        client.drain(0.01)
        client.send("/state")
        held = client.wait_for("/note/cache", timeout=10)[1]
        if held[0] == ready:
            return
        assert time.monotonic() < deadline, f"the cache holds {held}, not {ready} notes"
        time.sleep(0.05)


def test_a_cached_note_answers_with_the_same_sound_at_once(live, client):
    client.send("/note/fill", 0)
    client.send("/note/mode", "generate")
    client.send("/temperature", 1.0)
    client.send("/seed", 987_654)  # settings no other test uses: nothing cached for them yet
    echo(client, "/seed", [987_654])
    _cache_holds(client, 0)
    client.send("/note/prefill", 64, 64)  # this pitch under these settings
    _cache_holds(client, 1)
    client.send("/note", 64, 90)
    first = client.wait_for("/render/done", timeout=60)[1]
    client.send("/note", 64, 90)
    again = client.wait_for("/render/done", timeout=60)[1]
    np.testing.assert_array_equal(sf.read(first[1])[0], sf.read(again[1])[0])
    client.send("/note", 64, 0)  # note-off: nothing to do, nothing to answer
    client.send("/ping")
    assert client.wait_for("/pong", "/render/done", "/error")[0] == "/pong"
    client.send("/note", 64, 0, 99)  # ... unless it carries an id, which gets its one ending
    assert client.wait_for("/render/cancelled", "/render/done", "/error")[1] == [99, "note-off: nothing to render"]

    # A knob turned: the key plays on with the note cached before (no render, nothing cancelled) until the
    # fill has rendered it for the new settings; then the new note plays.
    client.send("/temperature", 0.5)
    echo(client, "/temperature", [0.5])
    client.send("/note", 64, 90, 7)
    stale = client.wait_for("/render/done", "/render/cancelled", timeout=60)
    assert stale[0] == "/render/done" and stale[1][0] == 7
    np.testing.assert_array_equal(sf.read(stale[1][1])[0], sf.read(first[1])[0])
    _cache_holds(client, 0)
    client.send("/note/prefill", 64, 64)
    _cache_holds(client, 1)
    client.send("/note", 64, 90, 8)
    fresh = client.wait_for("/render/done", timeout=60)[1]
    assert not np.array_equal(sf.read(fresh[1])[0], sf.read(first[1])[0])
    client.send("/temperature", 1.0)
    client.send("/note/fill", 1)


def test_reply_port_redirects_this_clients_replies(live):
    from server.client import OscClient

    a, listener = live.client(), OscClient(port=live.port, announce=False)
    a.send("/reply_port", listener.reply_port)
    assert listener.wait_for("/pong")[1][2] == listener.reply_port
    a.send("/ping")
    assert listener.wait_for("/pong")
    a.send("/reply_port", a.reply_port)
    assert a.wait_for("/pong")
    listener.close()


def test_timing_follows_each_render_with_its_stages(client):
    client.send("/timing", 1)
    client.send("/inpaint", "top", 0, 1, 0, 1, 77)
    done = client.wait_for("/render/done", timeout=60)[1]
    request_id, *ms = client.wait_for("/render/timing", timeout=10)[1]
    stages = dict(zip(protocol.TIMING_STAGES, ms, strict=True))
    assert request_id == done[0] == 77 and min(ms) >= 0
    assert stages["edit"] > 0 and stages["decoder"] > 0 and stages["inversion"] > 0 and stages["wav"] > 0
    parts = sum(v for k, v in stages.items() if k != "server")
    assert parts <= stages["server"] + 1.0 and abs(stages["server"] - 1000 * done[4]) < 1.0  # /render/done's seconds
    client.send("/timing", 0)
    client.send("/render", 78)
    client.wait_for("/render/done", timeout=60)
    assert not [r for r in client.drain(0.1) if r[0] == "/render/timing"]


def test_render_rate_48k_gives_wav_and_chunks_at_the_hosts_rate(live, client):
    from server.audio import resample

    client.send("/render/rate", 48000)
    assert client.wait_for("/render/rate")[1] == [48000]
    client.send("/render/mode", "both")
    chunked, total, (_, wav, frames, rate, _, _) = render_in_chunks(client, 701)
    audio, file_rate = sf.read(wav, dtype="float32")
    assert total == frames == audio.size == chunked.size == 192_000 and rate == file_rate == 48_000
    np.testing.assert_array_equal(chunked, audio)
    client.send("/render/mode", "file")
    client.send("/render/rate", 16000)
    client.send("/render", 702)
    low = sf.read(client.wait_for("/render/done", timeout=30)[1][1], dtype="float32")[0]
    assert low.size == 64_000
    np.testing.assert_allclose(resample(low, 16_000, 48_000), audio, atol=1e-6)  # the same sound, resampled
    spectrum = np.abs(np.fft.rfft(audio.astype(np.float64)))
    freqs = np.fft.rfftfreq(audio.size, 1 / 48_000)
    if spectrum.max() > 0:
        assert spectrum[freqs > 8_300].max() < 1e-3 * spectrum.max()  # nothing above the model's Nyquist


def test_names_are_read_in_any_case(live, client):
    client.send("/instrument", "String")
    assert echo(client, "/instrument", [8, "string"])
    client.send("/note/mode", "Generate")
    assert echo(client, "/note/mode", ["generate"])
    client.send("/inpaint", "TOP", 0, 1, 0, 1, 711)
    assert client.wait_for("/render/done", "/error", timeout=30)[1][0] == 711


def test_a_bundle_tagged_ahead_runs_at_its_time_tag(client):
    """Live coders schedule ahead (TidalCycles, SuperCollider): the messages run at the tag, not on arrival."""
    import time

    from server.tools.ntp import tagged_bundle as _tagged
    from server.wire import encode

    for ahead in (0.3, 0.6):
        sent = time.time()
        client.send_raw(_tagged(sent + ahead, encode("/ping")))
        client.wait_for("/pong", timeout=5)
        late = time.time() - (sent + ahead)
        assert -0.002 <= late < 0.05, (ahead, late)
    client.send_raw(_tagged(time.time() + 60, encode("/ping")))
    assert "time tag 60.0 s ahead" in client.wait_for("/error", "/pong", timeout=5)[1][1]
    client.send_raw(_tagged(time.time() - 5, encode("/ping")))  # a tag in the past: at once
    client.wait_for("/pong", timeout=1)


def test_a_note_tagged_ahead_is_rendered_before_its_tag_and_answered_at_it(client):
    """Issue 28: a tagged note ran at its tag and was heard a render's time later; now it is rendered ahead
    (osc.NOTE_LEAD_S) and its /render/done (what a patch plays on) waits for the tag."""
    import time

    from server.tools.ntp import tagged_bundle as _tagged
    from server.wire import encode

    client.send("/note/fill", 0)
    client.send("/seed", 424_242)  # nothing cached for it: each note is rendered
    echo(client, "/seed", [424_242])
    lates = []
    for i, pitch in enumerate((50, 53, 57)):
        tag = time.time() + 0.3
        client.send_raw(_tagged(tag, encode("/note", pitch, 100, 9100 + i)))
        while client.wait_for("/render/done", timeout=10)[1][0] != 9100 + i:
            pass
        lates.append(time.time() - tag)
    client.send("/note/fill", 1)
    assert all(-0.002 <= late < 0.015 for late in lates), lates


def test_analyze_says_when_a_file_was_cut_or_padded_to_the_note(live, client):
    """Issue 28: a 10 s file was cut at 4 s and a 1.5 s one padded, without a word."""
    for seconds, said in ((10.0, True), (1.5, True), (4.0, False)):
        path = live.read_dir / f"tone-{seconds}.wav"
        t = np.arange(int(seconds * 16_000)) / 16_000
        sf.write(str(path), 0.3 * np.sin(2 * np.pi * 330 * t), 16_000)
        client.send("/analyze", str(path), 700)
        replies = []
        while (reply := client.wait_for("/analyze/fitted", "/render/done", "/error", timeout=60))[0] not in (
            "/render/done",
            "/error",
        ):
            replies.append(reply)
        assert reply[0] == "/render/done", reply
        fitted = [r[1] for r in replies if r[1][0] == 700]
        assert fitted == ([[700, pytest.approx(seconds), pytest.approx(4.0)]] if said else []), (seconds, fitted)
