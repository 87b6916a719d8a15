"""Circuit file -> graph JSON with a layout: the one input of the browser view, the SVG and the HTML export.

Layers run top to bottom. Each layer has up to six rows, in forward order:

    attn.act_in   |   q k v (grouped by head)   |   attn.resid_delta   |   mlp.act_in   |   mlp.post_act   |   mlp.resid_delta

Residual reads and writes sit in one column per residual channel, shared by every layer, so a residual
link (a write feeding a later read of the same channel) is a vertical line. Q/K/V channels and MLP
neurons are packed in index order and centred; q/k/v are grouped by head. Rows and layers without
nodes are left out. Edges are sorted by |weight|, strongest first, so a client can draw the first N.

Rows, labels, colours and kinds come from the location table (model/locations.py); the graph JSON carries
them (`locations`, `legend`), so the browser view and the SVG export keep no copy of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparsecircuits.model.config import ModelConfig
from sparsecircuits.model.locations import (
    HEAD_CHANNEL,
    LOCATIONS,
    NODE_KINDS,
    NODE_TABLE,
    RESIDUAL_READ,
    RESIDUAL_WRITE,
    locations_of,
    split_node_name,
)


def _row_labels() -> dict[str, str]:
    """Row -> label in layout order; a shared row (q · k · v) joins its locations' labels."""
    members: dict[str, list[str]] = {}
    for loc in NODE_TABLE:
        members.setdefault(loc.row or loc.hook, []).append(loc.label)
    return {row: " · ".join(labels) for row, labels in members.items()}


ROW_LABELS = _row_labels()
ROWS = tuple(ROW_LABELS)
RESIDUAL_LOCS = locations_of(RESIDUAL_READ, RESIDUAL_WRITE)
QKV = locations_of(HEAD_CHANNEL)
HEAD_ROWS = frozenset(LOCATIONS[loc].row or loc for loc in QKV)  # rows grouped by head: {"attn.qkv"}

DX = 34  # horizontal slot per node
DY = 62  # vertical distance between rows (grows for wide graphs, so long edges do not lie flat)
MAX_DY = 150
LAYER_GAP = 30  # between the bands of two layers
BAND_ABOVE, BAND_BELOW = 25, 29  # a layer's band around its first and last row (room for labels)
LEFT = 120  # room for the row labels
TOP = 36
PAD = 24
MIN_WIDTH = 560  # room for the title of an exported picture


@dataclass
class _Node:
    name: str
    layer: int
    loc: str
    index: int

    @property
    def row(self) -> str:
        return LOCATIONS[self.loc].row or self.loc


def model_config(circuit: dict[str, Any]) -> ModelConfig:
    """The circuit's model config (defaults where the file leaves keys out; unknown keys ignored)."""
    raw = circuit.get("model", {}).get("config", {}) if isinstance(circuit.get("model"), dict) else {}
    known = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{k: v for k, v in (raw or {}).items() if k in known})


def parse_nodes(names: list[Any]) -> list[_Node]:
    """Nodes with well-formed flat names (others are skipped: the viewer shows what it can)."""
    nodes = []
    for name in names:
        parts = split_node_name(name)
        if parts is not None:
            nodes.append(_Node(name, *parts))
    return nodes


def build_graph(circuit: dict[str, Any]) -> dict[str, Any]:
    """Graph JSON of a circuit dict: nodes with x/y, edges, residual links, QK pairs, rows and meta."""
    cfg = model_config(circuit)
    nodes = parse_nodes(circuit.get("nodes") or [])
    rows = _rows(nodes)
    columns = sorted({n.index for n in nodes if n.loc in RESIDUAL_LOCS})
    slots = max([len(columns), *(_row_slots(r, cfg) for r in rows.values())] + [1])
    width = max(MIN_WIDTH, LEFT + PAD + DX * slots)
    dy = min(MAX_DY, max(DY, (width - LEFT) / 22))
    row_y, layer_bands, height = _row_positions(rows, dy)
    node_json = []
    for (layer, row), members in rows.items():
        xs = _row_xs(row, members, columns, cfg, width)
        for node, x in zip(members, xs):
            node_json.append(_node_json(node, x, row_y[(layer, row)], cfg, circuit))
    index = {n["id"]: i for i, n in enumerate(node_json)}
    return {
        "width": width,
        "height": height,
        "rows": [
            {"layer": layer, "row": row, "label": ROW_LABELS[row], "y": y}
            for (layer, row), y in row_y.items()
        ],
        "layers": layer_bands,
        "heads": head_brackets(node_json),
        "nodes": node_json,
        "edges": _edges(circuit, index),
        "residual_links": _pairs(circuit.get("residual_links"), "src", "dst", index),
        "qk_pairs": _pairs(circuit.get("qk_pairs"), "q", "k", index),
        "d_head": cfg.d_head,
        "locations": locations_json(cfg),
        "legend": legend_json(),
    }


def locations_json(cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """Per node location: kind, label, legend word, description, colour, hollow (drawn as a ring: the
    residual reads) and width (under cfg)."""
    out = {}
    for loc in NODE_TABLE:
        try:
            width: int | None = loc.width(cfg)
        except TypeError:  # a config too broken to say (the viewer shows what it can)
            width = None
        out[loc.hook] = {
            "kind": loc.kind,
            "label": loc.label,
            "legend": loc.legend,
            "title": loc.title,
            "colour": loc.colour,
            "hollow": loc.kind == RESIDUAL_READ,
            "width": width,
        }
    return out


def legend_json() -> list[dict[str, Any]]:
    """One legend entry per distinct legend word, by kind (reads, heads, neurons, writes): reads are hollow."""
    entries: dict[str, dict[str, Any]] = {}
    for kind in NODE_KINDS:
        for loc in NODE_TABLE:
            if loc.kind == kind and loc.legend not in entries:
                entries[loc.legend] = {
                    "label": loc.legend,
                    "colour": loc.colour,
                    "hollow": kind == RESIDUAL_READ,
                }
    return list(entries.values())


def _rows(nodes: list[_Node]) -> dict[tuple[int, str], list[_Node]]:
    """Nodes per (layer, row), rows in layout order, members in display order."""
    rows: dict[tuple[int, str], list[_Node]] = {}
    for node in sorted(nodes, key=lambda n: (n.layer, ROWS.index(n.row))):
        rows.setdefault((node.layer, node.row), []).append(node)
    return rows


def _qkv_key(node: _Node, d_head: int) -> tuple[int, int, int]:
    head, ch = divmod(node.index, d_head)
    return head, QKV.index(node.loc), ch


def _row_slots(members: list[_Node], cfg: ModelConfig) -> int:
    """Horizontal slots a packed row needs (q/k/v rows leave one empty slot between heads)."""
    if not members or members[0].row not in HEAD_ROWS:
        return len(members)
    heads = {n.index // cfg.d_head for n in members}
    return len(members) + len(heads) - 1


def _row_xs(row: str, members: list[_Node], columns: list[int], cfg: ModelConfig, width: int) -> list[float]:
    """x of each member (members are reordered in place for q/k/v rows)."""
    if row in RESIDUAL_LOCS:
        members.sort(key=lambda n: n.index)
        col = {c: i for i, c in enumerate(columns)}
        start = LEFT + (width - LEFT - PAD - DX * len(columns)) / 2
        return [start + DX * (col[n.index] + 0.5) for n in members]
    if row in HEAD_ROWS:
        members.sort(key=lambda n: _qkv_key(n, cfg.d_head))
    else:
        members.sort(key=lambda n: n.index)
    slots = []
    slot, last_head = 0, None
    for n in members:
        head = n.index // cfg.d_head if row in HEAD_ROWS else None
        if last_head is not None and head != last_head:
            slot += 1  # gap between heads
        slots.append(slot)
        slot, last_head = slot + 1, head
    start = LEFT + (width - LEFT - PAD - DX * slot) / 2
    return [start + DX * (s + 0.5) for s in slots]


def _row_positions(
    rows: dict[tuple[int, str], list[_Node]], dy: float
) -> tuple[dict[tuple[int, str], float], list[dict[str, Any]], float]:
    """y of each row (dy apart), a band per layer ({layer, y0, y1}), and the total height."""
    row_y: dict[tuple[int, str], float] = {}
    bands: list[dict[str, Any]] = []
    y = TOP
    for layer in sorted({layer for layer, _ in rows}):
        present = [row for row in ROWS if (layer, row) in rows]
        for j, row in enumerate(present):
            row_y[(layer, row)] = round(y + j * dy, 1)
        last = y + (len(present) - 1) * dy
        bands.append({"layer": layer, "y0": round(y - BAND_ABOVE, 1), "y1": round(last + BAND_BELOW, 1)})
        y = last + BAND_BELOW + LAYER_GAP + BAND_ABOVE
    return row_y, bands, (bands[-1]["y1"] + PAD) if bands else TOP + PAD


def _label(node: _Node, cfg: ModelConfig) -> str:
    if node.loc in QKV:
        return f"{LOCATIONS[node.loc].label}{node.index % cfg.d_head}"
    return str(node.index)


def _node_json(node: _Node, x: float, y: float, cfg: ModelConfig, circuit: dict[str, Any]) -> dict[str, Any]:
    info = circuit.get("node_info") if isinstance(circuit.get("node_info"), dict) else {}
    out: dict[str, Any] = {
        "id": node.name,
        "display": node.name,
        "layer": node.layer,
        "loc": node.loc,
        "row": node.row,
        "index": node.index,
        "label": _label(node, cfg),
        "x": round(x, 1),
        "y": round(y, 1),
        "info": info.get(node.name) if isinstance(info.get(node.name), dict) else {},
    }
    if node.loc in QKV:
        out["head"], out["ch"] = divmod(node.index, cfg.d_head)
        out["display"] = f"{node.layer}.{node.loc}.head{out['head']}.ch{out['ch']}"
    return out


def head_brackets(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One bracket per (layer, head) of q/k/v nodes: {layer, head, x0, x1, y}."""
    groups: dict[tuple[int, int], dict[str, Any]] = {}
    for n in nodes:
        if "head" in n:
            g = groups.setdefault(
                (n["layer"], n["head"]), {"layer": n["layer"], "head": n["head"], "y": n["y"]}
            )
            g["x0"] = min(g.get("x0", n["x"]), n["x"])
            g["x1"] = max(g.get("x1", n["x"]), n["x"])
    return list(groups.values())


def _edges(circuit: dict[str, Any], index: dict[str, int]) -> list[list[Any]]:
    """[src index, dst index, weight or None], strongest |weight| first (unweighted edges last)."""
    out = []
    for e in circuit.get("edges") or []:
        if isinstance(e, dict) and e.get("src") in index and e.get("dst") in index:
            w = e.get("weight")
            out.append([index[e["src"]], index[e["dst"]], float(w) if isinstance(w, (int, float)) else None])
    out.sort(key=lambda e: -abs(e[2]) if e[2] is not None else 0.0)
    return out


def _pairs(items: Any, a: str, b: str, index: dict[str, int]) -> list[list[int]]:
    return [
        [index[p[a]], index[p[b]]]
        for p in items or []
        if isinstance(p, dict) and p.get(a) in index and p.get(b) in index
    ]


def circuit_meta(circuit: dict[str, Any]) -> dict[str, Any]:
    """Everything but the graph that the task panel shows (copied through as found)."""
    keys = (
        "schema",
        "created",
        "code_version",
        "task",
        "ablation",
        "loss_convention",
        "target_loss",
        "achieved",
        "counts",
        "validation",
        "bisection",
    )
    meta = {k: circuit[k] for k in keys if k in circuit}
    model = circuit.get("model") if isinstance(circuit.get("model"), dict) else {}
    meta["model"] = {k: model.get(k) for k in ("path", "content_hash", "config")}
    pruning = circuit.get("pruning") if isinstance(circuit.get("pruning"), dict) else {}
    meta["pruning"] = {k: pruning[k] for k in ("steps", "seconds", "history") if k in pruning}
    return meta
