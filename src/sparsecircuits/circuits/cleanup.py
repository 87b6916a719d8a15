"""Automatic clean-up after the bisection: drop nodes one at a time, least important first, while the circuit
still meets its target (the paper's authors did this by hand, about a researcher-day per circuit; PAPER.md 7.6).

The first pass measures every kept node's ablation effect (the validation loss with that node alone removed),
then tries the nodes in order of increasing effect, removing each one whose removal keeps the loss at or below
the target given the removals already made. Later passes take the nodes in the order of the previous pass's
effects and spend one forward per node: measured against the circuit as it stands, a node goes at once if the
circuit still meets the target without it. Passes repeat until one removes nothing: that pass measured every
node against the final circuit, so no single node can go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from sparsecircuits.circuits.scoring import Score, Target, as_target


@dataclass
class CleanupResult:
    gates: torch.Tensor  # [n_nodes] 0/1, the cleaned circuit
    score: Score  # of the cleaned circuit on the evaluation prompts
    nodes_before: int
    passes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    effects: dict[int, float] = field(default_factory=dict)  # unit -> loss without it, from the final pass

    @property
    def nodes_after(self) -> int:
        return int(self.gates.sum())


def clean_up(
    evaluate,
    gates: torch.Tensor,
    target: float | Target,
    units: torch.Tensor | None = None,
    progress: bool = True,
) -> CleanupResult:
    """Greedy removal until no single node (or tied unit) can go; at least one stays. gates: [n_nodes] 0/1
    meeting the target.

    evaluate: gates -> Score on the validation prompts (prune.Evaluator). units: [n_nodes] unit index when
    nodes are tied (tied query/key channels go together), else every node is its own unit.
    """
    t0 = time.perf_counter()
    target = as_target(target)
    units = torch.arange(len(gates)) if units is None else units.cpu()
    gates = gates.clone()
    best = evaluate(gates)
    if not target.met_by(best):
        raise ValueError(f"clean-up needs a circuit that meets its target ({best.loss:.4f}, {target})")
    before = int(gates.sum())
    passes = []

    def drop(g: torch.Tensor, u: int) -> torch.Tensor:
        g = g.clone()
        g[units == u] = 0.0
        return g

    effects: dict[int, float] = {}
    while True:
        kept_units = torch.unique(units[gates.cpu() > 0]).tolist()
        desc = f"clean-up pass {len(passes) + 1}"
        if not passes:
            bar = tqdm(kept_units, desc=desc, disable=not progress, leave=False)
            scored = sorted(((evaluate(drop(gates, u)), u) for u in bar), key=lambda su: (su[0].loss, su[1]))
            effects = {u: s.loss for s, u in scored}
            removed = 0
            for first, u in scored:
                if first.loss > target.loss:
                    break  # sorted: every later node, measured against this pass's start, fails as well
                if first.accuracy_raw < target.min_raw_accuracy:
                    continue
                candidate = drop(gates, u)
                if not candidate.any():
                    break  # a circuit keeps at least one node (a target at or above chance is met by none)
                s = evaluate(candidate) if removed else first  # against the removals already made this pass
                if target.met_by(s):
                    gates, best, removed = candidate, s, removed + 1
        else:
            order = sorted(kept_units, key=lambda u: (effects[u], u))  # least important first, last pass
            effects, removed = {}, 0
            for u in tqdm(order, desc=desc, disable=not progress, leave=False):
                candidate = drop(gates, u)
                s = evaluate(candidate)
                effects[u] = s.loss
                if target.met_by(s) and candidate.any():
                    gates, best, removed = candidate, s, removed + 1
        passes.append(
            {"pass": len(passes) + 1, "tried": len(kept_units), "removed": removed, "nodes": int(gates.sum())}
        )
        if removed == 0:
            break
    return CleanupResult(gates, best, before, passes, time.perf_counter() - t0, effects)
