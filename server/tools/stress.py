"""The reliability suite (`inpaint-osc stress`): fuzz, flood, crash recovery, bad files and a hostile client's
attacks (`server.tools.attacks`) against a real server
process over loopback UDP. Each check returns its figures and a list of failures (empty when it passed);
`SCALES` sets the sizes: `ci` runs in seconds, `full` is the issue's (100 000 datagrams, 2 000 edits/s for 30 s).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from server import protocol
from server.client import OscClient
from server.files import shown
from server.tools.attacks import run_attacks
from server.tools.latency import peak_rss_mb, stats, write_test_note
from server.tools.launcher import ServerProcess, free_port
from server.wire import encode

SCALES: dict[str, dict[str, Any]] = {
    "ci": {"fuzz": 3_000, "flood_rate": 1_000, "flood_seconds": 2.0, "crash_rounds": 1},
    "full": {"fuzz": 100_000, "flood_rate": 2_000, "flood_seconds": 30.0, "crash_rounds": 5},
}
PING_P99_LIMIT_MS = 20.0  # during a flood


def codemaps_of(client: OscClient, quiet: float = 0.05) -> dict[str, list[int]]:
    """Both codemaps as code lists, the newest version of each. Every client also receives the pushes that
    follow each render, interleaved with replies (they come from two threads): so every /codemap that arrives
    until `quiet` s pass without one is read, and the highest version of each layer wins. Older replies are
    drained first: a full socket buffer would drop the answer."""
    client.drain(0.0)
    client.send("/codemap/get", "top")
    client.send("/codemap/get", "bottom")
    newest: dict[str, tuple[int, list[int]]] = {}
    deadline = time.monotonic() + 30
    while True:
        reply = client.receive(quiet if len(newest) == 2 else max(deadline - time.monotonic(), 0.001))
        if reply is None:
            if len(newest) < 2:
                raise TimeoutError("no /codemap reply")
            return {layer: codes for layer, (_, codes) in newest.items()}
        if reply[0] == "/codemap":
            layer, version = reply[1][0], reply[1][1]
            if layer not in newest or version >= newest[layer][0]:
                newest[layer] = (version, reply[1][4:])  # codes after layer, version, rows, cols


# ---------------------------------------------------------------- fuzz


# Valid messages the fuzzer truncates and mutates: cheap ones only, so that no mutation that happens to stay
# valid starts a render or changes the codemaps.
SEEDS = [
    ("/ping", ()),
    ("/pitch", (60,)),
    ("/temperature", (1.0,)),
    ("/top_p", (0.8,)),
    ("/guidance", (2.0,)),
    ("/harmonic", (1.0,)),
    ("/seed", (3,)),
    ("/instrument", ("keyboard",)),
    ("/codemap/get", ("top",)),
    ("/timing", (0,)),
    ("/render/mode", ("file",)),
    ("/note/mode", ("generate",)),
    ("/cc/map", (1, "temperature")),
]
ODD_VALUES: list[Any] = [2**31 - 1, -(2**31), -1, 0, 10**9, math.nan, math.inf, -math.inf, 1e38, "", "x" * 500]


def _raw_message(address: str, tags: str, payload: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (4 - len(b) % 4)

    return pad(address.encode()) + pad(("," + tags).encode()) + payload


def invalid_message(rng: np.random.Generator) -> tuple[str, list[Any]]:
    """A well-formed message the address table refuses: unknown address, too few arguments, a wrong type, or a
    value out of range (huge, negative, NaN, infinite). Checked against `protocol.parse` before it is sent."""
    while True:
        address = protocol.INBOUND[int(rng.integers(len(protocol.INBOUND)))]
        choice = int(rng.integers(4))
        args: list[Any] = [_valid_value(a) for a in address.args] + [_valid_value(a) for a in address.repeat]
        if choice == 0:
            path = address.path + "/" + "".join(rng.choice(list("abcxyz"), 5))
            return path, args
        if choice == 1 and address.args:
            args = args[: int(rng.integers(len(address.args)))]
        elif args:
            i = int(rng.integers(len(args)))
            args[i] = "text" if choice == 2 else ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        try:
            protocol.parse(address.path, args)
        except protocol.ProtocolError:
            return address.path, args


def _valid_value(arg: protocol.Arg) -> Any:
    if arg.kind == "s":
        return "top"
    if arg.kind == "f":
        return float(arg.low if arg.low is not None else 0.5)
    return int(arg.low if arg.low is not None else 0)


NOISE_KINDS = ("random bytes", "truncated", "bytes flipped", "bad type tags", "oversize", "bundle")


def noise(rng: np.random.Generator, i: int) -> bytes:
    """One datagram of the fuzz's other kinds, by turn: random bytes, truncated or byte-flipped valid messages,
    bad type tags, oversize packets, bundles (nested, truncated, with junk elements)."""
    path, args = SEEDS[int(rng.integers(len(SEEDS)))]
    valid = encode(path, *args)
    kind = i % len(NOISE_KINDS)
    if kind == 0:
        return rng.bytes(int(rng.integers(1, 400)))
    if kind == 1:
        return valid[: int(rng.integers(1, len(valid)))]
    if kind == 2:
        flipped = bytearray(valid)
        for _ in range(int(rng.integers(1, 4))):
            flipped[int(rng.integers(len(flipped)))] = int(rng.integers(256))
        return bytes(flipped)
    if kind == 3:
        tags = "".join(rng.choice(list("ifsbhdtTFNIcrm[]xyzS"), int(rng.integers(1, 6))))
        return _raw_message(path, tags, rng.bytes(int(rng.integers(0, 64))))
    if kind == 4:
        return _raw_message(path, "b", struct.pack(">i", 30_000) + rng.bytes(int(rng.integers(9_000, 16_000))))
    inner = [valid, rng.bytes(int(rng.integers(1, 40))), encode("/ping")]
    body = b"".join(
        struct.pack(">i", len(x) + (0 if j else int(rng.integers(-4, 40)))) + x for j, x in enumerate(inner)
    )
    bundle = b"#bundle\0" + struct.pack(">Q", 1) + body
    return bundle[: int(rng.integers(16, len(bundle) + 1))] if rng.random() < 0.5 else bundle


def fuzz(server: ServerProcess, count: int, seed: int = 0, window: int = 50) -> tuple[dict, list[str]]:
    """`count` datagrams; one in three is well-formed but invalid and must get exactly one /error. After every
    `window` datagrams a /ping on the checking client confirms the server read them all (a small window: a
    burst larger than the server's socket buffer would be dropped by the kernel before the server sees it)."""
    rng = np.random.default_rng(seed)
    checked, other = server.client(), server.client()
    before = codemaps_of(checked)
    rss0 = server.rss_mb()
    sent_invalid = errors = sent = n_noise = lost_pongs = 0
    kinds: Counter[str] = Counter()
    t0 = time.perf_counter()
    while sent < count:
        expected = 0
        for i in range(sent, min(sent + window, count)):
            if i % 3 == 0:
                path, args = invalid_message(rng)
                checked.send(path, *args)
                expected += 1
                kinds["well-formed invalid"] += 1
            else:
                other.send_raw(noise(rng, n_noise))
                kinds[NOISE_KINDS[n_noise % len(NOISE_KINDS)]] += 1
                n_noise += 1
        sent = min(sent + window, count)
        sent_invalid += expected
        checked.send("/ping")
        got = 0
        while True:
            reply = checked.receive(5.0)
            if reply is None:
                lost_pongs += 1
                break
            if reply[0] == "/pong":
                break
            got += reply[0] == "/error"
        errors += got
        other.drain(0.0)
        if not server.alive():
            break
    seconds = time.perf_counter() - t0
    failures = []
    if not server.alive():
        failures.append(f"the server died after {sent} datagrams: {server.log.read_text()[-2000:]}")
    else:
        checked.send("/ping")
        checked.wait_for("/pong", timeout=10)
        if codemaps_of(checked) != before:
            failures.append("the codemaps changed under fuzz")
    if lost_pongs:
        failures.append(f"{lost_pongs} /ping checks got no /pong within 5 s")
    if errors != sent_invalid:
        failures.append(f"{sent_invalid} well-formed invalid messages got {errors} /error replies")
    checked.close()
    other.close()
    figures = {
        "datagrams": sent,
        "by_kind": dict(kinds),
        "well_formed_invalid": sent_invalid,
        "errors_for_them": errors,
        "seconds": round(seconds, 1),
        "datagrams_per_s": round(sent / seconds),
        "rss_mb_before_after": [round(rss0), round(server.rss_mb())] if server.alive() else None,
    }
    return figures, failures


# ---------------------------------------------------------------- flood


def flood(
    server: ServerProcess, rate: int, seconds: float, seed: int = 0, ping_limit_ms: float | None = PING_P99_LIMIT_MS
) -> tuple[dict, list[str]]:
    """Bottom-cell /codemap/set and /inpaint alternately at `rate` per second; /ping every 50 ms from another
    client; RSS sampled. Every request must end exactly once and the last edit must be the final state; the
    ping's p99 is held to `ping_limit_ms` (None: reported only, as in CI, where timing is not asserted)."""
    rng = np.random.default_rng(seed)
    c, pinger = server.client(), server.client()
    endings: list[tuple[str, int]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            reply = c.receive(0.1)
            if reply and reply[0] in ("/render/done", "/render/cancelled", "/error"):
                endings.append((reply[0], reply[1][0] if reply[0] != "/error" else -1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pings, rss = [], [server.rss_mb()]
    start, n, next_ping = time.perf_counter(), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t, f = int(rng.integers(8)), int(rng.integers(64))
        if n % 2:
            c.send("/codemap/set", "bottom", t, f, int(rng.integers(8)), 10_000 + n)
        else:
            c.send("/inpaint", "bottom", t, t + 1, f, f + 1, 10_000 + n)
        n += 1
        now = time.perf_counter()
        if now >= next_ping:
            t0 = time.perf_counter()
            pinger.send("/ping")
            pinger.wait_for("/pong", timeout=10)
            pings.append((time.perf_counter() - t0) * 1000)
            rss.append(server.rss_mb())
            next_ping += 0.05
        time.sleep(max(0.0, n / rate - (time.perf_counter() - start)))
    flood_s = time.perf_counter() - start
    last_id = 10_000_000
    c.send("/codemap/set", "bottom", 7, 63, 5, last_id)
    t_end = time.perf_counter()
    deadline = time.monotonic() + 120
    while ("/render/done", last_id) not in endings and time.monotonic() < deadline:
        time.sleep(0.02)
    drain_s = time.perf_counter() - t_end
    stop.set()
    reader.join()
    # Read back on a fresh socket: the pinger's may have overflowed with the pushes of the drain.
    reader_client = server.client()
    final = np.array(codemaps_of(reader_client)["bottom"]).reshape(64, 8)[63, 7]
    reader_client.close()
    ids = [request_id for _, request_id in endings]
    kinds = Counter(kind for kind, _ in endings)
    failures = []
    if len(ids) != n + 1 or len(set(ids)) != n + 1:
        failures.append(f"{n + 1} requests, {len(ids)} endings ({len(set(ids))} distinct)")
    if final != 5:
        failures.append(f"final state: cell (7, 63) holds {final}, the last edit set 5")
    ping = stats(pings)
    if ping_limit_ms is not None and ping["p99_ms"] >= ping_limit_ms:
        failures.append(f"/ping p99 {ping['p99_ms']} ms during the flood (limit {ping_limit_ms})")
    half = len(rss) // 2
    if max(rss[half:]) > 1.25 * max(rss[: half + 1]) + 50:
        failures.append(f"memory kept growing: {max(rss[: half + 1]):.0f} MB then {max(rss[half:]):.0f} MB")
    c.close()
    pinger.close()
    figures = {
        "rate_per_s": rate,
        "seconds": round(flood_s, 1),
        "requests": n + 1,
        "endings": dict(kinds),
        "last_edit_done_after_s": round(drain_s, 2),
        "final_state_is_last_edit": bool(final == 5),
        "ping_during_flood": ping,
        "rss_mb": {
            "start": round(rss[0]),
            "max_first_half": round(max(rss[: half + 1])),
            "max_second_half": round(max(rss[half:])),
            "end": round(rss[-1]),
        },  # fmt: skip
        "server_peak_rss_mb": peak_rss_mb(server.proc.pid),
    }
    return figures, failures


# ---------------------------------------------------------------- crash recovery


def crash_recovery(server: ServerProcess, rounds: int, seed: int = 0) -> tuple[dict, list[str]]:
    """Each round: acknowledged edits (conditioning, cells, an inpaint), then SIGKILL while a /generate renders,
    restart from the session, and compare conditioning, codemaps and every step of the undo history."""
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    restart_ms = []
    for r in range(rounds):
        c = server.client()
        pitch, family = int(rng.integers(36, 80)), int(rng.integers(11))
        c.send("/pitch", pitch)
        c.wait_for("/pitch", timeout=10)  # echoed once saved
        c.send("/instrument", family)
        c.wait_for("/instrument", timeout=10)
        history = [codemaps_of(c)]
        for k in range(3):
            if k == 1:
                c.send("/inpaint", "top", 0, 1, 0, 4, 100 + k)
            else:
                # three (t, f, code) cells; codes below 64, which every bundle's codebook holds
                cells = np.stack([rng.integers(4, size=3), rng.integers(32, size=3), rng.integers(64, size=3)], 1)
                c.send("/codemap/set", "top", *(int(x) for x in cells.ravel()), 100 + k)
            c.wait_for("/render/done", timeout=60)
            history.append(codemaps_of(c))
        c.send("/generate", 999)
        c.wait_for("/render/started", timeout=10)
        time.sleep(float(rng.uniform(0.0, 0.05)))  # somewhere inside the render
        c.close()
        server.kill()
        t0 = time.perf_counter()
        server.restart()
        restart_ms.append((time.perf_counter() - t0) * 1000)
        c = server.client()
        c.send("/state")
        got_pitch = c.wait_for("/pitch", timeout=10)[1][0]
        got_family = c.wait_for("/instrument", timeout=10)[1][0]
        if (got_pitch, got_family) != (pitch, family):
            failures.append(f"round {r}: conditioning {(got_pitch, got_family)} != {(pitch, family)}")
        if codemaps_of(c) != history[-1]:
            # The killed /generate may have been saved just before the kill, unacknowledged: then one undo
            # must lead back to the last acknowledged edit.
            c.send("/undo", 199)
            c.wait_for("/render/done", timeout=60)
            if codemaps_of(c) != history[-1]:
                failures.append(f"round {r}: the codemaps of the last acknowledged edit did not come back")
        for step, expected in enumerate(reversed(history[:-1])):
            c.send("/undo", 200 + step)
            c.wait_for("/render/done", timeout=60)
            if codemaps_of(c) != expected:
                failures.append(f"round {r}: undo step {step + 1} differs from the history before the crash")
                break
        c.close()
    return {"rounds": rounds, "restart_to_pong_ms": stats(restart_ms) if restart_ms else None}, failures


# ---------------------------------------------------------------- bad files


def bad_files(server: ServerProcess) -> tuple[dict, list[str]]:
    """Broken bundles must stop `serve` with one clear line (no traceback); broken or forbidden audio paths
    must each get an /error from the running server, which keeps serving with its state intact."""
    failures: list[str] = []
    cases: dict[str, str] = {}
    work = server.folder / "bad"
    work.mkdir(exist_ok=True)
    assert server.bundle is not None, "the bundle cases damage a copy of the server's bundle folder"
    for name, damage in BUNDLE_DAMAGE.items():
        broken = work / f"bundle-{name}"
        shutil.copytree(server.bundle, broken, dirs_exist_ok=True)
        damage(broken)
        cmd = [sys.executable, "-m", "server", "serve", "--bundle", str(broken), "--port", str(free_port())]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            failures.append(f"bundle {name}: served for 30 s instead of refusing it")
            continue
        message = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        cases[f"bundle: {name}"] = message
        if proc.returncode == 0 or "Traceback" in proc.stderr or str(broken) not in message:
            failures.append(f"bundle {name}: exit {proc.returncode}, stderr {proc.stderr[-500:]!r}")
    c = server.client()
    before = codemaps_of(c)
    for name, path in audio_cases(server.read_dir).items():
        c.send("/analyze", str(path), 1)
        reply, values = c.wait_for("/error", "/render/done", timeout=60)
        cases[f"audio: {name}"] = values[1] if reply == "/error" else "accepted"
        if reply != "/error":
            failures.append(f"audio {name}: {reply} {values}")
    c.send("/ping")
    c.wait_for("/pong", timeout=10)
    if codemaps_of(c) != before:
        failures.append("the codemaps changed after refused files")
    c.close()
    return {"cases": cases}, failures


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        edit(manifest)
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    return apply


def _swap_steps(graphs: dict) -> None:
    """The two priors' decoding graphs swapped (a step graph, or the masked kind's denoise graph)."""
    top, bottom = (graphs[next(g for g in graphs if g.startswith(f"{layer}_prior_") and not g.endswith("encoder"))]
                   for layer in ("top", "bottom"))  # fmt: skip
    top["file"], bottom["file"] = bottom["file"], top["file"]


BUNDLE_DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated graph": lambda b: _truncate(b / "vqvae_decoder.onnx"),
    "corrupt graph": lambda b: (b / "top_prior_step.onnx").write_bytes(os.urandom(4096)),
    "missing graph": lambda b: (b / "bottom_prior_encoder.onnx").unlink(),
    "truncated manifest": lambda b: _truncate(b / "manifest.json"),
    "unknown manifest version": _manifest_edit(lambda m: m.update(format_version=99)),
    "manifest missing a key": _manifest_edit(lambda m: m.pop("normalizer")),
    "no manifest": lambda b: (b / "manifest.json").unlink(),
    "sample rate 0": _manifest_edit(lambda m: m["spectrogram"].update(sample_rate=0)),
    "no samples": _manifest_edit(lambda m: m["spectrogram"].update(n_samples=0)),
    "mask token 1e6": _manifest_edit(lambda m: m["tokens"].update(mask=1_000_000)),
    "graph outside the bundle": _manifest_edit(lambda m: m["graphs"]["vqvae_decoder"].update(file="/etc/passwd")),
    "manifest nested 100 000 deep": lambda b: (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000),
    "empty family tables": lambda b: (b / "family_guidance.npz").write_bytes(b""),
    "truncated family tables": lambda b: _truncate(b / "family_guidance.npz"),
    "swapped step graphs": _manifest_edit(lambda m: _swap_steps(m["graphs"])),
}


def audio_cases(folder: Path) -> dict[str, Path]:
    """Files /analyze must refuse: inside the allowed folder unless said otherwise."""
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    garbage = folder / "garbage.wav"
    garbage.write_bytes(os.urandom(5000))
    header_only = folder / "no-samples.wav"
    write_test_note(header_only, seconds=0.0)
    truncated = write_test_note(folder / "truncated.wav")
    truncated.write_bytes(truncated.read_bytes()[:30])
    outside = Path(tempfile.gettempdir()) / f"inpaint-osc-outside-{os.getpid()}.wav"
    write_test_note(outside)
    return {
        "empty file": empty,
        "not audio": garbage,
        "no samples": header_only,
        "truncated header": truncated,
        "a folder": folder,
        "missing file": folder / "nothing-here.wav",
        "outside the allowed folders": outside,
        "relative path escaping the folder": folder / ".." / ".." / "etc" / "passwd",
    }


# ---------------------------------------------------------------- the suite


CHECKS = ("fuzz", "flood", "crash", "files", "attacks")


def run_suite(bundle: Path, scale: str = "ci", only: tuple[str, ...] = CHECKS, seed: int = 0) -> dict[str, Any]:
    size = SCALES[scale]
    result: dict[str, Any] = {"bundle": str(bundle), "scale": scale, "failures": {}}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(bundle, Path(tmp), quiet=True)
        try:
            runs: dict[str, Callable[[], tuple[dict, list[str]]]] = {
                "fuzz": lambda: fuzz(server, size["fuzz"], seed),
                "flood": lambda: flood(server, size["flood_rate"], size["flood_seconds"], seed),
                "crash": lambda: crash_recovery(server, size["crash_rounds"], seed),
                "files": lambda: bad_files(server),
                "attacks": lambda: run_attacks(server, Path(tmp) / "attacks"),
            }
            for name in only:
                figures, failures = runs[name]()
                result[name] = figures
                if failures:
                    result["failures"][name] = failures
        finally:
            server.stop()
    result["passed"] = not result["failures"]
    return result


def reliability_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Reliability",
        "",
        f"Produced by `inpaint-osc stress --scale {r['scale']} --markdown docs/reliability.md` on bundle "
        f"`{shown(r['bundle'])}` (written by that command): a real server process, real UDP over loopback. "
        f"Result: **{'passed' if r['passed'] else 'FAILED'}**.",
        "",
    ]
    if "fuzz" in r:
        f = r["fuzz"]
        kinds = ", ".join(f"{k} {v}" for k, v in f["by_kind"].items())
        lines += [
            "## Fuzz",
            "",
            f"{f['datagrams']} datagrams in {f['seconds']} s ({f['datagrams_per_s']}/s): {kinds}. The "
            f"{f['well_formed_invalid']} well-formed invalid ones (unknown addresses, too few arguments, wrong types, "
            f"huge, negative, NaN and infinite values, each refused by the address table) got "
            f"{f['errors_for_them']} `/error` replies. The server answered `/ping` after every 50 datagrams and "
            f"at the end; its codemaps were unchanged; RSS before / after: {f['rss_mb_before_after']} MB.",
            "",
        ]
    if "flood" in r:
        f = r["flood"]
        p = f["ping_during_flood"]
        rss = f["rss_mb"]
        lines += [
            "## Flood",
            "",
            f"{f['requests']} edits at {f['rate_per_s']}/s for {f['seconds']} s (bottom-cell `/codemap/set` and "
            f"`/inpaint` alternately, each with its id). Endings: {f['endings']}: every request ended exactly once "
            "(superseded sampling work is answered `/render/cancelled`). The last edit's `/render/done` came "
            f"{f['last_edit_done_after_s']} s after the flood, and the final state is the last edit's: "
            f"{f['final_state_is_last_edit']}. `/ping` from a second client every 50 ms during the flood: p50 "
            f"{p['p50_ms']} ms, p99 {p['p99_ms']} ms, max {p['max_ms']} ms (limit p99 {PING_P99_LIMIT_MS} ms). "
            f"Server RSS: {rss['start']} MB at the start, at most {rss['max_first_half']} MB in the first half "
            f"and {rss['max_second_half']} MB in the second, {rss['end']} MB at the end. Queues are bounded by "
            "construction (at most 64 waiting sampling jobs, the oldest giving way, and 4 096 cheap edits); the "
            "drain time above is what that bound costs.",
            "",
        ]
    if "crash" in r:
        f = r["crash"]
        restart = f["restart_to_pong_ms"]
        lines += [
            "## Crash recovery",
            "",
            f"{f['rounds']} rounds of: conditioning changed, three acknowledged edits (cells set, a top inpaint), "
            "a `/generate` killed with SIGKILL while it renders, a restart with the same `--session`; then the "
            "pitch, instrument, both codemaps and every undo step are compared with what was acknowledged. "
            f"Restart to first `/pong`: p50 {restart['p50_ms']} ms, max {restart['max_ms']} ms.",
            "",
        ]
    if "files" in r:
        lines += ["## Bad files", "", "| case | what the performer is told |", "|---|---|"]
        lines += [f"| {case} | {message.replace('|', '/')} |" for case, message in r["files"]["cases"].items()]
        lines += [
            "",
            "A broken bundle stops `inpaint-osc serve` before it listens, with that one line and exit status 1 "
            "(there is no live model switch to fall back from). The audio cases are sent to a running server as "
            "`/analyze`; it answers each with `/error /analyze <message>`, then `/ping`, with its codemaps as "
            "before.",
            "",
        ]
    if "attacks" in r:
        lines += ["## Attacks", "", "What a hostile or careless client tried, and what held (server/tools/attacks.py):"]
        lines.append("")
        lines += [f"- **{name}**: {json.dumps(figures)}" for name, figures in r["attacks"].items()]
        lines.append("")
    if r["failures"]:
        lines += ["## Failures", "", "```", json.dumps(r["failures"], indent=2), "```", ""]
    return "\n".join(lines)
