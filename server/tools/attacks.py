"""What a hostile or careless client tries (`inpaint-osc stress`, section "attacks"): each replayed over loopback
UDP against a real server process, with the figure that shows it held. A typo in a patch, a live-coding loop
gone wrong, or anyone on the network once `--host` opens it must never delete, plant, read or starve.

Each function returns (figures, failures), like the rest of `server.tools.stress`.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.client import OscClient
from server.tools.latency import stats, write_test_note
from server.tools.launcher import BLOCKED_TORCH, PACKAGE_ROOT, ServerProcess, free_port
from server.tools.ntp import tagged_bundle
from server.wire import encode

ENDINGS = ("/render/done", "/render/cancelled", "/error")


def _count_replies(client: OscClient, until: str, timeout: float = 60.0) -> tuple[int, int]:
    """(datagrams, bytes) a client receives up to and including one on `until`, then what trails for 0.3 s."""
    n = size = 0
    deadline = time.monotonic() + timeout
    seen = False
    while time.monotonic() < deadline:
        client.sock.settimeout(0.3 if seen else max(0.01, deadline - time.monotonic()))
        try:
            data = client.sock.recv(65536)
        except TimeoutError:
            break
        n, size = n + 1, size + len(data)
        seen |= data.startswith(until.encode() + b"\0")
    return n, size


def export_over_a_project(server: ServerProcess) -> tuple[dict, list[str]]:
    """`/export/instrument` onto a folder with its own instrument.json, a .git and sources: every file stays."""
    project = server.read_dir / "synth-project"
    (project / ".git").mkdir(parents=True, exist_ok=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "src").mkdir(exist_ok=True)
    (project / "src" / "main.py").write_text("print('mine')\n")
    (project / "instrument.json").write_text('{"name": "mine"}\n')
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    c = server.client()
    c.send("/export/instrument", str(project), 60, 60)
    reply = c.wait_for("/export/done", "/error", timeout=60)
    after = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    failures = [] if after == before else [f"the project changed: {sorted(map(str, set(before) ^ set(after)))}"]
    if reply[0] != "/error":
        failures.append(f"answered {reply}")
    c.close()
    return {"files_kept": f"{sum(after.get(p) == b for p, b in before.items())} of {len(before)}",
            "answer": reply[1][-1]}, failures  # fmt: skip


def export_over_the_performers_export(server: ServerProcess) -> tuple[dict, list[str]]:
    """An export the performer made elsewhere (the CLI's writer, not this server), and a folder of their own
    named as an export's leftovers used to be (`.NAME.old` holding a soundfont, untouched for an hour): a
    client's `/export/instrument` onto the first is refused, one beside the second leaves it whole."""
    from server import instrument_export as ie

    theirs, beside = server.read_dir / "performers-piano", server.read_dir / "fresh-inst"
    rate = 16_000
    tone = (0.3 * np.sin(2 * np.pi * 262 * np.arange(rate) / rate)).astype(np.float32)
    ie.write(theirs, ie.Instrument("performers-piano", rate, (ie.Sample(60, tone, 0, rate // 2),), 2.0, 0.2, {}))
    decoy = server.read_dir / ".fresh-inst.old"
    decoy.mkdir(exist_ok=True)
    (decoy / "FluidR3_GM.sf2").write_bytes(b"the performer's soundfont")
    hour_ago = time.time() - 3600
    os.utime(decoy, (hour_ago, hour_ago))
    before = {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
    c = server.client()
    c.send("/export/instrument", str(theirs), 60, 60)
    refused = c.wait_for("/export/done", "/error", timeout=60)
    c.send("/export/instrument", str(beside), 60, 60)
    written = c.wait_for("/export/done", "/error", timeout=120)
    c.close()
    after = {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
    failures = []
    if refused[0] != "/error" or after != before:
        failures.append(f"the performer's export was replaced: {refused}")
    if written[0] != "/export/done":
        failures.append(f"the export beside the decoy failed: {written}")
    if not (decoy / "FluidR3_GM.sf2").is_file():
        failures.append(f"{decoy} was swept")
    return {"refused": refused[1][-1][:120], "decoy_kept": (decoy / "FluidR3_GM.sf2").is_file()}, failures


def resend_of_anothers_render(server: ServerProcess) -> tuple[dict, list[str]]:
    """A client streams a render; another asks `/render/resend` of its id: refused, and no chunk reaches it."""
    a, b = server.client(), server.client()
    a.send("/render/mode", "chunks")
    a.send("/render", 8801)
    a.wait_for("/render/done", timeout=60)
    a.send("/render/mode", "file")
    b.send("/render/resend", 8801, 0, 1024)
    reply = b.wait_for("/error", "/render/chunk", timeout=10)
    leaked = [r for r in b.drain(0.3) if r[0] == "/render/chunk"]
    a.close()
    b.close()
    failures = [] if reply[0] == "/error" and not leaked else [f"another's chunks reached it: {reply[0]}"]
    return {"answer": reply[1][-1] if reply[0] == "/error" else reply[0]}, failures


def images_ahead_of_a_generate(server: ServerProcess, pairs: int = 60) -> tuple[dict, list[str]]:
    """`pairs` of `/erase` + `/image` in one datagram (each image renders), just before another client's
    `/generate`: the images end their sender's turn, so the generate is done after at most a few of them
    (both clients' replies on one socket: their order is the server's)."""
    a, b = server.client(), server.client()
    b.send("/reply_port", a.reply_port)
    time.sleep(0.05)
    flood = [
        m
        for i in range(pairs)
        for m in (encode("/erase", "top", 0, 1, i % 32, i % 32 + 1), encode("/image", "top", 9000 + i))
    ]
    a.send_raw(tagged_bundle(None, *flood))
    time.sleep(0.02)
    b.send("/generate", 8999)
    images_before, generated = 0, ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            address, args = a.wait_for("/image/done", "/render/done", "/render/cancelled", timeout=10)
        except TimeoutError:
            break
        if address == "/image/done":
            images_before += not generated
        elif args[0] == 8999:
            generated = address
            break
    a.drain(2.0)
    a.close()
    b.close()
    failures = [] if generated == "/render/done" and images_before <= 4 else [
        f"the other client's /generate ended {generated or 'never'} after {images_before} images"]  # fmt: skip
    return {"images_before_it": images_before, "pairs": pairs}, failures


def planted_save_names(bundle: Path, folder: Path) -> tuple[dict, list[str]]:
    """On a server whose session lies inside a folder clients may export to: folders exported where the
    session's temporary file used to go (its PID-named sibling) and at the session itself. Saves go on (the
    next edit is acknowledged and on disk); the session path is refused."""
    with ServerProcess(bundle, folder, "--read-dir", str(folder), quiet=True) as server:
        return _planted_save_names(server)


def _planted_save_names(server: ServerProcess) -> tuple[dict, list[str]]:
    c = server.client()
    session = server.session
    answers = []
    for target in (session.with_name(f".{session.name}.{server.proc.pid}.tmp"), session.with_name(".x.tmp"), session):
        c.send("/export/instrument", str(target), 60, 60)
        answers.append(c.wait_for("/export/done", "/error", timeout=60))
    c.drain(0.2)
    c.send("/codemap/set", "bottom", 3, 3, 21, 41)
    ending = c.wait_for(*ENDINGS, timeout=60)
    errors = [r for r in c.drain(0.3) if r[0] == "/error" and "not saved" in str(r[1])]
    with np.load(session) as data:
        saved = int(data["bottom"][3, 3])
    failures = []
    if ending[0] != "/render/done" or errors or saved != 21:
        failures.append(f"after the planted folders: {ending}, {errors}, the saved cell holds {saved}")
    if answers[-1][0] != "/error" or "session file" not in answers[-1][1][1]:
        failures.append(f"an export at the session path was answered {answers[-1]}")
    c.close()
    return {"edit_after_planting": ending[0], "saved": saved == 21, "at_the_session": answers[-1][1][-1]}, failures


def render_bundle(server: ServerProcess, n: int = 40, rate: int = 48_000) -> tuple[dict, list[str]]:
    """`n` `/render` in one datagram from a client in chunks mode at `rate`: replies against one `/render`."""
    c = server.client()
    c.send("/render/mode", "chunks")
    c.send("/render/rate", rate)
    c.drain(0.2)
    c.send("/render", 1)
    one = _count_replies(c, "/render/done")
    c.send_raw(tagged_bundle(None, *(encode("/render", 100 + i) for i in range(n))))
    many = _count_replies(c, "/render/done")  # the first, then every reply until 0.3 s pass without one
    c.send("/render/mode", "file")
    c.close()
    ratio = many[0] / max(one[0], 1)
    failures = [] if ratio <= 3 else [f"{n} renders in a bundle gave {many[0]} replies, one gave {one[0]}"]
    return {"one_render": {"datagrams": one[0], "bytes": one[1]}, f"{n}_in_a_bundle": {"datagrams": many[0],
            "bytes": many[1]}, "ratio": round(ratio, 2)}, failures  # fmt: skip


def exports_ahead_of_a_generate(server: ServerProcess, n: int = 20, limit_s: float = 5.0) -> tuple[dict, list[str]]:
    """`n` clients each ask a 25-key export, then another client's `/generate`: it ends within `limit_s`."""
    senders = [server.client() for _ in range(n)]
    for i, s in enumerate(senders):
        s.send("/export/instrument", str(server.read_dir / f"export-{i}"), 48, 72)
    time.sleep(0.2)
    c = server.client()
    t0 = time.perf_counter()
    c.send("/generate", 7)
    ending = c.wait_for(*ENDINGS, timeout=120)
    waited = time.perf_counter() - t0
    refused = sum(any(r[0] == "/error" and "exports are waiting" in str(r[1]) for r in s.drain(0.05)) for s in senders)
    for s in senders:
        s.send("/cancel")
    time.sleep(0.3)
    for s in senders:
        s.close()
    failures = []
    if ending[0] != "/render/done" or waited > limit_s:
        failures.append(f"/generate behind {n} exports: {ending[0]} after {waited:.1f} s")
    return {"exports_asked": n, "refused_at_once": refused, "generate_s": round(waited, 2)}, failures


def another_clients_generates(server: ServerProcess, n: int = 20) -> tuple[dict, list[str]]:
    """One client's `/generate` every 150 ms while another sends `n` inpaints: every inpaint is done."""
    a, b = server.client(), server.client()
    stop = threading.Event()

    def generate() -> None:
        i = 0
        while not stop.is_set():
            a.send("/generate", 5000 + i)
            i += 1
            time.sleep(0.15)

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    for i in range(n):
        b.send("/inpaint", "bottom", i % 8, i % 8 + 1, i, i + 1, 300 + i)
        time.sleep(0.01)
    endings: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while len(endings) < n and time.monotonic() < deadline:
        try:
            address, args = b.wait_for(*ENDINGS, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        endings[args[0] if address != "/error" else -1] = address
    stop.set()
    thread.join()
    a.send("/cancel")
    a.close()
    b.close()
    done = sum(v == "/render/done" for v in endings.values())
    failures = [] if done == n else [f"{n} inpaints beside another's generates: {done} done, {endings}"]
    return {"inpaints": n, "done": done}, failures


def channel_flood(server: ServerProcess, n: int = 120) -> tuple[dict, list[str]]:
    """16 channels each given an instrument and notes across them, `n` of them in one datagram (more than the
    queue keeps) just after another client's `/generate` began to wait: that `/generate` is done, not given way
    to the flood, after at most a few of the flood's notes (both clients' replies come to one socket, so their
    order is the server's), and every one of the flood's notes gets exactly one ending."""
    a, b = server.client(), server.client()
    b.send("/reply_port", a.reply_port)
    families = 11
    programs = [encode("/channel/program", ch, (0, 24, 32, 40, 56, 64, 72, 80, 8, 16, 52)[ch % families])
                for ch in range(1, 17)]  # fmt: skip
    notes = [encode("/channel/note", 1 + i % 16, 24 + (7 * i) % 61, 100, 7000 + i) for i in range(n + 8)]
    time.sleep(0.05)
    a.send_raw(tagged_bundle(None, *programs, *notes[:8]))  # the worker busy on the first notes ...
    time.sleep(0.03)
    b.send("/generate", 6999)  # ... so that this one waits when the rest arrive
    a.send_raw(tagged_bundle(None, *notes[8:]))
    t0 = time.monotonic()
    endings: dict[int, list[str]] = {}
    generated: tuple[str, list] = ("timeout", [])
    notes_before, waited = 0, 0.0
    deadline = time.monotonic() + 120
    while (sum(map(len, endings.values())) < n + 8 or generated[0] == "timeout") and time.monotonic() < deadline:
        try:
            address, args = a.wait_for(*ENDINGS, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        if address == "/error" or not isinstance(args[0], int):
            continue
        if args[0] == 6999:
            generated, waited = (address, args), time.monotonic() - t0
            notes_before = sum(v == ["/render/done"] for v in endings.values())
        elif args[0] >= 7000:
            endings.setdefault(args[0], []).append(address)
    for ch in range(1, 17):
        a.send("/channel/instrument", ch, "none")
    a.close()
    b.close()
    done = sum(v == ["/render/done"] for v in endings.values())
    cancelled = sum(v == ["/render/cancelled"] for v in endings.values())
    failures = []
    if generated[0] != "/render/done":
        failures.append(f"the other client's /generate ended {generated[0]} {generated[1]} behind the flood")
    elif notes_before > 8 + 2:  # the first datagram's notes, a note running when it came, and one more
        failures.append(f"the other client's /generate waited for {notes_before} of the flood's notes")
    if len(endings) != n + 8 or any(len(v) != 1 for v in endings.values()):
        failures.append(f"{n + 8} channel notes: {len(endings)} ended, some not exactly once")
    return {
        "notes": n + 8,
        "done": done,
        "cancelled": cancelled,
        "other_generate_s": round(waited, 2),
        "notes_before_it": notes_before,
    }, failures


def help_bundle(server: ServerProcess, copies: int = 200) -> tuple[dict, list[str]]:
    """`/help` and `/state` `copies` times in one datagram are answered once each."""
    c = server.client()
    c.drain(0.2)
    c.send("/help")
    one = _count_replies(c, "/nothing", timeout=1.0)[0]  # every reply within 1 s (a broadcast may be among them)
    c.send_raw(tagged_bundle(None, *([encode("/help")] * copies)))
    many = _count_replies(c, "/nothing", timeout=1.0)[0]
    c.close()
    failures = [] if many <= one + 2 else [f"{copies} /help in a bundle gave {many} replies, one gave {one}"]
    return {"one_help": one, f"{copies}_in_a_bundle": many}, failures


def reply_to_itself(server: ServerProcess) -> tuple[dict, list[str]]:
    """`/reply_port` set to the server's own port, then `/ping`: refused, and no loop of replies."""
    c = server.client()
    log_before = server.log.stat().st_size
    c.send("/reply_port", server.port)
    reply = c.wait_for("/error", "/pong", timeout=10)
    raw = OscClient(port=server.port, announce=False)  # a second socket that asks the same through a bundle
    raw.send_raw(tagged_bundle(None, encode("/reply_port", server.port), encode("/ping")))
    time.sleep(1.0)
    raw.close()
    grown = server.log.stat().st_size - log_before
    c.send("/ping")
    alive = c.wait_for("/pong", timeout=10)
    c.close()
    failures = []
    if reply[0] != "/error":
        failures.append(f"/reply_port {server.port} answered {reply}")
    if grown > 20_000:
        failures.append(f"the log grew {grown} bytes in a second: the server answered itself")
    return {"answer": reply[1][-1], "log_growth_bytes": grown, "still_serving": bool(alive)}, failures


def unknown_types(server: ServerProcess) -> tuple[dict, list[str]]:
    """`/seed` typed `,ci` (a char, then an int) is refused, not read as the int."""
    c = server.client()
    c.send("/seed", 11)
    c.wait_for("/seed", timeout=10)
    c.send_raw(b"/seed\0\0\0,ci\0" + struct.pack(">ii", 97, 5))
    reply = c.wait_for("/error", "/seed", timeout=10)
    c.send("/state")
    seed = c.wait_for("/seed", timeout=10)[1][0]
    c.close()
    failures = [] if reply[0] == "/error" and seed == 11 else [f"',ci' answered {reply}; seed is {seed}"]
    return {"answer": reply[1][-1], "seed_kept": seed == 11}, failures


def flood_of_big_datagrams(server: ServerProcess, seconds: float = 3.0) -> tuple[dict, list[str]]:
    """One client sends 64 kB `/inpaint/cells` as fast as it can; another's `/ping` every 50 ms."""
    cells = [x for i in range(5400) for x in (i % 8, i % 64)]
    flood = encode_big("/inpaint/cells", "bottom", *cells)
    a, b = server.client(), server.client()
    stop = threading.Event()
    sent = [0]

    def send() -> None:
        while not stop.is_set():
            a.send_raw(flood)
            sent[0] += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    pings, lost = [], 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        b.send("/ping")
        try:
            b.wait_for("/pong", timeout=2.0)
            pings.append((time.perf_counter() - t0) * 1000)
        except TimeoutError:
            lost += 1
        time.sleep(0.05)
    stop.set()
    thread.join()
    a.send("/cancel")
    a.close()
    b.close()
    ping = stats(pings) if pings else {}
    failures = []
    if lost > len(pings) // 10 or not pings or ping["p50_ms"] > 200:
        failures.append(f"/ping beside the flood: {ping}, {lost} lost")
    return {"datagrams_sent": sent[0], "datagram_bytes": len(flood), "ping": ping, "pings_lost": lost}, failures


def time_tag_flood(server: ServerProcess, n: int = 600, cap: int = 512) -> tuple[dict, list[str]]:
    """One client schedules `n` messages 2 s ahead in one bundle: past its own `cap` they are refused, and
    another client's bundle tagged 0.3 s ahead still runs at its tag."""
    a, b = server.client(), server.client()
    a.send_raw(tagged_bundle(time.time() + 2.0, *([encode("/timing", 0)] * n)))
    refused = sum(r[0] == "/error" and "time-tagged messages are waiting" in str(r[1]) for r in a.drain(0.3))
    sent = time.time()
    b.send_raw(tagged_bundle(sent + 0.3, encode("/ping")))
    try:
        b.wait_for("/pong", timeout=3)
        late = time.time() - (sent + 0.3)
    except TimeoutError:
        late = float("inf")
    a.close()
    b.close()
    failures = []
    if refused != n - cap:
        failures.append(f"{n} tagged messages from one client: {refused} refused, expected {n - cap}")
    if not 0 <= late < 0.1:
        failures.append(f"another client's tagged /ping came {late:.3f} s after its tag")
    return {"scheduled": n, "refused": refused, "other_client_late_s": round(late, 4)}, failures


def chunk_streams(server: ServerProcess, renders: int = 6, limit_s: float = 3.5) -> tuple[dict, list[str]]:
    """One client asks `renders` renders streamed at 192 kHz (about 0.9 s of chunks each); another's
    16 kHz stream ends within `limit_s`, and every request of the first still ends once."""
    a, b = server.client(), server.client()
    for c, rate in ((a, 192_000), (b, 16_000)):
        c.send("/render/mode", "chunks")
        c.send("/render/rate", rate)
    time.sleep(0.2)
    endings: dict[int, str] = {}
    stop = threading.Event()

    def read() -> None:  # the streaming client reads all along, as a player would
        while not stop.is_set():
            reply = a.receive(0.1)
            if reply is not None and reply[0] in ("/render/done", "/render/cancelled"):
                endings[reply[1][0]] = reply[0]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for i in range(renders):
        a.send("/render", 900 + i)
        time.sleep(0.15)  # apart: each its own render and stream
    t0 = time.perf_counter()
    b.send("/render", 950)
    b.wait_for("/render/done", timeout=60)
    waited = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while len(endings) < renders and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    reader.join()
    for c in (a, b):
        c.send("/render/mode", "file")
        c.send("/render/rate", 16_000)
        c.close()
    failures = []
    if waited > limit_s:
        failures.append(f"another client's stream ended {waited:.2f} s behind {renders} 192 kHz streams")
    if sorted(endings) != list(range(900, 900 + renders)):
        failures.append(f"the streaming client's requests ended {endings}")
    return {"other_client_s": round(waited, 2), "streaming_client_endings": len(endings)}, failures


def encode_big(address: str, *args: Any) -> bytes:
    """A message past the reply limit `encode` holds to (clients may send up to 64 kB)."""
    tags = "," + "".join("s" if isinstance(a, str) else "i" for a in args)

    def pad(b: bytes) -> bytes:
        return b + b"\0" * (4 - len(b) % 4)

    body = b"".join(pad(a.encode()) if isinstance(a, str) else struct.pack(">i", a) for a in args)
    return pad(address.encode()) + pad(tags.encode()) + body


def many_senders(server: ServerProcess, others: int = 100) -> tuple[dict, list[str]]:
    """A client's `/render/rate` outlives `others` one-shot senders."""
    c = server.client()
    c.send("/render/rate", 22_050)
    c.wait_for("/render/rate", timeout=10)
    for _ in range(others):
        one = OscClient(port=server.port, announce=False)
        one.send("/ping")
        one.close()
    time.sleep(0.3)
    c.send("/render", 77)
    done = c.wait_for("/render/done", timeout=60)[1]
    c.close()
    failures = [] if done[3] == 22_050 else [f"after {others} other senders the render came at {done[3]} Hz"]
    return {"rate_after_other_senders": done[3]}, failures


def _serve(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCKED_TORCH, "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)  # fmt: skip


def equal_ports(bundle: Path) -> tuple[dict, list[str]]:
    """`serve --reply-port` equal to `--port` is refused before it listens."""
    port = free_port()
    proc = _serve(["--bundle", str(bundle), "--port", str(port), "--reply-port", str(port)], PACKAGE_ROOT)
    said = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    ok = proc.returncode != 0 and "Traceback" not in proc.stderr and "answer itself" in said
    return {"exit": proc.returncode, "said": said}, [] if ok else [f"equal ports: {proc.returncode} {said!r}"]


def started_from_root(bundle: Path, folder: Path) -> tuple[dict, list[str]]:
    """A server started in `/` without --read-dir: /analyze of /etc/passwd and of a sound outside home are
    refused as outside the folders, without saying whether they exist."""
    outside = Path(tempfile.mkdtemp(prefix="inpaint-osc-outside-"))
    sound = write_test_note(outside / "note.wav")
    failures, answers = [], {}
    home = Path.home().resolve()
    with ServerProcess(bundle, folder, cwd=Path("/"), read_dir=False, quiet=True) as server:
        c = server.client()
        for path in ("/etc/passwd", "/etc/nothing-here", str(sound)):
            if Path(path).resolve().is_relative_to(home):
                continue  # a home under /tmp (some CI): that file is the performer's
            c.send("/analyze", path, 1)
            reply = c.wait_for("/error", "/render/done", timeout=60)
            answers[path] = reply[1][-1]
            if reply[0] != "/error" or "outside the folders" not in reply[1][-1]:
                failures.append(f"/analyze {path} from a server run in /: {reply}")
        said = server.log.read_text()
    os.unlink(sound)
    os.rmdir(outside)
    if "clients may read under" not in said:
        failures.append("the log does not say which folders clients may touch")
    return {"answers": answers}, failures


def damaged_sessions(bundle: Path, folder: Path) -> tuple[dict, list[str]]:
    """Sessions whose meta a careless edit or a bug damaged: the server starts on each, the file set aside."""
    import json

    cases: dict[str, Any] = {
        "meta without version": lambda m: {k: v for k, v in m.items() if k != "version"},
        "meta a list": lambda m: [m],
        "pitch a string": lambda m: {**m, "settings": {**m["settings"], "pitch": "60"}},
        "version 'x'": lambda m: {**m, "version": "x"},
        "family 4.0": lambda m: {**m, "settings": {**m["settings"], "family": 4.0}},
    }
    failures, said = [], {}
    with ServerProcess(bundle, folder / "good", quiet=True) as server:
        c = server.client()
        c.send("/codemap/set", "bottom", 1, 1, 3, 1)
        c.wait_for("/render/done", timeout=60)
        good = server.session.read_bytes()
    for name, edit in cases.items():
        work = folder / name.replace(" ", "-").replace("'", "")
        work.mkdir(parents=True, exist_ok=True)
        session = work / "session.npz"
        session.write_bytes(good)
        with np.load(session) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["meta"] = np.array(json.dumps(edit(json.loads(str(arrays["meta"])))))
        np.savez(session, **arrays)
        try:
            with ServerProcess(bundle, work, quiet=True) as server:
                c = server.client()
                c.send("/pitch", 50)  # the settings saver lives: the change is echoed
                c.wait_for("/pitch", timeout=10)
                aside = sorted(p.name for p in work.glob("session.npz.unreadable-*"))
                line = [x for x in server.log.read_text().splitlines() if "unreadable" in x or "kept it" in x]
        except (RuntimeError, TimeoutError) as exc:
            failures.append(f"session {name}: {exc}")
            continue
        said[name] = line[-1].split(": ", 1)[-1][:160] if line else ""
        if not aside:
            failures.append(f"session {name}: not set aside")
    return {"cases": said}, failures


def run_attacks(server: ServerProcess, folder: Path) -> tuple[dict, list[str]]:
    """Every attack above; the server-wide ones (ports, `/`, sessions) on servers of their own in `folder`."""
    assert server.bundle is not None
    figures, failures = {}, []
    checks: dict[str, Any] = {
        "export over a project": lambda: export_over_a_project(server),
        "export over the performer's export": lambda: export_over_the_performers_export(server),
        "resend of another's render": lambda: resend_of_anothers_render(server),
        "images ahead of a generate": lambda: images_ahead_of_a_generate(server),
        "planted save names": lambda: planted_save_names(server.bundle, folder / "planted"),
        "40 renders in a bundle": lambda: render_bundle(server),
        "exports ahead of a generate": lambda: exports_ahead_of_a_generate(server),
        "another client's generates": lambda: another_clients_generates(server),
        "16 channels' notes in a datagram": lambda: channel_flood(server),
        "/help in a bundle": lambda: help_bundle(server),
        "replies to itself": lambda: reply_to_itself(server),
        "unknown argument types": lambda: unknown_types(server),
        "flood of 64 kB datagrams": lambda: flood_of_big_datagrams(server),
        "100 other senders": lambda: many_senders(server),
        "time-tag flood": lambda: time_tag_flood(server),
        "one client's chunk streams": lambda: chunk_streams(server),
        "equal ports": lambda: equal_ports(server.bundle),
        "started from /": lambda: started_from_root(server.bundle, folder / "root"),
        "damaged sessions": lambda: damaged_sessions(server.bundle, folder / "sessions"),
    }
    for name, check in checks.items():
        got, failed = check()
        figures[name] = got
        failures += [f"{name}: {f}" for f in failed]
    return figures, failures
