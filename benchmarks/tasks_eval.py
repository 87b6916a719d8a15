"""Task-suite evaluation speed: all 20 tasks at 512 prompts each (256 pairs) on a trained model.

Usage: python benchmarks/tasks_eval.py [--model runs/demo/sparse] [--pairs 256]
Target (issue): under a minute on 2 CPU cores for the demo model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from sparsecircuits.run import load_run  # noqa: E402
from sparsecircuits.tasks import all_tasks  # noqa: E402
from sparsecircuits.tasks.evaluate import encode_task, evaluate_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, default=Path("runs/demo/sparse"))
    ap.add_argument("--pairs", type=int, default=256)
    args = ap.parse_args()
    run = load_run(args.model)
    rows = []
    t_all = time.perf_counter()
    for task in all_tasks():
        t = time.perf_counter()
        encode_task(task, run.tokenizer, args.pairs, n_ctx=run.model.cfg.n_ctx)
        t_enc = time.perf_counter() - t
        with torch.no_grad():
            m = evaluate_task(run.model, run.tokenizer, task, n_pairs=args.pairs)
        rows.append(
            {
                "task": task.name,
                "prompts": 2 * args.pairs,
                "encode_s": t_enc,
                "total_s": time.perf_counter() - t,
                "loss": m["loss"],
                "acc": m["acc"],
            }
        )
    total = time.perf_counter() - t_all
    rows.append({"task": "ALL", "prompts": 40 * args.pairs, "total_s": total})
    report("tasks_eval", rows, {"model": str(args.model), "target_seconds": 60})


if __name__ == "__main__":
    main()
