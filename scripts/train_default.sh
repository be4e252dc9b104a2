#!/usr/bin/env bash
# Reproduces the shipped default bundle (server/default_bundle) with the project's own commands, on the CPU.
#
# The shipped model was made on 2 CPU cores with no GPU lent: it starts from a run of the previous `small`
# design trained on an H200 (BASE: ../shared/models/h200-small, copied to runs/h200-small with its run.json's
# "data" pointing at DATA; its VQ-VAE, codes and priors are reused), forks it into today's design (harmonic
# conditioning) with both priors warm-started, trains them further within time budgets, exports and evaluates,
# with a check on notes of a soundfont it never saw. About 1.5 h on 2 cores; every stage resumes.
# From nothing, or on a GPU: scripts/train_gpu.sh trains every stage in one command.
# Override with DATA=... BASE=... RUN=... OUT=... UNSEEN=... ; BOTTOM_MIN / TOP_MIN are the budgets in minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA_DEBIAN_PACKAGES="fluidr3mono-gm-soundfont musescore-general-soundfont-small" source "$ROOT/scripts/setup.sh"
cd "$ROOT"
DATA="${DATA:-data/gm-h200}"
BASE="${BASE:-runs/h200-small}"
RUN="${RUN:-runs/default}"
OUT="${OUT:-server/default_bundle}"
UNSEEN="${UNSEEN:-data/musescore}"
SF=/usr/share/sounds

inpaint-train dataset --soundfont "$SF/sf3/FluidR3Mono_GM.sf3" --soundfont "$SF/sf2/TimGM6mb.sf2" --out "$DATA" \
  --pitches 24:84 --velocities 50,100,127
# Never trained on: MuseScore's General soundfont, every third pitch, one velocity.
inpaint-train dataset --soundfont "$SF/sf3/MuseScore_General_Lite.sf3" --out "$UNSEEN" \
  --pitches "$(seq -s, 24 3 84)" --velocities 100
[ -f "$BASE/codes/train.npz" ] || { echo "BASE $BASE: copy ../shared/models/h200-small there first" >&2; exit 1; }
[ -f "$RUN/run.json" ] || inpaint-train fork "$BASE" "$RUN" --warm-start \
  --set top_prior.harmonic=true --set bottom_prior.harmonic=true --set train.prior_batch_size=32 \
  --set train.prior_lr=3e-4 --set train.warmup_steps=100 --set train.monitor_every=1000 --set train.monitor_notes=44 \
  --set train.valid_limit=2000 --set train.checkpoint_every=200 --set train.log_every=50 --set train.num_workers=2
inpaint-train prior "$RUN" --layer bottom --steps 3000 --minutes "${BOTTOM_MIN:-55}"
inpaint-train prior "$RUN" --layer top --steps 6000 --minutes "${TOP_MIN:-30}"
inpaint-train export "$RUN" --out "$OUT" --name default
inpaint-train evaluate "$OUT" --data "$DATA" --unseen "$UNSEEN"
