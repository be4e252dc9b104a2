"""The export's parity check is a real check: it passes on a faithful graph and fails on a different one."""

import torch

from export.config import preset
from export.onnx_export import (
    PARITY_TOLERANCE,
    check_parity,
    example_inputs,
    export_graph,
    graph_module,
    n_layers,
)
from export.run_folder import build_prior
from export.vqvae import VQVAE2


def test_parity_check_catches_a_graph_that_no_longer_matches_torch(tmp_path):
    torch.manual_seed(0)
    config = preset("tiny")
    vqvae = VQVAE2(config.vqvae).eval()
    priors = {layer: build_prior(config, layer).eval() for layer in ("top", "bottom")}
    for graph in ("vqvae_decoder", "bottom_prior_step"):
        module = graph_module(graph, vqvae, priors)
        path = tmp_path / f"{graph}.onnx"
        export_graph(graph, module, example_inputs(graph, vqvae, priors), path, n_layers(graph, priors))
        check = example_inputs(graph, vqvae, priors, batch=1, past=7, new=3, seed=1)
        assert check_parity(graph, module, path, check) < PARITY_TOLERANCE
    with torch.no_grad():
        vqvae.dec[-1].bias.add_(0.01)  # torch changes, the exported graph does not
        priors["bottom"].head.bias.add_(0.01)
    for graph in ("vqvae_decoder", "bottom_prior_step"):
        check = example_inputs(graph, vqvae, priors, batch=1, past=7, new=3, seed=1)
        assert check_parity(graph, graph_module(graph, vqvae, priors), tmp_path / f"{graph}.onnx", check) > 0.009
