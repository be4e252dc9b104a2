"""`inpaint-train finetune-decoder`: the decoder trains on, the codes (and so the priors and family tables) stay."""

import json

import numpy as np
import torch

from export.__main__ import main
from export.nsynth import load_splits, read_note
from server import vqvae_audio
from server.bundle import Bundle


def test_finetuning_the_decoder_keeps_every_code_and_lowers_its_loss(tiny_bundle, dataset, tmp_path, capsys):
    _, source = tiny_bundle
    out = tmp_path / "finetune"
    args = ["finetune-decoder", str(source), "--data", str(dataset), "--out", str(out), "--minutes", "1"]
    args += ["--device", "cpu"]
    settings = ["train.vqvae_steps=8", "train.vqvae_batch_size=4", "train.lr=1e-2", "train.warmup_steps=0"]
    assert main([*args, "--notes", "3", *(x for s in settings for x in ("--set", s))]) == 0
    result = json.loads(capsys.readouterr().out)

    # Measured on the same training notes before and after, through the same frozen encoder.
    before, after = result["loss_before"], result["loss_after"]
    assert after["train_reconstruction"] < 0.95 * before["train_reconstruction"], (before, after)
    assert result["steps"] == 8 and result["batch_size"] == 4
    for when in ("before", "after"):
        assert result[when]["lsd"] > 0 and 0 <= result[when]["family_ceiling"] <= 1

    new = out / "bundle"
    for name in ("vqvae_encoder.onnx", "family_guidance.npz", "top_prior_step.onnx", "bottom_prior_encoder.onnx"):
        assert (new / name).read_bytes() == (source / name).read_bytes(), name
    assert (new / "vqvae_decoder.onnx").read_bytes() != (source / "vqvae_decoder.onnx").read_bytes()

    # A note encodes to the same codes through either bundle; the new decoder renders them differently.
    old_b, new_b = Bundle(source), Bundle(new)
    note = read_note(load_splits(dataset)["valid"][0], old_b.manifest.spectrogram)
    codes = vqvae_audio.encode_audio(old_b, note)
    for a, b in zip(codes, vqvae_audio.encode_audio(new_b, note), strict=True):
        assert np.array_equal(a, b)
    assert not np.allclose(vqvae_audio.decode(old_b, *codes), vqvae_audio.decode(new_b, *codes))

    manifest = json.loads((new / "manifest.json").read_text())
    finetune = manifest["provenance"]["decoder_finetune"]
    assert finetune["steps"] == 8 and finetune["trained"] == ["vqvae.upsample_t", "vqvae.dec"]
    assert "finetune-decoder" in finetune["commands"][0]["command"]
    assert "vqvae_encoder.onnx" in finetune["unchanged_files"]
    assert manifest["parity"]["max_abs_diff"]["vqvae_decoder"] < 1e-3

    # The checkpoint holds the decoder alone, and a rerun resumes it (at its step limit: nothing more to train)
    # but takes no new settings.
    ckpt = torch.load(out / "decoder.pt", weights_only=False)
    assert all(k.startswith(("upsample_t.", "dec.")) for k in ckpt["model"]) and ckpt["step"] == 8
    assert (ckpt["codes_top"][:, 0, 0] >= 0).any()
    measured = json.loads((out / "finetune.json").read_text())["before"]
    assert main([*args, "--set", "train.lr=1e-4"]) == 1
    assert main([*args, "--notes", "0"]) == 0  # no figures this time
    assert json.loads(capsys.readouterr().out)["steps"] == 8
    figures = json.loads((out / "finetune.json").read_text())
    assert [s["steps_run"] for s in figures["sessions"]] == [8, 0]
    assert figures["before"] == measured and "after" not in figures
