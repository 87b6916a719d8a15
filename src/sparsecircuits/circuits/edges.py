"""Circuit edges: a pure function of (weights, node set), used everywhere a circuit size is reported.

An edge is a nonzero entry of a weight matrix whose two end nodes are both in the circuit (PAPER.md 5.2,
DESIGN.md "Edges"). Per layer l, with nn.Linear orientation W[out, in]:

    {l}.attn.act_in.i    -> {l}.attn.q.c / .k.c / .v.c   attn.c_attn.weight[section * d_attn + c, i]
    {l}.attn.v.c         -> {l}.attn.resid_delta.o       attn.c_proj.weight[o, c]
    {l}.mlp.act_in.i     -> {l}.mlp.post_act.n           mlp.c_fc.weight[n, i]
    {l}.mlp.post_act.n   -> {l}.mlp.resid_delta.o        mlp.c_proj.weight[o, n]

(section 0, 1, 2 for q, k, v). This table is derived from the `weight_in` / `weight_out` columns of the
location table (model/locations.py, `weight_matrices`). Read channels i >= d_model (positions under pos_emb "concat") are nodes
like any other, and their weights give edges in the same way.

Reported separately, never counted as edges:

- Residual links: a circuit write `{l}.attn.resid_delta.o` or `{l}.mlp.resid_delta.o` and every LATER
  circuit read `{l'}.attn.act_in.o` / `{l'}.mlp.act_in.o` of the same channel o < d_model. The attention
  write of layer l feeds the MLP read of layer l and all reads of later layers; the MLP write of layer l
  feeds the reads of layers > l. A write feeds every later read of its channel, also past another write
  of that channel (the residual stream is a sum).
- QK pairs: `{l}.attn.q.c` and `{l}.attn.k.c` both in the circuit (same head, same channel). They meet
  in a dot product, not through a weight.
- Embedding and unembedding (our choice; the paper does not say how to count them). Channels are residual
  channels o < d_model, counted once however many layers use them:
  `embedding_channels` counts the distinct channels o read by some circuit read node that no earlier
  circuit write of channel o feeds (so the read carries the token embedding);
  `unembedding_channels` counts the distinct channels o written by some circuit write node that no later
  circuit read of channel o reads (so the write reaches the unembedding). Position channels
  (i >= d_model) count in neither. Biases are not edges either.

`circuit_edges` lists everything; `count_edges` only counts edges (cheap, for hot loops) and always
agrees with `len(circuit_edges(...).edges)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparsecircuits.circuits.nodes import NodeSet, count_nodes, nodes_by_location, validate_nodes
from sparsecircuits.errors import UserError
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.locations import (
    NODE_LOCATIONS,
    RESIDUAL_READ,
    RESIDUAL_WRITE,
    WeightMatrix,
    locations_of,
    weight_matrices,
)

Edge = tuple[str, str, float | None]  # (src node name, dst node name, weight or None)


# Forward order of their source locations, so edges come out sorted by source node.
MATRICES: tuple[WeightMatrix, ...] = weight_matrices()
READ_LOCATIONS = locations_of(RESIDUAL_READ)
WRITE_LOCATIONS = locations_of(RESIDUAL_WRITE)


@dataclass
class CircuitGraph:
    """Edges, residual links and QK pairs of a circuit, with the counts a circuit file reports.

    Lists are sorted by source node in forward order, then by destination.
    """

    edges: list[Edge] = field(default_factory=list)
    residual_links: list[tuple[str, str]] = field(default_factory=list)  # (write node, read node)
    qk_pairs: list[tuple[str, str]] = field(default_factory=list)  # (q node, k node)
    n_nodes: int = 0
    nodes_by_location: dict[str, int] = field(default_factory=dict)
    embedding_channels: int = 0
    unembedding_channels: int = 0

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def counts(self) -> dict[str, Any]:
        """The `counts` object of a circuit file (docs/formats.md)."""
        return {
            "nodes": self.n_nodes,
            "edges": self.n_edges,
            "residual_links": len(self.residual_links),
            "qk_pairs": len(self.qk_pairs),
            "nodes_by_location": dict(self.nodes_by_location),
            "embedding_channels": self.embedding_channels,
            "unembedding_channels": self.unembedding_channels,
        }

    def to_json(self) -> dict[str, Any]:
        """The `edges`, `residual_links`, `qk_pairs` and `counts` fields of a circuit file.

        An edge without a weight (built with with_weights=False) has no "weight" key.
        """
        return {
            "edges": [_edge_json(src, dst, w) for src, dst, w in self.edges],
            "residual_links": [{"src": src, "dst": dst} for src, dst in self.residual_links],
            "qk_pairs": [{"q": q, "k": k} for q, k in self.qk_pairs],
            "counts": self.counts(),
        }


def _edge_json(src: str, dst: str, weight: float | None) -> dict[str, Any]:
    return {"src": src, "dst": dst} if weight is None else {"src": src, "dst": dst, "weight": weight}


# ---- edges ------------------------------------------------------------------------------------------


def circuit_edges(
    params: Mapping[str, Tensor],
    cfg: ModelConfig,
    nodes: Mapping[str, Tensor],
    with_weights: bool = True,
) -> CircuitGraph:
    """Edges, residual links, QK pairs and counts of the circuit `nodes` in a model with weights `params`.

    params: state dict with the names of DESIGN.md (`transformer.h.{l}.attn.c_attn.weight`, ...);
    nodes: location -> bool mask [width] (missing locations are empty). with_weights=False leaves the
    edge weights None (saves reading them back). Nothing is modified.
    """
    nodes = validate_nodes(nodes, cfg)
    edges: list[Edge] = []
    for layer in range(cfg.n_layer):
        for matrix in MATRICES:
            edges.extend(_matrix_edges(params, cfg, nodes, layer, matrix, with_weights))
    graph = CircuitGraph(
        edges=edges,
        qk_pairs=_qk_pairs(cfg, nodes),
        n_nodes=count_nodes(nodes),
        nodes_by_location=nodes_by_location(nodes),
    )
    _add_residual_links(graph, cfg, nodes)
    return graph


def count_edges(params: Mapping[str, Tensor], cfg: ModelConfig, nodes: Mapping[str, Tensor]) -> int:
    """Number of edges of the circuit `nodes`; the same as `circuit_edges(...).n_edges`, but only counts.

    Counts the nonzeros of each weight matrix's [circuit rows, circuit columns] submatrix.
    """
    nodes = validate_nodes(nodes, cfg)
    total: Tensor | int = 0
    for layer in range(cfg.n_layer):
        for matrix in MATRICES:
            weight = _weight(params, cfg, layer, matrix)
            rows, cols = _end_indices(nodes, layer, matrix, weight.device)
            total = total + _submatrix(weight, rows, cols).count_nonzero()  # on the weights' device
    return int(total)


def _matrix_edges(
    params: Mapping[str, Tensor],
    cfg: ModelConfig,
    nodes: NodeSet,
    layer: int,
    matrix: WeightMatrix,
    with_weights: bool,
) -> list[Edge]:
    """Edges through one weight matrix, sorted by source index then row (q rows before k before v)."""
    weight = _weight(params, cfg, layer, matrix).detach()
    rows, cols = _matrix_entries(weight, nodes, layer, matrix)
    return MatrixEdges(layer, matrix, rows, cols).named(weight, with_weights)


def _matrix_entries(
    weight: Tensor, nodes: NodeSet, layer: int, matrix: WeightMatrix
) -> tuple[Tensor, Tensor]:
    """(rows [E], cols [E]) in the matrix of its edges, sorted by column then row.

    The nonzero entries of W restricted to circuit rows and columns, i.e. of
    (W != 0) & dst_mask[:, None] & src_mask[None, :], found in the gathered submatrix so that the cost
    follows the circuit's size rather than the matrix's.
    """
    rows, cols = _end_indices(nodes, layer, matrix, weight.device)
    sub = _submatrix(weight, rows, cols)  # [n_rows, n_cols]
    sub_cols, sub_rows = (sub != 0).T.nonzero().unbind(1)  # transposed: sorted by source column first
    return rows[sub_rows], cols[sub_cols]  # back to matrix indices (still sorted: indices ascend)


@dataclass
class MatrixEdges:
    """The edges of a circuit through one weight matrix, as entries of it."""

    layer: int
    matrix: WeightMatrix
    rows: Tensor  # [E] row indices (dst sections stacked, as in the weight)
    cols: Tensor  # [E] column indices (src channels)

    @property
    def module(self) -> str:
        """The nn.Linear holding the weight, e.g. `transformer.h.0.attn.c_attn`."""
        return f"transformer.h.{self.layer}.{self.matrix.param.removesuffix('.weight')}"

    def named(self, weight: Tensor, with_weights: bool = True, keep: Tensor | None = None) -> list[Edge]:
        """(src, dst, weight or None) of the edges (those where `keep` [E] is True, if given), in order.
        weight: the matrix [rows, cols] the entries index."""
        rows, cols = (self.rows, self.cols) if keep is None else (self.rows[keep], self.cols[keep])
        values = weight[rows, cols].float().tolist() if with_weights else [None] * len(rows)
        section_width = weight.shape[0] // len(self.matrix.dst)
        src_prefix = f"{self.layer}.{self.matrix.src}."
        dst_prefixes = [f"{self.layer}.{loc}." for loc in self.matrix.dst]
        return [
            (src_prefix + str(c), dst_prefixes[r // section_width] + str(r % section_width), w)
            for c, r, w in zip(cols.tolist(), rows.tolist(), values)
        ]


def edge_entries(
    params: Mapping[str, Tensor], cfg: ModelConfig, nodes: Mapping[str, Tensor]
) -> list[MatrixEdges]:
    """The circuit's edges per weight matrix, in the order `circuit_edges` lists them (layer, then matrix)."""
    nodes = validate_nodes(nodes, cfg)
    out = []
    for layer in range(cfg.n_layer):
        for matrix in MATRICES:
            weight = _weight(params, cfg, layer, matrix).detach()
            out.append(MatrixEdges(layer, matrix, *_matrix_entries(weight, nodes, layer, matrix)))
    return out


def _end_indices(
    nodes: NodeSet, layer: int, matrix: WeightMatrix, device: torch.device
) -> tuple[Tensor, Tensor]:
    """(row indices [n_rows], column indices [n_cols]), ascending, of one matrix's dst and src circuit nodes."""
    dst = torch.cat([nodes[f"{layer}.{loc}"] for loc in matrix.dst]).to(device)
    src = nodes[f"{layer}.{matrix.src}"].to(device)
    return dst.nonzero()[:, 0], src.nonzero()[:, 0]


def _submatrix(weight: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """weight[rows][:, cols] as one gather: [n_rows, n_cols]."""
    return weight[rows[:, None], cols[None, :]]


def _weight(params: Mapping[str, Tensor], cfg: ModelConfig, layer: int, matrix: WeightMatrix) -> Tensor:
    """The weight [rows, cols] of one matrix, checked against the shape cfg implies."""
    name = f"transformer.h.{layer}.{matrix.param}"
    if name not in params:
        raise UserError(f"model weights lack {name}")
    weight = params[name]
    shape = (sum(cfg.location_width(loc) for loc in matrix.dst), cfg.location_width(matrix.src))
    if tuple(weight.shape) != shape:
        raise UserError(f"{name} has shape {tuple(weight.shape)}, but the model config implies {shape}")
    return weight


# ---- QK pairs and the residual stream ----------------------------------------------------------------


def _qk_pairs(cfg: ModelConfig, nodes: NodeSet) -> list[tuple[str, str]]:
    """(q node, k node) for every head channel whose query and key are both in the circuit."""
    pairs: list[tuple[str, str]] = []
    for layer in range(cfg.n_layer):
        both = nodes[f"{layer}.attn.q"] & nodes[f"{layer}.attn.k"]
        pairs.extend(
            (f"{layer}.attn.q.{c}", f"{layer}.attn.k.{c}") for c in both.nonzero().flatten().tolist()
        )
    return pairs


def _residual_side(
    cfg: ModelConfig, nodes: NodeSet, locs: tuple[str, ...]
) -> tuple[list[str], Tensor, Tensor]:
    """Residual reads or writes in forward order: (location names, positions [n], masks [n, d_model]).

    A position is the location's index in the forward order of all node locations, so "earlier" is "<".
    """
    names = [f"{layer}.{loc}" for layer in range(cfg.n_layer) for loc in locs]
    positions = torch.tensor(
        [
            layer * len(NODE_LOCATIONS) + NODE_LOCATIONS.index(loc)
            for layer in range(cfg.n_layer)
            for loc in locs
        ]
    )
    masks = torch.stack([nodes[name][: cfg.d_model].cpu() for name in names])
    return names, positions, masks


def _add_residual_links(graph: CircuitGraph, cfg: ModelConfig, nodes: NodeSet) -> None:
    """Fill in residual_links, embedding_channels and unembedding_channels (module docstring)."""
    write_names, write_pos, writes = _residual_side(cfg, nodes, WRITE_LOCATIONS)  # writes [W, d_model]
    read_names, read_pos, reads = _residual_side(cfg, nodes, READ_LOCATIONS)  # reads [R, d_model]
    later = write_pos[:, None] < read_pos[None, :]  # [W, R]
    links = writes[:, None, :] & reads[None, :, :] & later[:, :, None]  # [W, R, d_model]
    w, o, r = links.permute(0, 2, 1).nonzero().unbind(1)  # sorted by write location, channel, read
    graph.residual_links = [
        (f"{write_names[wi]}.{oi}", f"{read_names[ri]}.{oi}")
        for wi, oi, ri in zip(w.tolist(), o.tolist(), r.tolist())
    ]
    unfed_reads = reads & ~links.any(dim=0)  # [R, d_model]
    unread_writes = writes & ~links.any(dim=1)  # [W, d_model]
    graph.embedding_channels = int(unfed_reads.any(dim=0).sum())
    graph.unembedding_channels = int(unread_writes.any(dim=0).sum())
