"""Per-task losses of several models side by side, from `sparsecircuits eval --json` files, and the number of
tasks each has learned (loss at or below the target), as a Markdown table.

    python scripts/task_table.py runs/tasks_axis/*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(path: Path) -> dict:
    """An eval file with the model's name, kind (sparse/dense) and L0 from its run's config.json."""
    ev = json.loads(path.read_text())
    cfg = json.loads((Path(ev["model"]) / "config.json").read_text())
    ev["dense"] = bool(cfg.get("dense")) or cfg["train"]["l0_target"] >= 1
    ev["name"] = f"{'dense' if ev['dense'] else 'sparse'} {ev['model']}"
    return ev


def table(evals: list[dict], target: float) -> list[str]:
    lines = ["| task | " + " | ".join(e["name"] for e in evals) + " |", "|---|" + "---:|" * len(evals)]
    for task in evals[0]["tasks"]:
        cells = []
        for e in evals:
            loss = e["tasks"][task]["loss"]
            cells.append(f"**{loss:.3f}**" if loss <= target else f"{loss:.3f}")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines.append("| tasks learned | " + " | ".join(str(learned(e, target)) for e in evals) + " |")
    lines.append("| validation loss | " + " | ".join(f"{e['pretrain_val_loss']:.4f}" for e in evals) + " |")
    return lines


def learned(ev: dict, target: float) -> int:
    return sum(1 for t in ev["tasks"].values() if t["loss"] <= target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("evals", nargs="+", type=Path, help="files written by `sparsecircuits eval --json`")
    ap.add_argument(
        "--target", type=float, default=0.15, help="task loss at or below which a task is learned"
    )
    args = ap.parse_args()
    evals = [load(p) for p in args.evals]
    print("\n".join(table(evals, args.target)))


if __name__ == "__main__":
    main()
