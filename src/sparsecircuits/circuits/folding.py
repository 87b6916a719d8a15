"""Linear layers specialised to the node gates a forward runs with (pruning speed, issue 15).

**Closed inputs folded into the bias.** With 0/1 gates and a fixed ablation value mu (mean, task mean or
zero), a linear layer that reads a node location directly (c_attn and c_fc read `act_in`, the MLP's c_proj
reads `post_act`) sees the open channels and the constant mu on the closed ones, so

    W x + b = W[:, open] x[open] + (W[:, closed] mu[closed] + b)

and its matmul needs only the open columns: a few of the hundreds a location has in a pruned circuit. While
such a forward runs, each of these modules' forward is that product (an instance attribute, removed
afterwards); the model's forward is unchanged, and hooks on the module (the edge stage's) still fire. Equal to
the plain product up to float rounding (another summation order). The attention's c_proj is not folded: it
reads the heads' mixed values, not the `v` location itself.

**Gates being trained.** Mask training's gates are 0/1 in the forward too (a Heaviside step), so the forward
folds the same way; its backward must still give every input channel its gradient dL/dx = dL/dy W, closed ones
included (the straight-through gradient of a closed gate is dL/dx_j (x_j - mu_j), and it is what reopens the
gate). That product in turn needs only the rows of W whose output channel carries a gradient: a gate passes
d(g x + (1 - g) v)/dx = g of it to the node it gates, so a closed node receives none, and after the first few
dozen steps of mask training nearly every node is closed (about a hundred of the shipped model's 5,696 stay
open). So while gates are trained, every frozen linear layer of the model multiplies only the rows with a
gradient in its backward, and the ones reading a node location also fold their forward. The weights (frozen
while pruning) get no gradient. Exact up to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsecircuits.model.locations import HEAD_CHANNEL, node_location, weight_matrices

# The weight matrices whose input is a node location's value itself.
FOLDABLE = tuple(m for m in weight_matrices() if node_location(m.src).kind != HEAD_CHANNEL)


def is_discrete(gates: Tensor) -> bool:
    """Whether `gates` are all 0 or 1 and carry no gradient (a circuit, not a mask being trained)."""
    return not gates.requires_grad and bool(((gates == 0) | (gates == 1)).all())


@contextmanager
def swapped_forwards(forwards: dict[nn.Module, Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Within the block each module's forward is the given function (an instance attribute, removed after): the
    model's one forward runs unchanged around it, and hooks on the modules still fire."""
    try:
        for module, forward in forwards.items():
            module.forward = forward
        yield
    finally:
        for module in forwards:
            vars(module).pop("forward", None)  # the class's forward again


def _folded_forwards(
    model: nn.Module, locations: dict[str, tuple[Tensor, Tensor]], trained: bool
) -> dict[nn.Module, Callable[[Tensor], Tensor]]:
    """Folded forwards of the linear layers reading a node location directly.

    locations: node location (e.g. "0.mlp.act_in") -> (gates [width] 0/1, ablated value mu [width]) of a
    gated model whose hook at that location gives g * x + (1 - g) * mu and nothing else changes it.
    A location with every channel open keeps the plain product. trained: every input channel gets its
    gradient (gates being trained), not only the open ones."""
    forwards = {}
    for layer in range(model.cfg.n_layer):
        for matrix in FOLDABLE:
            g, mu = locations.get(f"{layer}.{matrix.src}", (None, None))
            if g is None or bool(g.all()):
                continue
            linear = model.get_submodule(f"transformer.h.{layer}.{matrix.param.removesuffix('.weight')}")
            forwards[linear] = _folded_forward(linear, g, mu, trained)
    return forwards


def _folded_forward(linear: nn.Linear, g: Tensor, mu: Tensor, trained: bool) -> Callable[[Tensor], Tensor]:
    """x [..., in] -> linear(x) [..., out], reading only the columns where g is 1 (x is mu where g is 0)."""
    weight = linear.weight.detach()
    open_ = g.nonzero()[:, 0].to(weight.device)
    w_open_t = weight[:, open_].T  # [n_open, out]
    const = weight @ ((1 - g) * mu).to(weight)  # [out]
    if linear.bias is not None:
        const = const + linear.bias.detach()
    if trained:
        return lambda x: _FoldedLinear.apply(x, weight, w_open_t, open_, const)
    return functools.partial(_folded_product, w_open_t=w_open_t, open_=open_, const=const)


def _folded_product(x: Tensor, w_open_t: Tensor, open_: Tensor, const: Tensor) -> Tensor:
    """const + x[..., open] @ w_open_t: x [..., in] -> [..., out] (autograd reaches the open columns only)."""
    lead = x.shape[:-1]
    if len(open_) == 0:  # every input closed: the output is the constant
        return const.to(x.dtype).expand(*lead, -1).contiguous()
    out = torch.addmm(const.to(x.dtype), x[..., open_].reshape(-1, len(open_)), w_open_t.to(x.dtype))
    return out.view(*lead, out.shape[-1])


def _input_grad(grad: Tensor, weight: Tensor) -> Tensor:
    """dL/dx = grad @ weight over the output channels whose gradient is not all zero. grad [..., out],
    weight [out, in] -> [..., in]."""
    w = weight.to(grad.dtype)
    flat = grad.reshape(-1, grad.shape[-1])
    live = flat.any(0).nonzero()[:, 0]
    # gathering the live columns pays only where most are zero
    dx = flat @ w if 2 * len(live) > grad.shape[-1] else flat[:, live] @ w[live]
    return dx.view(*grad.shape[:-1], w.shape[1])


class _FoldedLinear(torch.autograd.Function):
    """`_folded_product` forward; backward: the gradient of every input column (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, w_open_t: Tensor, open_: Tensor, const: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return _folded_product(x, w_open_t, open_, const)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (weight,) = ctx.saved_tensors
        return _input_grad(grad, weight) if ctx.needs_input_grad[0] else None, None, None, None, None


class _OpenOutputsLinear(torch.autograd.Function):
    """y = x W^T + b; backward: dL/dx from the rows of W whose output channel has a gradient, none for W, b."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        return _input_grad(grad, weight) if ctx.needs_input_grad[0] else None, None, None


def _open_outputs(linear: nn.Linear, x: Tensor) -> Tensor:
    return _OpenOutputsLinear.apply(x, linear.weight, linear.bias)


def circuit_linears(model: nn.Module, mask, gates: Tensor, donors: dict | None = None):
    """The linear layers for a forward of `model` with the node gates `gates` [n_nodes] of `mask` (a
    circuits.masks.NodeMask), as a context manager. 0/1 gates with a fixed ablation value (no resample donors)
    fold the closed inputs; gates being trained (carrying a gradient) also take every frozen linear's input
    gradient from its output channels with a gradient only. Other gates: the plain layers."""
    trained = gates.requires_grad
    forwards = {}
    if trained:  # frozen linears only: the folded and open-output backwards give the weights no gradient
        linears = [m for m in model.modules() if type(m) is nn.Linear and not m.weight.requires_grad]
        forwards = {m: functools.partial(_open_outputs, m) for m in linears}
    g = gates.detach()
    if donors is None and is_discrete(g):
        pieces, mus = mask.split(g.to(mask.mu.device)), mask.split(mask.mu)
        folded = _folded_forwards(model, {loc: (p, mus[loc]) for loc, p in pieces.items()}, trained)
        # while gates train, only the frozen linears fold (the folded backward gives the weights no gradient)
        forwards |= {m: f for m, f in folded.items() if not trained or m in forwards}
    return swapped_forwards(forwards)
