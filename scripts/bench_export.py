"""The figures of the instrument export on the shipped model (README "In a DAW"): the export of every key
cold (an empty note cache: every note rendered) and warm (the same engine again), then FluidSynth plays a
16-note melody through the SF2 (cents error of each note, and of the sample it plays) and one key at velocity
127 and 30 (dB apart); with --osc, a server over real UDP exports once its note cache is full.

    .venv/bin/python scripts/bench_export.py [--bundle DIR] [--instrument NAME] [--out DIR] [--osc]

Prints JSON. Needs Debian's fluidsynth and mido (the dev extra); export.metrics is numpy-only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.metrics import cents, estimate_f0, midi_to_hz  # noqa: E402
from server import instrument_export  # noqa: E402
from server.__main__ import default_bundle  # noqa: E402
from server.bundle import Bundle  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.level import held_rms_db  # noqa: E402

MELODY = (60, 62, 64, 65, 67, 69, 71, 72, 48, 52, 55, 59, 74, 77, 79, 84)  # 16 notes over most of the range
RATE = 16_000


def f0_cents(audio: np.ndarray, key: int, start: float, seconds: float) -> float | None:
    target = midi_to_hz(key)
    f0 = estimate_f0(audio, RATE, fmin=target / 2.2, fmax=min(RATE / 2.5, target * 2.2), start_s=start,
                     duration_s=seconds)  # fmt: skip
    return None if f0 is None else round(cents(f0, target), 1)


def fluidsynth(sf2: Path, events: list[tuple[int, int]], folder: Path, held: float = 0.8) -> np.ndarray:
    """FluidSynth's render (reverb and chorus off) of `events` (key, velocity), one a second."""
    import mido

    midi = mido.MidiFile(ticks_per_beat=480)  # 120 bpm: 960 ticks a second
    track = mido.MidiTrack()
    midi.tracks.append(track)
    for key, velocity in events:
        track.append(mido.Message("note_on", note=key, velocity=velocity, time=0))
        track.append(mido.Message("note_off", note=key, velocity=0, time=round(960 * held)))
        track.append(mido.MetaMessage("marker", text="rest", time=round(960 * (1 - held))))
    midi.save(str(folder / "melody.mid"))
    out = folder / "melody.wav"
    cmd = ["fluidsynth", "-ni", "-R", "0", "-C", "0", "-g", "1", "-F", str(out), "-r", str(RATE), str(sf2)]
    subprocess.run([*cmd, str(folder / "melody.mid")], check=True, capture_output=True)
    audio, rate = sf.read(str(out), always_2d=True)
    assert rate == RATE
    return audio.mean(axis=1)


def over_osc(bundle: Path, instrument: str, folder: Path) -> dict:
    """A server on `bundle` over real UDP: once its note cache is full, the time from /export/instrument to
    /export/done, and the /export/progress messages between."""
    from server.tools.launcher import ServerProcess

    with ServerProcess(bundle, folder, threads=2, quiet=True) as server:
        client = server.client()
        client.send("/instrument", instrument)
        t0 = time.perf_counter()
        while (cache := client.wait_for("/note/cache", timeout=300)[1])[0] < cache[1]:
            pass
        filled = time.perf_counter()
        client.send("/export/instrument", str(server.read_dir / "osc-instrument"))
        progress = 0
        while (reply := client.wait_for("/export/progress", "/export/done", "/error", timeout=300))[0] != (
            "/export/done"
        ):
            assert reply[0] == "/export/progress", reply
            progress += 1
        done = time.perf_counter()
    return {"cache_fill_s": round(filled - t0, 2), "export_warm_s": round(done - filled, 2), "progress": progress,
            "done": reply[1]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=default_bundle())
    ap.add_argument("--instrument", default="keyboard")
    ap.add_argument("--out", type=Path, help="where the instrument goes (default: a temporary folder)")
    ap.add_argument("--osc", action="store_true", help="also over real UDP: a server's warm export")
    args = ap.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="inpaint-export-")) / "instrument"

    t0 = time.perf_counter()
    engine = Engine(Bundle(args.bundle))
    engine.update_settings(family=engine.family_index(args.instrument))
    loaded = time.perf_counter()
    _, _, keys = instrument_export.export(engine, folder)
    cold = time.perf_counter()
    sfz, sf2, _ = instrument_export.export(engine, folder)  # every note cached now: the export alone
    warm = time.perf_counter()

    audio = fluidsynth(sf2, [(k, 100) for k in MELODY], folder.parent)
    played = [f0_cents(audio, k, i + 0.15, 0.6) for i, k in enumerate(MELODY)]
    own = [f0_cents(sf.read(str(folder / "samples" / f"{k:03d}.wav"))[0], k, 0.15, 0.6) for k in MELODY]
    loudness = fluidsynth(sf2, [(60, 127), (60, 30)], folder.parent)
    loud, soft = (held_rms_db(loudness[int((i + 0.15) * RATE) : int((i + 0.75) * RATE)], RATE) for i in range(2))
    osc = over_osc(args.bundle, args.instrument, folder.parent / "server") if args.osc else None
    print(
        json.dumps(
            {
                "bundle": str(args.bundle),
                "instrument": args.instrument,
                "keys": keys,
                "load_s": round(loaded - t0, 2),
                "export_cold_s": round(cold - loaded, 2),
                "export_warm_s": round(warm - cold, 2),
                "sfz": str(sfz),
                "sf2_bytes": sf2.stat().st_size,
                "melody": list(MELODY),
                "cents_fluidsynth": played,
                "cents_sample": own,
                "within_50_cents": sum(c is not None and abs(c) < 50 for c in played),
                "velocity_127_vs_30_db": round(loud - soft, 2),
                "osc": osc,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
