"""Shared fixtures: a dataset rendered with the real FluidSynth, and a `tiny` run trained through every
stage and exported, built once per session (about 20 s on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
# Few notes, every family represented: piano, glockenspiel, church organ, nylon guitar, finger bass, violin,
# trumpet, alto sax, flute, square lead, choir.
PROGRAMS = "0,9,19,24,33,40,56,65,73,80,52"


def require(ok: bool, what: str) -> None:
    """Skip when a system tool is missing, except in CI (INPAINT_OSC_REQUIRE_TOOLS=1), where it fails."""
    if ok:
        return
    if os.environ.get("INPAINT_OSC_REQUIRE_TOOLS"):
        pytest.fail(f"{what} is required in CI (scripts/setup.sh installs it)")
    pytest.skip(f"{what} is not installed")


def require_soundfont() -> Path:
    try:
        import fluidsynth  # noqa: F401  (needs Debian's libfluidsynth)

        lib = True
    except (ImportError, OSError):
        lib = False
    require(lib and SOUNDFONT.is_file(), f"FluidSynth and {SOUNDFONT}")
    return SOUNDFONT


def run_cli(module: str, *args: str, block_torch: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m module args` in a subprocess; with block_torch, importing torch or librosa fails."""
    code = (
        f"import runpy, sys; sys.argv = ['{module}'] + sys.argv[1:]; runpy.run_module('{module}', run_name='__main__')"
    )
    if block_torch:
        code = "import sys; sys.modules['torch'] = None; sys.modules['librosa'] = None; " + code
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """An NSynth-format dataset rendered from TimGM6mb: 11 programs x 3 pitches x 1 velocity = 33 notes."""
    sf2 = require_soundfont()
    out = tmp_path_factory.mktemp("data") / "gm"
    result = run_cli(
        "export",
        "dataset",
        "--soundfont",
        str(sf2),
        "--out",
        str(out),
        "--pitches",
        "48,60,72",
        "--velocities",
        "100",
        "--programs",
        PROGRAMS,
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def tiny_bundle(dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, bundle folder) of the `tiny` preset trained for a few steps through every stage."""
    base = tmp_path_factory.mktemp("tiny")
    run, bundle = base / "run", base / "bundle"
    result = run_cli(
        "export",
        "pipeline",
        str(run),
        "--data",
        str(dataset),
        "--out",
        str(bundle),
        "--preset",
        "tiny",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run, bundle


@pytest.fixture(scope="session")
def osc_bench(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """`inpaint-osc bench` on the tiny bundle, run once: its JSON file and figures (the OSC benchmark's own test
    reads the figures; `inpaint-train bench --server --osc` compares torch against the file)."""
    result = run_cli("server", "bench", "--bundle", str(tiny_bundle[1]), "--repeats", "5", "--threads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path_factory.mktemp("osc-bench") / "bench.json"
    path.write_text(result.stdout)
    return path, json.loads(result.stdout)


def start_server(bundle: Path | None, folder: Path, *extra: str):
    """A server on `bundle` (None: the packaged default, as `serve` with no --bundle), through the one launcher
    the tools use (`server.tools.launcher`; torch blocked)."""
    from server.tools.launcher import ServerProcess

    return ServerProcess(bundle, folder, *extra)


@pytest.fixture(scope="module")
def live(tiny_bundle, tmp_path_factory):
    """A server on the tiny bundle, shared by a test module, with one sound generated."""
    server = start_server(tiny_bundle[1], tmp_path_factory.mktemp("live"))
    c = server.client()
    c.send("/generate")
    c.wait_for("/render/done")
    yield server
    server.stop()
