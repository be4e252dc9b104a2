"""Writes the performer's patches from the OSC address table: maxpatch/inpaint-osc.maxpat (Max, vanilla
objects), maxpatch/inpaint-osc.pd (its Pure Data twin) and the address table of maxpatch/README.md.

Run `python maxpatch/generate.py` after changing `server/protocol.py`; a test fails while the files differ
from what this script writes. Every address a patch sends is checked against the table as it is written.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from server import protocol  # noqa: E402
from server.bundle import FAMILIES  # noqa: E402

SERVER_PORT, REPLY_PORT = 9000, 9001


def check_send(address: str, n_args: int | None) -> str:
    """The address must exist; with a known argument count, the count must be one the table accepts."""
    a = protocol.BY_PATH[address]  # KeyError: the patch would send an address the server does not know
    if n_args is not None:
        fixed = len(a.args)
        ok = n_args in range(fixed, fixed + len(a.optional) + 1 + int(a.request_id)) or (
            bool(a.repeat) and n_args >= fixed + len(a.repeat)
        )
        if not ok:
            raise ValueError(f"{address} sent with {n_args} arguments; the table says {a.spec()}")
    return address


# ---- Max ------------------------------------------------------------------------------------------------


def _io(text: str) -> tuple[int, int, list[str]]:
    """(inlets, outlets, outlet types) of a newobj box, from its text."""
    name, *args = text.split()
    n = len(args)
    fixed: dict[str, tuple[int, int, list[str]]] = {
        "udpsend": (1, 0, []),
        "udpreceive": (1, 1, [""]),
        "prepend": (1, 1, [""]),
        "loadbang": (1, 1, ["bang"]),
        "buffer~": (1, 2, ["float", "bang"]),
        "groove~": (3, 2, ["signal", "signal"]),
        "sig~": (1, 1, ["signal"]),
        "notein": (1, 3, ["int", "int", "int"]),
        "pgmin": (1, 2, ["int", "int"]),
        "ctlin": (1, 3, ["int", "int", "int"]),
        "!-": (2, 1, ["int"]),
        "-": (2, 1, ["int"]),
        "zl": (2, 2, ["", ""]),
        "sel": (2, n + 1, ["bang"] * n + [""]),
        "delay": (2, 1, ["bang"]),
        "metro": (2, 1, ["bang"]),
        "change": (2, 3, ["", "int", "int"]),
        "gate": (2, 1, [""]),
        "conformpath": (1, 2, ["", "int"]),
        "dspstate~": (1, 4, ["int", "float", "int", "int"]),
        "poly": (2, 3, ["int", "int", "int"]),
        "poly~": (1, 1, ["signal"]),  # inlets and outlets of its voice patcher: one `in 1`, one `out~ 1`
        "thispoly~": (1, 2, ["int", "int"]),
        "sprintf": (1, 1, [""]),
        "in": (0, 1, [""]),
        "out~": (1, 0, []),
        "line~": (2, 2, ["signal", "bang"]),
        "*~": (2, 1, ["signal"]),
        "*": (2, 1, ["float"]),
        "==": (2, 1, ["int"]),
        "expr": (max(int(c) for c in re.findall(r"\$[if](\d)", " ".join(args)) or ["1"]), 1, [""]),
        "i": (2, 1, ["int"]),
        "f": (2, 1, ["float"]),
        "s": (1, 0, []),
        "r": (0, 1, [""]),
    }
    if name in fixed:
        return fixed[name]
    if name == "route":
        return 2, n + 1, [""] * (n + 1)
    if name in ("pack", "pak"):
        return n, 1, [""]
    if name == "unpack":
        return 1, n, ["int" if a.isdigit() else "" for a in args]
    if name == "t":
        return 1, n, ["bang" if a == "b" else "int" if a == "i" else "" for a in args]
    raise KeyError(f"no inlet/outlet counts for {name!r}")


UI = {  # maxclass → (inlets, outlets, outlet types)
    "message": (2, 1, [""]),
    "comment": (1, 0, []),
    "button": (1, 1, ["bang"]),
    "toggle": (1, 1, ["int"]),
    "number": (1, 2, ["", "bang"]),
    "flonum": (1, 2, ["", "bang"]),
    "umenu": (1, 3, ["int", "", ""]),
    "kslider": (2, 2, ["int", "int"]),
    "led": (1, 1, ["int"]),
    "matrixctrl": (1, 2, ["list", "list"]),
    "fpic": (1, 1, ["jit_matrix"]),
    "waveform~": (5, 6, ["float", "float", "float", "float", "list", ""]),
    "ezdac~": (2, 0, []),
    "dropfile": (1, 2, ["", ""]),
    "textedit": (1, 4, ["", "int", "", ""]),  # its text (as "text ..."), keys, bang on change, dumpout
}


class MaxPatch:
    def __init__(self) -> None:
        self.boxes: list[dict] = []
        self.lines: list[dict] = []

    def box(self, maxclass: str, x: float, y: float, text: str = "", w: float = 0, h: float = 22, show=None, **attrs):
        """A box; `show` = (x, y, w, h) puts it in the presentation view too. Returns its id."""
        ins, outs, types = _io(text) if maxclass == "newobj" else UI[maxclass]
        box = {
            "id": f"obj-{len(self.boxes) + 1}",
            "maxclass": maxclass,
            "numinlets": ins,
            "numoutlets": outs,
            "outlettype": types,
            "patching_rect": [x, y, w or max(40.0, 7.0 * len(text) + 12), h],
        }
        if maxclass in ("newobj", "message", "comment"):
            box["text"] = text
        if show is not None:
            box["presentation"] = 1
            box["presentation_rect"] = list(show)
        if maxclass not in ("newobj", "message", "comment"):
            box["parameter_enable"] = 0
        box.update(attrs)
        self.boxes.append({"box": box})
        return box["id"]

    def send(self, x: float, y: float, address: str, *args: str, show=None) -> str:
        """A message box that sends `address args` to the server (checked against the table)."""
        check_send(address, len(args))
        return self.box("message", x, y, " ".join((address, *args)), show=show)

    def connect(self, src: str, outlet: int, dst: str, inlet: int = 0) -> None:
        self.lines.append({"patchline": {"source": [src, outlet], "destination": [dst, inlet]}})

    def write(self, path: Path) -> None:
        patcher = {
            "fileversion": 1,
            "appversion": {"major": 8, "minor": 6, "revision": 0, "architecture": "x64", "modernui": 1},
            "classnamespace": "box",
            "rect": [40.0, 60.0, 1180.0, 860.0],
            "openinpresentation": int(any(b["box"].get("presentation") for b in self.boxes)),
            "default_fontsize": 12.0,
            "default_fontname": "Arial",
            "gridsize": [15.0, 15.0],
            "boxes": self.boxes,
            "lines": self.lines,
            "dependency_cache": [],
            "autosave": 0,
        }
        path.write_text(json.dumps({"patcher": patcher}, indent=1) + "\n")


VOICES = 8  # polyphony of both patches: one voice (buffer/array, player, envelope) per sounding note
# A note's request id is 10 * pitch + voice (241..848): the voice routes its /render/done, and a render that comes
# late, after the voice went to another note, is told apart by its pitch. Other ids are not notes.
NOTE_ID = "10 * $3 + $2"  # of the list "velocity voice pitch", in [expr]'s syntax ($f in Pd, $i in Max)
VOICE_OF_ID = "($1 >= 240 && $1 < 850) * ($1 % 10)"  # the voice of a note's id (1-8); 0 or 9: not a note
# The dials of both patches: every number setting of the table, in its order (a new one gets a dial, its range
# and its echo from `protocol.SETTINGS` alone).
KNOBS = tuple(s.address for s in protocol.SETTINGS if s.address.args[0].kind == "f")
MAX_ROUTES = (  # what the Max patch listens to, in its [route]'s outlet order
    "/pong", "/status", "/error", "/render/done", "/render/loop", "/image/done", "/codemap", "/model/info", "/pitch",
    "/instrument", *(k.path for k in KNOBS), "/note/cache", "/export/progress", "/export/done",
)  # fmt: skip


def _number(x: float | None) -> float:
    """A bound as the patch files write it: 10, not 10.0."""
    return int(x) if x is not None and float(x).is_integer() else x  # type: ignore[return-value]


def max_voice() -> MaxPatch:
    """inpaint-osc-voice.maxpat, one instance per voice of [poly~ inpaint-osc-voice 8], addressed with
    `target N`. Messages: `on` (a note-on took this voice), `loop START END START_MS END_MS` (its render's sustain
    loop, /render/loop: groove~ loops it while the key is held), `play PATH` (its render: loaded into the voice's
    own buffer~ and played if the key is still down), `release` (note-off: fade out over /release, the loop let
    go)."""
    p = MaxPatch()
    c = p.box
    # This instance's own buffer: named inpaint-osc-voice-N after its poly~ instance number N.
    load = c("newobj", 400, 20, "loadbang")
    me = c("newobj", 400, 50, "thispoly~")
    p.connect(load, 0, me)
    naming = c("newobj", 400, 80, "sprintf name inpaint-osc-voice-%ld")
    setting = c("newobj", 600, 80, "sprintf set inpaint-osc-voice-%ld")
    p.connect(me, 0, naming)
    p.connect(me, 0, setting)
    buf = c("newobj", 20, 140, "buffer~ inpaint-osc-voice")
    player = c("newobj", 20, 260, "groove~ inpaint-osc-voice")
    p.connect(naming, 0, buf)
    p.connect(setting, 0, player)
    route = c("newobj", 20, 20, "route on play release loop")
    p.connect(c("newobj", 20, -10, "in 1"), 0, route)
    # The sustain loop (the server cross-faded its end into its start): groove~ wraps there while the key is down.
    looped = c("message", 480, 260, "setloop $3 $4, loop 1")
    p.connect(route, 3, looped)
    p.connect(looped, 0, player)
    expected = c("newobj", 200, 110, "== 0")  # right inlet: the id of the note this voice holds, 0 once released
    p.connect(route, 0, expected, 1)
    gate = c("newobj", 200, 170, "i")
    p.connect(expected, 0, gate, 1)
    render = c("newobj", 20, 50, "t l l")  # "ID PATH": is it ours (right, first), then load it (left)
    p.connect(route, 1, render)
    its_id = c("newobj", 200, 80, "zl slice 1")
    p.connect(render, 1, its_id)
    p.connect(its_id, 0, expected)
    its_path = c("newobj", 20, 80, "zl slice 1")
    p.connect(render, 0, its_path)
    replace = c("newobj", 20, 110, "prepend replace")
    p.connect(its_path, 1, replace)
    p.connect(replace, 0, buf)
    p.connect(buf, 1, gate)  # read: our note, its key still down?
    down = c("newobj", 200, 200, "sel 1")
    p.connect(gate, 0, down)
    start = c("newobj", 200, 230, "t b b")
    p.connect(down, 0, start)
    # A voice still sounding (a key struck again, a stolen voice) fades out over 1 ms before its new render
    # starts from the top; then a 3 ms fade-in: no click either way.
    fade = c("message", 260, 260, "0 1 1 3")
    envelope = c("newobj", 260, 290, "line~")
    p.connect(start, 1, fade)
    p.connect(fade, 0, envelope)
    wait = c("newobj", 200, 260, "delay 1")
    from_start = c("message", 200, 290, "0")  # play from the first millisecond
    p.connect(start, 0, wait)
    p.connect(wait, 0, from_start)
    p.connect(from_start, 0, player)
    p.connect(c("newobj", 120, 230, "sig~ 1"), 0, player)
    amp = c("newobj", 20, 320, "*~")
    p.connect(player, 0, amp)
    p.connect(envelope, 0, amp, 1)
    p.connect(amp, 0, c("newobj", 20, 350, "out~ 1"))
    # note-off: the gate closes (a render still on its way stays silent) and the voice fades over /release
    release_ms = c("newobj", 400, 200, "f 150.")
    seconds = c("newobj", 400, 140, "r inpaint-osc-release")
    to_ms = c("newobj", 400, 170, "* 1000.")
    p.connect(seconds, 0, to_ms)
    p.connect(to_ms, 0, release_ms, 1)
    off = c("newobj", 300, 110, "t b b b")
    p.connect(route, 2, off)
    let_go = c("message", 480, 290, "loop 0")  # on to the render's end, under the fade
    p.connect(off, 2, let_go)
    p.connect(let_go, 0, player)
    zero = c("message", 340, 140, "0")
    p.connect(off, 1, zero)
    p.connect(zero, 0, expected, 1)
    p.connect(off, 0, release_ms)
    fade = c("message", 400, 230, "0 $1")
    p.connect(release_ms, 0, fade)
    p.connect(fade, 0, envelope)
    return p


def max_patch() -> MaxPatch:
    p = MaxPatch()
    c = p.box
    c(
        "comment",
        20,
        10,
        "inpaint-osc: paint instrument sounds. Start the server (inpaint-osc serve), then play.",
        w=560,
        show=(10, 5, 560, 22),
    )
    net = c("newobj", 20, 700, f"udpsend 127.0.0.1 {SERVER_PORT}")
    # Another server (another machine, another port): edit the box, click it (Pd: the inpaint-osc-connect send).
    server_box = c("message", 20, 640, f"127.0.0.1 {SERVER_PORT}", show=(580, 5, 130, 22))
    c("comment", 140, 640, "server host port: edit, then click", show=(715, 5, 220, 22))
    to_server = c("message", 20, 670, "host $1, port $2")
    p.connect(server_box, 0, to_server)
    p.connect(to_server, 0, net)
    rx = c("newobj", 600, 40, f"udpreceive {REPLY_PORT}")
    for r in MAX_ROUTES:
        if r not in {a.path for a in protocol.OUTBOUND}:
            raise KeyError(r)
    route = c("newobj", 600, 70, "route " + " ".join(MAX_ROUTES), w=900)
    p.connect(rx, 0, route)
    out = {r: i for i, r in enumerate(MAX_ROUTES)}

    def echo(address: str, x: float, y: float) -> str:
        """A `prepend set` fed by the server's echo of `address`: shows its value without sending it back."""
        setter = c("newobj", x, y, "prepend set")
        p.connect(route, out[address], setter)
        return setter

    # Connection: a ping every 2 s; the light is on while pongs come, off after 5 s without one. Coming back on
    # (and loading) announces the patch: its sample rate (renders come at the rate Max plays them) and /state
    # (the controls then show what the server has).
    ping = p.send(20, 40, "/ping", show=(10, 35, 50, 22))
    p.connect(ping, 0, net)
    load = c("newobj", 80, 40, "loadbang")
    metro = c("newobj", 160, 40, "metro 2000")
    p.connect(load, 0, metro)
    p.connect(metro, 0, ping)
    pong = c("newobj", 600, 110, "t b b")
    p.connect(route, out["/pong"], pong)
    silence = c("newobj", 680, 140, "delay 5000")
    p.connect(pong, 1, silence)
    connected = c("newobj", 600, 170, "change")
    on, off = c("message", 600, 140, "1"), c("message", 680, 170, "0")
    p.connect(pong, 0, on)
    p.connect(on, 0, connected)
    p.connect(silence, 0, off)
    p.connect(off, 0, connected)
    light = c("led", 600, 200, w=24, h=24, show=(70, 35, 24, 24))
    p.connect(connected, 0, light)
    announce = c("newobj", 760, 230, "t b b")
    p.connect(load, 0, announce)
    came_back = c("newobj", 680, 200, "sel 1")
    p.connect(connected, 0, came_back)
    p.connect(came_back, 0, announce)
    state = p.send(760, 260, "/state")
    p.connect(announce, 0, state)
    p.connect(state, 0, net)
    # The host's rate: [dspstate~] reports it when audio starts and whenever it changes; kept for re-announcing.
    dsp = c("newobj", 880, 200, "dspstate~")
    rate_changed = c("newobj", 880, 230, "change")
    p.connect(dsp, 1, rate_changed)
    rate = c("newobj", 880, 260, "i")
    p.connect(rate_changed, 0, rate)
    p.connect(announce, 1, rate)
    known = c("newobj", 880, 290, "sel 0")  # no rate before audio first runs: nothing to say yet
    p.connect(rate, 0, known)
    tell = c("newobj", 880, 320, "prepend " + check_send("/render/rate", 1))
    p.connect(known, 1, tell)
    p.connect(tell, 0, net)
    for i, (address, y) in enumerate((("/status", 140), ("/error", 170))):
        shown = c("message", 1040, y, "", w=360, show=(110, 35 + 30 * i, 460, 22))
        p.connect(echo(address, 1000, y), 0, shown)

    # Conditioning: instrument, pitch (keyboard and number), and the settings, each showing the server's value.
    items = []
    for f in FAMILIES:
        items += [f, ","]
    menu = c("umenu", 20, 80, w=120, show=(10, 70, 120, 22), items=items[:-1])
    instr = c("newobj", 20, 110, "prepend " + check_send("/instrument", 1))
    p.connect(menu, 1, instr)
    p.connect(instr, 0, net)
    family = c("newobj", 1000, 260, "zl slice 1")  # /instrument index name
    p.connect(route, out["/instrument"], family)
    family_set = c("newobj", 1000, 290, "prepend set")
    p.connect(family, 0, family_set)
    p.connect(family_set, 0, menu)
    keys = c("kslider", 160, 80, w=336, h=53, show=(140, 70, 336, 53), offset=24, range=61)
    pitch_box = c("number", 160, 140, w=50, show=(486, 70, 50, 22))
    pitch = c("newobj", 160, 170, "prepend " + check_send("/pitch", 1))
    p.connect(keys, 0, pitch_box)
    p.connect(pitch_box, 0, pitch)
    p.connect(pitch, 0, net)
    pitch_echo = echo("/pitch", 1000, 320)
    p.connect(pitch_echo, 0, pitch_box)
    p.connect(pitch_echo, 0, keys)
    knobs = [k.path for k in KNOBS]
    for i, address in enumerate(knobs):
        row, col = i % 5, i // 5
        c("comment", 520 + 160 * col, 80 + 30 * row, address[1:], show=(546 + 170 * col, 70 + 30 * row, 100, 22))
        low = -60.0 if address in ("/level", "/gain") else 0.0
        knob = c(
            "flonum", 600, 380 + 30 * i, w=60, show=(650 + 170 * col, 70 + 30 * row, 60, 22), minimum=low
        )  # fmt: skip
        send = c("newobj", 670, 380 + 30 * i, "prepend " + check_send(address, 1))
        p.connect(knob, 0, send)
        p.connect(send, 0, net)
        p.connect(echo(address, 760, 380 + 30 * i), 0, knob)
    p.connect(route, out["/release"], c("newobj", 860, 590, "s inpaint-osc-release"))  # the voices' fade-out
    cache = c("message", 20, 250, "", w=200, show=(10, 190, 250, 22))
    cache_set = c("newobj", 860, 620, "prepend set notes cached:")
    p.connect(route, out["/note/cache"], cache_set)
    p.connect(cache_set, 0, cache)

    # Sound-wide actions.
    for i, (label, address) in enumerate(
        (
            ("generate", "/generate"),
            ("keep top, resample bottom", "/resample/bottom"),
            ("undo", "/undo"),
            ("redo", "/redo"),
        )
    ):
        b = p.send(20 + 130 * i, 210, address, show=(10 + 130 * i, 135, 120, 22))
        p.connect(b, 0, net)
        c("comment", 20 + 130 * i, 235, label, show=(10 + 130 * i, 158, 120, 22))

    # The codemap editor, per layer: the last render's spectrogram with that layer's grid under a transparent
    # grid of cells to select, frequency upwards, time to the right. Pictures only when asked for: with
    # "pictures" on, /image layer id follows each render (the id tells the two pictures apart).
    buffer_replace = c("newobj", 760, 700, "prepend replace")
    by_id = c("newobj", 980, 560, "route 1 2")
    p.connect(route, out["/image/done"], by_id)  # /image/done id path width height
    pictures = c("toggle", 1100, 500, w=22, show=(270, 190, 22, 22))
    c("comment", 1130, 500, "pictures", show=(295, 190, 80, 22))
    gate = c("newobj", 1100, 530, "gate 1")
    p.connect(pictures, 0, gate)
    now = c("newobj", 1180, 530, "sel 1")  # turned on: the pictures of the current sound at once
    p.connect(pictures, 0, now)
    for k, (layer, rows, cols) in enumerate((("top", 32, 4), ("bottom", 64, 8))):
        x, shown_x = 300 + 260 * k, 10 + 266 * k
        pic = c("fpic", x, 270, w=256, h=256, show=(shown_x, 220, 256, 256), autofit=1)
        path = c("newobj", 980 + 100 * k, 590, "zl slice 1")
        p.connect(by_id, k, path)
        read_png = c("newobj", 980 + 100 * k, 620, "prepend read")
        p.connect(path, 0, read_png)
        p.connect(read_png, 0, pic)
        ask = p.send(1100 + 100 * k, 560, "/image", layer, str(k + 1))
        p.connect(gate, 0, ask)
        p.connect(now, 0, ask)
        p.connect(ask, 0, net)
        grid = c(
            "matrixctrl",
            x,
            270,
            w=256,
            h=256,
            show=(shown_x, 220, 256, 256),
            rows=rows,
            columns=cols,
            bgcolor=[0.0, 0.0, 0.0, 0.0],
        )
        cell = c("newobj", x, 540, "unpack 0 0 0")
        p.connect(grid, 0, cell)
        flip = c("newobj", x + 60, 570, f"!- {rows - 1}")  # matrixctrl row 0 is the top: the server's is the lowest
        p.connect(cell, 1, flip)
        pair = c("newobj", x, 600, "pack 0 0")
        p.connect(flip, 0, pair, 1)
        col = c("newobj", x, 570, "t i")
        p.connect(cell, 0, col)
        p.connect(col, 0, pair)
        keep = c("newobj", x, 630, "zl group 4096")
        p.connect(pair, 0, keep)
        apply = c("message", x, 660, "bang", show=(shown_x, 485, 40, 22))
        c("comment", x + 60, 660, f"inpaint selected {layer} cells", show=(shown_x + 45, 485, 200, 22))
        p.connect(apply, 0, keep)
        send = c("newobj", x, 690, f"prepend {check_send('/inpaint/cells', None)} {layer}")
        p.connect(keep, 0, send)
        p.connect(send, 0, net)
        clear = c("message", x + 160, 690, "clear")
        p.connect(apply, 0, clear)
        p.connect(clear, 0, grid)

    # Ranges: time t0..t1 and frequency f0..f1 in the chosen layer, then inpaint, erase or randomize.
    layer_menu = c("umenu", 20, 560, w=80, show=(10, 515, 80, 22), items=["top", ",", "bottom"])
    ranges = c("newobj", 20, 620, "pak top 0 1 0 32")
    p.connect(layer_menu, 1, ranges)
    for i, name in enumerate(("t0", "t1", "f0", "f1")):
        n = c("number", 110 + 50 * i, 560, w=45, show=(100 + 50 * i, 515, 45, 22), minimum=0)
        c("comment", 110 + 50 * i, 540, name, show=(100 + 50 * i, 538, 45, 22))
        p.connect(n, 0, ranges, 1 + i)
    p.connect(load, 0, ranges)  # [pak] outputs on every change, and on this first bang
    for i, address in enumerate(("/inpaint", "/erase", "/randomize")):
        check_send(address, 5)
        tool = c("message", 20 + 90 * i, 650, "bang", show=(310 + 90 * i, 515, 80, 22))
        c("comment", 20 + 90 * i, 675, address[1:] + " range", show=(310 + 90 * i, 538, 90, 22))
        held = c("newobj", 300 + 90 * i, 620, "zl reg")  # right inlet: kept silently; a bang sends it
        p.connect(ranges, 0, held, 1)
        p.connect(tool, 0, held)
        send = c("newobj", 300 + 90 * i, 650, f"prepend {address}")
        p.connect(held, 0, send)
        p.connect(send, 0, net)

    # Notes: [poly] picks one of 8 voices of [poly~]; a note-on opens that voice and asks for the note with the
    # voice as its request id; that /render/done goes to the voice; a note-off releases it (and tells the
    # server, for --play). Other renders load the main buffer~, played by groove~ (loop on/off).
    notein = c("newobj", 1000, 40, "notein")
    poly = c("newobj", 1000, 70, f"poly {VOICES} 1")
    p.connect(notein, 0, poly)
    p.connect(notein, 1, poly, 1)
    held_note = c("newobj", 1000, 100, "pack 0 0 0")
    for i in range(3):
        p.connect(poly, i, held_note, i)
    velocity_first = c("message", 1000, 130, "$3 $1 $2")
    p.connect(held_note, 0, velocity_first)
    on_off = c("newobj", 1000, 160, "route 0")
    p.connect(velocity_first, 0, on_off)
    voices = c("newobj", 1000, 260, f"poly~ inpaint-osc-voice {VOICES}")
    note_send = c("newobj", 1200, 230, "prepend " + check_send("/note", 3))
    p.connect(note_send, 0, net)
    released = c("newobj", 1000, 190, "t l l")
    p.connect(on_off, 0, released)
    note_off = c("message", 1080, 210, "$2 0")
    p.connect(released, 1, note_off)
    p.connect(note_off, 0, note_send)
    release = c("message", 1000, 210, "target $1, release")
    p.connect(released, 0, release)
    p.connect(release, 0, voices)
    on = c("newobj", 1150, 160, "t l l")  # "velocity voice pitch": its id (right, first), then the note
    p.connect(on_off, 1, on)
    note_id = c("newobj", 1250, 160, "expr " + NOTE_ID.replace("$", "$i"))
    with_id = c("newobj", 1150, 190, "pack 0 0 0 0")
    p.connect(on, 1, note_id)
    p.connect(note_id, 0, with_id, 3)
    p.connect(on, 0, with_id)  # a list into the left inlet fills the inlets in turn, then sends
    struck = c("newobj", 1150, 220, "t l l")  # "velocity voice pitch id"
    p.connect(with_id, 0, struck)
    opened = c("message", 1250, 250, "target $2, on $4")
    p.connect(struck, 1, opened)
    p.connect(opened, 0, voices)
    asked = c("message", 1150, 250, "$3 $1 $4")  # /note pitch velocity id
    p.connect(struck, 0, asked)
    p.connect(asked, 0, note_send)
    dac = c("ezdac~", 760, 820, w=45, h=45, show=(690, 570, 45, 45))
    p.connect(voices, 0, dac)
    p.connect(voices, 0, dac, 1)

    def to_voices(address: str, x: int, step: int, message: str) -> str:
        """`address id ...` → "voice id ..." (the voice from the id, 0: not a note) → `target N, message` into
        [poly~]; returns the [route] whose last outlet has what is not a note."""
        which = c("newobj", x, 580, "t l l")
        tagged = c("newobj", x, 610, "zl join")
        p.connect(which, 1, tagged, 1)
        first = c("newobj", x + 80, 580, "zl slice 1")
        p.connect(which, 0, first)
        voice_of = c("newobj", x + 80, 610, "expr " + VOICE_OF_ID.replace("$", "$i"))
        p.connect(first, 0, voice_of)
        p.connect(voice_of, 0, tagged)
        p.connect(route, out[address], which)
        by_voice = c("newobj", x, 640, "route " + " ".join(str(v) for v in range(1, VOICES + 1)), w=300)
        p.connect(tagged, 0, by_voice)
        for v in range(1, VOICES + 1):
            sent = c("message", x + step * (v - 1), 670, f"target {v}, {message}")
            p.connect(by_voice, v - 1, sent)
            p.connect(sent, 0, voices)
        return by_voice

    by_voice = to_voices("/render/done", 760, 70, "play $1 $2")
    to_voices("/render/loop", 1320, 90, "loop $2 $3 $4 $5")  # before its /render/done: the sustain loop
    not_note = c("newobj", 760, 700, "zl slice 2")  # "0 id path ...": the path is the third item
    p.connect(by_voice, VOICES, not_note)
    path = c("newobj", 860, 700, "zl slice 1")
    p.connect(not_note, 1, path)
    p.connect(path, 0, buffer_replace)
    p.connect(by_voice, VOICES, gate, 1)  # pictures follow renders of the sound, not of notes
    buf = c("newobj", 760, 730, "buffer~ inpaint-osc")
    p.connect(buffer_replace, 0, buf)
    c("waveform~", 20, 740, w=560, h=80, show=(10, 570, 560, 80), buffername="inpaint-osc")
    player = c("newobj", 760, 790, "groove~ inpaint-osc")
    start = c("message", 760, 760, "startloop", show=(580, 570, 70, 22))
    loop_toggle = c("toggle", 840, 760, w=22, show=(660, 570, 22, 22))
    loop_msg = c("message", 870, 760, "loop $1")
    speed = c("newobj", 950, 760, "sig~ 1")
    p.connect(start, 0, player)
    p.connect(loop_toggle, 0, loop_msg)
    p.connect(loop_msg, 0, player)
    p.connect(speed, 0, player)
    p.connect(player, 0, dac)
    p.connect(player, 0, dac, 1)
    c("comment", 580, 595, "play / loop", show=(580, 595, 100, 22))
    # A dropped file is analyzed: Max gives "Volume:/path" paths, the server needs the system's "/path".
    drop = c("dropfile", 20, 830, w=200, h=40, show=(10, 660, 200, 40))
    posix = c("newobj", 240, 830, "conformpath slash boot")
    p.connect(drop, 0, posix)
    analyze = c("newobj", 240, 860, "prepend " + check_send("/analyze", 1))
    p.connect(posix, 0, analyze)
    p.connect(analyze, 0, net)
    c("comment", 20, 875, "drop a sound file here to analyze it", show=(10, 702, 240, 22))
    # Export: the current sound as a sampler instrument (SFZ + SF2, one note per key) into the typed folder.
    folder = c("textedit", 300, 830, w=260, h=22, show=(260, 660, 260, 22), text="~/inpaint-instrument")
    export = c("button", 580, 830, w=22, h=22, show=(530, 660, 22, 22))
    p.connect(export, 0, folder)  # a bang outputs the text
    typed = c("newobj", 300, 860, "route text")
    p.connect(folder, 0, typed)
    to_folder = c("newobj", 300, 890, "prepend " + check_send("/export/instrument", 1))
    p.connect(typed, 0, to_folder)
    p.connect(to_folder, 0, net)
    c("comment", 610, 830, "export instrument (SFZ + SF2) to this folder", show=(560, 660, 290, 22))
    for i, address in enumerate(("/export/progress", "/export/done")):
        shown = c("message", 610, 860 + 30 * i, "", w=360, show=(260, 688 + 26 * i, 590, 22))
        p.connect(echo(address, 1000, 860 + 30 * i), 0, shown)

    # MIDI programs (Max counts 1-128, the server 0-127) and controllers as /cc controller value.
    pgmin = c("newobj", 1000, 320, "pgmin")
    minus = c("newobj", 1000, 350, "- 1")
    program = c("newobj", 1000, 380, "prepend " + check_send("/program", 1))
    p.connect(pgmin, 0, minus)
    p.connect(minus, 0, program)
    p.connect(program, 0, net)
    ctlin = c("newobj", 1100, 320, "ctlin")
    cc = c("newobj", 1100, 350, "pack 0 0")
    # [ctlin] fires right to left: the controller number reaches the cold inlet first, then the value the hot one
    p.connect(ctlin, 1, cc, 1)
    p.connect(ctlin, 0, cc)
    swap = c("message", 1100, 380, "$2 $1")  # value controller → controller value
    p.connect(cc, 0, swap)
    cc_send = c("newobj", 1100, 410, "prepend " + check_send("/cc", 2))
    p.connect(swap, 0, cc_send)
    p.connect(cc_send, 0, net)
    c(
        "comment",
        20,
        900,
        "Keyboard: pitch. Grids: click cells, then 'inpaint cells'. Ranges: layer, t0 t1 (time columns), f0 f1 "
        "(frequency rows from the lowest), half-open. MIDI notes play 8 voices; programs, CC 1 / 74 / 70 / 7 / 72 "
        "set temperature, top-p, instrument, gain, release.",
        w=700,
        h=40,
        show=(10, 730, 700, 40),
    )
    return p


# ---- Pure Data ------------------------------------------------------------------------------------------


class PdPatch:
    """Objects in creation order (their index is what `#X connect` names)."""

    def __init__(self) -> None:
        self.lines = ["#N canvas 40 60 1100 760 12;"]
        self.count = 0

    def _add(self, line: str) -> int:
        self.lines.append(line)
        self.count += 1
        return self.count - 1

    def obj(self, x: int, y: int, text: str) -> int:
        return self._add(f"#X obj {x} {y} {text.replace('$', chr(92) + '$')};")

    def msg(self, x: int, y: int, text: str) -> int:
        return self._add(f"#X msg {x} {y} {text.replace('$', chr(92) + '$')};")

    def text(self, x: int, y: int, words: str) -> int:
        return self._add(f"#X text {x} {y} {words.replace(',', ' ').replace(';', ' ')};")

    def atom(self, x: int, y: int, width: int = 5, lo: float = 0, hi: float = 0) -> int:
        return self._add(f"#X floatatom {x} {y} {width} {lo} {hi} 0 - - - 0;")

    def symbol_atom(self, x: int, y: int, width: int) -> int:
        return self._add(f"#X symbolatom {x} {y} {width} 0 0 0 - - - 0;")

    def send(self, x: int, y: int, address: str, n_args: int | None) -> int:
        """[oscformat] for `address` feeding the shared sender (checked against the table)."""
        check_send(address, n_args)
        fmt = self.obj(x, y, "oscformat " + " ".join(address.strip("/").split("/")))
        self.connect(fmt, 0, self.obj(x, y + 25, "s inpaint-osc-send"))
        return fmt

    def array(self, x: int, y: int, name: str, size: int, lo: float, hi: float, w: int = 400, h: int = 100) -> int:
        self.lines.append("#N canvas 0 50 450 250 (subpatch) 0;")
        self.lines.append(f"#X array {name} {size} float 0;")
        self.lines.append(f"#X coords 0 {hi} {size} {lo} {w} {h} 1 0 0;")
        return self._add(f"#X restore {x} {y} graph;")

    def connect(self, a: int, outlet: int, b: int, inlet: int = 0) -> None:
        self.lines.append(f"#X connect {a} {outlet} {b} {inlet};")

    def chain(self, *objects: int) -> int:
        """Each object's left outlet into the next one's left inlet; returns the last."""
        for a, b in zip(objects, objects[1:], strict=False):
            self.connect(a, 0, b)
        return objects[-1]

    def write(self, path: Path) -> None:
        path.write_text("\n".join(self.lines) + "\n")


LOOP_LEAD_MS = 20  # a voice schedules its next loop pass this long ahead, so the jump lands on the exact sample


def pd_voice() -> PdPatch:
    """inpaint-osc-voice.pd, one instance per voice of [clone -s 1 inpaint-osc-voice 8] ($1 = the voice number).
    Messages: `on ID` (a note-on took this voice; ID is its request id), `loop START END START_MS END_MS` (its
    render's sustain loop, /render/loop), `play ID PATH` (a render: loaded into the voice's own array, and played
    if ID is the note it holds and its key is still down), `release` (note-off: fade out over /release).
    The player is [vline~] into [tabread4~]: the render from its start to the loop's end, then the loop again
    and again (the server cross-faded its end into its start) until the note is released."""
    p = PdPatch()
    p.lines[0] = "#N canvas 0 50 860 460 12;"
    route = p.chain(p.obj(20, 20, "inlet"), p.obj(20, 50, "route on play release loop"))
    expected = p.obj(420, 80, "==")  # right inlet: the id of the note this voice holds, 0 once released
    p.connect(route, 0, expected, 1)
    gate = p.obj(420, 110, "f")
    p.connect(expected, 0, gate, 1)
    render = p.obj(120, 50, "t l l")  # "ID PATH": is it ours (right, first), then load it (left)
    p.connect(route, 1, render)
    p.connect(render, 1, p.obj(300, 50, "list split 1"))
    p.connect(p.count - 1, 0, expected)
    path = p.obj(120, 80, "list split 1")
    p.connect(render, 0, path)
    load = p.chain(
        p.obj(120, 105, "list"),
        p.obj(120, 130, "list append $0-voice"),
        p.obj(120, 155, "list prepend read -resize"),
        p.obj(120, 180, "list trim"),
        p.obj(120, 205, "soundfiler"),
    )
    p.connect(path, 1, load - 4)
    p.obj(460, 20, "array define $0-voice")
    log = p.obj(20, 420, "print inpaint-osc")
    loaded = p.obj(20, 235, "t f b")
    p.connect(load, 0, loaded)
    p.chain(loaded, p.obj(20, 360, "list prepend voice $1 loaded"), p.obj(20, 390, "list trim"), log)
    start = p.chain(gate, p.obj(420, 140, "sel 1"), p.obj(420, 165, "t b b"))
    p.connect(loaded, 1, gate)
    # The loop: frames START..END and their times in ms, kept (cold) for the voice's next play; one [f] per use.
    points = p.obj(620, 80, "unpack f f f f")
    p.connect(route, 3, points)
    loop_ms = p.obj(840, 110, "expr $f2 - $f1")
    p.connect(points, 2, loop_ms)
    p.connect(points, 3, loop_ms, 1)

    def kept(x: int, y: int, source: int, outlet: int) -> int:
        box = p.obj(x, y, "f")
        p.connect(source, outlet, box, 1)
        return box

    index = p.obj(300, 260, "vline~")
    envelope = p.obj(460, 260, "vline~")
    # A voice still sounding (a key struck again, a stolen voice) fades out over 1 ms before its new render
    # starts from the top; then a 3 ms fade-in: no click either way.
    p.connect(start, 1, p.msg(460, 200, "0 1 \\, 1 3 1"))
    p.connect(p.count - 1, 0, envelope)
    go = p.chain(start, p.obj(300, 165, "delay 1"), p.obj(300, 195, "t b b"))
    # Play: the index ramps from 0 to the loop's end; LOOP_LEAD_MS before it gets there, the next pass (jump to
    # the loop's start at the end, ramp to its end again) is scheduled, and so on while the key is held.
    ask = p.obj(160, 200, "t b b")
    p.connect(go, 1, ask)
    first = p.obj(160, 260, "pack f f")  # END END_MS
    p.connect(ask, 1, kept(220, 230, points, 3))
    p.connect(p.count - 1, 0, first, 1)
    p.connect(ask, 0, kept(160, 230, points, 1))
    p.connect(p.count - 1, 0, first)
    p.connect(first, 0, p.msg(160, 290, "0 \\, $1 $2"))
    p.connect(p.count - 1, 0, index)
    timer = p.obj(540, 260, "delay")
    p.connect(go, 0, kept(540, 200, points, 3))
    p.connect(p.count - 1, 0, p.obj(540, 230, f"- {LOOP_LEAD_MS}"))
    p.connect(p.count - 1, 0, timer)
    wrap = p.obj(540, 290, "t b b b b")
    p.connect(timer, 0, wrap)
    again = p.obj(640, 380, "pack f f f")  # START END LOOP_MS: every pass after the first
    p.connect(wrap, 3, kept(760, 350, loop_ms, 0))
    p.connect(p.count - 1, 0, again, 2)
    p.connect(wrap, 2, kept(700, 350, points, 1))
    p.connect(p.count - 1, 0, again, 1)
    p.connect(wrap, 1, kept(640, 350, points, 0))
    p.connect(p.count - 1, 0, again)
    p.connect(again, 0, p.msg(640, 410, f"$1 0 {LOOP_LEAD_MS} \\, $2 $3 {LOOP_LEAD_MS}"))
    p.connect(p.count - 1, 0, index)
    p.connect(wrap, 0, kept(540, 350, loop_ms, 0))  # the next pass's schedule
    p.connect(p.count - 1, 0, timer)
    player = p.obj(300, 290, "tabread4~ $0-voice")
    p.connect(index, 0, player)
    amp = p.obj(300, 320, "*~")
    p.connect(player, 0, amp)
    p.connect(envelope, 0, amp, 1)
    p.connect(amp, 0, p.obj(300, 350, "outlet~"))
    # note-off: no render plays any more (one still on its way stays silent); the voice fades over /release and
    # its loop stops (the pass under way runs to its end, a rising zero crossing, under the fade)
    release_ms = p.obj(560, 140, "f 150")
    p.chain(p.obj(560, 80, "r inpaint-osc-release"), p.obj(560, 110, "* 1000"))
    p.connect(p.count - 1, 0, release_ms, 1)
    off = p.obj(460, 50, "t b b b")
    p.connect(route, 2, off)
    p.connect(off, 2, p.msg(520, 80, "0"))
    p.connect(p.count - 1, 0, expected, 1)
    p.connect(off, 1, p.msg(540, 200, "stop"))
    p.connect(p.count - 1, 0, timer)
    p.connect(off, 0, release_ms)
    p.connect(release_ms, 0, p.msg(560, 170, "0 $1"))
    p.connect(p.count - 1, 0, envelope)
    return p


def pd_patch() -> PdPatch:
    p = PdPatch()
    p.text(20, 10, "inpaint-osc - paint instrument sounds. Start the server (inpaint-osc serve) and play.")
    # Network: one sender for every message, replies parsed and routed by address.
    net = p.obj(20, 700, "netsend -u -b")
    load = p.obj(20, 40, "loadbang")
    boot = p.obj(20, 65, "t b b b b")
    p.connect(load, 0, boot)
    connect = p.msg(20, 640, f"connect 127.0.0.1 {SERVER_PORT}")
    p.connect(boot, 3, connect)
    p.connect(connect, 0, net)
    # Announce this patch: its sample rate (renders come at the rate Pd plays them) and a /state request,
    # at load, when told another server, and when the server answers again after a silence.
    announce = p.obj(200, 540, "t b b")
    p.connect(boot, 1, announce)
    rate = p.chain(p.obj(200, 565, "samplerate~"), p.send(200, 590, "/render/rate", 1))
    p.connect(announce, 1, rate - 1)
    p.connect(announce, 0, p.send(300, 565, "/state", 0))
    to = p.chain(p.obj(200, 460, "r inpaint-osc-connect"), p.obj(200, 485, "list"), p.obj(200, 510, "t b l"))
    p.connect(to, 1, p.msg(340, 510, "disconnect \\, connect $1 $2"))  # "127.0.0.1 9000": host as its selector
    p.connect(p.count - 1, 0, net)
    p.connect(to, 0, announce)
    p.chain(
        p.obj(420, 610, "r inpaint-osc-send"), p.obj(420, 640, "list prepend send"), p.obj(420, 670, "list trim"), net
    )

    rx = p.obj(620, 70, "netreceive -u -b")
    listen = p.msg(620, 40, f"listen {REPLY_PORT}")
    p.connect(boot, 2, listen)
    p.connect(listen, 0, rx)
    p.chain(p.obj(760, 10, "r inpaint-osc-listen"), p.msg(760, 40, "listen $1"), rx)
    outbound = (
        "pong status error render codemap pitch instrument temperature top_p guidance harmonic level gain "
        "velocity release note export timbre"
    )
    route = p.chain(rx, p.obj(620, 100, "oscparse"), p.obj(620, 125, "list trim"), p.obj(620, 150, "route " + outbound))
    log = p.obj(900, 675, "list trim")  # the console line: status, errors, each loaded render, the note cache
    p.connect(log, 0, p.obj(900, 700, "print inpaint-osc"))

    # Connection: a ping every 2 s; the light is on while pongs come, off after 5 s without one; coming back
    # on re-announces the patch (the server may have restarted and forgotten this client's rate).
    ping = p.msg(20, 100, "bang")
    p.text(70, 100, "ping")
    ping_r = p.obj(120, 100, "r inpaint-osc-ping")
    ping_fmt = p.send(20, 130, "/ping", 0)
    p.connect(ping, 0, ping_fmt)
    p.connect(ping_r, 0, ping_fmt)
    metro = p.obj(20, 160, "metro 2000")
    p.connect(boot, 0, metro)
    p.connect(metro, 0, ping_fmt)
    p.connect(metro, 0, p.obj(100, 160, "samplerate~"))  # the rate is watched too: Pd's can change any time
    p.chain(p.count - 1, p.obj(100, 185, "change"), p.send(100, 210, "/render/rate", 1))
    pong = p.obj(620, 175, "t b b")
    p.connect(route, 0, pong)
    silence = p.obj(700, 175, "delay 5000")
    p.connect(pong, 1, silence)
    connected = p.obj(620, 225, "change")
    p.connect(pong, 0, p.msg(620, 200, "1"))
    p.connect(p.count - 1, 0, connected)
    p.connect(silence, 0, p.msg(700, 200, "0"))
    p.connect(p.count - 1, 0, connected)
    light = p.obj(620, 275, "tgl 15 0 empty empty connected 17 7 0 10 -262144 -1 -1 0 1")
    p.connect(connected, 0, light)
    p.chain(connected, p.obj(700, 250, "sel 1"), announce)
    for i, name in enumerate(("status", "error")):
        shown = p.msg(780, 220 + 30 * i, "")
        setter = p.obj(780, 195 + 30 * i, "list prepend set")
        p.connect(route, 1 + i, setter)
        p.connect(setter, 0, shown)
        tag = p.obj(960, 195 + 30 * i, f"list prepend {name}")
        p.connect(route, 1 + i, tag)
        p.connect(tag, 0, log)

    # Conditioning: instrument (11 families), pitch, and the settings; each shows what the server has (its
    # echoes and /state set them without sending).
    p.text(20, 240, "instrument: " + " ".join(FAMILIES))
    radio = p.obj(20, 265, f"hradio 15 1 0 {len(FAMILIES)} empty empty empty 0 -8 0 10 -262144 -1 -1 4")
    p.connect(radio, 0, p.send(20, 290, "/instrument", 1))
    family = p.obj(200, 290, "list split 1")  # /instrument index name
    p.connect(route, 6, family)
    p.chain(family, p.msg(200, 315, "set $1"), radio)
    p.text(20, 330, "pitch")
    slider = p.obj(70, 330, "hsl 200 15 24 84 0 0 empty empty empty -2 -8 0 10 -262144 -1 -1 0 1")
    pitch = p.atom(280, 330, 4, 24, 84)
    whole = p.obj(280, 355, "i")
    p.connect(slider, 0, pitch)
    p.connect(pitch, 0, whole)
    p.connect(whole, 0, p.send(280, 380, "/pitch", 1))
    p.connect(route, 5, p.msg(330, 355, "set $1"))
    p.connect(p.count - 1, 0, pitch)
    # [oscparse] splits "/velocity/curve" into two symbols, which this [route] does not reach: its dial is Max's.
    words = outbound.split()
    knobs = [(k.path[1:], k.args[0], words.index(k.path[1:])) for k in KNOBS if k.path.count("/") == 1]
    for i, (name, arg, outlet) in enumerate(knobs):
        x = 330 + 85 * i
        p.text(x, 410, name)
        knob = p.atom(x, 430, 5, _number(arg.low), _number(arg.high))
        p.connect(knob, 0, p.send(x, 455 + 25 * (i % 2), "/" + name, 1))  # staggered: the sends are wide
        p.connect(route, outlet, p.msg(x, 405 - 25 * (i % 2), "set $1"))
        p.connect(p.count - 1, 0, knob)
    p.connect(route, 14, p.obj(1025, 405, "s inpaint-osc-release"))  # the voices' fade-out
    p.text(1025, 430, "velocity curve")
    curve = p.atom(1025, 455, 5, 0, 4)
    p.connect(curve, 0, p.send(1025, 480, "/velocity/curve", 1))
    curve_echo = p.obj(1125, 430, "route curve")  # /velocity/curve arrives as "velocity curve x"
    p.connect(route, 13, curve_echo)
    p.chain(curve_echo, p.msg(1125, 455, "set $1"), curve)
    note_route = p.obj(900, 620, "route cache")
    p.connect(route, 15, note_route)
    p.chain(note_route, p.obj(900, 645, "list prepend cache"), log)

    # Export: the current sound as a sampler instrument (SFZ + SF2, one note per key) into the typed folder
    # (a symbol box; inpaint-osc-export-path sets it from elsewhere); progress shown, the result logged.
    p.text(20, 1100, "export instrument (SFZ + SF2) to folder")
    folder = p.obj(20, 1175, "symbol")
    typed = p.symbol_atom(20, 1125, 30)
    p.connect(typed, 0, folder, 1)
    default_folder = p.msg(260, 1125, "symbol ~/inpaint-instrument")
    p.connect(boot, 0, default_folder)
    p.connect(default_folder, 0, folder, 1)
    p.chain(default_folder, p.msg(260, 1150, "set $1"), typed)
    p.connect(p.obj(480, 1125, "r inpaint-osc-export-path"), 0, folder, 1)
    button = p.msg(300, 1100, "export")
    go = p.obj(380, 1150, "t b")
    p.connect(button, 0, go)
    p.connect(p.obj(380, 1100, "r inpaint-osc-export"), 0, go)
    p.connect(go, 0, folder)
    p.connect(folder, 0, p.send(20, 1200, "/export/instrument", 1))
    export_route = p.obj(620, 1100, "route progress done")
    p.connect(route, 16, export_route)
    p.chain(export_route, p.obj(620, 1125, "list prepend set"), p.msg(620, 1150, ""))
    p.connect(export_route, 1, p.obj(780, 1125, "list prepend exported"))
    p.connect(p.count - 1, 0, log)

    # Sound-wide actions, each also reachable by a receive name (for other patches and headless tests).
    for i, (label, address) in enumerate(
        (("generate", "/generate"), ("resample-bottom", "/resample/bottom"), ("undo", "/undo"), ("redo", "/redo"))
    ):
        button = p.msg(20 + 130 * i, 500, label)
        named = p.obj(20 + 130 * i, 525, f"r inpaint-osc-{label}")
        bang = p.obj(20 + 130 * i, 550, "t b")
        p.connect(button, 0, bang)
        p.connect(named, 0, bang)
        p.connect(bang, 0, p.send(20 + 130 * i, 575, address, 0))

    # Range tools: layer, time t0..t1 and frequency f0..f1 (half-open), then inpaint, erase or randomize.
    p.text(20, 620, "layer  t0  t1  f0  f1  (time columns / frequency rows from the lowest)")
    layer = p.obj(20, 700, "symbol")
    for i, name in enumerate(("top", "bottom")):
        p.connect(p.msg(20, 645 + 25 * i, f"symbol {name}"), 0, layer, 1)
    default_layer = p.msg(100, 700, "symbol top")
    p.connect(boot, 0, default_layer)
    p.connect(default_layer, 0, layer, 1)
    ranges = p.obj(20, 730, "pack s 0 1 0 32")
    p.connect(layer, 0, ranges)
    for i in range(4):
        p.connect(p.atom(120 + 50 * i, 645, 3), 0, ranges, 1 + i)
    tool_fmt = p.obj(200, 760, "oscformat inpaint")
    p.connect(tool_fmt, 0, p.obj(200, 785, "s inpaint-osc-send"))
    p.connect(ranges, 0, tool_fmt)
    for i, address in enumerate(("/inpaint", "/erase", "/randomize")):
        check_send(address, 5)
        tool = p.msg(340 + 90 * i, 645, address.strip("/"))
        order = p.obj(340 + 90 * i, 670, "t b b")  # right first: choose the address, then send the ranges
        choose = p.msg(340 + 90 * i, 700, "set " + address.strip("/"))
        p.connect(tool, 0, order)
        p.connect(order, 1, choose)
        p.connect(choose, 0, tool_fmt)
        p.connect(order, 0, layer)

    # Codemaps as arrays (codes by row from the lowest), refreshed from every /codemap.
    for i, (name, size) in enumerate((("top", 128), ("bottom", 512))):
        p.array(1100, 300 + 140 * i, f"inpaint-osc-{name}", size, 0, 512, 400, 100)
    layer_route = p.obj(1100, 560, "route top bottom")
    p.connect(route, 4, layer_route)
    for i, name in enumerate(("top", "bottom")):
        codes = p.obj(1100 + 160 * i, 585, "list split 3")
        p.connect(layer_route, i, codes)
        p.connect(codes, 1, p.obj(1100 + 160 * i, 610, f"array set inpaint-osc-{name}"))

    # Notes: MIDI (or "pitch velocity" sent to inpaint-osc-note) → [poly] picks a voice; a note-on opens that
    # voice and asks for the note with the voice as its request id; its /render/done goes to that voice; a
    # note-off releases it (and tells the server, for --play).
    notes = p.obj(900, 40, "notein")
    pair = p.obj(900, 65, "pack f f")
    p.connect(notes, 0, pair)
    p.connect(notes, 1, pair, 1)
    split = p.obj(900, 90, "unpack f f")
    p.connect(pair, 0, split)
    p.connect(p.obj(1000, 65, "r inpaint-osc-note"), 0, split)
    poly = p.obj(900, 115, f"poly {VOICES} 1")
    p.connect(split, 0, poly)
    p.connect(split, 1, poly, 1)
    held = p.obj(900, 140, "pack f f f")
    for i in range(3):
        p.connect(poly, i, held, i)
    on_off = p.chain(held, p.msg(900, 165, "$3 $1 $2"), p.obj(900, 190, "route 0"))  # velocity first
    voices = p.obj(900, 320, f"clone -s 1 inpaint-osc-voice {VOICES}")
    note_fmt = p.send(1150, 265, "/note", None)
    off = p.obj(900, 215, "t l l")
    p.connect(on_off, 0, off)
    p.connect(off, 1, p.msg(1000, 240, "$2 0"))
    p.connect(p.count - 1, 0, note_fmt)
    p.connect(off, 0, p.msg(900, 240, "$1 release"))
    p.connect(p.count - 1, 0, voices)
    on = p.obj(1050, 215, "t l l")  # "velocity voice pitch": its id (right, first), then the note
    p.connect(on_off, 1, on)
    with_id = p.obj(1050, 240, "list append")
    note_id = p.obj(1150, 215, "expr " + NOTE_ID.replace("$", "$f"))
    p.connect(on, 1, note_id)
    p.connect(note_id, 0, with_id, 1)
    p.connect(on, 0, with_id)
    struck = p.obj(1050, 265, "t l l")  # "velocity voice pitch id"
    p.connect(with_id, 0, struck)
    p.connect(struck, 1, p.msg(1150, 290, "$2 on $4"))
    p.connect(p.count - 1, 0, voices)
    p.connect(struck, 0, p.msg(1050, 290, "$3 $1 $4"))  # /note pitch velocity id
    p.connect(p.count - 1, 0, note_fmt)
    dac = p.obj(900, 350, "dac~")
    p.connect(voices, 0, dac)
    p.connect(voices, 0, dac, 1)

    # Audio: /render/done of a note goes to its voice (the voice number is in its id); any other render is
    # loaded into the array inpaint-osc, played by tabplay~ (loop on/off).
    done_route = p.obj(620, 790, "route done loop")
    p.connect(route, 3, done_route)

    def to_voices(x: int, step: int, message: str) -> tuple[int, int]:
        """ "id ..." → "voice id ..." (the voice from the id, 0: not a note) → "N message" into [clone]; returns
        the first object (its inlet) and the [route] whose last outlet has what is not a note."""
        which = p.obj(x, 840, "t l l")  # the voice (right, first), then "voice id ..."
        voice_of = p.chain(
            p.obj(x + 140, 840, "list split 1"), p.obj(x + 140, 865, "expr " + VOICE_OF_ID.replace("$", "$f"))
        )
        p.connect(which, 1, voice_of - 1)
        tagged = p.obj(x, 865, "list prepend")
        p.connect(voice_of, 0, tagged, 1)
        p.connect(which, 0, tagged)
        by_voice = p.obj(x, 890, "route " + " ".join(str(v) for v in range(1, VOICES + 1)))
        p.connect(tagged, 0, by_voice)
        for v in range(1, VOICES + 1):
            p.connect(by_voice, v - 1, p.msg(x + step * (v - 1), 915, f"{v} {message}"))
            p.connect(p.count - 1, 0, voices)
        return which, by_voice

    id_path = p.obj(620, 815, "list split 2")  # "id path"
    p.connect(done_route, 0, id_path)
    which, by_voice = to_voices(620, 70, "play $1 $2")
    p.connect(id_path, 0, which)
    # /render/loop id start end start_ms end_ms → "voice loop start end start_ms end_ms", before its /render/done
    loop_which, _ = to_voices(1180, 90, "loop $2 $3 $4 $5")
    p.connect(done_route, 1, loop_which)
    fields = p.obj(620, 940, "unpack f f s")  # not a note: "0 id path"
    p.connect(by_voice, VOICES, fields)
    read = p.msg(620, 965, "read -resize $1 inpaint-osc")
    p.connect(fields, 2, read)
    path = p.obj(760, 965, "list prepend file")
    p.connect(fields, 2, path)
    p.connect(path, 0, log)
    soundfiler = p.obj(620, 990, "soundfiler")
    p.connect(read, 0, soundfiler)
    loaded = p.obj(900, 945, "list prepend loaded")
    p.connect(soundfiler, 0, loaded)
    p.connect(loaded, 0, log)
    p.array(20, 880, "inpaint-osc", 64000, -1, 1, 500, 100)
    play = p.msg(560, 1000, "bang")
    p.text(600, 1000, "play")
    player = p.obj(560, 1030, "tabplay~ inpaint-osc")
    p.connect(play, 0, player)
    p.connect(player, 0, dac)
    p.connect(player, 0, dac, 1)
    # Recording what the patch plays: "inpaint-osc-record PATH" starts a WAV, "inpaint-osc-record-stop" ends it.
    record = p.obj(120, 1125, "r inpaint-osc-record")
    recorder = p.obj(20, 1200, "writesf~ 1")
    p.connect(p.obj(20, 1125, "r inpaint-osc-record-stop"), 0, p.msg(20, 1150, "stop"))
    p.connect(p.count - 1, 0, recorder)
    p.connect(record, 0, p.obj(120, 1150, "list"))
    p.connect(p.count - 1, 0, p.msg(120, 1175, "open $1 \\, start"))
    p.connect(p.count - 1, 0, recorder)
    p.connect(voices, 0, recorder)
    p.connect(player, 0, recorder)
    loop = p.obj(700, 1000, "tgl 15 0 empty empty loop 17 7 0 10 -262144 -1 -1 0 1")
    spigot = p.obj(700, 1060, "spigot")
    p.connect(loop, 0, spigot, 1)
    p.connect(player, 1, spigot)
    p.connect(spigot, 0, player)
    dsp = p.msg(20, 1000, "\\; pd dsp 1")
    p.text(100, 1000, "audio on")
    p.connect(boot, 0, dsp)

    # MIDI programs (pgmin counts 1-128, the server 0-127) and controllers as /cc controller value.
    pgmin = p.obj(1250, 40, "pgmin")
    minus = p.obj(1250, 65, "- 1")
    p.connect(pgmin, 0, minus)
    p.connect(minus, 0, p.send(1250, 90, "/program", 1))
    ctlin = p.obj(1350, 40, "ctlin")
    swap = p.obj(1350, 65, "swap")  # controller first: [ctlin] gives value, controller, channel
    cc = p.obj(1350, 90, "pack f f")
    p.connect(ctlin, 0, swap)
    p.connect(ctlin, 1, swap, 1)
    p.connect(swap, 1, cc, 1)
    p.connect(swap, 0, cc)
    p.connect(cc, 0, p.send(1350, 115, "/cc", 2))
    return p


# ---- README ---------------------------------------------------------------------------------------------

TABLE_BEGIN, TABLE_END = "<!-- addresses:begin -->", "<!-- addresses:end -->"


def readme(text: str) -> str:
    """maxpatch/README.md with its address table regenerated."""
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    return f"{head}{TABLE_BEGIN}\n{protocol.markdown_table()}\n{TABLE_END}{tail}"


def outputs() -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {}
    patches = (
        ("inpaint-osc.maxpat", max_patch()),
        ("inpaint-osc-voice.maxpat", max_voice()),
        ("inpaint-osc.pd", pd_patch()),
        ("inpaint-osc-voice.pd", pd_voice()),
    )
    for name, patch in patches:
        tmp = HERE / f".{name}.tmp"
        patch.write(tmp)
        files[HERE / name] = tmp.read_text()
        tmp.unlink()
    files[HERE / "README.md"] = readme((HERE / "README.md").read_text())
    return files


if __name__ == "__main__":
    for path, content in outputs().items():
        path.write_text(content)
        print(path)
