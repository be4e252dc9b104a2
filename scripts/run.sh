#!/usr/bin/env bash
# The main job, after set-up on a fresh machine: the OSC server on the default bundle (127.0.0.1:9000, replies
# to port 9001). Try it from another terminal: `.venv/bin/inpaint-osc send /generate`.
# Until a trained default bundle ships, a demo bundle is trained here in about a minute: a few notes rendered
# from Debian's TimGM6mb soundfont, the `tiny` preset, every stage, export. It proves the pipeline, not the
# sound. Extra arguments go to `inpaint-osc serve` (e.g. --play --session ~/inpaint.session).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
BUNDLE="${INPAINT_OSC_BUNDLE:-$ROOT/bundles/demo}"
if [ ! -f "$BUNDLE/manifest.json" ]; then
  echo "no bundle at $BUNDLE: training the demo bundle (tiny preset)" >&2
  inpaint-train dataset --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 --out "$ROOT/data/demo" \
    --pitches 36:84 --velocities 100 --programs 0,11,19,24,33,40,56,66,73,80,52 >&2
  inpaint-train pipeline "$ROOT/runs/demo" --data "$ROOT/data/demo" --out "$BUNDLE" --preset tiny \
    --vqvae-steps 200 --prior-steps 200 --device cpu >&2
fi
exec inpaint-osc serve --bundle "$BUNDLE" --out "$ROOT/out" "$@"
