"""The OSC address table: the single source of truth for the server, the patches, the docs and `/help`.

Every inbound address lists its arguments; `parse` turns a message's arguments into named Python values or
raises ProtocolError with a message fit for an `/error` reply. Ints and floats are accepted interchangeably
(Pd sends every number as a float, Max sends `1` as an int and `1.` as a float); outbound messages carry only
int32, float32 and strings, the types Max and Pd both read.

Rules the table follows: lower-case words, no numeric path components, half-open ranges in the edited layer's
grid (t = time column, f = frequency row counted from the lowest). Names here are a contract: add, never
rename.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

INT32 = (-(2**31), 2**31 - 1)
MAX_DATAGRAM = 8000  # bytes per outgoing datagram: under macOS's 9 216 default and python-osc's 8 192
CHUNK_FRAMES = 1024  # samples per /render/chunk (about 4.2 kB)


class ProtocolError(ValueError):
    """A message that does not match its address's arguments; the text goes back in `/error`."""


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str  # "i" int, "f" float, "s" string, "is" int or string
    low: float | None = None  # inclusive bounds checked here; bounds that depend on the model live in the engine
    high: float | None = None
    fold: bool = False  # a name matched without regard to case ("String", "TOP"): lower-cased here

    def spec(self) -> str:
        return f"{self.kind.replace('is', 'i|s')}:{self.name}"


@dataclass(frozen=True)
class Address:
    path: str
    args: tuple[Arg, ...] = ()
    doc: str = ""
    repeat: tuple[Arg, ...] = ()  # a group that follows `args` one or more times (cells, triples)
    request_id: bool = False  # work-starting requests may end with an optional int request id
    optional: tuple[Arg, ...] = ()  # trailing arguments that may be left out, before the request id

    def spec(self) -> str:
        parts = [a.spec() for a in self.args]
        if self.repeat:
            parts.append(" ".join(a.spec() for a in self.repeat) + " ...")
        parts += [f"[{a.spec()}]" for a in self.optional]
        if self.request_id:
            parts.append("[i:id]")
        return " ".join(parts)


# The stages of /render/timing, in order (ms): what the benchmark breaks a round trip into.
TIMING_STAGES = ("queue", "edit", "save", "decoder", "inversion", "wav", "server")


@dataclass
class Request:
    """A parsed inbound message: named values, repeated groups, and the request id if one was given."""

    address: str
    values: dict[str, Any]
    groups: list[tuple[Any, ...]] = field(default_factory=list)
    request_id: int | None = None
    at: float | None = None  # its bundle's time tag, on the time.perf_counter() clock; None: untagged


LAYER = Arg("layer", "s", fold=True)
CHANNEL = Arg("channel", "i", 1, 16)  # MIDI channels as performers count them
RANGE = (Arg("t0", "i"), Arg("t1", "i"), Arg("f0", "i"), Arg("f1", "i"))
MIDI = (0, 127)
RATES = (8000, 192000)  # sample rates a client may ask for (Hz); 16 000 is the model's own


@dataclass(frozen=True)
class Setting:
    """A setting of the instrument's shared state: the `server.engine.Settings` field it sets, the address that
    sets it and echoes it to every client (the one argument, or for `/instrument` the index and the name), and
    its default, written here only. `checked`: the server resolves or checks the value against the model (a
    handler of its own); otherwise the argument's range is the whole check and the value is stored as is."""

    field: str
    address: Address
    default: Any
    checked: bool = False
    # Whether it changes the sound a note is drawn with: such settings make the note cache's key
    # (`server.engine.Engine.note_key`); the others (level, gain, ...) apply after the cache.
    sound: bool = False


LEVEL_DBFS, GAIN_DB = -18.0, 0.0
SETTINGS = (  # in the order they are echoed
    Setting(
        "pitch",
        Address("/pitch", (Arg("pitch", "i"),), "MIDI pitch of the conditioning, within the model's range"),
        60,
        True,
    ),
    Setting(
        "family",
        Address("/instrument", (Arg("instrument", "is", fold=True),), "instrument family, by index or name (any case)"),
        4,  # keyboard
        True,
        sound=True,
    ),
    Setting(
        "temperature",
        Address("/temperature", (Arg("temperature", "f", 0.0, 10.0),), "sampling temperature (0 = most likely)"),
        1.0,
        sound=True,
    ),
    Setting(
        "top_p", Address("/top_p", (Arg("top_p", "f", 0.0, 1.0),), "nucleus sampling mass"), 0.8, sound=True
    ),  # the paper's examples: temperature 1, nucleus 0.8
    Setting(
        "guidance",
        Address(
            "/guidance",
            (Arg("guidance", "f", 0.0, 10.0),),
            "classifier-free guidance: 1 off, higher follows the pitch and instrument (or the instrument alone, as "
            "the bundle was trained) more strictly (models trained with label dropout; others ignore it)",
        ),
        1.0,  # the plain conditional model (docs/ablations.md)
        sound=True,
    ),
    Setting(
        "harmonic",
        Address(
            "/harmonic",
            (Arg("harmonic", "f", 0.0, 10.0),),
            "harmonic guidance: 0 off, higher pulls every partial onto the harmonics of the pitch",
        ),
        0.5,  # with /timbre 2: the pitch kept and the family heard (docs/ablations.md)
        sound=True,
    ),
    Setting(
        "timbre",
        Address(
            "/timbre",
            (Arg("timbre", "f", 0.0, 10.0),),
            "family guidance: 0 off, higher leans every draw towards the codes the instrument family uses "
            "(bundles with family tables; others ignore it)",
        ),
        2.0,
        sound=True,
    ),
    Setting("seed", Address("/seed", (Arg("seed", "i", 0, INT32[1]),), "restart the random sequence"), 0, sound=True),
    Setting(
        "note_mode",
        Address(
            "/note/mode", (Arg("mode", "s", fold=True),), "what a note does: generate | resample (keep the top map)"
        ),
        "generate",
        True,
        sound=True,
    ),
    Setting(
        "level",
        Address(
            "/level",
            (Arg("dbfs", "f", -60.0, 0.0),),
            f"every render is normalised to this RMS over its held part (first 3 s), dBFS (default {LEVEL_DBFS:g})",
        ),
        LEVEL_DBFS,
    ),
    Setting(
        "gain",
        Address(
            "/gain",
            (Arg("db", "f", -60.0, 24.0),),
            f"gain on every render after normalisation, dB (default {GAIN_DB:g})",
        ),
        GAIN_DB,
    ),
    Setting(
        "velocity_curve",
        Address(
            "/velocity/curve",
            (Arg("curve", "f", 0.0, 4.0),),
            "note level = (velocity / 127) ^ curve: 2 the General MIDI curve (default), 1 linear, 0 ignores velocity",
        ),
        2.0,
    ),
    Setting(
        "release",
        Address(
            "/release",
            (Arg("seconds", "f", 0.0, 4.0),),
            "fade-out after a note-off, for the patches' voices and --play",
        ),
        0.15,
    ),
    Setting(
        "fill",
        Address(
            "/note/fill",
            (Arg("on", "i", 0, 1),),
            "1 (default): when idle, fill the note cache across the model's pitch range for the current settings",
        ),
        True,
    ),
)
SETTING = {s.address.path: s.address for s in SETTINGS}
DEFAULTS: dict[str, Any] = {s.field: s.default for s in SETTINGS}
# The settings a cached note was drawn under (its pitch is the key's own: a note is drawn at its key's pitch).
SOUND_FIELDS = tuple(s.field for s in SETTINGS if s.sound and s.field != "pitch")


INBOUND = (
    Address("/ping", doc="answers /pong"),
    Address("/help", doc="one /help reply per inbound address"),
    Address("/reply_port", (Arg("port", "i", 1, 65535),), "replies to this client go to this UDP port"),
    Address("/model/info", doc="answers /model/info"),
    Address("/state", doc="answers the conditioning addresses and both /codemap messages"),
    *(s.address for s in SETTINGS if s.field not in ("note_mode", "fill")),
    Address("/generate", doc="a new sound: the whole top map, then the whole bottom map", request_id=True),
    Address("/analyze", (Arg("path", "s"),), "encode an audio file (under an allowed folder)", request_id=True),
    Address(
        "/inpaint", (LAYER, *RANGE), "regenerate a rectangle; a top edit resamples the bottom beneath", request_id=True
    ),
    Address("/inpaint/cells", (LAYER,), "regenerate single cells", (Arg("t", "i"), Arg("f", "i")), True),
    Address("/resample/bottom", doc="keep the top map, draw a new bottom map", request_id=True),
    Address("/erase", (LAYER, *RANGE), "set a rectangle to the codes of silence", request_id=True),
    Address("/randomize", (LAYER, *RANGE), "uniformly random codes in a rectangle", request_id=True),
    Address("/codemap/set", (LAYER,), "set cells directly", (Arg("t", "i"), Arg("f", "i"), Arg("code", "i")), True),
    Address("/codemap/get", (LAYER,), "answers /codemap"),
    Address("/undo", doc="back one edit", request_id=True),
    Address("/redo", doc="forward one edit", request_id=True),
    Address("/render", doc="render the current codemaps", request_id=True),
    Address(
        "/cancel", doc="cancel this client's request with this id, or all its work when none is given", request_id=True
    ),
    Address(
        "/note",
        (Arg("pitch", "i", *MIDI), Arg("velocity", "i", *MIDI)),
        "velocity > 0: set the pitch, render in the note mode at the velocity's level; 0: note-off (releases "
        "--play's voice; the patches release their own)",
        request_id=True,
    ),
    Address(
        "/note/redraw",
        (Arg("pitch", "i", *MIDI),),
        "draw this key's note anew (the other keys keep theirs) and play it: a bad key, fixed alone",
        request_id=True,
    ),
    SETTING["/note/mode"],
    Address(
        "/note/prefill", (Arg("low", "i", *MIDI), Arg("high", "i", *MIDI)), "fill the cache for these pitches first"
    ),
    SETTING["/note/fill"],
    Address("/program", (Arg("program", "i", *MIDI),), "General MIDI program 0-127 → instrument family"),
    Address(
        "/channel/note",
        (CHANNEL, Arg("pitch", "i", *MIDI), Arg("velocity", "i", *MIDI)),
        "/note on a MIDI channel: played with the channel's own instrument when it has one (multi-timbral)",
        request_id=True,
    ),
    Address(
        "/channel/instrument",
        (CHANNEL, Arg("instrument", "is", fold=True)),
        "a channel's own instrument family, by index or name; -1 or none: the current /instrument again",
    ),
    Address("/channel/program", (CHANNEL, Arg("program", "i", *MIDI)), "General MIDI program → a channel's instrument"),
    Address(
        "/bend", (Arg("semitones", "f", -24.0, 24.0),), "pitch bend of --play's notes (MIDI's wheel: +-2 semitones)"
    ),
    Address("/cc", (Arg("controller", "i", *MIDI), Arg("value", "i", *MIDI)), "a mapped controller sets a parameter"),
    Address(
        "/cc/map", (Arg("controller", "i", *MIDI), Arg("parameter", "s", fold=True)), "map a controller to a parameter"
    ),
    Address("/render/mode", (Arg("mode", "s", fold=True),), "how audio reaches this client: file | chunks | both"),
    Address(
        "/render/rate",
        (Arg("hz", "i", *RATES),),
        "sample rate of this client's WAVs and chunks (the host's: 44100, 48000, 96000 ...; 16000 the model's)",
    ),
    Address(
        "/render/resend",
        (Arg("id", "i", *INT32),),
        "stream again the chunks at these offsets of one of this client's last streamed renders, then its /render/end",
        (Arg("offset", "i", *INT32),),
    ),
    Address("/timing", (Arg("on", "i", 0, 1),), "1: follow each /render/done with its /render/timing"),
    Address(
        "/image",
        (LAYER,),
        "PNG of the last render's spectrogram: the layer's grid, the last edit's cells outlined, Hz and seconds marked",
        request_id=True,
    ),
    Address("/play", optional=(Arg("loop", "i", 0, 1),), doc="play the last render on the server's output"),
    Address("/stop", doc="stop playback"),
    Address(
        "/export/instrument",
        (Arg("path", "s"),),
        "write the current sound as a sampler instrument into this folder (under an allowed folder): one note "
        "per key of the model's range (or low..high), as an SFZ with its WAVs and an SF2; answers /export/done",
        optional=(Arg("low", "i", *MIDI), Arg("high", "i", *MIDI)),
    ),
)

OUTBOUND = (
    Address("/pong", (Arg("version", "s"), Arg("listen_port", "i"), Arg("reply_port", "i"))),
    Address("/help", (Arg("address", "s"), Arg("arguments", "s"), Arg("description", "s"))),
    Address(
        "/model/info",
        (
            Arg("name", "s"),
            Arg("provider", "s"),
            Arg("sample_rate", "i"),
            Arg("frames", "i"),
            Arg("top_rows", "i"),
            Arg("top_cols", "i"),
            Arg("bottom_rows", "i"),
            Arg("bottom_cols", "i"),
            Arg("n_codes", "i"),
            Arg("pitch_min", "i"),
            Arg("pitch_max", "i"),
        ),
        "then the family names",
        repeat=(Arg("family", "s"),),
    ),
    Address("/pitch", (Arg("pitch", "i"),), "the conditioning changed (pushed to every client)"),
    Address("/instrument", (Arg("index", "i"), Arg("name", "s"))),
    Address(
        "/channel/instrument",
        (Arg("channel", "i"), Arg("index", "i"), Arg("name", "s")),
        "a channel's instrument (pushed to every client, and after /state); index -1, name none: the current one",
    ),
    Address("/temperature", (Arg("temperature", "f"),)),
    Address("/top_p", (Arg("top_p", "f"),)),
    Address("/guidance", (Arg("guidance", "f"),)),
    Address("/harmonic", (Arg("harmonic", "f"),)),
    Address("/timbre", (Arg("timbre", "f"),)),
    Address("/seed", (Arg("seed", "i"),)),
    Address("/level", (Arg("dbfs", "f"),)),
    Address("/gain", (Arg("db", "f"),)),
    Address("/velocity/curve", (Arg("curve", "f"),)),
    Address("/release", (Arg("seconds", "f"),)),
    Address("/note/mode", (Arg("mode", "s"),)),
    Address("/note/fill", (Arg("on", "i"),)),
    Address(
        "/note/cache",
        (Arg("ready", "i"), Arg("total", "i")),
        "notes of the current settings cached, of the pitch range: sent as the background fill goes; ready = total "
        "when every note plays at once",
    ),
    Address("/render/rate", (Arg("hz", "i"),), "this client's sample rate, after /render/rate and /state"),
    Address("/render/started", (Arg("id", "i"),)),
    Address("/render/progress", (Arg("id", "i"), Arg("fraction", "f"))),
    Address(
        "/render/done",
        (
            Arg("id", "i"),
            Arg("wav_path", "s"),
            Arg("frames", "i"),
            Arg("sample_rate", "i"),
            Arg("seconds", "f"),
            Arg("level_db", "f"),
        ),
        "float32 mono WAV at this client's rate; seconds from the request's arrival; RMS of its held part (dBFS)",
    ),
    Address(
        "/render/loop",
        (Arg("id", "i"), Arg("start", "i"), Arg("end", "i"), Arg("start_ms", "f"), Arg("end_ms", "f")),
        "before /render/done of a note: its sustain loop, frames start..end (end exclusive) and the same in ms. The "
        "WAV's loop end is cross-faded into its start: loop it while the key is held, play on to the end after",
    ),
    Address(
        "/render/silent",
        (Arg("id", "i"), Arg("level_db", "f")),
        "before /render/done: the render is silence (under -90 dBFS), so it was not normalised",
    ),
    Address(
        "/analyze/fitted",
        (Arg("id", "i"), Arg("file_seconds", "f"), Arg("seconds", "f")),
        "before /render/done of an /analyze: the file's length, cut or padded with silence to the note's",
    ),
    Address("/render/cancelled", (Arg("id", "i"), Arg("reason", "s"))),
    Address(
        "/render/timing",
        (Arg("id", "i"), *(Arg(name, "f") for name in TIMING_STAGES)),
        "ms per stage after /timing 1: waiting, the edit (priors; encoder for /analyze), session save, VQ-VAE "
        "decoder, Mel-IF inversion, WAV write, arrival to /render/done",
    ),
    Address("/render/chunk", (Arg("id", "i"), Arg("offset", "i"), Arg("frames", "i")), repeat=(Arg("sample", "f"),)),
    Address("/render/end", (Arg("id", "i"), Arg("frames", "i"))),
    Address("/image/done", (Arg("id", "i"), Arg("png_path", "s"), Arg("width", "i"), Arg("height", "i"))),
    Address(
        "/codemap",
        (Arg("layer", "s"), Arg("version", "i"), Arg("rows", "i"), Arg("cols", "i")),
        "row-major from the lowest row; pushed to every client after each change",
        repeat=(Arg("code", "i"),),
    ),
    Address("/export/progress", (Arg("done", "i"), Arg("total", "i")), "keys of the instrument rendered so far"),
    Address(
        "/export/done",
        (Arg("sfz_path", "s"), Arg("sf2_path", "s"), Arg("keys", "i")),
        "the instrument is written (its folder renamed into place whole)",
    ),
    Address("/status", (Arg("status", "s"),), "ready | busy | loading"),
    Address("/error", (Arg("address", "s"), Arg("message", "s"))),
)

BY_PATH = {a.path: a for a in INBOUND}


def _number(value: Any, arg: Arg) -> int | float:
    # bool is an int subclass in Python: OSC T/F must not pass as 1/0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{arg.name} must be a number, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{arg.name} must be finite, got {value}")
    if "i" in arg.kind and not float(value).is_integer():
        raise ProtocolError(f"{arg.name} must be a whole number, got {value}")
    out: int | float = int(value) if "i" in arg.kind else float(value)
    if (arg.low is not None and out < arg.low) or (arg.high is not None and out > arg.high):
        raise ProtocolError(f"{arg.name} {value} is outside {_bound(arg.low)}..{_bound(arg.high)}")
    if "i" in arg.kind and not INT32[0] <= out <= INT32[1]:
        raise ProtocolError(f"{arg.name} {value} does not fit in 32 bits")
    return out


def _bound(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"{type(value).__name__} {str(value)[:40]}"


def _convert(value: Any, arg: Arg) -> Any:
    if arg.kind == "s" or (arg.kind == "is" and isinstance(value, str)):
        if not isinstance(value, str):
            raise ProtocolError(f"{arg.name} must be a string, got {_describe(value)}")
        return value.strip().lower() if arg.fold else value
    return _number(value, arg)


def parse(path: str, args: list[Any] | tuple[Any, ...]) -> Request:
    """Check a message against the table; returns the named values or raises ProtocolError."""
    address = BY_PATH.get(path)
    if address is None:
        raise ProtocolError(f"unknown address {path[:80]!r}; send /help for the list")
    args = list(args)
    given = len(args)
    fixed, group, optional = len(address.args), len(address.repeat), len(address.optional)
    request_id = None
    if address.request_id:
        extra = len(args) - fixed  # an id is the one argument left over after the fixed, optional and grouped ones
        has_id = extra % group == 1 if group else extra == optional + 1
        if has_id and extra > 0:
            request_id = int(_number(args.pop(), Arg("request id", "i", *INT32)))
    n = len(args)
    expected = address.spec()
    if n < fixed or (group and (n - fixed < group or (n - fixed) % group)) or (not group and n > fixed + optional):
        raise ProtocolError(f"expected {expected or 'no arguments'}, got {given} argument{'s' * (given != 1)}")
    values = {arg.name: _convert(v, arg) for arg, v in zip(address.args, args[:fixed], strict=True)}
    tail = args[fixed:]
    for arg, v in zip(address.optional, tail, strict=False):
        values[arg.name] = _convert(v, arg)
    groups = [
        tuple(_convert(v, arg) for arg, v in zip(address.repeat, tail[i : i + group], strict=True))
        for i in range(0, len(tail) if group else 0, group or 1)
    ]
    return Request(path, values, groups, request_id)


def help_rows() -> list[tuple[str, str, str]]:
    """(address, arguments, description) for every inbound address: the /help replies."""
    return [(a.path, a.spec(), a.doc) for a in INBOUND]


def markdown_table() -> str:
    """The address table for README files (maxpatch/README.md is generated from it)."""
    lines = ["| direction | address | arguments | meaning |", "|---|---|---|---|"]
    for direction, table in (("in", INBOUND), ("out", OUTBOUND)):
        for a in table:
            lines.append(f"| {direction} | `{a.path}` | `{a.spec()}` | {a.doc} |".replace("``", ""))
    return "\n".join(lines)
