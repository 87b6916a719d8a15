"""The screening table of docs/training.md from the folders scripts/screen_regime.sh and
scripts/screen_circuits.sh wrote: per model, its final validation loss, the tasks it learned (eval --json
under SCREEN/evals/NAME.json, loss <= 0.15 pair-sum) and its circuit sizes (SCREEN/circuits/NAME).

    python scripts/screen_table.py runs/screen base concat afrac4 sink bigram
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from sparsecircuits.train.trainer import final_val_loss

TASKS = ("while_return_true", "indent_for", "var_if", "if_equals")


def counts(screen: Path, name: str) -> dict[str, dict]:
    """Task -> the circuit file's counts, for the tasks pruned to the target."""
    out = {}
    for task in TASKS:
        path = screen / "circuits" / name / f"{task}.circuit.json"
        if path.is_file():
            out[task] = json.loads(path.read_text())["counts"]
    return out


def geomean(values: list[int]) -> float:
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values)) if values else float("nan")


def main() -> None:
    screen, names = Path(sys.argv[1]), sys.argv[2:]
    sizes = {name: counts(screen, name) for name in names}
    # the geometric mean compares like with like: only tasks that all models but at most one reached
    common = [t for t in TASKS if sum(t in s for s in sizes.values()) >= len(names) - 1]
    print(
        "| model | val loss | tasks learned | "
        + " | ".join(TASKS)
        + f" | geomean edges ({', '.join(common)}) |"
    )
    print("|---|---:|---:|" + "---:|" * len(TASKS) + "---:|")
    for name in names:
        tasks = json.loads((screen / "evals" / f"{name}.json").read_text())["tasks"]
        learned = sum(1 for t in tasks.values() if t["loss"] <= 0.15)
        c = sizes[name]
        cells = [f"{c[t]['nodes']} / {c[t]['edges']}" if t in c else "not reached" for t in TASKS]
        gm = geomean([c[t]["edges"] for t in common if t in c])
        print(
            f"| {name} | {final_val_loss(screen / name):.3f} | {learned} | "
            + " | ".join(cells)
            + f" | {gm:.0f} |"
        )


if __name__ == "__main__":
    main()
