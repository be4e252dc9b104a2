"""`inpaint-train evaluate`: its measures on known inputs, and the report on the tiny bundle."""

import json
import re

import numpy as np
import soundfile as sf

from export.evaluate import codebook_usage, codemap_picture, inpainting_masks, multi_resolution_stft_distance
from server import codemaps
from tests.conftest import run_cli


def test_multi_resolution_distance_is_zero_for_identical_audio_and_grows_with_noise():
    rng = np.random.default_rng(0)
    tone = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000).astype(np.float32)
    assert multi_resolution_stft_distance(tone, tone) == 0.0
    small = multi_resolution_stft_distance(tone, tone + 0.001 * rng.standard_normal(tone.size))
    large = multi_resolution_stft_distance(tone, tone + 0.1 * rng.standard_normal(tone.size))
    assert 0 < small < large


def test_codebook_usage_of_known_histograms():
    assert codebook_usage(np.array([0, 1, 2, 3] * 5), 8) == (4.0, 0.5)  # uniform over 4 of 8 codes
    perplexity, used = codebook_usage(np.array([0] * 99 + [1]), 8)
    assert 1.0 < perplexity < 1.1 and used == 0.25


def test_the_papers_three_masks():
    layer, mask = inpainting_masks("time")
    assert layer == "top" and mask[:, :2].all() and not mask[:, 2:].any()  # 2 of 4 columns: the first 2 s
    layer, mask = inpainting_masks("frequency")
    assert layer == "top" and mask[:8].all() and not mask[8:].any()  # the lowest quarter of 32 rows
    layer, mask = inpainting_masks("bottom")
    assert layer == "bottom" and mask.shape == codemaps.BOTTOM_SHAPE and mask.all()


def test_codemap_picture_frames_only_changed_cells_with_frequency_upwards():
    codes = np.zeros((4, 2), np.int64)
    changed = np.zeros((4, 2), bool)
    changed[0, 1] = True  # lowest row, second column
    rgb = codemap_picture(codes, changed, (6, 6))
    white = (rgb == 255).all(axis=-1)
    assert rgb.shape == (24, 12, 3)
    assert white[-6:, 6:].any() and not white[:-6].any() and not white[:, :6].any()


def test_evaluate_writes_a_report_with_its_figures(tiny_bundle, dataset, tmp_path):
    _, bundle = tiny_bundle
    out = tmp_path / "docs" / "evaluation.md"
    result = run_cli(
        "export", "evaluate", str(bundle), "--data", str(dataset), "--out", str(out), "--notes", "4", "--samples", "1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert 0 <= figures["generation_pitch_accuracy"] <= 1 and figures["reconstruction_lsd_db"] > 0
    heard = figures["timbre"]  # the family judge's figures, beside pitch
    assert 0 <= heard["family_ceiling"] <= 1 and 0 <= heard["generation_family"] <= 1  # a tiny judge may hear nothing
    assert set(heard) >= {"inpainting_family_time", "inpainting_family_frequency", "inpainting_family_bottom",
                          "frechet_generated", "diversity"}  # fmt: skip
    report = out.read_text()
    for heading in ("Reconstruction", "Generation pitch accuracy", "Codebook usage", "Inpainting", "Sampling speed",
                    "Timbre: is the family heard?"):  # fmt: skip
        assert f"## {heading}" in report
    assert "harmonic guidance 0.5, family guidance 2" in report  # the server's defaults, said
    # Every family has its row in the pitch table, and every linked file exists and is what it says.
    rows = re.findall(r"^\| \**(\w+)\** \| (?:\d+ \| ){9}\*\*", report, re.M)
    assert rows == ["bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
                    "synth_lead", "vocal", "all"]  # fmt: skip
    links = re.findall(r"\]\((evaluation/[^)]+)\)", report)
    assert len(links) >= 5 + 3 * 4
    for link in links:
        path = out.parent / link
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            info = sf.info(str(path))
            assert (info.samplerate, info.frames) == (16_000, 64_000)
    # The provenance section comes from the manifest: the commands that made the bundle.
    assert "inpaint-train pipeline" in report


def test_manifest_carries_the_commands_and_the_dataset_it_came_from(tiny_bundle, dataset):
    run, bundle = tiny_bundle
    provenance = json.loads((bundle / "manifest.json").read_text())["provenance"]
    assert [c["command"].split()[:2] for c in provenance["commands"]] == [["inpaint-train", "pipeline"]]
    assert provenance["dataset"]["soundfonts"][0]["file"] == "TimGM6mb.sf2"
    assert len(provenance["dataset"]["soundfonts"][0]["sha256"]) == 64
    assert provenance["dataset"]["notes"] == len(json.loads((dataset / "examples.json").read_text()))
