"""The masked prior kind: its training masks, its graph, its schedule, and a masked bundle served end to end."""

import json

import numpy as np
import pytest
import torch

from export.bundle_torch import read_torch_models
from export.config import override, preset
from export.monitor import sample_all
from export.onnx_export import PARITY_TOLERANCE, check_parity, example_inputs, export_graph, graph_module, n_layers
from export.run_folder import build_prior
from export.sampling_speed import torch_sampler
from export.vqvae import VQVAE2
from server import codemaps
from server.bundle import Bundle, BundleError
from server.sampling import Conditioning, Inpainter, MaskedSampler, sample_logits, sample_rows, unmask_counts
from tests.conftest import run_cli

MASKED = ["bottom_prior.kind=masked"]


def test_training_masks_hide_cells_with_the_mask_token_and_keep_the_rest():
    prior = build_prior(override(preset("tiny"), MASKED), "bottom")
    target = torch.randint(0, 64, (64, 512), generator=torch.Generator().manual_seed(0))
    inputs, mask = prior.mask_target(target, torch.Generator().manual_seed(1))
    assert (inputs[mask] == prior.mask_token).all() and (inputs[~mask] == target[~mask]).all()
    assert mask.any(1).all()  # every example scores at least one cell
    fractions = mask.float().mean(1)
    assert fractions.min() < 0.1 and fractions.max() > 0.9  # light touch-ups to whole maps


def test_schedule_keeps_every_cell_once_in_at_most_its_passes():
    for n, passes in ((512, 8), (20, 8), (3, 8), (1, 4), (100, 1)):
        counts = unmask_counts(n, passes)
        assert sum(counts) == n and min(counts) >= 1 and len(counts) == min(n, passes)
    assert unmask_counts(512, 8)[0] < unmask_counts(512, 8)[-1]  # few cells first, when little is known


def test_row_sampling_draws_what_the_one_token_rule_draws():
    logits = np.random.default_rng(0).normal(size=(50, 64)) * 3
    for temperature, top_p in ((1.0, 0.8), (0.7, 1.0), (0.0, 0.8)):
        rows, _ = sample_rows(logits, temperature, top_p, np.random.default_rng(5))
        one = np.random.default_rng(5)
        assert (rows == [sample_logits(row, temperature, top_p, one) for row in logits]).all()


def test_denoise_graph_matches_torch(tmp_path):
    torch.manual_seed(0)
    config = override(preset("tiny"), MASKED)
    vqvae = VQVAE2(config.vqvae).eval()
    priors = {layer: build_prior(config, layer).eval() for layer in ("top", "bottom")}
    graph = "bottom_prior_denoise"
    module, path = graph_module(graph, vqvae, priors), tmp_path / f"{graph}.onnx"
    export_graph(graph, module, example_inputs(graph, vqvae, priors), path, n_layers(graph, priors))
    check = example_inputs(graph, vqvae, priors, batch=1, past=0, seed=1)  # the whole 512-cell sequence
    assert check_parity(graph, module, path, check) < PARITY_TOLERANCE
    # The torch twin decodes whole maps with no mask token left.
    out = sample_all(priors["bottom"], check["tokens"][:, :128] % 64, torch.tensor([60]), torch.tensor([2]),
                     torch.Generator().manual_seed(0))  # fmt: skip
    assert out.shape == (1, 512) and int(out.max()) < 64


def test_a_masked_bottom_prior_trains_exports_and_inpaints(tiny_bundle, dataset, tmp_path):
    run, _ = tiny_bundle
    fork, out = tmp_path / "masked", tmp_path / "bundle"
    steps = ["bottom_prior.passes=4", "bottom_prior.family_dropout=0.5", "bottom_prior.anneal_guidance=true"]
    sets = [arg for kv in (*MASKED, *steps) for arg in ("--set", kv)]
    assert run_cli("export", "fork", str(run), str(fork), *sets, "--warm-start").returncode == 0
    trained = run_cli("export", "prior", str(fork), "--layer", "bottom", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run_cli("export", "export", str(fork), "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["priors"]["bottom"]["kind"] == "masked" and manifest["priors"]["top"]["kind"] == "autoregressive"
    assert "bottom_prior_denoise" in manifest["graphs"] and "bottom_prior_step" not in manifest["graphs"]
    assert manifest["priors"]["bottom"]["anneal_guidance"] is True
    assert "family" in manifest["priors"]["bottom"]["null_labels"]  # guidance possible

    bundle = Bundle(out)
    inpainter = Inpainter.from_bundle(bundle)
    assert isinstance(inpainter.bottom, MaskedSampler)
    cond = Conditioning(pitch=60, family=2)
    rng = np.random.default_rng(0)
    calls: list[tuple[int, int]] = []
    top, bottom = inpainter.generate(cond, rng)
    assert bottom.max() < bundle.manifest.n_codes and top.shape == codemaps.TOP_SHAPE
    mask = np.zeros(codemaps.BOTTOM_SHAPE, bool)
    mask[:32, 2:6] = True  # half the rows of half the columns: a quarter of the map, a quarter of the passes
    _, new = inpainter.inpaint(top, bottom, "bottom", mask, cond, rng, lambda f: calls.append(f))
    assert (new[~mask] == bottom[~mask]).all() and new.max() < bundle.manifest.n_codes
    assert len(calls) == 1 and calls[-1] == 1.0  # one report per pass: 4 passes of the manifest x 1/4 of the map
    _, new = inpainter.inpaint(top, bottom, "bottom", np.ones_like(mask), cond, rng, lambda f: calls.append(f))
    assert len(calls) == 5  # the whole map: the manifest's 4 passes

    # The benchmark's torch baseline decodes it as the server does: the same logits, from torch eager.
    _, _, priors = read_torch_models(out)
    eager, served = torch_sampler(priors["bottom"], "bottom", bundle.manifest.priors["bottom"]), inpainter.bottom
    src, seq = codemaps.to_sequence(top, "top"), codemaps.to_sequence(bottom, "bottom").copy()
    seq[::3] = bundle.manifest.mask_token
    at = np.flatnonzero(seq == bundle.manifest.mask_token)
    ours, theirs = (s.logits(seq, cond, s.encode(src, cond), at, cond.guidance) for s in (served, eager))
    assert ours.shape == (at.size, bundle.manifest.n_codes) and np.abs(ours - theirs).max() < 1e-3
    guided = Conditioning(pitch=60, family=2, guidance=3.0)
    ours, theirs = (s.logits(seq, guided, s.encode(src, guided), at, 3.0) for s in (served, eager))
    plain = served.logits(seq, cond, served.encode(src, cond), at, 1.0)
    assert np.abs(ours - theirs).max() < 1e-3 and np.abs(ours - plain).max() > 1e-3  # guidance changed them

    # Guidance annealed over the passes (MAGNeT): the unguided row runs in every pass but the last.
    batches: list[int] = []
    graph = served._denoise
    served._denoise = type("Recorder", (), {"run": lambda _s, out, feeds: batches.append(feeds["tokens"].shape[0])
                                            or graph.run(out, feeds)})()  # fmt: skip
    served.sample(seq, np.ones(512, bool), served.encode(src, guided), guided, rng)
    served._denoise = graph
    assert batches == [2, 2, 2, 1]

    # Read back into torch from its graphs (the weights the server runs, parity-checked) and unpacked to train on.
    unpacked = run_cli("export", "unpack", str(out), "--data", str(dataset), "--out", str(tmp_path / "again"))
    assert unpacked.returncode == 0, unpacked.stderr[-2000:]

    # A kind this server does not know is refused at load, naming the key.
    manifest["priors"]["bottom"]["kind"] = "diffusion"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"priors.bottom: kind 'diffusion' is not a prior kind"):
        Bundle(out)


def test_a_masked_top_prior_generates_from_nothing_and_keeps_chosen_cells(tiny_bundle, tmp_path):
    run, _ = tiny_bundle
    fork, out = tmp_path / "masked-top", tmp_path / "bundle"
    assert (
        run_cli("export", "fork", str(run), str(fork), "--set", "top_prior.kind=masked", "--warm-start").returncode == 0
    )
    trained = run_cli("export", "prior", str(fork), "--layer", "top", "--device", "cpu")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert run_cli("export", "export", str(fork), "--out", str(out)).returncode == 0
    inpainter = Inpainter.from_bundle(Bundle(out))
    assert isinstance(inpainter.top, MaskedSampler) and not isinstance(inpainter.bottom, MaskedSampler)
    cond, rng = Conditioning(pitch=48, family=0), np.random.default_rng(1)
    top, bottom = inpainter.generate(cond, rng)
    mask = np.zeros(codemaps.TOP_SHAPE, bool)
    mask[:, 1] = True  # one time column, the cells on both sides kept
    new_top, new_bottom = inpainter.inpaint(top, bottom, "top", mask, cond, rng)
    assert (new_top[~mask] == top[~mask]).all() and new_top.max() < 64
    beneath = codemaps.upsample_mask(mask)
    assert (new_bottom[~beneath] == bottom[~beneath]).all()
