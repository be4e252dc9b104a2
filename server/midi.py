"""MIDI for the live instrument: General MIDI programs to NSynth families, controller mappings, and a mido
input port feeding the same handlers as OSC (`/note`, `/program`, `/cc`).

mido and python-rtmidi are optional (`pip install inpaint-osc[midi]`); nothing here imports them at module
level, and MIDI messages are converted by their attributes, so the conversion is tested without a port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.level import velocity_db


def _programs(family: str, source: str, *ranges: int | range) -> dict[int, tuple[str, str]]:
    out: dict[int, tuple[str, str]] = {}
    for r in ranges:
        for program in [r] if isinstance(r, int) else r:
            out[program] = (family, source)
    return out


# General MIDI program (0-based) → (NSynth family, source). Timpani, orchestra hit, synth FX and the
# percussion / sound-effect programs (47, 55, 96-103, 113, 115-127) have no NSynth family and are left out.
GM_FAMILIES: dict[int, tuple[str, str]] = {
    **_programs("keyboard", "acoustic", 0, 1, 3, 6),
    **_programs("keyboard", "electronic", 2, 4, 5, 7),
    **_programs("mallet", "acoustic", range(8, 16), 108, 112, 114),
    **_programs("organ", "electronic", 16, 17, 18),
    **_programs("organ", "acoustic", 19, 20, 21, 23),
    **_programs("reed", "acoustic", range(64, 72), 22, 109, 111),
    **_programs("guitar", "acoustic", 24, 25, range(104, 108)),
    **_programs("guitar", "electronic", range(26, 32)),
    **_programs("bass", "acoustic", 32),
    **_programs("bass", "electronic", range(33, 38)),
    **_programs("bass", "synthetic", 38, 39),
    **_programs("string", "acoustic", range(40, 47), 48, 49, 110),
    **_programs("string", "synthetic", 50, 51),
    **_programs("brass", "acoustic", range(56, 62)),
    **_programs("brass", "synthetic", 62, 63),
    **_programs("flute", "acoustic", range(72, 80)),
    **_programs("synth_lead", "synthetic", range(80, 85), 86, 87, 88, 89, 90, range(92, 96)),
    **_programs("vocal", "acoustic", 52, 53),
    **_programs("vocal", "synthetic", 54, 85, 91),
}


# Controller → parameter. CC 1 is the modulation wheel on nearly every keyboard; CC 74 is the "brightness"
# knob of the MIDI sound-controller set; CC 70 "sound variation". Remapped live with /cc/map.
# 7 is MIDI's channel volume and 72 General MIDI 2's release time: a keyboard's volume slider just works.
DEFAULT_CC_MAP = {1: "temperature", 74: "top_p", 70: "instrument", 7: "gain", 72: "release"}
CC_PARAMETERS = ("temperature", "top_p", "guidance", "harmonic", "timbre", "seed", "instrument", "pitch", "gain",
                 "release")  # fmt: skip


def cc_value(parameter: str, value: int, families: int, pitch_range: tuple[int, int]) -> float | int:
    """A 0-127 controller value → the parameter's value: temperature 0-2, top-p 0-1, guidance, harmonic and timbre
    0-5, a seed (the value itself: 128 sounds to step through), an instrument index, a pitch across the model's
    range, gain in dB on MIDI's volume curve (127: 0 dB, 64: -12, 0: -60), release 0-2 s."""
    x = value / 127
    if parameter == "temperature":
        return round(2 * x, 4)
    if parameter == "top_p":
        return round(x, 4)
    if parameter in ("guidance", "harmonic", "timbre"):
        return round(5 * x, 4)
    if parameter == "seed":
        return value
    if parameter == "instrument":
        return min(int(x * families), families - 1)
    if parameter == "pitch":
        return pitch_range[0] + round(x * (pitch_range[1] - pitch_range[0]))
    if parameter == "gain":  # the velocity curve of General MIDI is its volume curve too
        return round(max(-60.0, velocity_db(value, 2.0)), 2)
    if parameter == "release":
        return round(2 * x, 4)
    raise ValueError(f"unknown parameter {parameter!r}: one of {', '.join(CC_PARAMETERS)}")


BEND_RANGE = 2.0  # semitones at the pitch wheel's ends: General MIDI's default


def to_osc(message: Any, multitimbral: bool = False) -> tuple[str, list[float]] | None:
    """A mido message → (address, arguments) for the OSC handlers; None for messages the instrument ignores.
    `multitimbral`: notes and program changes keep their channel (1-16, as performers count them), so that
    each channel plays its own instrument (`/channel/note`, `/channel/program`)."""
    kind = getattr(message, "type", None)
    channel = [getattr(message, "channel", 0) + 1] if multitimbral else []  # mido counts channels from 0
    prefix = "/channel" if multitimbral else ""
    if kind == "note_on":
        return f"{prefix}/note", [*channel, message.note, message.velocity]
    if kind == "note_off":
        return f"{prefix}/note", [*channel, message.note, 0]
    if kind == "program_change":
        return f"{prefix}/program", [*channel, message.program]
    if kind == "control_change":
        return "/cc", [message.control, message.value]
    if kind == "pitchwheel":  # -8192..8191
        return "/bend", [round(BEND_RANGE * message.pitch / 8192, 4)]
    return None


class MidiError(RuntimeError):
    """MIDI input cannot start; the message names the missing package or the ports that exist."""


def open_input(name: str, handle: Callable[[str, list[float]], None], multitimbral: bool = False) -> Any:
    """Open the MIDI input port `name` (a substring of a port name is enough); every message that maps to an
    address goes to `handle(address, args)` on mido's thread (`to_osc`). Returns the port (close it to stop)."""
    try:
        import mido
    except ImportError:
        raise MidiError("MIDI input needs mido and python-rtmidi: pip install 'inpaint-osc[midi]'") from None
    try:
        names = mido.get_input_names()
    except (OSError, SystemError, ImportError) as exc:  # no backend, or no ALSA sequencer
        raise MidiError(f"no MIDI system available ({exc})") from None
    matches = [n for n in names if name in n]
    if not matches:
        raise MidiError(f"no MIDI input matches {name!r}; inputs: {', '.join(names) or 'none'}")

    def callback(message: Any) -> None:
        converted = to_osc(message, multitimbral)
        if converted is not None:
            handle(*converted)

    return mido.open_input(matches[0], callback=callback)
