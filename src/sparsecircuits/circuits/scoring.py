"""Task loss of a gated model on a fixed prompt set, raw and after the logit recalibration (PAPER.md 7.4).

Orientation: for each prompt, A is a fixed answer of its pair (the positive prompt's correct token) and B
the other. The model's A-vs-B logit difference d_A = z_A - z_B is what recalibration rescales: a * d_A + b.
A bias b therefore favours one *answer* for all prompts, never "the correct one", so it cannot leak the label.

The protocol (beyond the paper, which only says "a scale and shift, 16 LBFGS steps"):
- the scale is kept a >= 0, so a circuit may not flip its answers;
- a calibration is fitted on one prompt set (validation) and applied frozen to another (test);
- every score carries the raw loss and accuracy beside the calibrated ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparsecircuits.circuits.folding import circuit_linears
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.model import GPT
from sparsecircuits.tasks.evaluate import DEFAULT_CONVENTION, accuracy
from sparsecircuits.tasks.evaluate import logit_diff_loss as task_loss

if TYPE_CHECKING:
    from sparsecircuits.circuits.prefix import Prefix

LBFGS_STEPS = 16  # PAPER.md 7.4
LENGTH_BUCKETS = 4  # forwards per prompt set in gated_diff (PromptSet.length_buckets)


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
        """The prompts `rows`, padded only to their own longest."""
        last = self.last[rows]
        return PromptSet(
            self.tokens[rows, : int(last.max()) + 1],
            last,
            self.correct[rows],
            self.wrong[rows],
            self.sign[rows],
        )

    def length_buckets(self, n: int = LENGTH_BUCKETS, min_rows: int = 16) -> list[Tensor]:
        """Row indices in up to n groups of similar length (equal counts, shortest first), so a forward per
        group pads far less than one over all: half of a task batch's positions are padding otherwise."""
        n = max(1, min(n, len(self) // min_rows))
        return list(torch.argsort(self.last.cpu(), stable=True).chunk(n))


def from_task_batch(batch, a_tokens: Tensor | None = None) -> PromptSet:
    """A PromptSet from a tasks.evaluate.TaskBatch.

    A is the correct token of each pair's first prompt, or, for unpaired prompts (mined from real code),
    `a_tokens` [N]: per prompt the answer taken as A, a function of the two candidates only (never the label).
    """
    if a_tokens is None:
        pair = batch.pair
        first = torch.full((int(pair.max()) + 1,), -1, dtype=torch.long)
        order = torch.arange(len(pair))
        first.scatter_reduce_(0, pair, order, reduce="amin", include_self=False)
        a_tokens = batch.correct[first[pair]]
    sign = torch.where(batch.correct == a_tokens, 1.0, -1.0)
    tokens = batch.tokens[:, : int(batch.last.max()) + 1]  # no padding beyond the longest prompt
    return PromptSet(tokens, batch.last, batch.correct, batch.wrong, sign)


def correct_minus_wrong(
    model: GPT, prompts: PromptSet, narrow: bool = False, resume: tuple[str, Tensor] | None = None
) -> Tensor:
    """Logit of the correct minus the wrong token at each prompt's last position. Returns [N].

    narrow: the last block runs at the last positions only (GPT.forward); off for hooks that read or write
    its other positions (resample donors). resume: GPT.forward's (point, residual)."""
    at_last = model(prompts.tokens, at=prompts.last, narrow=narrow, resume=resume)  # [N, V]
    rows = torch.arange(len(prompts), device=at_last.device)
    return at_last[rows, prompts.correct] - at_last[rows, prompts.wrong]


def gated_diff(
    model: GPT,
    mask: NodeMask,
    gates: Tensor,
    prompts: PromptSet,
    donors: dict[str, Tensor] | None = None,
    prefix: Prefix | None = None,
) -> Tensor:
    """correct_minus_wrong with the node gates applied through hooks. Returns [N].

    One forward per length bucket (a prompt's logits do not depend on the padding after it: attention is
    causal and everything else acts per position), results in the prompts' order.
    donors: for the resample ablations, location -> [N, T, width] ablated values (ablations.DonorSource).
    prefix: a circuit's forward recorded on these very prompts (prefix.record_prefix, mean or zero ablation):
    the forwards resume after its part that `gates` leaves unchanged. Same result, less work.
    """
    point = None
    if prefix is not None:
        if prefix.prompts is not prompts or donors is not None:
            raise ValueError("a prefix resumes forwards on the prompts it was recorded on, without donors")
        point = prefix.resume(gates)
    parts, order = [], []
    with circuit_linears(model, mask, gates, donors):  # linears on the open inputs (circuits/folding.py)
        for i, rows in enumerate(prompts.length_buckets()):
            chunk = prompts.subset(rows.to(prompts.last.device))
            T = chunk.tokens.shape[1]
            values = None if donors is None else {k: v[rows.to(v.device), :T] for k, v in donors.items()}
            resume = None if point is None else (point, prefix.resid[i][point])
            with model.hooks(mask.hooks(gates, values)):
                parts.append(correct_minus_wrong(model, chunk, narrow=donors is None, resume=resume))
            order.append(rows)
    return torch.cat(parts)[torch.argsort(torch.cat(order)).to(parts[0].device)]


@dataclass(frozen=True)
class Target:
    """What a circuit must reach on the validation prompts: a loss (calibrated unless calibration is off), and
    optionally a raw accuracy, so that the circuit answers right before any rescaling (validate.RAW_ACCURACY_FLOOR
    is the floor a "sufficient" verdict asks of the test split)."""

    loss: float
    min_raw_accuracy: float = 0.0

    def met_by(self, s: Score) -> bool:
        return s.loss <= self.loss and s.accuracy_raw >= self.min_raw_accuracy


def as_target(target: float | Target) -> Target:
    """A bare number is a loss target with no accuracy floor."""
    return target if isinstance(target, Target) else Target(float(target))


@dataclass(frozen=True)
class Calibration:
    """The affine map a * d_A + b of the A-vs-B logit difference; a >= 0. Identity by default."""

    scale: float = 1.0
    bias: float = 0.0
    fitted_on: str = "none"  # which prompts it was fitted on ("val", ...); "none" for the identity

    def apply(self, diff: Tensor, sign: Tensor) -> Tensor:
        """Calibrated correct-minus-wrong: sign * (a * d_A + b) with d_A = sign * diff. [N] -> [N]."""
        return self.scale * diff + sign * self.bias

    def to_json(self) -> dict:
        return {"scale": self.scale, "bias": self.bias, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, d: dict | None) -> Calibration:
        d = d or {}
        return cls(float(d.get("scale", 1.0)), float(d.get("bias", 0.0)), str(d.get("fitted_on", "none")))


def _fit(d_a: Tensor, s: Tensor, scale_free: bool, steps: int) -> tuple[float, float]:
    """LBFGS on the mean logistic loss of s * (a * d_A + b); with scale_free False a is held at 0."""
    ab = torch.tensor([1.0 if scale_free else 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    free = torch.tensor([1.0 if scale_free else 0.0, 1.0], dtype=torch.float64)
    opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-s * (ab[0] * d_a + ab[1])).mean()
        loss.backward()
        ab.grad.mul_(free)  # a fixed parameter gets no gradient
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return a, b


def fit_calibration(
    diff: Tensor, sign: Tensor, fitted_on: str = "self", steps: int = LBFGS_STEPS
) -> Calibration:
    """Fit (a >= 0, b) minimising the task loss of `diff` [N] (correct-minus-wrong), orientation `sign` [N].

    The logistic loss is convex in (a, b), so when the free optimum has a < 0 the constrained optimum lies on
    a = 0: refit b alone there. Never returns a map worse than the identity (a = 1, b = 0).
    """
    d_a = (sign * diff).detach().double()
    s = sign.detach().double()
    a, b = _fit(d_a, s, True, steps)
    if a < 0:
        a, b = _fit(d_a, s, False, steps)
        a = 0.0
    fitted = Calibration(a, b, fitted_on)
    identity = Calibration(1.0, 0.0, fitted_on)
    loss = float(task_loss(fitted.apply(diff.double(), sign.double())))
    if not math.isfinite(loss) or loss > float(task_loss(diff.double())):  # never worse than no calibration
        return identity
    return fitted


@dataclass
class Score:
    """Task loss and accuracy of correct-minus-wrong differences, raw and after a calibration."""

    loss_raw: float
    accuracy_raw: float
    loss_calibrated: float
    accuracy_calibrated: float
    calibration: Calibration
    convention: str = DEFAULT_CONVENTION
    # mean raw correct-minus-wrong logit difference: how much of an answer the circuit itself gives, whatever
    # scale the calibration puts on it
    logit_diff: float = math.nan

    @property
    def loss(self) -> float:
        """The loss compared with a target: the calibrated one (equal to the raw one without calibration)."""
        return self.loss_calibrated

    def to_json(self) -> dict:
        return {
            "loss_raw": self.loss_raw,
            "accuracy_raw": self.accuracy_raw,
            "loss_calibrated": self.loss_calibrated,
            "accuracy_calibrated": self.accuracy_calibrated,
            "calibration": self.calibration.to_json(),
            "logit_diff": self.logit_diff,
        }


def score(
    diff: Tensor,
    sign: Tensor,
    convention: str = DEFAULT_CONVENTION,
    calibration: Calibration | None = None,
    fit: bool = True,
    fitted_on: str = "self",
) -> Score:
    """Score correct-minus-wrong differences [N].

    calibration: apply this frozen map; else fit one on these very prompts when `fit` (the bisection's
    validation prompts; `fitted_on` names them), else the identity (raw only).
    """
    diff = diff.detach().double()
    sign = sign.detach().double().to(diff.device)
    if calibration is None:
        calibration = fit_calibration(diff, sign, fitted_on) if fit else Calibration()
    cal = calibration.apply(diff, sign)
    return Score(
        loss_raw=float(task_loss(diff, convention)),
        accuracy_raw=accuracy(diff),
        loss_calibrated=float(task_loss(cal, convention)),
        accuracy_calibrated=accuracy(cal),
        calibration=calibration,
        convention=convention,
        logit_diff=float(diff.mean()),
    )
