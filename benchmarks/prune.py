"""Pruning speed: seconds per task and mask-training steps per second on a trained model.

Usage: python benchmarks/prune.py [--model runs/demo/sparse] [--task single_double_quote ...] [--steps 200]
Target (issue): one task on the demo model in at most 2 minutes on 2 CPU cores with the default budget.
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
    args = ap.parse_args()
    tasks = args.task or ["single_double_quote", "bracket_counting"]
    t0 = time.perf_counter()
    session = PruneSession(args.model, pick_device(args.device), progress=False)
    setup_s = time.perf_counter() - t0
    rows = []
    for task in tasks:
        cfg = PruneConfig(target_loss=args.target_loss, steps=args.steps, batch_pairs=args.batch_pairs)
        t = time.perf_counter()
        try:
            c = prune_one(session, task, cfg, 1, 256, 64, True)  # the CLI defaults
            status = f"{c['counts']['nodes']} nodes, {c['counts']['edges']} edges"
        except UserError as e:
            # the target is out of reach: still time the mask training itself
            from sparsecircuits.circuits.masks import NodeMask

            widths = {loc: session.model.location_width(loc) for loc in session.model.node_locations()}
            mask = NodeMask(widths, session.means)
            train_mask(session.model, mask, session.prompts(task, 256, "train", 0), cfg, progress=False)
            status = f"target not reached ({e})"[:80]
        total = time.perf_counter() - t
        rows.append(
            {
                "task": task,
                "seconds": total,
                "steps": args.steps,
                "steps_per_s": args.steps / total,
                "result": status,
            }
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
