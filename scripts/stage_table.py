"""The stage table of a folder of circuits (docs/results.md): per task and model, nodes and edges after each
pruning stage (bisection -> clean-up -> edges), the test-split scores raw and calibrated, what the held-out
check put back, and the seconds.

    python scripts/stage_table.py runs/demo/circuits     # circuits/<model>/<task>.circuit.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def sizes(c: dict, key: str) -> str:
    """'a -> b -> c' over the stages that ran, the last in bold."""
    values = []
    for name in ("bisection", "cleanup", "edges"):
        stage = (c.get("stages") or {}).get(name) or {}
        if key in stage and (not values or stage[key] != values[-1]):
            values.append(stage[key])
    if not values:
        values = [c["counts"][key]]
    return (
        " -> ".join(f"{v:,}" for v in values[:-1])
        + (" -> " if len(values) > 1 else "")
        + f"**{values[-1]:,}**"
    )


def held_out(c: dict) -> str:
    """What the held-out check put back: 'N nodes / M edges' over the stages it checked, '-' without it."""
    stages = c.get("stages") or {}
    parts = [
        f"{stages[name]['held_out']['put_back']:,} {unit}"
        for name, unit in (("cleanup", "nodes"), ("edges", "edges"))
        if "held_out" in stages.get(name, {})
    ]
    return " / ".join(parts) or "-"


def row(model: str, c: dict) -> str:
    v = c.get("validation") or {}
    suff, nec, res = v.get("sufficiency", {}), v.get("necessity", {}), v.get("resample", {})
    nat = v.get("natural") or {}
    natural = f"{nat['circuit']['loss_calibrated']:.3f} ({nat['full_model']['loss_raw']:.3f})" if nat else "-"
    return (
        f"| {c['task']['name']} ({c['target_loss']:g}) | {model} | {sizes(c, 'nodes')} | {sizes(c, 'edges')} | "
        f"{suff.get('loss_raw', float('nan')):.3f} / {suff.get('loss_calibrated', float('nan')):.3f} | "
        f"{suff.get('accuracy_raw', float('nan')):.2f} | {nec.get('loss_raw', float('nan')):.2f} | "
        f"{res.get('loss_raw', float('nan')):.2f} / {res.get('loss_calibrated', float('nan')):.2f} | {natural} | "
        f"{v.get('verdict', '-')} | {held_out(c)} | {c['pruning']['seconds']:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    print(
        "| task (target) | model | nodes (bisection -> clean-up -> edges) | edges | suff. raw / cal | raw acc | "
        "nec. raw | resample raw / cal | natural: circuit cal (full model) | verdict | held-out check: put back | "
        "prune s |"
    )
    print("|---|---|---|---|---|---:|---:|---|---:|---|---|---:|")
    circuits = sorted(args.folder.glob("*/*.circuit.json"))
    for path in sorted(circuits, key=lambda p: (p.stem, p.parent.name != "sparse")):
        print(row(path.parent.name, json.loads(path.read_text())))
    for path in sorted(args.folder.glob("*/*.skipped")):
        print(
            f"| {path.stem} | {path.parent.name} | not reached: {path.read_text().split(chr(10), 1)[1].strip()} |"
        )


if __name__ == "__main__":
    main()
