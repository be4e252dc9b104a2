"""The runtime installs light: no module of `server` may import torch or librosa."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import server
from tests.conftest import ROOT, require, run_cli


def test_every_server_module_imports_without_torch_or_librosa():
    modules = [m.name for m in pkgutil.walk_packages(server.__path__, "server.")]  # server.tools.* too
    code = (
        "import importlib, sys\n"
        "sys.modules['torch'] = None; sys.modules['librosa'] = None\n"  # any import of them now raises
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "assert not any(m.startswith(('torch', 'librosa', 'export')) for m in sys.modules if sys.modules[m])\n"
        "print(len(" + repr(modules) + "))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(modules) >= 6


def test_the_client_loads_the_wire_format_not_the_engine():
    code = (
        "import sys\nimport server.client\n"
        "loaded = [m for m in ('server.osc', 'server.engine', 'server.worker', 'onnxruntime') if m in sys.modules]\n"
        "assert not loaded, loaded"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_render_command_runs_with_torch_blocked(tiny_bundle, tmp_path):
    import soundfile as sf

    out = tmp_path / "note.wav"
    args = ["render", "--bundle", str(tiny_bundle[1]), "--out", str(out), "--pitch", "48", "--instrument", "string"]
    result = run_cli("server", *args, block_torch=True)
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(str(out))
    assert rate == 16_000 and audio.shape == (64_000,)
    # The same codes inverted with the decoder's IF (the paper's phase): the same length, other samples.
    args[args.index(str(out))] = str(tmp_path / "if.wav")
    result = run_cli("server", *args, "--phase", "if", block_torch=True)
    assert result.returncode == 0, result.stderr
    with_if, _ = sf.read(str(tmp_path / "if.wav"))
    assert with_if.shape == audio.shape and not np.allclose(with_if, audio)


def test_render_command_reports_user_errors_without_a_traceback(tiny_bundle, tmp_path):
    args = ["render", "--bundle", str(tiny_bundle[1]), "--out", str(tmp_path / "x.wav"), "--pitch", "100"]
    result = run_cli("server", *args, block_torch=True)
    assert result.returncode == 1
    assert "pitch 100 is outside the model's range 24..84" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("server", "info", "--bundle", str(Path(tmp_path)), block_torch=True)
    assert result.returncode == 1 and "not a bundle" in result.stderr


def test_the_first_readme_command_installs_the_runtime_without_torch(tmp_path):
    """scripts/run.sh (the README's first command) installs the extras it names: pip's own resolution of
    them, from a clean slate, holds the runtime and no torch, TensorBoard or onnx."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert readme.split("```sh\n")[1].splitlines()[0].startswith("scripts/run.sh")
    [extras] = re.findall(
        r'INPAINT_OSC_EXTRAS="\$\{INPAINT_OSC_EXTRAS:-([\w,]+)\}"', (ROOT / "scripts/run.sh").read_text()
    )
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q", "--report", str(report)]
    result = subprocess.run([*cmd, f".[{extras}]"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    offline = any(s in result.stderr for s in ("No matching distribution", "Could not find a version", "NewConnection"))
    if result.returncode != 0 and offline:  # the package index is out of reach: nothing to resolve against
        require(False, "the package index (pip install --dry-run)")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    names = {i["metadata"]["name"].lower().replace("_", "-") for i in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "numpy", "python-osc", "soundfile", "soxr"} <= names
    assert not names & {"torch", "tensorboard", "onnx", "librosa", "scipy"}, names
