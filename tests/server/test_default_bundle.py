"""The trained default model shipped inside the package: small enough, reproducible, and what `serve` plays
with no arguments."""

import json

import soundfile as sf

from export.metrics import pitch_kept
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
    # scripts/train_gpu.sh: one `pipeline` (every stage, then the export) within a time budget, preset `small`
    [command] = [c["command"].split() for c in provenance["commands"]]
    assert command[:2] == ["inpaint-train", "pipeline"] and "--minutes" in command and "small" in command
    assert {f["file"] for f in provenance["dataset"]["soundfonts"]} == {"FluidR3Mono_GM.sf3", "TimGM6mb.sf2"}
    assert provenance["dataset"]["pitches"] == list(range(24, 85)) and len(provenance["dataset"]["velocities"]) >= 3
    assert provenance["steps"]["vqvae"] > 0 and provenance["steps"]["top_prior"] > 0


def test_serve_with_no_bundle_argument_generates_a_4_s_note_at_the_pitch_asked(tmp_path):
    # The model's accuracy over the whole grid is `inpaint-train evaluate`'s (docs/evaluation.md); here one
    # seeded note per family goes the whole way a performer's does: OSC in, WAV out, f0 read by YIN.
    server = start_server(None, tmp_path)  # no --bundle: the packaged default
    try:
        c = server.client()
        for request_id, (family, pitch) in enumerate((("keyboard", 60), ("bass", 36), ("flute", 79)), start=1):
            c.send("/instrument", family)
            c.send("/pitch", pitch)
            c.send("/seed", request_id)
            c.wait_for("/seed", timeout=10)
            c.send("/generate", request_id)
            _, (got_id, wav, frames, rate, _) = c.wait_for("/render/done", timeout=60)
            audio, file_rate = sf.read(wav, dtype="float32")
            assert (got_id, frames, rate, file_rate, audio.size) == (request_id, 64_000, 16_000, 16_000, 64_000)
            assert 1e-3 < abs(audio).max() <= 1.0
            assert pitch_kept(audio, pitch), (family, pitch)
    finally:
        server.stop()
