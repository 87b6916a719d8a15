"""Weight sparsity: after every AdamW step, keep the largest-|w| entries of each tensor (PAPER.md 3.1-3.2).

Every sparsified tensor keeps the same fraction f of its entries: k = round(f * numel), at least 1. There is
no global top-k, so width can grow at an exactly fixed number of nonzeros. Gradients and Adam moments are
never masked, so a zeroed weight can come back when its dense update makes it large again.

Minimum-fan rule (j = `min_fan`, PAPER.md 3.2 implementation note): the j largest-|w| entries of every
neuron or attention channel are protected in each matrix that touches it, and count inside the budget:
  - rows of `attn.c_attn` (one row per q/k/v channel) and of `mlp.c_fc` (one row per MLP neuron);
  - columns of `attn.c_proj` (one per v channel) and of `mlp.c_proj` (one per MLP neuron).
When the budget k is smaller than j * (number of neurons), the budget wins: j shrinks to
floor(k / neurons), so every neuron keeps the same guaranteed share and the count stays exact; if k is
below the number of neurons, nothing is protected and the tensor is a plain top-k.

Ties: the kept set is chosen by `torch.topk` indices, not by comparing against the k-th magnitude, so
exactly k entries are kept even when magnitudes tie (e.g. many exact zeros). All of it runs on the device
without a host sync and without a Python loop over rows.

CPU fast path (`threshold_keep_bits`): torch.topk of a quarter of a 262k-entry tensor costs milliseconds on
the CPU, so there each tensor's k-th largest |w| (and each neuron's j-th, for the minimum fan) is found by
numpy's introselect over the magnitudes read as integers, and the weights are zeroed with an integer AND.
The projected weights equal the reference's (`topk_mask`): where ties would make the threshold keep other
than k entries (or j per neuron), or a weight is not finite, the reference runs instead. Ties at zero
(fewer than k nonzeros) are not an exception: the reference keeps arbitrary zeros, the fast path all of
them, and the weights are the same. `USE_THRESHOLD_ON_CPU = False` selects the reference everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.autograd.graph import increment_version

from sparsecircuits.model.abstopk import FLOAT_BITS

# The CPU fast path of the projection (`threshold_keep_bits`); False runs the torch.topk reference everywhere.
USE_THRESHOLD_ON_CPU = True

# Parameters that stay dense and outside L0 (PAPER.md 3.1): norm gains (every module named ln_*: ln_1,
# ln_2, ln_f and the position-channel norms ln_p1/ln_p2), positional embeddings, attention sink logits
# and the bigram table.
DENSE_MODULES = ("wpe", "attn_imp", "bigram_table")

# Matrices whose neurons/channels get the minimum-fan protection, and the dim that runs over one neuron's
# weights: 1 = the neuron is a row (fan-in), 0 = the neuron is a column (fan-out). nn.Linear orientation.
FAN_DIMS = {"attn.c_attn.weight": 1, "mlp.c_fc.weight": 1, "attn.c_proj.weight": 0, "mlp.c_proj.weight": 0}


@dataclass
class SparseTensor:
    """One sparsified parameter. `group` is "main" (linear-layer matrices) or "quirk" (token embedding,
    unembedding and all biases: the tensors the paper's A.2 schedule bug treated differently)."""

    name: str
    param: nn.Parameter
    group: str
    fan_dim: int | None


def is_sparsified(name: str) -> bool:
    """True for every weight and bias that L0 applies to; False for the dense parameters above.

    Raises ValueError for a parameter this module has no rule for, so a new model parameter cannot be
    silently left dense (or silently sparsified)."""
    parts = name.split(".")
    if any(p.startswith("ln_") or p in DENSE_MODULES for p in parts):
        return False
    if name.endswith(".weight") or name.endswith(".bias") or name == "final_logits_bias":
        return True
    raise ValueError(f"no sparsity rule for parameter {name!r}; add it to train/sparsity.py")


def param_group(name: str) -> str:
    """ "quirk" for embedding, unembedding and biases; "main" for the linear-layer matrices."""
    if name in ("transformer.wte.weight", "lm_head.weight") or name.endswith("bias"):
        return "quirk"
    return "main"


def fan_dim(name: str) -> int | None:
    for suffix, dim in FAN_DIMS.items():
        if name.endswith(suffix):
            return dim
    return None


def sparse_tensors(model: nn.Module) -> list[SparseTensor]:
    """The sparsified parameters of a GPT (unwrapped, not DDP), in named_parameters order."""
    out = []
    for name, p in model.named_parameters():
        if is_sparsified(name):
            out.append(SparseTensor(name, p, param_group(name), fan_dim(name)))
    return out


def kept_count(frac: float, numel: int) -> int:
    """k = round(frac * numel) (halves round up), clamped to [1, numel]."""
    return min(numel, max(1, math.floor(frac * numel + 0.5)))


def topk_mask(w: Tensor, k: int, min_fan: int = 0, fan_dim: int | None = None) -> Tensor:
    """Boolean keep-mask with exactly k True entries: the min-fan protected entries, then the largest |w|.

    w: [n] or [rows, cols]; returns bool of the same shape. fan_dim as in FAN_DIMS (None: no protection).
    """
    n = w.numel()
    if k >= n:
        return torch.ones_like(w, dtype=torch.bool)
    score = w.detach().abs()
    if fan_dim is not None and min_fan > 0 and w.ndim == 2:
        n_units = w.shape[1 - fan_dim]
        j = min(min_fan, w.shape[fan_dim], k // n_units)  # the budget wins over the rule (module doc)
        if j > 0:
            idx = torch.topk(score, j, dim=fan_dim, sorted=False).indices
            protected = torch.zeros_like(w, dtype=torch.bool).scatter_(fan_dim, idx, True)
            # +inf ranks the protected entries first; there are at most k of them, so all are kept.
            score = score.masked_fill(protected, math.inf)
    flat = score.reshape(-1)
    # Select whichever side is smaller: while annealing most entries are kept, and the n - k smallest
    # are cheaper to find than the k largest. Both give exactly k kept entries.
    if 2 * k <= n:
        idx = torch.topk(flat, k, sorted=False).indices
        mask = torch.zeros(n, dtype=torch.bool, device=w.device).scatter_(0, idx, True)
    else:
        idx = torch.topk(flat, n - k, largest=False, sorted=False).indices
        mask = torch.ones(n, dtype=torch.bool, device=w.device).scatter_(0, idx, False)
    return mask.view_as(w)


@torch.no_grad()
def project_(w: Tensor, k: int, min_fan: int = 0, fan_dim: int | None = None) -> None:
    """Zero, in place, every entry of w outside `topk_mask(w, k, min_fan, fan_dim)`. w: [n] or [rows, cols].

    Uses the CPU fast path where it applies and decides (same weights as the reference), else the reference.
    """
    keep = None
    if USE_THRESHOLD_ON_CPU and w.device.type == "cpu" and w.dtype in FLOAT_BITS and k < w.numel():
        keep = threshold_keep_bits(w, k, min_fan, fan_dim)
    if keep is None:
        w.masked_fill_(~topk_mask(w, k, min_fan, fan_dim), 0.0)
    else:
        wn = w.detach().numpy().view(keep.dtype)
        np.bitwise_and(wn, keep, out=wn)  # one thread: no parallel-region barrier on a loaded machine
        increment_version(w)  # a write autograd cannot see otherwise


def _at_least_kth(score: np.ndarray, k: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select with a threshold: (keep, exact, thr). score: integer magnitudes in [0, the dtype's |x| mask].

    thr: the k-th largest score along axis, kept as a dim of size 1; keep: bits of score's shape, -1 where
    score >= thr, else 0; exact: shaped like thr, True where no tie crosses the threshold, i.e. exactly k
    entries are kept."""
    n = score.shape[axis]
    part = np.partition(score, n - k, axis=axis)
    thr = part.take([n - k], axis=axis)
    exact = part.take(range(n - k), axis=axis).max(axis=axis, keepdims=True, initial=-1) < thr
    return _at_least(score, thr), exact, thr


def _at_least(score: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Bits -1 where score >= thr (broadcast), else 0. Both in [0, the |x| mask], so nothing overflows."""
    keep = np.subtract(thr - 1, score)
    return np.right_shift(keep, score.itemsize * 8 - 1, out=keep)


def _global_keep(score: np.ndarray, k: int) -> np.ndarray | None:
    """Bits -1 on the k largest scores (all nonzero ones if there are at most k), or None on a tie across
    the threshold. score: integer magnitudes, any shape.

    The k-th largest is selected among the nonzero scores only when zeros are many: numpy's introselect
    slows down ~100x on a large block of equal values (re-projecting already sparse weights)."""
    flat = score.reshape(-1)
    nonzero = np.count_nonzero(flat)
    if nonzero <= k:
        return np.full(score.shape, -1, dtype=score.dtype)
    cand = flat[flat != 0] if 4 * (flat.size - nonzero) > flat.size else flat
    part = np.partition(cand, cand.size - k)
    thr = part[cand.size - k]
    if part[: cand.size - k].max() >= thr:
        return None
    return _at_least(score, thr)


def threshold_keep_bits(w: Tensor, k: int, min_fan: int = 0, fan_dim: int | None = None) -> np.ndarray | None:
    """The keep-set of `topk_mask` as integer bits (-1 kept, 0 dropped), or None where the reference decides.

    w: [n] or [rows, cols], float32 (int32 bits) or float64 (int64), on the CPU, 1 <= k < numel. None when a
    weight is not finite, when ties make a neuron's j-th largest |w| protect other than j entries, or when
    ties at a nonzero k-th largest score keep other than k entries. With at most k nonzero scores every
    entry is kept (the weights are the reference's: it keeps arbitrary zeros besides).
    """
    bits = FLOAT_BITS[w.dtype]
    score = np.bitwise_and(w.detach().numpy().view(bits.dtype), bits.abs_bits)  # |w|, ordered as magnitudes
    if score.max() >= bits.inf_bits:
        return None
    if fan_dim is not None and min_fan > 0 and w.ndim == 2:
        j = min(min_fan, w.shape[fan_dim], k // w.shape[1 - fan_dim])  # as in topk_mask
        if j > 0:
            protected, exact, _ = _at_least_kth(score, j, fan_dim)
            if not exact.all():
                return None
            # Protected entries rank above every finite weight (the reference gives them +inf); at most k.
            score |= protected & bits.inf_bits
    return _global_keep(score, k)


class WeightSparsifier:
    """Projects a model's weights onto the current L0 fraction, in place, after each optimizer step."""

    def __init__(self, model: nn.Module, min_fan: int = 4):
        self.tensors = sparse_tensors(model)
        self.min_fan = min_fan

    @torch.no_grad()
    def apply(self, frac: float, quirk_frac: float | None = None) -> None:
        """Zero all but the kept entries of every sparsified tensor.

        frac: fraction for the "main" group; quirk_frac: for the "quirk" group (defaults to frac)."""
        for t in self.tensors:
            f = frac if (t.group == "main" or quirk_frac is None) else quirk_frac
            k = kept_count(f, t.param.numel())
            if k >= t.param.numel():
                continue  # dense: nothing to do (and no top-k cost while f = 1)
            project_(t.param, k, self.min_fan, t.fan_dim)

    def numel(self) -> int:
        """Total entries of all sparsified tensors (the denominator of the L0 fraction)."""
        return sum(t.param.numel() for t in self.tensors)

    @torch.no_grad()
    def nonzero(self) -> int:
        """Total nonzero entries of all sparsified tensors (one host sync; call at log steps only)."""
        counts = torch.stack([torch.count_nonzero(t.param) for t in self.tensors])
        return int(counts.sum().item())
