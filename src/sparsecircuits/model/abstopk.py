"""AbsTopK activation sparsity (PAPER.md 2.2): keep the k largest-magnitude entries of each row."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# The CPU fast path (`abstopk_threshold`) can be switched off to run the reference everywhere.
USE_THRESHOLD_ON_CPU = True

# Float dtype -> (integer dtype of the same width, |x| bit mask, bits of +inf, sign-bit shift). For IEEE 754
# floats with the sign bit cleared, integer order is magnitude order (NaN above +inf).
FLOAT_BITS = {
    torch.float32: (torch.int32, 0x7FFF_FFFF, 0x7F80_0000, 31),
    torch.float64: (torch.int64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000, 63),
}


def abstopk(x: Tensor, k: int) -> Tensor:
    """Keep the k entries of largest |x| along the last dim of each row; zero the rest.

    x: [..., n] -> [..., n], same dtype. Gradient reaches the kept entries only. k >= n returns x itself.
    Ties are broken by torch.topk, which is deterministic for a given device and input.

    This is the single entry point used by the model. On the CPU it dispatches to `abstopk_threshold`,
    which gives the same output and gradient as `abstopk_reference` (it falls back to it on ties).
    """
    if k < 1:
        raise ValueError(f"abstopk needs k >= 1, got {k}")
    if k >= x.shape[-1]:
        return x
    if USE_THRESHOLD_ON_CPU and x.device.type == "cpu" and x.dtype in FLOAT_BITS:
        return abstopk_threshold(x, k)
    return abstopk_reference(x, k)


def threshold_keep_bits(x: Tensor, k: int) -> Tensor | None:
    """Keep-mask of AbsTopK as integer bits, or None where the reference must decide. x: [..., n] (float32/64).

    Returns an integer tensor [..., n] (int32 for float32, int64 for float64): all bits set (-1) where the
    entry is kept, 0 where it is dropped. The k-th largest |x| of every row is found by one numpy introselect
    over the whole [rows, n] block of magnitudes read as integers (no float compares, no Python loop), and
    the mask is built with integer arithmetic: (threshold - 1 - |x|) >> sign_shift is -1 exactly where
    |x| >= threshold. That is the reference's kept set unless ties at a nonzero threshold keep other than k
    entries, or a NaN is present: None is returned for those (for the whole block). Rows whose threshold is
    0 (fewer than k nonzeros) take the reference's choice of zeros, row by row, so gradients match too.
    """
    int_dtype, abs_bits, inf_bits, shift = FLOAT_BITS[x.dtype]
    n = x.shape[-1]
    mag = x.detach().view(int_dtype) & abs_bits
    part = np.partition(mag.reshape(-1, n).numpy(), n - k, axis=-1)
    thr = torch.from_numpy(part[:, n - k]).view(*x.shape[:-1], 1)
    keep = (thr - 1 - mag) >> shift  # no overflow: thr and mag both lie in [0, abs_bits]
    zero_thr = thr == 0
    exact = (keep.sum(-1, keepdim=True) == -k) | zero_thr
    ok, any_zero_thr = torch.stack([exact.all() & (mag.amax() <= inf_bits), zero_thr.any()]).tolist()
    if not ok:
        return None
    if any_zero_thr:
        keep = _reference_rows(x, k, keep, zero_thr)
    return keep


def _reference_rows(x: Tensor, k: int, keep: Tensor, rows: Tensor) -> Tensor:
    """keep [..., n] with the rows where rows [..., 1] is True replaced by the reference's choice (bits)."""
    n = x.shape[-1]
    keep = keep.reshape(-1, n).clone()
    sel = rows.reshape(-1).nonzero().squeeze(1)
    idx = torch.topk(x.detach().reshape(-1, n)[sel].abs(), k, dim=-1, sorted=False).indices
    keep[sel] = torch.zeros_like(keep[sel]).scatter_(-1, idx, -1)
    return keep.view(x.shape)


class _KeepBits(torch.autograd.Function):
    """y = x where keep_bits is -1, +0.0 where it is 0 (a bitwise AND); the gradient is masked the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, keep_bits: Tensor) -> Tensor:
        ctx.save_for_backward(keep_bits)
        return (x.view(keep_bits.dtype) & keep_bits).view(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep_bits,) = ctx.saved_tensors
        return (grad.view(keep_bits.dtype) & keep_bits).view(grad.dtype), None


def abstopk_threshold(x: Tensor, k: int) -> Tensor:
    """AbsTopK by a per-row magnitude threshold (CPU, float32/float64). x: [..., n] -> [..., n].

    Several times faster than torch.topk on the CPU (docs/performance.md). Kept entries are x bit for bit and
    dropped ones +0.0, as torch.where(keep, x, 0) would give; the gradient is masked the same way. Equal to
    `abstopk_reference`, gradients included: ties at a nonzero threshold and NaNs fall back to it, and rows
    with fewer than k nonzeros take its choice of which zeros are kept (and receive gradient).
    """
    keep = threshold_keep_bits(x, k)
    if keep is None:
        return abstopk_reference(x, k)
    return _KeepBits.apply(x, keep)


def abstopk_reference(x: Tensor, k: int) -> Tensor:
    """Reference AbsTopK via torch.topk + scatter. x: [..., n] -> [..., n]."""
    idx = torch.topk(x.abs(), k, dim=-1, sorted=False).indices
    # scatter(gather) rather than x * mask: dropped entries become +0 even where x is inf or NaN,
    # and the backward of gather sends gradient to the kept indices only.
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))
