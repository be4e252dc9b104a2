"""`inpaint-train bench --server`: the torch baseline runs the bundle's own weights, and the report is written."""

import json

import numpy as np
import pytest
import torch

from export.bundle_torch import _module_path, check_read_back, read_torch_models
from export.live_vs_eager import EagerOps, earlier_osc_figures, matmul_gflops
from server.bundle import Bundle
from tests.conftest import run_cli


def test_module_paths_from_onnx_scopes():
    assert _module_path("/decoder.0/ff/ff.0/MatMul") == "decoder.0.ff.0"
    assert _module_path("/head/MatMul") == "head"
    assert _module_path("/encoder.1/attn/q/MatMul") == "encoder.1.attn.q"


def test_weights_read_back_from_the_bundle_reproduce_onnxruntime(tiny_bundle):
    _, bundle_dir = tiny_bundle
    config, vqvae, priors = read_torch_models(bundle_dir)
    assert config.preset == "tiny"
    assert check_read_back(Bundle(bundle_dir), vqvae, priors) < 1e-4
    # The weights are the trained ones, not a fresh initialisation: they match the run's checkpoint.
    checkpoint = torch.load(tiny_bundle[0] / "top_prior.pt", weights_only=False)["model"]
    for name, value in priors["top"].state_dict().items():
        assert torch.equal(value, checkpoint[name]), name


def test_eager_operations_count_their_flops(tiny_bundle):
    config, vqvae, priors = read_torch_models(tiny_bundle[1])
    ops = EagerOps(vqvae, priors, Bundle(tiny_bundle[1]).manifest.mask_token, config.spectrogram)
    note = np.zeros(config.spectrogram.n_samples, np.float32)
    cell, generate = ops.flops("inpaint_top_cell", note), ops.flops("generate", note)
    assert 0 < cell < generate  # one cell samples 1 top + 4 bottom tokens, a generate 640
    assert matmul_gflops(1, n=256, repeats=3) > 0


def test_the_command_writes_benchmarks_markdown(tiny_bundle, osc_bench, tmp_path):
    # The OSC side is the session's one `inpaint-osc bench` run (tests/server/test_clients.py checks its figures);
    # torch eager runs the same operations here.
    report, (osc_json, osc) = tmp_path / "benchmarks.md", osc_bench
    args = ["bench", "--server", "--bundle", str(tiny_bundle[1]), "--repeats", "2", "--threads", "1"]
    result = run_cli("export", *args, "--osc", str(osc_json), "--markdown", str(report), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert figures["osc"] == osc and figures["generate"]["speedup_vs_torch"] > 0
    assert figures["generate"]["speedup_vs_torch"] > 0 and figures["generate"]["ours_over_floor"] > 0
    text = report.read_text()
    for operation in ("inpaint_top_cell", "inpaint_frequency_band", "analyze_4s_file", "note_cached"):
        assert f"| {operation} |" in text
    assert "GFLOP/s" in text and "Cold start" in text and "## Playability" in text
    assert figures["osc"]["playability"]["melody"]["cancelled"] == 0


def test_earlier_osc_figures_must_be_of_the_same_bundle_and_threads(tiny_bundle, osc_bench, tmp_path):
    osc_json, osc = osc_bench
    assert earlier_osc_figures(osc_json, tiny_bundle[1], 1) == osc
    with pytest.raises(ValueError, match="on 1 cpu threads, not .* on 2 cpu threads"):
        earlier_osc_figures(osc_json, tiny_bundle[1], 2)
    with pytest.raises(ValueError, match="not .*other on 1 cpu"):
        earlier_osc_figures(osc_json, tmp_path / "other", 1)
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="not an inpaint-osc bench JSON"):
        earlier_osc_figures(tmp_path / "x.json", tiny_bundle[1], 1)
