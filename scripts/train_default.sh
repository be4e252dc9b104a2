#!/usr/bin/env bash
# Reproduces the shipped default bundle (server/default_bundle) with the project's own commands: renders the
# training set from Debian's two General MIDI soundfonts, trains the `small` preset on the CPU, exports.
# Every `inpaint-train` command below is also logged into the run folder and copied into the bundle's
# manifest (provenance.commands). About 2 h on 2 CPU cores; every stage resumes if interrupted.
# Override the folders with DATA=... RUN=... OUT=... ; DEVICE=cuda trains on a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
DATA="${DATA:-$ROOT/data/gm}"
RUN="${RUN:-$ROOT/runs/default}"
OUT="${OUT:-$ROOT/server/default_bundle}"
DEVICE="${DEVICE:-cpu}"
SF2=/usr/share/sounds/sf2

inpaint-train dataset --soundfont "$SF2/FluidR3_GM.sf2" --soundfont "$SF2/TimGM6mb.sf2" --out "$DATA" \
  --pitches 24:84 --velocities 50,100,127
inpaint-train vqvae "$RUN" --data "$DATA" --preset small --vqvae-steps 3000 --device "$DEVICE"
inpaint-train codes "$RUN" --device "$DEVICE"
inpaint-train prior "$RUN" --layer top --steps 4000 --device "$DEVICE"
inpaint-train prior "$RUN" --layer bottom --steps 2000 --device "$DEVICE"
inpaint-train export "$RUN" --out "$OUT" --name default
