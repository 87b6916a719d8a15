#!/usr/bin/env bash
# The width axis at a fixed number of nonzero weights (issue 16, docs/results.md): 2-layer models of d_model
# 128, 256 and 384 whose L0 targets keep about the same ~230k nonzeros, the demo preset's token budget
# (1,500 steps x 2,048 tokens), positions as concatenated channels; then a dense d_model-128 partner stopped
# at each sparse model's final validation loss. One run at a time, resumable (rerun the script).
# Usage: scripts/width_axis.sh OUT_DIR DATA_DIR
set -euo pipefail
OUT=${1:-runs/width}; DATA=${2:-runs/demo/data}
S=${S:-.venv/bin/sparsecircuits}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON="--preset demo --set model.pos_emb=concat --set model.d_pos_emb=16 ${EXTRA:-}"
declare -A SHAPE=(
  [w128]="--set train.l0_target=0.25"
  [w256]="--set model.d_model=256 --set model.n_head=16 --set model.d_mlp=1024 --set train.l0_target=0.0883"
  [w384]="--set model.d_model=384 --set model.n_head=24 --set model.d_mlp=1536 --set train.l0_target=0.0455"
)
run() {  # name, then the train arguments for a fresh run
  local name=$1; shift
  [ -f "$OUT/$name/model.safetensors" ] && return 0
  if [ -d "$OUT/$name/checkpoints" ]; then
    $S train --data "$DATA" --out "$OUT/$name" --resume --quiet
  else
    $S train --data "$DATA" --out "$OUT/$name" "$@" --quiet --force
  fi
}
for w in ${WIDTHS:-w128 w256 w384}; do
  # shellcheck disable=SC2086
  run "$w" $COMMON ${SHAPE[$w]}
done
for w in ${WIDTHS:-w128 w256 w384}; do
  # shellcheck disable=SC2086
  run "dense-$w" $COMMON --dense --set train.steps=3000 --set train.eval_every=50 --match-loss "$OUT/$w"
done
