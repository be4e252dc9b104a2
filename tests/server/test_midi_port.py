"""A real MIDI stack into `serve --midi-in`, as a DAW's MIDI track would drive it: a JACK server on its dummy
backend (no sound card; these machines have no ALSA sequencer), this test's virtual MIDI output port, and the
server reading it through mido and python-rtmidi's JACK API. Notes go through the port and renders come back
over OSC."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest
from pythonosc import osc_packet

from tests.conftest import require, start_server


@pytest.fixture
def jack(tmp_path, monkeypatch):
    """A private JACK server (its own name) on the dummy backend; mido set to rtmidi's JACK API."""
    require(shutil.which("jackd") is not None, "JACK (jackd)")
    mido = pytest.importorskip("mido")
    rtmidi = pytest.importorskip("rtmidi")
    assert rtmidi.API_UNIX_JACK in rtmidi.get_compiled_api()
    name = f"inpaint-osc-test-{os.getpid()}"
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    monkeypatch.setenv("MIDO_BACKEND", "mido.backends.rtmidi/UNIX_JACK")  # read by the server's mido too
    log = open(tmp_path / "jackd.log", "w")
    proc = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", "48000"], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    backend = mido.Backend("mido.backends.rtmidi/UNIX_JACK", load=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            port = backend.open_output("daw-track", virtual=True)
            break
        except (OSError, SystemError):  # the JACK server is still starting
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError((tmp_path / "jackd.log").read_text()) from None
            time.sleep(0.2)
    yield mido, port
    port.close()
    proc.terminate()
    proc.wait(10)
    log.close()


def test_notes_through_a_jack_midi_port_into_midi_in_come_back_as_renders(jack, tiny_bundle, tmp_path):
    mido, port = jack
    server = start_server(tiny_bundle[1], tmp_path / "server", "--midi-in", "daw-track", "--no-fill")
    replies = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # MIDI's replies go to the default reply port
    replies.bind(("127.0.0.1", server.reply_port))
    replies.settimeout(60)

    def wait_for(address: str, value: list | None = None) -> list:
        """The next reply on `address` (with these arguments, when given: settings are echoed often)."""
        while True:
            message = osc_packet.OscPacket(replies.recv(65536)).messages[0].message
            if message.address == address and value in (None, list(message.params)):
                return list(message.params)

    try:
        port.send(mido.Message("program_change", program=40))  # General MIDI violin: the string family
        string = [server_family(tiny_bundle[1], "string"), "string"]
        assert wait_for("/instrument", string) == string
        done = []
        for note in (60, 64):
            port.send(mido.Message("note_on", note=note, velocity=100))
            done.append(wait_for("/render/done"))
            port.send(mido.Message("note_off", note=note, velocity=0))
        assert [d[2] for d in done] == [64_000, 64_000] and all(os.path.isfile(d[1]) for d in done)
        port.send(mido.Message("control_change", control=1, value=127))  # the mod wheel: temperature 2
        assert wait_for("/temperature", [2.0]) == [2.0]
    finally:
        replies.close()
        server.stop()
    assert "MIDI input: " in server.log.read_text() and "daw-track" in server.log.read_text()


def test_multitimbral_midi_gives_each_channel_its_own_instrument(jack, tiny_bundle, tmp_path):
    mido, port = jack
    server = start_server(tiny_bundle[1], tmp_path / "server", "--midi-in", "daw-track", "--multitimbral", "--no-fill")
    replies = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    replies.bind(("127.0.0.1", server.reply_port))
    replies.settimeout(60)
    seen: list[tuple[str, list]] = []

    def wait_for(address: str) -> list:
        while True:
            message = osc_packet.OscPacket(replies.recv(65536)).messages[0].message
            seen.append((message.address, list(message.params)))
            if message.address == address:
                return list(message.params)

    try:
        port.send(mido.Message("program_change", channel=1, program=73))  # channel 2: a flute
        flute = server_family(tiny_bundle[1], "flute")
        assert wait_for("/channel/instrument") == [2, flute, "flute"]
        port.send(mido.Message("note_on", channel=1, note=60, velocity=100))
        assert wait_for("/render/done")[2] == 64_000
        port.send(mido.Message("note_on", channel=0, note=60, velocity=100))  # channel 1: the current instrument
        assert wait_for("/render/done")[2] == 64_000
    finally:
        replies.close()
        server.stop()
    assert not [v for a, v in seen if a == "/error"]
    keyboard = [server_family(tiny_bundle[1], "keyboard"), "keyboard"]
    assert all(v == keyboard for a, v in seen if a == "/instrument")  # the current instrument was left alone
    assert "multi-timbral" in server.log.read_text()


def server_family(bundle, name: str) -> int:
    return json.loads((bundle / "manifest.json").read_text())["families"].index(name)
