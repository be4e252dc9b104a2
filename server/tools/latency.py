"""Latency of the live instrument over loopback OSC (`inpaint-osc bench`): a server process, this process as the
client.

Every figure is a round trip from sending the request to receiving its reply; for renders the WAV must be on
disk when `/render/done` arrives or the run fails. `inpaint-train bench --server` adds the torch-eager
baseline on the same weights (this module never imports torch).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from server import level
from server.bundle import Bundle
from server.client import OscClient
from server.protocol import TIMING_STAGES
from server.tools.launcher import ServerProcess

PAUSE = 0.05  # s between edits, as between a performer's clicks; the idle worker uses it to warm its caches


def stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def round_trip(
    client: OscClient, address: str, *args: Any, until: tuple[str, ...] = ("/render/done",), pause: float = 0.0
) -> float:
    """ms from sending to the reply; a render's WAV must already exist when its reply arrives. `pause` s of
    silence come first (not timed): a performer's clicks are tens of milliseconds apart, not back to back."""
    time.sleep(pause)
    t0 = time.perf_counter()
    client.send(address, *args)
    reply, values = client.wait_for(*until, "/error", timeout=60)
    elapsed = (time.perf_counter() - t0) * 1000
    if reply == "/error":
        raise RuntimeError(f"{address} {args}: {values}")
    if reply == "/render/done" and not os.path.isfile(values[1]):
        raise RuntimeError(f"{values[1]} was not on disk at /render/done")
    return elapsed


def pings_during_render(client: OscClient, address: str, *args: Any, interval: float = 0.005) -> list[float]:
    """Ping every `interval` s while `address` renders; the pings' round trips."""
    client.send(address, *args)
    rtts, done = [], False
    while not done:
        t0 = time.perf_counter()
        client.send("/ping")
        while True:
            reply = client.receive(5.0)
            if reply is None:
                raise TimeoutError("no /pong during a render")
            if reply[0] == "/pong":
                rtts.append((time.perf_counter() - t0) * 1000)
                break
            done |= reply[0] in ("/render/done", "/error")
        time.sleep(interval)
    return rtts


def write_test_note(path: Path, sample_rate: int = 16_000, seconds: float = 4.0) -> Path:
    """A 4 s harmonic tone with a decay (what /analyze reads in the benchmark): PCM 16-bit WAV."""
    import soundfile as sf

    t = np.arange(int(sample_rate * seconds)) / sample_rate
    tone = sum(np.sin(2 * np.pi * 261.63 * k * t) / k for k in range(1, 8)) * np.exp(-t) * 0.3
    sf.write(str(path), tone.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


def timed(client: OscClient, address: str, *args: Any, pause: float = PAUSE) -> tuple[float, dict[str, float]]:
    """(round trip ms, server stages ms + 'osc': the rest of the round trip) of one render request; needs
    `/timing 1` sent by this client."""
    rtt = round_trip(client, address, *args, pause=pause)
    _, values = client.wait_for("/render/timing", timeout=10)
    stages = dict(zip(TIMING_STAGES, values[1:], strict=True))
    stages["osc"] = max(0.0, rtt - stages["server"])
    return rtt, stages


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water resident memory (Linux's VmHWM), None where /proc is absent."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def operations(rng: np.random.Generator, note: Path) -> dict[str, Any]:
    """name → a function giving (address, args) of one repetition: the issue's list, in order."""
    return {
        "inpaint_top_cell": lambda: ("/inpaint", "top", *_cell(rng, 4, 32)),
        "inpaint_bottom_cell": lambda: ("/inpaint", "bottom", *_cell(rng, 8, 64)),
        "inpaint_time_range": lambda: ("/inpaint", "top", 0, 2, 0, 32),  # the first two seconds
        "inpaint_frequency_band": lambda: ("/inpaint", "top", 0, 4, 0, 8),  # the lowest quarter
        "resample_bottom": lambda: ("/resample/bottom",),
        "generate": lambda: ("/generate",),
        "analyze_4s_file": lambda: ("/analyze", str(note)),
        "note_cached": lambda: ("/note", 60, 100),
    }


FAMILY_PITCHES = (  # ten generates across families and registers: the level check
    ("bass", 36), ("brass", 55), ("flute", 79), ("guitar", 52), ("keyboard", 60),
    ("mallet", 72), ("organ", 48), ("reed", 62), ("string", 57), ("vocal", 64),
)  # fmt: skip
MELODY = (60, 62, 64, 65, 67, 69, 71, 72)  # eight notes, 125 ms apart: 8 per second


def held_db(wav: str) -> float:
    """RMS of a WAV's held part (its first 3 s), dBFS."""
    import soundfile as sf

    return level.held_rms_db(*sf.read(wav, dtype="float32"))


def playability(port: int, rounds: int = 5) -> dict[str, Any]:
    """What a performer hears and feels: the level of ten generates across families, velocity 127 against 30,
    the note cache's background fill, melodies of cached notes at 8 per second (none may be cancelled), and a
    cached note delivered at 48 kHz against 16 kHz (the resampling's cost)."""
    c = OscClient(port=port)
    out: dict[str, Any] = {}
    levels = []
    for family, pitch in FAMILY_PITCHES:
        c.send("/instrument", family)
        c.send("/pitch", pitch)
        round_trip(c, "/generate")
        c.send("/render")
        _, done = c.wait_for("/render/done", timeout=60)
        levels.append(round(held_db(done[1]), 2))
    median = float(np.median(levels))
    out["generate_levels_db"] = levels
    out["generate_level_max_off_median_db"] = round(max(abs(x - median) for x in levels), 2)
    loud_soft = []
    for velocity in (127, 30):
        c.send("/note", 60, velocity)
        loud_soft.append(held_db(c.wait_for("/render/done", timeout=60)[1][1]))
    out["velocity_127_over_30_db"] = round(loud_soft[0] - loud_soft[1], 2)
    t0 = time.perf_counter()
    c.send("/note/fill", 1)
    while (cache := c.wait_for("/note/cache", timeout=600)[1])[0] < cache[1]:
        pass
    out["fill_s"] = round(time.perf_counter() - t0, 1)
    out["fill_notes"] = cache[1]
    server_ms, cancelled, next_id = [], 0, 10_000
    for _ in range(rounds):
        sent = {}
        for pitch in MELODY:
            c.send("/note", pitch, 100, next_id)
            sent[next_id] = pitch
            next_id += 1
            time.sleep(0.125)
        while sent:
            reply, args = c.wait_for("/render/done", "/render/cancelled", timeout=60)
            if args[0] in sent:
                del sent[args[0]]
                cancelled += reply == "/render/cancelled"
                if reply == "/render/done":
                    server_ms.append(1000 * args[4])
    out["melody"] = {"notes": rounds * len(MELODY), "cancelled": cancelled, **stats(server_ms)}
    for rate in (16_000, 48_000):
        c.send("/render/rate", rate)
        c.wait_for("/render/rate")
        out[f"note_cached_{rate // 1000}k"] = stats([round_trip(c, "/note", 60, 100, pause=PAUSE) for _ in range(20)])
    c.close()
    return out


def edits_during_fill(port: int, blocks: int = 10, per_block: int = 10, seed: int = 0) -> dict[str, Any]:
    """One-cell top inpaints (`PAUSE` s apart) with the note cache's fill running against the fill off
    (`/note/fill 0`, what `serve --no-fill` sets), in alternating blocks on one server, so both meet the same
    machine. Each block starts from a new `/seed`: every note of the cache is missing again, so the fill has
    work throughout. Returns both round trips' statistics, their p50 and p99 ratios, and the notes the fill
    completed during the fill blocks."""
    rng = np.random.default_rng(seed)
    c = OscClient(port=port)
    times: dict[str, list[float]] = {"fill": [], "no_fill": []}
    filled = 0
    for block in range(2 * blocks):
        mode = "fill" if block % 2 == 0 else "no_fill"
        c.send("/note/fill", int(mode == "fill"))
        c.send("/seed", 1000 + block)
        c.drain(0.3)  # the fill starts on the new seed's first note
        for _ in range(per_block):
            times[mode].append(round_trip(c, "/inpaint", "top", *_cell(rng, 4, 32), pause=PAUSE))
        if mode == "fill":
            c.send("/state")
            filled += c.wait_for("/note/cache", timeout=10)[1][0]  # the new seed's notes made during the block
    c.send("/note/fill", 1)
    c.close()
    fill, no_fill = stats(times["fill"]), stats(times["no_fill"])
    return {
        "fill": fill,
        "no_fill": no_fill,
        "p50_ratio": round(fill["p50_ms"] / no_fill["p50_ms"], 3),
        "p99_ratio": round(fill["p99_ms"] / no_fill["p99_ms"], 3),
        "notes_filled_during_fill_blocks": filled,
    }


def run_fill_bench(bundle: Path, blocks: int = 10, per_block: int = 10, threads: int = 2) -> dict[str, Any]:
    """`inpaint-osc bench --fill`: `edits_during_fill` alone, on a server of its own (fill on, as on stage)."""
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(bundle, Path(tmp), threads=threads, quiet=True) as server:
        round_trip(server.client(), "/generate")  # warm-up: first calls allocate
        return {"bundle": str(bundle), "threads": threads, "pause_between_edits_s": PAUSE,
                **edits_during_fill(server.port, blocks, per_block)}  # fmt: skip


def session_save_cost(bundle: Path, folder: Path, edits: int = 50, seed: int = 0) -> dict[str, Any]:
    """What saving the session costs per edit, durable (the file fsynced before its rename, the folder after:
    what the server does) against not (the same write and rename alone), alternating on one engine in this
    process, so both see the same disk at the same time. The server saves on its worker and settings-saver
    threads, never on the receive thread."""
    from server.engine import Engine

    engine = Engine(Bundle(bundle, threads=1))
    rng = np.random.default_rng(seed)
    times: dict[str, list[float]] = {"fsync": [], "no_fsync": []}
    for i in range(2 * edits):
        engine.set_cells("bottom", [(int(rng.integers(8)), int(rng.integers(64)), int(rng.integers(8)))])
        durable = i % 2 == 0
        t0 = time.perf_counter()
        engine.save(folder / "save-cost.npz", durable=durable)
        times["fsync" if durable else "no_fsync"].append((time.perf_counter() - t0) * 1000)
    return {k: stats(v) for k, v in times.items()}


HEAVY = ("inpaint_time_range", "inpaint_frequency_band", "resample_bottom", "generate")  # fewer repetitions


def _cell(rng: np.random.Generator, times: int, freqs: int) -> tuple[int, int, int, int]:
    t, f = int(rng.integers(times)), int(rng.integers(freqs))
    return t, t + 1, f, f + 1


def run_bench(
    bundle: Path, repeats: int = 50, threads: int = 2, seed: int = 0, provider: str = "cpu"
) -> dict[str, Any]:
    """Every figure of `inpaint-osc bench`: p50/p95/p99 round trips, median stages, peak RSS, cold start."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        # With a session, as on stage: every edit is saved before it is acknowledged, and that save is timed too.
        # The note cache's background fill would compete with the edits measured here: it is measured on its own,
        # after them (playability, edits_during_fill).
        server = ServerProcess(bundle, Path(tmp), "--provider", provider, "--no-fill", threads=threads, quiet=True)
        try:
            cold = (time.perf_counter() - t0) * 1000
            note = write_test_note(server.read_dir / "note.wav")
            client = server.client()
            port = server.port
            client.send("/timing", 1)
            timed(client, "/generate")  # warm-up: first calls allocate
            timed(client, "/note", 60, 100)  # fills the note cache for this pitch and instrument
            result: dict[str, Any] = {
                "bundle": str(bundle),
                "provider": provider,
                "threads": threads,
                "pause_between_edits_s": PAUSE,
                "cold_start_ms": round(cold, 1),
                "ping": stats([round_trip(client, "/ping", until=("/pong",)) for _ in range(200)]),
            }
            for name, request in operations(rng, note).items():
                runs = [timed(client, *request()) for _ in range(max(3, repeats // 2) if name in HEAVY else repeats)]
                result[name] = {
                    **stats([rtt for rtt, _ in runs]),
                    "stages_ms": {k: round(float(np.median([s[k] for _, s in runs])), 2) for k in runs[0][1]},
                }
            result["ping_during_generate"] = stats(
                sum((pings_during_render(client, "/generate") for _ in range(3)), [])
            )
            result["playability"] = playability(port, rounds=max(1, repeats // 10))
            result["edits_during_fill"] = edits_during_fill(port, blocks=max(2, repeats // 5))
            result["server_peak_rss_mb"] = peak_rss_mb(server.proc.pid)
            result["session_save_per_edit"] = session_save_cost(bundle, Path(tmp))
        finally:
            server.stop()
    return result
