"""The render worker: one thread that runs the engine's operations in arrival order, off the receive thread.

Requests wait in a queue bounded in jobs and in bytes, where one client's bursts coalesce: its new generate,
note or analyze supersedes its own sampling work still waiting (and cancels the one running), except that notes
never supersede notes (a melody plays every note); its consecutive inpaints of one layer merge their masks, and
a batch of edits is rendered once. Nothing one client sends supersedes or merges with another's work.
Instrument exports wait in a lane of their own, one per client and EXPORT_LIMIT in all, and run one key at a
time when no request waits: an export never holds up a note or an edit.
Each batch is saved to the session before it is acknowledged (`/codemap`, `/render/done`). Every request id
gets exactly one ending: done, cancelled or an error. When idle, the worker fills the note cache across the
model's pitch range for the current settings, so that notes play at once.

`server.delivery` brings each render to its requesters (level, rate, file or chunks, --play).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server import instrument_export
from server.access import Access, AccessError
from server.delivery import Delivery, Requester
from server.engine import Engine, EngineError, Note, Settings
from server.output import OutputFolder
from server.playback import Player

log = logging.getLogger("inpaint-osc")

SAMPLING = {"generate", "analyze", "note", "inpaint", "resample"}  # expensive: may be superseded or cancelled
TURN_ENDS = SAMPLING | {"image"}  # jobs that take milliseconds: each ends its client's turn (JobQueue.take)
REPLACES_ALL = {"generate", "analyze", "note"}  # their result replaces everything sampling work before did
FILL_QUIET = 0.1  # s without a request before the note cache's fill decodes a note it sampled
EXPORT_LIMIT = 4  # exports waiting or running, all clients together


class Cancelled(Exception):
    """Raised inside sampling when its job is cancelled or superseded."""


class Replies(Protocol):
    """What the worker needs from the transport (server.osc)."""

    def send(self, client: Any, address: str, *args: Any) -> None: ...
    def broadcast(self, address: str, *args: Any) -> None: ...
    def send_codemaps(self, client: Any = None) -> None: ...
    def send_settings(self, client: Any = None) -> None: ...


@dataclass(eq=False)  # compared by identity: its params hold arrays
class Job:
    kind: str
    address: str
    requesters: list[Requester]
    params: dict[str, Any] = field(default_factory=dict)
    cancelled: str = ""  # why, once cancelled

    def ids(self) -> list[int]:
        return [r.request_id for r in self.requesters]

    @cached_property  # the same while it waits: a merge keeps the mask's size
    def weight(self) -> int:
        """Bytes it holds while it waits, roughly: what bounds the queue besides the number of jobs."""
        arrays = sum(v.nbytes for v in self.params.values() if isinstance(v, np.ndarray))
        return 256 + 64 * len(self.requesters) + arrays

    def sent_by(self, client: Any) -> bool:
        return all(r.client == client for r in self.requesters)


class QueueFull(RuntimeError):
    pass


class JobQueue:
    """Pending jobs, bounded, with coalescing. The worker takes a batch (`take`), then starts its jobs one by
    one (`next`): a job taken but not started, or running, stays visible to cancellation and superseding."""

    def __init__(self, limit: int = 4096, sampling_limit: int = 64, byte_limit: int = 64 << 20):
        # Edits without sampling take microseconds: many may wait. Sampling ones take milliseconds: past
        # `sampling_limit` the oldest gives way, so the latest edit is reached within a second or so.
        self.limit, self.sampling_limit, self.byte_limit = limit, sampling_limit, byte_limit
        self.pending: list[Job] = []
        self.pending_bytes = 0  # their weight (Job.weight)
        self.taken: list[Job] = []  # taken by the worker, not started yet
        self.running: Job | None = None
        self.yielded: Any = None  # the client whose turn ended the last batch early (see next)
        self.exports: list[Job] = []  # exports waiting, oldest first
        self.exporting: Job | None = None  # the export the worker is stepping through
        self.cond = threading.Condition()
        self.interrupt: Callable[[], None] | None = None  # called when a request arrives: stops the fill's graph call
        self.last_put = 0.0  # time.monotonic() of the latest request

    def _take_back(self, gone: list[Job]) -> None:
        """Remove `gone` from the waiting jobs, and their weight from the count."""
        if len(gone) == 1:
            self.pending.remove(gone[0])  # by identity (Job has no ==), in C
        elif gone:
            ids = {id(j) for j in gone}
            self.pending = [j for j in self.pending if id(j) not in ids]
        self.pending_bytes -= sum(j.weight for j in gone)

    def _in_flight(self) -> list[Job]:
        return self.taken + [j for j in (self.running, self.exporting) if j is not None]

    def put(self, job: Job) -> list[Job]:
        """Queue `job` (one request); returns the jobs it superseded (their requesters are answered
        `/render/cancelled`). Only its own client's work is superseded or merged with.

        Latest wins under pressure: when the queue is full, the oldest waiting sampling job of the client that has
        the most waiting gives way (one client's flood never cancels another's work).
        """
        [requester] = job.requesters
        with self.cond:
            if job.kind == "export":
                return self._put_export(job, requester.client)
            self.last_put = time.monotonic()
            if self.interrupt is not None:
                self.interrupt()
            superseded: list[Job] = []
            if job.kind in REPLACES_ALL:
                superseded = [j for j in self.pending if _supersedes(job, j)]
                self._take_back(superseded)
            elif self.pending and self._merge(self.pending[-1], job):
                return []
            if len(self.pending) >= self.limit:
                raise QueueFull(f"{len(self.pending)} requests are waiting; try again when /status says ready")
            if self.pending_bytes + job.weight > self.byte_limit:
                raise QueueFull(f"the waiting requests hold over {self.byte_limit >> 20} MB; try again when ready")
            sampling = [j for j in self.pending if j.kind in SAMPLING]
            if job.kind in SAMPLING and len(sampling) >= self.sampling_limit:
                # The oldest of the client waiting on the most: a flood gives way to itself, never another's.
                held = Counter(j.requesters[0].client for j in sampling)
                victim = next(j for j in sampling if held[j.requesters[0].client] == max(held.values()))
                self._take_back([victim])
                victim.cancelled = "superseded: too many requests waiting"
                superseded.append(victim)
            if job.kind in REPLACES_ALL:
                for j in self._in_flight():  # the worker answers these when it reaches them
                    if _supersedes(job, j):
                        j.cancelled = f"superseded by {job.address}"
            self.pending.append(job)
            self.pending_bytes += job.weight
            self.cond.notify()
            return superseded

    def _put_export(self, job: Job, client: Any) -> list[Job]:
        """A client's new export replaces its own waiting or running one; EXPORT_LIMIT in all."""
        superseded = [j for j in self.exports if j.sent_by(client)]
        self.exports = [j for j in self.exports if j not in superseded]
        if self.exporting is not None and self.exporting.sent_by(client):
            self.exporting.cancelled = f"superseded by {job.address}"
        running = self.exporting is not None and not self.exporting.cancelled
        if len(self.exports) + running >= EXPORT_LIMIT:
            self.exports += superseded  # refused: what it would have replaced stays
            raise QueueFull(f"{EXPORT_LIMIT} instrument exports are waiting or running; try again when one is done")
        self.exports.append(job)
        self.cond.notify()
        return superseded

    def next_export(self) -> Job | None:
        """The oldest waiting export, now the one being stepped through (None if none waits)."""
        with self.cond:
            self.exporting = self.exports.pop(0) if self.exports else None
            return self.exporting

    def export_ended(self) -> None:
        with self.cond:
            self.exporting = None

    @staticmethod
    def _merge(last: Job, job: Job) -> bool:
        """Fold `job` into the waiting `last` of the same client when doing both equals doing the merged one."""
        if not last.sent_by(job.requesters[0].client):
            return False
        if job.kind == last.kind == "render":
            last.requesters += job.requesters
            return True
        if job.kind == last.kind == "inpaint" and job.params["layer"] == last.params["layer"]:
            last.params["mask"] = last.params["mask"] | job.params["mask"]
            last.requesters += job.requesters
            return True
        return False

    def take(self, timeout: float) -> bool:
        """Wait up to `timeout` s for work; move everything pending into the worker's batch, in turns: each
        client's jobs up to and including its first sampling job (or /image), then every client's next such turn, each
        client in the order of its oldest job (a client's own order is kept), the one that just had its turn last."""
        with self.cond:
            if not self.pending:
                self.cond.wait(timeout)
            # client → its sampling jobs already placed; the client whose turn ended the last batch goes after
            turns: Counter[Any] = Counter({self.yielded: 1} if self.yielded is not None else {})
            self.yielded = None
            keyed = []
            for i, j in enumerate(self.pending):
                client = j.requesters[0].client
                keyed.append((turns[client], i, j))
                turns[client] += j.kind in TURN_ENDS
            self.taken += [j for *_, j in sorted(keyed, key=lambda k: k[:2])]
            self.pending, self.pending_bytes = [], 0
            return bool(self.taken)

    def next(self) -> Job | None:
        """The batch's next job, now running; None when the batch is done. A batch renders its edits after its
        last job, so it ends early after a sampling job when another client's work waits: the rest goes back
        to the queue and is taken again in turns (a client's flood of notes delays another's /generate by one
        note, not by the flood)."""
        with self.cond:
            done = self.running
            if done is not None and done.kind in TURN_ENDS and self._others_wait(done.requesters[0].client):
                self.yielded = done.requesters[0].client
                self.pending[:0] = self.taken
                self.pending_bytes += sum(j.weight for j in self.taken)
                self.taken = []
            self.running = self.taken.pop(0) if self.taken else None
            return self.running

    def _others_wait(self, client: Any) -> bool:
        return any(not j.sent_by(client) for j in (*self.taken, *self.pending))

    def cancel_notes(self, client: Any, pitch: int, at: float | None = None) -> list[Job]:
        """A note-off (`at`: its time tag, else now): the waiting notes of this client's key struck before it
        will not be heard; returns them (to answer). A note tagged after it is the key's next, not its."""
        off = time.perf_counter() if at is None else at
        with self.cond:
            gone = [
                j
                for j in self.pending
                if j.kind == "note"
                and j.params["pitch"] == pitch
                and all(r.client == client and (r.at is None or r.at < off) for r in j.requesters)
            ]
            self._take_back(gone)
            return gone

    def cancel(self, client: Any, request_id: int | None) -> tuple[list[Requester], bool]:
        """`client`'s /cancel: its requests with this id (all of its requests when None), never another
        client's. Returns the waiting requests it took back (the caller answers them), and whether it found any
        in the worker's hands (the worker answers those). A job that also serves another client's request
        (merged edits) runs on for that one; this client's part of it is answered `/render/cancelled`."""

        def mine(r: Requester) -> bool:
            return r.client == client and (request_id is None or r.request_id == request_id)

        with self.cond:
            removed: list[Requester] = []
            for j in list(self.exports):
                if any(mine(r) for r in j.requesters):
                    removed += j.requesters
                    self.exports.remove(j)
            emptied = []
            for j in self.pending:
                if any(mine(r) for r in j.requesters):
                    removed += [r for r in j.requesters if mine(r)]
                    j.requesters = [r for r in j.requesters if not mine(r)]
                    if not j.requesters:
                        emptied.append(j)
            self._take_back(emptied)
            flagged = False
            for j in self._in_flight():
                ours = [r for r in j.requesters if mine(r)]
                flagged |= bool(ours)
                if ours and len(ours) == len(j.requesters):
                    j.cancelled = "cancelled by /cancel"
                else:
                    for r in ours:
                        r.cancelled = True
            return removed, flagged


def _supersedes(new: Job, old: Job) -> bool:
    """A generate, analyze or note makes its client's waiting sampling work stale, but a note leaves other notes
    alone, and another client's work is never its to replace."""
    if new.kind not in REPLACES_ALL or old.kind not in SAMPLING or new.kind == old.kind == "note":
        return False
    return old.sent_by(new.requesters[0].client)


class Worker(threading.Thread):
    def __init__(
        self,
        engine: Engine,
        queue: JobQueue,
        out: OutputFolder,
        replies: Replies,
        session: Path | None = None,
        player: Player | None = None,
        play_each: bool = False,
        rate: int | None = None,
        access: Access | None = None,
    ):
        super().__init__(name="render-worker", daemon=True)
        self.access = access  # checks an /analyze path again when it is opened
        self.engine, self.queue, self.out, self.replies, self.session = engine, queue, out, replies, session
        model_rate = engine.manifest.spectrogram.sample_rate
        self.delivery = Delivery(replies.send, out, model_rate, rate, player if play_each else None)
        self.batch_started = 0.0  # perf_counter when the current batch began: requests waited until then
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="session-saver")  # one save at a time, in order
        self.prefill: list[int] = []  # pitches still to render into the note cache when idle
        # (pitch, channel) of channel notes played stale: rendered anew when idle (the fill covers only the
        # current settings, not every channel's instrument)
        self.refresh: list[tuple[int, int | None]] = []
        self.stopping = threading.Event()
        self.status = "ready"
        self.warming = False
        self.export: instrument_export.InstrumentExport | None = None  # the one `queue.exporting` is stepping
        self.exported_to: set[Path] = set()  # the folders it exported to: the only exports a client may replace
        self.cache_announced: tuple[int, int] | None = None  # the last /note/cache sent

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._run_once()
            except Exception:  # the last line of defence: the worker outlives any bug
                self.warming = False
                log.error("worker:\n%s", traceback.format_exc())

    def _run_once(self) -> None:
        ready, total, to_fill = self.engine.fill_status()
        if (ready, total) != self.cache_announced:
            self.cache_announced = (ready, total)
            self.replies.broadcast("/note/cache", ready, total)
            if ready == total:
                log.info("note cache ready: %d notes", total)
        filling = self.engine.settings.fill  # /note/fill 0: no idle renders of notes nobody asked for
        to_fill = to_fill if filling else None
        refresh = self.refresh if filling else []
        exporting = self.export is not None or bool(self.queue.exports)
        idle_work = exporting or self.warming or bool(refresh or self.prefill) or to_fill is not None
        # Idle work goes in small slices, each after 10 ms without a request: a burst of requests is never
        # delayed by it, and a lone request waits at most one slice (about 2 ms: a sampled token, a chunk of
        # the inversion, or the few ms the decoder takes to stop, see _prefill_one).
        if self.queue.take(timeout=0.01 if idle_work else 0.1):
            self.run_batch()
            self.warming = True
        elif exporting:
            self._export_step()
        elif self.warming:
            self.warming = self.engine.warm()
        elif refresh:
            pitch, channel = refresh[0]
            if self._prefill_one(pitch, self.engine.channel_settings(channel)):
                self.refresh.remove((pitch, channel))
        elif self.prefill:
            todo = self.prefill
            try:
                pitch = todo.pop(0)
            except IndexError:  # emptied by /cancel meanwhile
                return
            if not self._prefill_one(pitch) and todo is self.prefill:
                todo.insert(0, pitch)  # stopped by a request: again later (unless a new /note/prefill came)
        elif to_fill is not None:
            self._prefill_one(to_fill)  # stopped or not, the fill picks its next pitch anew

    def stop(self) -> None:
        self.stopping.set()
        with self.queue.cond:
            self.queue.cond.notify_all()

    # ---- one batch ----------------------------------------------------------------------------------------

    def run_batch(self) -> None:
        self._set_status("busy")
        try:
            self._batch()
        finally:
            self._set_status("ready")

    def _batch(self) -> None:
        changed = False
        to_render: list[Requester] = []
        played: list[tuple[Requester, Note, dict[str, int]]] = []  # note-ons: delivered at their velocity
        timings: dict[str, float] = {}  # stage → seconds, for /render/timing and the log
        self.batch_started = time.perf_counter()
        while (job := self.queue.next()) is not None:
            if job.cancelled:
                self._cancelled(job)
                continue
            for r in job.requesters:
                self.replies.send(r.client, "/render/started", r.request_id)
            t0 = time.perf_counter()
            try:
                result = self.apply(job)
            except Cancelled:
                self._cancelled(job)
                continue
            except (EngineError, AccessError) as exc:
                self._error(job, str(exc))
                continue
            except Exception as exc:  # a bug must cost one request, never the server
                log.error("%s failed:\n%s", job.address, traceback.format_exc())
                self._error(job, f"internal error: {type(exc).__name__}: {exc}")
                continue
            timings["edit"] = timings.get("edit", 0.0) + time.perf_counter() - t0
            changed |= result == "edit" or isinstance(result, Note)
            if isinstance(result, Note):
                played += [(r, result, job.params) for r in job.requesters]
            elif result in ("edit", "render"):
                to_render += job.requesters
        # The durable save runs beside the render and the delivery (its fsyncs wait on the disk, not the CPU);
        # no state is acknowledged (/render/done of an edit, /pitch, /codemap) before it returns. A note's audio
        # is not an acknowledgement: it goes out at once (a disk's fsync can take longer than a cached note).
        saved = self._save_meanwhile(timings) if changed else _nothing
        for r, note, p in played:
            self._deliver([r], note.audio, timings, p["velocity"], p["pitch"])
            log.info("note %d: %.1f ms", r.request_id, (time.perf_counter() - r.received) * 1000)
        if played:
            saved()
            self.replies.send_settings()  # the pitch changed: after the audio, which the performer waits for
        if to_render:
            try:
                self._render(to_render, timings, saved)
            except Exception as exc:  # a failing graph: every waiting request hears of it (delivery answers its own)
                log.error("render failed:\n%s", traceback.format_exc())
                for r in to_render:
                    self.replies.send(r.client, "/error", "/render", f"render failed: {type(exc).__name__}: {exc}")
        saved()
        if changed:
            self.replies.send_codemaps()  # after the audio: what the performer waits for goes out first

    def _save_meanwhile(self, timings: dict[str, float]) -> Callable[[], None]:
        """Start saving the session on the saver thread; returns the wait for it. timings["save"] is the time
        the acknowledgements waited for it (what the render did not hide), so the stages still add up."""
        future = self._saver.submit(self._save)

        def wait() -> None:
            t0 = time.perf_counter()
            future.result()
            timings["save"] = timings.get("save", 0.0) + time.perf_counter() - t0

        return wait

    def apply(self, job: Job) -> Note | str:
        """Run one job: "edit" (state changed, render it), "render" (render only), "quiet" (nothing to render),
        or the Note a note-on played (state changed, audio ready)."""
        e, p = self.engine, job.params
        progress = self._progress(job)
        if job.kind == "generate":
            e.generate(progress)
        elif job.kind == "inpaint":
            e.inpaint(p["layer"], p["mask"], progress)
        elif job.kind == "resample":
            e.resample_bottom(progress)
        elif job.kind == "erase":
            e.erase(p["layer"], p["mask"])
        elif job.kind == "randomize":
            e.randomize(p["layer"], p["mask"])
        elif job.kind == "set":
            e.set_cells(p["layer"], p["cells"])
        elif job.kind == "analyze":
            seconds = e.analyze(self.access.recheck(p["path"]) if self.access is not None else p["path"])
            note = e.manifest.spectrogram.n_samples / e.manifest.spectrogram.sample_rate
            if abs(seconds - note) > 0.01:  # cut or padded: said, not silently
                for r in job.requesters:
                    self.replies.send(r.client, "/analyze/fitted", r.request_id, float(seconds), float(note))
        elif job.kind in ("undo", "redo"):
            getattr(e, job.kind)()
        elif job.kind == "render":
            return "render"
        elif job.kind == "note":
            return self._note(p["pitch"], progress, stale=not p.get("fresh", False), channel=p.get("channel"))
        elif job.kind == "image":
            self._image(job)
            return "quiet"
        else:
            raise EngineError(f"unknown job {job.kind}")
        return "edit"

    def _note(
        self, pitch: int, progress: Callable[[float], None], stale: bool = True, channel: int | None = None
    ) -> Note:
        """The note for `pitch` (on `channel`, with its own instrument if it has one): cached for these settings,
        else (`stale`) cached for earlier ones, rendered anew when idle (by the fill, or for a channel's
        instrument by `refresh`), else rendered now. Once channels have instruments of their own, a stale note
        must be of the same instrument: one channel never sounds like another."""
        e = self.engine
        s = e.channel_settings(channel)
        own = s.family if channel in e.channel_families else None
        note = e.cached_note(pitch, s)
        if note is None and stale:
            note = e.stale_note(pitch, s.family if e.channel_families else None)
            if note is not None and own is not None and (pitch, channel) not in self.refresh:
                self.refresh.append((pitch, channel))
        if note is None:
            note = e.make_note(pitch, progress, settings=s)
        e.play_note(pitch, note)
        return note

    def _image(self, job: Job) -> None:
        e = self.engine
        if e.last_spectrogram is None or e.rendered_version != e.version:
            e.render()
        assert e.last_spectrogram is not None
        layer = job.params["layer"]
        path, width, height = self.out.write_png(
            e.last_spectrogram, layer, job.ids()[0], e.manifest.spectrogram, e.last_edit(layer)
        )
        for r in job.requesters:
            if r.cancelled:
                self.replies.send(r.client, "/render/cancelled", r.request_id, "cancelled by /cancel")
            else:
                self.replies.send(r.client, "/image/done", r.request_id, str(path), width, height)

    def _export_step(self) -> None:
        """One slice of the current export (`server.instrument_export`): start it, one key's note, or the write.
        A request arriving stops the key being rendered between its sampled tokens (it is started again later):
        exports come after every note and edit. Only its sender's `/cancel` or next export stops it."""
        job = self.queue.exporting
        if job is None:
            job = self.queue.next_export()
            if job is None:
                return
            try:
                params = job.params
                self.export = instrument_export.InstrumentExport(
                    self.engine, params["folder"], params["rate"], params["keys"], self.exported_to
                )
            except instrument_export.ExportError as exc:
                self._export_ended(job, "/error", job.address, f"export failed, nothing was written: {exc}")
                return
        task, [r] = self.export, job.requesters
        assert task is not None

        def preempt(_fraction: float) -> None:
            if job.cancelled:
                raise Cancelled(job.cancelled)
            if self.queue.pending:
                raise Cancelled("a request arrived")

        try:
            if job.cancelled:
                raise Cancelled(job.cancelled)
            if not task.done:
                task.step(preempt)
                self.replies.send(r.client, "/export/progress", len(task.notes), len(task.keys))
                return
            sfz, sf2, keys = task.finish()
        except Cancelled as exc:
            if job.cancelled:
                self._export_ended(job, "/error", job.address, f"export stopped: {exc}; nothing was written")
            return  # preempted by a request: this key starts again later
        except (instrument_export.ExportError, OSError) as exc:
            log.error("export to %s failed: %s", job.params["folder"], exc)
            self._export_ended(job, "/error", job.address, f"export failed, nothing was written: {exc}")
        except Exception as exc:  # a bug costs this export, never the worker
            log.error("export failed:\n%s", traceback.format_exc())
            self._export_ended(job, "/error", job.address, f"internal error: {type(exc).__name__}: {exc}")
        else:
            log.info("exported %d keys to %s", keys, sfz.parent)
            self.exported_to.add(sfz.parent)
            self._export_ended(job, "/export/done", str(sfz), str(sf2), keys)

    def _export_ended(self, job: Job, address: str, *args: Any) -> None:
        self.export = None
        self.queue.export_ended()
        self.replies.send(job.requesters[0].client, address, *args)

    def _render(self, requesters: list[Requester], timings: dict[str, float], saved: Callable[[], None]) -> None:
        audio = self.engine.render(timings)
        self._deliver(requesters, audio, timings, saved=saved)
        stages = " ".join(f"{k} {v * 1000:.1f}" for k, v in timings.items())
        total = (time.perf_counter() - requesters[0].received) * 1000
        log.info("render %s: %.1f ms (%s ms)", ",".join(str(r.request_id) for r in requesters), total, stages)

    def _deliver(
        self,
        requesters: list[Requester],
        audio: np.ndarray,
        timings: dict[str, float],
        velocity: int | None = None,
        pitch: int | None = None,
        saved: Callable[[], None] | None = None,
    ) -> None:
        s, started = self.engine.settings, self.batch_started
        self.delivery.deliver(requesters, audio, s, timings, started, velocity, pitch, before_ack=saved)

    def _progress(self, job: Job) -> Callable[[float], None]:
        """Progress replies at most every 50 ms, and the cancellation check between sampled tokens."""
        last = [0.0]

        def progress(fraction: float) -> None:
            if job.cancelled:
                raise Cancelled(job.cancelled)
            now = time.perf_counter()
            if now - last[0] >= 0.05:
                last[0] = now
                for r in job.requesters:
                    self.replies.send(r.client, "/render/progress", r.request_id, float(fraction))

        return progress

    def _cancelled(self, job: Job) -> None:
        for r in job.requesters:
            self.replies.send(r.client, "/render/cancelled", r.request_id, job.cancelled or "cancelled")

    def _error(self, job: Job, message: str) -> None:
        for r in job.requesters:
            self.replies.send(r.client, "/error", job.address, message)

    def _save(self) -> None:
        if self.session is None:
            return
        try:
            self.engine.save(self.session)
        except OSError as exc:  # a full or read-only disk: keep playing, say so
            log.error("session not saved: %s", exc)
            self.replies.broadcast("/error", "", f"session not saved: {exc}")

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.replies.broadcast("/status", status)

    def _prefill_one(self, pitch: int, settings: Settings | None = None) -> bool:
        """Render one pitch into the note cache. It gives way to a request between sampled tokens and between the
        stages and chunks of its decoding and inversion, and a request arriving during its decoder call stops
        that call within a node or two (onnxruntime's terminate flag, set from the receive thread): a request
        waits about one prior step, never a whole note. The engine keeps what was done, and the fill goes on
        from there later. Decoding and inversion (50-100 ms on 2 busy cores) start only after FILL_QUIET s
        without a request: between a performer's clicks the fill samples but does not start what the next click
        would throw away. Returns whether the note is cached now (False: stopped, or the fill gave up).
        `settings`: another instrument's (a channel's) instead of the current ones."""
        if self.engine.cached_note(pitch, settings) is not None:
            return True
        stop = self.engine.bundle.stoppable()

        def preempt(_fraction: float) -> None:
            if self.queue.pending:
                raise Cancelled("a request arrived")

        def between() -> None:
            preempt(1.0)
            if time.monotonic() - self.queue.last_put < FILL_QUIET:
                raise Cancelled("requests are coming")

        def interrupt() -> None:
            stop.terminate = True

        self.queue.interrupt = interrupt
        try:
            self.engine.make_note(pitch, preempt, settings, between=between, run_options=stop)
            return True
        except Cancelled:
            return False
        except Exception as exc:
            if stop.terminate:  # onnxruntime stopped the decoder for a request: not a failure
                return False
            # never a retry loop: the fill stops and says why
            log.error("note cache fill stopped at pitch %d:\n%s", pitch, traceback.format_exc())
            self.prefill, self.refresh = [], []
            self.engine.update_settings(fill=False)
            self.replies.broadcast("/error", "/note/fill", f"note cache fill stopped: {type(exc).__name__}: {exc}")
            self.replies.send_settings()
            return False
        finally:
            self.queue.interrupt = None


def _nothing() -> None:
    pass
