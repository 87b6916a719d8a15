"""Edge masks inside a node circuit (beyond the paper, which prunes nodes only; issue 15).

An edge is a nonzero weight w_ij between two circuit nodes (circuits/edges.py). Ablating it replaces its
contribution w_ij * x_j by w_ij * mu_j, where mu_j is the value the node ablation gives node j (its mean under
"mean" and "task-mean", 0 under "zero"): ablating an edge is mean-ablating one input of one weight. With gates g:

    y = W x + b - sum over edges e=(i, j) of (1 - g_e) * w_ij * (x_j - mu_j)

The correction acts through a forward hook on the weight's nn.Linear (a weight-level hook), so the model's one
forward runs unchanged around it. Closing every edge out of a node equals ablating that node (for the output of
an attention head, whose mean is taken to be its value channel's: exact when the attention weights sum to 1,
i.e. without a sink). With every gate open the correction is exactly zero, and no hook is installed at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from sparsecircuits.circuits.edges import Edge, MatrixEdges, edge_entries
from sparsecircuits.circuits.masks import Gates, NodeMask
from sparsecircuits.errors import UserError


class EdgeMask(Gates):
    """One gate per edge of the node circuit `node_gates` [n_nodes] of `node_mask` (mean or zero ablation)."""

    def __init__(
        self,
        model,
        node_mask: NodeMask,
        node_gates: Tensor,
        init_bias: float = 0.1,
        init_scale: float = 0.01,
        temp: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        if node_mask.strategy.donors:
            raise UserError(
                f"edge pruning needs a fixed ablation value per node (mean or zero), not {node_mask.ablation!r}"
            )
        nodes = {loc: g.bool() for loc, g in node_mask.split(node_gates).items()}
        matrices = [m for m in edge_entries(model.state_dict(), model.cfg, nodes) if len(m.rows)]
        super().__init__(sum(len(m.rows) for m in matrices), init_bias, init_scale, temp, generator)
        self.matrices = matrices
        self.offsets = [0]
        for m in matrices:
            self.offsets.append(self.offsets[-1] + len(m.rows))
        means = node_mask.split(node_mask.mu)
        self.mu = [means[f"{m.layer}.{m.matrix.src}"] for m in matrices]  # per matrix [src width]

    @property
    def n_edges(self) -> int:
        return self.n_units

    def edges(self, model, gates: Tensor | None = None) -> list[Edge]:
        """(src, dst, weight) of the edges, all or only those with gate 1, in `circuit_edges` order."""
        out: list[Edge] = []
        for m, a, b in zip(self.matrices, self.offsets[:-1], self.offsets[1:]):
            keep = None if gates is None else (gates[a:b] > 0).to(m.rows.device)
            out.extend(m.named(model.get_submodule(m.module).weight.detach(), keep=keep))
        return out

    @contextmanager
    def hooks(self, model, gates: Tensor) -> Iterator[None]:
        """Install the edge gates `gates` [n_edges] (1 keeps an edge) on the model's linear layers."""
        handles = []
        try:
            for m, mu, a, b in zip(self.matrices, self.mu, self.offsets[:-1], self.offsets[1:]):
                g = gates[a:b]
                if bool((g.detach() == 1).all()):
                    continue  # nothing closed: the module runs exactly as without a hook
                linear = model.get_submodule(m.module)
                handles.append(linear.register_forward_hook(_edge_hook(m, mu, g)))
            yield
        finally:
            for h in handles:
                h.remove()


def _edge_hook(m: MatrixEdges, mu: Tensor, g: Tensor):
    """Forward hook of one nn.Linear: subtract the closed edges' (x_j - mu_j) * w_ij from its output."""
    cols, inverse = torch.unique(m.cols, return_inverse=True)

    def hook(linear, args, out: Tensor) -> Tensor:
        x = args[0]
        w = linear.weight[m.rows, m.cols]  # [E]
        closed = torch.zeros(out.shape[-1], len(cols), dtype=out.dtype, device=out.device)
        closed = closed.index_put((m.rows, inverse), (w * (1 - g)).to(out.dtype))  # [out, used cols]
        return out - (x[..., cols] - mu[cols].to(x.dtype)) @ closed.T

    return hook


def stored_edge_gates(circuit: dict, model, node_mask: NodeMask, node_gates: Tensor) -> EdgeGates | None:
    """The edges a circuit file keeps, as gates over its node circuit's edges; None when it keeps them all
    (no edge stage ran, or it removed nothing), so nothing needs a hook. node_gates: [n_nodes] of the file."""
    if node_mask.strategy.donors:
        return None  # the edge stage never runs under a resample ablation
    mask = EdgeMask(model, node_mask, node_gates).to(node_gates.device)
    every = [(src, dst) for src, dst, _ in mask.edges(model)]
    stored = {(e["src"], e["dst"]) for e in circuit["edges"]}
    unknown = stored - set(every)
    if unknown:
        src, dst = sorted(unknown)[0]
        raise UserError(f"the circuit lists an edge {src} -> {dst} that its nodes do not have in this model")
    if len(stored) == len(every):
        return None
    gates = torch.tensor([1.0 if e in stored else 0.0 for e in every], device=node_gates.device)
    return EdgeGates(mask, gates)


class EdgeGates:
    """An edge mask with fixed gates: `with edge_gates.hooks(model):` runs the model with the closed edges
    ablated."""

    def __init__(self, mask: EdgeMask, gates: Tensor):
        self.mask, self.gates = mask, gates

    def hooks(self, model):
        return self.mask.hooks(model, self.gates)
