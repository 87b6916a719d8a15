#!/bin/bash
# Pruning settings toward smaller circuits (docs/circuits.md, "On the shipped 1/16 model"): each setting and
# task pruned once with the whole pipeline at target 0.15; circuits in OUT/SETTING/TASK.circuit.json, times
# in OUT/summary.txt. Finished cells are skipped, so a rerun resumes.
#   scripts/size_sweep.sh runs/demo/sparse runs/size_sweep
set -u
MODEL=${1:-runs/demo/sparse}
OUT=${2:-runs/size_sweep}
S=${S:-.venv/bin/sparsecircuits}
declare -A SET=(
  [base]=""
  [k3]="--k-coef 0.03"
  [s600]="--steps 600"
  [s600k3]="--steps 600 --k-coef 0.03"
)
mkdir -p "$OUT"
for name in base k3 s600 s600k3; do
  for task in while_return_true single_double_quote; do
    out=$OUT/$name/$task.circuit.json
    [ -f "$out" ] && continue
    start=$(date +%s)
    # shellcheck disable=SC2086  # the setting is a list of options
    $S prune --model "$MODEL" --task $task --out "$out" ${SET[$name]} > "$OUT/$name.$task.log" 2>&1
    echo "$name $task rc=$? $(( $(date +%s) - start ))s" >> "$OUT/summary.txt"
  done
done
