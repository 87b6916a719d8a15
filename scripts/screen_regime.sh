#!/usr/bin/env bash
# Screen the paper-regime options against the demo preset at one token budget (docs/training.md).
# Usage: scripts/screen_regime.sh OUT_DIR DATA_DIR   (one thread per run; runs one after another)
set -euo pipefail
OUT=${1:-runs/screen}; DATA=${2:-runs/demo/data}
S=${S:-.venv/bin/sparsecircuits}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A VARIANTS=(
  [base]=""
  [concat]="--set model.pos_emb=concat --set model.d_pos_emb=16"
  [afrac4]="--set model.afrac=0.25"
  [sink]="--set model.sink=true"
  [bigram]="--set model.bigram_table=true"
)
for name in ${NAMES:-base concat afrac4 sink bigram}; do
  [ -f "$OUT/$name/model.safetensors" ] && continue
  resume=(); [ -d "$OUT/$name/checkpoints" ] && resume=(--resume)
  if [ ${#resume[@]} -gt 0 ]; then
    $S train --data "$DATA" --out "$OUT/$name" --resume --quiet
  else
    # shellcheck disable=SC2086
    $S train --data "$DATA" --out "$OUT/$name" --preset demo ${VARIANTS[$name]} --quiet --force
  fi
done
