"""Render an NSynth-format dataset from General MIDI soundfonts through FluidSynth.

Layout and fields match NSynth (`examples.json` keyed by note_str, `audio/<note_str>.wav`, 16 kHz mono
16-bit, 3 s held + 1 s release), so `export.nsynth` reads it like the real thing. Each worker process makes
its own synth (a synth created before a fork deadlocks the child) and renders one instrument in a fixed
order on a fresh synth, so files are reproducible. Existing files are kept: an interrupted run resumes, and
finished instruments are not rendered again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from server.bundle import FAMILIES
from server.midi import GM_FAMILIES

SAMPLE_RATE = 16_000
HOLD_S, RELEASE_S = 3, 1
NSYNTH_VELOCITIES = (25, 50, 75, 100, 127)
SOURCES = ("acoustic", "electronic", "synthetic")
QUALITIES = (
    "bright",
    "dark",
    "distortion",
    "fast_decay",
    "long_release",
    "multiphonic",
    "nonlinear_env",
    "percussive",
    "reverb",
    "tempo-synced",
)
DATASET_FILE = "dataset.json"  # how the set was rendered: soundfonts (with hashes), pitches, velocities
SILENCE_PEAK = 1e-4  # a preset that does not sound at this pitch gives (near) zeros: skipped


@dataclass(frozen=True)
class Instrument:
    soundfont: str
    bank: int
    program: int
    preset_name: str
    family: str
    source: str
    instrument: int = -1  # global index, set after sorting
    instrument_str: str = ""  # <family>_<source>_<NNN>, numbered per family and source


def _new_synth():
    import fluidsynth  # imported here: never at module import, never in the parent before a fork

    return fluidsynth.Synth(
        gain=0.5,
        samplerate=SAMPLE_RATE,
        **{"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.polyphony": 64, "synth.cpu-cores": 1},
    )


def list_instruments(soundfonts: list[str], programs: set[int] | None = None) -> list[Instrument]:
    """Every melodic preset (banks 0..127) whose program maps to a family, numbered deterministically."""
    found = []
    synth = _new_synth()
    try:
        for path in sorted(soundfonts, key=lambda s: Path(s).name):
            sfid = synth.sfload(str(path))
            if sfid < 0:
                raise ValueError(f"{path}: FluidSynth cannot load this soundfont")
            for bank in range(128):
                for program, (family, source) in sorted(GM_FAMILIES.items()):
                    if programs is not None and program not in programs:
                        continue
                    name = synth.sfpreset_name(sfid, bank, program)
                    if name is not None:
                        found.append(Instrument(str(path), bank, program, name, family, source))
    finally:
        synth.delete()
    counters: dict[tuple[str, str], int] = {}
    numbered = []
    for i, inst in enumerate(found):
        key = (inst.family, inst.source)
        counters[key] = counters.get(key, -1) + 1
        numbered.append(
            Instrument(
                **{
                    **asdict(inst),
                    "instrument": i,
                    "instrument_str": f"{inst.family}_{inst.source}_{counters[key]:03d}",
                }
            )
        )
    return numbered


def render_note(synth, pitch: int, velocity: int) -> np.ndarray:
    """One note on channel 0 of a prepared synth → (64 000,) float32 mono."""
    synth.noteon(0, pitch, velocity)
    held = synth.get_samples(HOLD_S * SAMPLE_RATE)
    synth.noteoff(0, pitch)
    release = synth.get_samples(RELEASE_S * SAMPLE_RATE)
    synth.all_sounds_off(0)
    synth.get_samples(256)  # flush what all_sounds_off leaves, so the next note starts clean
    stereo = np.concatenate([held, release]).reshape(-1, 2).astype(np.float32)
    return stereo.mean(axis=1) / 32768.0


def example_entry(inst: Instrument, pitch: int, velocity: int) -> dict:
    note_str = f"{inst.instrument_str}-{pitch:03d}-{velocity:03d}"
    return {
        "note_str": note_str,
        "instrument": inst.instrument,
        "instrument_str": inst.instrument_str,
        "pitch": pitch,
        "velocity": velocity,
        "sample_rate": SAMPLE_RATE,
        "qualities": [0] * len(QUALITIES),
        "qualities_str": [],
        "instrument_family": FAMILIES.index(inst.family),
        "instrument_family_str": inst.family,
        "instrument_source": SOURCES.index(inst.source),
        "instrument_source_str": inst.source,
    }


def _render_instrument(task: tuple[Instrument, list[int], list[int], str]) -> list[dict]:
    """Worker: render one instrument; returns the entries whose audio exists.

    A note's samples depend on what the synth played before it, so an incomplete instrument is rendered again
    from its first note on a fresh synth, writing only the missing files: a resumed run gives the same bytes.
    """
    inst, pitches, velocities, out = task
    audio_dir = Path(out) / "audio"
    plan = [example_entry(inst, p, v) for p in pitches for v in velocities]
    paths = [audio_dir / f"{e['note_str']}.wav" for e in plan]
    names = [e["note_str"] for e in plan]
    done = Path(out) / "progress" / f"{inst.instrument_str}.json"  # written once an instrument is complete
    if done.is_file():
        record = json.loads(done.read_text())
        if record["plan"] == names and all((audio_dir / f"{n}.wav").exists() for n in record["rendered"]):
            return [e for e in plan if e["note_str"] in set(record["rendered"])]
    synth = _new_synth()
    entries = []
    try:
        synth.program_select(0, synth.sfload(inst.soundfont), inst.bank, inst.program)
        for entry, path in zip(plan, paths, strict=True):
            audio = render_note(synth, entry["pitch"], entry["velocity"])
            if path.exists():
                entries.append(entry)
            elif np.abs(audio).max() >= SILENCE_PEAK:
                tmp = path.with_name(path.name + ".tmp")
                sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
                os.replace(tmp, path)
                entries.append(entry)
    finally:
        synth.delete()
    done.parent.mkdir(exist_ok=True)
    _write_json(done, {"plan": names, "rendered": [e["note_str"] for e in entries]})
    return entries


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def render_dataset(
    soundfonts: list[str],
    out: str | Path,
    pitches=range(24, 85),
    velocities=NSYNTH_VELOCITIES,
    workers: int = 0,
    programs: set[int] | None = None,
    progress: bool = True,
) -> dict:
    """Render every (instrument, pitch, velocity) into `out`; returns a summary. Resumable."""
    from tqdm import tqdm

    out = Path(out)
    for sf2 in soundfonts:
        if not Path(sf2).is_file():
            raise FileNotFoundError(f"{sf2}: no such soundfont")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")  # no synth state can leak into the workers
    workers = workers or os.cpu_count() or 1
    with ctx.Pool(workers) as pool:
        instruments = pool.apply(list_instruments, (list(soundfonts), programs))
        tasks = [(inst, list(pitches), list(velocities), str(out)) for inst in instruments]
        entries = []
        bar = tqdm(total=len(tasks) * len(pitches) * len(velocities), unit="note", disable=not progress)
        for result in pool.imap_unordered(_render_instrument, tasks):
            entries.extend(result)
            bar.update(len(pitches) * len(velocities))
        bar.close()
    entries.sort(key=lambda e: e["note_str"])
    examples = {e["note_str"]: {"note": i, **e} for i, e in enumerate(entries)}
    _write_json(out / "examples.json", examples)
    _write_json(out / "instruments.json", [asdict(i) for i in instruments])
    planned = len(tasks) * len(pitches) * len(velocities)
    summary = {"instruments": len(instruments), "notes": len(entries), "silent_skipped": planned - len(entries)}
    # What the data is made of, for the provenance of every bundle trained on it.
    _write_json(
        out / DATASET_FILE,
        {
            "renderer": f"FluidSynth {_fluidsynth_version()} via pyfluidsynth, gain 0.5, reverb and chorus off",
            "soundfonts": [_file_record(Path(p)) for p in soundfonts],
            "pitches": list(pitches),
            "velocities": list(velocities),
            "programs": sorted(programs) if programs is not None else "all melodic GM programs (server.midi)",
            **summary,
        },
    )
    return summary


def _file_record(path: Path) -> dict:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"file": path.name, "path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _fluidsynth_version() -> str:
    import ctypes

    import fluidsynth

    version = [ctypes.c_int() for _ in range(3)]
    fluidsynth.fluid_version(*(ctypes.byref(v) for v in version))
    return ".".join(str(v.value) for v in version)
