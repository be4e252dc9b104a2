"""A run folder from a bundle: the weights the server plays, trained on with the family alone dropped."""

import json

import numpy as np
import torch

from export import train
from tests.conftest import run_cli


def test_unpack_gives_the_bundles_weights_and_codes_and_a_family_guided_fork_exports(tiny_bundle, tmp_path):
    run, bundle = tiny_bundle
    unpacked = tmp_path / "unpacked"
    result = run_cli("export", "unpack", str(bundle), "--data", str(train.load_run(run)[1]), "--out", str(unpacked))
    assert result.returncode == 0, result.stderr[-3000:]
    config, _ = train.load_run(run)
    for layer in ("top", "bottom"):
        trained, read_back = train.load_prior(run, config, layer)[0], train.load_prior(unpacked, config, layer)[0]
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(read_back.state_dict()[key], value, msg=key)
    for split in ("train", "valid"):  # the bundle's encoder gives the codes the run trained on
        ours, theirs = np.load(unpacked / "codes" / f"{split}.npz"), np.load(run / "codes" / f"{split}.npz")
        for field in ("top", "bottom", "pitch", "family"):
            np.testing.assert_array_equal(ours[field], theirs[field])

    forked = tmp_path / "family"
    steps = ("--set", "train.prior_steps=2", "--set", "train.monitor_every=0")
    designs = [f"{layer}_prior.{k}" for layer in ("top", "bottom") for k in ("cond_dropout=0", "family_dropout=0.2")]
    args = [x for d in designs for x in ("--set", d)]
    assert run_cli("export", "fork", str(unpacked), str(forked), "--warm-start", *args, *steps).returncode == 0
    for layer in ("top", "bottom"):
        result = run_cli("export", "prior", str(forked), "--layer", layer, "--device", "cpu")
        assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "bundle"
    result = run_cli("export", "export", str(forked), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["null_labels"] for p in manifest["priors"].values()] == [["family"], ["family"]]
    unpack_again = run_cli("export", "unpack", str(bundle), "--data", str(run), "--out", str(unpacked))
    assert unpack_again.returncode == 1 and "exists already" in unpack_again.stderr
