"""`inpaint-osc bench --before CHECKOUT`: this code against another checkout's, in one run.

Two servers, one per checkout, each on its own bundle, run side by side and are asked in turn: every repetition
sends the same request to one, then the other (which goes first alternates), so both meet the same machine,
the same load and the same drift. Idle, a server waits without work (`--no-fill`), so neither slows the other.
Reported per operation: each side's p50 and p99 round trip and the after/before ratios.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from server.tools.latency import PAUSE, operations, round_trip, stats, write_test_note
from server.tools.launcher import ServerProcess

SIDES = ("before", "after")


def run_before_after(
    before_code: Path,
    before_bundle: Path | None,
    after_bundle: Path | None,
    repeats: int = 30,
    threads: int = 2,
    seed: int = 0,
    only: tuple[str, ...] = (),
    settings: tuple[tuple[str, float], ...] = (),
) -> dict[str, Any]:
    """`only`: the operations to measure (names of `server.tools.latency.operations`); empty: all. `settings`:
    (address, value) sent to both sides first, e.g. ("/harmonic", 1.0) where their defaults differ: what a
    setting changes in the sound can change the work (a redrawn top cell that keeps its code leaves the bottom
    map alone), and a code change is compared on the same work."""
    known = list(operations(np.random.default_rng(), Path()))
    unknown = set(only) - set(known)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}: choose from {', '.join(known)}")
    before_bundle = before_bundle or before_code / "server" / "default_bundle"
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            "before": ServerProcess(before_bundle, Path(tmp) / "before", "--no-fill", threads=threads, quiet=True,
                                    code=before_code.resolve()),
            "after": ServerProcess(after_bundle, Path(tmp) / "after", "--no-fill", threads=threads, quiet=True),
        }  # fmt: skip
        try:
            clients = {side: server.client() for side, server in servers.items()}
            for c in clients.values():
                for address, value in settings:
                    c.send(address, value)
                    c.wait_for(address, timeout=10)  # its echo
                round_trip(c, "/note", 60, 100)  # the cached-note figure needs the note in the cache
            # The same requests on both sides: one generator per side from one seed.
            ops = {
                side: operations(np.random.default_rng(seed), write_test_note(servers[side].read_dir / "note.wav"))
                for side in SIDES
            }
            names = [name for name in ops["after"] if not only or name in only]
            times: dict[str, dict[str, list[float]]] = {name: {side: [] for side in SIDES} for name in names}
            for name in times:
                n = repeats if "cell" in name or name == "note_cached" else max(4, repeats // 2)
                for i in range(n):
                    for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                        address, *args = ops[side][name]()
                        times[name][side].append(round_trip(clients[side], address, *args, pause=PAUSE))
            result: dict[str, Any] = {"before": str(before_code), "repeats": repeats, "threads": threads,
                                      "settings": dict(settings)}  # fmt: skip
            for name, by_side in times.items():
                before, after = stats(by_side["before"]), stats(by_side["after"])
                result[name] = {
                    "before": before,
                    "after": after,
                    "p50_ratio": round(after["p50_ms"] / before["p50_ms"], 3),
                    "p99_ratio": round(after["p99_ms"] / before["p99_ms"], 3),
                }
            return result
        finally:
            for server in servers.values():
                server.stop()


def before_after_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Before: `{result['before']}`; after: this checkout. {result['repeats']} requests per edit, alternating"
        + (f"; both at {result['settings']}." if result["settings"] else "."),
        "",
        "| operation | before p50 / p99 (ms) | after p50 / p99 (ms) | ratio p50 / p99 |",
        "|---|---|---|---|",
    ]
    for name, row in result.items():
        if isinstance(row, dict) and "p50_ratio" in row:
            b, a = row["before"], row["after"]
            lines.append(
                f"| {name} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} "
                f"| {row['p50_ratio']:.2f} / {row['p99_ratio']:.2f} |"
            )
    return "\n".join(lines) + "\n"
