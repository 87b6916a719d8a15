"""Automatic clean-up after the bisection: drop nodes one at a time, least important first, while the circuit
still meets its target (the paper's authors did this by hand, about a researcher-day per circuit; PAPER.md 7.6).

The first pass measures every kept node's ablation effect (the validation loss with that node alone removed),
then tries the nodes in order of increasing effect, removing each one whose removal keeps the loss at or below
the target given the removals already made. Later passes take the nodes in the order of the previous pass's
effects: measured against the circuit as it stands, a node goes at once if the circuit still meets the target
without it. Passes repeat until one removes nothing, so no single node can go from the final circuit.

Evaluations are deterministic, so a node whose removal was already scored against the circuit as it stands
(and failed) is not scored again: a pass spends a forward only on nodes scored before the last removal. With
`evaluate_many` and `width` > 1, the next `width` nodes a pass will score are scored side by side (model
replicas on separate cores, circuits/parallel.py); results computed against a circuit that a removal then
changed are dropped. Either way the removals, the final circuit and the effects are those of the plain loop.
At the end every kept node has been scored against the final circuit, so the result also says what keeps each:
the loss target, the raw-accuracy floor alone, or both (`kept_by`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    removed: list[int] = field(default_factory=list)  # the units removed, in order
    # why each kept unit could not go, counted: its removal misses the "loss", the "raw_accuracy" floor only,
    # or "both"; "last" is the one unit a circuit keeps when any removal would do
    kept_by: dict[str, int] = field(default_factory=dict)

    @property
    def nodes_after(self) -> int:
        return int(self.gates.sum())


def clean_up(
    evaluate: Callable[[torch.Tensor], Score],
    gates: torch.Tensor,
    target: float | Target,
    units: torch.Tensor | None = None,
    progress: bool = True,
    evaluate_many: Callable[[list[torch.Tensor]], list[Score]] | None = None,
    width: int = 1,
    rebase: Callable[[torch.Tensor], None] | None = None,
) -> CleanupResult:
    """Greedy removal until no single node (or tied unit) can go; at least one stays. gates: [n_nodes] 0/1
    meeting the target.

    evaluate: gates -> Score on the validation prompts (prune.Evaluator). units: [n_nodes] unit index when
    nodes are tied (tied query/key channels go together), else every node is its own unit. evaluate_many:
    scores a list of gate vectors (side by side); width: how many candidates to score at once with it.
    rebase: told the circuit as it stands at the start and after every removal (prune.Evaluator.rebase: the
    candidates' forwards then resume after the part they share with it).
    """
    t0 = time.perf_counter()
    target = as_target(target)
    units = torch.arange(len(gates)) if units is None else units.cpu()
    many = evaluate_many or (lambda gs: [evaluate(g) for g in gs])
    gates = gates.clone()
    best = evaluate(gates)
    if not target.met_by(best):
        raise ValueError(f"clean-up needs a circuit that meets its target ({best.loss:.4f}, {target})")
    before = int(gates.sum())
    if rebase is not None:
        rebase(gates)
    passes: list[dict] = []
    version = 0  # bumped at every removal
    removed_units: list[int] = []
    scored: dict[int, tuple[int, Score]] = {}  # unit -> (version it was scored against, its score)

    def drop(g: torch.Tensor, u: int) -> torch.Tensor:
        g = g.clone()
        g[units == u] = 0.0
        return g

    def current(u: int) -> bool:
        return u in scored and scored[u][0] == version

    def score_of(u: int, upcoming: list[int]) -> Score:
        """u's removal scored against the circuit as it stands, with up to width - 1 upcoming units alongside."""
        if not current(u):
            batch = [u] + [w for w in upcoming if not current(w)][: max(0, width - 1)]
            for w, s in zip(batch, many([drop(gates, w) for w in batch])):
                scored[w] = (version, s)
        return scored[u][1]

    kept_units = torch.unique(units[gates.cpu() > 0]).tolist()
    bar = tqdm(total=len(kept_units), desc="clean-up pass 1", disable=not progress, leave=False)
    for i in range(0, len(kept_units), max(1, width)):
        score_of(kept_units[i], kept_units[i + 1 :])
        bar.update(min(max(1, width), len(kept_units) - i))
    bar.close()
    first = sorted(kept_units, key=lambda u: (scored[u][1].loss, u))
    effects = {u: scored[u][1].loss for u in kept_units}  # the next pass's order
    # sorted by effect: from the first node whose removal alone fails, every later one fails as well
    candidates = []
    for u in first:
        if scored[u][1].loss > target.loss:
            break
        if scored[u][1].accuracy_raw >= target.min_raw_accuracy:
            candidates.append(u)
    order, pass_no, tried = candidates, 1, set(kept_units)
    while True:
        removed = 0
        bar = tqdm(order, desc=f"clean-up pass {pass_no}", disable=not progress, leave=False)
        for i, u in enumerate(bar):
            if not current(u):
                tried.add(u)
            s = score_of(u, order[i + 1 :])
            candidate = drop(gates, u)
            if target.met_by(s) and candidate.any():  # a circuit keeps at least one node
                gates, best, removed, version = candidate, s, removed + 1, version + 1
                scored.pop(u)
                removed_units.append(u)
                if rebase is not None:
                    rebase(gates)
        passes.append({"pass": pass_no, "tried": len(tried), "removed": removed, "nodes": int(gates.sum())})
        kept_units = torch.unique(units[gates.cpu() > 0]).tolist()
        if removed == 0:
            break  # every kept node was scored against this very circuit and failed
        if pass_no > 1:
            effects = {u: scored[u][1].loss for u in kept_units}
        # least important first, by the last pass's effects (pass 1: the measurements against its start)
        order = sorted(kept_units, key=lambda u: (effects[u], u))
        pass_no, tried = pass_no + 1, set()
    effects = {u: scored[u][1].loss for u in kept_units}
    kept_by = dict.fromkeys(("loss", "raw_accuracy", "both", "last"), 0)
    for u in kept_units:
        kept_by[_kept_by(scored[u][1], target)] += 1
    seconds = time.perf_counter() - t0
    return CleanupResult(gates, best, before, passes, seconds, effects, removed_units, kept_by)


def _kept_by(without: Score, target: Target) -> str:
    """Which part of the target a kept unit's removal (scored as `without`) misses: a key of kept_by."""
    loss, raw = without.loss > target.loss, without.accuracy_raw < target.min_raw_accuracy
    return "both" if loss and raw else "loss" if loss else "raw_accuracy" if raw else "last"


def fewest(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest j in [lo, hi] with holds(j), by bisection, taking holds(hi) as given and holds as
    monotone (a circuit with more kept is never worse)."""
    if holds(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return hi


def put_back(
    holds: Callable[[torch.Tensor], bool],
    gates: torch.Tensor,
    removed: list[int],
    units: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Put the last removed units back into the circuit `gates` [n_nodes], as few as make `holds(gates)` true
    (the held-out check, prune.HeldOut): a bisection on their number (`fewest`), the circuit with every
    removal undone taken to hold. Each circuit tried is one the clean-up passed through, so it still meets the
    target on the validation pairs. Returns (gates, units put back)."""
    units = torch.arange(len(gates)) if units is None else units.cpu()

    def with_back(b: int) -> torch.Tensor:
        if b == 0:
            return gates
        g = gates.clone()
        for u in removed[len(removed) - b :]:
            g[units == u] = 1.0
        return g

    back = fewest(lambda b: holds(with_back(b)), 0, len(removed))
    return with_back(back), back
