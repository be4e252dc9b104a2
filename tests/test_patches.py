"""The performer's patches: generated from the address table, well-formed, speaking only addresses the server
knows; and the Pd patch itself, headless, against a live server."""

import importlib.util
import json
import re
import select
import shutil
import subprocess
import time

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


def test_maxpat_is_well_formed_json_in_the_form_max_writes():
    patcher = json.loads((PATCHES / "inpaint-osc.maxpat").read_text())["patcher"]
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
    assert patcher["openinpresentation"] == 1 and len(presented) > 20


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
        if words[1] == "msg" and len(words) == 6 and words[4] == "set":  # the range tools switch addresses
            sent.add("/" + words[5])
    assert sent <= set(protocol.BY_PATH), sent - set(protocol.BY_PATH)
    assert {"/ping", "/generate", "/pitch", "/instrument", "/inpaint", "/erase", "/randomize", "/note"} <= sent
    first_parts = {p.split("/")[1] for p in OUT_PATHS}
    routes = [t.rstrip(";").split()[5:] for t in objects if " route " in t]
    assert routes and all(set(r) <= first_parts | {"done", "top", "bottom"} for r in routes)


@pytest.fixture(scope="module")
def pd():
    require(shutil.which("pd") is not None, "Pure Data (pd)")
    return shutil.which("pd")


def test_pd_patch_generates_loads_the_wav_and_reports_its_length(pd, live):
    """Headless Pd runs the patch itself: /ping and /generate through its own buttons' receive names, the
    reply routed, the WAV read by soundfiler; its console line says how many samples it loaded."""
    send = f"inpaint-osc-listen {live.reply_port}; inpaint-osc-connect 127.0.0.1 {live.port}; "
    send += "inpaint-osc-ping bang; inpaint-osc-generate bang"
    proc = subprocess.Popen(
        [pd, "-nogui", "-noaudio", "-nomidi", "-stderr", "-send", send, str(PATCHES / "inpaint-osc.pd")],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        bufsize=0,
    )
    lines, loaded, wav = [], None, None
    deadline = time.monotonic() + 60
    try:
        while (loaded is None or wav is None) and time.monotonic() < deadline:
            if not select.select([proc.stderr], [], [], 1.0)[0]:
                continue
            line = proc.stderr.readline().decode().strip()
            lines.append(line)
            if line.startswith("inpaint-osc: loaded "):
                loaded = int(float(line.split()[-1]))
            if line.startswith("inpaint-osc: file "):
                wav = line.split(" ", 2)[2]
    finally:
        proc.kill()
        proc.wait(10)
    problems = [x for x in lines if "couldn't create" in x or "connection failed" in x or "error" in x]
    assert not problems, problems
    assert loaded is not None and wav is not None, lines
    assert loaded == sf.info(wav).frames == 64_000
