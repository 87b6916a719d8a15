"""Closed inputs folded into a linear layer's bias: cheaper scores of a discrete circuit (pruning speed, issue 15).

With 0/1 gates and a fixed ablation value mu (mean, task mean or zero), a linear layer that reads a node
location directly (c_attn and c_fc read `act_in`, the MLP's c_proj reads `post_act`) sees the circuit's open
channels and the constant mu on the closed ones, so

    W x + b = W[:, open] x[open] + (W[:, closed] mu[closed] + b)

and its matmul needs only the open columns: a few of the hundreds a location has in a pruned circuit. While a
circuit runs, each such module's forward is that product (an instance attribute, removed afterwards); the
model's forward is unchanged, and hooks on the module (the edge stage's) still fire. Equal to the plain
product up to float rounding (another summation order). The attention's c_proj is not folded: it reads the
heads' mixed values, not the `v` location itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn

from sparsecircuits.model.locations import HEAD_CHANNEL, node_location, weight_matrices

# The weight matrices whose input is a node location's value itself.
FOLDABLE = tuple(m for m in weight_matrices() if node_location(m.src).kind != HEAD_CHANNEL)


def is_discrete(gates: Tensor) -> bool:
    """Whether `gates` are all 0 or 1 and carry no gradient (a circuit, not a mask being trained)."""
    return not gates.requires_grad and bool(((gates == 0) | (gates == 1)).all())


@contextmanager
def folded_inputs(model: nn.Module, locations: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Within the block, the linear layers reading a node location take only its open channels.

    locations: node location (e.g. "0.mlp.act_in") -> (gates [width] 0/1, ablated value mu [width]) of a
    gated model whose hook at that location gives g * x + (1 - g) * mu and nothing else changes it.
    A location with every channel open keeps the plain product."""
    patched: list[nn.Module] = []
    try:
        for layer in range(model.cfg.n_layer):
            for matrix in FOLDABLE:
                g, mu = locations.get(f"{layer}.{matrix.src}", (None, None))
                if g is None or bool(g.all()):
                    continue
                linear = model.get_submodule(f"transformer.h.{layer}.{matrix.param.removesuffix('.weight')}")
                linear.forward = _folded_forward(linear, g, mu)
                patched.append(linear)
        yield
    finally:
        for linear in patched:
            del linear.forward  # the class's forward again


def _folded_forward(linear: nn.Linear, g: Tensor, mu: Tensor) -> Callable[[Tensor], Tensor]:
    """x [..., in] -> linear(x) [..., out], reading only the columns where g is 1 (x is mu where g is 0)."""
    weight = linear.weight.detach()
    open_ = g.nonzero()[:, 0].to(weight.device)
    w_open = weight[:, open_]  # [out, n_open]
    const = weight @ ((1 - g) * mu).to(weight)  # [out]
    if linear.bias is not None:
        const = const + linear.bias.detach()

    def forward(x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        if len(open_) == 0:  # every input closed: the output is the constant
            return const.to(x.dtype).expand(*lead, -1).contiguous()
        out = torch.addmm(const.to(x.dtype), x[..., open_].reshape(-1, len(open_)), w_open.T.to(x.dtype))
        return out.view(*lead, out.shape[-1])

    return forward


def folded_circuit(model: nn.Module, mask, gates: Tensor, donors: dict | None = None):
    """`folded_inputs` for the node gates `gates` [n_nodes] of `mask` (a circuits.masks.NodeMask), where that
    applies: discrete gates and a fixed ablation value (no resample donors); else a no-op context."""
    if donors is not None or not is_discrete(gates):
        return nullcontext()
    pieces = mask.split(gates.to(mask.mu.device))
    mus = mask.split(mask.mu)
    return folded_inputs(model, {loc: (g, mus[loc]) for loc, g in pieces.items()})
