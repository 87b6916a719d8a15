"""AbsTopK activation sparsity (PAPER.md 2.2): keep the k largest-magnitude entries of each row."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# The CPU fast path (`abstopk_threshold`) can be switched off to run the reference everywhere.
USE_THRESHOLD_ON_CPU = True


def abstopk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| along the last dim of each row; zero the rest.

    x: [..., n] -> [..., n], same dtype. Gradient reaches the kept entries only. k >= n returns x itself.
    Ties are broken by torch.topk, which is deterministic for a given device and input.

    This is the single entry point used by the model; a faster implementation (e.g. a binary search
    for a per-row magnitude threshold, PAPER.md 12) can be dispatched from here, and must agree
    with `abstopk_reference` wherever the k-th and (k+1)-th magnitudes differ.
    """
    if k < 1:
        raise ValueError(f"abstopk needs k >= 1, got {k}")
    if k >= x.shape[-1]:
        return x
    if USE_THRESHOLD_ON_CPU and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return abstopk_threshold(x, k)
    return abstopk_reference(x, k)


def abstopk_threshold(x: Tensor, k: int) -> Tensor:
    """AbsTopK by a per-row magnitude threshold found with numpy's introselect (CPU). x: [..., n] -> [..., n].

    About 3x faster than torch.topk on the CPU. Keeps |x| >= the row's k-th largest magnitude. The output
    always equals `abstopk_reference`'s: where ties at a nonzero threshold (or NaN) would keep other than k
    entries, it falls back to the reference. Rows with fewer than k nonzeros keep all entries, so their zeros
    also receive gradient (the reference gives it to an arbitrary subset of them).
    """
    mag = x.detach().abs()
    n = x.shape[-1]
    thr = np.partition(mag.reshape(-1, n).numpy(), n - k, axis=-1)[:, n - k]
    thr = torch.from_numpy(thr).view(*x.shape[:-1], 1)
    keep = mag >= thr
    # A row whose threshold is 0 has fewer than k nonzeros: keeping all of it gives the same values (the
    # reference keeps every nonzero plus arbitrary zeros), so only other ties need the reference.
    if not bool(((keep.sum(-1, keepdim=True) == k) | (thr == 0)).all()):
        return abstopk_reference(x, k)
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype))


def abstopk_reference(x: Tensor, k: int) -> Tensor:
    """Reference AbsTopK via torch.topk + scatter. x: [..., n] -> [..., n]."""
    idx = torch.topk(x.abs(), k, dim=-1, sorted=False).indices
    # scatter(gather) rather than x * mask: dropped entries become +0 even where x is inf or NaN,
    # and the backward of gather sends gradient to the kept indices only.
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
