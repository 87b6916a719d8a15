"""Prompts, pairs and the Task class: deterministic generation with disjoint train / val / test splits.

A task generator draws one `Draft` at a time from a `random.Random`. A draft is a pair of prompts that share
everything but a short cue: `pos.text = before + cue_pos + after` and `neg.text = before + cue_neg + after`.
The correct completion of one prompt is the wrong one of the other.

Splits. Each draft has a split key, by default `before` and `after` (the text outside the cue). A hash of the
key puts the draft in train (80%), val (10%) or test (10%); `Task.pairs` keeps drawing until it has `n`
distinct pairs of the requested split. Generators choose the key so that it is a function of either prompt's
text alone (the same text never gets two keys), so no prompt text can appear in two splits, whatever seed.

Declaring a task. `@suite.task(name, description, cue, candidates)` on its generator (see tasks/suite.py)
records a `Task`; the registry (tasks/registry.py) is built from the declared tasks, in declaration order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sparsecircuits.errors import UserError

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
MAX_DRAWS_PER_PAIR = 400  # give up (UserError) when a split cannot supply n distinct pairs


@dataclass(frozen=True)
class Prompt:
    """One prompt. The model's prediction after `text` is read; `correct` and `wrong` are single tokens.

    `closing` is code that, appended after `text + correct`, makes a complete, parseable snippet (used by
    the tests and by `tasks show`); it plays no part in evaluation.
    """

    text: str
    correct: str
    wrong: str
    closing: str = ""


@dataclass(frozen=True)
class Pair:
    """A positive and a negative prompt that differ only in the cue; `pos.correct == neg.wrong`."""

    pos: Prompt
    neg: Prompt


@dataclass(frozen=True)
class Draft:
    """One generated pair before split assignment (see the module docstring)."""

    before: str
    cue_pos: str
    cue_neg: str
    after: str
    correct_pos: str
    correct_neg: str
    closing_pos: str = ""
    closing_neg: str = ""
    key: str | None = None  # split key; None means before + after

    def split_key(self) -> str:
        return self.key if self.key is not None else f"{self.before}\x00{self.after}"

    def pair(self) -> Pair:
        pos = Prompt(
            self.before + self.cue_pos + self.after, self.correct_pos, self.correct_neg, self.closing_pos
        )
        neg = Prompt(
            self.before + self.cue_neg + self.after, self.correct_neg, self.correct_pos, self.closing_neg
        )
        return Pair(pos, neg)


def _hash_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def split_of(key: str) -> str:
    """The split ("train", "val" or "test") that a split key belongs to, by a stable hash."""
    u = _hash_int(key) / 2**64
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


@dataclass(frozen=True)
class Task:
    """One binary next-token task of the suite (PAPER.md section 6).

    candidates: every completion string the generator can produce (each must be a single token).
    max_cue_chars: bound on the characters in which a pair's two prompts differ (checked by the tests).
    """

    name: str
    description: str
    cue: str
    candidates: tuple[str, ...]
    generate: Callable[[random.Random], Draft]
    max_cue_chars: int = 12

    def pairs(self, n: int, split: str = "train", seed: int = 0) -> list[Pair]:
        """`n` distinct pairs of `split`, deterministic in (task, split, seed)."""
        check_split(split)
        rng = random.Random(_hash_int(f"{self.name}/{split}/{seed}"))
        out: list[Pair] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(MAX_DRAWS_PER_PAIR * max(n, 1)):
            if len(out) >= n:
                return out
            draft = self.generate(rng)
            if split_of(draft.split_key()) != split:
                continue
            pair = draft.pair()
            ident = (pair.pos.text, pair.neg.text)
            if ident not in seen:
                seen.add(ident)
                out.append(pair)
        if len(out) < n:
            raise UserError(f"task {self.name} produced only {len(out)} distinct {split} pairs, {n} asked")
        return out


Generator = Callable[[random.Random], Draft]


class TaskSuite:
    """Tasks in the order they are declared; `@suite.task(...)` on a generator declares one."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def task(
        self, name: str, description: str, cue: str, candidates: Iterable[str], max_cue_chars: int = 12
    ) -> Callable[[Generator], Generator]:
        """Decorator: declare the task `name` whose pairs the decorated generator draws (returned unchanged).

        description: one line for `tasks list`; cue: what differs between a pair's prompts; candidates: every
        completion the generator can produce (single tokens); max_cue_chars: see `Task`."""

        def declare(generate: Generator) -> Generator:
            if any(t.name == name for t in self.tasks):
                raise ValueError(f"task {name!r} declared twice")
            self.tasks.append(Task(name, description, cue, tuple(candidates), generate, max_cue_chars))
            return generate

        return declare
