"""Stressed variants of a task's pairs: inputs that a circuit's mechanism says the model should get wrong.

A stress kind takes the normal pairs of a task (`Task.pairs`, unchanged) and inserts material into each
prompt at one place, with a knob `level` (0 = nothing inserted = the normal prompts). The answer tokens are
kept: a stressed prompt has the same correct and wrong completion as its normal prompt, and removing the
inserted string gives the normal text back. The kinds follow the paper's adversarial tests (PAPER.md 9):

- bracket_counting / dilute (Fig 8): `level` more elements at the end of the list. Prediction: the nesting
  signal is an attention average over the `[` tokens, so more non-bracket tokens dilute it and nested lists
  get the flat answer `]` while flat lists stay right.
- bracket_counting / distract (Fig 5): `level` comment lines with an unmatched `[` (`# careful: [`) before
  the statement. Prediction: the extra `[` raise the averaged signal, so flat lists get `]]`.
- single_double_quote / distract: `level` closed strings of the OTHER quote type on the lines before the call
  (`print('done')` before `msg = ("...`). Prediction: the closing-quote head attends to quote openers and
  copies their type, so other-type openers pull the answer to the wrong quote.
- single_double_quote / same: the control, closed strings of the SAME type; predicted not to hurt.

Within a pair both prompts get the same material, except that a quote kind's quote character follows each
prompt's own opener (so the two prompts of a stressed quote pair differ in the cue and the quote character).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sparsecircuits.errors import UserError
from sparsecircuits.tasks.base import Pair, Prompt, _hash_int
from sparsecircuits.tasks.registry import get_task
from sparsecircuits.tasks.suite import ELEMENTS, _message

MAX_LEVEL = 256
DRAW_FACTOR = 4  # normal pairs looked at per pair kept by fitting_pairs
DISTRACT_CALLS = ("print", "logger.info", "lines.append", "click.echo", "warnings.warn", "errors.append")
# Unmatched `[` in comments, followed by a word: `[` before a line end is the different pre-token `[\n`.
BRACKET_COMMENTS = (
    "# careful: [ see below",
    "# see [ above",
    "# shape: [ rows",
    "# TODO: [ check",
    "# note: [ ok",
)

Material = Callable[[Prompt, int, random.Random], tuple[int, str]]  # (prompt, level, rng) -> (at, inserted)


@dataclass(frozen=True)
class StressKind:
    """One stress kind of one task: `material` says where and what to insert at a level."""

    task: str
    name: str
    prediction: str
    material: Material


@dataclass(frozen=True)
class Stressed:
    """A stressed prompt: `prompt.text == base.text[:at] + inserted + base.text[at:]`."""

    base: Prompt
    prompt: Prompt
    at: int
    inserted: str


def _last_line(text: str) -> tuple[int, str]:
    """(start offset, indentation) of the prompt's last line, where inserted lines go."""
    start = text.rfind("\n") + 1
    line = text[start:]
    return start, line[: len(line) - len(line.lstrip(" "))]


def _quote_lines(same: bool) -> Material:
    def material(p: Prompt, level: int, rng: random.Random) -> tuple[int, str]:
        own = p.correct[0]  # `")\n` or `')\n`: the opener's quote
        q = own if same else {'"': "'", "'": '"'}[own]
        at, ind = _last_line(p.text)
        lines = [f"{ind}{rng.choice(DISTRACT_CALLS)}({q}{_message(rng)}{q})\n" for _ in range(level)]
        return at, "".join(lines)

    return material


def _dilute(p: Prompt, level: int, rng: random.Random) -> tuple[int, str]:
    return len(p.text), "".join(", " + rng.choice(ELEMENTS) for _ in range(level))


def _bracket_comments(p: Prompt, level: int, rng: random.Random) -> tuple[int, str]:
    at, ind = _last_line(p.text)
    return at, "".join(f"{ind}{rng.choice(BRACKET_COMMENTS)}\n" for _ in range(level))


KINDS: tuple[StressKind, ...] = (
    StressKind(
        "bracket_counting",
        "dilute",
        "more elements dilute the averaged `[` signal: nested lists get `]`, flat lists stay right",
        _dilute,
    ),
    StressKind(
        "bracket_counting",
        "distract",
        "comment lines with an unmatched `[` raise the averaged `[` signal: flat lists get `]]`",
        _bracket_comments,
    ),
    StressKind(
        "single_double_quote",
        "distract",
        "closed strings of the other quote type pull the copied quote type: the wrong quote closes",
        _quote_lines(same=False),
    ),
    StressKind(
        "single_double_quote",
        "same",
        "control: closed strings of the same quote type; predicted not to hurt",
        _quote_lines(same=True),
    ),
)


def get_kind(task: str, kind: str) -> StressKind:
    """The stress kind `kind` of `task`, or a UserError naming the tasks and kinds there are."""
    name = get_task(task).name
    for k in KINDS:
        if (k.task, k.name) == (name, kind):
            return k
    have = sorted({k.name for k in KINDS if k.task == name})
    if not have:
        tasks = ", ".join(dict.fromkeys(k.task for k in KINDS))
        raise UserError(f"task {name} has no stress kinds; tasks with some: {tasks}")
    raise UserError(f"unknown stress kind {kind!r} for {name}; choose {' or '.join(have)}")


def check_levels(levels: list[int]) -> list[int]:
    """Sorted distinct levels with 0 (the normal prompts) first; each in [0, MAX_LEVEL]."""
    bad = [v for v in levels if not 0 <= v <= MAX_LEVEL]
    if bad:
        raise UserError(f"stress level {bad[0]} out of range; levels are 0..{MAX_LEVEL}")
    return sorted({0, *levels})


def parse_levels(text: str) -> list[int]:
    """`"0,8,16"` -> [0, 8, 16] (checked by check_levels); a UserError for anything else."""
    try:
        levels = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--levels wants comma-separated integers like 0,8,16, not {text!r}") from None
    return check_levels(levels)


def _stress_prompt(p: Prompt, kind: StressKind, level: int, rng: random.Random) -> Stressed:
    at, inserted = kind.material(p, level, rng)
    text = p.text[:at] + inserted + p.text[at:]
    return Stressed(p, Prompt(text, p.correct, p.wrong, p.closing), at, inserted)


def stress_pairs(
    pairs: list[Pair], kind: StressKind, level: int, seed: int = 0
) -> list[tuple[Stressed, Stressed]]:
    """Each pair stressed at `level`. A pair's material comes from an rng keyed by its texts (so it does not
    depend on which other pairs are in the list); it is the same for the pair's two prompts and a prefix of
    the material of any higher level (levels nest)."""
    out = []
    for pair in pairs:
        key = f"stress/{kind.task}/{kind.name}/{seed}/{pair.pos.text}\x00{pair.neg.text}"
        pos, neg = (
            _stress_prompt(p, kind, level, random.Random(_hash_int(key))) for p in (pair.pos, pair.neg)
        )
        out.append((pos, neg))
    return out


def fitting_pairs(
    kind: StressKind,
    max_level: int,
    n_pairs: int,
    split: str = "val",
    seed: int = 0,
    fits: Callable[[str], bool] = lambda text: True,
) -> list[Pair]:
    """The first `n_pairs` of the task's normal pairs (Task.pairs order) whose prompts still `fit` when
    stressed at `max_level` (a model's context is short; a dilution makes prompts long). Looks at up to
    DRAW_FACTOR * n_pairs pairs; a UserError when fewer fit. When all fit this is Task.pairs(n_pairs)."""
    task = get_task(kind.task)

    def fitting(pairs: list[Pair]) -> list[Pair]:
        stressed = stress_pairs(pairs, kind, max_level, seed)
        return [pair for pair, (p, n) in zip(pairs, stressed) if fits(p.prompt.text) and fits(n.prompt.text)]

    first = task.pairs(n_pairs, split, seed)  # a prefix of the longer draw below (same rng sequence)
    if len(fitting(first)) == n_pairs:
        return first
    drawn = task.pairs(DRAW_FACTOR * n_pairs, split, seed)
    kept = fitting(drawn)
    if len(kept) < n_pairs:
        raise UserError(
            f"{kind.task} {kind.name}: only {len(kept)} of {len(drawn)} pairs fit the model's context at level "
            f"{max_level}; lower the levels or --n-pairs"
        )
    return kept[:n_pairs]


def stressed_task_pairs(
    task: str, kind: str, level: int, n_pairs: int, split: str = "val", seed: int = 0
) -> list[tuple[Stressed, Stressed]]:
    """`n_pairs` normal pairs of `task` (Task.pairs) stressed by `kind` at `level`."""
    k = get_kind(task, kind)
    return stress_pairs(get_task(k.task).pairs(n_pairs, split, seed), k, check_levels([level])[-1], seed)


def evaluate_stress(
    model,
    tokenizer,
    task: str,
    kind: str,
    levels: list[int],
    n_pairs: int = 128,
    split: str = "val",
    seed: int = 0,
    convention: str = "pair-sum",
) -> list[dict]:
    """Per level (0 = the normal prompts first): task metrics of `model` on the stressed pairs, plus
    `acc_by_answer` (accuracy of the prompts whose correct completion is each candidate) and `flipped` (the
    fraction of prompts right at level 0 and wrong at this level)."""
    import torch

    from sparsecircuits.data.tokenizer import EOT
    from sparsecircuits.tasks.evaluate import candidate_logits, encode_pairs, task_metrics

    k, levels = get_kind(task, kind), check_levels(levels)
    task_obj = get_task(k.task)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", 256)
    eot = 1 if tokenizer.token_to_id(EOT) is not None else 0  # encode_pairs prefixes it

    def fits(text: str) -> bool:
        return len(tokenizer.encode(text, add_special_tokens=False).ids) + eot <= n_ctx

    pairs = fitting_pairs(k, levels[-1], n_pairs, split, seed, fits)
    rows, normal_right = [], None
    for level in levels:
        stressed = [Pair(p.prompt, n.prompt) for p, n in stress_pairs(pairs, k, level, seed)]
        batch = encode_pairs(task_obj, stressed, tokenizer, n_ctx)
        with torch.no_grad():
            logits = candidate_logits(model, batch)
        diff = (logits[:, 0] - logits[:, 1]).double()
        right = diff > 0
        normal_right = right if normal_right is None else normal_right
        answers = [p.correct for pair in stressed for p in (pair.pos, pair.neg)]
        by_answer = {
            c: float(right[[a == c for a in answers]].double().mean())
            for c in task_obj.candidates
            if c in answers
        }
        rows.append(
            {
                "level": level,
                **task_metrics(logits, convention),
                "acc_by_answer": by_answer,
                "flipped": float((normal_right & ~right).double().mean()),
            }
        )
    return rows
