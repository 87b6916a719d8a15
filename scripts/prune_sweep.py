"""Sweep the pruning defaults (docs/circuits.md, "Choosing the defaults"): settings x tasks x models.

Each cell prunes one task in one model with one setting (mask training + bisection; the clean-up and edge
stages as given) and records the circuit size, the validation loss that met the target and the seconds; with
--validate also the test-split verdict. Prints a table (median nodes and edges per setting over the reached
cells, and how many cells each setting reached) and writes JSON. Cells are cached in the JSON, so a rerun with
the same --out continues where a killed one stopped.

    python scripts/prune_sweep.py --model runs/demo/sparse --model runs/demo/dense \
        --task while_return_true --task indent_for ... --out runs/sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

from sparsecircuits.circuits.prune import PruneConfig
from sparsecircuits.circuits.session import PruneSession, pick_device, prune_one
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json

# name -> changes to the PruneConfig defaults
SETTINGS: dict[str, dict] = {
    "default": {},
    "k_coef x10": {"k_coef": 1e-3},
    "lr x3": {"lr": 1e-2},
    "steps x2": {"steps": 400},
    "steps /2": {"steps": 100},
    "temp /3": {"temp": 1 / 3},
    "batch 64 pairs": {"batch_pairs": 64},
    # second round, around the first round's best (k_coef x10 on the first two tasks)
    "k_coef x10, lr x3": {"k_coef": 1e-3, "lr": 1e-2},
    "k_coef x100": {"k_coef": 1e-2},
    "k_coef x1000": {"k_coef": 1e-1},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, action="append", required=True)
    ap.add_argument("--task", action="append", required=True)
    ap.add_argument("--setting", action="append", choices=list(SETTINGS), help="default: all")
    ap.add_argument("--target-loss", type=float, default=0.15)
    ap.add_argument(
        "--eval",
        type=Path,
        help="a demo's eval.json: each task then gets the demo's target (0.15, or relaxed above the worse "
        "model's unpruned loss; experiments.demo.task_target), the same for every model",
    )
    ap.add_argument("--cleanup", action="store_true", help="run the clean-up stage too")
    ap.add_argument("--edges", action="store_true", help="run the edge stage too")
    ap.add_argument("--validate", action="store_true", help="score each circuit on the test split")
    ap.add_argument("--out", type=Path, default=Path("runs/prune_sweep.json"))
    args = ap.parse_args()
    settings = args.setting or list(SETTINGS)
    targets = task_targets(args.eval, args.task, args.target_loss)
    cells: dict = json.loads(args.out.read_text())["cells"] if args.out.is_file() else {}
    sessions: dict[Path, PruneSession] = {}
    for task in args.task:  # task-major, so that a stopped sweep has whole tasks across the models
        for model in args.model:
            for name in settings:
                key = f"{model}|{task}|{name}"
                if key in cells:
                    continue
                if model not in sessions:
                    sessions[model] = PruneSession(model, pick_device("auto"), progress=False)
                session = sessions[model]
                cfg = dataclasses.replace(
                    PruneConfig(target_loss=targets[task], cleanup=args.cleanup, edges=args.edges),
                    **SETTINGS[name],
                )
                t0 = time.perf_counter()
                try:
                    c = prune_one(session, task, cfg, 1, 256, 64, args.validate)
                except UserError as e:
                    cells[key] = {"reached": False, "reason": str(e)}
                else:
                    v = c.get("validation") or {}
                    cells[key] = {
                        "reached": True,
                        "target": targets[task],
                        "nodes": c["counts"]["nodes"],
                        "edges": c["counts"]["edges"],
                        "stage": c["counts"]["stage"],
                        "loss": c["achieved"]["loss"],
                        "accuracy_raw": c["achieved"]["accuracy_raw"],
                        "verdict": v.get("verdict"),
                        "test_loss_calibrated": (v.get("sufficiency") or {}).get("loss_calibrated"),
                    }
                cells[key]["seconds"] = round(time.perf_counter() - t0, 1)
                print(key, cells[key], flush=True)
                atomic_write_json(args.out, {"settings": SETTINGS, "cells": cells})
    print(table(cells, settings))


def task_targets(eval_json: Path | None, tasks: list[str], target_loss: float) -> dict[str, float]:
    """task -> target loss: target_loss for all, or the demo's per-task target from its eval.json."""
    if eval_json is None:
        return {t: target_loss for t in tasks}
    from sparsecircuits.experiments.demo import DemoConfig, task_target

    evals = json.loads(eval_json.read_text())
    cfg = DemoConfig(target_loss=target_loss)
    return {t: task_target(cfg, evals, t) for t in tasks}


def table(cells: dict, settings: list[str]) -> str:
    """Markdown table per setting: cells reached, median nodes / edges / seconds over the reached cells, and
    the geometric mean of its edges over the default's on the cells both reached (below 1: smaller)."""
    lines = [
        "| setting | reached | median nodes | median edges | edges / default's (geomean) | median seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in settings:
        rows = {k.rsplit("|", 1)[0]: c for k, c in cells.items() if k.endswith(f"|{name}")}
        ok = [c for c in rows.values() if c["reached"]]
        logs = [
            math.log(c["edges"] / cells[f"{cell}|default"]["edges"])
            for cell, c in rows.items()
            if c["reached"] and (cells.get(f"{cell}|default") or {}).get("reached")
        ]
        ratio = f"{math.exp(sum(logs) / len(logs)):.2f} ({len(logs)})" if logs else "-"

        def med(key: str, ok=ok) -> str:
            return f"{statistics.median(c[key] for c in ok):.0f}" if ok else "-"

        lines.append(
            f"| {name} | {len(ok)}/{len(rows)} | {med('nodes')} | {med('edges')} | {ratio} | {med('seconds')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
