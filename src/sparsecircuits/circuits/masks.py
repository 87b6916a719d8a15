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


class Gates(nn.Module):
    """Learned 0/1 gates over `n_units` units (nodes, tied pairs or edges): H(tau) forward, a sigmoid surrogate
    backward. Subclasses say what a unit is and how its gate acts on the model."""

    def __init__(self, n_units: int, init_bias: float, init_scale: float, temp: float, generator):
        super().__init__()
        self.temp = temp
        tau = init_bias + init_scale * torch.randn(n_units, generator=generator)
        self.tau = nn.Parameter(tau.clamp(-1, 1))

    @property
    def n_units(self) -> int:
        return len(self.tau)

    def expand(self, per_unit: Tensor) -> Tensor:
        """A per-unit tensor spread to whatever the gates act on (the identity unless units are tied)."""
        return per_unit

    def gates(self) -> Tensor:
        """Learned gates H(tau) with the surrogate gradient, in {0., 1.} (spread by `expand`)."""
        return self.expand(HeavisideSTE.apply(self.tau, self.temp))

    def top_k_gates(self, k: int) -> Tensor:
        """Discrete gates keeping the k units with the largest tau (ties: lower index first)."""
        order = torch.argsort(self.tau.detach(), descending=True, stable=True)
        g = torch.zeros(self.n_units, device=self.tau.device)
        g[order[:k]] = 1.0
        return self.expand(g)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(-1, 1)


class NodeMask(Gates):
    """One gate per node over the given locations, stored flat so ranking and counting are one tensor op.

    widths: location hook name -> width, in forward order. means: location -> [width] ablation values
    (used by "mean" and "task-mean" only; the resample ablations take their values from donors, see `hooks`).
    tie_qk: one gate per query/key channel pair (`{l}.attn.q.i` with `{l}.attn.k.i`; PAPER.md 5.1, fn 17):
    tau then has one entry per *unit* (a node, or a tied pair), and ranking and top-k work on units.
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
        tie_qk: bool = False,
    ):
        strategy = get_ablation(ablation)
        if strategy.means and means is None:
            raise UserError(f"the {ablation} ablation needs mean activations")
        locations = list(widths)
        offsets = [0]
        for loc in locations:
            offsets.append(offsets[-1] + widths[loc])
        units = tied_units(locations, offsets) if tie_qk else None  # [n_nodes] or None
        n_units = offsets[-1] if units is None else int(units.max()) + 1
        super().__init__(n_units, init_bias, init_scale, temp, generator)
        self.strategy, self.ablation, self.units = strategy, ablation, units
        self.locations, self.widths, self.offsets = locations, [widths[k] for k in locations], offsets
        mu = torch.zeros(self.n_nodes)
        if strategy.means:
            mu = torch.cat([means[k].float().reshape(-1) for k in self.locations])
        self.register_buffer("mu", mu)

    @classmethod
    def for_model(cls, model, *args, **options) -> NodeMask:
        """A mask over every node location of `model`, in forward order (the other arguments as __init__'s)."""
        widths = {loc: model.location_width(loc) for loc in model.node_locations()}
        return cls(widths, *args, **options)

    @property
    def n_nodes(self) -> int:
        return self.offsets[-1]

    def unit_index(self) -> Tensor:
        """The unit of every node. Returns LongTensor [n_nodes]."""
        return torch.arange(self.n_nodes) if self.units is None else self.units

    def expand(self, per_unit: Tensor) -> Tensor:
        """A per-unit tensor [n_units] spread to nodes [n_nodes] (tied units: both nodes of a pair)."""
        return per_unit if self.units is None else per_unit[self.units.to(per_unit.device)]

    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Cut a flat [n_nodes] tensor into per-location pieces."""
        return {k: flat[a:b] for k, a, b in zip(self.locations, self.offsets[:-1], self.offsets[1:])}

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


def tied_units(locations: list[str], offsets: list[int]) -> Tensor:
    """Unit index per node with every `{l}.attn.k.i` sharing the unit of `{l}.attn.q.i`. Returns [n_nodes]."""
    n = offsets[-1]
    owner = torch.arange(n)
    start = dict(zip(locations, offsets[:-1]))
    for loc in locations:
        if loc.endswith(".attn.k") and loc[: -len("k")] + "q" in start:
            q0, k0 = start[loc[: -len("k")] + "q"], start[loc]
            width = offsets[locations.index(loc) + 1] - k0
            owner[k0 : k0 + width] = torch.arange(q0, q0 + width)
    return torch.unique(owner, return_inverse=True)[1]  # renumbered 0..n_units-1 in node order


def _gate_fn(g: Tensor, ablated: Tensor) -> Callable[[Tensor], Tensor]:
    """x -> g * x + (1 - g) * ablated; ablated is [width] (a fixed value) or [B, T, width] (donors)."""
    fixed = (1 - g) * ablated if ablated.dim() == 1 else None  # [width], once per install, not per call

    def fn(x: Tensor) -> Tensor:
        gg = g.to(x.dtype)
        if fixed is not None:
            return torch.addcmul(fixed.to(x.dtype), x, gg)  # one pass over x instead of three
        value = ablated[:, : x.shape[1]]
        return gg * x + (1 - gg) * value.to(x.dtype)

    # every node closed for good (no gradient to the gates): the forward may skip what this hook discards
    fn.constant = ablated if fixed is not None and not g.requires_grad and not bool(g.any()) else None
    return fn
