"""`inpaint-train reguide BUNDLE --data DIR --out NEW`: the same bundle with its sampling guidance re-measured.

Harmonic and family guidance are products of experts, never part of training. Harmonic guidance's code
profiles (`export.harmonics`) are a constant baked into each prior's step graph, measured on 2 000 training
notes through the bundle's own VQ-VAE; family guidance's tables (`export.family_guidance`) are counted over
8 000. This rewrites both, with a profile recipe and a weight per prior, without touching a trained weight:
what a guidance ablation changes, and how a shipped bundle takes the winner.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.bundle_torch import training_codes
from export.family_guidance import FamilyRecipe, write_family_tables
from export.harmonics import DEFAULT_RECIPE, code_statistics, profiles_from
from server import bundle as bundle_io
from server import codemaps
from server.bundle import Bundle

PROFILE_NOTES = 2000  # as export.run_folder.set_code_profiles


def measure_statistics(bundle: Bundle, codes: dict[str, np.ndarray], notes: int = PROFILE_NOTES) -> dict:
    """`code_statistics` of the first `notes` training codemaps through the bundle's decoder."""

    def decode(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return bundle.run("vqvae_decoder", codes_top=top.astype(np.int64), codes_bottom=bottom.astype(np.int64))[0]

    return code_statistics(decode, codes["top"][:notes], codes["bottom"][:notes], bundle.manifest.n_codes)


def _profile_constant(model: onnx.ModelProto) -> onnx.NodeProto:
    """The Constant node holding the (3 bins, n_codes) transposed code profiles: the second input of the
    MatMul that produces the step graph's `harmonic` output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    matmul = producers["harmonic"]
    while matmul.op_type != "MatMul":  # look through a reshape or cast the exporter may add
        matmul = producers[matmul.input[0]]
    constant = producers[matmul.input[1]]
    if constant.op_type != "Constant":
        raise ValueError(f"harmonic guidance's profiles are a {constant.op_type}, not a Constant")
    return constant


def read_profiles(bundle_dir: Path, layer: str) -> np.ndarray:
    """(n_codes, 3 bins) profiles baked into a bundle's decoding graph (the weight folded in)."""
    manifest = bundle_io.read_manifest(bundle_dir)
    model = onnx.load(str(Path(bundle_dir) / manifest.graphs[manifest.decoding_graph(layer)]))
    return numpy_helper.to_array(_profile_constant(model).attribute[0].t).T.copy()


def reguide(
    bundle_dir: Path,
    data: Path,
    out: Path,
    recipe: str = DEFAULT_RECIPE,
    weights: dict[str, float] | None = None,
    codes_cache: Path | None = None,
    family: FamilyRecipe = FamilyRecipe(),
    command: str = "inpaint-train reguide",
) -> dict:
    """Write `out`: `bundle_dir` with its step graphs' code profiles measured by `recipe`, each prior's scaled by
    its weight (default 1: the server's `/harmonic` then scales both), and family tables counted by `family`.
    Returns the new manifest."""
    weights = {layer: 1.0 for layer in codemaps.LAYERS} | (weights or {})
    src = Bundle(bundle_dir)
    codes = training_codes(src, data, family.notes, codes_cache)
    profiles = profiles_from(measure_statistics(src, codes), recipe)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle_dir, tmp)
    (tmp / bundle_io.MANIFEST).unlink()  # a half-written folder is never a bundle
    for layer in codemaps.LAYERS:
        path = tmp / src.manifest.graphs[src.manifest.decoding_graph(layer)]
        model = onnx.load(str(path))
        constant = _profile_constant(model)
        old = numpy_helper.to_array(constant.attribute[0].t)
        new = (weights[layer] * profiles[layer].T).astype(old.dtype)
        if new.shape != old.shape:
            raise ValueError(f"{layer}: profiles {new.shape}, the graph holds {old.shape}")
        constant.attribute[0].t.CopyFrom(numpy_helper.from_array(new, constant.attribute[0].t.name))
        onnx.save(model, str(path))
    manifest = json.loads((bundle_dir / bundle_io.MANIFEST).read_text())
    n_families, n_codes = len(src.manifest.families), src.manifest.n_codes
    manifest["family_guidance"] = write_family_tables(tmp, codes, n_families, n_codes, src.manifest.pitch_range, family)
    manifest.setdefault("provenance", {})["harmonic_guidance"] = {
        "profiles": recipe,
        "weights": weights,
        "notes": PROFILE_NOTES,
        "data": str(data),
        "command": command,
    }
    bundle_io.write_manifest(tmp, manifest)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest
