"""The performer's patches: generated from the address table, well-formed, speaking only addresses the server
knows; and the Pd patch itself, headless, against a live server."""

import importlib.util
import json
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from server import protocol
from tests.conftest import ROOT, require

PATCHES = ROOT / "maxpatch"
OUT_PATHS = {a.path for a in protocol.OUTBOUND}


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", PATCHES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_patches_and_their_readme_are_what_the_generator_writes():
    for path, content in load_generator().outputs().items():
        assert path.read_text() == content, f"{path.name} is stale: run python maxpatch/generate.py"


def _sample_args(args: list[str]) -> list:
    """A message box's arguments with $-placeholders filled by a valid-looking int."""
    return [0 if a.startswith("$") else int(a) if re.fullmatch(r"-?\d+", a) else a for a in args]


@pytest.mark.parametrize("name", ["inpaint-osc.maxpat", "inpaint-osc-voice.maxpat"])
def test_maxpat_is_well_formed_json_in_the_form_max_writes(name):
    patcher = json.loads((PATCHES / name).read_text())["patcher"]
    for key in ("fileversion", "appversion", "rect", "boxes", "lines", "classnamespace"):
        assert key in patcher, key
    boxes = {}
    for entry in patcher["boxes"]:
        box = entry["box"]
        for key in ("id", "maxclass", "numinlets", "numoutlets", "outlettype", "patching_rect"):
            assert key in box, (key, box)
        assert len(box["outlettype"]) == box["numoutlets"] and len(box["patching_rect"]) == 4
        if box["maxclass"] in ("newobj", "message", "comment"):
            assert isinstance(box["text"], str)
        assert box["id"] not in boxes, f"duplicate id {box['id']}"
        boxes[box["id"]] = box
    assert patcher["lines"]
    for line in patcher["lines"]:
        (src, outlet), (dst, inlet) = line["patchline"]["source"], line["patchline"]["destination"]
        assert src in boxes and dst in boxes, line
        assert 0 <= outlet < boxes[src]["numoutlets"], (line, boxes[src])
        assert 0 <= inlet < boxes[dst]["numinlets"], (line, boxes[dst])
    presented = [b for b in boxes.values() if b.get("presentation")]
    if name == "inpaint-osc.maxpat":
        assert patcher["openinpresentation"] == 1 and len(presented) > 20


def max_graph(name: str) -> tuple[dict[str, dict], set[tuple[str, int, str, int]]]:
    patcher = json.loads((PATCHES / name).read_text())["patcher"]
    boxes = {e["box"]["id"]: e["box"] for e in patcher["boxes"]}
    lines = {(*ln["patchline"]["source"], *ln["patchline"]["destination"]) for ln in (e for e in patcher["lines"])}
    return boxes, lines


def find(boxes: dict[str, dict], text: str) -> list[str]:
    return [i for i, b in boxes.items() if b.get("text", "") == text]


def reaches(lines, start: str, goal: str, avoid: frozenset = frozenset()) -> bool:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for src, _, dst, _ in lines:
            if src == here and dst not in seen and dst not in avoid:
                if dst == goal:
                    return True
                seen.add(dst)
                todo.append(dst)
    return False


def test_the_max_patch_works_on_stage():
    """ctlin's controller number reaches [pack]'s cold inlet (the value, arriving last, sends both); dropped
    files are converted to system paths; /state and the host's rate are asked at load and on reconnect; the
    pictures are asked only through the 'pictures' gate; notes go to eight poly~ voices."""
    boxes, lines = max_graph("inpaint-osc.maxpat")
    [ctlin], [drop] = find(boxes, "ctlin"), [i for i, b in boxes.items() if b["maxclass"] == "dropfile"]
    [cc_pack] = {dst for src, o, dst, _ in lines if src == ctlin}
    assert {(o, i) for src, o, dst, i in lines if src == ctlin} == {(0, 0), (1, 1)}  # value hot, controller cold
    [swap] = [dst for src, _, dst, _ in lines if src == cc_pack]
    assert boxes[swap]["text"] == "$2 $1" and reaches(lines, swap, find(boxes, "prepend /cc")[0])
    [posix] = find(boxes, "conformpath slash boot")
    assert (drop, 0, posix, 0) in lines and reaches(lines, posix, find(boxes, "prepend /analyze")[0])
    assert not reaches(lines, drop, find(boxes, "prepend /analyze")[0], avoid=frozenset({posix}))
    [load], [state] = find(boxes, "loadbang"), find(boxes, "/state")
    after_change = [d for a, _, d, _ in lines if boxes[a].get("text") == "change"]
    [came_back] = [i for i in find(boxes, "sel 1") if i in after_change]  # the light came back on
    assert reaches(lines, load, state) and reaches(lines, came_back, state)
    assert reaches(lines, load, find(boxes, "prepend /render/rate")[0])
    [dsp] = find(boxes, "dspstate~")
    assert reaches(lines, dsp, find(boxes, "prepend /render/rate")[0])
    [route] = [i for i, b in boxes.items() if b.get("text", "").startswith("route /pong")]
    [gate] = find(boxes, "gate 1")
    for ask in find(boxes, "/image top 1") + find(boxes, "/image bottom 2"):
        assert reaches(lines, route, ask) and not reaches(lines, route, ask, avoid=frozenset({gate}))
    [voices] = find(boxes, "poly~ inpaint-osc-voice 8")
    assert reaches(lines, find(boxes, "notein")[0], voices) and reaches(lines, route, voices)
    voice, voice_lines = max_graph("inpaint-osc-voice.maxpat")
    assert find(voice, "sprintf name inpaint-osc-voice-%ld") and find(voice, "thispoly~")
    assert reaches(voice_lines, find(voice, "r inpaint-osc-release")[0], find(voice, "line~")[0])


def test_every_receive_name_of_the_pd_patch_is_documented():
    names = set()
    for name in ("inpaint-osc.pd", "inpaint-osc-voice.pd"):
        names |= set(re.findall(r"#X obj \d+ \d+ r (inpaint-osc-[\w-]+);", (PATCHES / name).read_text()))
    readme = (PATCHES / "README.md").read_text()
    assert len(names) >= 8 and not [n for n in names if f"`{n}`" not in readme], names


def test_every_address_the_max_patch_sends_or_routes_is_in_the_table():
    patcher = json.loads((PATCHES / "inpaint-osc.maxpat").read_text())["patcher"]
    sent, routed = set(), set()
    for entry in patcher["boxes"]:
        box = entry["box"]
        words = box.get("text", "").split()
        if box["maxclass"] == "message" and words and words[0].startswith("/"):
            protocol.parse(words[0], _sample_args(words[1:]))  # raises on an unknown address or bad counts
            sent.add(words[0])
        elif box["maxclass"] == "newobj" and words[:1] == ["prepend"] and words[1].startswith("/"):
            assert words[1] in protocol.BY_PATH, words
            sent.add(words[1])
        elif box["maxclass"] == "newobj" and words[:1] == ["route"]:
            addresses = {w for w in words[1:] if w.startswith("/")}  # other routes split by request id
            assert addresses <= OUT_PATHS, words
            routed |= addresses
    assert {"/ping", "/generate", "/pitch", "/instrument", "/inpaint", "/inpaint/cells", "/note", "/cc"} <= sent
    assert {"/render/done", "/codemap", "/error", "/pong"} <= routed


def pd_objects() -> tuple[list[str], list[tuple[int, int, int, int]]]:
    """(the text of each object in index order, connections) of the Pd patch (top level and graphs)."""
    objects, connects, depth = [], [], 0
    for line in (PATCHES / "inpaint-osc.pd").read_text().splitlines()[1:]:
        if line.startswith("#N canvas"):
            depth += 1
        elif line.startswith("#X restore"):
            depth -= 1
            objects.append(line)
        elif line.startswith("#X connect") and depth == 0:
            connects.append(tuple(int(x) for x in line.rstrip(";").split()[2:6]))
        elif line.startswith("#X ") and depth == 0 and not line.startswith("#X coords"):
            objects.append(line)
    return objects, connects


def test_every_address_the_pd_patch_sends_or_routes_is_in_the_table():
    objects, connects = pd_objects()
    assert all(0 <= a < len(objects) and 0 <= b < len(objects) for a, _, b, _ in connects)
    sent = set()
    for text in objects:
        words = text.rstrip(";").split()
        if words[1] == "obj" and words[4] == "oscformat":
            sent.add("/" + "/".join(words[5:]))
        if words[1] == "msg" and len(words) == 6 and words[4] == "set" and "$" not in words[5]:  # range tools
            sent.add("/" + words[5])
    assert sent <= set(protocol.BY_PATH), sent - set(protocol.BY_PATH)
    assert {"/ping", "/generate", "/pitch", "/instrument", "/inpaint", "/erase", "/randomize", "/note"} <= sent
    first_parts = {p.split("/")[1] for p in OUT_PATHS}
    second_parts = {p.split("/")[2] for p in OUT_PATHS if p.count("/") > 1}  # /render/done → done
    routes = [t.rstrip(";").split()[5:] for t in objects if " route " in t]
    voices = {str(v) for v in range(1, 9)}  # /render/done by request id: a note's id is its voice
    assert routes and all(set(r) <= first_parts | second_parts | {"top", "bottom", "0"} | voices for r in routes)


@pytest.fixture(scope="module")
def pd():
    require(shutil.which("pd") is not None, "Pure Data (pd)")
    return shutil.which("pd")


def run_pd(pd: str, send: str, until, seconds: float = 60, rate: int = 48_000, driver: Path | None = None) -> list[str]:
    """Headless Pd on the patch at `rate` with `send` dispatched after load (and a `driver` patch opened beside
    it, for timed events); its console lines until `until(lines)` is true or `seconds` pass."""
    opened = [str(PATCHES / "inpaint-osc.pd"), *([str(driver)] if driver else [])]
    proc = subprocess.Popen(
        [pd, "-nogui", "-noaudio", "-nomidi", "-stderr", "-r", str(rate), "-send", send, *opened],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        bufsize=0,
    )
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    try:
        while not until(lines) and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 0.5)[0]:
                lines.append(proc.stderr.readline().decode().strip())
    finally:
        proc.kill()
        proc.wait(10)
    problems = [x for x in lines if "couldn't create" in x or "connection failed" in x or "error" in x]
    assert not problems, problems
    return lines


def timeline(path: Path, events: list[tuple[int, str]]) -> Path:
    """A driver patch: each (ms after load, "receiver message; ...") sent at its time, then "driver: done"."""
    lines = ["#N canvas 0 0 300 200 12;", "#X obj 10 10 loadbang;"]
    for ms, message in events:
        escaped = message.replace(";", " \\;")  # Pd's message box: "\\;" starts a message to a receiver
        lines += [f"#X obj 10 40 delay {ms};", f"#X msg 10 70 \\; {escaped};"]
    lines += [f"#X obj 10 100 delay {events[-1][0] + 200};", "#X msg 10 130 done;", "#X obj 10 160 print driver;"]
    n = len(events)
    connects = [(0, 2 * i + 1) for i in range(n)] + [(2 * i + 1, 2 * i + 2) for i in range(n)]
    connects += [(0, 2 * n + 1), (2 * n + 1, 2 * n + 2), (2 * n + 2, 2 * n + 3)]
    path.write_text("\n".join(lines + [f"#X connect {a} 0 {b} 0;" for a, b in connects]) + "\n")
    return path


def test_pd_holds_notes_on_their_own_voices_as_long_as_their_keys_at_48k(pd, live, tmp_path):
    """Pd at 48 kHz: the patch announces its rate, three notes take voices 1-3 ([poly] → [clone]); the first two
    load their own renders of 192 000 frames and, held 13 s, sound for 10 s and more at their held level (every second
    within 6 dB: each voice loops its render's sustain loop, /render/loop) and stop at their note-off; the third,
    released at once, never sounds. What the patch plays is recorded by its own [writesf~]."""
    recording = tmp_path / "held.wav"
    send = f"inpaint-osc-listen {live.reply_port}; inpaint-osc-connect 127.0.0.1 {live.port}"
    events = [
        (300, f"inpaint-osc-record {recording}"),
        (310, "inpaint-osc-note 60 100; inpaint-osc-note 64 100; inpaint-osc-note 67 100; inpaint-osc-note 67 0"),
        (13_300, "inpaint-osc-note 60 0; inpaint-osc-note 64 0"),
        (14_800, "inpaint-osc-record-stop bang"),
    ]
    driver = timeline(tmp_path / "driver.pd", events)
    lines = run_pd(pd, send, lambda lines: any("driver: done" in x for x in lines), driver=driver)
    voice = [x.split()[2:] for x in lines if x.startswith("inpaint-osc: voice ")]  # [n, what, value]
    loaded = {int(n): int(float(v)) for n, what, v in voice if what == "loaded"}
    assert {1: 192_000, 2: 192_000}.items() <= loaded.items() and set(loaded) <= {1, 2, 3}, lines
    audio, rate = sf.read(recording)
    assert rate == 48_000
    onset = int(np.argmax(np.abs(audio) > 1e-3))
    seconds = [audio[onset + i * rate : onset + (i + 1) * rate] for i in range(10)]
    levels = np.array([20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12) for x in seconds])
    # The key is down 13 s, the render takes a moment to arrive (an uncached note): 10 s of sound before the note-off.
    assert onset + 10 * rate <= 13 * rate and np.abs(levels - np.median(levels)).max() < 6, (onset, levels.round(1))
    after = audio[int(13.5 * rate) : int(14.3 * rate)]  # the note-off came at 13.0 s of the recording
    assert np.sqrt(np.mean(after**2)) < 1e-3, np.abs(after).max()


def test_pd_patch_generates_loads_the_wav_and_reports_its_length(pd, live):
    """Headless Pd at its default 44.1 kHz runs the patch itself: /generate through its button's receive name,
    the reply routed, the WAV (at Pd's rate, as the patch asked) read by soundfiler into the main array."""
    send = f"inpaint-osc-listen {live.reply_port}; inpaint-osc-connect 127.0.0.1 {live.port}; "
    send += "inpaint-osc-ping bang; inpaint-osc-generate bang"

    def done(lines: list[str]) -> bool:
        return any(x.startswith("inpaint-osc: loaded ") for x in lines) and any(" file " in x for x in lines)

    lines = run_pd(pd, send, done, rate=44_100)
    loaded = [int(float(x.split()[-1])) for x in lines if x.startswith("inpaint-osc: loaded ")]
    [wav] = [x.split(" ", 2)[2] for x in lines if x.startswith("inpaint-osc: file ")][:1]
    info = sf.info(wav)
    assert loaded[0] == info.frames == 176_400 and info.samplerate == 44_100, lines


def test_pd_exports_the_instrument_into_the_typed_folder(pd, live):
    """The export button's receive name, with the folder set by its own: /export/instrument reaches the server,
    whose /export/done the patch logs with the two files' paths."""
    folder = live.read_dir / "pd-instrument"
    send = f"inpaint-osc-listen {live.reply_port}; inpaint-osc-connect 127.0.0.1 {live.port}; "
    send += f"inpaint-osc-export-path symbol {folder}; inpaint-osc-export bang"
    lines = run_pd(pd, send, lambda lines: any(x.startswith("inpaint-osc: exported ") for x in lines), seconds=120)
    [done] = [x.split()[2:] for x in lines if x.startswith("inpaint-osc: exported ")]
    assert done == [str(folder / "pd-instrument.sfz"), str(folder / "pd-instrument.sf2"), "61"], lines
    assert len(list((folder / "samples").iterdir())) == 61
