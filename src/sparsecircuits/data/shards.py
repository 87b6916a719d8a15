"""Flat uint16 token files and samplers over them (memory-mapped, so corpora may exceed memory)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write

DTYPE = np.uint16


def write_tokens(path: str | Path, ids: np.ndarray) -> None:
    """Atomically write a flat uint16 token file. ids: [N] integers < 65536."""
    arr = np.asarray(ids)
    if arr.size and int(arr.max()) >= 2**16:
        raise ValueError("token id does not fit in uint16")
    atomic_write(path, lambda p: arr.astype(DTYPE).tofile(p))


def open_tokens(path: str | Path) -> np.memmap:
    """Memory-map a flat uint16 token file. Returns [N] uint16."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"token file not found: {path}")
    if path.stat().st_size % 2:
        raise UserError(f"token file has an odd number of bytes (truncated?): {path}")
    return np.memmap(path, dtype=DTYPE, mode="r")


class TokenSampler:
    """Random windows of `n_ctx + 1` tokens from anywhere in the stream.

    Every start position in [0, N - n_ctx - 1] is equally likely, so all of the data is used (no chunking
    that throws away the tail of each chunk).
    """

    def __init__(self, bin_path: str | Path, n_ctx: int):
        self.tokens = open_tokens(bin_path)
        self.n_ctx = n_ctx
        if len(self.tokens) < n_ctx + 1:
            raise UserError(f"{bin_path} has {len(self.tokens)} tokens, fewer than one window of {n_ctx + 1}")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, batch_size: int, gen: torch.Generator) -> torch.Tensor:
        """Sample windows. Returns LongTensor [batch_size, n_ctx + 1]; inputs are [:, :-1], targets [:, 1:]."""
        n_starts = len(self.tokens) - self.n_ctx
        starts = torch.randint(0, n_starts, (batch_size,), generator=gen).numpy()
        return gather_windows(self.tokens, starts, self.n_ctx + 1)


def gather_windows(tokens: np.ndarray, starts: np.ndarray, width: int) -> torch.Tensor:
    """The windows tokens[s : s + width] for each start s. Returns LongTensor [len(starts), width]."""
    idx = starts[:, None] + np.arange(width)[None, :]
    return torch.from_numpy(tokens[idx].astype(np.int64))


def eval_starts(n_tokens: int, n_ctx: int, n_windows: int) -> np.ndarray:
    """Start offsets of up to `n_windows` windows spread evenly over the stream, non-overlapping when possible."""
    n_starts = n_tokens - n_ctx
    if n_starts <= 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n_windows, max(1, n_tokens // (n_ctx + 1)))
    return np.linspace(0, n_starts - 1, n).astype(np.int64)


def iter_eval_batches(
    bin_path: str | Path, n_ctx: int, batch_size: int, max_batches: int
) -> Iterator[torch.Tensor]:
    """Deterministic evaluation windows spread over the whole file. Yields LongTensor [<=B, n_ctx + 1]."""
    tokens = open_tokens(bin_path)
    starts = eval_starts(len(tokens), n_ctx, batch_size * max_batches)
    for i in range(0, len(starts), batch_size):
        yield gather_windows(tokens, starts[i : i + batch_size], n_ctx + 1)
