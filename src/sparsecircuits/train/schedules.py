"""L0 annealing and the "sharkfin" learning-rate schedule (PAPER.md 3.3, 3.4).

Everything here is a pure function of the 0-based optimizer step, so a resumed run recomputes the exact
same values and the tests can check them at chosen steps.

Step conventions (`steps` optimizer steps in total, numbered 0 .. steps-1):
- `l0_fraction(step)` is the nonzero fraction enforced *after* optimizer step `step`. Annealing is linear
  in the progress t = (step + 1) / steps, so the last annealing step lands exactly on the target and the
  final weights always have the target fraction.
- `sharkfin_lr(step)` is the learning rate used *by* optimizer step `step`. Warmup counts the current step
  (nanoGPT style), so step 0 already has a small nonzero LR instead of a wasted step with LR 0.

`fractions(cfg, step)` and `learning_rate(cfg, step)` read a run's TrainConfig; every trainer (the LM trainer
and bridge training) takes its schedules from these two.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparsecircuits.train.config import TrainConfig


def l0_fraction(step: int, steps: int, target: float, anneal_frac: float) -> float:
    """Kept fraction after optimizer step `step`: linear from 1 (dense) to `target` over the first
    `anneal_frac` of training, then constant. `anneal_frac` 0 means no annealing (target from step 0)."""
    if target >= 1.0:
        return 1.0
    anneal_steps = anneal_frac * steps
    if anneal_steps <= 0:
        return target
    t = (step + 1) / anneal_steps
    return target if t >= 1.0 else 1.0 - (1.0 - target) * t


def warmup_steps(steps: int, warmup_frac: float) -> int:
    """Number of linear-warmup steps (at least 1, so the decay formula never divides by zero)."""
    return max(1, round(warmup_frac * steps))


def lr_multiplier(step: int, steps: int, warmup_frac: float) -> float:
    """s(t): linear warmup to 1 over the first `warmup_frac` of training, then linear decay to 0.

    Warmup: s = (step + 1) / W for step < W. Decay: s = (steps - step) / (steps - W), which is 1 at step W
    and 1 / (steps - W) on the last step (the weights then stop at the value reached with LR -> 0)."""
    w = warmup_steps(steps, warmup_frac)
    if step < w:
        return (step + 1) / w
    if steps <= w:
        return 1.0
    return max(0.0, (steps - step) / (steps - w))


def sharkfin_lr(
    step: int, steps: int, lr: float, l0_target: float, anneal_frac: float, warmup_frac: float
) -> float:
    """lr(t) = lr * s(t) * sqrt(f_target) / sqrt(f(t)) (PAPER.md 3.4 implementation note).

    Sparser weights need a larger LR; the 1/sqrt(f) factor supplies it while annealing and the constant
    sqrt(f_target) makes the factor exactly 1 once the target is reached, so `lr` is the LR a model at
    the final sparsity sees. f(t) is the fraction this step's update is projected onto. For a dense run
    (target 1) this is a plain warmup-then-linear-decay schedule."""
    f = l0_fraction(step, steps, l0_target, anneal_frac)
    return lr * lr_multiplier(step, steps, warmup_frac) * math.sqrt(l0_target / f)


def quirk_fraction(step: int, steps: int, target: float, start_frac: float, ramp_steps: int) -> float:
    """`paper_quirk` schedule for embeddings, unembedding and biases (PAPER.md 3.3, A.2 bug).

    Dense until step round(start_frac * steps), then linear to `target` over `ramp_steps` steps, then
    constant. The ramp is counted like `l0_fraction`: the fraction after the last ramp step is the target."""
    if target >= 1.0:
        return 1.0
    start = round(start_frac * steps)
    if step < start:
        return 1.0
    t = (step - start + 1) / max(1, ramp_steps)
    return target if t >= 1.0 else 1.0 - (1.0 - target) * t


def fractions(cfg: TrainConfig, step: int) -> tuple[float, float | None]:
    """(main L0 fraction, `paper_quirk` fraction or None) enforced after optimizer step `step` (-1: at init)."""
    main = l0_fraction(step, cfg.steps, cfg.l0_target, cfg.anneal_frac)
    if cfg.sparsity_schedule != "paper_quirk":
        return main, None
    return main, quirk_fraction(step, cfg.steps, cfg.l0_target, cfg.quirk_start_frac, cfg.quirk_ramp_steps)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The sharkfin learning rate used by optimizer step `step` of a run with config `cfg`."""
    return sharkfin_lr(step, cfg.steps, cfg.lr, cfg.l0_target, cfg.anneal_frac, cfg.warmup_frac)
