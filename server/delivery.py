"""How a render reaches each requester: at the performer's level (`server.level`: normalised, velocity,
`/gain`, limited), at its client's sample rate (`/render/rate`), as a WAV file and/or sample chunks
(`/render/mode`), followed by `/render/timing` when asked, and on the server's own output with `--play`.
`server.worker` decides what runs and when; this module delivers what it rendered.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from server import level, looping
from server.audio import resample
from server.output import CHUNK_FRAMES, OutputFolder, chunks
from server.playback import PlaybackError, Player
from server.protocol import TIMING_STAGES

log = logging.getLogger("inpaint-osc")
CHUNK_RATE = 800.0  # /render/chunk datagrams a second at most (3.4 MB/s; see ChunkStream)
STREAM_LIMIT = 16  # renders waiting to be streamed, all clients together
STREAMS_PER_CLIENT = 2  # ... and of one client
KEPT_PER_CLIENT = 2  # streamed renders a client may ask chunks of again (/render/resend)
KEPT_LIMIT = 16  # ... all clients together (at 192 kHz 3 MB each)


class ResendError(ValueError):
    """A /render/resend of a render this client cannot have again; nothing is sent."""


@dataclass(eq=False)
class Client:
    """A sender, known by its IP and source port (equal clients: the same sender, even after the server forgot
    and met it again), and its delivery preferences; replies go to (host, reply_port). `/cancel` reaches only
    its own sender's requests."""

    host: str
    reply_port: int
    port: int = 0  # its source port: with `host`, who it is
    mode: str = "file"  # how rendered audio reaches it: file path, sample chunks, or both
    rate: int | None = None  # sample rate of its renders (/render/rate); None: the server's (--rate)
    timing: bool = False  # follow each /render/done with /render/timing

    def has_preferences(self, default_reply_port: int) -> bool:
        """Whether it told the server anything worth remembering about itself."""
        return (self.reply_port, self.mode, self.rate, self.timing) != (default_reply_port, "file", None, False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Client) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.host, self.port))


@dataclass
class Requester:
    """One request of a job: who sent it (compared with ==: one sender), its id, when it arrived."""

    client: Client
    request_id: int
    received: float  # time.perf_counter() at arrival
    cancelled: bool = False  # by its client's /cancel while its job runs on for another client's request
    at: float | None = None  # its time tag (time.perf_counter() clock): a note-on rendered ahead waits for it


class Settings(Protocol):
    """What delivery reads of the performer's settings (`server.engine.Settings`)."""

    @property
    def level(self) -> float: ...  # dBFS RMS over the held part
    @property
    def gain(self) -> float: ...  # dB
    @property
    def velocity_curve(self) -> float: ...


class ChunkStream(threading.Thread):
    """Sends renders as `/render/chunk`s at CHUNK_RATE datagrams a second at most, then their `/render/end` and
    `/render/done`, in the order they were rendered. A burst overflows a default 208 kB socket buffer before an
    ordinary receiver has read it: python-osc's ThreadingOSCUDPServer, which starts a thread per datagram, got
    26 of 63 chunks unpaced, 105-122 of 188 at 2 000 a second, all of them at 1 000 on an idle server and
    188 of 188 in 3 of 3 runs at 800 beside the note cache's fill (a 48 kHz render streams in 0.24 s). Its
    own thread, so the worker renders the next note meanwhile (see `put` for how many wait). Pacing cannot
    make UDP reliable (a receiver stalled for tens of ms still loses a few), so each client's last
    KEPT_PER_CLIENT streamed renders are kept, and `/render/resend` sends the chunks it names again."""

    def __init__(self, send: Callable[..., None]):
        super().__init__(name="chunk-stream", daemon=True)
        self.send = send
        self.waiting: deque[tuple[Any, list[tuple[str, tuple]]]] = deque()
        self.cond = threading.Condition()
        self.kept: OrderedDict[tuple[Any, int], np.ndarray] = OrderedDict()  # (client, id) → the streamed samples

    def keep(self, client: Any, request_id: int, audio: np.ndarray) -> None:
        """Remember a streamed render for `resend`. A client's newest replace its own oldest; only past
        KEPT_LIMIT in all does the oldest of anyone's go."""
        with self.cond:
            self.kept.pop((client, request_id), None)
            mine = [key for key in self.kept if key[0] == client]
            if len(mine) >= KEPT_PER_CLIENT:
                del self.kept[mine[0]]
            elif len(self.kept) >= KEPT_LIMIT:
                self.kept.popitem(last=False)
            self.kept[(client, request_id)] = audio

    def resend(self, client: Any, request_id: int, offsets: list[int]) -> None:
        """Stream again the chunks of this client's render `request_id` that start at `offsets`, then its
        `/render/end` again. Another client's renders are not its to read."""
        with self.cond:
            audio = self.kept.get((client, request_id))
        if audio is None:
            raise ResendError(f"render {request_id} is not among this client's last {KEPT_PER_CLIENT} streamed renders")
        bad = [o for o in offsets if o < 0 or o >= audio.shape[0] or o % CHUNK_FRAMES]
        if bad:
            raise ResendError(
                f"render {request_id}: offset {bad[0]} is not a chunk's (multiples of {CHUNK_FRAMES} "
                f"below {audio.shape[0]})"
            )
        self.put(client, stream_replies(request_id, audio, set(offsets)))

    def put(self, client: Any, replies: list[tuple[str, tuple]]) -> None:
        """Queue one render's replies. Past STREAMS_PER_CLIENT of this client's (or STREAM_LIMIT in all) the
        oldest waiting one loses its chunks (its client is told) and gets its ending at once: a client asking
        for renders faster than they stream delays no other client by more than its own few."""
        with self.cond:
            if not self.is_alive():
                self.start()
            mine = [i for i, (c, _) in enumerate(self.waiting) if c == client]
            if len(mine) >= STREAMS_PER_CLIENT or len(self.waiting) >= STREAM_LIMIT:
                oldest = mine[0] if len(mine) >= STREAMS_PER_CLIENT else 0
                old_client, old = self.waiting[oldest]
                del self.waiting[oldest]  # by position: the replies hold arrays, which do not compare
                self._drop(old_client, old)
            self.waiting.append((client, replies))
            self.cond.notify()

    def _drop(self, client: Any, replies: list[tuple[str, tuple]]) -> None:
        request_id = replies[0][1][0]
        self.send(client, "/error", "/render", f"render {request_id}: chunks dropped, newer renders are waiting")
        for address, args in replies:
            if address not in ("/render/chunk", "/render/end"):
                self.send(client, address, *args)  # every request still gets its ending

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
                client, replies = self.waiting.popleft()
            start = time.perf_counter()
            for i, (address, args) in enumerate(replies):
                self.send(client, address, *args)
                ahead = (i + 1) / CHUNK_RATE - (time.perf_counter() - start)
                if address == "/render/chunk" and ahead > 0.0005:
                    time.sleep(ahead)


def stream_replies(request_id: int, audio: np.ndarray, only: set[int] | None = None) -> list[tuple[str, tuple]]:
    """A render's `/render/chunk`s (those at the offsets `only`, when given) and its `/render/end`."""
    replies = [
        ("/render/chunk", (request_id, offset, piece.size, piece))
        for offset, piece in chunks(audio)
        if only is None or offset in only
    ]
    return [*replies, ("/render/end", (request_id, audio.size))]


class HeldReplies(threading.Thread):
    """Replies that wait for their request's time tag, sent at it: a note-on tagged ahead is rendered before its
    tag (osc.NOTE_LEAD_S) and heard at it, by a patch that plays what arrives as by --play. At most that lead
    long, so what waits is bounded by how many notes render in it."""

    def __init__(self) -> None:
        super().__init__(name="held-replies", daemon=True)
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.cond = threading.Condition()
        self.order = itertools.count()

    def put(self, at: float, send: Callable[[], None]) -> None:
        with self.cond:
            if not self.is_alive():
                self.start()
            heapq.heappush(self.heap, (at, next(self.order), send))
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.heap or self.heap[0][0] > time.perf_counter():
                    self.cond.wait(self.heap[0][0] - time.perf_counter() if self.heap else None)
                _, _, send = heapq.heappop(self.heap)
            try:
                send()
            except Exception:  # a failed reply costs that reply, never the others
                log.error("held reply:\n%s", traceback.format_exc())


class Delivery:
    """Renders to their requesters. `send(client, address, *args)` is the transport's; `rate` the server's own
    (`--rate`: clients that never sent /render/rate, /play, --play); `player` plays every render (`--play`)."""

    def __init__(
        self,
        send: Callable[..., None],
        out: OutputFolder,
        model_rate: int,
        rate: int | None = None,
        player: Player | None = None,
    ):
        self.send, self.out, self.model_rate, self.player = send, out, model_rate, player
        self.rate = rate or model_rate
        self.last_audio: tuple[np.ndarray, int] | None = None  # the last render as delivered at self.rate
        self.stream = ChunkStream(send)
        self.held = HeldReplies()

    def rate_of(self, r: Requester) -> int:
        return r.client.rate or self.rate

    def deliver(
        self,
        requesters: list[Requester],
        audio: np.ndarray,
        settings: Settings,
        timings: dict[str, float],
        batch_started: float,
        velocity: int | None = None,
        pitch: int | None = None,
        before_ack: Callable[[], None] | None = None,
    ) -> None:
        """The model's `audio` to each requester: brought to the performer's level (and the note's velocity),
        resampled to the client's rate, written once per rate, then sent as a file and/or chunks.
        `before_ack()` runs before each requester's first reply (the worker's wait for the session save)."""
        s = settings
        extra_db = s.gain + (level.velocity_db(velocity, s.velocity_curve) if velocity is not None else 0.0)
        t0 = time.perf_counter()
        shaped, lvl = level.shape(audio, self.model_rate, s.level, extra_db)
        if lvl.silent:
            log.warning("render %d is silent (%.1f dBFS over its held part)", requesters[0].request_id, lvl.level_db)
        # rate → (the audio sent at that rate, its WAV, its sustain loop or None): one per rate. A note's WAV holds
        # its sustain loop (server.looping: the loop's end cross-faded into its start), so a voice that loops it
        # while the key is held (/render/loop) sounds as long as the key, as the SF2 export does.
        files: dict[int, tuple[np.ndarray, str, tuple[int, int] | None]] = {}
        plain: dict[int, np.ndarray] = {}  # rate → the audio before its loop
        # A client's merged requests share one render: its samples are sent once, as the last request's chunks
        # (each request still gets its /render/done), so a bundle of renders costs about what one does.
        chunked = {r.client: r for r in requesters if not r.cancelled}
        for r in requesters:
            rate = self.rate_of(r)
            try:
                if rate not in files:
                    out = plain[rate] = resample(shaped, self.model_rate, rate)
                    sustain = None
                    if pitch is not None and out.size > looping.LOOP_END_S * rate:
                        out, *points = looping.loop(out, rate)
                        sustain = (points[0], points[1])
                    files[rate] = (out, str(self.out.write_wav(out, rate, r.request_id)), sustain)
            except Exception as exc:  # a full disk: this requester hears of it, the others still get theirs
                log.error("delivery of %d failed:\n%s", r.request_id, traceback.format_exc())
                self.send(r.client, "/error", "/render", f"render failed: {type(exc).__name__}: {exc}")
                continue
            timings["wav"] = time.perf_counter() - t0
            if before_ack is not None:
                before_ack()
            out, wav, sustain = files[rate]
            self._done(r, wav, out, rate, lvl, timings, batch_started, chunked.get(r.client) is r, sustain)
            t0 = time.perf_counter()
        # /play and --play: the server's own rate, without the loop (the mixer loops a held note itself)
        own = plain[self.rate] if self.rate in plain else resample(shaped, self.model_rate, self.rate)
        self.last_audio = (own, self.rate)
        if self.player is not None:
            first = requesters[0]
            struck = (first.at or first.received) if pitch is not None else None
            self._play(*self.last_audio, pitch, struck, first.at if pitch is not None else None)

    def _done(
        self,
        r: Requester,
        wav: str,
        audio: np.ndarray,
        rate: int,
        lvl: level.Level,
        timings: dict[str, float],
        batch_started: float,
        with_chunks: bool = True,
        sustain: tuple[int, int] | None = None,
    ) -> None:
        if r.cancelled:  # its client's /cancel came while this render ran on for another client
            self.send(r.client, "/render/cancelled", r.request_id, "cancelled by /cancel")
            return
        if lvl.silent:
            self.send(r.client, "/render/silent", r.request_id, float(lvl.level_db))
        seconds = time.perf_counter() - r.received
        replies: list[tuple[str, tuple]] = []
        streamed = r.client.mode in ("chunks", "both") and with_chunks
        if streamed:
            replies += stream_replies(r.request_id, audio)
        if sustain is not None:
            replies.append(
                ("/render/loop", (r.request_id, *sustain, 1000 * sustain[0] / rate, 1000 * sustain[1] / rate))
            )
        replies.append(("/render/done", (r.request_id, wav, audio.size, rate, float(seconds), lvl.level_db)))
        if r.client.timing:
            stages = {**timings, "queue": max(0.0, batch_started - r.received), "server": seconds}
            ms = [1000 * float(stages.get(name, 0.0)) for name in TIMING_STAGES]
            replies.append(("/render/timing", (r.request_id, *ms)))

        def emit() -> None:
            if streamed:  # paced, on the stream thread, so the worker goes on meanwhile
                self.stream.keep(r.client, r.request_id, audio)
                self.stream.put(r.client, replies)
            else:
                for address, args in replies:
                    self.send(r.client, address, *args)

        if r.at is not None and r.at > time.perf_counter() + 0.0005:
            self.held.put(r.at, emit)  # a note-on rendered ahead of its time tag
        else:
            emit()

    def _play(
        self, audio: np.ndarray, rate: int, pitch: int | None, struck: float | None, at: float | None = None
    ) -> None:
        assert self.player is not None
        try:
            self.player.play(audio, rate, pitch=pitch, struck=struck, at=at)
        except PlaybackError as exc:
            log.warning("%s", exc)
