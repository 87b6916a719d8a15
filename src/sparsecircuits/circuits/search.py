"""A small hyperparameter search per (model, task): the paper tuned every pair with CARBS (PAPER.md 7.3).

Setting 0 is the given config (the defaults: Table 2 centers, k_coef 1e-2); the others draw k_coef, lr,
init_bias and the surrogate temperature log-uniformly around it. Successive halving runs many short trials
and continues the best (see `search`); the winner is the smallest circuit that meets the target (ties: lower
loss). No external tuner and nothing to install.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

from sparsecircuits.circuits.prune import PruneConfig, PruneResult, prune
from sparsecircuits.circuits.scoring import PromptSet
from sparsecircuits.model import GPT

# (field, multiplicative spread): a trial draws field * spread ** U(-1, 1)
SPREAD = {"k_coef": 10.0, "lr": 3.0, "init_bias": 2.0, "temp": 3.0}
# No rung trains for fewer steps: on the shipped sparse model, eight while_return_true trials of 37 steps all
# kept 3,389-4,993 nodes (nothing pruned yet, so their ranking was noise); at 75 steps they ranged 87-4,185.
MIN_RUNG_STEPS = 75


def rung_plan(budget: int, steps: int) -> list[tuple[int, int]]:
    """(trials, steps) of each rung: successive halving from `budget` trials to one at the full `steps`, each
    rung twice as long as the one before and none under MIN_RUNG_STEPS. With fewer rungs than log2(budget)
    allows, each keeps a larger share (the best 1/eta, eta = budget^(1 / rungs)); with none, every setting
    runs in full."""
    if budget <= 1:
        return [(1, steps)]
    n = min(math.ceil(math.log2(budget)), int(math.log2(max(1.0, steps / MIN_RUNG_STEPS))))
    if n == 0:
        return [(budget, steps)]
    eta = budget ** (1 / n)
    trials = [max(1, math.ceil(budget / eta**r - 1e-9)) for r in range(n)] + [1]
    return [(t, max(1, steps // 2 ** (n - r))) for r, t in enumerate(trials)]


def propose(base: PruneConfig, trial: int, rng: random.Random) -> PruneConfig:
    """The config of one trial: the base for trial 0, else a log-uniform draw around it."""
    if trial == 0:
        return base
    changes = {f: getattr(base, f) * s ** rng.uniform(-1, 1) for f, s in SPREAD.items()}
    changes["init_bias"] = min(changes["init_bias"], 0.9)
    return dataclasses.replace(base, seed=base.seed + trial, **changes)


def _rank(res: PruneResult) -> tuple[int, float]:
    return (res.k, res.score.loss)


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
    workers: int = 1,
    held_out: PromptSet | None = None,
) -> tuple[PruneResult, list[dict]]:
    """Successive halving over `budget` settings; returns the best result and a summary row per trial.

    Rung 0 runs every setting for steps / 2^R (R = ceil(log2 budget), fewer where a rung would train for
    under MIN_RUNG_STEPS; `rung_plan`), without the clean-up, and ranks them by the bisection's circuit size
    (ties: loss); the better half is re-run with twice the steps, and so on, until the last survivor runs the
    full `base.steps` with the clean-up as configured. Survivors restart from scratch (the mask's schedule
    depends on its length), so the cost is about R + 1 full trials rather than `budget`; where a shorter trial
    bisected to fewer nodes than the final run, it is finished too (`_finish_earlier`). budget 1 is one plain
    trial with the base setting. workers, held_out: see prune.prune.
    """
    rng = random.Random(base.seed)
    survivors = [propose(base, trial, rng) for trial in range(budget)]
    plan = rung_plan(budget, base.steps)
    run = functools.partial(
        prune, model, means, train, evaluation, progress=progress, pretraining=pretraining, workers=workers
    )
    rows: list[dict] = []
    earlier: list[tuple[PruneResult, PruneConfig, int, int]] = []  # the short rungs' trials: rung, steps
    best: PruneResult | None = None
    for rung, (_, steps) in enumerate(plan):
        last = rung == len(plan) - 1
        results = []
        for cfg in survivors:
            trial_cfg = dataclasses.replace(
                cfg, steps=steps, cleanup=cfg.cleanup and last, edges=cfg.edges and last
            )
            res = run(trial_cfg, effects=last, held_out=held_out if last else None)
            results.append((res, cfg))
            rows.append(_row(len(rows), rung, steps, res, cfg))
            if budget > 1:
                log(f"  rung {rung} ({steps} steps): {_describe(res, cfg)}")
        results.sort(key=lambda rc: _rank(rc[0]))
        best = results[0][0]
        if not last:
            survivors = [cfg for _, cfg in results[: plan[rung + 1][0]]]
            earlier += [(res, cfg, rung, steps) for res, cfg in results]
    assert best is not None
    if earlier:
        best = _finish_earlier(best, earlier, rows, run, held_out, log)
    assert math.isfinite(best.score.loss)
    return best, rows


def _finish_earlier(final: PruneResult, earlier: list, rows: list[dict], run, held_out, log) -> PruneResult:
    """Longer training does not always help: at a strong penalty the gates can all close, and the ranking with
    them (a budget-8 search on while_return_true of the L0 1/64 model bisected to 24 nodes after 100 steps and
    to 3,116 when the same setting ran 200). So when a short rung's best trial bisected to fewer nodes than the
    final run, its trained gates go through the final stages too (clean-up, edge stage, held-out check; no
    more training), and the smaller finished circuit wins (ties: lower loss)."""
    res, cfg, rung, steps = min(earlier, key=lambda e: _rank(e[0]))
    final_k = final.stages["bisection"]["nodes"]
    if res.k >= final_k:
        return final
    log(
        f"  rung {rung}'s best bisected to fewer nodes ({res.k}) than the final run ({final_k}): finishing it"
    )
    done = run(dataclasses.replace(cfg, steps=steps), held_out=held_out, trained=res.mask)
    done.history = res.history
    rows.append({**_row(len(rows), rung, steps, done, cfg), "finished": True})
    log(f"  finished: {_describe(done, cfg)}")
    return min((final, done), key=_rank)


def _row(trial: int, rung: int, steps: int, res: PruneResult, cfg: PruneConfig) -> dict:
    """The circuit file's record of one trial."""
    return {
        "trial": trial,
        "rung": rung,
        "steps": steps,
        "k": res.k,
        "loss": res.score.loss,
        "seconds": round(res.seconds, 2),
        **{f: getattr(cfg, f) for f in SPREAD},
    }


def _describe(res: PruneResult, cfg: PruneConfig) -> str:
    """One trial in a line of the search's log."""
    return f"{res.k} nodes, loss {res.score.loss:.4f} (k_coef {cfg.k_coef:.2g}, lr {cfg.lr:.2g}, temp {cfg.temp:.2g})"
