"""The hook points of the forward and the node locations among them: the one table everything derives from.

`LAYER_TABLE` has a row per hook point inside a layer, in forward order (model/gpt.py fires them in this
order, tested); `FINAL_TABLE` the two after the last layer. Eight rows are node locations (DESIGN.md: a node
is `{layer}.{location}.{index}`); `resid_in`, `attn.pattern`, `resid_mid`, `final_resid` and `logits` are
hook points without nodes. A row says:

- hook: the hook name inside a layer ("attn.q" is hook `3.attn.q` in layer 3);
- kind: residual read (RMSNorm of the residual, plus the positions under pos_emb "concat"), residual write,
  head channel (flat index head * d_head + channel) or neuron; the other hooks are residual, pattern, logits;
- width_of: the ModelConfig attribute that is its last-dim width (d_in, d_attn, d_model, d_mlp, vocab_size);
- weight_in / weight_out: where its edges live (circuits/edges.py). weight_in is the matrix (inside
  `transformer.h.{l}.`, nn.Linear orientation [out, in]) whose rows, axis 0, are this location; locations
  with the same weight_in are stacked in table order (c_attn rows: q, then k, then v). weight_out is the
  matrix whose columns, axis 1, are this location;
- reads_from: for a residual read, the residual hook it normalises (the bridge site, bridges/steer.py);
- row, label, legend, title, colour: how the viewer draws it (graph row, shared by q/k/v; row label and,
  for head channels, node label prefix; legend word; description; colour);
- authors: the paper authors' name for it (`afrac_loctypes` of their beeg_config.json).

Adding a node location: a row here, and its hook call in the forward (model/gpt.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sparsecircuits.errors import UserError

if TYPE_CHECKING:
    from sparsecircuits.model.config import ModelConfig

RESIDUAL_READ = "residual read"
HEAD_CHANNEL = "head channel"
NEURON = "neuron"
RESIDUAL_WRITE = "residual write"
NODE_KINDS = (RESIDUAL_READ, HEAD_CHANNEL, NEURON, RESIDUAL_WRITE)  # also the viewer's legend order
RESIDUAL, PATTERN, LOGITS = "residual", "pattern", "logits"  # hook points without nodes


@dataclass(frozen=True)
class Location:
    """One hook point; a node location when its kind is one of NODE_KINDS (module docstring)."""

    hook: str
    kind: str
    width_of: str | None = None  # ModelConfig attribute; None: no fixed width ([B, n_head, T, T])
    weight_in: str | None = None
    weight_out: str | None = None
    reads_from: str | None = None
    row: str | None = None  # graph row; None: its own
    label: str = ""
    legend: str = ""
    title: str = ""
    colour: str = ""
    authors: str | None = None

    @property
    def is_node(self) -> bool:
        return self.kind in NODE_KINDS

    def width(self, cfg: ModelConfig) -> int:
        """Last-dim width of the activation here under cfg."""
        if self.width_of is None:
            raise UserError(f"{self.hook} has shape [B, n_head, T, T], not a fixed width")
        return getattr(cfg, self.width_of)


_READ, _WRITE = "#64748b", "#334155"
LAYER_TABLE: tuple[Location, ...] = (
    Location("resid_in", RESIDUAL, "d_model"),
    Location(
        "attn.act_in", RESIDUAL_READ, "d_in", weight_out="attn.c_attn.weight", reads_from="resid_in",
        label="attn read", legend="read", title="attention read of a residual channel", colour=_READ,
        authors="attn_in",
    ),
    Location(
        "attn.q", HEAD_CHANNEL, "d_attn", weight_in="attn.c_attn.weight", row="attn.qkv",
        label="q", legend="query", title="attention query channel", colour="#059669", authors="attn_q",
    ),
    Location(
        "attn.k", HEAD_CHANNEL, "d_attn", weight_in="attn.c_attn.weight", row="attn.qkv",
        label="k", legend="key", title="attention key channel", colour="#d97706", authors="attn_k",
    ),
    Location(
        "attn.v", HEAD_CHANNEL, "d_attn", weight_in="attn.c_attn.weight", weight_out="attn.c_proj.weight",
        row="attn.qkv", label="v", legend="value", title="attention value channel", colour="#7c3aed",
        authors="attn_v",
    ),
    Location("attn.pattern", PATTERN),
    Location(
        "attn.resid_delta", RESIDUAL_WRITE, "d_model", weight_in="attn.c_proj.weight",
        label="attn write", legend="write", title="attention write to a residual channel", colour=_WRITE,
        authors="attn_out",
    ),
    Location("resid_mid", RESIDUAL, "d_model"),
    Location(
        "mlp.act_in", RESIDUAL_READ, "d_in", weight_out="mlp.c_fc.weight", reads_from="resid_mid",
        label="mlp read", legend="read", title="MLP read of a residual channel", colour=_READ,
        authors="mlp_in",
    ),
    Location(
        "mlp.post_act", NEURON, "d_mlp", weight_in="mlp.c_fc.weight", weight_out="mlp.c_proj.weight",
        label="mlp neurons", legend="neuron", title="MLP neuron", colour="#db2777", authors="mlp_neuron",
    ),
    Location(
        "mlp.resid_delta", RESIDUAL_WRITE, "d_model", weight_in="mlp.c_proj.weight",
        label="mlp write", legend="write", title="MLP write to a residual channel", colour=_WRITE,
        authors="mlp_out",
    ),
)  # fmt: skip
FINAL_TABLE: tuple[Location, ...] = (
    Location("final_resid", RESIDUAL, "d_model"),
    Location("logits", LOGITS, "vocab_size"),
)

LAYER_HOOKS: tuple[str, ...] = tuple(loc.hook for loc in LAYER_TABLE)
FINAL_HOOKS: tuple[str, ...] = tuple(loc.hook for loc in FINAL_TABLE)
NODE_TABLE: tuple[Location, ...] = tuple(loc for loc in LAYER_TABLE if loc.is_node)
NODE_LOCATIONS: tuple[str, ...] = tuple(loc.hook for loc in NODE_TABLE)
LOCATIONS: dict[str, Location] = {loc.hook: loc for loc in LAYER_TABLE + FINAL_TABLE}


def node_location(loc: str) -> Location:
    """The row of a per-layer node location such as "attn.q" (no layer prefix); UserError if unknown."""
    found = LOCATIONS.get(loc)
    if found is None or not found.is_node:
        raise UserError(f"unknown node location {loc!r}; expected one of {', '.join(NODE_LOCATIONS)}")
    return found


def locations_of(*kinds: str) -> tuple[str, ...]:
    """Node locations of the given kinds, in forward order: locations_of(HEAD_CHANNEL) == ("attn.q", ...)."""
    return tuple(loc.hook for loc in NODE_TABLE if loc.kind in kinds)


def node_locations(cfg: ModelConfig) -> list[str]:
    """Every node location hook name in forward order: "0.attn.act_in", ..., "{L-1}.mlp.resid_delta"."""
    return [f"{layer}.{loc}" for layer in range(cfg.n_layer) for loc in NODE_LOCATIONS]


def hook_names(cfg: ModelConfig) -> list[str]:
    """Every hook point of the forward, in forward order: each layer's LAYER_HOOKS, then FINAL_HOOKS."""
    return [f"{layer}.{hook}" for layer in range(cfg.n_layer) for hook in LAYER_HOOKS] + list(FINAL_HOOKS)


def hook_location(name: str) -> Location:
    """The row of a full hook name ("3.attn.q", "final_resid"); the layer is not checked."""
    layer, _, hook = name.partition(".")
    found = LOCATIONS.get(hook) if layer.isdigit() else LOCATIONS.get(name)
    if found is None or (found in FINAL_TABLE) == layer.isdigit():
        raise UserError(f"unknown hook name {name!r}")
    return found


def split_node_name(name: object) -> tuple[int, str, int] | None:
    """(layer, location, index) of a flat node name such as "3.attn.v.17"; None unless well-formed."""
    if not isinstance(name, str):
        return None
    layer, _, rest = name.partition(".")
    loc, _, index = rest.rpartition(".")
    found = LOCATIONS.get(loc)
    if not (layer.isdigit() and index.isdigit() and found is not None and found.is_node):
        return None
    return int(layer), loc, int(index)


@dataclass(frozen=True)
class WeightMatrix:
    """One weight matrix of a layer: its rows are the dst locations stacked, its columns the src location."""

    param: str  # parameter name inside `transformer.h.{l}.`
    src: str  # location of the columns
    dst: tuple[str, ...]  # locations of the rows, stacked in this order


def weight_matrices() -> tuple[WeightMatrix, ...]:
    """The matrices that hold edges, from weight_in/weight_out, in forward order of their source location."""
    return tuple(
        WeightMatrix(
            src.weight_out, src.hook, tuple(d.hook for d in NODE_TABLE if d.weight_in == src.weight_out)
        )
        for src in NODE_TABLE
        if src.weight_out is not None
    )
