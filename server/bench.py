"""Latency of the live instrument over loopback OSC: a server process, this process as the client.

Every figure is a round trip from sending the request to receiving its reply; for renders the WAV must be on
disk when `/render/done` arrives or the run fails. `inpaint-train bench --server` adds the torch-eager
baseline on the same weights (this module never imports torch).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.client import OscClient

PAUSE = 0.05  # s between edits, as between a performer's clicks; the idle worker uses it to warm its caches


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, out: Path, threads: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "serve", "--bundle", str(bundle), "--port", str(port)]
    # With a session, as on stage: every edit is saved before it is acknowledged, and that save is timed too.
    cmd += ["--out", str(out), "--session", str(out / "session.npz"), "--threads", str(threads), "--quiet", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, port


def wait_for_pong(proc: subprocess.Popen, port: int, timeout: float = 60.0) -> OscClient:
    """Ping until the server answers; raises with the server's stderr if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        client = OscClient(port=port, announce=False)
        client.send("/reply_port", client.reply_port)
        if client.receive(0.2) is not None:
            return client
        client.close()
    raise TimeoutError(f"no /pong from port {port} within {timeout} s")


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


def run_bench(bundle: Path, repeats: int = 50, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc, port = start_server(bundle, Path(tmp), threads)
        try:
            client = wait_for_pong(proc, port)
            cold = (time.perf_counter() - t0) * 1000
            round_trip(client, "/generate")  # warm-up: first calls allocate
            result: dict[str, Any] = {
                "bundle": str(bundle),
                "threads": threads,
                "pause_between_edits_s": PAUSE,
                "cold_start_ms": round(cold, 1),
            }
            result["ping"] = stats([round_trip(client, "/ping", until=("/pong",)) for _ in range(200)])
            result["inpaint_top_cell"] = stats(
                [
                    round_trip(client, "/inpaint", "top", int(t), int(t) + 1, int(f), int(f) + 1, pause=PAUSE)
                    for t, f in zip(rng.integers(0, 4, repeats), rng.integers(0, 32, repeats), strict=True)
                ]
            )
            result["inpaint_bottom_cell"] = stats(
                [
                    round_trip(client, "/inpaint", "bottom", int(t), int(t) + 1, int(f), int(f) + 1, pause=PAUSE)
                    for t, f in zip(rng.integers(0, 8, repeats), rng.integers(0, 64, repeats), strict=True)
                ]
            )
            n = max(3, repeats // 5)
            result["generate"] = stats([round_trip(client, "/generate") for _ in range(n)])
            result["ping_during_generate"] = stats(
                sum((pings_during_render(client, "/generate") for _ in range(3)), [])
            )
            round_trip(client, "/note", 60, 100)  # fills the cache for this pitch and instrument
            result["note_cached"] = stats([round_trip(client, "/note", 60, 100, pause=PAUSE) for _ in range(repeats)])
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return result
