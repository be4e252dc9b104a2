"""The trained default model shipped inside the package: small enough, reproducible, and what `serve` plays
with no arguments."""

import json

import soundfile as sf

from server.__main__ import default_bundle
from server.bundle import Bundle
from tests.conftest import start_server

BUNDLE = default_bundle()


def test_the_default_bundle_ships_in_the_package_under_40_mb():
    files = sorted(p.name for p in BUNDLE.iterdir())
    assert "manifest.json" in files and sum(f.endswith(".onnx") for f in files) == 6
    assert sum(p.stat().st_size for p in BUNDLE.iterdir()) < 40 * 2**20
    assert Bundle(BUNDLE).manifest.raw["name"] == "default"


def test_its_manifest_says_how_to_make_it_again():
    provenance = json.loads((BUNDLE / "manifest.json").read_text())["provenance"]
    commands = [c["command"].split()[:3] for c in provenance["commands"]]
    assert [c[:2] for c in commands] == [["inpaint-train", s] for s in ("vqvae", "codes", "prior", "prior", "export")]
    assert {f["file"] for f in provenance["dataset"]["soundfonts"]} == {"FluidR3_GM.sf2", "TimGM6mb.sf2"}
    assert provenance["dataset"]["pitches"] == list(range(24, 85)) and len(provenance["dataset"]["velocities"]) >= 3
    assert provenance["steps"]["vqvae"] > 0 and provenance["steps"]["top_prior"] > 0


def test_serve_with_no_bundle_argument_generates_a_4_s_note(tmp_path):
    # Whether the note is at the requested pitch is measured by `inpaint-train evaluate` (docs/evaluation.md):
    # this model reaches 3 % there, far from the 90 % target, so it is not asserted here.
    server = start_server(None, tmp_path)  # no --bundle: the packaged default
    try:
        c = server.client()
        c.send("/instrument", "keyboard")
        c.send("/pitch", 60)
        c.wait_for("/pitch", timeout=10)
        c.send("/generate", 1)
        _, (request_id, wav, frames, rate, _) = c.wait_for("/render/done", timeout=60)
        audio, file_rate = sf.read(wav, dtype="float32")
        assert (request_id, frames, rate, file_rate, audio.size) == (1, 64_000, 16_000, 16_000, 64_000)
        assert 1e-3 < abs(audio).max() <= 1.0
    finally:
        server.stop()
