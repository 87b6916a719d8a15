"""Node masks as hooks on the one forward: x -> g * x + (1 - g) * ablated, with one gate per node.

The gate is a Heaviside step of a learned parameter tau in the forward pass and a sigmoid-derivative
surrogate (temperature T) in the backward pass (PAPER.md 7.2). With every gate open the hooks return
`1 * x + 0 * ablated`, which is bit-identical to x, so an open mask never changes the model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sparsecircuits.circuits.ablations import get_ablation
from sparsecircuits.errors import UserError


class HeavisideSTE(torch.autograd.Function):
    """H(tau) forward; d/dtau ~ sigmoid'(tau / T) / T backward."""

    @staticmethod
    def forward(ctx, tau: Tensor, temp: float) -> Tensor:
        ctx.save_for_backward(tau)
        ctx.temp = temp
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.temp)
        return grad * s * (1 - s) / ctx.temp, None


class NodeMask(nn.Module):
    """One gate per node over the given locations, stored flat so ranking and counting are one tensor op.

    widths: location hook name -> width, in forward order. means: location -> [width] ablation values
    (used by "mean" only; the resample ablations take their values from donors, see `hooks`).
    """

    def __init__(
        self,
        widths: dict[str, int],
        means: dict[str, Tensor] | None = None,
        ablation: str = "mean",
        init_bias: float = 0.1,
        init_scale: float = 0.01,
        temp: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.strategy = get_ablation(ablation)
        if ablation == "mean" and means is None:
            raise UserError("mean ablation needs mean activations")
        self.locations = list(widths)
        self.widths = [widths[k] for k in self.locations]
        self.offsets = [0]
        for w in self.widths:
            self.offsets.append(self.offsets[-1] + w)
        self.ablation, self.temp = ablation, temp
        n = self.offsets[-1]
        tau = init_bias + init_scale * torch.randn(n, generator=generator)
        self.tau = nn.Parameter(tau.clamp(-1, 1))
        mu = torch.zeros(n)
        if ablation == "mean":
            mu = torch.cat([means[k].float().reshape(-1) for k in self.locations])
        self.register_buffer("mu", mu)

    @property
    def n_nodes(self) -> int:
        return self.offsets[-1]

    def gates(self) -> Tensor:
        """Learned gates H(tau) with the surrogate gradient. Returns [n_nodes] in {0., 1.}."""
        return HeavisideSTE.apply(self.tau, self.temp)

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Cut a flat [n_nodes] tensor into per-location pieces."""
        return {k: flat[a:b] for k, a, b in zip(self.locations, self.offsets[:-1], self.offsets[1:])}

    def top_k_gates(self, k: int) -> Tensor:
        """Discrete gates keeping the k nodes with the largest tau (ties: lower index first). [n_nodes]."""
        order = torch.argsort(self.tau.detach(), descending=True, stable=True)
        g = torch.zeros_like(self.mu)
        g[order[:k]] = 1.0
        return g

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(-1, 1)

    def hooks(
        self, gates: Tensor, donors: dict[str, Tensor] | None = None
    ) -> dict[str, Callable[[Tensor], Tensor]]:
        """Hook fns gating every location. gates: [n_nodes] floats in [0, 1] (1 keeps the node).

        donors (resample ablations only): location -> [B, T, width] values of a clean forward of donor inputs
        (ablations.DonorSource); an ablated node takes the donor's value at the same prompt and position.
        """
        if self.strategy.donors and donors is None:
            raise UserError(f"the {self.ablation} ablation needs donor activations")
        gates = gates.to(self.mu.device)
        fns = {}
        for loc, g, mu in zip(self.locations, self.split(gates).values(), self.split(self.mu).values()):
            fns[loc] = _gate_fn(g, mu if donors is None else donors[loc])
        return fns


def _gate_fn(g: Tensor, ablated: Tensor) -> Callable[[Tensor], Tensor]:
    """x -> g * x + (1 - g) * ablated; ablated is [width] (a fixed value) or [B, T, width] (donors)."""

    def fn(x: Tensor) -> Tensor:
        value = ablated if ablated.dim() == 1 else ablated[:, : x.shape[1]]
        gg = g.to(x.dtype)
        return gg * x + (1 - gg) * value.to(x.dtype)

    return fn
