"""AbsTopK activation sparsity (PAPER.md 2.2): keep the k largest-magnitude entries of each row."""

from __future__ import annotations

import torch
from torch import Tensor


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
    return abstopk_reference(x, k)


def abstopk_reference(x: Tensor, k: int) -> Tensor:
    """Reference AbsTopK via torch.topk + scatter. x: [..., n] -> [..., n]."""
    idx = torch.topk(x.abs(), k, dim=-1, sorted=False).indices
    # scatter(gather) rather than x * mask: dropped entries become +0 even where x is inf or NaN,
    # and the backward of gather sends gradient to the kept indices only.
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
