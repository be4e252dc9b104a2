"""Harmonic conditioning and classifier-free guidance: the template, the null label, and the guided sampler."""

import dataclasses

import numpy as np
import pytest
import torch

from export.config import preset
from export.harmonics import band_template, harmonic_template
from export.monitor import nucleus, sample_all
from export.run_folder import build_prior
from export.train import drop_labels, family_hinge, wrong_families
from server import dsp

TINY = preset("tiny")


def _band(hz: float, p: dsp.SpectrogramParams) -> int:
    """The mel band whose centre is nearest `hz`."""
    fb = dsp.mel_filterbank(p)
    centres = fb @ (np.arange(p.n_bins) * p.sample_rate / p.n_fft) / np.maximum(fb.sum(1), 1e-12)
    return int(np.argmin(np.abs(centres - hz)))


def test_the_template_lights_the_harmonics_and_nothing_between():
    p = dsp.SpectrogramParams()
    template = harmonic_template(p, 24, 84)
    assert template.shape == (61, 1024) and template.min() >= 0 and template.max() == 1
    a4 = template[69 - 24]  # 440 Hz
    for k in (1, 2, 3, 5):
        assert a4[_band(440 * k, p)] > 0.8, k
    for hz in (300, 660, 1100):  # below the fundamental and halfway between partials
        assert a4[_band(hz, p)] < 0.2, hz
    assert not np.allclose(template[60 - 24], template[61 - 24])  # a semitone moves the partials


def test_band_template_slices_rows_from_the_lowest():
    template = np.arange(2 * 8, dtype=np.float32).reshape(2, 8)
    bands = band_template(template, 4)
    assert bands.shape == (2, 4, 2) and bands[1, 0].tolist() == [8, 9] and bands[0, 3].tolist() == [6, 7]
    with pytest.raises(ValueError, match="do not split"):
        band_template(template, 3)


def test_harmonic_input_follows_the_pitch_of_each_row():
    """With every other weight zeroed, the prior's input is the harmonic projection: it differs between pitches
    exactly where the templates differ."""
    torch.manual_seed(0)
    prior = build_prior(TINY, "bottom").eval()
    assert prior.cfg.harmonic and prior.tgt_bands.shape == (62, 64, 16)  # 61 pitches + the null one
    rows = prior.tgt_rows
    assert rows[:4].tolist() == [0, 1, 0, 1] and rows[4:8].tolist() == [2, 3, 2, 3]  # 2 x 2 patches
    with torch.no_grad():
        a = prior.tgt_harmonic(prior.tgt_bands[60 - 24][rows])
        b = prior.tgt_harmonic(prior.tgt_bands[72 - 24][rows])
        null = prior.tgt_harmonic(prior.tgt_bands[-1][rows])
    assert not torch.allclose(a, b)
    torch.testing.assert_close(null, prior.tgt_harmonic.bias.expand_as(null))  # the null pitch: no harmonics


def test_null_labels_are_their_own_rows_and_dropout_uses_them():
    prior = build_prior(TINY, "top")
    p, f = prior.label_index(torch.tensor([24, 84, -1]), torch.tensor([0, 10, -1]))
    assert p.tolist() == [0, 60, 61] and f.tolist() == [0, 10, 11]
    plain = build_prior(
        dataclasses.replace(TINY, top_prior=dataclasses.replace(TINY.top_prior, cond_dropout=0.0)), "top"
    )
    assert plain.pitch_embed.num_embeddings == 61  # no null label without label dropout
    torch.manual_seed(0)
    pitch, family = drop_labels(torch.full((4000,), 60), torch.full((4000,), 3), 0.2)
    dropped = pitch == -1
    assert (family[dropped] == -1).all() and (family[~dropped] == 3).all()  # both labels together
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.03)


def test_family_dropout_drops_the_family_alone_and_the_unconditional_row_keeps_the_pitch():
    design = dataclasses.replace(TINY.top_prior, cond_dropout=0.0, family_dropout=0.3)
    prior = build_prior(dataclasses.replace(TINY, top_prior=design), "top")
    assert prior.null_labels == ("family",)
    assert prior.pitch_embed.num_embeddings == 61 and prior.family_embed.num_embeddings == 12
    p, f = prior.label_index(torch.tensor([60, 60]), torch.tensor([3, -1]))
    assert p.tolist() == [36, 36] and f.tolist() == [3, 11]
    pitch, family = prior.unconditional(torch.tensor([60, 72]), torch.tensor([3, 4]))
    assert pitch.tolist() == [60, 72] and family.tolist() == [-1, -1]
    torch.manual_seed(0)
    pitch, family = drop_labels(torch.full((4000,), 60), torch.full((4000,), 3), 0.0, 0.3)
    assert (pitch == 60).all()
    assert (family == -1).float().mean().item() == pytest.approx(0.3, abs=0.03)
    both = build_prior(TINY, "top")  # label dropout on both: the unconditional row drops both
    assert both.null_labels == ("pitch", "family")
    assert both.unconditional(torch.tensor([60]), torch.tensor([3]))[0].tolist() == [-1]


def test_the_family_margin_teaches_the_prior_to_follow_its_family_label():
    torch.manual_seed(0)
    prior = build_prior(TINY, "top").eval()  # eval: no dropout, so the gap is the labels' alone
    n = 8
    src = torch.randint(0, prior.n_codes, (n, prior.src_len))
    target = torch.randint(0, prior.n_codes, (n, prior.tgt_len))
    pitch, family = torch.full((n,), 60), torch.arange(n) % prior.n_families
    family[0] = -1  # a dropped family stays dropped and is left out of the hinge
    wrong = wrong_families(family.repeat(50), prior.n_families)
    assert (wrong[family.repeat(50) < 0] == -1).all()
    assert (wrong[family.repeat(50) >= 0] != family.repeat(50)[family.repeat(50) >= 0]).all()

    def token_loss(fam):
        logits = prior(src, target, pitch, fam).transpose(1, 2)
        return torch.nn.functional.cross_entropy(logits, target, reduction="none")

    def gap() -> float:
        with torch.no_grad():
            other = torch.where(family >= 0, (family + 1) % prior.n_families, family)
            return (token_loss(other).mean(1) - token_loss(family).mean(1))[1:].mean().item()

    before = gap()
    optimiser = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(20):
        hinge = family_hinge(token_loss(family), token_loss(wrong_families(family, prior.n_families)), family, 1.0)
        assert hinge.item() >= 0
        optimiser.zero_grad()
        hinge.backward()
        optimiser.step()
    assert abs(before) < 0.05 and gap() > 0.3  # random targets: only the label can tell them apart


def test_nucleus_keeps_the_top_p_mass_like_the_server():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    draws = nucleus(logits, 1.0, 0.7, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}
    assert (draws == 0).float().mean().item() == pytest.approx(0.5 / 0.8, abs=0.03)
    assert nucleus(logits[:2], 0.0, 0.7, torch.Generator()).tolist() == [0, 0]


def test_guided_sampling_runs_both_rows_and_differs_from_plain():
    torch.manual_seed(0)
    prior = build_prior(TINY, "top").eval()
    src = torch.full((3, prior.src_len), prior.mask_token)
    pitch, family = torch.tensor([40, 60, 80]), torch.tensor([0, 4, 9])

    def draw(guidance):
        return sample_all(prior, src, pitch, family, torch.Generator().manual_seed(1), guidance=guidance)

    plain, guided = draw(1.0), draw(4.0)
    assert plain.shape == (3, prior.tgt_len) and int(plain.max()) < prior.n_codes
    torch.testing.assert_close(draw(1.0), plain)  # seeded
    assert not torch.equal(plain, guided)


def test_guidance_scores_a_band_highest_at_its_own_pitch_even_below_a_semitone_per_band():
    """A band cut from a real analysed note (a sawtooth at MIDI 40, 82 Hz) scores best against pitch 40 and not
    39 or 41: low bands are wider than a semitone in log-mel, so the phase term has to tell them apart."""
    from export.harmonics import code_profiles, guidance_bands
    from export.metrics import midi_to_hz

    p = dsp.SpectrogramParams()
    t = np.arange(p.n_samples) / p.sample_rate
    f0 = midi_to_hz(40)
    saw = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 40))
    spec = dsp.analyze(0.3 * saw, p)[None]  # (1, 2, 1024, 128)
    codes_top = np.arange(128).reshape(1, 32, 4)  # every cell its own code: its profile is that cell alone
    codes_bottom = np.arange(512).reshape(1, 64, 8)
    profiles = code_profiles(lambda _t, _b: spec, codes_top, codes_bottom, 512)["bottom"]  # (512, 48)
    guide = guidance_bands(p, 24, 84, 64)  # (62, 64, 48)
    row = int(np.argmax(spec[0, 0, :, 64])) // 16  # the fundamental's band
    cell = row * 8 + 4  # its code: row `row`, column 4
    scores = {pitch: float(guide[pitch - 24, row] @ profiles[cell]) for pitch in (39, 40, 41)}
    assert scores[40] > scores[39] and scores[40] > scores[41], scores
