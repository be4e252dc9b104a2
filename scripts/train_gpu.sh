#!/usr/bin/env bash
# The whole default model on one GPU within one wall-clock budget: render the training set, train the VQ-VAE
# and both priors (one `pipeline` that splits its budget across the stages), export the bundle and evaluate it.
# Every stage ends cleanly at its share (final checkpoint, validation, pitch monitor, throughput), and every
# stage resumes from its checkpoint when run again.
#
# On an offline GPU machine (see ../shared/offline-gpu): from the project root, carrying .gpu-kit,
#   source .gpu-kit/preamble.sh && export FSENV && MINUTES=8.5 OUT=$OUT bash scripts/train_gpu.sh
# Elsewhere, after scripts/setup.sh: DEVICE=cpu PRESET=tiny MINUTES=2 bash scripts/train_gpu.sh (a rehearsal).
# A smoke test before a long run (a few notes, STEPS=30, EVALUATE=0) catches a device problem in a minute.
# Folders: DATA (rendered notes), RUN (the run folder), OUT (bundle/, evaluation/, the packed results, log).
# PACK=0 leaves the bundle and the run where they are (a machine you keep) instead of packing them to come back.
# DESIGN adds settings of a new run's design, e.g. classifier-free guidance on the family:
#   DESIGN="top_prior.family_dropout=0.2 bottom_prior.family_dropout=0.2"
# FROM=BUNDLE trains on from a bundle instead of from scratch: its models are unpacked (codes of DATA encoded on
# the device), forked with DESIGN, and only the priors named in LAYERS (default "bottom", where the family is
# lost: docs/ablations.md) train for the budget, at PRIOR_LR 3e-4 unless set; e.g.
#   FROM=server/default_bundle LAYERS=bottom DESIGN="bottom_prior.family_dropout=0.2" MINUTES=8.5 ...
set -uo pipefail
T0=$(date +%s)
MINUTES=${MINUTES:-8.5}   # the whole command, rendering and evaluation included
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
DATA=${DATA:-/tmp/inpaint-data}
RUN=${RUN:-/tmp/inpaint-run}
OUT=${OUT:-/tmp/inpaint-out}
SF=${SF:-.gpu-kit/sf}     # FluidR3Mono_GM.sf3 and TimGM6mb.sf2 (Debian's, carried in the kit)
PY=${PY:-python3}
EVAL_S=${EVAL_S:-90}      # seconds kept for the export, a short evaluation and packing at the end
PRIOR_LR_DEFAULT=1e-3
[ -n "${FROM:-}" ] && PRIOR_LR_DEFAULT=3e-4  # training on from a bundle: a gentler rate
# A large GPU takes large batches; the learning rates follow (warm-up, then a cool-down at the budget's end).
GPU_SETTINGS=(--set train.vqvae_batch_size=${VQ_BATCH:-128} --set train.lr=${VQ_LR:-5e-4}
  --set train.prior_batch_size=${PRIOR_BATCH:-512} --set train.prior_lr=${PRIOR_LR:-$PRIOR_LR_DEFAULT}
  --set train.vqvae_steps=${STEPS:-10000000} --set train.prior_steps=${STEPS:-10000000} --set train.num_workers=$(nproc)
  --set train.checkpoint_every=1000 --set train.log_every=100 --set train.image_every=1000
  --set train.monitor_every=${MONITOR_EVERY:-2000} --set train.monitor_notes=88)
for setting in ${DESIGN:-}; do GPU_SETTINGS+=(--set "$setting"); done
LOGS="$OUT/logs"
mkdir -p "$LOGS"
exec > >(tee -a "$OUT/log.txt") 2>&1
elapsed() { echo $(($(date +%s) - T0)); }
say() { echo "[$(elapsed) s] $*"; }
left_minutes() { $PY -c "print(max(0.2, $MINUTES - $(elapsed) / 60 - $1 / 60))"; }

say "device $DEVICE, preset $PRESET, budget $MINUTES min, $(nproc) cores"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if [ -f "$DATA/dataset.json" ]; then  # written last: a second call on a warm machine keeps the notes
  say "render: $DATA already has its notes"
else
  say render
  # FSENV (set by the kit's preamble, exported) points this one process at the carried FluidSynth libraries.
  env ${FSENV:-} $PY -m export dataset --soundfont "$SF/FluidR3Mono_GM.sf3" --soundfont "$SF/TimGM6mb.sf2" \
    --out "$DATA" --pitches ${PITCHES:-24:84} --velocities ${VELOCITIES:-50,100,127} ${RENDER_EXTRA:-} \
    > "$LOGS/render.log" 2>&1
  tail -c 300 "$LOGS/render.log"; echo
  [ -f "$DATA/examples.json" ] || { say "rendering failed"; exit 1; }
fi

train_on() {  # FROM's models, the priors in LAYERS trained on, exported
  if [ ! -f "$RUN/run.json" ]; then  # a resumed run keeps its config and checkpoints
    $PY -m export unpack "$FROM" --data "$DATA" --out "$RUN.base" --set train.num_workers="$(nproc)" &&
      $PY -m export fork "$RUN.base" "$RUN" --warm-start "${GPU_SETTINGS[@]}" || return
  fi
  local layers=(${LAYERS:-bottom}) i minutes
  for i in "${!layers[@]}"; do  # the time left, shared by the layers still to train
    minutes=$($PY -c "print($(left_minutes "$EVAL_S") / $((${#layers[@]} - i)))")
    say "${layers[i]} prior for $minutes min" >&2
    $PY -m export prior "$RUN" --layer "${layers[i]}" --device "$DEVICE" --minutes "$minutes" || return
  done
  $PY -m export export "$RUN" --out "$OUT/bundle" --name default
}

if [ -n "${FROM:-}" ]; then
  say "training on $FROM: ${LAYERS:-bottom} prior(s) for $(left_minutes "$EVAL_S") min"
  train_on > "$LOGS/pipeline.log" 2> "$LOGS/pipeline.err"
else
  say "pipeline for $(left_minutes "$EVAL_S") min"
  EXTRA=()
  [ -f "$RUN/run.json" ] || EXTRA=(--preset "$PRESET" "${GPU_SETTINGS[@]}")  # a resumed run keeps its config
  [ "$PRESET" = tiny ] && EXTRA=(--preset tiny)
  $PY -m export pipeline "$RUN" --data "$DATA" --out "$OUT/bundle" --name default --device "$DEVICE" \
    --minutes "$(left_minutes "$EVAL_S")" "${EXTRA[@]}" > "$LOGS/pipeline.log" 2> "$LOGS/pipeline.err"
fi
status=$?
grep -v "it/s\]\|s/it\]" "$LOGS/pipeline.err" | tail -40
tail -c 2500 "$LOGS/pipeline.log"; echo
say "training exit $status"
[ $status = 0 ] || exit $status
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv

if [ -f "$OUT/bundle/manifest.json" ] && [ "${EVALUATE:-1}" = 1 ]; then
  say evaluate
  timeout $((EVAL_S > 20 ? EVAL_S - 10 : 10)) $PY -m export evaluate "$OUT/bundle" --data "$DATA" \
    --out "$LOGS/evaluation/evaluation.md" --notes ${EVAL_NOTES:-20} --samples 1 > "$LOGS/evaluate.json" 2>&1
  tail -c 1500 "$LOGS/evaluate.json"; echo
fi

[ "${PACK:-1}" = 1 ] || { say "done (unpacked: $OUT/bundle, $RUN)"; exit 0; }
say pack
# Six or seven files, each within the 16 MiB a file may come back in: the checkpoints whole (optimizer included:
# a later session resumes them), the bundle, and the run's small files with TensorBoard logs, logs and report.
# The bundle with its family tables is about 19 MB, so it comes back compressed in parts of 15 MiB at most:
#   cat bundle.tar.gz.part-* | tar -xz
cp "$RUN"/*.pt "$OUT"/ 2>/dev/null
cp "$DATA/dataset.json" "$LOGS"/ 2>/dev/null
tar -czf "$OUT/run.tar.gz" -C "$(dirname "$RUN")" --exclude=codes --exclude='*.pt' "$(basename "$RUN")" \
  -C "$OUT" logs && rm -rf "$LOGS"
[ -d "$OUT/bundle" ] && tar -czf - -C "$OUT" bundle | split -b 15M - "$OUT/bundle.tar.gz.part-" && rm -rf "$OUT/bundle"
ls -la "$OUT"
say done
