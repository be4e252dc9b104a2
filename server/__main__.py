"""inpaint-osc: the live instrument's runtime (numpy + onnxruntime, no torch).

inpaint-osc serve [--bundle DIR] [--port 9000] ...    the OSC server: paint sounds from Max, Pd, a DAW, code
inpaint-osc send /generate                            send one message to a server, print the replies
inpaint-osc info [--bundle DIR]                       what a bundle holds, and the provider that runs it
inpaint-osc render --out note.wav ...                  generate one note to a WAV file, no server
inpaint-osc export-instrument OUT [--instrument NAME]  one note per key as a sampler instrument (SFZ + SF2)
inpaint-osc bench [--bundle DIR]                      latency of every operation over loopback OSC, as JSON
inpaint-osc stress [--scale ci|full]                  reliability: fuzz, flood, crash recovery, bad files
inpaint-osc stress --soak MINUTES                     a set played that long: two clients, a restart, flat?
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from server.bundle import PROVIDERS
from server.dsp import PHASES


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

    from server import level
    from server.audio import resample
    from server.bundle import Bundle
    from server.sampling import Conditioning, Inpainter
    from server.vqvae_audio import render

    t0 = time.perf_counter()
    b = Bundle(args.bundle, args.provider)
    m = b.manifest
    family = m.families.index(args.instrument) if args.instrument in m.families else None
    if family is None:
        raise ValueError(f"unknown instrument {args.instrument!r}: one of {', '.join(m.families)}")
    if not m.pitch_range[0] <= args.pitch <= m.pitch_range[1]:
        raise ValueError(f"pitch {args.pitch} is outside the model's range {m.pitch_range[0]}..{m.pitch_range[1]}")
    loaded = time.perf_counter()
    cond = Conditioning(
        args.pitch, family, args.temperature, args.top_p, args.guidance, args.harmonic, args.timbre
    )  # the server's Settings.conditioning, field by field
    top, bottom = Inpainter.from_bundle(b).generate(cond, np.random.default_rng(args.seed))
    sampled = time.perf_counter()
    rate = args.rate or m.spectrogram.sample_rate
    audio, lvl = level.shape(render(b, top, bottom, args.phase), m.spectrogram.sample_rate, args.level)
    audio = resample(audio, m.spectrogram.sample_rate, rate)
    rendered = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(args.out), audio, rate, subtype="FLOAT")
    return {
        "wav": str(args.out),
        "frames": int(audio.shape[0]),
        "sample_rate": rate,
        "level_db": round(lvl.level_db, 2),
        "silent": lvl.silent,
        "provider": b.provider,
        "load_s": round(loaded - t0, 3),
        "sample_s": round(sampled - loaded, 3),
        "decode_invert_s": round(rendered - sampled, 3),
    }


def cmd_export_instrument(args: argparse.Namespace) -> dict:
    from server import instrument_export
    from server.bundle import Bundle
    from server.engine import Engine

    t0 = time.perf_counter()
    engine = Engine(Bundle(args.bundle, args.provider), phase=args.phase)
    m = engine.manifest
    _check_rate(args.rate)
    engine.update_settings(
        family=engine.family_index(args.instrument),
        temperature=args.temperature,
        top_p=args.top_p,
        guidance=args.guidance,
        harmonic=args.harmonic,
        timbre=args.timbre,
        seed=args.seed,
        level=args.level,
        gain=args.gain,
        velocity_curve=args.velocity_curve,
        release=args.release,
    )
    low = m.pitch_range[0] if args.low is None else args.low
    high = m.pitch_range[1] if args.high is None else args.high
    for pitch in (low, high):
        engine.check_pitch(pitch)
    loaded = time.perf_counter()

    def on_key(done: int, total: int) -> None:
        print(f"\r{done}/{total} keys", end="\n" if done == total else "", file=sys.stderr, flush=True)

    sfz, sf2, keys = instrument_export.export(engine, args.out, args.rate, range(low, high + 1), on_key)
    return {"sfz": str(sfz), "sf2": str(sf2), "keys": keys, "load_s": round(loaded - t0, 3),
            "export_s": round(time.perf_counter() - loaded, 3)}  # fmt: skip


def cmd_serve(args: argparse.Namespace) -> dict:
    import logging

    from server.access import default_roots, is_system
    from server.bundle import Bundle
    from server.engine import Engine, EngineError
    from server.osc import InstrumentServer
    from server.output import OutputFolder

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    log = logging.getLogger("inpaint-osc")
    # The receive thread must get the interpreter back quickly while the worker runs Python between graph calls.
    sys.setswitchinterval(0.0005)
    if args.reply_port == args.port:
        raise SystemExit(f"--reply-port {args.reply_port} is --port too: the server would answer itself")
    engine = Engine(Bundle(args.bundle, args.provider, threads=args.threads), phase=args.phase)
    _check_rate(args.rate)
    if args.session is not None and args.session.exists():
        try:
            engine.load(args.session)
            log.info("restored %s (version %d, %d undo steps)", args.session, engine.version, len(engine.undo_stack))
        except EngineError as exc:  # set aside, never lost, never a reason not to start
            aside = args.session.with_name(f"{args.session.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                args.session.rename(aside)
                log.error("%s; kept it as %s and started a new session", exc, aside)
            except OSError as err:
                log.error("%s; could not set it aside (%s): starting a new session that will replace it", exc, err)
    if not args.fill:
        engine.update_settings(fill=False)
    if args.read_dir:
        roots = tuple(args.read_dir)
        for root in roots:
            if is_system(root.expanduser().resolve()):
                log.warning("--read-dir %s: a system folder; clients may read and export under it", root)
    else:
        roots, dropped = default_roots(Path.home(), Path.cwd())
        for why in dropped:
            log.warning("not a folder clients may use: %s; name folders with --read-dir", why)
    if not _is_loopback(args.host):
        log.warning("listening on %s: anyone who can reach this machine on port %d may play it (--allow %s)",
                    args.host, args.port, ", ".join(args.allow) or "none: loopback only still")  # fmt: skip
    server = InstrumentServer(
        engine,
        OutputFolder(args.out, keep=args.keep),
        host=args.host,
        port=args.port,
        reply_port=args.reply_port,
        allow=tuple(args.allow),
        read_dirs=roots,
        session=args.session,
        play=args.play,
        rate=args.rate,
    )
    log.info("model %s on %s", engine.bundle.path, engine.bundle.provider)
    if args.play and (why := server.player.check()):  # said now, not at the first render
        log.error("--play: %s; renders still go to clients", why)
    if args.midi_in:
        from server.midi import open_input

        midi_client = server.client(("127.0.0.1", 0))  # its errors go to the default reply port
        port = open_input(
            args.midi_in, lambda address, values: server.handle_message(midi_client, address, values), args.multitimbral
        )
        log.info("MIDI input: %s%s", port.name, " (multi-timbral: each channel its own instrument)" * args.multitimbral)

    def stop(signum: int, _frame: object) -> None:  # a service manager's SIGTERM stops it like Ctrl-C, and says so
        log.warning("stopping on %s", signal.Signals(signum).name)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    log.warning("stopped%s", f"; the session is in {args.session}" if args.session else "")
    return {"stopped": True, "session": str(args.session) if args.session else None}


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


BACKGROUND = {"/note/cache", "/status"}  # what the server broadcasts on its own, whatever was sent


def cmd_send(args: argparse.Namespace) -> dict:
    from server import protocol
    from server.client import OscClient

    values = [_value(a) for a in args.args]
    try:  # the client announces its reply port first: a /pong says a server is there
        client = OscClient(args.host, args.port, timeout=3)
    except TimeoutError:
        raise OSError(f"no server at {args.host}:{args.port} (is `inpaint-osc serve` running?)") from None
    client.send(args.address, *values)
    note_off = args.address == "/note" and len(values) >= 2 and values[1] == 0
    starts_work = args.address in protocol.BY_PATH and protocol.BY_PATH[args.address].request_id and not note_off
    final = {"/render/done", "/render/cancelled", "/error", "/image/done"} if starts_work else None
    if args.address == "/export/instrument":  # work without a request id: it ends with /export/done
        final = {"/export/done", "/error"}
    replies: list[list] = []
    deadline = time.monotonic() + args.timeout
    quiet_until = time.monotonic() + args.wait  # without a final reply: --wait s after the last answer
    while (left := min(deadline, deadline if final else quiet_until) - time.monotonic()) > 0:
        reply = client.receive(left)
        if reply is None:
            break
        print(reply[0], *reply[1], flush=True)
        replies.append([reply[0], *reply[1]])
        if final and reply[0] in final:
            break
        if reply[0] not in BACKGROUND:  # the fill's /note/cache stream must not keep the command waiting
            quiet_until = time.monotonic() + args.wait
    if not replies and final:
        raise OSError(f"{args.address}: no reply within {args.timeout} s (the server answered /pong)")
    if not replies:  # the server answered /pong: it is there, and this message asks for nothing back
        print(f"(sent {args.address}; no reply within {args.wait} s, none expected)", flush=True)
    return {"replies": len(replies)}


def cmd_bench(args: argparse.Namespace) -> dict:
    from server.tools.latency import run_bench, run_fill_bench

    if args.fill:
        return run_fill_bench(args.bundle, threads=args.threads)
    if args.before is not None:
        from server.tools.before_after import before_after_markdown, run_before_after

        only = tuple(args.only.split(",")) if args.only else ()
        settings = tuple((a, float(v)) for a, v in (s.split("=", 1) for s in args.set))
        result = run_before_after(
            args.before, args.before_bundle, args.bundle, args.repeats, args.threads, only=only, settings=settings
        )
        print(before_after_markdown(result), flush=True)
        return result
    return run_bench(args.bundle, repeats=args.repeats, threads=args.threads, provider=args.provider)


def cmd_stress(args: argparse.Namespace) -> dict:
    from server.tools.stress import CHECKS, reliability_markdown, run_suite

    if args.soak is not None:
        from server.tools.soak import run_soak

        result = run_soak(args.bundle, args.soak, args.seed, args.markdown)
    else:
        only = tuple(args.only.split(",")) if args.only else CHECKS
        unknown = set(only) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}: choose from {', '.join(CHECKS)}")
        result = run_suite(args.bundle, args.scale, only, args.seed)
        if args.markdown:
            from server.tools.soak import SECTION

            old = args.markdown.read_text() if args.markdown.exists() else ""
            kept = old[old.index(SECTION) :] if SECTION in old else ""  # the soak's and later sections stay
            args.markdown.write_text(reliability_markdown(result) + ("\n" + kept if kept else ""))
    if not result["passed"]:
        print(json.dumps(result, indent=2))
        raise ValueError(f"reliability checks failed: {json.dumps(result['failures'])}")
    return result


def _check_rate(rate: int | None) -> None:
    from server.protocol import RATES

    if rate is not None and not RATES[0] <= rate <= RATES[1]:
        raise ValueError(f"--rate {rate} is outside {RATES[0]}..{RATES[1]} Hz")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == [] or action.nargs == 0 or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parser() -> argparse.ArgumentParser:
    from server.protocol import DEFAULTS  # the settings' defaults, written once (render and export take them too)

    ap = argparse.ArgumentParser(
        prog="inpaint-osc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    # Options several commands share, declared once: --bundle, and --bundle with --provider.
    bundle = argparse.ArgumentParser(add_help=False)
    bundle.add_argument(
        "--bundle", type=Path, default=default_bundle(), help="model bundle folder (default: the shipped one)"
    )
    common = argparse.ArgumentParser(add_help=False, parents=[bundle])
    common.add_argument(
        "--provider",
        default="cpu",
        choices=[*PROVIDERS, "auto"],
        help="onnxruntime execution provider (default: %(default)s)",
    )
    sub.add_parser("info", parents=[common], help="describe a bundle")
    phase = argparse.ArgumentParser(add_help=False)  # how renders are inverted, for serve, render, export-instrument
    phase.add_argument(
        "--phase",
        default=PHASES[0],
        choices=PHASES,
        help="the phase of renders: peaks (locked to the spectral peaks) or if (the decoder's IF, the paper's; "
        "default: %(default)s)",
    )
    s = sub.add_parser("serve", help="the OSC server", formatter_class=_Help, parents=[common, phase])
    s.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but loopback lets other machines send to the server, and those in "
        "--allow may then edit the sound, read audio files under --read-dir and export there",
    )
    s.add_argument("--port", type=int, default=9000, help="UDP port to listen on")
    s.add_argument(
        "--reply-port", type=int, default=9001, help="replies go to this port at the sender's address (not --port)"
    )
    s.add_argument("--allow", action="append", default=[], metavar="NET", help="client network besides loopback")
    out = Path(tempfile.gettempdir()) / f"inpaint-osc-{getpass.getuser()}"
    s.add_argument("--out", type=Path, default=out, help="output folder (private to you)")
    s.add_argument("--keep", type=int, default=32, help="renders kept in the output folder")
    s.add_argument(
        "--read-dir",
        action="append",
        type=Path,
        help="a folder clients may read (/analyze) and export into (/export/instrument); repeat for more (default: "
        "your home and the current folder, except the filesystem's root, system folders and folders above home)",
    )
    s.add_argument("--session", type=Path, help="save the performer's state here after every edit; restore it")
    s.add_argument("--play", action="store_true", help="play every render on this machine's audio output")
    s.add_argument(
        "--rate",
        type=int,
        help="sample rate (Hz) of renders for clients that do not send /render/rate, and of --play "
        "(default: the model's, 16000)",
    )
    s.add_argument(
        "--no-fill",
        dest="fill",
        action="store_false",
        help="do not fill the note cache across the keyboard when idle (/note/fill 0)",
    )
    s.add_argument("--midi-in", metavar="NAME", help="MIDI input port (needs the midi extra)")
    s.add_argument(
        "--multitimbral",
        action="store_true",
        help="with --midi-in: each MIDI channel's program change picks that channel's instrument (/channel/note)",
    )
    s.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
    s.add_argument("--quiet", action="store_true", help="log warnings only, not one line per request")
    sub.add_parser("addresses", help="the OSC address table, as markdown")
    bp = sub.add_parser(
        "bench",
        help="latency over loopback OSC (JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    bp.add_argument("--repeats", type=int, default=50, help="requests per edit figure")
    bp.add_argument("--threads", type=int, default=2, help="the server's onnxruntime threads")
    bp.add_argument("--fill", action="store_true", help="only edits with the note cache's fill running vs off")
    bp.add_argument(
        "--before",
        type=Path,
        help="another checkout of this project: its server and this one side by side, asked in turn (ratios)",
    )
    bp.add_argument("--before-bundle", type=Path, help="the before side's bundle (default: its own default_bundle)")
    bp.add_argument("--only", help="with --before: a comma list of operations, e.g. inpaint_top_cell,generate")
    bp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ADDRESS=VALUE",
        help="with --before: sent to both, e.g. /harmonic=1",
    )
    st = sub.add_parser(
        "stress", help="the reliability suite: fuzz, flood, crash recovery, bad files (JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[bundle],
    )  # fmt: skip
    st.add_argument("--scale", default="full", choices=["ci", "full"], help="ci: seconds; full: the issue's sizes")
    st.add_argument("--only", help="comma list of checks: fuzz,flood,crash,files (default: all)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--markdown", type=Path, help="also write the report, e.g. docs/reliability.md")
    st.add_argument(
        "--soak", type=float, metavar="MINUTES",
        help="instead: play a set for MINUTES (two clients, notes, edits, generates, instrument changes, a "
        "restart halfway); with --markdown, its section replaces the soak section of that file",
    )  # fmt: skip
    c = sub.add_parser("send", help="send one OSC message and print the replies")
    c.add_argument("address")
    c.add_argument("args", nargs="*", help="numbers are sent as int or float, the rest as strings")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=9000)
    c.add_argument("--wait", type=float, default=0.5, help="seconds of silence that end the replies")
    c.add_argument("--timeout", type=float, default=60.0, help="longest wait for work to finish")
    # What a sound is made with: render and export-instrument take the same options.
    sound = argparse.ArgumentParser(add_help=False, parents=[common, phase])
    sound.add_argument("--instrument", default="keyboard", help="instrument family (default: %(default)s)")
    sound.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="(default: %(default)s)")
    sound.add_argument(
        "--top-p", type=float, default=DEFAULTS["top_p"], help="nucleus sampling mass (default: %(default)s)"
    )
    for name, what in (
        ("guidance", "classifier-free guidance, as /guidance"),
        ("harmonic", "harmonic guidance, as /harmonic"),
        ("timbre", "family guidance, as /timbre"),
    ):
        sound.add_argument(f"--{name}", type=float, default=DEFAULTS[name], help=f"{what} (default: %(default)s)")
    sound.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="(default: %(default)s)")
    sound.add_argument(
        "--level", type=float, default=DEFAULTS["level"], help="RMS of the held part, dBFS (default: %(default)s)"
    )
    sound.add_argument("--rate", type=int, help="sample rate of the WAVs (default: the model's)")
    p = sub.add_parser("render", parents=[sound], help="generate one note to a WAV file")
    p.add_argument("--out", type=Path, required=True, help="WAV file to write (float32)")
    p.add_argument("--pitch", type=int, default=60, help="MIDI pitch (default: %(default)s)")
    e = sub.add_parser(
        "export-instrument", parents=[sound], help="one note per key as a sampler instrument: SFZ (WAVs) and SF2"
    )
    e.add_argument("out", type=Path, help="folder to write (replaced whole if it holds an earlier export)")
    e.add_argument("--low", type=int, help="lowest key (default: the model's lowest pitch)")
    e.add_argument("--high", type=int, help="highest key (default: the model's highest pitch)")
    e.add_argument(
        "--gain", type=float, default=DEFAULTS["gain"], help="dB after normalisation, as /gain (default: %(default)s)"
    )
    e.add_argument(
        "--velocity-curve", type=float, default=DEFAULTS["velocity_curve"],
        help="level = (velocity / 127) ** curve, as /velocity/curve (default: %(default)s)",
    )  # fmt: skip
    e.add_argument(
        "--release", type=float, default=DEFAULTS["release"], help="fade after note-off, s (default: %(default)s)"
    )
    return ap


def default_bundle() -> Path:
    """The bundle shipped inside the package, or $INPAINT_OSC_BUNDLE."""
    import os

    return Path(os.environ.get("INPAINT_OSC_BUNDLE") or Path(__file__).parent / "default_bundle")


def cmd_addresses(args: argparse.Namespace) -> None:
    from server.protocol import markdown_table

    print(markdown_table())


COMMANDS = {
    "info": cmd_info,
    "render": cmd_render,
    "export-instrument": cmd_export_instrument,
    "serve": cmd_serve,
    "send": cmd_send,
    "bench": cmd_bench,
    "stress": cmd_stress,
    "addresses": cmd_addresses,
}


def main(argv: list[str] | None = None) -> int:
    from server.bundle import BundleError
    from server.midi import MidiError

    args = parser().parse_args(argv)
    try:
        result = COMMANDS[args.command](args)
    except (BundleError, ValueError, OSError, MidiError, TimeoutError) as exc:
        print(f"inpaint-osc {args.command}: error: {exc}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
