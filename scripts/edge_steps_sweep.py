"""How long the edge stage needs: edges kept and seconds at several `--edge-steps`, on a demo's node circuits.

python scripts/edge_steps_sweep.py runs/demo [--steps 50,100,200] [--workers 2] [--lr 6e-3] [--task T ...]

For every circuit under OUT/circuits/{sparse,dense} that ran the edge stage, the stage is rerun on its node
circuit with the circuit's own settings (target, raw-accuracy floor, seed, training and validation pairs),
once per step count, and the edges it keeps are printed as a Markdown table (docs/circuits.md) and written
to benchmarks/results/edge_steps.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import report  # noqa: E402
from sparsecircuits.circuits.masks import NodeMask  # noqa: E402
from sparsecircuits.circuits.parallel import Replicas  # noqa: E402
from sparsecircuits.circuits.prune import Evaluator, PruneConfig, prune_edges  # noqa: E402
from sparsecircuits.circuits.scoring import Target  # noqa: E402
from sparsecircuits.circuits.session import PruneSession, circuit_gates  # noqa: E402


def sweep(
    session: PruneSession, circuit: dict, steps: list[int], workers: int, lr: float | None = None
) -> list[dict]:
    """The edge stage of one stored circuit rerun at each step count: [{edge_steps, edges_before, edges, ...}]."""
    fields = {f.name for f in dataclasses.fields(PruneConfig)}
    cfg = PruneConfig(**{k: v for k, v in circuit["pruning"]["hyperparameters"].items() if k in fields})
    cfg = cfg if lr is None else dataclasses.replace(cfg, edge_lr=lr)
    task = circuit["task"]
    model = session.model
    train = session.prompts(task["name"], int(task["n_pairs"]), "train", cfg.seed)
    evaluation = session.prompts(task["name"], int(task["eval_pairs"]), "val", cfg.seed)
    gates = circuit_gates(circuit, model)
    mask = NodeMask.for_model(model, session.means, cfg.ablation)
    rows = []
    with Replicas(model, workers) as pool:
        evaluate = Evaluator(model, mask, evaluation, cfg.calibrate, cfg.loss_convention, pool=pool)
        full = evaluate(torch.ones(mask.n_nodes))
        target = Target(cfg.target_loss, min(cfg.min_raw_accuracy, full.accuracy_raw))
        for n in steps:
            t = time.perf_counter()
            edges, kept, best, _, _ = prune_edges(
                model, mask, gates, train, evaluate, dataclasses.replace(cfg, edge_steps=n), target, False
            )
            rows.append(
                {
                    "task": task["name"],
                    "nodes": int(gates.sum()),
                    "edge_steps": n,
                    "edge_lr": cfg.edge_lr,
                    "edges_before": edges.n_edges,
                    "edges": int(kept.sum()) if kept is not None else edges.n_edges,
                    "val_loss": None if best is None else round(best.loss, 4),
                    "seconds": round(time.perf_counter() - t, 1),
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("demo", type=Path)
    ap.add_argument("--steps", default="50,100,200")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--lr",
        type=float,
        default=None,
        help="the edge stage's learning rate (default: the circuit's, else PruneConfig's)",
    )
    ap.add_argument("--task", action="append", default=[], help="only these tasks (default: all)")
    ap.add_argument("--models", default="sparse,dense")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    rows = []
    for kind in args.models.split(","):
        session = PruneSession(args.demo / kind, "cpu", progress=False)
        for path in sorted((args.demo / "circuits" / kind).glob("*.circuit.json")):
            circuit = json.loads(path.read_text())
            if "edges_before" not in circuit.get("stages", {}).get("edges", {}):
                continue  # the edge stage was skipped for this circuit
            if args.task and circuit["task"]["name"] not in args.task:
                continue
            for row in sweep(session, circuit, steps, args.workers, args.lr):
                rows.append({"model": kind, **row})
                print(rows[-1], flush=True)
    report("edge_steps", rows, {"demo": str(args.demo), "steps": steps, "lr": args.lr})


if __name__ == "__main__":
    main()
