"""Task loss of a gated model on a fixed prompt set, with the optional logit recalibration (PAPER.md 7.4).

Orientation: for each pair, A is the positive prompt's correct token and B the other. The model's A-vs-B
logit difference d = z_A - z_B is what recalibration rescales: a * d + b. A bias b therefore favours one
*answer* for all prompts, never "the correct one", so it cannot leak the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.model import GPT
from sparsecircuits.tasks.evaluate import logit_diff_loss as task_loss


@dataclass
class PromptSet:
    """Tokenised task prompts, right-padded. tokens [N, T]; last, correct, wrong, sign: [N]."""

    tokens: Tensor
    last: Tensor
    correct: Tensor
    wrong: Tensor
    sign: Tensor  # +1 where the correct token is the pair's A (positive prompt), -1 otherwise

    def to(self, device) -> PromptSet:
        return PromptSet(
            *(t.to(device) for t in (self.tokens, self.last, self.correct, self.wrong, self.sign))
        )

    def __len__(self) -> int:
        return len(self.last)

    def subset(self, rows: Tensor) -> PromptSet:
        return PromptSet(
            self.tokens[rows], self.last[rows], self.correct[rows], self.wrong[rows], self.sign[rows]
        )


def from_task_batch(batch) -> PromptSet:
    """A PromptSet from a tasks.evaluate.TaskBatch; A is the correct token of each pair's first prompt."""
    pair = batch.pair
    first = torch.full((int(pair.max()) + 1,), -1, dtype=torch.long)
    order = torch.arange(len(pair))
    first.scatter_reduce_(0, pair, order, reduce="amin", include_self=False)
    a_token = batch.correct[first[pair]]
    sign = torch.where(batch.correct == a_token, 1.0, -1.0)
    tokens = batch.tokens[:, : int(batch.last.max()) + 1]  # no padding beyond the longest prompt
    return PromptSet(tokens, batch.last, batch.correct, batch.wrong, sign)


def resample_donors(last: Tensor, gen: torch.Generator) -> Tensor:
    """For each prompt a random *other* prompt at least as long (else the longest other). Returns [N] long."""
    n = len(last)
    donors = torch.empty(n, dtype=torch.long)
    for i in range(n):  # N is a few hundred prompts; this runs once per evaluation set
        ok = torch.nonzero((last >= last[i]) & (torch.arange(n) != i)).flatten()
        if len(ok) == 0:
            others = torch.arange(n)[torch.arange(n) != i]
            ok = others[last[others].argmax()].view(1)
        donors[i] = ok[torch.randint(len(ok), (1,), generator=gen)]
    return donors


def correct_minus_wrong(model: GPT, prompts: PromptSet) -> Tensor:
    """Logit of the correct minus the wrong token at each prompt's last position. Returns [N]."""
    at_last = model(prompts.tokens, at=prompts.last)  # [N, V]
    rows = torch.arange(len(prompts), device=at_last.device)
    return at_last[rows, prompts.correct] - at_last[rows, prompts.wrong]


def gated_diff(
    model: GPT, mask: NodeMask, gates: Tensor, prompts: PromptSet, donors: Tensor | None = None
) -> Tensor:
    """correct_minus_wrong with the node gates applied through hooks. Returns [N]."""
    with model.hooks(mask.hooks(gates, donors)):
        return correct_minus_wrong(model, prompts)


def calibrate(diff: Tensor, sign: Tensor, steps: int = 16) -> tuple[float, float, float]:
    """Fit a * d_A + b (d_A = sign * diff) with LBFGS. Returns (loss, a, b)."""
    d_a = (sign * diff).detach().double()
    s = sign.double()
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.softplus(-s * (ab[0] * d_a + ab[1])).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = F.softplus(-s * (ab[0] * d_a + ab[1])).mean()
    if not torch.isfinite(loss) or loss > task_loss(diff.double()):  # never worse than no calibration
        return float(task_loss(diff.double())), 1.0, 0.0
    a, b = ab.detach().tolist()
    return float(loss), a, b


@dataclass
class Score:
    loss: float  # calibrated when requested, else equal to loss_uncalibrated
    loss_uncalibrated: float
    accuracy: float
    scale: float = 1.0
    bias: float = 0.0

    def to_json(self) -> dict:
        return {
            "loss": self.loss,
            "loss_uncalibrated": self.loss_uncalibrated,
            "accuracy": self.accuracy,
            "calibration": {"scale": self.scale, "bias": self.bias},
        }


def score(diff: Tensor, sign: Tensor, calibrated: bool = True) -> Score:
    """Task loss (optionally recalibrated) and accuracy from correct-minus-wrong differences [N]."""
    raw = float(task_loss(diff.double()))
    acc = float((diff > 0).float().mean())
    if not calibrated:
        return Score(raw, raw, acc)
    loss, a, b = calibrate(diff, sign)
    return Score(loss, raw, acc, a, b)
