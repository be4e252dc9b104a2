"""VQ-VAE-2 and the priors at tiny size: shapes, gradients, EMA codebooks, causality, the KV cache."""

import dataclasses

import pytest
import torch

from export.config import RunConfig, from_dict, override, preset
from export.prior import Prior, mask_source
from export.run_folder import build_prior
from export.vqvae import VQVAE2

TINY = preset("tiny")


def _spec(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, 1024, 128, generator=g)


def test_vqvae_maps_spectrograms_to_the_paper_codemap_shapes():
    model = VQVAE2(TINY.vqvae)
    out = model(_spec())
    assert out["codes_top"].shape == (2, 32, 4) and out["codes_bottom"].shape == (2, 64, 8)
    assert out["recon"].shape == (2, 2, 1024, 128)
    assert model.decode_codes(out["codes_top"], out["codes_bottom"]).shape == (2, 2, 1024, 128)


def test_paper_vqvae_has_the_reference_parameter_count():
    model = VQVAE2(preset("paper").vqvae)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.78e6, rel=0.01)


def test_straight_through_gradient_reaches_the_encoder_and_ema_moves_the_codebook():
    model = VQVAE2(TINY.vqvae)
    before = model.quantize_b.embed.clone()
    model(_spec())["loss"].backward()
    assert model.enc_b[0].weight.grad.abs().sum() > 0
    assert model.pre_q_t.weight.grad.abs().sum() > 0
    assert not torch.equal(before, model.quantize_b.embed)


def test_dead_codes_are_reseeded_from_encoder_outputs():
    """Encoder outputs far from the random initial codebook pick one or two codes; restarts spread them out."""
    from export.vqvae import Quantizer

    torch.manual_seed(0)
    quantizer = Quantizer(dim=4, n_codes=16, dead_threshold=1.0)
    z = torch.randn(8, 8, 8, 4) * 0.1 + 20.0  # (B, F, T, D), 512 vectors
    first = quantizer(z)[2].unique().numel()
    second = quantizer(z)[2].unique().numel()
    assert first <= 2 and second >= 12
    off = Quantizer(dim=4, n_codes=16, dead_threshold=0.0)
    off(z)
    assert off(z)[2].unique().numel() <= 2  # without restarts the codebook stays collapsed


def test_a_few_optimiser_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VQVAE2(TINY.vqvae)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    f = torch.linspace(0, 6.28, 1024)[:, None]
    t = torch.linspace(0, 6.28, 128)[None, :]
    spec = torch.stack([torch.sin(3 * f) * torch.cos(t), torch.cos(5 * f + t)])[None].repeat(2, 1, 1, 1)
    losses = []
    for _ in range(15):
        loss = model(spec)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]  # measured: 0.51 → 0.38


def test_postprocess_applies_the_phase_threshold():
    model = VQVAE2(TINY.vqvae)
    spec = model.postprocess(torch.full((1, 2, 1024, 128), -20.0))
    assert (spec[:, 0] >= model.spec.phase_threshold - 1e-5).all() and (spec[:, 1] == 0).all()


@pytest.fixture(scope="module")
def top_prior():
    torch.manual_seed(0)
    return build_prior(TINY, "top").eval()


def _batch(prior, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, prior.n_codes + 1, (2, prior.src_len), generator=g)
    tgt = torch.randint(0, prior.n_codes, (2, prior.tgt_len), generator=g)
    return src, tgt, torch.tensor([30, 70]), torch.tensor([0, 10])


def test_decoder_is_causal(top_prior):
    src, tgt, pitch, family = _batch(top_prior)
    i = 50
    changed = tgt.clone()
    changed[:, i:] = (changed[:, i:] + 1) % top_prior.n_codes
    with torch.no_grad():
        a, b = top_prior(src, tgt, pitch, family), top_prior(src, changed, pitch, family)
    torch.testing.assert_close(a[:, : i + 1], b[:, : i + 1])  # position i predicts token i from tokens < i
    assert not torch.allclose(a[:, i + 1 :], b[:, i + 1 :])


def test_masked_source_hides_what_it_masks(top_prior):
    """With cell j masked, the prediction at j cannot depend on c_j: it is never shown to the model."""
    src, tgt, pitch, family = _batch(top_prior)
    j = 40
    src[:, j] = top_prior.mask_token
    other = tgt.clone()
    other[:, j] = (other[:, j] + 7) % top_prior.n_codes
    with torch.no_grad():
        a, b = top_prior(src, tgt, pitch, family), top_prior(src, other, pitch, family)
    torch.testing.assert_close(a[:, : j + 1], b[:, : j + 1])


def test_unmasked_future_cells_are_visible_through_the_encoder(top_prior):
    src, tgt, pitch, family = _batch(top_prior)
    changed = src.clone()
    changed[:, 100] = (changed[:, 100] + 1) % top_prior.n_codes
    with torch.no_grad():
        a, b = top_prior(src, tgt, pitch, family), top_prior(changed, tgt, pitch, family)
    assert not torch.allclose(a[:, :10], b[:, :10])  # early positions see the kept future cell


def test_conditioning_changes_the_prediction(top_prior):
    src, tgt, pitch, family = _batch(top_prior)
    with torch.no_grad():
        a = top_prior(src, tgt, pitch, family)
        b = top_prior(src, tgt, pitch + 5, family)
        c = top_prior(src, tgt, pitch, (family + 1) % 11)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_cached_steps_equal_the_full_forward():
    torch.manual_seed(0)
    prior = build_prior(TINY, "bottom").eval()
    src, tgt, pitch, family = _batch(prior)
    with torch.no_grad():
        full = prior(src, tgt, pitch, family)
        memory = prior.encode(src, pitch, family)
        inputs = torch.cat([torch.full_like(tgt[:, :1], prior.start_token), tgt[:, :-1]], 1)
        logits, past = prior.step(inputs[:, :37], pitch, family, prior.empty_cache(2), memory)  # a prefix at once
        pieces = [logits]
        for k in range(37, 45):
            logits, past = prior.step(inputs[:, k : k + 1], pitch, family, past, memory)
            pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full[:, :45], atol=1e-5, rtol=1e-4)
    assert len(past) == 2 * len(prior.decoder) and past[0].shape[2] == 45


def test_mask_source_covers_light_and_heavy_masks():
    top = torch.zeros(256, 128, dtype=torch.long)
    masked, mask = mask_source(top, 512, torch.Generator().manual_seed(0))
    rates = mask.float().mean(1)
    assert rates.min() < 0.1 and rates.max() > 0.9
    assert (masked[mask] == 512).all() and (masked[~mask] == 0).all()


def test_prior_rejects_indivisible_heads():
    cfg = dataclasses.replace(TINY.top_prior, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="not divisible"):
        Prior(cfg, 64, "top")


def test_configs_round_trip_and_override():
    for name in ("paper", "small", "tiny"):
        config = preset(name)
        assert from_dict(RunConfig, config.to_dict()) == config
    changed = override(preset("small"), ["vqvae.hidden=96", "train.lr=1e-4", "spectrogram.mel_break_hz=700"])
    assert changed.vqvae.hidden == 96 and changed.train.lr == 1e-4 and changed.spectrogram.mel_break_hz == 700.0
    with pytest.raises(ValueError, match="no setting vqvae.width"):
        override(preset("small"), ["vqvae.width=3"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.vqvae.hidden = 1


def test_audible_weight_counts_loud_cells_more_and_zero_is_the_plain_mse():
    spec = _spec()
    spec[:, 0] = -20.0  # silent everywhere...
    spec[:, 0, 500:600] = 2.0  # ...but one loud band
    torch.manual_seed(0)
    plain = VQVAE2(TINY.vqvae).eval()
    weighted = VQVAE2(dataclasses.replace(TINY.vqvae, audible_weight=9.0)).eval()
    weighted.load_state_dict(plain.state_dict())
    a, b = plain(spec), weighted(spec)
    commitment = TINY.vqvae.commitment * a["commitment"]
    assert torch.allclose(a["loss"], a["mse"] + commitment)  # 0: the paper's MSE
    error = (a["recon"] - plain.normalize(spec)).pow(2)
    loud, quiet = error[:, :, 500:600].mean(), torch.cat([error[:, :, :500], error[:, :, 600:]], 2).mean()
    # Loud cells weigh 10, quiet ones 1: the weighted mean, normalised by the mean weight.
    expected = (10 * loud * 100 + quiet * 924) / (10 * 100 + 924)
    assert torch.allclose(b["loss"] - commitment, expected, rtol=1e-4)
