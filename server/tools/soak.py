"""`inpaint-osc stress --soak MINUTES`: a set played for that long against a real server process over loopback.

Two performers share the server: a player (notes at 4-8 per second, each with a velocity and a note-off) and
an editor (cell edits and inpaints about once a second, a `/generate` every 15 s, an instrument change every
20 s). Halfway through, traffic pauses until every request has ended, the acknowledged state is read, the
server is killed and restarted on its `--session`, and the state must come back. Every request id must end
exactly once; RSS and latency are compared between the first and last windows (10 minutes, or a third of a
shorter run).
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from server.tools.latency import stats
from server.tools.launcher import ServerProcess
from server.tools.stress import codemaps_of

WINDOW_S = 600.0  # the first and last ten minutes
ENDINGS = ("/render/done", "/render/cancelled")


@dataclass
class Performer:
    """One client of the set: what it sent (id → (kind, time sent)) and how each request ended."""

    name: str
    client: Any  # server.client.OscClient
    first_id: int
    sent: dict[int, tuple[str, float]] = field(default_factory=dict)
    ended: dict[int, tuple[str, float]] = field(default_factory=dict)  # id → (ending, time)
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, kind: str, address: str, *args: Any) -> int:
        with self.lock:
            request_id = self.first_id + len(self.sent)
            self.sent[request_id] = (kind, time.monotonic())
        self.client.send(address, *args, request_id)
        return request_id

    def read(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                reply = self.client.receive(0.1)
            except OSError:  # the socket closed under a restart
                return
            if reply is None:
                continue
            address, args = reply
            if address == "/error":
                self.errors.append(f"{args[0]}: {args[1]}"[:300])
            elif address in ENDINGS:
                with self.lock:
                    if args[0] in self.ended:
                        self.duplicates += 1
                    self.ended[args[0]] = (address, time.monotonic())

    def open(self) -> list[int]:
        with self.lock:
            return [i for i in self.sent if i not in self.ended]


def _player(p: Performer, pitches: tuple[int, int], rng: np.random.Generator, go: threading.Event,
            stop: threading.Event) -> None:  # fmt: skip
    """Notes at 4-8 per second, velocity 30-127, each released 0.1-0.5 s later."""
    offs: list[tuple[float, int]] = []
    while not stop.is_set():
        if not go.wait(0.1):
            continue
        pitch = int(rng.integers(pitches[0], pitches[1] + 1))
        p.send("note", "/note", pitch, int(rng.integers(30, 128)))
        offs.append((time.monotonic() + float(rng.uniform(0.1, 0.5)), pitch))
        wait = float(rng.uniform(1 / 8, 1 / 4))
        end = time.monotonic() + wait
        while (now := time.monotonic()) < end:
            for due, off in [o for o in offs if o[0] <= now]:
                p.client.send("/note", off, 0)  # no id: a note-off has no ending
                offs.remove((due, off))
            time.sleep(min(0.01, max(0.0, end - now)))


def _editor(p: Performer, families: int, rng: np.random.Generator, go: threading.Event,
            stop: threading.Event) -> None:  # fmt: skip
    """An edit about once a second (cells set or a cell inpainted, either layer), a /generate every 15 s, an
    instrument change every 20 s."""
    last_generate = last_instrument = time.monotonic()
    while not stop.is_set():
        if not go.wait(0.1):
            continue
        now = time.monotonic()
        if now - last_generate >= 15:
            p.send("generate", "/generate")
            last_generate = now
        elif now - last_instrument >= 20:
            p.client.send("/instrument", int(rng.integers(families)))  # a setting: echoed, no ending
            last_instrument = now
        elif rng.random() < 0.5:
            layer, (times, freqs) = ("top", (4, 32)) if rng.random() < 0.5 else ("bottom", (8, 64))
            t, f = int(rng.integers(times)), int(rng.integers(freqs))
            p.send("edit", "/codemap/set", layer, t, f, int(rng.integers(64)))
        else:
            t, f = int(rng.integers(8)), int(rng.integers(64))
            p.send("edit", "/inpaint", "bottom", t, t + 1, f, f + 1)
        time.sleep(float(rng.uniform(0.5, 1.5)))


def _settle(performers: list[Performer], timeout: float = 180.0) -> list[int]:
    """Wait until every request sent has ended; the ids still open after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.open() for p in performers):
            return []
        time.sleep(0.05)
    return [i for p in performers for i in p.open()]


def _state(server: ServerProcess) -> dict[str, Any]:
    c = server.client()
    c.send("/state")
    pitch = c.wait_for("/pitch", timeout=10)[1][0]
    family = c.wait_for("/instrument", timeout=10)[1][0]
    maps = codemaps_of(c)
    c.close()
    return {"pitch": pitch, "family": family, **maps}


def _progress_line(performers: list[Performer], start: float, elapsed: float, rss_mb: float) -> dict[str, Any]:
    """The last minute: requests sent and ended so far, and the p50/p99 of what was sent in that minute."""
    line: dict[str, Any] = {"minute": round(elapsed / 60, 1), "rss_mb": round(rss_mb)}
    for p in performers:
        with p.lock:
            recent = [
                (p.ended[i][1] - sent) * 1000
                for i, (_, sent) in p.sent.items()
                if sent - start >= elapsed - 60 and i in p.ended and p.ended[i][0] == "/render/done"
            ]
            line[p.name] = {"sent": len(p.sent), "ended": len(p.ended), "errors": len(p.errors)}
        if recent:
            line[p.name].update(p50_ms=round(float(np.percentile(recent, 50)), 1),
                                p99_ms=round(float(np.percentile(recent, 99)), 1))  # fmt: skip
    return line


def soak(server: ServerProcess, minutes: float, seed: int = 0, flat_limits: bool = True) -> tuple[dict, list[str]]:
    """Play the set for `minutes`; figures and failures. `flat_limits` holds the last window's p99 to twice the
    first's and its RSS to 1.25 x the first's + 50 MB (the tests, a few seconds long, report them only)."""
    rng = np.random.default_rng(seed)
    total_s = minutes * 60
    window = min(WINDOW_S, total_s / 3)
    info_client = server.client()
    info_client.send("/model/info")
    info = info_client.wait_for("/model/info", timeout=10)[1]
    info_client.close()
    pitches, families = (int(info[9]), int(info[10])), len(info) - 11
    performers = [Performer("player", server.client(), 1), Performer("editor", server.client(), 1)]
    go, stop = threading.Event(), threading.Event()
    readers = [threading.Thread(target=p.read, args=(stop,), daemon=True) for p in performers]
    players = [
        threading.Thread(target=_player, args=(performers[0], pitches, rng, go, stop), daemon=True),
        threading.Thread(target=_editor, args=(performers[1], families, np.random.default_rng(seed + 1), go, stop),
                         daemon=True),
    ]  # fmt: skip
    for t in readers + players:
        t.start()
    failures: list[str] = []
    rss: list[tuple[float, float]] = []  # (seconds since the start, MB)
    start = time.monotonic()
    restarted_at: float | None = None
    restart: dict[str, Any] = {}
    go.set()
    next_report = 60.0
    while (elapsed := time.monotonic() - start) < total_s:
        rss.append((elapsed, server.rss_mb()))
        if elapsed >= next_report:  # a line a minute on stderr: what a run stopped early still tells
            next_report += 60.0
            print(json.dumps(_progress_line(performers, start, elapsed, rss[-1][1])), file=sys.stderr, flush=True)
        if restarted_at is None and elapsed >= total_s / 2:
            go.clear()  # the performers pause; what they sent must end before the kill
            still_open = _settle(performers)
            if still_open:
                failures.append(f"before the restart, {len(still_open)} requests had no ending after 180 s")
            before = _state(server)
            server.kill()
            t0 = time.perf_counter()
            server.restart()
            restart["to_pong_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            for p in performers:  # a new process: it knows no reply ports yet
                p.client.send("/reply_port", p.client.reply_port)
            after = _state(server)
            restart["state_kept"] = before == after
            if before != after:
                failures.append("the acknowledged state did not come back after the restart")
            restarted_at = time.monotonic() - start
            go.set()
        time.sleep(1.0)
    go.clear()
    stop_players = time.monotonic()
    still_open = _settle(performers)
    stop.set()
    for t in readers + players:
        t.join(5)
    if still_open:
        failures.append(f"{len(still_open)} requests never ended: ids {still_open[:10]}")
    for p in performers:
        if p.duplicates:
            failures.append(f"{p.name}: {p.duplicates} requests ended twice")
        if p.errors:
            failures.append(f"{p.name}: {len(p.errors)} /error replies, e.g. {p.errors[:3]}")
        p.client.close()
    figures: dict[str, Any] = {
        "minutes": round((stop_players - start) / 60, 2),
        "window_minutes": round(window / 60, 2),
        "restart_at_minutes": round(restarted_at / 60, 2) if restarted_at is not None else None,
        "restart": restart,
    }
    first = lambda t: t < window  # noqa: E731
    last = lambda t: t >= (stop_players - start) - window  # noqa: E731
    for p in performers:
        by_kind: Counter[str] = Counter(kind for kind, _ in p.sent.values())
        endings: Counter[str] = Counter(ending for ending, _ in p.ended.values())
        figures[p.name] = {"requests": len(p.sent), "by_kind": dict(by_kind), "endings": dict(endings)}
        for kind in sorted(by_kind):
            lat: dict[str, list[float]] = {
                "first": [],
                "last": [],
            }  # ms from sending to /render/done, by when it was sent
            for request_id, (k, sent) in p.sent.items():
                ending = p.ended.get(request_id)
                if k != kind or ending is None or ending[0] != "/render/done":
                    continue
                for name, inside in (("first", first), ("last", last)):
                    if inside(sent - start):
                        lat[name].append((ending[1] - sent) * 1000)
            figures[p.name][kind] = {name: stats(v) if v else None for name, v in lat.items()}
            f, la = figures[p.name][kind]["first"], figures[p.name][kind]["last"]
            if flat_limits and f and la and la["p99_ms"] > 2 * f["p99_ms"] + 50:
                failures.append(
                    f"{p.name} {kind}: p99 {f['p99_ms']} ms in the first window, {la['p99_ms']} in the last"
                )
    rss_first = [mb for t, mb in rss if first(t)]
    rss_last = [mb for t, mb in rss if last(t)]
    figures["rss_mb"] = {
        "first_window": {"median": round(float(np.median(rss_first))), "max": round(max(rss_first))},
        "last_window": {"median": round(float(np.median(rss_last))), "max": round(max(rss_last))},
        "max": round(max(mb for _, mb in rss)),
    }
    if flat_limits and max(rss_last) > 1.25 * max(rss_first) + 50:
        failures.append(
            f"memory grew: {max(rss_first):.0f} MB at most in the first window, {max(rss_last):.0f} MB in the last"
        )
    return figures, failures


def soak_markdown(r: dict[str, Any], command: str, note: str = "") -> list[str]:
    """The soak's section of docs/reliability.md."""
    f = r["soak"]
    lines = [SECTION, "", f"Written by `{command}` on bundle `{r['bundle']}`{note}.", ""]
    lines += [
        f"{f['minutes']} minutes played; the server was killed and restarted on its session at minute "
        f"{f['restart_at_minutes']} (restart to `/pong` {f['restart'].get('to_pong_ms')} ms; acknowledged state "
        f"back: {f['restart'].get('state_kept')}). Windows compared: the first and last {f['window_minutes']} "
        "minutes.",
        "",
        "| client | requests | endings | kind | p50 / p99 first window (ms) | p50 / p99 last window (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("player", "editor"):
        p = f[name]
        for kind in sorted(p["by_kind"]):
            a, b = p[kind]["first"], p[kind]["last"]
            cell = lambda s: f"{s['p50_ms']} / {s['p99_ms']} (n {s['n']})" if s else "-"  # noqa: E731
            lines.append(f"| {name} | {p['requests']} | {p['endings']} | {kind} | {cell(a)} | {cell(b)} |")
    rss = f["rss_mb"]
    lines += [
        "",
        f"Server RSS: first window median {rss['first_window']['median']} MB (max {rss['first_window']['max']}), "
        f"last window median {rss['last_window']['median']} MB (max {rss['last_window']['max']}); the highest "
        f"sample {rss['max']} MB. Latency is from sending to `/render/done`; superseded requests end "
        "`/render/cancelled` (a note supersedes waiting edits and generates, by design) and count in the endings, "
        "not in the latencies.",
        "",
    ]
    return lines


SECTION = "## An hour on stage (soak)"


def run_soak(bundle: Path, minutes: float, seed: int = 0, markdown: Path | None = None) -> dict[str, Any]:
    """`inpaint-osc stress --soak MINUTES`: the soak on a server of its own; with `markdown`, its section is
    written into that file (replacing an earlier soak section, keeping the rest)."""
    result: dict[str, Any] = {"bundle": str(bundle), "soak_minutes": minutes}
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(bundle, Path(tmp), quiet=True) as server:
        figures, failures = soak(server, minutes, seed)
    result.update(soak=figures, failures={"soak": failures} if failures else {}, passed=not failures)
    if markdown is not None:
        command = f"inpaint-osc stress --soak {minutes:g} --markdown {markdown}"
        section = "\n".join(soak_markdown(result, command))
        text = markdown.read_text() if markdown.exists() else ""
        if SECTION in text:
            head, rest = text.split(SECTION, 1)
            tail = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
            text = head + section + ("\n" + tail if tail else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        markdown.write_text(text)
    return result
