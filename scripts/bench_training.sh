#!/usr/bin/env bash
# Training throughput before and after, in one run on this machine: each stage of a baseline revision (a git
# worktree) and of this tree, alternately, on the same data, run config, preset and batch. Prints examples/s per
# stage, read the same way for both trees (steps x batch over the progress bar's elapsed time).
#   scripts/bench_training.sh BASELINE_REV BASE_RUN      e.g. 38fe57d runs/h200-small (a run with codes)
# STEPS (default 40) per stage; VQ_BATCH and PRIOR_BATCH (default 16, the small preset's CPU batch); NOTES
# (default 3000) training notes and maps drawn from the base run's data and codes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASELINE=${1:?baseline revision}
BASE_RUN=$(cd "${2:?a run folder with codes}" && pwd)
STEPS=${STEPS:-40}
VQ_BATCH=${VQ_BATCH:-16}
PRIOR_BATCH=${PRIOR_BATCH:-16}
PY="$ROOT/.venv/bin/python"
WORK=$(mktemp -d)
trap 'git -C "$ROOT" worktree remove --force "$WORK/baseline" >/dev/null 2>&1; rm -rf "$WORK"' EXIT
git -C "$ROOT" worktree add -q --detach "$WORK/baseline" "$BASELINE"
NOTES=${NOTES:-3000}
# A subset of the base run's data and codes, the same for both trees: validation stays short.
DATA="$WORK/data"
"$PY" - "$BASE_RUN" "$DATA" "$NOTES" <<'EOF'
import json, os, sys
import numpy as np
base, data, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
src = json.load(open(os.path.join(base, "run.json")))["data"]
examples = json.load(open(os.path.join(src, "examples.json")))
keep = sorted(examples)[:: max(1, len(examples) // n)]
os.makedirs(data)
json.dump({k: examples[k] for k in keep}, open(os.path.join(data, "examples.json"), "w"))
os.symlink(os.path.join(src, "audio"), os.path.join(data, "audio"))
os.makedirs(os.path.join(data, "codes"))
for split, size in (("train", n), ("valid", n // 4)):
    z = np.load(os.path.join(base, "codes", f"{split}.npz"))
    np.savez(os.path.join(data, "codes", f"{split}.npz"), **{k: z[k][:size] for k in z.files})
EOF

rate() {  # the last progress bar of a log: "N/N [mm:ss" → examples/s at the given batch
  "$PY" - "$1" "$2" <<'EOF'
import re, sys
text = open(sys.argv[1]).read().replace("\r", "\n")
done, minutes, seconds = map(int, re.findall(r"(\d+)/\d+ \[(\d+):(\d+)", text)[-1])
print(f"{done * int(sys.argv[2]) / max(60 * minutes + seconds, 1):.1f}")
EOF
}

for tree in baseline current; do
  src=$([ $tree = baseline ] && echo "$WORK/baseline" || echo "$ROOT")
  run="$WORK/$tree-run"
  mkdir -p "$run"
  cp -r "$DATA/codes" "$BASE_RUN/run.json" "$run"/
  # Both trees read the same run config (the base run's design), with this benchmark's steps and batches.
  DATA="$DATA" "$PY" - "$run/run.json" "$STEPS" "$VQ_BATCH" "$PRIOR_BATCH" <<'EOF'
import json, os, sys
path, steps, vq, prior = sys.argv[1], *map(int, sys.argv[2:])
r = json.load(open(path))
r["data"] = os.environ["DATA"]
r["config"]["train"].update(vqvae_steps=steps, prior_steps=steps, vqvae_batch_size=vq, prior_batch_size=prior,
                            num_workers=4, checkpoint_every=10**9, image_every=10**9, log_every=10)
json.dump(r, open(path, "w"))
EOF
  for stage in vqvae top bottom; do
    case $stage in
      vqvae) args=(vqvae "$run" --data "$DATA" --device cpu); batch=$VQ_BATCH ;;
      *) args=(prior "$run" --layer $stage --device cpu); batch=$PRIOR_BATCH ;;
    esac
    (cd "$src" && PYTHONPATH="$src" "$PY" -m export "${args[@]}" > "$WORK/$tree-$stage.out" 2> "$WORK/$tree-$stage.log")
    echo "$tree $stage $(rate "$WORK/$tree-$stage.log" $batch) examples/s"
  done
done
