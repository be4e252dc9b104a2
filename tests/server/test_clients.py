"""Clients other than our own: liblo's `oscsend` and `oscdump` (C), mido MIDI messages, and the
`inpaint-osc send` and `bench` commands."""

import json
import select
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from server.midi import GM_FAMILIES, cc_value, to_osc
from tests.conftest import ROOT, require


@pytest.fixture(scope="module")
def liblo():
    require(shutil.which("oscsend") is not None and shutil.which("oscdump") is not None, "liblo-tools")


def oscdump(port: int) -> subprocess.Popen:
    # Unbuffered bytes: select() below must see every line that is not read yet.
    proc = subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    time.sleep(0.3)  # oscdump binds its port
    return proc


def read_until(proc: subprocess.Popen, address: str, ending: str = "", timeout: float = 30) -> list[str]:
    """oscdump lines (timetag, address, types, values...) until one on `address` that ends with `ending`."""
    lines, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([proc.stdout], [], [], left)[0]:
            break
        line = proc.stdout.readline().decode()
        if not line:  # oscdump exited
            raise RuntimeError(f"oscdump stopped: {proc.stderr.read().decode()}")
        lines.append(line)
        if line.split()[1:2] == [address] and line.rstrip().endswith(ending):
            return lines
    raise TimeoutError(f"oscdump saw no {address}: {lines[-20:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)  # its port is free again only once it has exited


def oscsend(port: int, address: str, types: str = "", *values) -> None:
    subprocess.run(["oscsend", "localhost", str(port), address, types, *map(str, values)], check=True, timeout=10)


def test_liblo_clients_drive_the_server_and_read_its_replies(live, liblo):
    dump = oscdump(live.reply_port)  # oscsend sends from a throwaway port: replies go to the default reply port
    try:
        oscsend(live.port, "/ping")
        assert read_until(dump, "/pong")[-1].split()[2] == "sii"
        oscsend(live.port, "/pitch", "f", 55.0)  # Pd-style float for an int argument
        assert read_until(dump, "/pitch", " 55")[-1].split()[2:] == ["i", "55"]
        oscsend(live.port, "/temperature", "d", 0.75)  # a double, as SuperCollider and Python may send
        assert read_until(dump, "/temperature", "0.750000")[-1].split()[2:] == ["f", "0.750000"]
        oscsend(live.port, "/inpaint", "siiiii", "top", 0, 1, 0, 4, 77)
        done = read_until(dump, "/render/done")[-1].split()
        assert done[2] == "isiiff" and done[3] == "77"
        wav = done[4].strip('"')
        assert sf.info(wav).frames == int(done[5]) == 64_000
        oscsend(live.port, "/inpaint", "siiii", "top", 0, 9, 0, 4)
        error = read_until(dump, "/error")[-1]
        assert "/inpaint" in error and "outside the 32 x 4 grid" in error
    finally:
        stop(dump)


def test_nothing_the_server_sends_uses_a_type_max_or_pd_cannot_read(live, liblo):
    dump = oscdump(live.reply_port)
    try:
        for address, types, values in [("/state", "", []), ("/model/info", "", []), ("/help", "", [])]:
            oscsend(live.port, address, types, *values)
        oscsend(live.port, "/render", "i", 5)
        lines = read_until(dump, "/render/done")
    finally:
        stop(dump)
    types = {line.split()[2] for line in lines if len(line.split()) > 2 and line.split()[1].startswith("/")}
    assert types and all(set(t) <= set("ifs") for t in types), types


def test_mido_messages_become_osc_requests(live):
    mido = pytest.importorskip("mido")
    assert to_osc(mido.Message("note_on", note=62, velocity=90)) == ("/note", [62, 90])
    assert to_osc(mido.Message("note_off", note=62, velocity=40)) == ("/note", [62, 0])
    assert to_osc(mido.Message("program_change", program=40)) == ("/program", [40])
    assert to_osc(mido.Message("control_change", control=1, value=127)) == ("/cc", [1, 127])
    assert to_osc(mido.Message("pitchwheel", pitch=4096)) == ("/bend", [1.0])  # a semitone up
    assert to_osc(mido.Message("aftertouch", value=100)) is None
    c = live.client()
    for message in (mido.Message("program_change", program=73), mido.Message("note_on", note=62, velocity=90)):
        c.send(*_flatten(to_osc(message)))
    assert c.wait_for("/instrument", timeout=10)[1] == [2, "flute"]
    assert c.wait_for("/render/done", timeout=60)[1][2] == 64_000


def test_each_midi_channel_plays_its_own_instrument(live):
    """Multi-timbral MIDI (`serve --multitimbral`): a channel's program change is its own instrument; its notes
    are drawn with it (the same note as the current instrument set to it), other channels play the current one."""
    mido = pytest.importorskip("mido")
    on = mido.Message("note_on", channel=1, note=62, velocity=90)
    assert to_osc(on, multitimbral=True) == ("/channel/note", [2, 62, 90])
    assert to_osc(mido.Message("note_off", channel=1, note=62), True) == ("/channel/note", [2, 62, 0])
    assert to_osc(mido.Message("program_change", channel=9, program=73), True) == ("/channel/program", [10, 73])
    assert to_osc(mido.Message("control_change", channel=1, control=1, value=3), True) == ("/cc", [1, 3])
    c = live.client()
    c.send("/note/fill", 0)  # the notes below are drawn by the requests alone
    c.send("/instrument", "keyboard")
    c.wait_for("/instrument")
    c.send(*_flatten(to_osc(mido.Message("program_change", channel=1, program=73), True)))
    assert c.wait_for("/channel/instrument")[1] == [2, 2, "flute"]

    def played(address, *args):
        c.send(address, *args)
        return sf.read(c.wait_for("/render/done", timeout=60)[1][1])[0]

    try:
        on_2 = played("/channel/note", 2, 50, 90, 101)
        # No instrument of its own: the current one, never another channel's note of the key played stale.
        on_1 = played("/channel/note", 1, 50, 90, 102)
        c.send("/channel/note", 2, 50, 0)  # a note-off on a channel releases like /note's
        c.send("/state")
        assert c.wait_for("/channel/instrument")[1] == [2, 2, "flute"]
        c.send("/instrument", "flute")
        c.wait_for("/instrument")
        flute = played("/note", 50, 90, 103)
        assert np.array_equal(on_2, flute) and not np.array_equal(on_1, flute)
        c.send("/channel/instrument", 17, "flute")
        assert "17" in c.wait_for("/error")[1][1]
        c.send("/channel/instrument", 2, "none")
        assert c.wait_for("/channel/instrument")[1] == [2, -1, "none"]
    finally:
        c.send("/instrument", "keyboard")
        c.send("/note/fill", 1)
        c.wait_for("/note/fill")


def _flatten(converted):
    address, args = converted
    return (address, *args)


def test_general_midi_programs_and_controllers_map_to_parameters():
    assert GM_FAMILIES[0][0] == "keyboard" and GM_FAMILIES[40][0] == "string" and 47 not in GM_FAMILIES
    assert cc_value("temperature", 127, 11, (24, 84)) == 2.0 and cc_value("top_p", 0, 11, (24, 84)) == 0.0
    assert cc_value("instrument", 127, 11, (24, 84)) == 10 and cc_value("pitch", 0, 11, (24, 84)) == 24


def test_send_command_prints_the_replies(live):
    result = subprocess.run(
        [sys.executable, "-m", "server", "send", "/render", "9", "--port", str(live.port)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "/render/started 9" in result.stdout and "/render/done 9 " in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "server", "send", "/ping", "--port", "9", "--wait", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1 and "no server at 127.0.0.1:9" in result.stderr
    # A running server and a message that asks for nothing back: said so, and not an error. (The background
    # note fill is paused first: its /note/cache progress goes to every client, this one too.)
    c = live.client()
    c.send("/note/fill", 0)
    c.wait_for("/note/fill")
    time.sleep(0.3)
    result = subprocess.run(
        [sys.executable, "-m", "server", "send", "/stop", "--port", str(live.port), "--wait", "0.3"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "none expected" in result.stdout, (result.stdout, result.stderr)
    c.send("/note/fill", 1)
    # A setting that restarts the fill: the command returns --wait s after the echo, not after the fill's
    # /note/cache stream (issue 28: `send /instrument string` took 22.9 s).
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "server", "send", "/seed", "123", "--port", str(live.port), "--wait", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0 and "/seed 123" in result.stdout, (result.stdout, result.stderr)
    assert time.monotonic() - t0 < 8.0, result.stdout


def test_bench_prints_measured_round_trips(osc_bench):
    _, figures = osc_bench
    operations = ["inpaint_top_cell", "inpaint_bottom_cell", "inpaint_time_range", "inpaint_frequency_band",
                  "resample_bottom", "generate", "analyze_4s_file", "note_cached"]  # fmt: skip
    for key in ["ping", "ping_during_generate", *operations]:
        assert 0 < figures[key]["p50_ms"] <= figures[key]["p95_ms"] <= figures[key]["p99_ms"], key
    for key in operations:  # the server's own stages, and the rest of the round trip
        stages = figures[key]["stages_ms"]
        assert set(stages) == {"queue", "edit", "save", "decoder", "inversion", "wav", "server", "osc"}, key
        assert stages["server"] <= figures[key]["p99_ms"] and stages["edit"] > 0, key
    assert figures["generate"]["stages_ms"]["decoder"] > 0 and figures["note_cached"]["stages_ms"]["decoder"] == 0
    assert figures["cold_start_ms"] > 0 and figures["server_peak_rss_mb"] > 0
    save = figures["session_save_per_edit"]  # durable saves (fsync of file and folder) against plain ones
    assert save["fsync"]["n"] == save["no_fsync"]["n"] > 0 and save["fsync"]["p50_ms"] > 0
    fill = figures["edits_during_fill"]
    assert fill["fill"]["n"] == fill["no_fill"]["n"] > 0 and fill["p50_ratio"] > 0


def test_bench_before_after_asks_two_checkouts_in_turn(tiny_bundle, tmp_path):
    before = tmp_path / "before"  # another checkout: here a copy of this one's runtime
    shutil.copytree(ROOT / "server", before / "server", ignore=shutil.ignore_patterns("default_bundle", "__pycache__"))
    bundle = str(tiny_bundle[1])
    args = ["bench", "--before", str(before), "--before-bundle", bundle, "--bundle", bundle, "--repeats", "2",
            "--only", "inpaint_top_cell,note_cached", "--set", "/harmonic=1"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "| inpaint_top_cell |" in result.stdout and "both at {'/harmonic': 1.0}" in result.stdout
    figures = json.loads(result.stdout[result.stdout.index("\n{") :])
    assert set(figures) == {"before", "repeats", "threads", "settings", "inpaint_top_cell", "note_cached"}
    for name in ("inpaint_top_cell", "note_cached"):
        row = figures[name]
        assert row["before"]["n"] == row["after"]["n"] == 2 and row["p50_ratio"] > 0, name
    bad = subprocess.run(
        [sys.executable, "-m", "server", *args[:-4], "--only", "nothing"], capture_output=True, text=True, cwd=ROOT
    )
    assert bad.returncode != 0 and "unknown operations ['nothing']" in bad.stderr


def test_every_dial_of_the_patches_can_be_mapped_to_a_controller():
    assert cc_value("timbre", 127, 11, (24, 84)) == 5.0 and cc_value("timbre", 0, 11, (24, 84)) == 0.0
    assert cc_value("seed", 42, 11, (24, 84)) == 42


def test_python_osc_threading_server_gets_every_chunk_of_a_48k_render(live):
    """Issue 28: an ordinary receiver (python-osc's ThreadingOSCUDPServer starts a thread per datagram) got 26
    of 63 chunks of an unpaced stream. Paced, it gets nearly all (CI once lost 6 of 188 while its machine
    stalled); the ones it missed it asks again with /render/resend, as a receiver on another machine would."""
    import threading

    from pythonosc import dispatcher, osc_server

    from server.client import OscClient

    got, done, ended = set(), threading.Event(), threading.Event()
    d = dispatcher.Dispatcher()
    d.map("/render/chunk", lambda _a, rid, offset, *_x: got.add(offset) if rid == 4801 else None)
    d.map("/render/end", lambda _a, rid, *_x: ended.set() if rid == 4801 else None)
    d.map("/render/done", lambda _a, rid, *_x: done.set() if rid == 4801 else None)
    receiver = osc_server.ThreadingOSCUDPServer(("127.0.0.1", 0), d)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    sender = OscClient(port=live.port, announce=False)
    every = set(range(0, 192_000, 1024))
    try:
        sender.send("/note/fill", 0)  # the fill's work on the same 2 cores is not the receiver's to survive
        sender.send("/reply_port", receiver.server_address[1])
        sender.send("/render/mode", "chunks")
        sender.send("/render/rate", 48_000)
        time.sleep(0.2)
        sender.send("/render", 4801)
        assert done.wait(30)
        time.sleep(0.2)  # the last handler threads
        first = len(got)
        for _ in range(3):
            missing = sorted(every - got)
            if not missing:
                break
            ended.clear()
            sender.send("/render/resend", 4801, *missing)
            assert ended.wait(10)
            time.sleep(0.2)
        assert got == every, f"{first} of 188 at first, {len(got)} after asking again"
        assert first >= 150, f"pacing let only {first} of 188 through"
    finally:
        sender.send("/render/mode", "file")
        sender.send("/note/fill", 1)
        sender.close()
        receiver.shutdown()
        receiver.server_close()
