"""How a pruned node is ablated: the table of strategies, chosen in one place (PAPER.md 7.1, App. E).

A strategy either freezes a node at a fixed value (its mean over pretraining tokens or over the task's training
prompts, or zero) or takes the node's value from a *clean* forward of donor inputs at the same position
(resampling): random pretraining windows (the pretraining distribution, as App. E asks of causal scrubbing) or
other prompts of the task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sparsecircuits.data.shards import gather_windows, open_tokens
from sparsecircuits.errors import UserError


@dataclass(frozen=True)
class Ablation:
    name: str
    description: str
    donors: str | None = None  # None: a fixed value per node; else "pretraining" or "task"
    means: str | None = None  # the fixed value's mean over "pretraining" tokens or the "task"'s; None: zero


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        Ablation("mean", "the node's mean over pretraining tokens (the paper's choice)", means="pretraining"),
        Ablation(
            "task-mean",
            "the node's mean over every token of the task prompts the mask trains on (a fixed value, as mean)",
            means="task",
        ),
        Ablation("zero", "zero"),
        Ablation(
            "resample",
            "the node's value at the same position of a random pretraining window (clean forward; App. E)",
            donors="pretraining",
        ),
        Ablation(
            "resample-task",
            "the node's value at the same position in another prompt of the task (clean forward)",
            donors="task",
        ),
    )
}


def get_ablation(name: str) -> Ablation:
    """The strategy called `name`, or a UserError listing the choices."""
    if name not in ABLATIONS:
        raise UserError(f"unknown ablation {name!r}; expected one of {', '.join(ABLATIONS)}")
    return ABLATIONS[name]


def task_donor_rows(last: Tensor, gen: torch.Generator) -> Tensor:
    """For each prompt a random *other* prompt at least as long (else the longest other). Returns [N] long."""
    n = len(last)
    last = last.cpu()
    donors = torch.empty(n, dtype=torch.long)
    for i in range(n):  # N is a few hundred prompts; this runs once per prompt batch
        ok = torch.nonzero((last >= last[i]) & (torch.arange(n) != i)).flatten()
        if len(ok) == 0:
            others = torch.arange(n)[torch.arange(n) != i]
            ok = others[last[others].argmax()].view(1) if len(others) else torch.tensor([i])
        donors[i] = ok[torch.randint(len(ok), (1,), generator=gen)]
    return donors


class DonorSource:
    """Donor activations for a resample ablation: clean forwards of donor inputs, read through hooks.

    pretraining: a token file (the dataset's val.bin) to draw windows from; needed for "resample".
    """

    def __init__(self, model, ablation: Ablation, pretraining: str | Path | None = None, seed: int = 0):
        self.model, self.ablation = model, ablation
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.tokens = None
        if ablation.donors == "pretraining":
            if pretraining is None:
                raise UserError(f"the {ablation.name} ablation needs pretraining data (a dataset's val.bin)")
            self.tokens = open_tokens(pretraining)

    def donor_tokens(self, tokens: Tensor, last: Tensor) -> Tensor:
        """Donor inputs shaped like `tokens` [N, T]. Returns LongTensor [N, T] on tokens' device."""
        n, t = tokens.shape
        if self.ablation.donors == "task":
            return tokens[task_donor_rows(last, self.gen).to(tokens.device)]
        if len(self.tokens) < t:
            raise UserError(f"pretraining data has {len(self.tokens)} tokens, fewer than one window of {t}")
        starts = torch.randint(0, len(self.tokens) - t + 1, (n,), generator=self.gen).numpy()
        return gather_windows(self.tokens, starts, t).to(tokens.device)

    @torch.no_grad()
    def __call__(self, tokens: Tensor, last: Tensor, locations: list[str]) -> dict[str, Tensor]:
        """Clean activations of fresh donors at `locations`: loc -> [N, T, width]."""
        donors = self.donor_tokens(tokens, last)
        return self.model.run_with_cache(donors, locations, stop_at=locations[-1])  # no unembedding needed


def make_donor_source(model, ablation: str, pretraining: str | Path | None, seed: int) -> DonorSource | None:
    """A DonorSource for a resample ablation, None for a fixed-value one."""
    strategy = get_ablation(ablation)
    return DonorSource(model, strategy, pretraining, seed) if strategy.donors else None
