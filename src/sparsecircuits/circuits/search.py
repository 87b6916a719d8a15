"""A small hyperparameter search per (model, task): the paper tuned every pair with CARBS (PAPER.md 7.3).

Trial 0 uses the given config (the paper's Table 2 centers by default); later trials draw k_coef, lr,
init_bias and the surrogate temperature log-uniformly around it. The winner is the smallest circuit that
meets the target (ties: lower loss). No external tuner and nothing to install.
"""

from __future__ import annotations

import dataclasses
import math
import random

from sparsecircuits.circuits.prune import PruneConfig, PruneResult, prune
from sparsecircuits.circuits.scoring import PromptSet
from sparsecircuits.model import GPT

# (field, multiplicative spread): a trial draws field * spread ** U(-1, 1)
SPREAD = {"k_coef": 10.0, "lr": 3.0, "init_bias": 2.0, "temp": 3.0}


def propose(base: PruneConfig, trial: int, rng: random.Random) -> PruneConfig:
    """The config of one trial: the base for trial 0, else a log-uniform draw around it."""
    if trial == 0:
        return base
    changes = {f: getattr(base, f) * s ** rng.uniform(-1, 1) for f, s in SPREAD.items()}
    changes["init_bias"] = min(changes["init_bias"], 0.9)
    return dataclasses.replace(base, seed=base.seed + trial, **changes)


def search(
    model: GPT,
    means,
    train: PromptSet,
    evaluation: PromptSet,
    base: PruneConfig,
    budget: int = 1,
    progress: bool = True,
    log=print,
    pretraining: str | None = None,
) -> tuple[PruneResult, list[dict]]:
    """Run `budget` pruning trials and return the best result and a summary row per trial."""
    rng = random.Random(base.seed)
    best: PruneResult | None = None
    rows: list[dict] = []
    for trial in range(budget):
        cfg = propose(base, trial, rng)
        res = prune(model, means, train, evaluation, cfg, progress, pretraining)
        rows.append(
            {
                "trial": trial,
                "k": res.k,
                "loss": res.score.loss,
                "seconds": round(res.seconds, 2),
                **{f: getattr(cfg, f) for f in SPREAD},
            }
        )
        if budget > 1:
            log(
                f"  trial {trial}: {res.k} nodes, loss {res.score.loss:.4f} "
                f"(k_coef {cfg.k_coef:.2g}, lr {cfg.lr:.2g}, temp {cfg.temp:.2g})"
            )
        if best is None or (res.k, res.score.loss) < (best.k, best.score.loss):
            best = res
    assert best is not None and math.isfinite(best.score.loss)
    return best, rows
