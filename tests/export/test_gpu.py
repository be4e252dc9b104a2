"""Checks that need a CUDA device; skipped where there is none (CPU-only CI)."""

import json

import numpy as np
import pytest

from server import dsp
from tests.conftest import run_cli

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_melif_twin_on_cuda_matches_numpy(dataset):
    import soundfile as sf

    from export.spectrogram_torch import MelIF

    audio, _ = sf.read(str(dataset / "audio" / "keyboard_acoustic_000-060-100.wav"))
    on_gpu = MelIF().cuda()(torch.tensor(audio, dtype=torch.float32, device="cuda")[None])[0].cpu().numpy()
    reference = dsp.analyze(audio)
    assert np.abs(on_gpu[0] - reference[0]).max() < 0.01
    assert (np.abs(on_gpu[1] - reference[1]) < 1e-3).mean() > 0.999


def test_every_stage_trains_on_cuda_and_exports(dataset, tmp_path):
    result = run_cli(
        "export",
        "pipeline",
        str(tmp_path / "run"),
        "--data",
        str(dataset),
        "--out",
        str(tmp_path / "bundle"),
        "--preset",
        "tiny",
        "--device",
        "cuda",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert all(v <= manifest["parity"]["tolerance"] for v in manifest["parity"]["max_abs_diff"].values())


def test_prior_validation_on_cuda_matches_cpu(tiny_bundle):
    """The masks come from a CPU generator whatever the device (a CUDA run once failed here)."""
    from export import run_folder, train

    run = tiny_bundle[0]
    config, _ = run_folder.load_run(run)
    model, _ = run_folder.load_prior(run, config, "top")
    on_cpu = train.evaluate_prior(model, "top", run_folder.code_dataset(run, "valid"), batch_size=2)
    on_gpu = train.evaluate_prior(model.cuda(), "top", run_folder.code_dataset(run, "valid", "cuda"), batch_size=2)
    assert on_gpu["valid_loss"] == pytest.approx(on_cpu["valid_loss"], rel=1e-3)
