"""The width-axis table and Fig 3-style plot of docs/results.md from `sparsecircuits frontier` cell files.

The frontier writes one cell per (model, task) under OUT/cells/MODEL/; the width runs were pruned by several
frontier processes at once (one out folder each), so this reads the cells of every folder given. The geometric
mean of circuit edges is taken over the tasks that every model listed reached, so the models are compared on
the same tasks; the plot puts each model at (validation loss, that geometric mean).

    python scripts/width_table.py --plot docs/img/width_frontier.png \
        runs/width_frontier runs/width_frontier_b runs/width_frontier_c
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sparsecircuits.experiments import plots
from sparsecircuits.experiments.report import read_metrics


def read_cells(outs: list[Path]) -> dict[str, dict]:
    """Model name -> {"model": model.json, "tasks": {task: cell}} for every complete model cell folder."""
    models: dict[str, dict] = {}
    for out in outs:
        for folder in sorted((out / "cells").iterdir()):
            if (folder / "model.json").is_file():
                tasks = {
                    p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem != "model"
                }
                models[folder.name] = {
                    "model": json.loads((folder / "model.json").read_text()),
                    "tasks": tasks,
                }
    return models


def sparsified(run: Path) -> tuple[int, int]:
    """(nonzero, total) entries of the run's sparsified tensors, as its training metrics record them."""
    rows = read_metrics(run)
    return rows[-1]["nonzero"], rows[0]["sparsified_params"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    models = read_cells(args.outs)
    tasks = sorted({t for m in models.values() for t in m["tasks"]})
    common = [t for t in tasks if all(m["tasks"].get(t, {}).get("reached") for m in models.values())]
    print(f"geometric mean over the tasks every model reached: {', '.join(common)}\n")
    print("| model | d_model | sparsified nonzero / total | val loss | tasks reached | geomean edges |")
    print("|---|---:|---:|---:|---:|---:|")
    points = []
    for name, m in models.items():
        nz, total = sparsified(Path(m["model"]["path"]))
        reached = sum(1 for c in m["tasks"].values() if c.get("reached"))
        edges = [m["tasks"][t]["edges"] for t in common]
        gm = math.exp(sum(math.log(max(e, 1)) for e in edges) / len(edges)) if edges else float("nan")
        print(
            f"| {name} | {m['model']['d_model']} | {nz:,} / {total:,} | {m['model']['val_loss']:.4f} | "
            f"{reached}/{len(m['tasks'])} | {gm:.0f} |"
        )
        points.append({**m["model"], "geomean_edges": gm})
    print("\n| task | " + " | ".join(models) + " |")
    print("|---|" + "---:|" * len(models))
    for t in tasks:
        cells = [m["tasks"].get(t, {}) for m in models.values()]
        row = [f"{c['nodes']} / {c['edges']}" if c.get("reached") else "-" for c in cells]
        print(f"| {t} | " + " | ".join(row) + " |")
    if args.plot:
        fig = plots.frontier(points)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
