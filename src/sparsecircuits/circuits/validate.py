"""Is the circuit sufficient and necessary? Sufficiency, necessity, a random baseline and a resample test."""

from __future__ import annotations

import torch

from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.prune import Evaluator
from sparsecircuits.circuits.scoring import PromptSet
from sparsecircuits.model import GPT


def random_like(mask: NodeMask, gates: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """As many random nodes per location as `gates` keeps there. Returns [n_nodes] 0/1."""
    out = torch.zeros_like(gates)
    for (a, b), g in zip(zip(mask.offsets[:-1], mask.offsets[1:]), mask.split(gates).values()):
        n = int(g.sum())
        if n:
            out[a + torch.randperm(b - a, generator=gen)[:n]] = 1.0
    return out


@torch.no_grad()
def validate(
    model: GPT,
    means: dict[str, torch.Tensor],
    gates: torch.Tensor,
    prompts: PromptSet,
    calibrated: bool = True,
    n_random: int = 5,
    seed: int = 0,
) -> dict:
    """Score the circuit `gates` four ways on `prompts` (see docs/formats.md, "validation").

    sufficiency: only the circuit kept, everything else mean-ablated. necessity: only the circuit
    mean-ablated in the full model (expected near or above chance, ln 2 = 0.69). random: as many random
    nodes per location kept (mean and std over n_random draws). resample: nodes outside the circuit take
    their values from other prompts of the task instead of the mean (in the spirit of causal scrubbing).
    """
    widths = {loc: model.location_width(loc) for loc in model.node_locations()}
    mean_mask = NodeMask(widths, means, "mean")
    evaluate = Evaluator(model, mean_mask, prompts, calibrated, seed)
    gen = torch.Generator().manual_seed(seed)
    randoms = [evaluate(random_like(mean_mask, gates, gen)) for _ in range(n_random)]
    losses = torch.tensor([r.loss for r in randoms])
    resample = Evaluator(model, NodeMask(widths, None, "resample"), prompts, calibrated, seed)
    return {
        "sufficiency": evaluate(gates).to_json(),
        "necessity": evaluate(1.0 - gates).to_json(),
        "random": {
            "loss": float(losses.mean()),
            "std": float(losses.std()) if n_random > 1 else 0.0,
            "n": n_random,
            "losses": losses.tolist(),
        },
        "resample": resample(gates).to_json(),
        "full_model": evaluate(torch.ones_like(gates)).to_json(),
        "chance": 0.6931471805599453,
    }
