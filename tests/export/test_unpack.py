"""A run folder from a bundle: the weights the server plays, trained on with the family alone dropped."""

import json

import numpy as np
import pytest
import torch

from export import run_folder, train
from export.onnx_export import export_bundle
from export.unpack import unpack
from tests.conftest import run_cli


def test_unpack_gives_the_bundles_weights_and_codes_and_a_family_guided_fork_exports(tiny_bundle, tmp_path):
    run, bundle = tiny_bundle
    unpacked = tmp_path / "unpacked"
    result = run_cli(
        "export", "unpack", str(bundle), "--data", str(run_folder.load_run(run)[1]), "--out", str(unpacked)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config, _ = run_folder.load_run(run)
    history = [json.loads(line)["command"] for line in (unpacked / run_folder.COMMAND_LOG).read_text().splitlines()]
    bundled = [c["command"] for c in json.loads((bundle / "manifest.json").read_text())["provenance"]["commands"]]
    assert history[: len(bundled)] == bundled and "inpaint-train unpack" in history[-1]
    for layer in ("top", "bottom"):
        trained, read_back = (
            run_folder.load_prior(run, config, layer)[0],
            run_folder.load_prior(unpacked, config, layer)[0],
        )
        for key, value in trained.state_dict().items():
            torch.testing.assert_close(read_back.state_dict()[key], value, msg=key)
    for split in ("train", "valid"):  # the bundle's encoder gives the codes the run trained on
        ours, theirs = np.load(unpacked / "codes" / f"{split}.npz"), np.load(run / "codes" / f"{split}.npz")
        for field in ("top", "bottom", "pitch", "family"):
            np.testing.assert_array_equal(ours[field], theirs[field])

    forked = tmp_path / "family"  # in process from here: the CLI's path was taken above
    designs = [f"{layer}_prior.{k}" for layer in ("top", "bottom") for k in ("cond_dropout=0", "family_dropout=0.2")]
    designs.append("top_prior.family_margin=0.3")  # and the family margin: one forward of both label sets a step
    run_folder.fork_run(unpacked, forked, [*designs, "train.prior_steps=2", "train.monitor_every=0"], warm_start=True)
    assert train.train_prior(forked, "top", device="cpu")["step"] == 2  # the bottom prior stays as forked
    manifest = export_bundle(forked, tmp_path / "bundle")
    assert [p["null_labels"] for p in manifest["priors"].values()] == [["family"], ["family"]]
    with pytest.raises(ValueError, match="exists already"):
        unpack(bundle, run, unpacked, [])

    # Training codes from reguide's draw (and its cache), the validation split encoded as before.
    cache, data = tmp_path / "codes.npz", run_folder.load_run(run)[1]
    unpack(bundle, data, tmp_path / "from-cache", [], train_notes=5, codes_cache=cache)
    ours, theirs = np.load(tmp_path / "from-cache" / "codes" / "train.npz"), np.load(run / "codes" / "train.npz")
    pick = np.random.default_rng(0).permutation(len(theirs["top"]))[:5]  # reguide.training_codes' draw
    for field in ("pitch", "family"):
        np.testing.assert_array_equal(ours[field], theirs[field][pick])
    # The codes are the cache's (onnxruntime's encoder: on this barely trained codebook, near ties between codes
    # can go the other way than in torch's, so they are not compared with the run's).
    cached = np.load(cache)
    for field in ("top", "bottom"):
        assert ours[field].dtype == np.uint16 and ours[field].shape == (5, *theirs[field].shape[1:])
        np.testing.assert_array_equal(ours[field], cached[field])
    valid = np.load(tmp_path / "from-cache" / "codes" / "valid.npz")
    np.testing.assert_array_equal(valid["pitch"], np.load(run / "codes" / "valid.npz")["pitch"])
