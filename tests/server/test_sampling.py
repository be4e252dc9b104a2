"""Sampling and inpainting through the bundle's graphs: what is kept stays, what is masked is redrawn."""

import json
import shutil

import numpy as np
import pytest

from server import codemaps
from server.bundle import Bundle, BundleError
from server.sampling import Conditioning, Inpainter, PriorSampler, sample_logits
from server.vqvae_audio import encode_audio, render


def test_temperature_zero_is_argmax_and_tiny_top_p_keeps_only_the_best():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 1.0, 2.9])
    assert sample_logits(logits, 0.0, 0.8, rng) == 1
    assert {sample_logits(logits, 1.0, 1e-6, rng) for _ in range(50)} == {1}


def test_top_p_restricts_draws_to_the_nucleus_and_follows_probabilities():
    rng = np.random.default_rng(0)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs)
    draws = np.array([sample_logits(logits, 1.0, 0.7, rng) for _ in range(4000)])
    assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.7: the nucleus is {0, 1}
    assert (draws == 0).mean() == pytest.approx(0.5 / 0.8, abs=0.03)
    full = np.array([sample_logits(logits, 1.0, 1.0, rng) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(full, minlength=4) / 4000, probs, atol=0.03)


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    bundle = Bundle(tiny_bundle[1])
    return bundle, Inpainter.from_bundle(bundle)


COND = Conditioning(pitch=60, family=4)


def test_generation_is_seeded_and_codes_are_in_range(engine):
    bundle, inpainter = engine
    top, bottom = inpainter.generate(COND, np.random.default_rng(7))
    again = inpainter.generate(COND, np.random.default_rng(7))
    assert top.shape == (32, 4) and bottom.shape == (64, 8)
    np.testing.assert_array_equal(top, again[0])
    np.testing.assert_array_equal(bottom, again[1])
    assert 0 <= top.min() and top.max() < bundle.manifest.n_codes and bottom.max() < bundle.manifest.n_codes


def test_top_inpainting_keeps_everything_outside_the_mask_and_its_shadow(engine):
    _, inpainter = engine
    rng = np.random.default_rng(1)
    top, bottom = inpainter.generate(COND, rng)
    mask = codemaps.rectangle_mask("top", 0, 2, 0, 32)  # the first two seconds
    new_top, new_bottom = inpainter.inpaint(top, bottom, "top", mask, Conditioning(60, 4, temperature=5.0), rng)
    np.testing.assert_array_equal(new_top[~mask], top[~mask])
    shadow = codemaps.upsample_mask(mask)
    np.testing.assert_array_equal(new_bottom[~shadow], bottom[~shadow])
    assert (new_top[mask] != top[mask]).any() and (new_bottom[shadow] != bottom[shadow]).any()


def test_bottom_inpainting_touches_only_masked_bottom_cells(engine):
    _, inpainter = engine
    rng = np.random.default_rng(2)
    top, bottom = inpainter.generate(COND, rng)
    mask = codemaps.rectangle_mask("bottom", 0, 8, 0, 16)  # the lowest quarter of frequencies
    new_top, new_bottom = inpainter.inpaint(top, bottom, "bottom", mask, Conditioning(60, 4, temperature=5.0), rng)
    np.testing.assert_array_equal(new_top, top)
    np.testing.assert_array_equal(new_bottom[~mask], bottom[~mask])
    assert (new_bottom[mask] != bottom[mask]).any()


def test_progress_reaches_one_and_an_exception_cancels(engine):
    _, inpainter = engine
    seen = []
    inpainter.generate(COND, np.random.default_rng(3), progress=seen.append)
    assert seen[-1] == pytest.approx(1.0) and len(seen) == 640 and seen == sorted(seen)

    class Cancelled(Exception):
        pass

    def cancel(fraction):
        if fraction > 0.1:
            raise Cancelled

    with pytest.raises(Cancelled):
        inpainter.generate(COND, np.random.default_rng(3), progress=cancel)


def test_onnx_sampling_matches_torch_eager_token_for_token(tiny_bundle, engine):
    """The whole sampling loop, run by onnxruntime and by torch on the same weights and seed."""
    pytest.importorskip("torch")
    from export import run_folder
    from export.sampling_speed import TorchPriorSampler

    run = tiny_bundle[0]
    config, _ = run_folder.load_run(run)
    priors = {layer: run_folder.load_prior(run, config, layer)[0] for layer in codemaps.LAYERS}
    run_folder.set_code_profiles(run, run_folder.load_vqvae(run, config), list(priors.values()))  # as the export does
    tables = engine[0].family_tables  # family guidance: the same tables on both sides
    eager = Inpainter(
        TorchPriorSampler(priors["top"], "top", tables),
        TorchPriorSampler(priors["bottom"], "bottom", tables),
        engine[0].manifest.mask_token,
    )
    for seed in range(3):
        a = engine[1].generate(COND, np.random.default_rng(seed))
        b = eager.generate(COND, np.random.default_rng(seed))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_render_and_encode_round_trip_shapes(engine):
    bundle, inpainter = engine
    top, bottom = inpainter.generate(COND, np.random.default_rng(4))
    audio = render(bundle, top, bottom)
    assert audio.shape == (64_000,) and audio.dtype == np.float32 and np.isfinite(audio).all()
    codes_top, codes_bottom = encode_audio(bundle, audio)
    assert codes_top.shape == (32, 4) and codes_bottom.shape == (64, 8)


def test_a_mask_of_the_wrong_shape_or_layer_is_refused(engine):
    _, inpainter = engine
    top, bottom = np.zeros((32, 4), np.int64), np.zeros((64, 8), np.int64)
    with pytest.raises(ValueError, match=r"bottom mask has shape \(32, 4\), expected \(64, 8\)"):
        inpainter.inpaint(top, bottom, "bottom", np.ones((32, 4), bool), COND, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown layer 'middle'"):
        inpainter.inpaint(top, bottom, "middle", np.ones((32, 4), bool), COND, np.random.default_rng(0))


def test_a_bundle_guided_on_the_family_alone_keeps_the_pitch_in_its_unconditional_row(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[1], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["priors"]["top"]["null_labels"] = ["family"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = Bundle(copy)
    assert bundle.manifest.priors["top"].null_labels == ("family",)
    assert bundle.manifest.priors["bottom"].null_labels == ("pitch", "family")
    sampler = PriorSampler(bundle, "top")
    src = np.full(128, bundle.manifest.mask_token)
    start = np.array([bundle.manifest.start_token, 5, 9])

    def logits(cond):
        memory = sampler.encode(src, cond)
        return sampler.step(start, cond, sampler.empty_cache(memory), memory)[0]

    c, u = logits(Conditioning(60, 4, guidance=1, harmonic=0)), logits(Conditioning(60, -1, guidance=1, harmonic=0))
    np.testing.assert_allclose(logits(Conditioning(60, 4, guidance=3, harmonic=0)), u + 3 * (c - u), atol=1e-4)
    no_pitch = logits(Conditioning(-1, -1, guidance=1, harmonic=0))
    assert np.abs(u - no_pitch).max() > 1e-3  # the pitch was kept, not dropped
    manifest["priors"]["top"]["null_labels"] = ["pitch"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="drops the pitch but keeps the family"):
        Bundle(copy)


def test_guidance_combines_conditional_and_unconditional_rows_and_harmonic_guidance_adds(engine):
    bundle, inpainter = engine
    sampler = inpainter.top
    assert bundle.manifest.priors["top"].unconditional  # the tiny preset trains with label dropout
    src = np.full(128, bundle.manifest.mask_token)
    # Predicting top position 6 (row 6, about 225-280 Hz): middle C's fundamental is there; row 0 (under 28 Hz)
    # holds no harmonic of it, and its pull is zero.
    start = np.concatenate([[bundle.manifest.start_token], np.zeros(6, np.int64)])

    def logits(cond):
        memory = sampler.encode(src, cond)
        return sampler.step(start, cond, sampler.empty_cache(memory), memory)[0]

    c = logits(Conditioning(60, 4, guidance=1, harmonic=0))
    u = logits(Conditioning(-1, -1, guidance=1, harmonic=0))  # the null label asked for directly
    np.testing.assert_allclose(logits(Conditioning(60, 4, guidance=3, harmonic=0)), u + 3 * (c - u), atol=1e-4)
    pulled = logits(Conditioning(60, 4, guidance=1, harmonic=2000)) - c  # the tiny VQ-VAE's profiles are faint
    assert np.abs(pulled).max() > 0.01
    half = logits(Conditioning(60, 4, guidance=1, harmonic=1000)) - c
    np.testing.assert_allclose(half, pulled / 2, atol=1e-3 * np.abs(pulled).max())
