"""AbsTopK activation sparsity (PAPER.md 2.2): keep the k largest-magnitude entries of each row."""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

# The CPU fast path (`abstopk_threshold`) can be switched off to run the reference everywhere.
USE_THRESHOLD_ON_CPU = True


class IntView(NamedTuple):
    """How a float dtype is read as integers: for IEEE 754 floats with the sign bit cleared, integer order is
    magnitude order (NaN above +inf)."""

    dtype: np.dtype  # integer dtype of the same width
    abs_bits: int  # clears the sign bit: |x|
    inf_bits: int  # +inf; larger values are NaNs


FLOAT_BITS = {
    torch.float32: IntView(np.dtype(np.int32), 0x7FFF_FFFF, 0x7F80_0000),
    torch.float64: IntView(np.dtype(np.int64), 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}


def abstopk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| along the last dim of each row; zero the rest.

    x: [..., n] -> [..., n], same dtype. Gradient reaches the kept entries only. k >= n returns x itself.
    Ties are broken by torch.topk, which is deterministic for a given device and input.

    This is the single entry point used by the model. On the CPU it dispatches to `abstopk_threshold`,
    which gives the same output and gradient as `abstopk_reference` (rows with ties at their threshold take
    the reference's choice).
    """
    if k < 1:
        raise ValueError(f"abstopk needs k >= 1, got {k}")
    if k >= x.shape[-1]:
        return x
    if USE_THRESHOLD_ON_CPU and x.device.type == "cpu" and x.dtype in FLOAT_BITS:
        return abstopk_threshold(x, k)
    return abstopk_reference(x, k)


class _Scratch(threading.local):
    """Two integer work arrays per thread, grown to the largest block seen and reused: a fresh megabyte-sized
    numpy array per call costs page faults that took longer than the selection itself (1.7 ms against 0.55 ms
    per call for a [2048, 128] block)."""

    def __init__(self) -> None:
        self.flat: dict[np.dtype, np.ndarray] = {}

    def pair(self, dtype: np.dtype, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        size = shape[0] * shape[1]
        flat = self.flat.get(dtype)
        if flat is None or flat.size < 2 * size:
            flat = self.flat[dtype] = np.empty(2 * size, dtype)
        return flat[:size].reshape(shape), flat[size : 2 * size].reshape(shape)


_SCRATCH = _Scratch()


def threshold_keep(x: Tensor, k: int) -> np.ndarray | None:
    """Keep-mask of AbsTopK, or None where the reference must decide. x: [..., n] (float32/64) -> bool [..., n].

    The k-th largest |x| of every row comes from one numpy introselect over the whole [rows, n] block of
    magnitudes read as integers (no float compares, no Python loop per row), and the mask is
    |x| >= threshold; one count of the whole mask tells whether any row keeps other than k. Such rows (a tie
    crossing a nonzero threshold, or a threshold of 0: fewer than k nonzeros) take the reference's choice,
    row by row, so values and gradients match the reference's. None only where a NaN is present (the
    reference decides the whole block). All of it is numpy on one thread: no parallel-region barriers.
    """
    bits = FLOAT_BITS[x.dtype]
    n = x.shape[-1]
    ints = x.detach().numpy().view(bits.dtype).reshape(-1, n)
    mag, part = _SCRATCH.pair(bits.dtype, ints.shape)
    np.bitwise_and(ints, bits.abs_bits, out=mag)
    np.copyto(part, mag)
    part.partition(n - k, axis=-1)
    thr = part[:, n - k : n - k + 1]
    if part[:, n - k :].max(initial=0) > bits.inf_bits:
        return None  # a NaN
    keep = mag >= thr
    # Every row keeps at least k (its threshold is its k-th largest), a zero-threshold row all n: one count
    # over the block tells whether any other row keeps more than k, i.e. a tie crosses its threshold.
    redo = thr[:, 0] == 0
    n_zero = int(np.count_nonzero(redo))
    if np.count_nonzero(keep) != k * (len(keep) - n_zero) + n * n_zero:
        redo |= np.count_nonzero(keep, axis=-1) != k
    if redo.any():
        _reference_rows(x.detach().reshape(-1, n), k, keep, redo)
    return keep.reshape(x.shape)


def _reference_rows(x: Tensor, k: int, keep: np.ndarray, rows: np.ndarray) -> None:
    """Overwrite, in place, keep's rows where `rows` is True with the reference's choice. x, keep: [R, n]."""
    sel = torch.from_numpy(np.flatnonzero(rows))
    idx = torch.topk(x[sel].abs(), k, dim=-1, sorted=False).indices
    keep[sel.numpy()] = torch.zeros(len(sel), x.shape[-1], dtype=torch.bool).scatter_(-1, idx, True).numpy()


def masked(t: Tensor, keep: np.ndarray) -> Tensor:
    """t where keep is True, +0.0 where it is False, bit for bit (an integer multiply of t's bits by 0 or 1).
    t: [...] float32/64, any strides; keep: bool of t's shape. Returns a new tensor."""
    bits = FLOAT_BITS[t.dtype]
    return torch.from_numpy(np.multiply(t.detach().numpy().view(bits.dtype), keep)).view(t.dtype)


class _Keep(torch.autograd.Function):
    """y = x where keep, +0.0 elsewhere; the gradient is masked the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: np.ndarray) -> Tensor:
        ctx.keep = keep
        return masked(x, keep)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return masked(grad, ctx.keep), None


def abstopk_threshold(x: Tensor, k: int) -> Tensor:
    """AbsTopK by a per-row magnitude threshold (CPU, float32/float64). x: [..., n] -> [..., n].

    Several times faster than torch.topk on the CPU (docs/performance.md). Kept entries are x bit for bit and
    dropped ones +0.0, as torch.where(keep, x, 0) would give; the gradient is masked the same way. Equal to
    `abstopk_reference`, gradients included: rows with a tie at their threshold, and rows with fewer than k
    nonzeros, take its choice of which entries are kept (and receive gradient); a NaN falls back to it.
    """
    keep = threshold_keep(x, k)
    if keep is None:
        return abstopk_reference(x, k)
    return _Keep.apply(x, keep)


def abstopk_reference(x: Tensor, k: int) -> Tensor:
    """Reference AbsTopK via torch.topk + scatter. x: [..., n] -> [..., n]."""
    idx = torch.topk(x.abs(), k, dim=-1, sorted=False).indices
    # scatter(gather) rather than x * mask: dropped entries become +0 even where x is inf or NaN,
    # and the backward of gather sends gradient to the kept indices only.
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
