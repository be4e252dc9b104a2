#!/usr/bin/env bash
# Reproduces the shipped default bundle (server/default_bundle) with the project's own commands.
#
# The shipped model was made by scripts/train_gpu.sh on one H200 in one 7.4-minute command (render, VQ-VAE,
# codes, both priors, export, a short evaluation; docs/training.md has its figures), then evaluated here on
# 2 CPU cores, on the validation split and on notes of a soundfont it never saw (docs/evaluation.md).
# With a CUDA device this script runs the same command; without one it runs the same pipeline on the CPU
# within MINUTES (default 1200: a day of 2 cores comes near the GPU's steps; every stage resumes when run again).
# Override with DATA=... RUN=... OUT=... UNSEEN=... MINUTES=...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA_DEBIAN_PACKAGES="fluidr3mono-gm-soundfont musescore-general-soundfont-small" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
DATA="${DATA:-data/gm}"
RUN="${RUN:-runs/default}"
OUT="${OUT:-server/default_bundle}"
UNSEEN="${UNSEEN:-data/musescore}"
SF=/usr/share/sounds
if python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  DEVICE=cuda MINUTES=${MINUTES:-7.2}
else
  DEVICE=cpu MINUTES=${MINUTES:-1200}
fi

# Trained on FluidR3Mono and TimGM6mb, pitches 24-84, velocities 50/100/127 (42,891 notes).
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/sf" && ln -s "$SF/sf3/FluidR3Mono_GM.sf3" "$SF/sf2/TimGM6mb.sf2" "$WORK/sf/"
SF="$WORK/sf" DATA="$DATA" RUN="$RUN" OUT="$WORK/out" DEVICE=$DEVICE MINUTES=$MINUTES PY=python PACK=0 \
  bash scripts/train_gpu.sh
rm -rf "$OUT" && cp -r "$WORK/out/bundle" "$OUT"
# Never trained on: MuseScore's General soundfont, every sixth pitch, one velocity.
inpaint-train dataset --soundfont "$SF/sf3/MuseScore_General_Lite.sf3" --out "$UNSEEN" \
  --pitches "$(seq -s, 24 6 84)" --velocities 100
inpaint-train evaluate "$OUT" --data "$DATA" --unseen "$UNSEEN"
