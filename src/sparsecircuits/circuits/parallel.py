"""Independent pruning forwards side by side: model replicas, one per worker thread.

One pruning forward (128 task prompts through a small model) does not keep two CPU cores busy: on the demo
model two intra-op threads score a gate vector no faster than one (docs/performance.md). Scoring different gate
vectors at the same time, one per thread and each thread on its own replica of the model, does (1.86x on 2
cores): hooks are installed per model, so a replica keeps one thread's masks out of another's forward. Each
score is bit-identical to scoring it alone on one thread, so results never depend on the number of workers.
"""

from __future__ import annotations

import copy
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from sparsecircuits.model import GPT

X = TypeVar("X")
Y = TypeVar("Y")


def default_workers(device: torch.device | str) -> int:
    """Worker threads for pruning: torch's CPU thread count (one per core by default), 1 on an accelerator."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


class Replicas:
    """`workers` copies of a model (the first is the model itself) and a thread per copy.

    Use as a context manager; after `close` (or with one worker) `map` runs in the calling thread."""

    def __init__(self, model: GPT, workers: int = 1):
        self.model, self.workers = model, max(1, int(workers))
        self._free: queue.SimpleQueue[GPT] = queue.SimpleQueue()
        self._executor: ThreadPoolExecutor | None = None
        if self.workers > 1:
            for replica in [model] + [copy.deepcopy(model) for _ in range(self.workers - 1)]:
                self._free.put(replica)
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="replica")

    def map(self, fn: Callable[[GPT, X], Y], items: Sequence[X]) -> list[Y]:
        """[fn(replica, x) for x in items], in order, side by side on the replicas (one intra-op thread each,
        so `workers` threads share the cores instead of workers x torch's thread count)."""
        if self._executor is None or len(items) < 2:
            return [fn(self.model, x) for x in items]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return list(self._executor.map(lambda x: self._on_replica(fn, x), items))
        finally:
            torch.set_num_threads(threads)

    def _on_replica(self, fn: Callable[[GPT, X], Y], x: X) -> Y:
        model = self._free.get()
        try:
            return fn(model, x)
        finally:
            self._free.put(model)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> Replicas:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
