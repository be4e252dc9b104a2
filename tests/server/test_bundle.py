"""Bundle loading: validation with precise messages, providers reported as they really run."""

import json
import shutil

import pytest

from server.bundle import FORMAT_VERSION, Bundle, BundleError, parse_manifest, read_manifest


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[1], dst)
    return dst


def _edit_manifest(path, change):
    data = json.loads((path / "manifest.json").read_text())
    change(data)
    (path / "manifest.json").write_text(json.dumps(data))


def test_exported_bundle_loads_and_reports_the_provider(tiny_bundle):
    b = Bundle(tiny_bundle[1], "auto")
    assert b.provider == "CPUExecutionProvider"  # no GPU here: auto falls back, and says so
    assert b.manifest.n_codes == 64 and len(b.manifest.families) == 11
    assert b.manifest.pitch_range == (24, 84)


def test_unknown_format_version_is_refused_with_a_clear_message(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=rf"format_version {FORMAT_VERSION + 1} is not supported.*re-export"):
        read_manifest(bundle_copy)


def test_missing_manifest_and_broken_json(tmp_path, bundle_copy):
    with pytest.raises(BundleError, match="not a bundle"):
        read_manifest(tmp_path)
    (bundle_copy / "manifest.json").write_text("{ truncated")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(bundle_copy)


def test_manifest_missing_a_key_names_it(bundle_copy):
    _edit_manifest(bundle_copy, lambda d: d.pop("n_codes"))
    with pytest.raises(BundleError, match="missing key 'n_codes'"):
        read_manifest(bundle_copy)
    with pytest.raises(BundleError, match="expected a JSON object"):
        parse_manifest([1, 2])


def test_missing_and_corrupt_graph_files(bundle_copy):
    (bundle_copy / "vqvae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="vqvae_decoder.onnx .*missing"):
        Bundle(bundle_copy)
    (bundle_copy / "vqvae_decoder.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(BundleError, match="onnxruntime cannot load it"):
        Bundle(bundle_copy)


def test_unknown_provider_is_refused(tiny_bundle):
    with pytest.raises(BundleError, match="unknown provider 'tpu'"):
        Bundle(tiny_bundle[1], "tpu")


def test_manifest_records_schema_parity_and_provenance(tiny_bundle):
    data = json.loads((tiny_bundle[1] / "manifest.json").read_text())
    assert data["format_version"] == FORMAT_VERSION
    assert data["codemaps"]["top"]["shape"] == [32, 4] and data["codemaps"]["bottom"]["shape"] == [64, 8]
    assert data["parity"]["tolerance"] > 0
    assert set(data["parity"]["max_abs_diff"]) == set(data["graphs"])
    assert all(v <= data["parity"]["tolerance"] for v in data["parity"]["max_abs_diff"].values())
    assert data["provenance"]["steps"] == {"vqvae": 3, "top_prior": 3, "bottom_prior": 3}
    assert "valid_mse" in data["provenance"]["metrics"]["vqvae"]
    assert data["config"]["preset"] == "tiny"
    for graph in data["graphs"].values():
        assert graph["inputs"] and graph["outputs"]
