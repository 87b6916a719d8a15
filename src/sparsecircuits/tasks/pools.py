"""Shared pools of names, values and unrelated context lines, and helpers that wrap a task's lines in
realistic surroundings (module preamble, function or method scope, preceding statements).

`forbid` arguments are substrings that a task keeps out of its context, so that context lines never carry
the task's cue or its answer (e.g. no brackets around bracket_counting, no quotes around single_double_quote).
Everything here is private to the task suite: pretraining data must not be generated from these templates.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IMPORTS = (
    "import os",
    "import sys",
    "import json",
    "import re",
    "import math",
    "import time",
    "import logging",
    "import random",
    "import argparse",
    "import itertools",
    "import subprocess",
    "from pathlib import Path",
    "from collections import defaultdict",
    "from collections import Counter",
    "from typing import Optional",
    "from dataclasses import dataclass",
    "from functools import lru_cache",
)
MODULE_DOCS = (
    '"""Helpers for the command line tool."""',
    '"""Small utilities for working with files."""',
    '"""Parse and summarize log records."""',
    '"""Simple statistics over lists of numbers."""',
    '"""Tools for cleaning up user input."""',
    '"""Scheduling of background jobs."""',
    '"""Inventory bookkeeping for the shop."""',
    "# utils.py",
    "# -*- coding: utf-8 -*-",
    "#!/usr/bin/env python3",
)
CONSTANTS = (
    "DEBUG = False",
    "VERBOSE = True",
    "MAX_RETRIES = 3",
    "DEFAULT_TIMEOUT = 30",
    "BATCH_SIZE = 64",
    "VERSION = 2",
    "logger = logging.getLogger(__name__)",
    "ROOT = Path(__file__).parent",
    "LIMIT = 100",
    "SEED = 1234",
)
FUNC_DOCS = (
    '"""Return the processed records."""',
    '"""Compute summary statistics."""',
    '"""Update the running totals."""',
    '"""Handle one request."""',
    '"""Clean up the given values."""',
    '"""Build the lookup table."""',
    "# TODO: add error handling",
    "# fast path for small inputs",
)

# Single-line statements that can sit anywhere in a function body. Multi-line snippets use "\n" plus
# a relative four-space indent.
STATEMENTS = (
    "count = 0",
    "total = 0",
    "result = None",
    "results = []",
    "cache = {}",
    "index = 0",
    "offset = 0",
    "limit = 100",
    "step = 1",
    "done = False",
    "verbose = False",
    "timeout = 30",
    "size = max(size, 1)",
    "name = name.strip()",
    "text = text.lower()",
    "value = float(value)",
    "start = time.time()",
    "path = os.path.abspath(path)",
    "n = len(items)",
    "items = list(items)",
    "data = json.loads(text)",
    "parts = line.split()",
    'parts = line.split(",")',
    "key = key.lower()",
    'logger.debug("starting")',
    "print(len(items))",
    "assert size > 0",
    "random.shuffle(items)",
    "counts = defaultdict(int)",
    "buffer = []",
    "retries = MAX_RETRIES",
    "scale = 1.0 / size",
    "# skip empty input",
    "# normalize first",
    "if not items:\n    return None",
    "if size < 0:\n    raise ValueError(size)",
    "if verbose:\n    print(count)",
    "while index < limit:\n    index += step",
    "try:\n    value = int(text)\nexcept ValueError:\n    value = 0",
)
CLASS_DOCS = (
    '"""A small container for settings."""',
    '"""Keeps track of one job."""',
    '"""A node in the tree."""',
    "# plain data holder",
)

FUNC_NAMES = tuple(
    "process main run update handle collect summarize transform validate merge render compute clean build_index count_words parse_line apply check".split()
)
CLASS_NAMES = tuple(
    "Config Parser Cache Node Record Session Point Rect User Item Buffer Counter Job Vector Account Player".split()
)
# (collection, element) names for loops.
COLLECTIONS = (
    ("items", "item"),
    ("values", "value"),
    ("names", "name"),
    ("records", "record"),
    ("rows", "row"),
    ("lines", "line"),
    ("words", "word"),
    ("tokens", "token"),
    ("paths", "path"),
    ("users", "user"),
    ("nodes", "node"),
    ("entries", "entry"),
    ("scores", "score"),
    ("keys", "key"),
    ("parts", "part"),
    ("events", "event"),
    ("tasks", "task"),
    ("files", "f"),
    ("numbers", "n"),
    ("data", "x"),
)


def allowed(pool: Sequence[str], forbid: Iterable[str] = ()) -> tuple[str, ...]:
    """The entries of `pool` that contain none of the `forbid` substrings."""
    return _allowed(tuple(pool), tuple(forbid))


@functools.cache
def _allowed(pool: tuple[str, ...], forbid: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(s for s in pool if not any(f in s for f in forbid))


def indent(snippet: str, ind: str) -> str:
    """Indent every line of a (possibly multi-line) snippet by `ind`; returns text ending in a newline."""
    return "".join(ind + line + "\n" for line in snippet.split("\n"))


def statements(rng: random.Random, k: int, ind: str, forbid: Iterable[str] = ()) -> str:
    """`k` distinct unrelated statements at indentation `ind` (may be empty)."""
    pool = allowed(STATEMENTS, forbid)
    return "".join(indent(s, ind) for s in rng.sample(pool, min(k, len(pool))))


def maybe(rng: random.Random, p: float, pool: Sequence[str], forbid: Iterable[str] = ()) -> str | None:
    """With probability `p`, one allowed entry of `pool`; else None."""
    pool = allowed(pool, forbid)
    return rng.choice(pool) if pool and rng.random() < p else None


def preamble(rng: random.Random, forbid: Iterable[str] = ()) -> str:
    """An optional module header: docstring or comment, imports, a constant. Ends in a blank line or is ""."""
    forbid = tuple(forbid)
    blocks: list[str] = []
    doc = maybe(rng, 0.3, MODULE_DOCS, forbid)
    if doc:
        blocks.append(doc + "\n")
    imports = allowed(IMPORTS, forbid)
    k = rng.choice((0, 0, 1, 2, 3))
    if k:
        blocks.append("".join(line + "\n" for line in sorted(rng.sample(imports, k))))
    const = maybe(rng, 0.25, CONSTANTS, forbid)
    if const:
        blocks.append(const + "\n")
    return "".join(b + "\n" for b in blocks)


def params(rng: random.Random, k: int, exclude: Iterable[str] = ()) -> list[str]:
    """`k` distinct parameter names from the collection pools, none in `exclude`."""
    pool = [c for pair in COLLECTIONS for c in pair if c not in set(exclude) and len(c) > 1]
    return rng.sample(pool, k)


@dataclass(frozen=True)
class Scope:
    """Where a task's lines go: `header` (text ending in a newline, may be "") and the indent inside it."""

    header: str
    ind: str


def scope(
    rng: random.Random,
    forbid: Iterable[str] = (),
    kinds: Sequence[str] = ("module", "function", "function", "method", "loop"),
    args: Sequence[str] = (),
    n_statements: tuple[int, int] = (0, 2),
) -> Scope:
    """A random enclosing scope: module level, a function body, a method body or a loop body.

    `args` are extra parameter names the enclosing function takes (e.g. a collection the task loops over).
    Includes a preamble and up to `n_statements` unrelated statements just before the task's lines.
    """
    forbid = tuple(forbid)
    kind = rng.choice(kinds)
    head = preamble(rng, forbid)
    k = rng.randint(*n_statements)
    if kind == "module":
        return Scope(head + statements(rng, k, "", forbid), "")
    arglist = ", ".join(args) if args else ", ".join(params(rng, rng.randint(0, 2)))
    if kind == "method":
        cls = f"class {rng.choice(CLASS_NAMES)}:\n"
        doc = maybe(rng, 0.3, CLASS_DOCS, forbid)
        cls += indent(doc, "    ") if doc else ""
        sig = f"self, {arglist}" if arglist else "self"
        head += cls + f"    def {rng.choice(FUNC_NAMES)}({sig}):\n"
        ind = "        "
    else:
        head += f"def {rng.choice(FUNC_NAMES)}({arglist}):\n"
        ind = "    "
    doc = maybe(rng, 0.3, FUNC_DOCS, forbid)
    head += indent(doc, ind) if doc else ""
    if kind == "loop":
        coll, elem = rng.choice(COLLECTIONS)
        head += statements(rng, rng.randint(0, 1), ind, forbid) + f"{ind}for {elem} in {coll}:\n"
        ind += "    "
    return Scope(head + statements(rng, k, ind, forbid), ind)
