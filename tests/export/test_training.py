"""The training loop's parts: device-resident batches, audio read once, the schedule, time budgets."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from export import run_folder, train
from export.config import preset
from export.nsynth import load_splits
from tests.conftest import run_cli


def test_batches_cover_every_row_once_per_epoch_and_ranks_split_them():
    rows = torch.arange(10)
    one = train.Dist(0, 1, torch.device("cpu"))
    batches = train.shuffled_batches((rows, rows * 2), 5, one, seed=0)
    first, second = next(batches), next(batches)
    assert sorted(torch.cat([first[0], second[0]]).tolist()) == list(range(10))
    assert torch.equal(first[1], first[0] * 2)  # fields stay aligned
    halves = [
        next(train.shuffled_batches((rows,), 5, train.Dist(r, 2, torch.device("cpu")), seed=0))[0] for r in (0, 1)
    ]
    assert sorted(torch.cat(halves).tolist()) == list(range(10))  # two ranks, disjoint halves of one epoch
    assert next(train.shuffled_batches((rows[:3],), 5, one, seed=0))[0].numel() == 3  # fewer rows than a batch


def test_learning_rate_warms_up_holds_and_cools_down_to_zero():
    lr = lambda step, progress: train.learning_rate(1e-3, step, progress, warmup=100, cooldown=0.2)  # noqa: E731
    assert lr(0, 0.0) == pytest.approx(1e-5) and lr(49, 0.1) == pytest.approx(5e-4)
    assert lr(500, 0.5) == 1e-3
    assert lr(900, 0.9) == pytest.approx(5e-4) and lr(1000, 1.0) == 0.0


def test_audio_is_read_once_as_int16_equal_to_the_files(dataset):
    config = preset("tiny")
    notes = load_splits(dataset, config.data)["train"][:3]
    audio = train.load_audio(notes, config, torch.device("cpu"))
    assert audio.dtype == torch.int16 and audio.shape == (3, config.spectrogram.n_samples)
    expected, _ = sf.read(str(notes[1].path), dtype="float32")
    np.testing.assert_array_equal(train.to_float(audio[1]).numpy()[: expected.size], expected)


def test_prior_validation_runs_on_cpu_with_the_same_masks_each_time(tiny_bundle):
    run, _ = tiny_bundle
    config, _ = run_folder.load_run(run)
    model, _ = run_folder.load_prior(run, config, "top")
    valid = run_folder.code_dataset(run, "valid")
    first = train.evaluate_prior(model, "top", valid, batch_size=2)
    assert first == train.evaluate_prior(model, "top", valid, batch_size=2) and first["valid_loss"] > 0


def test_a_stage_stops_at_its_minutes_with_checkpoint_metrics_and_throughput(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle[0], run)
    (run / "top_prior.pt").unlink()
    result = run_cli("export", "prior", str(run), "--layer", "top", "--steps", "1000000", "--minutes", "0.05")
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout)
    assert 0 < figures["step"] < 1_000_000 and figures["examples_per_s"] > 0
    assert "examples/s on cpu" in result.stderr
    ckpt = run_folder.load_checkpoint(run / "top_prior.pt")
    assert ckpt["step"] == figures["step"] and "valid_loss" in ckpt["metrics"] and "sensitivity" in ckpt["metrics"]
    assert "family_sensitivity" in ckpt["metrics"]


def test_a_graft_starts_a_new_design_where_the_old_one_was():
    """Harmonic projections at zero and a null label added: the new prior first predicts what the old one did."""
    import dataclasses

    from export.config import preset

    tiny = preset("tiny")
    old_design = dataclasses.replace(tiny.top_prior, harmonic=False, cond_dropout=0.0)
    old = run_folder.build_prior(dataclasses.replace(tiny, top_prior=old_design), "top").eval()
    new = run_folder.build_prior(tiny, "top").eval()
    new.load_state_dict(run_folder.graft(new.state_dict(), old.state_dict()))
    src = torch.randint(0, 65, (2, 128))
    tgt, pitch, family = src.clamp(max=63), torch.tensor([30, 70]), torch.tensor([1, 9])
    with torch.no_grad():
        torch.testing.assert_close(new(src, tgt, pitch, family), old(src, tgt, pitch, family))


def test_fork_shares_the_codes_and_keeps_the_history(tiny_bundle, tmp_path):
    base = tiny_bundle[0]
    run = tmp_path / "fork"
    result = run_cli("export", "fork", str(base), str(run), "--set", "train.prior_lr=1e-4", "--warm-start")
    assert result.returncode == 0, result.stderr[-2000:]
    config, _ = run_folder.load_run(run)
    assert config.train.prior_lr == 1e-4 and (run / "codes" / "train.npz").is_file()

    def history(folder):
        return [json.loads(line)["command"].split()[1] for line in (folder / "commands.jsonl").read_text().splitlines()]

    assert history(run) == [*history(base), "fork"]  # the base's history (other tests may add to it), then the fork
    assert run_folder.load_checkpoint(run / "top_prior.pt")["step"] == 0
    assert run_cli("export", "fork", str(base), str(run)).returncode == 1  # never over an existing run
