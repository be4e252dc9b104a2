"""Timbre: the family judge (features, classifier, Fréchet distance), the harmonic guidance recipes, re-measured
profiles, and family guidance from its tables to the sampler."""

import json
import shutil

import numpy as np
import pytest

from export.family_guidance import family_tables, pitch_regions
from export.family_judge import FamilyJudge, frechet_distance, timbre_features
from export.harmonics import profiles_from
from export.metrics import midi_to_hz
from export.reguide import read_profiles
from server.bundle import Bundle, BundleError, pitch_region
from server.sampling import Conditioning, Inpainter
from tests.conftest import run_cli

RATE = 16_000


def note(pitch: int, slope_db: float, level: float = 0.3, decay_s: float = 10.0, seed: int = 0) -> np.ndarray:
    """A harmonic 4 s note: partial k at slope_db * log2(k) dB, released at 3 s."""
    t = np.arange(4 * RATE) / RATE
    f0 = midi_to_hz(pitch)
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, 64)
    x = sum(10 ** (slope_db * np.log2(k) / 20) * np.sin(2 * np.pi * k * f0 * t + phases[k]) for k in range(1, 64)
            if k * f0 < RATE / 2)  # fmt: skip
    x = x * np.exp(-t / decay_s) * np.where(t < 3, 1.0, np.exp(-(t - 3) / 0.05))
    return (level * x / np.abs(x).max()).astype(np.float32)


def test_features_ignore_level_and_see_the_envelope_over_the_partials():
    loud, quiet = timbre_features(note(60, -6, 0.5), 60), timbre_features(note(60, -6, 0.05), 60)
    assert np.allclose(loud, quiet, atol=0.05)  # level-normalised: loudness says nothing
    bright, dark = timbre_features(note(60, -3), 60), timbre_features(note(60, -15), 60)
    harmonics = slice(128, 144)  # envelope (64), spread (64), then the 16 harmonics relative to the strongest
    # The 8th partial of the bright tone is 3 x 3 = 9 dB under its fundamental, the dark one's 45 dB.
    assert bright[harmonics][7] == pytest.approx(-9, abs=1.5)
    assert dark[harmonics][7] == pytest.approx(-45, abs=3)


def test_the_judge_tells_two_timbres_apart_at_pitches_it_never_heard():
    train_pitches, test_pitches = range(36, 80, 3), range(37, 80, 6)
    kinds = [(-3, 10.0), (-15, 0.7)]  # bright and sustained vs dark and decaying

    def features(pitches):
        rows = [
            (timbre_features(note(p, s, decay_s=d, seed=p), p), k) for p in pitches for k, (s, d) in enumerate(kinds)
        ]
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])

    x, y = features(train_pitches)
    judge = FamilyJudge.train(x, y, ("bright", "dark"), epochs=40)
    xt, yt = features(test_pitches)
    assert np.mean(judge.predict(xt) == yt) == 1.0
    assert judge.embed(xt).shape == (len(xt), 64)


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one():
    a = np.random.default_rng(0).standard_normal((2000, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shift = np.array([3.0, 0, 0, 0, 0, 0, 0, 4.0])
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, rel=1e-3)


def test_the_shape_recipe_scores_where_the_partials_are_not_how_loud_or_peaky():
    rng = np.random.default_rng(0)
    bins = 4
    stats = {"logmel": rng.standard_normal((3, bins)), "lcos": rng.uniform(0, 0.5, (3, bins)),
             "lsin": rng.uniform(0, 0.5, (3, bins)), "loud": np.full((3, bins), 0.5),
             "count": np.array([5, 5, 0])}  # fmt: skip
    louder = {**stats, "logmel": 3 * stats["logmel"], "lcos": 2 * stats["lcos"], "lsin": 2 * stats["lsin"],
              "loud": 2 * stats["loud"]}  # fmt: skip
    shape, shape_louder = (profiles_from({"top": s}, "shape")["top"] for s in (stats, louder))
    level, level_louder = (profiles_from({"top": s}, "level")["top"] for s in (stats, louder))
    assert np.allclose(shape, shape_louder) and not np.allclose(level, level_louder)
    assert np.allclose(np.linalg.norm(shape[:2, :bins], axis=1), 1)  # unit-norm shape part
    assert not shape[2].any() and not level[2].any()  # an unseen code: no score


def test_training_codes_grow_their_cache_by_the_notes_it_lacks(tiny_bundle, dataset, tmp_path):
    from export.bundle_torch import training_codes

    b, cache = Bundle(tiny_bundle[1]), tmp_path / "codes.npz"
    first = training_codes(b, dataset, 3, cache)
    grown = training_codes(b, dataset, 6, cache)  # encodes notes 4-6 of the same draw only
    direct = training_codes(b, dataset, 6)
    for key in ("top", "bottom", "family", "pitch"):
        np.testing.assert_array_equal(grown[key], direct[key])
        np.testing.assert_array_equal(grown[key][:3], first[key])
    assert len(np.load(cache)["family"]) == 6 and len(training_codes(b, dataset, 2, cache)["pitch"]) == 2


def test_reguide_rewrites_the_profiles_and_the_weight_reaches_the_step_graph(tiny_bundle, dataset, tmp_path):
    _, bundle = tiny_bundle
    out = tmp_path / "reguided"
    result = run_cli("export", "reguide", str(bundle), "--data", str(dataset), "--out", str(out), "--recipe", "shape",
                     "--top", "2", "--bottom", "0", "--family-layers", "top", "--family-floor", "-1")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not out.with_name(out.name + ".tmp").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    provenance = manifest["provenance"]["harmonic_guidance"]
    assert provenance["profiles"] == "shape" and provenance["weights"] == {"top": 2.0, "bottom": 0.0}
    assert manifest["family_guidance"]["layers"] == ["top"] and manifest["family_guidance"]["floor"] == -1.0
    b = Bundle(out)
    # Family guidance on the top prior only, no log-ratio below the floor; the bottom prior samples unguided.
    assert b.family_tables is not None and set(b.family_tables.layers) == {"top"}
    assert b.family_tables.layers["top"].min() >= -1 and b.family_tables.bias("bottom", 0, 60) is None
    top_map, bottom_map = Inpainter.from_bundle(b).generate(Conditioning(60, 0, timbre=2.0), np.random.default_rng(0))
    assert top_map.shape == (32, 4) and bottom_map.shape == (64, 8)
    top = read_profiles(out, "top")
    assert top.shape[0] == b.manifest.n_codes and np.abs(top).max() > 0
    assert np.allclose(np.linalg.norm(top[np.abs(top).sum(1) > 0, : top.shape[1] // 3], axis=1), 2, atol=1e-4)
    assert not read_profiles(out, "bottom").any()
    # The graph's harmonic output is the new profiles under the target: zero where the weight is zero.
    s = b.manifest.priors["bottom"]
    feed = {"tokens": np.array([[b.manifest.start_token]]), "pitch": np.array([60]), "family": np.array([0])}
    for kind in ("past", "memory"):
        length = 0 if kind == "past" else b.manifest.raw["priors"]["bottom"]["src_len"]
        for i in range(s.n_layers):
            for part in ("key", "value"):
                feed[f"{kind}.{i}.{part}"] = np.zeros((1, s.n_heads, length, s.head_dim), np.float32)
    _, harmonic, *_ = b.sessions["bottom_prior_step"].run(None, feed)
    assert harmonic.shape[-1] == b.manifest.n_codes and not harmonic.any()


def test_family_tables_favour_each_familys_own_codes():
    rng = np.random.default_rng(0)
    n = 400
    family = np.arange(n) % 2
    top = rng.integers(0, 16, (n, 32, 4))
    bottom = rng.integers(0, 16, (n, 64, 8))
    top[:, 0, 0] = np.where(family == 0, 3, 5)  # the lowest row of the first column: sequence position 0
    tables = family_tables({"top": top, "bottom": bottom, "family": family}, 2, 16)
    assert tables["top"].shape == (2, 1, 128, 16) and tables["bottom"].shape == (2, 1, 512, 16)
    top_table = tables["top"][:, 0]
    assert top_table[0, 0, 3] > 0.5 and top_table[0, 0, 5] < -2  # log 2 and far below
    assert top_table[1, 0, 5] > 0.5 and top_table[1, 0, 3] < -2
    assert np.abs(top_table[:, 1:]).mean() < 0.15  # elsewhere both families draw alike: sampling noise
    floored = family_tables({"top": top, "bottom": bottom, "family": family}, 2, 16, floor=-1.0)["top"][:, 0]
    assert floored[0, 0, 5] == -1 and floored[0, 0, 3] == top_table[0, 0, 3]  # raised to the floor; the rest kept


def test_family_tables_per_pitch_region_tell_families_apart_within_each_register():
    # Family 0 uses code 3 low and code 5 high, family 1 the reverse: pooled over pitch the code says nothing
    # about the family, within each register it says everything.
    rng = np.random.default_rng(0)
    n = 800
    family, pitch = np.arange(n) % 2, np.where(np.arange(n) % 4 < 2, 40, 70)
    top, bottom = rng.integers(0, 16, (n, 32, 4)), rng.integers(0, 16, (n, 64, 8))
    top[:, 0, 0] = np.where((family == 0) == (pitch < 60), 3, 5)
    codes = {"top": top, "bottom": bottom, "family": family, "pitch": pitch}
    pooled = family_tables(codes, 2, 16)["top"][:, 0, 0]  # (families, codes) at position 0
    assert np.abs(pooled[:, [3, 5]]).max() < 0.15
    split = family_tables(codes, 2, 16, regions=(24, 60))["top"][:, :, 0]  # (families, regions, codes)
    assert split.shape == (2, 2, 16)
    assert split[0, 0, 3] > 0.5 and split[0, 0, 5] < -2 and split[0, 1, 5] > 0.5 and split[0, 1, 3] < -2
    assert split[1, 0, 5] > 0.5 and split[1, 1, 3] > 0.5
    assert list(pitch_region(np.array([10, 24, 59, 60, 84]), np.array([24, 60]))) == [0, 0, 0, 1, 1]
    # Octaves over the model's range, the last taking the leftover top note: no region of one pitch.
    assert pitch_regions((24, 84), 12) == (24, 36, 48, 60, 72) and pitch_regions((24, 84), 0) == (24,)


def test_a_guidance_variant_names_what_it_changes_and_parses_back():
    from export.guidance_ablation import Variant

    for text in ("level:1:1:0.5:2", "level:1:1:0.5:3:12", "level:1:1:0.5:3:12:24000", "level:1:1:0.5:2:layers=top",
                 "level:1:1:0.5:3:12:floor=-1", "shape:1:0:1:2:layers=bottom:floor=-0.5",
                 "level:1:1:1:0:cfg=3", "level:1:1:0.5:2:p=0.5", "level:1:1:0.5:2:cfg=2:t=0.8:p=0.6"):  # fmt: skip
        variant = Variant.parse(text)
        assert variant.name == text and Variant.parse(variant.name) == variant
    v = Variant.parse("level:1:1:0.5:3:12:floor=-1")
    assert (v.family.region, v.family.floor, v.family.layers, v.graphs) == (
        12,
        -1.0,
        ("top", "bottom"),
        "level-1-1-r12-floor-1",
    )
    assert Variant.parse("level:0.5:2") == Variant.parse("level:1:1:0.5:2")
    cfg = Variant.parse("level:1:1:1:2:cfg=2.5")
    assert cfg.guidance == 2.5 and cfg.graphs == "level-1-1" and Variant.parse("level:1:1:1:2").guidance == 1
    truncated = Variant.parse("level:1:1:0.5:2:t=0.9:p=0.5")  # sampling only: the graphs are shared
    assert (truncated.temperature, truncated.top_p, truncated.graphs) == (0.9, 0.5, "level-1-1")
    for bad in ("level:1:1:0.5:2:layers=middle", "level:1:1:0.5:2:depth=3", "level:1:1:0.5:2:12:8000:3:4"):
        with pytest.raises(ValueError):
            Variant.parse(bad)


def test_family_guidance_leans_sampling_towards_the_tables_codes(tiny_bundle, tmp_path):
    _, bundle_dir = tiny_bundle
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["family_guidance"]["file"] == "family_guidance.npz"  # the export counted the run's codes
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    b = Bundle(copy)
    n_families, n_codes = len(b.manifest.families), b.manifest.n_codes
    assert b.family_tables is not None and b.family_tables.layers["top"].shape == (n_families, 1, 128, n_codes)
    # Tables that favour code 7 for family 2 everywhere, and nothing for the other families.
    tables = {layer: np.zeros_like(t) for layer, t in b.family_tables.layers.items()}
    for t in tables.values():
        t[2, :, :, 7] = 1.0
    np.savez(copy / "family_guidance.npz", **tables)
    inpainter = Inpainter.from_bundle(Bundle(copy))
    strong = inpainter.generate(Conditioning(60, 2, timbre=40.0), np.random.default_rng(0))
    assert (strong[0] == 7).all() and (strong[1] == 7).all()
    off = inpainter.generate(Conditioning(60, 2, timbre=0.0), np.random.default_rng(0))
    assert (off[0] != 7).any()
    # For another family the tables say nothing: the same draws at any weight.
    other = inpainter.generate(Conditioning(60, 3, timbre=40.0), np.random.default_rng(0))
    plain = inpainter.generate(Conditioning(60, 3, timbre=0.0), np.random.default_rng(0))
    assert (other[0] == plain[0]).all() and (other[1] == plain[1]).all()


def test_family_tables_per_pitch_region_are_picked_by_the_notes_pitch(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[1], copy)
    b = Bundle(copy)
    assert b.family_tables is not None
    # Two regions, lowest pitches 24 and 60: code 7 favoured for family 2 in the upper one only.
    tables = {layer: np.zeros((t.shape[0], 2, *t.shape[2:]), np.float16) for layer, t in b.family_tables.layers.items()}
    for t in tables.values():
        t[2, 1, :, 7] = 1.0
    np.savez(copy / "family_guidance.npz", pitch_regions=np.array([24, 60]), **tables)
    inpainter = Inpainter.from_bundle(Bundle(copy))
    high = inpainter.generate(Conditioning(72, 2, timbre=40.0), np.random.default_rng(0))
    assert (high[0] == 7).all() and (high[1] == 7).all()
    low = inpainter.generate(Conditioning(48, 2, timbre=40.0), np.random.default_rng(0))
    plain = inpainter.generate(Conditioning(48, 2, timbre=0.0), np.random.default_rng(0))
    assert (low[0] == plain[0]).all() and (low[1] == plain[1]).all()
    # The first format, (families, L, n_codes) without regions, still loads as one region.
    np.savez(copy / "family_guidance.npz", **{layer: t[:, 1] for layer, t in tables.items()})
    assert Bundle(copy).family_tables.layers["top"].shape == (tables["top"].shape[0], 1, 128, tables["top"].shape[3])
    np.savez(copy / "family_guidance.npz", pitch_regions=np.array([60, 24]), **tables)
    with pytest.raises(BundleError, match="pitch_regions must be ascending"):
        Bundle(copy)


def test_a_corrupt_family_table_is_a_clear_bundle_error(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[1], copy)
    (copy / "family_guidance.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="family_guidance.npz: family guidance tables unreadable"):
        Bundle(copy)


def test_ablate_vqvae_trains_each_loss_on_and_measures_what_reconstructions_keep(tiny_bundle, tmp_path):
    run, _ = tiny_bundle
    base = tmp_path / "base"
    shutil.copytree(run, base, symlinks=True)
    out = tmp_path / "ablate"
    args = ("ablate-vqvae", str(base), "--out", str(out), "--variants", "audible", "--minutes", "0.05", "--notes", "4")
    result = run_cli("export", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((out / "vqvae.json").read_text())
    assert set(figures) == {"base", "audible"}
    for row in figures.values():
        assert row["lsd"] > 0 and row["lsd_representation"] > 0 and 0 <= row["family_ceiling"] <= 1
    assert figures["audible"]["steps_run"] > 0
    config = json.loads((out / "audible" / "run.json").read_text())["config"]
    assert config["vqvae"]["audible_weight"] == 4.0
