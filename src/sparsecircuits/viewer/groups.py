"""Named groups of circuit nodes for the viewer, a group-level graph, and trimming for display.

Groups (like circuit-tracer's supernodes) come from two places:

- automatic: one per attention head with at least two channels in the circuit (its q, k and v channels
  together), named `L1 head 5`, id `head:1.5`;
- user: named sets of nodes kept in a sidecar file beside the circuit (`X.circuit.json` ->
  `X.groups.json`, schema `sparsecircuits.groups/1`), id `user:NAME`. A node belongs to at most one user
  group, and a user group takes its nodes out of their head groups.

`group_graph` turns the node-level graph JSON of graph.build_graph into a group-level one: a box per
collapsed group at the centroid of its members (so expanding it puts the members back where they were),
edges between groups summed (weight and count), edges inside a group left out. `trim` keeps, for display
only, the smallest set of nodes carrying a given share of the influence on the task loss (the loss of the
logit difference): |ablation_effect - circuit loss| per node, or, when any node lacks an ablation effect,
the summed |weight| of its edges. Neither ever changes the circuit file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json, read_json
from sparsecircuits.model.locations import HEAD_CHANNEL, locations_of, split_node_name
from sparsecircuits.viewer.graph import head_brackets

SCHEMA = "sparsecircuits.groups/1"
CIRCUIT_SUFFIX = ".circuit.json"
GROUPS_SUFFIX = ".groups.json"
MAX_NAME = 80
QKV = locations_of(HEAD_CHANNEL)
_write_lock = threading.Lock()  # one read-modify-write of a sidecar at a time


@dataclass
class Group:
    id: str
    name: str
    source: str  # "head" | "user"
    members: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "source": self.source, "members": self.members}


def groups_path(circuit_path: Path) -> Path:
    """The sidecar beside a circuit file: runs/x/quote.circuit.json -> runs/x/quote.groups.json."""
    name = circuit_path.name
    stem = name[: -len(CIRCUIT_SUFFIX)] if name.endswith(CIRCUIT_SUFFIX) else circuit_path.stem
    return circuit_path.with_name(stem + GROUPS_SUFFIX)


def circuit_nodes(circuit: dict[str, Any]) -> list[str]:
    return [n for n in circuit.get("nodes") or [] if isinstance(n, str)]


def _d_head(circuit: dict[str, Any]) -> int:
    model = circuit.get("model") if isinstance(circuit.get("model"), dict) else {}
    config = model.get("config") if isinstance(model.get("config"), dict) else {}
    d_head = config.get("d_head")
    return d_head if isinstance(d_head, int) and d_head > 0 else 1


# ---- user groups: validation and the sidecar ------------------------------------------------------------


def check_name(name: Any) -> str:
    """The group name stripped; UserError unless 1..MAX_NAME printable characters."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("a group needs a non-empty name")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise UserError(f"group name {name[:MAX_NAME]!r}: at most {MAX_NAME} printable characters")
    return name


def check_groups(raw: Any, nodes: list[str], where: str) -> list[dict[str, Any]]:
    """User groups [{name, nodes}] checked against the circuit's nodes; UserError (one line) naming `where`
    for a malformed entry, an empty or repeated name, an unknown node, or a node in two groups."""
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'groups' must be a list")
    known, owner = set(nodes), {}
    out = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("nodes"), list):
            raise UserError(f"{where}: each group must be an object with a 'name' and a list of 'nodes'")
        try:
            name = check_name(entry.get("name"))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        members = entry["nodes"]
        if not members:
            raise UserError(f"{where}: group {name!r} has no nodes")
        if any(g["name"] == name for g in out):
            raise UserError(f"{where}: two groups named {name!r}")
        unknown = [str(n) for n in members if not isinstance(n, str) or n not in known]
        if unknown:
            raise UserError(f"{where}: group {name!r}: node(s) not in the circuit: {', '.join(unknown[:5])}")
        for n in members:
            if owner.get(n, name) != name:
                raise UserError(f"{where}: node {n} is in two groups, {owner[n]!r} and {name!r}")
            owner[n] = name
        out.append({"name": name, "nodes": list(dict.fromkeys(members))})
    return out


def load_user_groups(path: Path, nodes: list[str]) -> list[dict[str, Any]]:
    """The sidecar's groups ([] when there is no sidecar); UserError when it is broken."""
    if not path.exists():
        return []
    data = read_json(path, "groups file")
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise UserError(f"{path}: not a groups file (schema {SCHEMA!r} expected)")
    return check_groups(data.get("groups"), nodes, str(path))


def _write(path: Path, groups: list[dict[str, Any]], circuit_path: Path) -> None:
    """Write the sidecar atomically; with no groups left, remove it."""
    try:
        if not groups:
            path.unlink(missing_ok=True)
            return
        atomic_write_json(path, {"schema": SCHEMA, "circuit": circuit_path.name, "groups": groups})
    except OSError as e:
        raise UserError(f"cannot write the groups file {path}: {e.strerror or e}") from None


def save_user_group(circuit_path: Path, nodes: list[str], name: Any, members: Any) -> list[dict[str, Any]]:
    """Add (or replace, by name) one user group in the sidecar; returns the groups written."""
    path = groups_path(circuit_path)
    with _write_lock:
        groups = [g for g in load_user_groups(path, nodes) if g["name"] != check_name(name)]
        groups = check_groups([*groups, {"name": name, "nodes": members}], nodes, "group")
        _write(path, groups, circuit_path)
    return groups


def delete_user_group(circuit_path: Path, nodes: list[str], name: Any) -> list[dict[str, Any]]:
    """Remove one user group by name from the sidecar; UserError when there is none of that name."""
    path = groups_path(circuit_path)
    with _write_lock:
        groups = load_user_groups(path, nodes)
        kept = [g for g in groups if g["name"] != check_name(name)]
        if len(kept) == len(groups):
            raise UserError(f"no group named {check_name(name)!r}")
        _write(path, kept, circuit_path)
    return kept


# ---- all groups -----------------------------------------------------------------------------------------


def head_groups(nodes: list[str], d_head: int) -> list[Group]:
    """One group per (layer, head) with at least two q/k/v channels among `nodes`, in node order."""
    heads: dict[tuple[int, int], list[str]] = {}
    for name in nodes:
        parts = split_node_name(name)
        if parts is not None and parts[1] in QKV:
            heads.setdefault((parts[0], parts[2] // d_head), []).append(name)
    return [
        Group(f"head:{layer}.{head}", f"L{layer} head {head}", "head", members)
        for (layer, head), members in heads.items()
        if len(members) >= 2
    ]


def all_groups(circuit: dict[str, Any], user: list[dict[str, Any]]) -> list[Group]:
    """User groups first, then the head groups of the nodes no user group holds."""
    nodes = circuit_nodes(circuit)
    taken = {n for g in user for n in g["nodes"]}
    groups = [Group(f"user:{g['name']}", g["name"], "user", list(g["nodes"])) for g in user]
    return groups + head_groups([n for n in nodes if n not in taken], _d_head(circuit))


# ---- trimming for display -------------------------------------------------------------------------------


def node_influence(circuit: dict[str, Any]) -> tuple[dict[str, float], str]:
    """Per node its influence and the basis: ("ablation_effect") |task loss with the node removed - the
    circuit's loss| when every node has an effect and the circuit records its loss, else ("edge_weight")
    the summed |weight| of the node's edges."""
    nodes = circuit_nodes(circuit)
    info = circuit.get("node_info") if isinstance(circuit.get("node_info"), dict) else {}
    achieved = circuit.get("achieved") if isinstance(circuit.get("achieved"), dict) else {}
    base = achieved.get("loss")
    effects = {
        n: (info.get(n) or {}).get("ablation_effect") if isinstance(info.get(n), dict) else None
        for n in nodes
    }
    if (
        nodes
        and isinstance(base, (int, float))
        and all(isinstance(v, (int, float)) for v in effects.values())
    ):
        return {n: abs(float(v) - float(base)) for n, v in effects.items()}, "ablation_effect"
    weight = dict.fromkeys(nodes, 0.0)
    for e in circuit.get("edges") or []:
        w = e.get("weight") if isinstance(e, dict) else None
        if isinstance(w, (int, float)):
            for end in (e.get("src"), e.get("dst")):
                if end in weight:
                    weight[end] += abs(float(w))
    return weight, "edge_weight"


def trim(circuit: dict[str, Any], share: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """A copy of the circuit keeping the smallest set of nodes whose summed influence is >= share of the
    total (strongest first), and the edges, residual links and QK pairs among them; plus a summary
    {share, basis, kept, total, kept_influence}. With no influence at all every node is kept."""
    if not 0.0 < share <= 1.0:
        raise UserError(f"trim must be a share in (0, 1], got {share}")
    influence, basis = node_influence(circuit)
    total = sum(influence.values())
    ranked = sorted(influence, key=lambda n: -influence[n])
    kept: list[str] = []
    acc = 0.0
    for name in ranked:
        if total > 0 and acc >= share * total * (1 - 1e-12):
            break
        kept.append(name)
        acc += influence[name]
    keep = set(kept)
    out = dict(circuit)
    out["nodes"] = [n for n in circuit_nodes(circuit) if n in keep]
    out["edges"] = [e for e in circuit.get("edges") or [] if _inside(e, "src", "dst", keep)]
    out["residual_links"] = [p for p in circuit.get("residual_links") or [] if _inside(p, "src", "dst", keep)]
    out["qk_pairs"] = [p for p in circuit.get("qk_pairs") or [] if _inside(p, "q", "k", keep)]
    summary = {
        "share": share,
        "basis": basis,
        "kept": len(kept),
        "total": len(influence),
        "kept_influence": acc,
        "total_influence": total,
    }
    return out, summary


def _inside(item: Any, a: str, b: str, keep: set[str]) -> bool:
    return isinstance(item, dict) and item.get(a) in keep and item.get(b) in keep


# ---- the group-level graph ------------------------------------------------------------------------------


def group_graph(graph: dict[str, Any], groups: list[Group], expanded: set[str]) -> dict[str, Any]:
    """The graph JSON with each collapsed group (not in `expanded`) as one box node; see the module doc.

    Box nodes carry `group` {id, name, source, size, members}; edges are [src, dst, weight, count] (weight
    summed over the `count` member edges, None when none of them has a weight); `outlines` lists the
    expanded groups' member boxes {id, name, source, x0, y0, x1, y1}."""
    nodes = graph["nodes"]
    index = {n["id"]: i for i, n in enumerate(nodes)}
    owner: dict[int, Group] = {}
    shown_of: dict[str, list[dict[str, Any]]] = {}
    outlines = []
    for g in groups:
        shown = [index[m] for m in g.members if m in index]
        if not shown:
            continue
        if g.id in expanded:
            xs, ys = [nodes[i]["x"] for i in shown], [nodes[i]["y"] for i in shown]
            box = {"x0": min(xs), "x1": max(xs), "y0": min(ys), "y1": max(ys)}
            outlines.append({"id": g.id, "name": g.name, "source": g.source, **box})
        else:
            owner.update((i, g) for i in shown)
            shown_of[g.id] = [nodes[i] for i in sorted(shown)]
    new_nodes: list[dict[str, Any]] = []
    new_index: dict[int, int] = {}  # old node index -> new node index
    box_of: dict[str, int] = {}
    for i, n in enumerate(nodes):
        g = owner.get(i)
        if g is None:
            new_index[i] = len(new_nodes)
            new_nodes.append(n)
            continue
        if g.id not in box_of:
            box_of[g.id] = len(new_nodes)
            new_nodes.append(_box(g, shown_of[g.id]))
        new_index[i] = box_of[g.id]
    out = dict(graph)
    out["nodes"] = new_nodes
    out["edges"] = summed_edges(graph["edges"], new_index)
    out["residual_links"] = _mapped_pairs(graph.get("residual_links") or [], new_index)
    out["qk_pairs"] = _mapped_pairs(graph.get("qk_pairs") or [], new_index)
    out["heads"] = head_brackets(new_nodes)
    out["outlines"] = outlines
    return out


def _box(g: Group, members: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's box node at the centroid of its shown members."""
    x = sum(m["x"] for m in members) / len(members)
    y = sum(m["y"] for m in members) / len(members)
    return {
        "id": g.id,
        "display": g.name,
        "label": g.name,
        "layer": min(m["layer"] for m in members),
        "loc": "group",
        "x": round(x, 1),
        "y": round(y, 1),
        "info": {},
        "group": {
            "id": g.id,
            "name": g.name,
            "source": g.source,
            "size": len(members),
            "members": [m["id"] for m in members],
        },
    }


def summed_edges(edges: list[list[Any]], new_index: dict[int, int]) -> list[list[Any]]:
    """Edges mapped through new_index, merged per (src, dst) pair: [src, dst, summed weight, count],
    strongest |weight| first; edges whose ends map to the same node (inside a group) are left out."""
    merged: dict[tuple[int, int], list[Any]] = {}
    for e in edges:
        a, b, w = new_index[e[0]], new_index[e[1]], e[2]
        if a == b:
            continue
        acc = merged.setdefault((a, b), [a, b, None, 0])
        if w is not None:
            acc[2] = (acc[2] or 0.0) + w
        acc[3] += 1
    out = list(merged.values())
    out.sort(key=lambda e: -abs(e[2]) if e[2] is not None else 0.0)
    return out


def _mapped_pairs(pairs: list[list[int]], new_index: dict[int, int]) -> list[list[int]]:
    out = {(new_index[a], new_index[b]) for a, b in pairs}
    return [[a, b] for a, b in sorted(out) if a != b]
