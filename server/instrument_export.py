"""The current sound as a sampler instrument: one note per key (the note cache's renders) written as an SFZ
(WAV files and a text mapping) and an SF2 SoundFont with the same mapping, for a DAW's sampler.

Each key's note is looped over its held part (zero crossings, cross-faded: no click at the wrap), released on
note-off over `/release`, and played louder with velocity on the `/velocity/curve` curve. `server.worker`
runs it for `/export/instrument`, `inpaint-osc export-instrument` without a server. numpy, soundfile and the
standard library only: the SF2 writer is here, tested against FluidSynth.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Container
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from server import level
from server.audio import resample
from server.engine import Engine, Progress, Settings
from server.looping import loop

MARKER = "instrument.json"  # an export's description and the list of its files: what proves a folder is one
log = logging.getLogger("inpaint-osc")
VELOCITY_POINTS = (1, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 127)  # SFZ curve points


class ExportError(ValueError):
    """A folder the export cannot be written to; the message names the problem (for `/error`)."""


@dataclass(frozen=True)
class Sample:
    """One key's note as the sampler plays it: at the performer's level, loop points in frames.

    Shapes: `audio` (frames,) float32 at the instrument's rate; the loop is [loop_start, loop_end)."""

    key: int
    audio: np.ndarray
    loop_start: int
    loop_end: int


@dataclass(frozen=True)
class Instrument:
    name: str
    rate: int
    samples: tuple[Sample, ...]
    velocity_curve: float  # level = (velocity / 127) ** curve, as /velocity/curve
    release: float  # s, the fade after a note-off
    about: dict[str, Any]  # model, family, settings: written to instrument.json and the SFZ's header


# ---- notes → samples ------------------------------------------------------------------------------------


def samples(notes: list[tuple[int, np.ndarray]], model_rate: int, rate: int, settings: Settings) -> tuple[Sample, ...]:
    """The model's notes → samples at the performer's level (`/level`, `/gain`; velocity is the sampler's), at
    `rate`, looped."""
    out = []
    for key, audio in notes:
        shaped, _ = level.shape(audio, model_rate, settings.level, settings.gain)
        looped, start, end = loop(resample(shaped, model_rate, rate), rate)
        out.append(Sample(key, looped, start, end))
    return tuple(out)


# ---- folders ----------------------------------------------------------------------------------------------


def check_folder(folder: Path, replaceable: Container[Path] | None = None) -> Path:
    """`folder` resolved, if an export can be written there: a new folder (its parents are created), an empty
    one, or an earlier export that holds exactly the files its `instrument.json` lists, at their sizes (then
    replaced whole), and, when `replaceable` is given (the server: the folders it exported to itself), one of
    those: a client never replaces an export the performer made elsewhere. A folder with anything else in it
    is never written: raises ExportError naming why."""
    folder = Path(os.path.expanduser(folder)).resolve()
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file, not a folder")
    _replaceable(folder, earlier_export(folder), replaceable)
    parent = folder.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"{parent} is a file, not a folder: {folder} cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"{parent} is not writable")
    return folder


def written_files(folder: Path) -> dict[str, int]:
    """Every entry under `folder`, links not followed: relative path → size, folders as "name/" → 0, and any
    link → -1 (never something an export wrote)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = -1
            elif name in dirs:
                out[rel + "/"] = 0
            else:
                out[rel] = path.lstat().st_size
    return out


def earlier_export(folder: Path) -> dict[str, int] | None:
    """The files of the earlier export `folder` holds (its instrument.json's "files": nothing more, nothing
    changed in size), or None for a folder that is absent or empty. Anything else raises ExportError saying
    what is wrong: an export removes nothing it cannot prove it wrote."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    problem, listed = _proof(folder)
    if problem:
        raise ExportError(f"{folder} is not empty and not an earlier export ({problem}): choose another folder")
    return listed


def _replaceable(folder: Path, earlier: dict[str, int] | None, replaceable: Container[Path] | None) -> None:
    if earlier is not None and replaceable is not None and folder not in replaceable:
        raise ExportError(
            f"{folder} holds an export this server did not write (it replaces only its own): choose another folder"
        )


def _proof(folder: Path) -> tuple[str, dict[str, int]]:
    """("", the listed files) if `folder` is exactly an earlier export, else (what is wrong, {})."""
    if (folder / MARKER).is_symlink():
        return f"its {MARKER} is a link", {}
    try:
        listed = json.loads((folder / MARKER).read_text())["files"]
    except FileNotFoundError:
        return f"no {MARKER}", {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {MARKER} lists no files ({type(exc).__name__})", {}
    if not isinstance(listed, dict):
        return f"its {MARKER} lists no files", {}
    present = written_files(folder)
    present.pop(MARKER, None)
    extra = sorted(set(present) - set(listed))
    if extra:
        return f"{len(extra)} entr{'y' if len(extra) == 1 else 'ies'} it did not write, such as {extra[0]}", {}
    changed = sorted(k for k in listed if present.get(k) != listed[k])
    if changed:
        return f"{changed[0]} changed or missing since it was written", {}
    return "", listed


def _remove_export(folder: Path, files: dict[str, int]) -> None:
    """Remove what an export wrote (the listed files, then its folders if empty), nothing else: anything found
    besides is left where it is and logged."""
    for rel in sorted((k for k in files if not k.endswith("/")), reverse=True):
        (folder / rel).unlink(missing_ok=True)
    (folder / MARKER).unlink(missing_ok=True)
    for rel in sorted((k for k in files if k.endswith("/")), key=len, reverse=True) + [""]:
        try:
            (folder / rel).rmdir()
        except OSError:
            log.warning("left %s in place: it holds files no export wrote", folder / rel)


LEFTOVER_AGE_S = 600.0  # a temporary export folder untouched this long was left by a killed export


TEMPORARY = "inpaint-export-"  # in the names of an export's temporary siblings: `.{name}.inpaint-export-XXXXXXXX.tmp`


def sweep_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary siblings an export killed midway (SIGKILL, power cut) left beside `folder`: hidden
    folders named exactly as `write` names them (`.{name}.inpaint-export-` + mkdtemp's 8 characters + `.tmp` or
    `.old`), untouched for LEFTOVER_AGE_S, holding nothing but what an export writes (`samples/NNN.wav`, `.sfz`,
    `.sf2`, instrument.json, no link). Anything else, a user's `.{name}.old` included, is left alone."""
    removed = []
    named = re.compile(rf"\.{re.escape(folder.name)}\.{TEMPORARY}[a-z0-9_]{{8}}\.(tmp|old)")
    for candidate in folder.parent.glob(f".{glob_escape(folder.name)}.{TEMPORARY}*"):
        if not named.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            if time.time() - candidate.stat().st_mtime < LEFTOVER_AGE_S or not _only_export_files(candidate):
                continue
            shutil.rmtree(candidate)
            removed.append(candidate)
        except OSError as exc:
            log.warning("left %s: %s", candidate, exc)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _only_export_files(folder: Path) -> bool:
    for rel, size in written_files(folder).items():
        if size < 0 or not re.fullmatch(r"samples/|samples/\d{3}\.wav|[A-Za-z0-9_-]+\.(sfz|sf2)|instrument\.json", rel):
            return False
    return True


def write(folder: Path, inst: Instrument, replaceable: Container[Path] | None = None) -> tuple[Path, Path]:
    """Write the instrument into `folder` atomically: everything goes into a fresh temporary sibling folder
    (random name, created exclusively) that is then renamed, so `folder` is never half-written. An earlier
    export there (proven by `earlier_export`, and one of `replaceable` when given) is set aside and its own
    files removed. Returns (.sfz, .sf2)."""
    folder = check_folder(folder, replaceable)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for gone in sweep_leftovers(folder):
        log.warning("removed %s, left by an export that was stopped midway", gone)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{TEMPORARY}", suffix=".tmp"))
    old: Path | None = None
    try:
        (tmp / "samples").mkdir()
        for s in inst.samples:
            sf.write(str(tmp / "samples" / wav_name(s.key)), s.audio, inst.rate, subtype="PCM_24")
        base = file_stem(inst.name)
        (tmp / f"{base}.sfz").write_text(sfz_text(inst))
        (tmp / f"{base}.sf2").write_bytes(sf2_bytes(inst))
        files = written_files(tmp)
        (tmp / MARKER).write_text(json.dumps({**_manifest(inst), "files": files}, indent=2) + "\n")
        earlier = earlier_export(folder)  # checked again now: it may have changed since the request
        _replaceable(folder, earlier, replaceable)
        if earlier is not None:
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.{TEMPORARY}", suffix=".old"))
            os.replace(folder, old)  # a folder renamed over an empty one: atomic
        os.replace(tmp, folder)  # over an empty folder, or where none is; fails if files appeared meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder is ours alone
        if old is not None and not folder.exists():
            os.replace(old, folder)
        raise
    if old is not None and earlier is not None:  # the earlier export, set aside: its own files go
        _remove_export(old, earlier)
    return folder / f"{base}.sfz", folder / f"{base}.sf2"


def _manifest(inst: Instrument) -> dict[str, Any]:
    return {
        **inst.about,
        "sample_rate": inst.rate,
        "velocity_curve": inst.velocity_curve,
        "release": inst.release,
        "keys": [{"key": s.key, "wav": f"samples/{wav_name(s.key)}", "loop": [s.loop_start, s.loop_end]}
                 for s in inst.samples],
    }  # fmt: skip


def estimated_bytes(keys: int, model_samples: int, model_rate: int, rate: int) -> int:
    """What an export of `keys` notes at `rate` writes: 24-bit WAVs and the SF2's 16-bit copy of them."""
    return keys * (model_samples * rate // model_rate) * (3 + 2) + 4096 * (keys + 1)


def wav_name(key: int) -> str:
    return f"{key:03d}.wav"


def file_stem(name: str) -> str:
    """A file name from the instrument's name: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "instrument"


# ---- SFZ --------------------------------------------------------------------------------------------------


def key_ranges(samples: tuple[Sample, ...]) -> list[tuple[int, int]]:
    """(lowest, highest) key each sample answers: its own, and the lowest and highest samples stretched to the
    ends of the MIDI range (the sampler transposes them), so a key beyond the model's range is never silent."""
    ranges = [(s.key, s.key) for s in samples]
    if ranges:
        ranges[0] = (0, ranges[0][1])
        ranges[-1] = (ranges[-1][0], 127)
    return ranges


def sfz_text(inst: Instrument) -> str:
    """The SFZ mapping: one region per key, its sample at its own pitch, looped while held (loop_sustain),
    released over `release`, velocity on the amplitude curve (velocity / 127) ** velocity_curve."""
    name = " ".join(inst.name.split())  # one line: a name with a newline must not write its own <region>
    lines = [f"// {name}: written by inpaint-osc export-instrument", f"// {json.dumps(inst.about)}", ""]
    lines += ["<control>", "default_path=samples/", "", "<global>", "loop_mode=loop_sustain"]
    lines.append(f"ampeg_release={inst.release:.4g}")
    if inst.velocity_curve == 0:
        lines.append("amp_veltrack=0")
    else:
        lines.append("amp_veltrack=100")
        lines += [f"amp_velcurve_{v}={(v / 127) ** inst.velocity_curve:.6f}" for v in VELOCITY_POINTS]
    lines.append("")
    for s, (lo, hi) in zip(inst.samples, key_ranges(inst.samples), strict=True):
        lines.append(  # loop_end is the loop's last frame in SFZ (inclusive), its first after in SF2
            f"<region> sample={wav_name(s.key)} lokey={lo} hikey={hi} pitch_keycenter={s.key} "
            f"loop_start={s.loop_start} loop_end={s.loop_end - 1}"
        )
    return "\n".join(lines) + "\n"


# ---- SF2 (SoundFont 2.01, RIFF 'sfbk') --------------------------------------------------------------------

# Generator numbers of the SoundFont 2.01 specification (section 8.1.2).
GEN_RELEASE_VOL_ENV, GEN_INSTRUMENT, GEN_KEY_RANGE = 38, 41, 43
GEN_INITIAL_ATTENUATION, GEN_SAMPLE_ID, GEN_SAMPLE_MODES, GEN_OVERRIDING_ROOT_KEY = 48, 53, 54, 58
LOOP_SUSTAIN = 3  # sampleModes: loop while the key is held, then play on through the release
# Note-on velocity, negative, concave, unipolar: the source of SF2's default velocity → attenuation modulator
# (section 8.4.1). An instrument modulator with the same sources and destination replaces that default.
VELOCITY_CONCAVE_NEGATIVE = 0x0502
SAMPLE_PADDING = 46  # zero frames after each sample in 'smpl', as the specification asks


def velocity_amount(curve: float) -> int:
    """The modulator amount (centibels) that makes the concave velocity source follow 20 * curve *
    log10(velocity / 127) dB. The concave curve of the negated velocity is -(40 / 96) log10(velocity / 127) of
    the amount (the specification's 960 cB default is curve 2, General MIDI's), so the amount is 480 * curve."""
    return round(480 * curve)


def timecents(seconds: float) -> int:
    return max(-12000, round(1200 * math.log2(seconds))) if seconds > 0 else -12000


def _chunk(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def _name(text: str, size: int = 20) -> bytes:
    return text.encode("ascii", "replace")[: size - 1].ljust(size, b"\0")


def _zstr(text: str) -> bytes:
    """A zero-terminated INFO string padded to an even length."""
    data = text.encode("ascii", "replace")[:255] + b"\0"
    return data + b"\0" * (len(data) % 2)


def _gen(oper: int, amount: int) -> bytes:
    return struct.pack("<Hh", oper, amount)


def _range(oper: int, lo: int, hi: int) -> bytes:
    return struct.pack("<HBB", oper, lo, hi)


def sf2_bytes(inst: Instrument) -> bytes:
    """The SoundFont: one preset (bank 0, program 0) holding one instrument: a global zone (release, loop
    mode, the velocity modulator) and one zone per key (keyRange, overridingRootKey, sampleID) over 16-bit
    mono samples at the instrument's rate."""
    name = file_stem(inst.name)[:19]
    pcm, headers = [], []
    offset = 0
    for s in inst.samples:
        data = np.round(np.clip(s.audio, -1.0, 32767 / 32768) * 32768).astype("<i2")  # (frames,)
        pcm += [data.tobytes(), bytes(2 * SAMPLE_PADDING)]
        start, end = offset, offset + data.size
        headers.append(
            _name(f"{name[:13]}-{s.key:03d}")
            + struct.pack("<IIIII", start, end, start + s.loop_start, start + s.loop_end, inst.rate)
            + struct.pack("<BbHH", s.key, 0, 0, 1)  # original pitch, correction, no link, mono sample
        )
        offset = end + SAMPLE_PADDING
    headers.append(_name("EOS") + bytes(26))

    info = _list(
        b"INFO",
        _chunk(b"ifil", struct.pack("<HH", 2, 1)),
        _chunk(b"isng", _zstr("EMU8000")),
        _chunk(b"INAM", _zstr(inst.name)),
        _chunk(b"ISFT", _zstr("inpaint-osc")),
        _chunk(b"ICMT", _zstr(json.dumps(inst.about))),
    )
    sdta = _list(b"sdta", _chunk(b"smpl", b"".join(pcm)))

    # Instrument: the global zone first (no sampleID), then a zone per key; keyRange first, sampleID last.
    igen = [_gen(GEN_RELEASE_VOL_ENV, timecents(inst.release)), _gen(GEN_SAMPLE_MODES, LOOP_SUSTAIN)]
    imod = struct.pack(
        "<HHhHH", VELOCITY_CONCAVE_NEGATIVE, GEN_INITIAL_ATTENUATION, velocity_amount(inst.velocity_curve), 0, 0
    )
    ibag = [struct.pack("<HH", 0, 0)]
    for i, (s, (lo, hi)) in enumerate(zip(inst.samples, key_ranges(inst.samples), strict=True)):
        ibag.append(struct.pack("<HH", len(igen), 1))
        igen += [_range(GEN_KEY_RANGE, lo, hi), _gen(GEN_OVERRIDING_ROOT_KEY, s.key), _gen(GEN_SAMPLE_ID, i)]
    ibag.append(struct.pack("<HH", len(igen), 1))  # terminal
    igen.append(bytes(4))
    imod += bytes(10)

    pdta = _list(
        b"pdta",
        _chunk(
            b"phdr",
            _name(name)
            + struct.pack("<HHHIII", 0, 0, 0, 0, 0, 0)
            + _name("EOP")
            + struct.pack("<HHHIII", 0, 0, 1, 0, 0, 0),
        ),
        _chunk(b"pbag", struct.pack("<HH", 0, 0) + struct.pack("<HH", 1, 0)),
        _chunk(b"pmod", bytes(10)),
        _chunk(b"pgen", _gen(GEN_INSTRUMENT, 0) + bytes(4)),
        _chunk(b"inst", _name(name) + struct.pack("<H", 0) + _name("EOI") + struct.pack("<H", len(ibag) - 1)),
        _chunk(b"ibag", b"".join(ibag)),
        _chunk(b"imod", imod),
        _chunk(b"igen", b"".join(igen)),
        _chunk(b"shdr", b"".join(headers)),
    )
    body = b"sfbk" + info + sdta + pdta
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ---- the whole export -------------------------------------------------------------------------------------


class InstrumentExport:
    """The engine's current sound (its settings when the export starts, and its top map in the resample note
    mode) as an instrument in `folder`, in steps: `step()` gets one key's note (from the note cache, or
    rendered into it as a `/note` would be), so the worker answers requests between keys; `finish()` writes
    the folder. A bad folder is refused at construction, before any rendering."""

    def __init__(
        self,
        engine: Engine,
        folder: Path,
        rate: int | None = None,
        keys: range | None = None,
        replaceable: Container[Path] | None = None,
    ):
        self.engine, self.folder = engine, check_folder(folder, replaceable)
        self.replaceable = replaceable
        self.settings = engine.settings  # one set of settings for every key, even if they change meanwhile
        lo, hi = engine.manifest.pitch_range
        self.keys = keys if keys is not None else range(lo, hi + 1)
        self.model_rate = engine.manifest.spectrogram.sample_rate
        self.rate = rate or self.model_rate
        self.notes: list[tuple[int, np.ndarray]] = []  # (key, the model's audio) of the keys done

    @property
    def done(self) -> bool:
        return len(self.notes) == len(self.keys)

    def step(self, progress: Progress | None = None) -> None:
        """The next key; `progress` may raise to stop it (nothing is lost: the next call starts it again)."""
        e, key = self.engine, self.keys[len(self.notes)]
        note = e.notes.get(e.note_key(key, self.settings)) or e.make_note(key, progress, self.settings)
        self.notes.append((key, note.audio))

    def finish(self) -> tuple[Path, Path, int]:
        """Write the folder: (the .sfz, the .sf2, the number of keys)."""
        e, s = self.engine, self.settings
        about = {
            "model": str(e.manifest.raw.get("name") or e.bundle.path.name),
            "family": e.manifest.families[s.family],
            "settings": {k: v for k, v in asdict(s).items() if k not in ("fill", "pitch")},
        }
        looped = samples(self.notes, self.model_rate, self.rate, s)
        inst = Instrument(self.folder.name, self.rate, looped, s.velocity_curve, s.release, about)
        sfz_path, sf2_path = write(self.folder, inst, self.replaceable)
        return sfz_path, sf2_path, len(self.notes)


def export(
    engine: Engine,
    folder: Path,
    rate: int | None = None,
    keys: range | None = None,
    on_key: Callable[[int, int], None] | None = None,
) -> tuple[Path, Path, int]:
    """The whole export at once (the CLI's): (the .sfz, the .sf2, the number of keys); `on_key(done, total)`
    after each key."""
    task = InstrumentExport(engine, folder, rate, keys)
    while not task.done:
        task.step()
        if on_key is not None:
            on_key(len(task.notes), len(task.keys))
    return task.finish()
