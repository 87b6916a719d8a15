"""The shared beginning of many gated forwards: recorded once, resumed from (pruning speed, issue 15).

The clean-up and the per-node removal effects score many gate vectors that each differ from one circuit in a
single node. Every forward before that node's block half is the same for all of them, so it runs once per
circuit (`record_prefix`) and each candidate resumes from the residual stream stored at the latest point
before its first changed node (GPT.forward's `resume`); the scores are bit-identical to full forwards
(tests/test_prefix.py). On the shipped two-layer model a forward resumed at `1.resid_in` costs about a
quarter of a full one, at `0.resid_mid` about two thirds.

Resume points: every block's `resid_in` but the first (that would save only the embedding) and every block's
`resid_mid` but the last one's (the narrowed last block computes its attention at one position per prompt,
which a wide recording would not reproduce bit for bit). Gate hooks act at node locations only, never there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsecircuits.circuits.folding import circuit_linears
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.model import GPT


def resume_points(model: GPT) -> list[str]:
    """The residual hook points a pruning forward can resume at, in forward order."""
    n = model.cfg.n_layer
    points = []
    for layer in range(n):
        if layer > 0:
            points.append(f"{layer}.resid_in")
        if layer < n - 1:
            points.append(f"{layer}.resid_mid")
    return points


@dataclass
class Prefix:
    """One circuit's residual stream at the resume points, per length bucket of one PromptSet."""

    gates: Tensor  # [n_nodes] the circuit it was recorded under
    prompts: object  # the scoring.PromptSet it was recorded on (checked by identity)
    points: list[str]
    node_point: Tensor  # [n_nodes] per node, the index in `points` of the latest point before it (-1: none)
    resid: list[dict[str, Tensor]]  # per length bucket: point -> the residual arriving there [n, T, d_model]

    def resume(self, gates: Tensor) -> str | None:
        """The latest point before the first node where `gates` [n_nodes] differs from the recorded circuit
        (with no difference, the last point); None when the forward must start at the beginning."""
        changed = torch.nonzero(gates.to(self.gates.device) != self.gates).flatten()
        first = int(changed[0]) if len(changed) else len(self.gates) - 1
        i = int(self.node_point[first])
        return self.points[i] if i >= 0 else None


def record_prefix(
    model: GPT, mask: NodeMask, gates: Tensor, prompts, base: Prefix | None = None
) -> Prefix | None:
    """Run the circuit `gates` [n_nodes] on `prompts` (a scoring.PromptSet) up to the last resume point and
    keep the residual arriving at every point; None for a model with no point (one layer). Call under
    torch.no_grad(), with any other hooks of the scores to come (closed edges) installed.

    base: the prefix of a circuit recorded under the same hooks on the same prompts; the points up to where
    `gates` first differs from it are taken from it, and only the later ones are run (after a clean-up
    removal in the last block, none)."""
    points = resume_points(model)
    if not points:
        return None
    start = base.resume(gates) if base is not None and base.prompts is prompts else None
    names = model.hook_names()
    order = [names.index(p) for p in points]
    node_point = torch.cat(
        [
            torch.full((width,), sum(o < names.index(loc) for o in order) - 1)
            for loc, width in zip(mask.locations, mask.widths)
        ]
    )
    later = points if start is None else points[points.index(start) + 1 :]
    resid = []
    for i, rows in enumerate(prompts.length_buckets()):
        seen: dict[str, Tensor] = {} if start is None else {p: base.resid[i][p] for p in points}
        if later:
            chunk = prompts.subset(rows.to(prompts.last.device))
            resume = None if start is None else (start, seen[start])
            readers = {p: functools.partial(seen.__setitem__, p) for p in later}
            # readers first: the arriving value; the circuit's linears read only its open inputs, as in scores
            with model.hooks(readers), model.hooks(mask.hooks(gates)), circuit_linears(model, mask, gates):
                model.run_with_cache(chunk.tokens, [], stop_at=later[-1], resume=resume)
        resid.append(seen)
    return Prefix(gates.detach().clone(), prompts, points, node_point, resid)
