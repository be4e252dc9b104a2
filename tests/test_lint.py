"""The code stays lint-clean and formatted (ruff, configured in pyproject.toml; the dev extra installs it)."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]])
def test_ruff(args):
    pytest.importorskip("ruff")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "server", "export", "tests"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
