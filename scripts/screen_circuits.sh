#!/usr/bin/env bash
# Circuit sizes for the screening table (docs/training.md): bisection-stage circuits (no clean-up, no edge
# stage, no validation) of 4 tasks in each screened model, at the default target and raw-accuracy floor.
# Usage: scripts/screen_circuits.sh SCREEN_DIR MODEL...
set -euo pipefail
DIR=$1; shift
S=${S:-.venv/bin/sparsecircuits}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for name in "$@"; do
  out="$DIR/circuits/$name"
  [ -f "$out/summary.json" ] && continue
  $S prune --model "$DIR/$name" --task while_return_true --task indent_for --task var_if --task if_equals \
    --out "$out" --no-cleanup --no-edges --no-validate --quiet --force || true
done
