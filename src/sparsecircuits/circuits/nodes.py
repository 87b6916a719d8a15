"""Node sets: one bool mask per node location, and the flat `HOOK.INDEX` names of DESIGN.md.

A node set is `dict[str, Tensor]` mapping a location hook name such as "3.attn.q" to a bool mask of
that location's width (`ModelConfig.location_width`): True where the node is in the circuit. A
location missing from the dict holds no nodes. Node names are `{layer}.{location}.{index}`, e.g.
`0.mlp.post_act.460` or `10.attn.v.1312`; the flat q/k/v index is `head * d_head + channel`. Files
store the flat form; `display_name` adds the head form (`10.attn.v.head82.ch0`) for people, and
`names_to_nodes` accepts either form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from sparsecircuits.errors import UserError
from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.locations import HEAD_CHANNEL, NODE_LOCATIONS, locations_of, node_locations

NodeSet = dict[str, Tensor]  # location hook name -> bool mask [location width]

HEAD_LOCATIONS = locations_of(HEAD_CHANNEL)  # flat index = head * d_head + channel
_INDEX = re.compile(r"[0-9]+")
_HEAD_INDEX = re.compile(r"head([0-9]+)\.ch([0-9]+)")


# ---- locations --------------------------------------------------------------------------------------


def location_order(location: str) -> tuple[int, int]:
    """Sort key of a location hook name in forward order: (layer, position within the layer)."""
    layer, _, loc = location.partition(".")
    if not layer.isdigit() or loc not in NODE_LOCATIONS:
        raise UserError(f"unknown node location {location!r}; expected LAYER.LOCATION such as '0.attn.q'")
    return int(layer), NODE_LOCATIONS.index(loc)


def location_width(location: str, cfg: ModelConfig) -> int:
    """Width of a location hook name such as "3.attn.q" (its layer is checked against cfg)."""
    layer, loc = location_order(location)
    if layer >= cfg.n_layer:
        raise UserError(f"node location {location!r}: layer {layer} out of range (n_layer {cfg.n_layer})")
    return cfg.location_width(NODE_LOCATIONS[loc])


def empty_nodes(cfg: ModelConfig, device: torch.device | str | None = None) -> NodeSet:
    """A node set with no nodes: all-False masks at every location."""
    return {
        name: torch.zeros(location_width(name, cfg), dtype=torch.bool, device=device)
        for name in node_locations(cfg)
    }


def full_nodes(cfg: ModelConfig, device: torch.device | str | None = None) -> NodeSet:
    """A node set holding every node of the model: all-True masks at every location."""
    return {name: mask.logical_not() for name, mask in empty_nodes(cfg, device).items()}


def validate_nodes(nodes: Mapping[str, Tensor], cfg: ModelConfig) -> NodeSet:
    """Check a node set against cfg and return it complete: bool masks at every location, forward order.

    Unknown locations and masks of the wrong shape are a UserError; missing locations are empty;
    any nonzero mask entry counts as a node.
    """
    unknown = sorted(set(nodes) - set(node_locations(cfg)))
    if unknown:
        raise UserError(f"node set has unknown location(s) {', '.join(unknown)} for this model")
    full: NodeSet = {}
    for name in node_locations(cfg):
        width = location_width(name, cfg)
        mask = nodes.get(name)
        if mask is None:
            mask = torch.zeros(width, dtype=torch.bool)
        if tuple(mask.shape) != (width,):
            raise UserError(f"node mask for {name} has shape {tuple(mask.shape)}, expected ({width},)")
        full[name] = mask.bool()
    return full


# ---- names ------------------------------------------------------------------------------------------


def nodes_to_names(nodes: Mapping[str, Tensor]) -> list[str]:
    """Flat `HOOK.INDEX` names of the nodes in a set, sorted by location in forward order, then index."""
    names: list[str] = []
    for location in sorted(nodes, key=location_order):
        indices = nodes[location].nonzero().flatten().tolist()
        names.extend(f"{location}.{i}" for i in indices)
    return names


def parse_node_name(name: str, cfg: ModelConfig) -> tuple[str, int]:
    """Split a node name into (location hook name, flat index); the head form of q/k/v is accepted.

    "3.attn.v.17" -> ("3.attn.v", 17); with d_head 16, "3.attn.v.head1.ch1" -> ("3.attn.v", 17).
    An unknown location, a malformed index or an index out of range is a UserError naming the node.
    """
    location, index = _split_name(name)
    if location not in set(node_locations(cfg)):
        raise UserError(f"node {name!r}: unknown location {location!r} for this model")
    width = location_width(location, cfg)
    flat = _flat_index(name, location, index, cfg)
    if not 0 <= flat < width:
        raise UserError(f"node {name!r}: index {flat} out of range for {location} (width {width})")
    return location, flat


def _split_name(name: str) -> tuple[str, str]:
    """("3.attn.v", "17") from "3.attn.v.17"; ("3.attn.v", "head1.ch1") from the head form."""
    if not isinstance(name, str):
        raise UserError(f"node name must be a string, got {name!r}")
    parts = name.split(".")
    if len(parts) >= 2 and _HEAD_INDEX.fullmatch(".".join(parts[-2:])):
        return ".".join(parts[:-2]), ".".join(parts[-2:])
    location, _, index = name.rpartition(".")
    return location, index


def _flat_index(name: str, location: str, index: str, cfg: ModelConfig) -> int:
    if _INDEX.fullmatch(index):
        return int(index)
    head_form = _HEAD_INDEX.fullmatch(index)
    if head_form is None or location.partition(".")[2] not in HEAD_LOCATIONS:
        raise UserError(f"node {name!r}: bad index {index!r}; expected a non-negative integer")
    head, channel = int(head_form[1]), int(head_form[2])
    if head >= cfg.n_head or channel >= cfg.d_head:
        raise UserError(
            f"node {name!r}: head {head} channel {channel} out of range "
            f"(n_head {cfg.n_head}, d_head {cfg.d_head})"
        )
    return head * cfg.d_head + channel


def names_to_nodes(names: Iterable[str], cfg: ModelConfig) -> NodeSet:
    """Node set (every location present) holding the named nodes; inverse of `nodes_to_names`."""
    indices: dict[str, list[int]] = {}
    for name in names:
        location, index = parse_node_name(name, cfg)
        indices.setdefault(location, []).append(index)
    nodes = empty_nodes(cfg)
    for location, idx in indices.items():
        nodes[location][torch.tensor(idx, dtype=torch.long)] = True
    return nodes


def display_name(name: str, cfg: ModelConfig) -> str:
    """Name with the head form for q/k/v (`10.attn.v.1312` -> `10.attn.v.head82.ch0` when d_head 16).

    Other names, and names that are not flat q/k/v names, come back unchanged.
    """
    location, _, index = name.rpartition(".")
    if location.partition(".")[2] not in HEAD_LOCATIONS or not _INDEX.fullmatch(index):
        return name
    head, channel = divmod(int(index), cfg.d_head)
    return f"{location}.head{head}.ch{channel}"


def position_channel(name: str, cfg: ModelConfig) -> int | None:
    """The position channel a flat `{l}.attn.act_in.i` or `{l}.mlp.act_in.i` node is, when positions are
    concatenated to the block inputs (pos_emb "concat": i >= d_model is channel i - d_model); else None."""
    location, _, index = name.rpartition(".")
    if cfg.pos_emb != "concat" or not location.endswith(".act_in") or not _INDEX.fullmatch(index):
        return None
    return int(index) - cfg.d_model if int(index) >= cfg.d_model else None


# ---- counts -----------------------------------------------------------------------------------------


def count_nodes(nodes: Mapping[str, Tensor]) -> int:
    """Number of nodes in a set (True mask entries over all locations)."""
    return sum(int(mask.count_nonzero()) for mask in nodes.values())


def nodes_by_location(nodes: Mapping[str, Tensor]) -> dict[str, int]:
    """Node count per location, in forward order; locations without nodes are left out."""
    counts = {
        location: int(nodes[location].count_nonzero()) for location in sorted(nodes, key=location_order)
    }
    return {location: n for location, n in counts.items() if n}
