"""Pruning speed: seconds per task, split by stage, on a trained model at the CLI's default settings.

Stages: mask training + bisection, the greedy clean-up, the edge stage (edge-gate training + bisection) and the
validation on the test split; with the circuit's nodes and edges after each stage.

Usage: python benchmarks/prune.py [--model runs/demo/sparse] [--task single_double_quote ...] [--steps 200]
       [--workers 1,2]
Target (issue 15): one task on the demo model, clean-up and edge pruning included, in at most 2 minutes on 2
CPU cores. With several --workers counts each task is pruned once per count, side by side in one run (the
circuits must come out the same: the result does not depend on the workers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from sparsecircuits.circuits.prune import PruneConfig, train_mask  # noqa: E402
from sparsecircuits.circuits.session import PruneSession, pick_device, prune_one  # noqa: E402
from sparsecircuits.errors import UserError  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("runs/demo/sparse"))
    ap.add_argument("--task", action="append", default=[])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-pairs", type=int, default=32, help="pairs per mask step (the paper: 64)")
    ap.add_argument("--target-loss", type=float, default=0.15)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--workers",
        default="",
        help="threads scoring circuits side by side, comma-separated counts to compare",
    )
    args = ap.parse_args()
    tasks = args.task or ["single_double_quote", "bracket_counting"]
    t0 = time.perf_counter()
    session = PruneSession(args.model, pick_device(args.device), progress=False)
    setup_s = time.perf_counter() - t0
    counts = [int(w) for w in args.workers.split(",") if w] or [session.workers]
    rows = []
    for task, workers in ((t, w) for t in tasks for w in counts):
        session.workers = workers
        cfg = PruneConfig(target_loss=args.target_loss, steps=args.steps, batch_pairs=args.batch_pairs)
        t = time.perf_counter()
        stages: dict = {}
        try:
            c = prune_one(session, task, cfg, 1, 256, 64, True)  # the CLI defaults
            status = f"{c['counts']['nodes']} nodes, {c['counts']['edges']} edges"
            stages = {k: v for k, v in c["stages"].items() if "seconds" in v}
            pruned_s = float(c["pruning"]["seconds"])
        except UserError as e:
            # the target is out of reach: still time the mask training itself
            from sparsecircuits.circuits.masks import NodeMask

            widths = {loc: session.model.location_width(loc) for loc in session.model.node_locations()}
            mask = NodeMask(widths, session.means)
            train_mask(session.model, mask, session.prompts(task, 256, "train", 0), cfg, progress=False)
            status = f"target not reached ({e})"[:80]
            pruned_s = time.perf_counter() - t
        total = time.perf_counter() - t
        row = {"task": task, "workers": workers, "seconds": total, "steps": args.steps, "result": status}
        for name in ("bisection", "cleanup", "edges"):
            st = stages.get(name, {})
            row[f"{name}_s"] = st.get("seconds")
            row[f"{name}_size"] = f"{st['nodes']}/{st['edges']}" if "nodes" in st else None
        row["prune_s"] = pruned_s  # mask training to edge stage, with the final node effects
        row["validation_s"] = total - pruned_s if stages else None
        rows.append(row)
    for a, b in zip(rows, rows[1:]):
        if a["task"] == b["task"] and a["result"] != b["result"]:
            raise SystemExit(
                f"{a['task']}: {a['result']} with {a['workers']} workers, {b['result']} with {b['workers']}"
            )
    report(
        "prune",
        rows,
        {
            "model": str(args.model),
            "setup_seconds": setup_s,
            "threads": torch.get_num_threads(),
            "target_seconds_per_task": 120,
        },
    )


if __name__ == "__main__":
    main()
