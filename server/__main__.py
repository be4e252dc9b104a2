"""inpaint-osc: the live instrument's runtime (numpy + onnxruntime, no torch).

  inpaint-osc info --bundle DIR                         what a bundle holds, and the provider that runs it
  inpaint-osc render --bundle DIR --out note.wav ...    generate one note to a WAV file, no server

The OSC server (`inpaint-osc serve`) builds on the same engine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def cmd_info(args: argparse.Namespace) -> dict:
    from server.bundle import Bundle

    b = Bundle(args.bundle, args.provider)
    m = b.manifest
    return {
        "bundle": str(b.path),
        "name": m.raw.get("name"),
        "format_version": m.raw["format_version"],
        "provider": b.provider,
        "families": list(m.families),
        "pitch_range": list(m.pitch_range),
        "n_codes": m.n_codes,
        "provenance": m.raw.get("provenance", {}),
    }


def cmd_render(args: argparse.Namespace) -> dict:
    import soundfile as sf

    from server.bundle import Bundle
    from server.render import render
    from server.sampling import Conditioning, Inpainter

    t0 = time.perf_counter()
    b = Bundle(args.bundle, args.provider)
    m = b.manifest
    family = m.families.index(args.instrument) if args.instrument in m.families else None
    if family is None:
        raise ValueError(f"unknown instrument {args.instrument!r}: one of {', '.join(m.families)}")
    if not m.pitch_range[0] <= args.pitch <= m.pitch_range[1]:
        raise ValueError(f"pitch {args.pitch} is outside the model's range {m.pitch_range[0]}..{m.pitch_range[1]}")
    loaded = time.perf_counter()
    cond = Conditioning(args.pitch, family, args.temperature, args.top_p)
    top, bottom = Inpainter.from_bundle(b).generate(cond, np.random.default_rng(args.seed))
    sampled = time.perf_counter()
    audio = render(b, top, bottom)
    rendered = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.out), audio, m.spectrogram.sample_rate, subtype="FLOAT")
    return {
        "wav": str(args.out),
        "frames": int(audio.shape[0]),
        "sample_rate": m.spectrogram.sample_rate,
        "provider": b.provider,
        "load_s": round(loaded - t0, 3),
        "sample_s": round(sampled - loaded, 3),
        "decode_invert_s": round(rendered - sampled, 3),
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="inpaint-osc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    common.add_argument(
        "--provider",
        default="cpu",
        choices=["cpu", "cuda", "coreml", "auto"],
        help="onnxruntime execution provider (default: %(default)s)",
    )
    sub.add_parser("info", parents=[common], help="describe a bundle")
    p = sub.add_parser("render", parents=[common], help="generate one note to a WAV file")
    p.add_argument("--out", type=Path, required=True, help="WAV file to write (float32)")
    p.add_argument("--pitch", type=int, default=60, help="MIDI pitch (default: %(default)s)")
    p.add_argument("--instrument", default="keyboard", help="instrument family (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return ap


COMMANDS = {"info": cmd_info, "render": cmd_render}


def main(argv: list[str] | None = None) -> int:
    from server.bundle import BundleError

    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (BundleError, ValueError, OSError) as exc:
        print(f"inpaint-osc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
