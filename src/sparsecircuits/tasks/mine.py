"""Natural instances of the tasks in real Python files (`sparsecircuits tasks mine`), and their evaluation.

A miner per task reads one file's syntax tree (`ast`) and, locally, its tokens (`tokenize`) and proposes
points where the code continues with one of the task's candidates, e.g. for for_while the end of the loop
variable in `for x in ...` (correct ` in`) or of the name in `while x:` (correct `:\\n`). The prompt is the
file's text up to that point, the correct completion is the real next text and the wrong one is the task's
other candidate for that instance (the one a generated pair would give: ` in` <-> `:\\n`).

Token boundaries. An instance is kept only when, under the project's pre-tokenizer (data/tokenizer.py), the
real text has a pre-token boundary at the prompt's end and the next pre-token is exactly the correct string,
and the prompt alone ends with the same pre-tokens (`pre_tokenize(prompt + c) == pre_tokenize(prompt) + [c]`
for both candidates, checked on the prompt's last line). BPE merges never cross pre-tokens, so any tokenizer
built on that pre-tokenizer in which the candidates are single tokens ends the prompt on a token boundary:
`print("done.")` is dropped (`.")\\n` is one pre-token), `print("done")` is kept.

Sampling. Files are visited in a fixed pseudo-random order (a hash of their relative path, after sorting), so
that a file cap samples many packages rather than the first in alphabetical order. Each file gives at most
`per_file` instances per task and correct candidate side (the task's first candidate vs the others), chosen by
a hash of their position; each side gets half of `max_per_task`, so the set is balanced like a generated
split.
Long prompts are cut to their last `max_prompt_chars` characters, at a line start; a record's `prompt_start`
is the character offset where its prompt begins in the file (0: the prompt is the start of the file).
"""

from __future__ import annotations

import ast
import hashlib
import json
import site
import sys
import sysconfig
import tokenize
import warnings
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Regex, Tokenizer, pre_tokenizers
from tqdm import tqdm

from sparsecircuits.data.corpus import (
    MAX_FILE_BYTES,
    CorpusStats,
    check_sources,
    find_python_files,
    first_copy,
    read_limited,
)
from sparsecircuits.data.tokenizer import EOT, SPLIT_PATTERN
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_text
from sparsecircuits.tasks import get_task
from sparsecircuits.tasks.evaluate import TaskBatch, candidate_logits, task_metrics
from sparsecircuits.tasks.tokens import check_tokenizer

RECORD_KEYS = ("task", "prompt", "correct", "wrong", "source")  # plus optional "prompt_start" (int)
DEFAULT_MAX_PER_TASK = 200
DEFAULT_MAX_FILES = 5000
DEFAULT_PER_FILE = 1
MAX_PROMPT_CHARS = 4096  # a 256-token model reads ~1000 characters of code; keep 4x that


# data.tokenizer.pre_tokenize, with the regex compiled once (it is called thousands of times here)
_SPLIT = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")


def pre_tokenize(text: str) -> list[str]:
    """The project's pre-tokens of `text` (as data.tokenizer.pre_tokenize)."""
    return [piece for piece, _ in _SPLIT.pre_tokenize_str(text)]


class Hit(NamedTuple):
    """A proposed instance: the prompt ends at character `offset` of the file."""

    offset: int
    correct: str
    wrong: str


class Source:
    """One parsed file: its text and syntax tree, with ast/tokenize positions turned into char offsets.

    The file is tokenised only locally, from a statement's first line on (`tokens_from`): tokenize is pure
    Python in 3.11 and would dominate the time over a whole site-packages.
    """

    def __init__(self, text: str):
        self.text = text
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes in old code
            tree = ast.parse(text)
        self.lines = text.split("\n")
        self.line_starts = [0, *accumulate(len(line) + 1 for line in self.lines[:-1])]
        self.nodes: dict[type, list] = {}
        stack: list[ast.AST] = [tree]
        while stack:  # ast.walk, without its per-node generators
            node = stack.pop()
            self.nodes.setdefault(type(node), []).append(node)
            for field in node._fields:
                value = getattr(node, field, None)
                if isinstance(value, ast.AST):
                    stack.append(value)
                elif isinstance(value, list):
                    stack.extend(v for v in value if isinstance(v, ast.AST))
        self._pieces: dict[int, str] | None = None

    def piece_starts(self) -> dict[int, str]:
        """Character offset -> the pre-token that starts there, for the whole file (computed once)."""
        if self._pieces is None:
            self._pieces, at = {}, 0
            for piece in pre_tokenize(self.text):
                self._pieces[at] = piece
                at += len(piece)
            self._piece_offsets = sorted(self._pieces)
        return self._pieces

    def piece_start_before(self, offset: int) -> int:
        """The start of the pre-token that contains `offset` (or starts there)."""
        self.piece_starts()
        return self._piece_offsets[bisect_right(self._piece_offsets, offset) - 1]

    def of(self, *kinds: type) -> list:
        return [node for kind in kinds for node in self.nodes.get(kind, [])]

    def _col(self, row: int, col_bytes: int) -> int:
        """ast columns count UTF-8 bytes; tokenize columns and our offsets count characters."""
        line = self.lines[row - 1]
        return col_bytes if line.isascii() else len(line.encode("utf-8")[:col_bytes].decode("utf-8"))

    def offset(self, row: int, col: int) -> int:
        """Character offset of a tokenize (row, column) position."""
        return self.line_starts[row - 1] + col

    def start(self, node: ast.AST) -> int:
        return self.offset(node.lineno, self._col(node.lineno, node.col_offset))

    def end(self, node: ast.AST) -> int:
        return self.offset(node.end_lineno, self._col(node.end_lineno, node.end_col_offset))

    def line_of(self, offset: int) -> int:
        """1-based line number of a character offset."""
        return bisect_right(self.line_starts, offset)

    def tokens_from(self, row: int) -> Iterator[tokenize.TokenInfo]:
        """Tokens from the start of line `row` (which must not be inside a statement), in file positions.

        Stops quietly where tokenizing a part of the file fails (an unmatched dedent, an unclosed bracket
        at its end): callers read only the first few tokens.
        """
        lines = iter(self.lines[row - 1 :])
        shift = row - 1

        def readline() -> str:
            line = next(lines, None)
            return "" if line is None else line + "\n"

        try:
            for t in tokenize.generate_tokens(readline):
                yield t._replace(start=(t.start[0] + shift, t.start[1]), end=(t.end[0] + shift, t.end[1]))
        except (tokenize.TokenError, SyntaxError):
            return

    def token_at(self, node: ast.AST) -> tokenize.TokenInfo | None:
        """The token `node` starts with (tokenized from the start of its line)."""
        at = (node.lineno, self._col(node.lineno, node.col_offset))
        for t in self.tokens_from(node.lineno):
            if t.start >= at:
                return t if t.start == at else None
        return None

    def keyword(self, node: ast.stmt) -> str | None:
        """The token a statement starts with (`if` or `elif` for an ast.If)."""
        t = self.token_at(node)
        return None if t is None else t.string


# ---- one miner per task: Source -> proposed hits (checked against the pre-tokenizer later) ----------------

QUOTES = {'"': "'", "'": '"'}


def _leading_name(test: ast.expr) -> str | None:
    """The variable a condition starts with: `x` in `x`, `x > 0`, `x is None`."""
    if isinstance(test, ast.Compare):
        test = test.left
    return test.id if isinstance(test, ast.Name) else None


def _no_params(args: ast.arguments) -> bool:
    return not (args.posonlyargs or args.args or args.vararg or args.kwonlyargs or args.kwarg)


def _is_open_call(node: ast.expr) -> bool:
    """`open(...)`, `io.open(...)`, `path.open(...)` with at least one argument."""
    if not isinstance(node, ast.Call) or not (node.args or node.keywords):
        return False
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "open") or (isinstance(f, ast.Attribute) and f.attr == "open")


def _calls(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name


def mine_single_double_quote(src: Source) -> Iterator[Hit]:
    """`f("text")` / `f('text')`, one plain one-line string argument: the prompt ends before its closing
    quote (the pre-token check keeps those where the call ends the line, `")\n`)."""
    for node in src.of(ast.Call):
        if len(node.args) != 1 or node.keywords or not isinstance(node.args[0], ast.Constant):
            continue
        arg = node.args[0]
        start, end = src.start(arg), src.end(arg)
        q = src.text[start]
        if q not in QUOTES or src.text[start - 1] != "(" or src.end(node) != end + 1:
            continue
        string = src.token_at(arg)
        if string is not None and string.type == tokenize.STRING and src.offset(*string.end) == end:
            if string.string[:3] != q * 3:  # one token (no implicit concatenation), not triple-quoted
                yield Hit(end - 1, q + ")\n", QUOTES[q] + ")\n")


def _atom(e: ast.expr) -> bool:
    if isinstance(e, ast.UnaryOp):
        e = e.operand
    return isinstance(e, ast.Constant | ast.Name | ast.Attribute)


def _flat_list(e: ast.expr) -> bool:
    return isinstance(e, ast.List) and bool(e.elts) and all(_atom(x) for x in e.elts)


def mine_bracket_counting(src: Source) -> Iterator[Hit]:
    """`x = [...]` or `return [...]` ending in a list of flat lists (`]]\n`) or a flat list (`]\n`)."""
    for stmt in src.of(ast.Assign, ast.AnnAssign, ast.Return, ast.Expr):
        node = stmt.value
        if not isinstance(node, ast.List) or not node.elts or src.end(node) != src.end(stmt):
            continue
        end = src.end(node)
        if all(_flat_list(e) for e in node.elts) and src.end(node.elts[-1]) == end - 1:
            yield Hit(end - 2, "]]\n", "]\n")
        elif _flat_list(node):
            yield Hit(end - 1, "]\n", "]]\n")


def mine_for_while(src: Source) -> Iterator[Hit]:
    """`for x` (` in`) and `while x` (`:\\n`), the loop variable / condition a plain name."""
    for node in src.of(ast.For):
        if isinstance(node.target, ast.Name):
            yield Hit(src.end(node.target), " in", ":\n")
    for node in src.of(ast.While):
        if isinstance(node.test, ast.Name):
            yield Hit(src.end(node.test), ":\n", " in")


def mine_else_elif(src: Source) -> Iterator[Hit]:
    """`else` (`:\n`, wrong: the if's variable) and `elif` (its variable, wrong `:\n`)."""
    for node in src.of(ast.If):
        if not node.orelse:
            continue
        first = node.orelse[0]
        if len(node.orelse) == 1 and isinstance(first, ast.If) and src.keyword(first) == "elif":
            name = _leading_name(first.test)
            if name is not None:
                yield Hit(src.start(first) + len("elif"), " " + name, ":\n")
            continue
        name = _leading_name(node.test)
        if name is None:
            continue
        # the lines after the body hold comments, blank lines and `else`
        for t in src.tokens_from(node.body[-1].end_lineno + 1):
            if t.type == tokenize.NAME:
                if t.string == "else":
                    yield Hit(src.offset(*t.end), ":\n", " " + name)
                break


def mine_lambda_func(src: Source) -> Iterator[Hit]:
    """`lambda p` with one parameter (`:`) and `def name` without parameters (`():\\n`)."""
    for node in src.of(ast.Lambda):
        a = node.args
        if len(a.args) == 1 and not (a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg or a.defaults):
            yield Hit(src.end(a.args[0]), ":", "():\n")
    for node in src.of(ast.FunctionDef):
        if _no_params(node.args):
            name = next((t for t in src.tokens_from(node.lineno) if t.string == node.name), None)
            if name is not None:
                yield Hit(src.offset(*name.end), "():\n", ":")


def mine_if_equals(src: Source) -> Iterator[Hit]:
    """`if v == ...` (` ==`) and `v = ...` (` =`), v a plain name."""
    for node in src.of(ast.If):
        t = node.test
        if isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and isinstance(t.ops[0], ast.Eq):
            if src.keyword(node) == "if":
                yield Hit(src.end(t.left), " ==", " =")
    for node in src.of(ast.Assign):
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            yield Hit(src.end(node.targets[0]), " =", " ==")


def mine_enumerate_range(src: Source) -> Iterator[Hit]:
    """`for i, x in` (` enumerate`) and `for i in` (` range`)."""
    for node in src.of(ast.For):
        if (
            _calls(node.iter, "enumerate")
            and isinstance(node.target, ast.Tuple)
            and len(node.target.elts) == 2
        ):
            yield Hit(src.start(node.iter) - 1, " enumerate", " range")
        elif _calls(node.iter, "range") and isinstance(node.target, ast.Name):
            yield Hit(src.start(node.iter) - 1, " range", " enumerate")


def mine_with_as(src: Source) -> Iterator[Hit]:
    """`with open(p) as f` (`)`, then ` as`) and `f = open(p)` ending its line (`)\\n`)."""
    for node in src.of(ast.With):
        for item in node.items:
            if item.optional_vars is not None and _is_open_call(item.context_expr):
                yield Hit(src.end(item.context_expr) - 1, ")", ")\n")
    for node in src.of(ast.Assign):
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and _is_open_call(node.value):
            yield Hit(src.end(node.value) - 1, ")\n", ")")


def mine_if_ternary(src: Source) -> Iterator[Hit]:
    """`if c` opening a statement (`:\\n`) and `a if c` inside an expression (` else`)."""
    for node in src.of(ast.If):
        if src.keyword(node) == "if":
            yield Hit(src.end(node.test), ":\n", " else")
    for node in src.of(ast.IfExp):
        yield Hit(src.end(node.test), " else", ":\n")


def mine_while_return_true(src: Source) -> Iterator[Hit]:
    """`while True` (`:\\n`) and `return True` ending its line (`\\n`)."""
    for node in src.of(ast.While):
        if isinstance(node.test, ast.Constant) and node.test.value is True:
            yield Hit(src.end(node.test), ":\n", "\n")
    for node in src.of(ast.Return):
        if isinstance(node.value, ast.Constant) and node.value.value is True:
            yield Hit(src.end(node.value), "\n", ":\n")


MINERS: dict[str, Callable[[Source], Iterator[Hit]]] = {
    "single_double_quote": mine_single_double_quote,
    "with_as": mine_with_as,
    "bracket_counting": mine_bracket_counting,
    "for_while": mine_for_while,
    "else_elif": mine_else_elif,
    "if_ternary": mine_if_ternary,
    "lambda_func": mine_lambda_func,
    "if_equals": mine_if_equals,
    "enumerate_range": mine_enumerate_range,
    "while_return_true": mine_while_return_true,
}


def minable_tasks() -> list[str]:
    """Tasks with a miner, in the paper's order."""
    return list(MINERS)


# ---- files ----------------------------------------------------------------------------------------------


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()


def _files(sources: list[Path], max_files: int | None) -> list[tuple[Path, str]]:
    """(path, path relative to its source) of every .py file: sorted, then in a fixed hash order, capped."""
    check_sources(sources)
    found = []
    for src in sources:
        for path in find_python_files(src):
            found.append((path, path.name if src.is_file() else path.relative_to(src).as_posix()))
    found.sort(key=lambda pr: (_hash(pr[1]), pr[1], str(pr[0])))
    return found if max_files is None else found[:max_files]


# ---- instances ------------------------------------------------------------------------------------------


def _prompt_start(src: Source, offset: int, max_chars: int) -> int:
    """Where the prompt begins: 0, or the first line start within `max_chars` of `offset`."""
    if offset <= max_chars:
        return 0
    k = bisect_left(src.line_starts, offset - max_chars)
    return min(src.line_starts[k], src.line_starts[src.line_of(offset) - 1])


def _ends_on_boundary(src: Source, start: int, hit: Hit) -> bool:
    """Whether the prompt text[start:hit.offset], read alone, ends on a pre-token boundary after which each
    candidate is one whole pre-token. Pre-tokens never depend on text before their own start, so only the
    prompt's last line is re-read, from the pre-token boundary of the whole file at or before its start."""
    line_start = src.line_starts[src.line_of(hit.offset) - 1]
    tail = src.text[max(start, src.piece_start_before(line_start)) : hit.offset]
    base = pre_tokenize(tail)
    return all(pre_tokenize(tail + c) == [*base, c] for c in (hit.correct, hit.wrong))


def _file_records(
    src: Source, rel: str, task: str, per_file: int, max_prompt_chars: int
) -> dict[int, list[dict]]:
    """Side (0: the task's first candidate correct, 1: the other) -> at most `per_file` records of `task` from
    one file, in a fixed hash order of their positions (a quota takes the first ones)."""
    cands = get_task(task).candidates
    pieces = src.piece_starts()
    by_side: dict[int, list[Hit]] = {}
    for hit in MINERS[task](src):
        if hit.correct in cands and hit.wrong in cands and pieces.get(hit.offset) == hit.correct:
            by_side.setdefault(int(hit.correct != cands[0]), []).append(hit)
    out: dict[int, list[dict]] = {}
    for side, hits in sorted(by_side.items()):
        hits.sort(key=lambda h: _hash(f"{rel}/{task}/{h.offset}"))
        taken = out[side] = []
        for hit in hits:
            if len(taken) >= per_file:
                break
            start = _prompt_start(src, hit.offset, max_prompt_chars)
            prompt = src.text[start : hit.offset]
            if prompt and _ends_on_boundary(src, start, hit):
                taken.append(_record(task, prompt, hit, f"{rel}:{src.line_of(hit.offset)}", start))
    return out


def _record(task: str, prompt: str, hit: Hit, source: str, start: int) -> dict:
    return {"task": task, "prompt": prompt, "correct": hit.correct, "wrong": hit.wrong, "source": source,
            "prompt_start": start}  # fmt: skip


def _task_list(tasks: Iterable[str] | None) -> list[str]:
    if not tasks:
        return minable_tasks()
    names = [get_task(t).name for t in tasks]
    missing = [n for n in names if n not in MINERS]
    if missing:
        raise UserError(f"no miner for task {missing[0]}; minable tasks: {', '.join(MINERS)}")
    return list(dict.fromkeys(names))


def mine(
    sources: list[Path],
    tasks: list[str] | None = None,
    max_per_task: int = DEFAULT_MAX_PER_TASK,
    max_files: int | None = DEFAULT_MAX_FILES,
    progress: bool = True,
    *,
    per_file: int = DEFAULT_PER_FILE,
    max_prompt_chars: int = MAX_PROMPT_CHARS,
    stats: CorpusStats | None = None,
    workers: int = 1,
) -> list[dict]:
    """Natural instances of `tasks` (default: every minable task) in the .py files under `sources`.

    Returns records {"task", "prompt", "correct", "wrong", "source": "rel/path.py:LINE", "prompt_start"},
    grouped by task (in the order asked, default the paper's), each group sorted by source file and position.
    Skipped files are counted by reason in `stats` when given. Stops early once every quota is full.
    workers: processes parsing and mining files side by side (a file's records do not depend on the others');
    the quotas are filled in file order here, so the result and `stats` are the same for any count.
    """
    if max_per_task < 1 or per_file < 1 or (max_files is not None and max_files < 1):
        raise UserError("--max-per-task, --max-files and the per-file cap must be at least 1")
    names = _task_list(tasks)
    stats = stats if stats is not None else CorpusStats()
    quotas = {name: {0: (max_per_task + 1) // 2, 1: max_per_task // 2} for name in names}
    found: dict[str, list[tuple[str, int, dict]]] = {name: [] for name in names}
    files = _files(list(sources), max_files)

    def open_tasks() -> list[str]:  # tasks with a quota left: full ones need no mining
        return [n for n in names if any(quotas[n].values())]

    mined = _mined_files(files, open_tasks, per_file, max_prompt_chars, workers)
    for rel, nbytes, skipped, by_task in tqdm(
        mined, total=len(files), desc="mining", unit="file", file=sys.stderr, disable=not progress
    ):
        if not open_tasks():
            break
        stats.files_seen += 1
        if skipped is not None:
            stats.skip(skipped, rel)
            continue
        stats.files_kept += 1
        stats.bytes_kept += nbytes
        for name, sides in by_task.items():
            for side, recs in sides.items():
                taken = recs[: quotas[name][side]]  # the first hits, as if mined with the quota left
                quotas[name][side] -= len(taken)
                found[name].extend((rel, r["prompt_start"] + len(r["prompt"]), r) for r in taken)
    return [rec for name in names for _, _, rec in sorted(found[name], key=lambda f: f[:2])]


MinedFile = tuple[str, int, "str | None", dict[str, dict[int, list[dict]]]]
MINE_CHUNK = 16  # files per job sent to a mining worker process


def _mined_files(
    files: list[tuple[Path, str]],
    open_tasks: Callable[[], list[str]],
    per_file: int,
    max_prompt_chars: int,
    workers: int,
) -> Iterator[MinedFile]:
    """(rel, bytes, skip reason or None, task -> side -> its first `per_file` records) per file, in order,
    for the tasks `open_tasks()` names when the file is read (a task it leaves out takes nothing more).

    Reading and the duplicate check run here, in file order; parsing and mining in `workers` processes, at
    most a few chunks of files ahead of the consumer, so that stopping early wastes little."""
    seen: set[bytes] = set()

    def read(path: Path, rel: str) -> tuple[bytes | None, str]:
        why = CorpusStats()  # catches the one skip reason, if any
        data = read_limited(path, rel, why, MAX_FILE_BYTES)
        if data is not None and not first_copy(data, rel, why, seen):
            data = None
        return data, next(iter(why.skipped), "")

    if workers <= 1:
        for path, rel in files:
            data, why = read(path, rel)
            args = (open_tasks(), per_file, max_prompt_chars)
            yield (rel, 0, why, {}) if data is None else (rel, *_mine_file(data, rel, *args))
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    batches = [files[i : i + MINE_CHUNK] for i in range(0, len(files), MINE_CHUNK)]
    ahead = 4 * workers
    ctx = multiprocessing.get_context("spawn")  # a fork would inherit torch's threads
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending: deque = deque()

        def submit(batch: list[tuple[Path, str]]) -> None:
            items = [(rel, *read(path, rel)) for path, rel in batch]
            todo = [(rel, data) for rel, data, _ in items if data is not None]
            args = (open_tasks(), per_file, max_prompt_chars)
            pending.append((items, pool.submit(_mine_chunk, todo, *args)))

        for batch in batches[:ahead]:
            submit(batch)
        for i in range(len(batches)):
            items, future = pending.popleft()
            if i + ahead < len(batches):
                submit(batches[i + ahead])
            results = iter(future.result())
            for rel, data, why in items:
                yield (rel, 0, why, {}) if data is None else (rel, *next(results))


def _mine_chunk(todo: list[tuple[str, bytes]], *args) -> list[tuple[int, str | None, dict]]:
    """`_mine_file` of each (rel, bytes), in a worker process."""
    return [_mine_file(data, rel, *args) for rel, data in todo]


def _mine_file(
    data: bytes, rel: str, names: list[str], per_file: int, max_prompt_chars: int
) -> tuple[int, str | None, dict[str, dict[int, list[dict]]]]:
    """(bytes, skip reason or None, task -> side -> up to `per_file` records) of one file's contents."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return len(data), "undecodable", {}
    if "\r" in text:  # the candidates end lines with a bare "\n"
        return len(data), "carriage_returns", {}
    try:
        src = Source(text)
    except (SyntaxError, ValueError, RecursionError, tokenize.TokenError):
        return len(data), "unparseable", {}
    return len(data), None, {n: _file_records(src, rel, n, per_file, max_prompt_chars) for n in names}


def group_by_task(records: Iterable[dict]) -> dict[str, list[dict]]:
    """Task name -> its records, tasks in the order they first appear."""
    out: dict[str, list[dict]] = {}
    for rec in records:
        out.setdefault(rec["task"], []).append(rec)
    return out


def write_mined(path: str | Path, records: list[dict]) -> None:
    """Write records as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ---- reading and encoding --------------------------------------------------------------------------------


def _check_record(rec: object, where: str) -> dict:
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    for key in RECORD_KEYS:
        if not isinstance(rec.get(key), str):
            raise UserError(f"{where}: missing or non-string {key!r}")
    start = rec.get("prompt_start", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise UserError(f"{where}: prompt_start must be a non-negative integer")
    task = get_task(rec["task"])
    if rec["correct"] == rec["wrong"] or not {rec["correct"], rec["wrong"]} <= set(task.candidates):
        raise UserError(
            f"{where}: correct {rec['correct']!r} and wrong {rec['wrong']!r} must be two different "
            f"candidates of task {task.name}"
        )
    if not rec["prompt"]:
        raise UserError(f"{where}: empty prompt")
    return rec


def read_mined(path: str | Path) -> dict[str, list[dict]]:
    """Task name -> its records, from a `tasks mine` JSONL file (tasks in the order they first appear).

    Raises a one-line UserError on a missing or malformed file, an unknown task, or a record whose correct
    and wrong completions are not two different candidates of its task.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file not found: {path}")
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"prompts file is not UTF-8 text: {path}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        try:
            rec = _check_record(rec, f"{path}:{i}")
        except UserError as e:
            raise UserError(str(e) if str(e).startswith(f"{path}:") else f"{path}:{i}: {e}") from None
        records.append(rec)
    if not records:
        raise UserError(f"prompts file has no records: {path}")
    return group_by_task(records)


def encode_mined(task: str, records: list[dict], tokenizer: Tokenizer, n_ctx: int) -> TaskBatch:
    """Tokenise mined records of `task` into a TaskBatch in which every prompt is its own pair.

    A prompt that starts its file and fits (with the end-of-text token, when the tokenizer has one) in
    `n_ctx` tokens is prefixed with that token, as in encode_task; a longer one keeps its last `n_ctx`
    tokens. Returns tokens [N, T_max] right-padded with 0, last [N], correct [N], wrong [N], pair = arange(N).
    Raises UserError (naming the task) when a candidate is not a single token, or the prompt + correct does
    not tokenise as the prompt's tokens plus one.
    """
    task_obj = get_task(task)
    if not records:
        raise UserError(f"task {task_obj.name}: no mined prompts")
    check_tokenizer(tokenizer, [task_obj])
    prompts = [r["prompt"] for r in records]
    ids = [e.ids for e in tokenizer.encode_batch(prompts, add_special_tokens=False)]
    ext = tokenizer.encode_batch([r["prompt"] + r["correct"] for r in records], add_special_tokens=False)
    for rec, base, e in zip(records, ids, ext):
        if len(e.ids) != len(base) + 1 or e.ids[:-1] != base:
            raise UserError(
                f"task {task_obj.name}: {rec['source']}: the tokenizer does not end the prompt + "
                f"{rec['correct']!r} with exactly one new token (a different pre-tokenizer?)"
            )
    eot = tokenizer.token_to_id(EOT)
    rows = []
    for rec, row in zip(records, ids):
        if eot is not None and rec.get("prompt_start", 0) == 0 and len(row) < n_ctx:
            row = [eot, *row]
        rows.append(row[-n_ctx:])
    tokens = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
    single = {s: tokenizer.encode(s, add_special_tokens=False).ids[0] for s in task_obj.candidates}
    return TaskBatch(
        tokens=tokens,
        last=torch.tensor([len(r) - 1 for r in rows], dtype=torch.long),
        correct=torch.tensor([single[r["correct"]] for r in records], dtype=torch.long),
        wrong=torch.tensor([single[r["wrong"]] for r in records], dtype=torch.long),
        pair=torch.arange(len(rows), dtype=torch.long),
    )


@torch.no_grad()
def evaluate_mined(
    model, tokenizer: Tokenizer, task: str, records: list[dict], chunk: int = 256, **metric_options
) -> dict:
    """Task metrics (tasks.evaluate.task_metrics, its options passed through) of `model` on mined records
    of `task`, plus task and "prompts": "natural". The model reads at most its `cfg.n_ctx` tokens (default
    256)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", 256)
    batch = encode_mined(task, records, tokenizer, n_ctx)
    metrics = task_metrics(candidate_logits(model, batch, chunk), **metric_options)
    return {"task": get_task(task).name, "prompts": "natural", **metrics}


def default_natural_sources() -> list[Path]:
    """The running interpreter's third-party package folders (site-packages / dist-packages), never the
    standard library: code outside the training corpus (which `data build` takes from the stdlib)."""
    paths = sysconfig.get_paths()
    stdlib = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib") if paths.get(k)}
    candidates = [*site.getsitepackages(), paths.get("purelib"), paths.get("platlib")]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    out: list[Path] = []
    for c in candidates:
        p = Path(c).resolve() if c else None
        if p is None or not p.is_dir() or p in stdlib or p in out:
            continue
        out.append(p)
    # a folder inside another one would be mined twice
    return [p for p in out if not any(q != p and q in p.parents for q in out)]
