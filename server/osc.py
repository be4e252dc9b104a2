"""The OSC server: UDP in through python-osc, replies out, one short handler per address of `server.protocol`.

The receive thread only parses, checks and queues: conditioning changes apply at once, anything that samples
or renders goes to `server.worker`. Replies go to the sender's IP at its reply port (Max and Pd send from
throwaway ports), set per client by `/reply_port`. Every failure answers `/error address message`.
Threads: the receive thread (python-osc's blocking server), `server.worker`'s render worker and session saver,
the settings saver, the time-tag scheduler (bundles tagged ahead), and short-lived playback starters.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import os
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pythonosc import osc_packet, osc_server
from pythonosc.dispatcher import Dispatcher

from server import codemaps, instrument_export, protocol
from server.access import Access, AccessError
from server.delivery import Client, Requester, ResendError
from server.engine import NOTE_MODES, Engine, EngineError
from server.midi import CC_PARAMETERS, DEFAULT_CC_MAP, GM_FAMILIES, cc_value
from server.output import OutputFolder
from server.playback import PlaybackError, Player
from server.protocol import ProtocolError, Request
from server.wire import bundle_problem, encode, type_tag_problem
from server.worker import Job, JobQueue, QueueFull, Worker

log = logging.getLogger("inpaint-osc")
VERSION = "0.1.0"
RENDER_MODES = ("file", "chunks", "both")
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
CLIENTS_KEPT = 64  # senders remembered with default preferences (oscsend and one-shot scripts come and go)
CLIENTS_WITH_PREFERENCES = 1024  # senders that set /reply_port, /render/rate, /render/mode or /timing
CLIENT_SHARE = 0.5  # of the receive thread's time one client may use, in the long run (a 2 000 edits/s flood: 0.2)
CLIENT_BURST = 1.0  # s of handling one client may spend at once before CLIENT_SHARE applies
ONCE_PER_DATAGRAM = {"/help", "/state", "/model/info", "/codemap/get", "/ping"}  # big answers: once per bundle
SUSTAIN_PEDAL = 64  # MIDI CC 64, unless /cc/map gives it another parameter
EXPORT_QUOTA = 2 << 30  # bytes of exports one client host may have written in a server's life
SCHEDULE_AHEAD_S = 10.0  # a bundle may be time-tagged this far ahead (live coders schedule a bar or two)
# A note-on tagged ahead starts this long before its tag (a fresh note renders in about 0.1 s on 2 cores), and
# its replies and --play wait for the tag: it sounds at the tag, not a render's time after it. Note-offs, and
# everything else, run at their tag.
NOTE_LEAD_S = 0.3
NOTE_ON_VELOCITY = {"/note": 1, "/channel/note": 2}  # where a note-on's velocity is among its arguments
OVER_BUDGET = "too many messages: this client's share of the server is used up"
SCHEDULED_LIMIT = 4096  # messages waiting for their time tag, all clients together
SCHEDULED_PER_CLIENT = 512  # ... and of one client: one cannot fill the others' share


class _UDPServer(osc_server.BlockingOSCUDPServer):
    max_packet_size = 65536  # python-osc's 8 192 would drop larger datagrams without a word

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return True  # malformed datagrams reach the handler and get an /error instead of silence


class _Dispatcher(Dispatcher):
    def __init__(self, handle: Callable[[bytes, tuple[str, int]], None]):
        super().__init__()
        self._handle = handle

    def call_handlers_for_packet(self, data: bytes, client_address: tuple[str, int]) -> list:
        self._handle(data, client_address)
        return []


class InstrumentServer:
    """The live instrument: an Engine served over OSC until `serve_forever` is interrupted."""

    def __init__(
        self,
        engine: Engine,
        out: OutputFolder,
        host: str = "127.0.0.1",
        port: int = 9000,
        reply_port: int = 9001,
        allow: tuple[str, ...] = (),
        read_dirs: tuple[Path, ...] = (),
        session: Path | None = None,
        play: bool = False,
        rate: int | None = None,
    ):
        if reply_port == port:
            raise ValueError(f"the reply port {reply_port} is the server's own port: it would answer itself")
        self.engine, self.out, self.default_reply_port = engine, out, reply_port
        self.allow = LOOPBACK + tuple(ipaddress.ip_network(a, strict=False) for a in allow)
        self.access = Access(read_dirs, out.folder, session)
        self.clients: OrderedDict[tuple[str, int], Client] = OrderedDict()
        self.budgets: dict[tuple[str, int], _Budget] = {}  # handling time left to each sender
        self.exported: dict[str, int] = {}  # client host → bytes of exports asked for (EXPORT_QUOTA)
        self._refused_logged: dict[str, float] = {}  # sender → when its refusal was last logged
        self.cc_map = dict(DEFAULT_CC_MAP)
        self.player = Player()
        self.queue = JobQueue()
        self.worker = Worker(engine, self.queue, out, self, session, self.player, play, rate, self.access)
        self.scheduler = _Scheduler(self)
        self.session = session
        self._ids = itertools.count(1 << 30)  # ids the server assigns, far from the small ones clients pick
        self._settings_dirty = threading.Event()
        self._prefill_by: Client | None = None  # the client whose /note/prefill runs
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp = _UDPServer((host, port), _Dispatcher(self.handle_datagram), family=family)
        self.udp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # ride out bursts
        self.port = self.udp.server_address[1]
        # Replies leave from the server's own address and port (a SuperCollider OSCdef filtered on it hears
        # them; no second socket open on all interfaces); datagrams from there are the server's own, ignored.
        self.sock = self.udp.socket

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self._start_helpers()
        _yield_to_this_thread()
        log.info("listening on %s:%d, replies to port %d", *self.udp.server_address[:2], self.default_reply_port)
        log.warning("%s", self.access.describe())  # shown under --quiet too: what the network may touch
        try:
            self.udp.serve_forever(poll_interval=0.2)
        finally:
            self.close()

    def _start_helpers(self) -> None:
        self.worker.start()
        self.scheduler.start()
        threading.Thread(target=self._settings_saver, name="settings-saver", daemon=True).start()

    def close(self) -> None:
        self.worker.stop()
        self.scheduler.stop()
        self.worker.join(timeout=5)
        self._settings_dirty.set()
        self.udp.server_close()
        self.player.close()

    # ---- sending ------------------------------------------------------------------------------------------

    def send(self, client: Client, address: str, *args: Any) -> None:
        try:
            self.sock.sendto(encode(address, *args), (client.host, client.reply_port))
        except (OSError, ValueError, TypeError) as exc:  # one failed reply must not stop the others
            log.warning("send %s to %s:%d failed: %s", address, client.host, client.reply_port, exc)

    def broadcast(self, address: str, *args: Any) -> None:
        clients = list(self.clients.values())  # one C call: safe while the receive thread adds clients
        for client in {(c.host, c.reply_port): c for c in clients}.values():
            self.send(client, address, *args)

    def send_codemaps(self, client: Client | None = None, layers: tuple[str, ...] = codemaps.LAYERS) -> None:
        e = self.engine
        with e.lock:
            version, maps = e.version, {"top": e.top, "bottom": e.bottom}
        for layer in layers:
            codes = maps[layer]
            rows, cols = codes.shape
            self._to(client, "/codemap", layer, version, rows, cols, *codes.reshape(-1).tolist())

    def send_settings(self, client: Client | None = None) -> None:
        """Every setting of `protocol.SETTINGS`, on its own address, in the table's order."""
        s, families = self.engine.settings, self.engine.manifest.families
        for setting in protocol.SETTINGS:
            value = getattr(s, setting.field)
            if setting.field == "family":
                self._to(client, setting.address.path, value, families[value])  # the index and the name
            else:
                self._to(client, setting.address.path, _wire_value(setting, value))

    def _to(self, client: Client | None, address: str, *args: Any) -> None:
        """To one client, or to every client when None."""
        if client is None:
            self.broadcast(address, *args)
        else:
            self.send(client, address, *args)

    def error(self, client: Client, address: str, message: str) -> None:
        log.info("error %s: %s", address[:200], message[:300])
        self.send(client, "/error", _clip(address, 200), _clip(message, 3000))

    # ---- receiving ----------------------------------------------------------------------------------------

    def client(self, addr: tuple[str, int]) -> Client:
        """The sender's entry. Forgotten first: the least recently heard of those that set no preference, so a
        crowd of one-shot senders never makes the server forget a patch's /reply_port or /render/rate."""
        key = (addr[0], addr[1])
        c = self.clients.get(key)
        if c is not None:
            self.clients.move_to_end(key)
            return c
        c = self.clients[key] = Client(addr[0], self.default_reply_port, addr[1])
        plain = [k for k, v in self.clients.items() if not v.has_preferences(self.default_reply_port)]
        if len(plain) > CLIENTS_KEPT:
            self._forget(plain[0])
        elif len(self.clients) > CLIENTS_KEPT + CLIENTS_WITH_PREFERENCES:
            self._forget(next(iter(self.clients)))
        return c

    def _forget(self, key: tuple[str, int]) -> None:
        del self.clients[key]
        self.budgets.pop(key, None)

    def _own(self, addr: tuple[str, int], ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """A datagram the server sent itself (a client's /reply_port pointing back at it)."""
        host = self.udp.server_address[0]
        return addr[1] == self.port and (ip.is_loopback or ip.is_unspecified or str(ip) == host)

    def handle_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        ip = ipaddress.ip_address(addr[0].split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack socket
        if not any(ip in net for net in self.allow):
            self._log_refused(addr[0], "not in the allow-list (--allow)")
            return
        if self._own(addr, ip):
            return
        key = (addr[0], addr[1])
        budget = self.budgets.get(key)
        if budget is None:
            budget = self.budgets[key] = _Budget()
        client = self.client(addr)
        if self.over_budget(budget, client, ""):
            return
        cpu = time.thread_time()  # this thread's own time: waiting for the worker's hold on the interpreter is not
        try:
            self._handle_packet(client, data)
        finally:
            budget.spend(time.thread_time() - cpu)

    def over_budget(self, budget: _Budget, client: Client, address: str) -> bool:
        """Whether this sender's share is used up; once a second it is told why (the receive thread stays free)."""
        if budget.allows(time.monotonic()):
            return False
        if budget.tell():
            self.error(client, address, OVER_BUDGET)
        return True

    def _handle_packet(self, client: Client, data: bytes) -> None:
        problem = bundle_problem(data) or type_tag_problem(data)
        if problem:
            self.error(client, "", f"malformed OSC datagram ({len(data)} bytes): {problem}")
            return
        try:
            messages = osc_packet.OscPacket(data).messages  # bundles flattened, each message with its time
        except osc_packet.ParseError as exc:
            self.error(client, "", f"malformed OSC datagram ({len(data)} bytes): {exc}")
            return
        except Exception as exc:  # python-osc raises plain errors on some corrupt packets
            self.error(client, "", f"malformed OSC datagram ({len(data)} bytes): {type(exc).__name__}: {exc}")
            return
        answered: set[str] = set()
        now = time.time()
        for timed in messages:  # python-osc gives a time tag in the past, or "immediately", as now
            address = timed.message.address
            if address in ONCE_PER_DATAGRAM:
                if address in answered:
                    continue  # a bundle of /help asks once: the answer is the same
                answered.add(address)
            if timed.time > now + 0.001:
                self.scheduler.add(timed.time, client, address, timed.message.params)
            else:
                self.handle_message(client, address, timed.message.params)

    def handle_message(self, client: Client, address: str, params: list[Any], at: float | None = None) -> None:
        """`at`: the time tag of the bundle it came in (time.perf_counter() clock), for notes and note-offs."""
        t0 = time.perf_counter()
        try:
            request = protocol.parse(address, params)
            request.at = at
            HANDLERS[address](self, client, request, t0)
        except (ProtocolError, EngineError, AccessError, QueueFull, ResendError) as exc:
            self.error(client, address, str(exc))
        except Exception as exc:  # a bug must cost one message, never the server
            log.exception("handling %s", address[:200])
            self.error(client, address, f"internal error: {type(exc).__name__}: {exc}")
        if log.isEnabledFor(logging.INFO):  # formatting costs more than most handlers: never under --quiet
            log.info("%s %s %.2f ms", address[:200], _brief(params), (time.perf_counter() - t0) * 1000)

    def _log_refused(self, sender: str, why: str) -> None:
        """At most one line per sender and minute: a flood of refused datagrams does not fill the disk."""
        now = time.monotonic()
        if now - self._refused_logged.get(sender, -60.0) >= 60.0:
            if len(self._refused_logged) > 4096:
                self._refused_logged.clear()
            self._refused_logged[sender] = now
            log.warning("dropped datagrams from %s: %s (logged once a minute)", sender, why)

    # ---- work for the worker ------------------------------------------------------------------------------

    def submit(self, client: Client, request: Request, kind: str, received: float, **params: Any) -> None:
        request_id = request.request_id
        if request_id is None:
            request_id = next(self._ids)  # atomic: MIDI input calls this from its own thread too
        job = Job(kind, request.address, [Requester(client, request_id, received, at=request.at)], params)
        for old in self.queue.put(job):
            for r in old.requesters:
                self.send(
                    r.client, "/render/cancelled", r.request_id, old.cancelled or f"superseded by {request.address}"
                )

    def _mask(self, request: Request) -> np.ndarray:
        v = request.values
        return self.engine.range_mask(v["layer"], v["t0"], v["t1"], v["f0"], v["f1"])

    def on_generate(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "generate", t)

    def on_analyze(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "analyze", t, path=self.access.readable(r.values["path"]))

    def on_inpaint(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "inpaint", t, layer=r.values["layer"], mask=self._mask(r))

    def on_inpaint_cells(self, c: Client, r: Request, t: float) -> None:
        layer = r.values["layer"]
        self.submit(c, r, "inpaint", t, layer=layer, mask=self.engine.cells_mask(layer, r.groups))

    def on_resample_bottom(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "resample", t)

    def on_erase(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "erase", t, layer=r.values["layer"], mask=self._mask(r))

    def on_randomize(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "randomize", t, layer=r.values["layer"], mask=self._mask(r))

    def on_codemap_set(self, c: Client, r: Request, t: float) -> None:
        layer = r.values["layer"]
        self.engine.check_codes(layer, r.groups)  # now, so a bad triple is refused at once
        cells = np.array(r.groups, np.int32).reshape(-1, 3)  # (n, 3) t, f, code: 12 bytes a cell while it waits
        self.submit(c, r, "set", t, layer=layer, cells=cells)

    def on_undo(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "undo", t)

    def on_redo(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "redo", t)

    def on_render(self, c: Client, r: Request, t: float) -> None:
        self.submit(c, r, "render", t)

    def on_image(self, c: Client, r: Request, t: float) -> None:
        self.engine.layer_shape(r.values["layer"])
        self.submit(c, r, "image", t, layer=r.values["layer"])

    def on_note(self, c: Client, r: Request, t: float) -> None:
        self._key(c, r, t, None)

    def on_channel_note(self, c: Client, r: Request, t: float) -> None:
        self._key(c, r, t, r.values["channel"])

    def _key(self, c: Client, r: Request, t: float, channel: int | None) -> None:
        """A note-on or note-off (velocity 0) of /note or /channel/note."""
        if r.values["velocity"] == 0:  # note-off: nothing to render; the voices playing the pitch fade out
            self.player.release(r.values["pitch"], self.engine.settings.release, r.at)
            for job in self.queue.cancel_notes(c, r.values["pitch"], r.at):  # its note, still waiting: too late now
                for q in job.requesters:
                    self.send(q.client, "/render/cancelled", q.request_id, "note-off before its render")
            if r.request_id is not None:
                self.send(c, "/render/cancelled", r.request_id, "note-off: nothing to render")
            return
        pitch = self.engine.check_pitch(r.values["pitch"])
        self.submit(c, r, "note", t, pitch=pitch, velocity=r.values["velocity"], channel=channel)

    def on_note_redraw(self, c: Client, r: Request, t: float) -> None:
        """A note-on of this key, drawn anew: the next render of the key (and every export) is the new draw."""
        pitch = self.engine.check_pitch(r.values["pitch"])
        self.engine.redraw(pitch)
        self.submit(c, r, "note", t, pitch=pitch, velocity=100, fresh=True)

    def on_cancel(self, c: Client, r: Request, t: float) -> None:
        """This client's requests only: another performer's renders are not its to stop."""
        removed, flagged = self.queue.cancel(c, r.request_id)
        if r.request_id is not None and not removed and not flagged:
            raise EngineError(f"no waiting or running request {r.request_id} from this client")
        for q in removed:
            self.send(q.client, "/render/cancelled", q.request_id, "cancelled by /cancel")
        if self._prefill_by == c:
            self.worker.prefill = []  # a new list: the worker may be popping from the old one

    # ---- answered at once -----------------------------------------------------------------------------------

    def on_ping(self, c: Client, r: Request, t: float) -> None:
        self.send(c, "/pong", VERSION, self.port, c.reply_port)

    def on_help(self, c: Client, r: Request, t: float) -> None:
        for row in protocol.help_rows():
            self.send(c, "/help", *row)

    def on_reply_port(self, c: Client, r: Request, t: float) -> None:
        if r.values["port"] == self.port and ipaddress.ip_address(c.host.split("%")[0]).is_loopback:
            raise EngineError(f"port {self.port} is the server's own: replies would come back to it")
        c.reply_port = r.values["port"]
        self.on_ping(c, r, t)

    def on_model_info(self, c: Client, r: Request, t: float) -> None:
        m, (tr, tc), (br, bc) = self.engine.manifest, codemaps.TOP_SHAPE, codemaps.BOTTOM_SHAPE
        name = str(m.raw.get("name") or self.engine.bundle.path.name)
        sp = m.spectrogram
        self.send(
            c,
            "/model/info",
            name,
            self.engine.bundle.provider,
            sp.sample_rate,
            sp.n_samples,
            tr,
            tc,
            br,
            bc,
            m.n_codes,
            *m.pitch_range,
            *m.families,
        )

    def on_state(self, c: Client, r: Request, t: float) -> None:
        self.send_settings(c)
        for channel in sorted(self.engine.channel_families):
            self.send_channel(c, channel)
        self.send(c, "/render/rate", c.rate or self.worker.delivery.rate)
        self.send(c, "/note/cache", *self.engine.fill_status()[:2])
        self.send_codemaps(c)
        self.send(c, "/status", self.worker.status)

    def on_codemap_get(self, c: Client, r: Request, t: float) -> None:
        self.engine.layer_shape(r.values["layer"])  # refuses an unknown layer
        self.send_codemaps(c, (r.values["layer"],))

    def set_settings(self, **changes: Any) -> None:
        self.engine.update_settings(**changes)
        self._settings_dirty.set()  # saved, then echoed to every client, by the settings saver

    def on_pitch(self, c: Client, r: Request, t: float) -> None:
        self.set_settings(pitch=self.engine.check_pitch(r.values["pitch"]))

    def on_instrument(self, c: Client, r: Request, t: float) -> None:
        self.set_settings(family=self.engine.family_index(r.values["instrument"]))

    def on_note_mode(self, c: Client, r: Request, t: float) -> None:
        if r.values["mode"] not in NOTE_MODES:
            raise EngineError(f"unknown note mode {r.values['mode']!r}: one of {', '.join(NOTE_MODES)}")
        self.set_settings(note_mode=r.values["mode"])

    def on_note_prefill(self, c: Client, r: Request, t: float) -> None:
        low, high = (self.engine.check_pitch(r.values[k]) for k in ("low", "high"))
        if low > high:
            raise EngineError(f"low {low} is above high {high}")
        self.worker.prefill = list(range(low, high + 1))
        self._prefill_by = c  # whose /cancel stops it

    def on_program(self, c: Client, r: Request, t: float) -> None:
        self.set_settings(family=self._program_family(r.values["program"]))

    def on_channel_program(self, c: Client, r: Request, t: float) -> None:
        self._set_channel(r.values["channel"], self._program_family(r.values["program"]))

    def on_channel_instrument(self, c: Client, r: Request, t: float) -> None:
        value = r.values["instrument"]
        self._set_channel(r.values["channel"], None if value in (-1, "none") else self.engine.family_index(value))

    def _program_family(self, program: int) -> int:
        if program not in GM_FAMILIES:
            raise EngineError(f"General MIDI program {program} (0-based) has no instrument family")
        return self.engine.family_index(GM_FAMILIES[program][0])

    def _set_channel(self, channel: int, family: int | None) -> None:
        self.engine.set_channel_family(channel, family)
        self._settings_dirty.set()  # saved with the session by the settings saver
        self.send_channel(None, channel)

    def send_channel(self, client: Client | None, channel: int) -> None:
        family = self.engine.channel_families.get(channel)
        name = "none" if family is None else self.engine.manifest.families[family]
        self._to(client, "/channel/instrument", channel, -1 if family is None else family, name)

    def on_bend(self, c: Client, r: Request, t: float) -> None:
        self.player.bend(r.values["semitones"])

    def on_cc(self, c: Client, r: Request, t: float) -> None:
        parameter = self.cc_map.get(r.values["controller"])
        if parameter is None and r.values["controller"] == SUSTAIN_PEDAL:
            self.player.sustain(r.values["value"] >= 64)  # --play's voices: note-offs wait for the pedal
            return
        if parameter is None:
            return  # controllers send constantly; an unmapped one is not an error
        m = self.engine.manifest
        value = cc_value(parameter, r.values["value"], len(m.families), m.pitch_range)
        self.set_settings(**{"family" if parameter == "instrument" else parameter: value})

    def on_cc_map(self, c: Client, r: Request, t: float) -> None:
        if r.values["parameter"] not in CC_PARAMETERS:
            raise EngineError(f"unknown parameter {r.values['parameter']!r}: one of {', '.join(CC_PARAMETERS)}")
        self.cc_map[r.values["controller"]] = r.values["parameter"]

    def on_render_mode(self, c: Client, r: Request, t: float) -> None:
        if r.values["mode"] not in RENDER_MODES:
            raise EngineError(f"unknown render mode {r.values['mode']!r}: one of {', '.join(RENDER_MODES)}")
        c.mode = r.values["mode"]

    def on_render_rate(self, c: Client, r: Request, t: float) -> None:
        c.rate = r.values["hz"]
        self.send(c, "/render/rate", c.rate)

    def on_render_resend(self, c: Client, r: Request, t: float) -> None:
        self.worker.delivery.stream.resend(c, r.values["id"], [offset for (offset,) in r.groups])

    def on_timing(self, c: Client, r: Request, t: float) -> None:
        c.timing = bool(r.values["on"])

    def on_play(self, c: Client, r: Request, t: float) -> None:
        last = self.worker.delivery.last_audio
        if last is None:
            raise EngineError("nothing rendered yet")
        (audio, rate), loop = last, bool(r.values.get("loop", 0))

        def play() -> None:  # opening an audio device can take a while: never on the receive thread
            try:
                self.player.play(audio, rate, loop=loop)
            except PlaybackError as exc:
                self.error(c, "/play", str(exc))

        threading.Thread(target=play, name="playback", daemon=True).start()

    def on_stop(self, c: Client, r: Request, t: float) -> None:
        self.player.stop()

    def on_export_instrument(self, c: Client, r: Request, t: float) -> None:
        folder = self.access.writable(r.values["path"])
        try:
            folder = instrument_export.check_folder(folder, self.worker.exported_to)
        except instrument_export.ExportError as exc:
            raise EngineError(str(exc)) from None
        lo, hi = self.engine.manifest.pitch_range
        low, high = r.values.get("low", lo), r.values.get("high", hi)
        for pitch in (low, high):
            self.engine.check_pitch(pitch)
        if low > high:
            raise EngineError(f"low {low} is above high {high}")
        keys = range(low, high + 1)
        rate = c.rate or self.worker.delivery.rate  # the export's, whatever /render/rate says meanwhile
        size = instrument_export.estimated_bytes(len(keys), self.engine.manifest.spectrogram.n_samples,
                                                 self.engine.manifest.spectrogram.sample_rate, rate)  # fmt: skip
        host = "loopback" if ipaddress.ip_address(c.host).is_loopback else c.host  # 127.x.y.z: one machine
        used = self.exported.get(host, 0)
        if used + size > EXPORT_QUOTA:
            raise EngineError(
                f"this export would write about {size >> 20} MB; {host} has used {used >> 20} of its "
                f"{EXPORT_QUOTA >> 20} MB of exports (the quota lasts until the server restarts)"
            )
        self.submit(c, r, "export", t, folder=folder, keys=keys, rate=rate)
        self.exported[host] = used + size

    # ---- helpers ------------------------------------------------------------------------------------------

    def _settings_saver(self) -> None:
        """Coalesces conditioning changes: save the session, then echo the settings to every client."""
        while not self.worker.stopping.is_set():
            if not self._settings_dirty.wait(0.2):
                continue
            self._settings_dirty.clear()
            if self.worker.stopping.is_set():
                return
            try:
                if self.session is not None:
                    try:
                        self.engine.save(self.session)
                    except OSError as exc:
                        log.error("session not saved: %s", exc)
                        self.broadcast("/error", "", f"session not saved: {exc}")
                self.send_settings()
            except Exception:  # this thread outlives any bug: the next change is saved and echoed again
                log.error("settings saver:\n%s", traceback.format_exc())
                self.broadcast("/error", "", "internal error while saving or echoing the settings; see the log")


class _Scheduler(threading.Thread):
    """Messages of bundles time-tagged ahead (TidalCycles, SuperCollider schedule ahead of the beat), run at
    their tag by `handle_message`, in tag order; a tag too far ahead, or too many waiting, answers /error."""

    def __init__(self, server: InstrumentServer):
        super().__init__(name="time-tags", daemon=True)
        self.server = server
        self.heap: list[tuple[float, int, Client, str, list[Any], float]] = []  # (runs at, order, ..., its tag)
        self.cond = threading.Condition()
        self.count = itertools.count()  # ties in time keep the bundle's order
        self.waiting: dict[Client, int] = {}  # messages waiting, per client
        self.stopping = False

    def add(self, when: float, client: Client, address: str, params: list[Any]) -> None:
        ahead = when - time.time()
        if ahead > SCHEDULE_AHEAD_S:
            self.server.error(client, address, f"time tag {ahead:.1f} s ahead: at most {SCHEDULE_AHEAD_S:g} s")
            return
        with self.cond:
            mine = self.waiting.get(client, 0)
            if len(self.heap) >= SCHEDULED_LIMIT or mine >= SCHEDULED_PER_CLIENT:
                limit = (
                    f"{SCHEDULED_PER_CLIENT} of this client's" if mine >= SCHEDULED_PER_CLIENT else f"{SCHEDULED_LIMIT}"
                )
                self.server.error(client, address, f"{limit} time-tagged messages are waiting")
                return
            velocity = NOTE_ON_VELOCITY.get(address)
            note_on = velocity is not None and len(params) > velocity and params[velocity] != 0
            heapq.heappush(self.heap, (when - NOTE_LEAD_S * note_on, next(self.count), client, address, params, when))
            self.waiting[client] = mine + 1
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and (not self.heap or self.heap[0][0] > time.time()):
                    self.cond.wait(min(0.2, self.heap[0][0] - time.time()) if self.heap else 0.2)
                if self.stopping:
                    return
                _, _, client, address, params, tag = heapq.heappop(self.heap)
                left = self.waiting.pop(client) - 1
                if left:
                    self.waiting[client] = left
            # Charged to its sender's share as if it had come now: scheduling ahead is no way around the budget.
            budget = self.server.budgets.get((client.host, client.port))
            if budget is not None and self.server.over_budget(budget, client, address):
                continue
            cpu = time.thread_time()
            at = tag - time.time() + time.perf_counter()  # the tag on the clock renders and playback keep
            self.server.handle_message(client, address, params, at)  # its own try: a bug costs one message
            if budget is not None:
                budget.spend(time.thread_time() - cpu)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()


class _Budget:
    """A sender's share of the receive thread: a token bucket of its CPU time (CLIENT_BURST s, refilled at
    CLIENT_SHARE s a second). A client over it has its datagrams dropped unread, which costs microseconds, so
    one flooding client cannot make another's /ping wait."""

    def __init__(self) -> None:
        self.left, self.at, self.told = CLIENT_BURST, time.monotonic(), -1.0

    def allows(self, now: float) -> bool:
        self.left = min(CLIENT_BURST, self.left + (now - self.at) * CLIENT_SHARE)
        self.at = now
        return self.left > 0

    def spend(self, cpu_seconds: float) -> None:
        self.left -= cpu_seconds

    def tell(self) -> bool:
        """Whether to tell the client it is over (once a second)."""
        if self.at - self.told < 1.0:
            return False
        self.told = self.at
        return True


def _yield_to_this_thread(niceness: int = 19) -> None:
    """Lower every other thread of the process (the worker, onnxruntime's pools) to the lowest priority, so the
    receive thread (and the performer's other programs: Max, Pd, a DAW) run first whenever they need a core.
    Renders still take every idle cycle. On 2 cores, /ping while a generate keeps both busy: p99 3-6 ms at
    equal priority, 3.1-3.8 at niceness 5, 1.3-3.0 at 10, 0.8-1.4 at 19. Linux schedules threads one by
    one; elsewhere this does nothing."""
    me = threading.get_native_id()
    try:
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != me:
                os.setpriority(os.PRIO_PROCESS, int(tid), niceness)
    except (OSError, AttributeError):
        pass


def _clip(text: str, limit: int) -> str:
    """At most `limit` bytes of UTF-8, so an echoed address or path cannot push a reply past the datagram limit."""
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def _brief(params: list[Any]) -> str:
    """A message's arguments for the log: the first 8, each at most 60 characters (one line stays short)."""
    text = " ".join(str(p)[:60] for p in params[:8])
    return text + (" ..." if len(params) > 8 else "")


def _wire_value(setting: protocol.Setting, value: Any) -> Any:
    """A setting's value as its address carries it: int, float or string (a bool goes as 0 or 1)."""
    kind = setting.address.args[0].kind
    return int(value) if kind == "i" else float(value) if kind == "f" else value


def _store(setting: protocol.Setting) -> Callable[[InstrumentServer, Client, Request, float], None]:
    """The handler of a setting the address table checks whole: the value, as the `Settings` field's type."""
    convert = type(setting.default)
    arg = setting.address.args[0].name

    def handler(server: InstrumentServer, c: Client, r: Request, t: float) -> None:
        server.set_settings(**{setting.field: convert(r.values[arg])})

    return handler


def _handler(address: protocol.Address) -> Callable[[InstrumentServer, Client, Request, float], None]:
    setting = next((s for s in protocol.SETTINGS if s.address is address and not s.checked), None)
    if setting is not None:
        return _store(setting)
    return getattr(InstrumentServer, "on_" + address.path.strip("/").replace("/", "_"))  # type: ignore[no-any-return]


HANDLERS: dict[str, Callable[[InstrumentServer, Client, Request, float], None]] = {
    a.path: _handler(a) for a in protocol.INBOUND
}
