"""Every stage end to end with the real FluidSynth data: train, resume, TensorBoard, DDP, export, bench."""

import json
import shutil

import pytest

from export import run_folder
from tests.conftest import run_cli


def test_pipeline_leaves_every_artefact_in_the_run_folder(tiny_bundle):
    run, bundle = tiny_bundle
    for name in (
        "run.json",
        "stats.json",
        "vqvae.pt",
        "top_prior.pt",
        "bottom_prior.pt",
        "codes/train.npz",
        "codes/valid.npz",
    ):
        assert (run / name).is_file(), name
    config, _ = run_folder.load_run(run)
    ckpt = run_folder.load_checkpoint(run / "vqvae.pt")
    assert ckpt["config"] == config.to_dict() and ckpt["step"] == 3  # the config travels in every checkpoint
    assert len(list(bundle.glob("*.onnx"))) == 6


def test_tensorboard_has_scalars_and_spectrogram_images(tiny_bundle):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"scalars": set(), "images": set()}
    for events in (tiny_bundle[0] / "tb").glob("events.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for kind in tags:
            tags[kind].update(acc.Tags()[kind])
    expected = {"vqvae/loss", "vqvae/mse", "vqvae/perplexity_top", "top_prior/loss", "bottom_prior/accuracy"}
    assert expected <= tags["scalars"]
    assert {"vqvae/valid_mse", "top_prior/valid_loss"} <= tags["scalars"]
    assert {"vqvae/input", "vqvae/reconstruction"} <= tags["images"]


def test_stages_resume_from_their_checkpoints(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle[0], run)
    before = run_folder.load_checkpoint(run / "vqvae.pt")
    result = run_cli("export", "vqvae", str(run), "--vqvae-steps", "5", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    after = run_folder.load_checkpoint(run / "vqvae.pt")
    assert after["step"] == 5 and "vqvae:  60%" in result.stderr.replace("\r", "\n")  # resumed at 3 of 5
    assert after["normalizer"] == before["normalizer"]
    result = run_cli("export", "prior", str(run), "--layer", "top", "--steps", "4", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert run_folder.load_checkpoint(run / "top_prior.pt")["step"] == 4


def test_resuming_with_a_new_preset_or_new_data_is_refused(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle[0], run)
    result = run_cli("export", "vqvae", str(run), "--preset", "small")
    assert result.returncode == 1 and "already exists with its own config" in result.stderr
    result = run_cli("export", "vqvae", str(run), "--data", str(tmp_path))
    assert result.returncode == 1 and "start a new run for new data" in result.stderr


def test_two_process_ddp_with_gloo_on_cpu(dataset, tmp_path):
    run = tmp_path / "ddp"
    torchrun = ["torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "export"]
    result = run_cli(
        *[torchrun[0]], *torchrun[1:], "vqvae", str(run), "--data", str(dataset), "--preset", "tiny", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["world_size"] == 2 and "valid_mse" in report
    assert run_folder.load_checkpoint(run / "vqvae.pt")["step"] == 3
    assert run_cli("export", "codes", str(run), "--device", "cpu").returncode == 0
    result = run_cli(*[torchrun[0]], *torchrun[1:], "prior", str(run), "--layer", "bottom", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["world_size"] == 2


def test_bench_prints_onnxruntime_and_torch_figures(capsys):
    from export.sampling_speed import run_bench

    summary = run_bench("tiny", threads=1, repeats=1, cache_length=50)
    printed = capsys.readouterr().out
    assert "onnxruntime" in printed and "speed-up" in printed
    for runtime in ("onnxruntime", "torch_1_threads"):
        assert summary[runtime]["step_ms"] > 0 and summary[runtime]["generate_640_ms"] > 0
    assert summary["step_speedup"] == pytest.approx(
        summary["torch_1_threads"]["step_ms"] / summary["onnxruntime"]["step_ms"]
    )


def test_user_errors_are_reported_without_a_traceback(tmp_path):
    result = run_cli("export", "codes", str(tmp_path))
    assert result.returncode == 1 and "not a run folder" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("export", "vqvae", str(tmp_path / "new"))
    assert result.returncode == 1 and "--data DATA is needed" in result.stderr
    result = run_cli("export", "dataset", "--soundfont", str(tmp_path / "none.sf2"), "--out", str(tmp_path / "d"))
    assert result.returncode == 1 and "no such soundfont" in result.stderr


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(tiny_bundle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("export", "codes", str(tiny_bundle[0]), "--device", "cuda")
    assert result.returncode == 1 and "no CUDA device is available" in result.stderr
