"""Task loss, accuracy and logit difference of a model on the task suite.

Task loss (PAPER.md section 6): binary cross-entropy between the correct and the wrong candidate token, from
their two logits at each prompt's last position. With d = z_correct - z_wrong a prompt's loss is softplus(-d).
Two conventions (`LOSS_CONVENTIONS`): "pair-sum", the default and the paper authors' release, sums the loss of
the two prompts of a pair and averages over pairs, i.e. twice the per-prompt mean (chance: 2 ln 2 = 1.386), so
`--target-loss 0.15` means what the paper means; "mean" averages over prompts (chance ln 2; this project's
convention before version 0.2). Accuracy counts d > 0 as right and a tie d == 0 as half right.

Batching: prompts are right-padded to a common length and the logits are read at each prompt's own last
index. With causal attention, padding after a position cannot change the logits at that position.
Prompts start with the tokenizer's end-of-text token when it has one: in the pretraining stream every
file follows one, and the prompts look like the start of a file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor

from sparsecircuits.data.tokenizer import EOT
from sparsecircuits.errors import UserError
from sparsecircuits.model.gpt import GPT
from sparsecircuits.tasks.base import Pair, Prompt, Task
from sparsecircuits.tasks.registry import get_task
from sparsecircuits.tasks.tokens import check_tokenizer

Model = Callable[[Tensor], Tensor]  # LongTensor [B, T] -> logits [B, T, V]


@dataclass
class TaskBatch:
    """The tokenised prompts of one task: pair i gives rows 2i (positive) and 2i + 1 (negative).

    tokens: LongTensor [N, T_max], right-padded with token 0; last: [N] index of each prompt's last token;
    correct, wrong: [N] candidate token ids; pair: [N] pair index.
    """

    tokens: Tensor
    last: Tensor
    correct: Tensor
    wrong: Tensor
    pair: Tensor

    def __len__(self) -> int:
        return len(self.last)


def _single_id(tokenizer: Tokenizer, s: str) -> int:
    ids = tokenizer.encode(s, add_special_tokens=False).ids
    assert len(ids) == 1, s  # check_tokenizer has run
    return ids[0]


def _encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def _check_boundaries(task: Task, prompts: list[Prompt], ids: list[list[int]], tokenizer: Tokenizer) -> None:
    """Each candidate must be exactly the next token after the prompt's own tokens."""
    for field in ("correct", "wrong"):
        extended = _encode(tokenizer, [p.text + getattr(p, field) for p in prompts])
        for p, base, ext in zip(prompts, ids, extended):
            if ext[:-1] != base or len(ext) != len(base) + 1:
                raise UserError(
                    f"task {task.name}: the tokenizer does not end {p.text[-20:]!r} + {getattr(p, field)!r} "
                    "with one new token; it does not use the pre-tokenizer the tasks were written for"
                )


def encode_task(
    task: Task | str,
    tokenizer: Tokenizer,
    n_pairs: int,
    split: str = "val",
    seed: int = 0,
    n_ctx: int = 256,
) -> TaskBatch:
    """Generate `n_pairs` pairs of `task` and tokenise their 2 * n_pairs prompts into a TaskBatch."""
    task = get_task(task)
    return encode_pairs(task, task.pairs(n_pairs, split, seed), tokenizer, n_ctx)


def encode_pairs(task: Task, pairs: list[Pair], tokenizer: Tokenizer, n_ctx: int = 256) -> TaskBatch:
    """Tokenise given pairs of `task` (e.g. tasks/stress.py's variants) into a TaskBatch, as encode_task."""
    check_tokenizer(tokenizer, [task])
    prompts = [p for pair in pairs for p in (pair.pos, pair.neg)]
    ids = _encode(tokenizer, [p.text for p in prompts])
    _check_boundaries(task, prompts, ids, tokenizer)
    eot = tokenizer.token_to_id(EOT)
    if eot is not None:
        ids = [[eot, *row] for row in ids]
    longest = max((len(row) for row in ids), default=1)
    if longest > n_ctx:
        raise UserError(f"task {task.name}: a prompt has {longest} tokens, more than n_ctx = {n_ctx}")
    tokens = torch.zeros(len(ids), max(longest, 1), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row)
    return TaskBatch(
        tokens=tokens,
        last=torch.tensor([len(row) - 1 for row in ids], dtype=torch.long),
        correct=torch.tensor([_single_id(tokenizer, p.correct) for p in prompts], dtype=torch.long),
        wrong=torch.tensor([_single_id(tokenizer, p.wrong) for p in prompts], dtype=torch.long),
        pair=torch.arange(len(prompts), dtype=torch.long) // 2,
    )


def _device(model: Model) -> torch.device:
    try:
        return next(model.parameters()).device  # type: ignore[attr-defined]
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def candidate_logits(model: Model, batch: TaskBatch, chunk: int = 256) -> Tensor:
    """Logits of (correct, wrong) at each prompt's last position: float32 [N, 2].

    Runs `chunk` prompts per forward, each chunk cut to its longest prompt. Keeps the autograd graph when
    called with gradients enabled (pruning); wrap in torch.no_grad() for plain evaluation.
    """
    device = _device(model)
    # a GPT without hooks runs its last block at the last positions only (GPT.forward's `narrow`)
    narrow = {"narrow": True} if isinstance(model, GPT) and not model.hooked else {}
    out = []
    for start in range(0, len(batch), chunk):
        rows = slice(start, start + chunk)
        last = batch.last[rows].to(device)
        at_last = model(batch.tokens[rows, : int(last.max()) + 1].to(device), at=last, **narrow)  # [b, V]
        ids = torch.stack([batch.correct[rows], batch.wrong[rows]], dim=1).to(device)  # [b, 2]
        out.append(at_last.gather(1, ids).float())
    return torch.cat(out) if out else torch.zeros(0, 2)


LOSS_CONVENTIONS = ("pair-sum", "mean")
DEFAULT_CONVENTION = "pair-sum"
_PROMPTS_PER_UNIT = {"pair-sum": 2.0, "mean": 1.0}  # prompts summed per unit the loss is averaged over


def check_convention(convention: str) -> str:
    """The convention name, or a UserError naming the choices."""
    if convention not in _PROMPTS_PER_UNIT:
        raise UserError(f"unknown loss convention {convention!r}; choose {' or '.join(LOSS_CONVENTIONS)}")
    return convention


def chance_loss(convention: str = DEFAULT_CONVENTION) -> float:
    """The loss of a model that cannot tell the candidates apart (d = 0): ln 2 per prompt."""
    return _PROMPTS_PER_UNIT[check_convention(convention)] * math.log(2.0)


def logit_diff_loss(diff: Tensor, convention: str = DEFAULT_CONVENTION) -> Tensor:
    """Binary cross-entropy from d = z_correct - z_wrong under `convention`. diff: [N] -> scalar.

    "mean": softplus(-d).mean(); "pair-sum": the sum over each pair's two prompts, averaged over pairs,
    which is 2 * softplus(-d).mean() (for unpaired prompts, as mined from real code, the same per-pair scale).
    """
    return _PROMPTS_PER_UNIT[check_convention(convention)] * F.softplus(-diff).mean()


def accuracy(diff: Tensor) -> float:
    """Fraction of prompts with d > 0; a tie d == 0 counts one half. diff: [N]."""
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def task_metrics(cand_logits: Tensor, convention: str = DEFAULT_CONVENTION) -> dict[str, float]:
    """loss (binary CE under `convention`), acc (ties count 1/2), logit_diff (mean z_correct - z_wrong), n.

    cand_logits: [N, 2], column 0 the correct and column 1 the wrong candidate.
    """
    diff = (cand_logits[:, 0] - cand_logits[:, 1]).double()
    return {
        "loss": float(logit_diff_loss(diff, convention)),
        "acc": accuracy(diff),
        "logit_diff": float(diff.mean()),
        "n": len(diff),
        "loss_convention": convention,
    }


@torch.no_grad()
def evaluate_task(
    model: Model,
    tokenizer: Tokenizer,
    task: Task | str,
    n_pairs: int = 256,
    split: str = "val",
    seed: int = 0,
    chunk: int = 256,
    convention: str = DEFAULT_CONVENTION,
) -> dict:
    """Task metrics of `model` (in eval mode) on `n_pairs` pairs of `task`: task_metrics plus task, split."""
    task = get_task(task)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", 256)
    batch = encode_task(task, tokenizer, n_pairs, split, seed, n_ctx=n_ctx)
    metrics = task_metrics(candidate_logits(model, batch, chunk), convention)
    return {"task": task.name, "split": split, "n_pairs": n_pairs, **metrics}
