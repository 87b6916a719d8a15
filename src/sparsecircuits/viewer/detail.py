"""Node detail, computed on demand: what a node responds to in the pretraining corpus and on its task.

All activations are read from the model's one forward with `model.run_with_cache`, so the values are
exactly those that pruning saw (after AbsTopK). For a node the server reports:

- corpus: activation statistics over `n_windows` validation windows of the run's dataset, with
  snippets (token text and activation per token) at the top and bottom and at several quantiles;
- task: the node's value at the last position of the task's positive and negative prompts, their
  means and difference, and one prompt pair coloured token by token;
- attention (q/k/v channels): the head's attention pattern on one task prompt (or, without a task,
  on the top corpus snippet).

Nodes of the circuit at the same location are computed in the same forward passes and cached, so
clicking around a circuit is fast after the first node of each location.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sparsecircuits.circuits.nodes import HEAD_LOCATIONS, parse_node_name
from sparsecircuits.data.shards import eval_starts, open_tokens
from sparsecircuits.errors import UserError
from sparsecircuits.run import Run, load_run

QUANTILES = (0.99, 0.9, 0.5, 0.1, 0.01)
N_TOP = 5
BEFORE, AFTER = 24, 6  # snippet context around the focus token
PATTERN_TOKENS = 40  # last positions of the attention pattern sent to the client
TASK_PAIRS = 16
BATCH = 8
MAX_SIBLINGS = 64


@dataclass
class LoadedRun:
    """A run held in memory, with its decoded vocabulary, corpus windows and a lock for its model."""

    run: Run
    vocab: list[str]
    lock: threading.Lock = field(default_factory=threading.Lock)
    windows: np.ndarray | None = None  # [W, T] token ids, or None when the dataset is missing
    windows_error: str | None = None
    details: dict[tuple[str, str | None], dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self):
        return self.run.model


def _byte_level_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's bytes_to_unicode), inverted: character -> byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = 256 + extra, extra + 1
    return {chr(c): b for b, c in chars.items()}


def decoded_vocab(tokenizer) -> list[str]:
    """The text of every token id (special tokens included) for display. A token that is only part of a
    UTF-8 character shows its bytes as escapes (`\\xe2\\x80`) instead of a replacement character."""
    to_byte = _byte_level_decoder()
    out = []
    for i in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([i], skip_special_tokens=False)
        piece = tokenizer.id_to_token(i) or ""
        if "\ufffd" in text and all(ch in to_byte for ch in piece):
            text = bytes(to_byte[ch] for ch in piece).decode("utf-8", errors="backslashreplace")
        out.append(text)
    return out


def open_run(path: Path, n_windows: int) -> LoadedRun:
    """Load a run (model in eval mode on the CPU) and its corpus windows."""
    run = load_run(path, "cpu")
    loaded = LoadedRun(run=run, vocab=decoded_vocab(run.tokenizer))
    try:
        loaded.windows = corpus_windows(run, n_windows)
    except UserError as e:
        loaded.windows_error = str(e)
    return loaded


def dataset_dir(run: Run) -> Path:
    """The run's dataset directory (config data.dir, tried as given and beside the run)."""
    named = (run.config.get("data") or {}).get("dir") if isinstance(run.config.get("data"), dict) else None
    if not named:
        raise UserError(f"{run.path}/config.json names no dataset directory (data.dir)")
    for base in (Path.cwd(), run.path, run.path.parent):
        candidate = base / named
        if (candidate / "val.bin").is_file():
            return candidate
    raise UserError(f"dataset of the run not found: {named} (needs val.bin)")


def corpus_windows(run: Run, n_windows: int) -> np.ndarray:
    """`n_windows` windows of n_ctx tokens spread evenly over the dataset's val.bin. Returns [W, T]."""
    tokens = open_tokens(dataset_dir(run) / "val.bin")
    n_ctx = run.model.cfg.n_ctx
    if len(tokens) < n_ctx + 1:
        n_ctx = len(tokens) - 1
    starts = eval_starts(len(tokens), n_ctx, n_windows)
    if len(starts) == 0:
        raise UserError("the dataset's val.bin is too short for one window")
    return np.stack([np.asarray(tokens[s : s + n_ctx], dtype=np.int64) for s in starts])


# ---- activations through hooks -----------------------------------------------------------------------


@torch.no_grad()
def record(model, tokens: Tensor, location: str, indices: list[int]) -> Tensor:
    """Activations of `indices` at hook `location` for token batch [N, T]. Returns [N, T, len(indices)].

    Each forward stops right after `location`, so later layers are not computed.
    """
    out: list[Tensor] = []
    cols = torch.tensor(indices, dtype=torch.long)
    for i in range(0, len(tokens), BATCH):
        x = model.run_with_cache(tokens[i : i + BATCH], [location], stop_at=location)[location]
        out.append(x.detach()[..., cols].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, tokens.shape[1], len(indices))


@torch.no_grad()
def attention_pattern(model, tokens: Tensor, layer: int) -> Tensor:
    """Attention probabilities of every head of `layer` on one prompt [1, T]. Returns [n_head, T, T]."""
    name = f"{layer}.attn.pattern"
    return model.run_with_cache(tokens, [name], stop_at=name)[name].detach().float().cpu()[0]


# ---- corpus snippets ----------------------------------------------------------------------------------


def snippet(acts: np.ndarray, tokens: np.ndarray, vocab: list[str], w: int, p: int) -> dict[str, Any]:
    """Tokens around position p of window w, each with the node's activation there."""
    lo, hi = max(0, p - BEFORE), min(tokens.shape[1], p + AFTER + 1)
    return {
        "value": float(acts[w, p]),
        "window": int(w),
        "pos": int(p),
        "focus": int(p - lo),
        "tokens": [[vocab[int(t)], round(float(a), 4)] for t, a in zip(tokens[w, lo:hi], acts[w, lo:hi])],
    }


def corpus_detail(acts: np.ndarray, tokens: np.ndarray, vocab: list[str]) -> dict[str, Any]:
    """Statistics and snippets of one node's activations acts [W, T] on corpus windows tokens [W, T]."""
    flat = acts.reshape(-1)
    per_window_max, per_window_min = acts.argmax(axis=1), acts.argmin(axis=1)
    top_w = np.argsort(-acts.max(axis=1), kind="stable")[:N_TOP]
    bottom_w = np.argsort(acts.min(axis=1), kind="stable")[:N_TOP]
    quantiles = []
    for q in QUANTILES:
        value = float(np.quantile(flat, q))
        near = np.flatnonzero(np.abs(flat - value) <= 1e-6 + 1e-3 * abs(value))
        i = int(near[len(near) // 2]) if len(near) else int(np.argmin(np.abs(flat - value)))
        quantiles.append({"q": q, **snippet(acts, tokens, vocab, *divmod(i, acts.shape[1]))})
    return {
        "n_tokens": int(flat.size),
        "n_windows": int(acts.shape[0]),
        "stats": {
            "mean": float(flat.mean()),
            "std": float(flat.std()),
            "min": float(flat.min()),
            "max": float(flat.max()),
            "frac_active": float((np.abs(flat) > 1e-6).mean()),
        },
        "scale": float(np.abs(flat).max()) or 1.0,
        "top": [snippet(acts, tokens, vocab, int(w), int(per_window_max[w])) for w in top_w],
        "bottom": [snippet(acts, tokens, vocab, int(w), int(per_window_min[w])) for w in bottom_w],
        "quantiles": quantiles,
    }


# ---- task prompts -------------------------------------------------------------------------------------


@dataclass
class TaskPrompts:
    tokens: Tensor  # [N, T]
    last: Tensor  # [N]
    correct: Tensor  # [N]
    wrong: Tensor  # [N]
    is_pos: Tensor  # [N] bool: the first prompt of each pair


def task_prompts(task_name: str, tokenizer, n_ctx: int) -> TaskPrompts:
    """Validation prompts of a task, tokenised; a UserError says why when the task cannot be used."""
    try:
        from sparsecircuits.tasks import get_task
        from sparsecircuits.tasks.evaluate import encode_task
    except ImportError:
        raise UserError("the task API (sparsecircuits.tasks) is not available in this version") from None
    try:
        batch = encode_task(get_task(task_name), tokenizer, TASK_PAIRS, split="val", seed=0, n_ctx=n_ctx)
    except (KeyError, ValueError) as e:
        raise UserError(f"task {task_name!r}: {e}") from None
    pair = batch.pair
    is_pos = torch.ones(len(pair), dtype=torch.bool)
    is_pos[1:] = pair[1:] != pair[:-1]  # prompts of a pair are adjacent, positive first
    return TaskPrompts(batch.tokens, batch.last, batch.correct, batch.wrong, is_pos)


def prompt_tokens(prompts: TaskPrompts, row: int, acts: np.ndarray, vocab: list[str]) -> list[list[Any]]:
    """The last BEFORE tokens of one prompt with the node's activation at each."""
    last = int(prompts.last[row])
    lo = max(0, last + 1 - BEFORE)
    ids = prompts.tokens[row, lo : last + 1].tolist()
    return [[vocab[t], round(float(a), 4)] for t, a in zip(ids, acts[row, lo : last + 1])]


def task_detail(prompts: TaskPrompts, acts: np.ndarray, vocab: list[str]) -> dict[str, Any]:
    """Last-position values on positive and negative prompts acts [N, T], and one example pair."""
    at_last = acts[np.arange(len(acts)), prompts.last.numpy()]
    is_pos = prompts.is_pos.numpy()
    pos, neg = at_last[is_pos], at_last[~is_pos]
    pos_row = int(np.flatnonzero(is_pos)[0])
    example = {"pos": prompt_tokens(prompts, pos_row, acts, vocab)}
    if pos_row + 1 < len(acts) and not is_pos[pos_row + 1]:
        example["neg"] = prompt_tokens(prompts, pos_row + 1, acts, vocab)
    example["correct"] = vocab[int(prompts.correct[pos_row])]
    example["wrong"] = vocab[int(prompts.wrong[pos_row])]
    return {
        "pos": [round(float(v), 4) for v in pos],
        "neg": [round(float(v), 4) for v in neg],
        "pos_mean": float(pos.mean()) if len(pos) else None,
        "neg_mean": float(neg.mean()) if len(neg) else None,
        "diff": float(pos.mean() - neg.mean()) if len(pos) and len(neg) else None,
        "example": example,
    }


# ---- one node -----------------------------------------------------------------------------------------


def pattern_detail(
    pattern: Tensor, ids: list[int], head: int, vocab: list[str], source: str
) -> dict[str, Any]:
    """The last PATTERN_TOKENS rows and columns of one head's pattern, with the tokens."""
    T = pattern.shape[-1]
    lo = max(0, T - PATTERN_TOKENS)
    return {
        "head": head,
        "source": source,
        "tokens": [vocab[t] for t in ids[lo:T]],
        "offset": lo,
        "matrix": [[round(float(v), 4) for v in row[lo:T]] for row in pattern[head, lo:T]],
        "last_row": [round(float(v), 4) for v in pattern[head, T - 1]],
        "all_tokens": [vocab[t] for t in ids[:T]],
    }


class NodeDetails:
    """Computes and caches node details for one loaded run."""

    def __init__(self, loaded: LoadedRun):
        self.loaded = loaded
        self.cfg = loaded.model.cfg

    def get(self, node: str, task: str | None, siblings: list[str]) -> dict[str, Any]:
        """Detail of `node` (flat name); `siblings` are other circuit nodes worth computing alongside."""
        location, index = parse_node_name(node, self.cfg)
        node = f"{location}.{index}"  # the flat form, also for a head-form request
        with self.loaded.lock:
            cached = self.loaded.details.get((node, task))
            if cached is None:
                self._compute(location, index, task, siblings)
                cached = self.loaded.details[(node, task)]
        return cached

    def _batch_indices(self, location: str, index: int, task: str | None, siblings: list[str]) -> list[int]:
        """The node's index first, then uncached siblings at the same location (bounded)."""
        indices = [index]
        for name in siblings:
            try:
                loc, i = parse_node_name(name, self.cfg)
            except UserError:
                continue
            if loc == location and i not in indices and (f"{loc}.{i}", task) not in self.loaded.details:
                indices.append(i)
            if len(indices) >= MAX_SIBLINGS:
                break
        return indices

    def _compute(self, location: str, index: int, task: str | None, siblings: list[str]) -> None:
        indices = self._batch_indices(location, index, task, siblings)
        corpus = self._corpus(location, indices)
        tasks, prompts = self._task(location, indices, task)
        layer, loc = int(location.split(".", 1)[0]), location.split(".", 1)[1]
        pattern = self._pattern(layer, prompts, corpus) if loc in HEAD_LOCATIONS else None
        for j, i in enumerate(indices):
            detail: dict[str, Any] = {"node": f"{location}.{i}", "location": location, "index": i}
            detail["corpus"] = corpus[j] if isinstance(corpus, list) else {"error": corpus}
            detail["task"] = tasks[j] if isinstance(tasks, list) else {"error": tasks}
            if pattern is not None:
                source, ids, probs = pattern
                detail["attention"] = pattern_detail(
                    probs, ids, i // self.cfg.d_head, self.loaded.vocab, source
                )
            self.loaded.details[(f"{location}.{i}", task)] = detail

    def _corpus(self, location: str, indices: list[int]) -> list[dict[str, Any]] | str:
        loaded = self.loaded
        if loaded.windows is None:
            return loaded.windows_error or "no corpus windows"
        acts = record(loaded.model, torch.from_numpy(loaded.windows), location, indices).numpy()
        return [corpus_detail(acts[..., j], loaded.windows, loaded.vocab) for j in range(len(indices))]

    def _task(
        self, location: str, indices: list[int], task: str | None
    ) -> tuple[list[dict[str, Any]] | str, TaskPrompts | None]:
        if not task:
            return "no task (open the node from a circuit)", None
        try:
            prompts = task_prompts(task, self.loaded.run.tokenizer, self.cfg.n_ctx)
        except UserError as e:
            return str(e), None
        acts = record(self.loaded.model, prompts.tokens, location, indices).numpy()
        return [task_detail(prompts, acts[..., j], self.loaded.vocab) for j in range(len(indices))], prompts

    def _pattern(
        self, layer: int, prompts: TaskPrompts | None, corpus: list[dict[str, Any]] | str
    ) -> tuple[str, list[int], Tensor] | None:
        """(source description, token ids, [n_head, T, T]) on the first positive task prompt, else on
        the top corpus snippet of the first node."""
        if prompts is not None:
            row = int(torch.nonzero(prompts.is_pos)[0])
            ids = prompts.tokens[row, : int(prompts.last[row]) + 1].tolist()
            source = "first positive task prompt"
        elif isinstance(corpus, list) and corpus[0]["top"] and self.loaded.windows is not None:
            top = corpus[0]["top"][0]
            ids = self.loaded.windows[top["window"], : top["pos"] + 1].tolist()
            source = "top-activating corpus snippet of the node"
        else:
            return None
        return source, ids, attention_pattern(self.loaded.model, torch.tensor([ids]), layer)


class RunPool:
    """Runs loaded on demand and kept in memory (at most `keep`, least recently used dropped)."""

    def __init__(
        self, n_windows: int = 64, keep: int = 3, opener: Callable[[Path, int], LoadedRun] = open_run
    ):
        self.n_windows, self.keep, self.opener = n_windows, keep, opener
        self._runs: dict[Path, LoadedRun] = {}
        self._lock = threading.Lock()
        self._loading: dict[Path, threading.Lock] = {}

    def get(self, path: Path) -> LoadedRun:
        with self._lock:
            gate = self._loading.setdefault(path, threading.Lock())
        with gate:  # one thread loads a run; others wait for it
            with self._lock:
                loaded = self._runs.pop(path, None)
            if loaded is None:
                loaded = self.opener(path, self.n_windows)
            with self._lock:
                self._runs[path] = loaded
                while len(self._runs) > self.keep:
                    self._runs.pop(next(iter(self._runs)))
            return loaded
