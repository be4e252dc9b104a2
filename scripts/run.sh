#!/usr/bin/env bash
# The main job, after set-up on a fresh machine: the OSC server on the default bundle shipped in the package
# (server/default_bundle, trained by scripts/train_default.sh) on 127.0.0.1:9000, replying to port 9001.
# Try it from another terminal: `.venv/bin/inpaint-osc send /generate`. Extra arguments go to
# `inpaint-osc serve` (e.g. --play --session ~/inpaint.session, or --bundle DIR for another model).
# The runtime alone: numpy, onnxruntime, python-osc, soundfile, soxr, sounddevice (no torch; about 200 MB), and
# PortAudio for --play. scripts/test.sh adds the rest to the same .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INPAINT_OSC_EXTRAS="${INPAINT_OSC_EXTRAS:-cpu}" INPAINT_OSC_DEBIAN="${INPAINT_OSC_DEBIAN:-libportaudio2}" \
  source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec inpaint-osc serve --out "$ROOT/out" "$@"
