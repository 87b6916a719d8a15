"""The Markdown table of a `scripts/size_sweep.sh` folder (docs/circuits.md): one row per setting and task.

python scripts/size_sweep_table.py runs/size_sweep
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(path: Path) -> str:
    c = json.loads(path.read_text())
    stages, v = c.get("stages", {}), c.get("validation", {})
    s = v.get("sufficiency", {})
    b, cl = stages.get("bisection", {}).get("nodes"), stages.get("cleanup", {}).get("nodes")
    nodes = f"{b} -> {cl}" if cl is not None else f"{b}"
    return (
        f"| {path.parent.name} | {c['task']['name']} | {nodes} | {c['counts']['edges']:,} | "
        f"{s.get('loss_raw', float('nan')):.3f} / {s.get('loss_calibrated', float('nan')):.3f} | "
        f"{s.get('accuracy_raw', float('nan')):.2f} | {v.get('verdict')} | {c['pruning']['seconds']:.0f} |"
    )


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/size_sweep")
    print(
        "| setting | task | nodes (bisection -> clean-up) | edges (final) | suff. raw / cal (test) | raw acc | verdict | seconds |"
    )
    print("|---|---|---|---:|---|---:|---|---:|")
    for path in sorted(root.glob("*/*.circuit.json")):
        print(row(path))


if __name__ == "__main__":
    main()
