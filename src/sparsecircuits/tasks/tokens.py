"""The tokenizer contract of the task suite.

Every completion string must be a single token. BPE merges never cross the pre-tokenizer's boundaries
(data/tokenizer.py, the paper authors' split pattern), so each must be exactly one pre-token; and at the end of
each prompt it must be the pre-token the tokenizer would actually produce there (tested for every pair).
`data build` forces REQUIRED_TOKENS into the BPE vocabulary; `check_tokenizer` verifies a trained tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer

from sparsecircuits.data.tokenizer import SPLIT_PATTERN, pre_tokenize
from sparsecircuits.errors import UserError
from sparsecircuits.tasks.base import Task
from sparsecircuits.tasks.registry import all_tasks, get_task

__all__ = ["REQUIRED_TOKENS", "SPLIT_PATTERN", "check_tokenizer", "completion_tokens", "pre_tokenize"]

# Cue tokens the paper reports as single tokens of its tokenizer (PAPER.md section 4); the
# single_double_quote circuit reads their embeddings, so we keep them whole too.
PAPER_CUE_TOKENS = ('("', "('", "],")


def completion_tokens(tasks: Iterable[Task] | None = None) -> list[str]:
    """Every candidate completion of the given tasks (default: all), without duplicates, in task order."""
    tasks = all_tasks() if tasks is None else tasks
    return list(dict.fromkeys(s for t in tasks for s in t.candidates))


REQUIRED_TOKENS: tuple[str, ...] = tuple(dict.fromkeys([*completion_tokens(), *PAPER_CUE_TOKENS]))


def _n_ids(tok: Tokenizer, s: str) -> int:
    return len(tok.encode(s, add_special_tokens=False).ids)


def check_tokenizer(tok: Tokenizer, tasks: Sequence[Task | str] | None = None) -> None:
    """Raise UserError naming the task and the string when a completion is not a single token id."""
    tasks = all_tasks() if tasks is None else [get_task(t) for t in tasks]
    missing = [(t.name, s, _n_ids(tok, s)) for t in tasks for s in t.candidates if _n_ids(tok, s) != 1]
    if missing:
        name, s, n = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"tokenizer lacks a token for task {name}: {s!r} encodes to {n} ids{more}; "
            "rebuild the data with `sparsecircuits data build` so the required tokens are forced in"
        )
