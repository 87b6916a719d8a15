"""A circuit as a person would write it: sentences on the mechanism, then the nodes layer by layer with their
labels and the signed edges between them (`sparsecircuits explain`, docs/circuits.md "Explaining a circuit").

Everything comes from the circuit file: its nodes, edges, residual links and scores, and the node descriptions
`sparsecircuits describe` stored in node_info (circuits/describe.py). A sentence is written only where that
data supports it; a circuit without descriptions gets its structure and a pointer to `describe`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sparsecircuits.circuits.circuit_file import recorded_model_config
from sparsecircuits.circuits.describe import ATTEND_MIN, SHARE, show, task_difference
from sparsecircuits.circuits.nodes import display_name, position_channel
from sparsecircuits.errors import UserError
from sparsecircuits.model.locations import (
    HEAD_CHANNEL,
    NEURON,
    NODE_LOCATIONS,
    RESIDUAL_READ,
    RESIDUAL_WRITE,
    node_location,
    split_node_name,
)

EDGES_PER_NODE = 8  # incoming edges listed per node (strongest first); the rest are counted
PATH_SHOWN = 3  # contributions named in the sentence on the logit difference


@dataclass
class Node:
    name: str
    layer: int
    loc: str  # per-layer location, "attn.q"
    index: int
    display: str
    info: dict[str, Any]
    position: int | None = None  # the position channel an act_in node is (concatenated positions), else None
    inputs: list[tuple[str, float | None]] = field(default_factory=list)  # (src, weight), strongest first
    residual_from: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return node_location(self.loc).kind

    @property
    def label(self) -> str:
        return self.info.get("label") or ""

    @property
    def description(self) -> dict[str, Any]:
        d = self.info.get("description")
        return d if isinstance(d, dict) else {}


@dataclass
class Circuit:
    """The parts of a circuit file that `explain` reads, indexed by node name."""

    raw: dict[str, Any]
    nodes: dict[str, Node]  # forward order
    d_head: int | None
    residual_out: dict[str, list[str]]  # write -> later reads of its channel

    @property
    def described(self) -> bool:
        return any(n.label for n in self.nodes.values())

    def display(self, name: str) -> str:
        node = self.nodes.get(name)
        return node.display if node else name


def load(circuit: dict[str, Any]) -> Circuit:
    """Index a circuit dict (read with circuit_file.read_circuit); a circuit without nodes is a UserError."""
    names = circuit.get("nodes")
    if not isinstance(names, list) or not names:
        raise UserError("the circuit has no nodes to explain")
    cfg = recorded_model_config(circuit, "circuit")
    info = circuit.get("node_info") if isinstance(circuit.get("node_info"), dict) else {}
    nodes: dict[str, Node] = {}
    for name in names:
        parts = split_node_name(name)
        if parts is None:
            raise UserError(f"circuit node {name!r} is not a flat node name such as '0.attn.v.17'")
        shown = display_name(name, cfg) if cfg is not None else name
        position = position_channel(name, cfg) if cfg is not None else None
        nodes[name] = Node(name, *parts, display=shown, info=info.get(name) or {}, position=position)
    order = sorted(nodes.values(), key=lambda n: (n.layer, NODE_LOCATIONS.index(n.loc), n.index))
    nodes = {n.name: n for n in order}
    for e in circuit.get("edges") or []:
        if e.get("dst") in nodes and e.get("src") in nodes:
            nodes[e["dst"]].inputs.append((e["src"], e.get("weight")))
    for n in nodes.values():
        n.inputs.sort(key=lambda sw: -abs(sw[1]) if sw[1] is not None else 0.0)
    residual_out: dict[str, list[str]] = {}
    for r in circuit.get("residual_links") or []:
        if r.get("src") in nodes and r.get("dst") in nodes:
            nodes[r["dst"]].residual_from.append(r["src"])
            residual_out.setdefault(r["src"], []).append(r["dst"])
    return Circuit(circuit, nodes, None if cfg is None else cfg.d_head, residual_out)


# ---- sentences ------------------------------------------------------------------------------------------


def _fmt(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


STAGE_NAMES = {"bisection": "after the bisection", "cleanup": "after clean-up"}


def stage_name(circuit: dict[str, Any]) -> str:
    """Which pruning stage the counts are after: the last stage of `stages` that ran (not skipped)."""
    stages = circuit.get("stages") if isinstance(circuit.get("stages"), dict) else {}
    ran = [k for k, v in stages.items() if isinstance(v, dict) and "skipped" not in v]
    if not ran:
        return "after node pruning"
    return STAGE_NAMES.get(ran[-1], f"after {ran[-1].replace('_', ' ')}")


def overview(c: Circuit) -> str:
    """What the circuit is, its size and how well it holds up."""
    raw = c.raw
    task = (raw.get("task") or {}).get("name", "?")
    counts = raw.get("counts") or {}
    layers = sorted({n.layer for n in c.nodes.values()})
    text = (
        f"The {task} circuit keeps {len(c.nodes)} nodes and {counts.get('edges', len(raw.get('edges') or []))} "
        f"edges ({stage_name(raw)}; {counts.get('residual_links', 0)} residual links besides) in "
        f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}."
    )
    v = raw.get("validation") or {}
    suff = v.get("sufficiency") or {}
    if suff:
        full = v.get("full_model") or {}
        text += (
            f" On the test split the circuit alone has raw accuracy {_fmt(suff.get('accuracy_raw'))} and raw loss "
            f"{_fmt(suff.get('loss_raw'))} (full model {_fmt(full.get('loss_raw'))}, target "
            f"{_fmt(raw.get('target_loss'), 'g')}); verdict: {v.get('verdict', '-')}."
        )
    return text


def _primary(desc: dict[str, Any]) -> dict[str, Any] | None:
    """The pretraining side (top or bottom) the label speaks of."""
    p = desc.get("pretraining")
    if not p or not p.get("active"):
        return None
    top, bottom = p["top"], p["bottom"]
    return top if abs(top["mean"]) >= abs(bottom["mean"]) else bottom


def _fires_on(nodes: list[Node]) -> str:
    """`quote + symbols (3: '("', "('"), identifier (1)`: the classes and named tokens the nodes fire on."""
    classes: Counter[str] = Counter()
    tokens: dict[str, list[str]] = {}
    for n in nodes:
        side = _primary(n.description)
        if side is None or side["class"] is None:
            continue
        cls = side["class"]["name"] if side["class"]["share"] >= SHARE else "mixed"
        classes[cls] += 1
        if side["token"] and side["token"]["share"] >= SHARE:
            tokens.setdefault(cls, []).append(show(side["token"]["text"]))
    parts = []
    for cls, k in classes.most_common(4):
        named = list(dict.fromkeys(tokens.get(cls, [])))[:4]
        parts.append(f"{cls} ({k}{': ' + ', '.join(named) if named else ''})")
    return ", ".join(parts)


def _task_split(nodes: list[Node], only: str | None = None) -> str:
    """`3 higher on '("' prompts, 1 higher on "('" prompts`: nodes whose task difference is named in their
    label (describe.task_difference); `only="moved"` counts only what value channels carry to the last position."""
    higher: Counter[str] = Counter()
    for n in nodes:
        found = task_difference(n.description["task"]) if "task" in n.description else None
        if found is not None and only in (None, found[0]):
            higher[found[1]] += 1
    return ", ".join(f"{k} higher on {kind}" for kind, k in higher.most_common())


def read_sentences(c: Circuit) -> list[str]:
    """Per layer and block: the residual reads that take the token embedding, and what they fire on."""
    out = []
    groups: dict[tuple[int, str], list[Node]] = {}
    for n in c.nodes.values():
        if n.kind == RESIDUAL_READ:
            groups.setdefault((n.layer, n.loc), []).append(n)
    for (layer, loc), members in groups.items():
        block = "attention" if loc.startswith("attn") else "MLP"
        reads = [n for n in members if n.position is None]
        positions = [n for n in members if n.position is not None]
        parts = []
        if reads:
            fresh = [n for n in reads if not n.residual_from]
            parts.append(
                f"{len(reads)} residual channel{'s' if len(reads) > 1 else ''} ({len(fresh)} fed by no circuit "
                "write, i.e. the token embedding)"
            )
        if positions:
            channels = ", ".join(str(n.position) for n in positions)
            parts.append(f"{len(positions)} position channel{'s' if len(positions) > 1 else ''} ({channels})")
        text = f"Layer {layer} {block} reads " + " and ".join(parts)
        fires = _fires_on(reads)
        if fires:
            subject = "the residual ones fire" if positions else "they fire" if len(reads) > 1 else "it fires"
            text += f"; {subject} on {fires}"
        out.append(text + ".")
    return out


def head_sentences(c: Circuit) -> list[str]:
    """Per head with q/k/v nodes: its channels, where it attends from the last position, its value channels."""
    heads: dict[tuple[int, int], list[Node]] = {}
    for n in c.nodes.values():
        if n.kind == HEAD_CHANNEL and c.d_head:
            heads.setdefault((n.layer, n.index // c.d_head), []).append(n)
    out = []
    for (layer, head), members in sorted(heads.items()):
        counts = Counter(n.loc.rpartition(".")[2] for n in members)
        chans = ", ".join(f"{counts[k]} {k}" for k in ("q", "k", "v") if counts[k])
        text = f"Layer {layer} head {head} ({chans} channels)"
        attention = next((n.description["attention"] for n in members if "attention" in n.description), None)
        if attention:
            looks = []
            for key in ("positive", "negative"):
                a = attention[key]
                if a["tokens"]:
                    t = a["tokens"][0]
                    looks.append(f"{show(t['text'])} ({t['mass']:.2f} of its attention) on {a['kind']}")
            tops = [
                attention[k]["tokens"][0]["mass"] for k in ("positive", "negative") if attention[k]["tokens"]
            ]
            if looks and max(tops) < ATTEND_MIN:
                text += " spreads its attention from the last position (no token draws "
                text += f"{ATTEND_MIN:.0%} of it; most: " + " and ".join(looks) + ")"
            elif looks:
                text += " attends from the last position to " + " and to ".join(looks)
                dist = [attention[k]["distance"] for k in ("positive", "negative")]
                text += f", on average {sum(dist) / 2:.1f} tokens back"
        values = [n for n in members if n.loc == "attn.v"]
        split = _task_split(values, only="moved")
        value_names = {v.name for v in values}
        fed = [w for w in c.nodes.values() if any(src in value_names for src, _ in w.inputs)]
        if values:
            fires = _fires_on(values)
            text += f"; its value channels fire on {fires}" if fires else ""
            text += f" (what they carry to the last position: {split})" if split else ""
            text += (
                f" and write {len(fed)} attention-write channel{'s' if len(fed) != 1 else ''}" if fed else ""
            )
        out.append(text + ".")
    return out


def mlp_sentences(c: Circuit) -> list[str]:
    """Per layer with neurons: how many, what they fire on, how many differ between the prompt kinds."""
    layers: dict[int, list[Node]] = {}
    for n in c.nodes.values():
        if n.kind == NEURON:
            layers.setdefault(n.layer, []).append(n)
    out = []
    for layer, members in layers.items():
        text = f"Layer {layer} MLP keeps {len(members)} neuron{'s' if len(members) > 1 else ''}"
        fires, split = _fires_on(members), _task_split(members)
        text += f" firing on {fires}" if fires else ""
        text += f"; {split}" if split else ""
        out.append(text + ".")
    return out


def logit_sentence(c: Circuit) -> str:
    """Which writes feed the logit difference directly, with their direct-path contributions."""
    writes = [n for n in c.nodes.values() if n.kind == RESIDUAL_WRITE and n.name not in c.residual_out]
    if not writes:
        return "No circuit write reaches the unembedding directly."
    many = len(writes) > 1
    text = f"{len(writes)} residual write channel{'s reach' if many else ' reaches'} the unembedding"
    text += " (read by no later circuit node)"
    logits = [(n, n.description["logit"]) for n in writes if "logit" in n.description]
    if not logits:
        return text + "."
    g = logits[0][1]
    logits.sort(key=lambda ng: -abs(ng[1]["direct_diff"] or 0))
    total = sum(x["direct_diff"] or 0 for _, x in logits)
    named = ", ".join(f"{n.display} ({x['direct_diff']:+.2f})" for n, x in logits[:PATH_SHOWN])
    text += f"; on the logit difference {show(g['toward'])} - {show(g['against'])} "
    text += "their direct contributions sum" if many else "its direct contribution is"
    text += f" to {total:+.2f}" if many else f" {total:+.2f}"
    text += f", largest {named}" if many else ""
    return text + (
        " (channel weight through the final norm's gain times the difference between the prompt kinds at the "
        "last position, before the norm's scaling)."
    )


Step = tuple[str, float | None, str]  # (node, weight of the step into it, "start" | "edge" | "residual")


def strongest_path(c: Circuit) -> list[Step]:
    """The path from a read of the first circuit layer that no circuit node feeds (the token embedding) to a
    write of the last circuit layer that reaches the unembedding, with the largest product of |edge weight|
    (a residual link counts 1); [] when there is none. Both ends are fixed because a product of weights
    below 1 would otherwise favour the shortest paths."""
    first = min(n.layer for n in c.nodes.values())
    best: dict[str, tuple[float, list[Step]]] = {}
    for n in c.nodes.values():  # forward order: every input comes earlier
        steps = [(s, w, "edge", math.log(abs(w)) if w else -math.inf) for s, w in n.inputs if s in best]
        steps += [(s, None, "residual", 0.0) for s in n.residual_from if s in best]
        if not n.inputs and not n.residual_from and n.layer == first:
            best[n.name] = (0.0, [(n.name, None, "start")])
        elif steps:
            s, w, via, lw = max(steps, key=lambda t: best[t[0]][0] + t[3])
            best[n.name] = (best[s][0] + lw, [*best[s][1], (n.name, w, via)])
    ends = [
        (n.layer, *best[n.name])
        for n in c.nodes.values()
        if n.kind == RESIDUAL_WRITE and n.name not in c.residual_out and n.name in best
    ]
    ends = [e for e in ends if len(e[2]) > 1 and math.isfinite(e[1])]
    if not ends:
        return []
    last = max(e[0] for e in ends)
    return max((e for e in ends if e[0] == last), key=lambda e: e[1])[2]


def path_sentence(c: Circuit) -> str:
    """The strongest path written out, with the labels of its two ends."""
    path = strongest_path(c)
    if not path:
        return ""
    steps = [c.display(path[0][0])]
    for name, w, via in path[1:]:
        arrow = "=>" if via == "residual" else f"-({_fmt(w, '+.3g')})->"
        steps.append(f"{arrow} {c.display(name)}")
    text = (
        "Strongest weighted path from the token embedding to the unembedding (largest product of |weight|; "
    )
    text += "=> a residual link): "
    text += " ".join(steps) + "."
    ends = [c.nodes[path[0][0]], c.nodes[path[-1][0]]]
    if all(n.label for n in ends):
        text += f" Its start {ends[0].display}: {ends[0].label}. Its end {ends[1].display}: {ends[1].label}."
    return text


def mechanism(c: Circuit) -> list[str]:
    """The sentences on the mechanism, in forward order."""
    out = [overview(c)]
    if not c.described:
        out.append(
            "Its nodes carry no descriptions yet: `sparsecircuits describe --circuit FILE` measures what each "
            "node fires on and stores a label, from which these sentences are written."
        )
    out += read_sentences(c) + head_sentences(c) + mlp_sentences(c)
    out.append(logit_sentence(c))
    path = path_sentence(c)
    return out + ([path] if path else [])


# ---- the listing ----------------------------------------------------------------------------------------


def groups(c: Circuit) -> list[tuple[int, str, list[Node]]]:
    """(layer, title, nodes) in forward order: attention reads, each head (q, k, v), attention writes, MLP
    reads, neurons, MLP writes; empty groups left out."""
    out: dict[tuple[int, int, int], tuple[str, list[Node]]] = {}
    for n in c.nodes.values():
        loc = node_location(n.loc)
        block = "attention" if n.loc.startswith("attn") else "MLP"
        if n.kind == HEAD_CHANNEL and c.d_head:
            head = n.index // c.d_head
            key, title = (n.layer, NODE_LOCATIONS.index("attn.q"), head), f"head {head} (q, k, v)"
        else:
            key, title = (n.layer, NODE_LOCATIONS.index(n.loc), 0), f"{block} {loc.legend}s"
        out.setdefault(key, (title, []))[1].append(n)
    return [(key[0], title, members) for key, (title, members) in sorted(out.items())]


def _inputs(c: Circuit, n: Node, limit: int, code: str = "") -> str:
    """`a +0.412, b -0.120 (+3 more); residual from c` (names wrapped in `code`, e.g. a backquote)."""
    shown = [f"{code}{c.display(s)}{code} {_fmt(w, '+.3g')}" for s, w in n.inputs[:limit]]
    text = ", ".join(shown)
    if len(n.inputs) > limit:
        text += f" (+{len(n.inputs) - limit} more)"
    if n.residual_from:
        res = ", ".join(f"{code}{c.display(s)}{code}" for s in n.residual_from)
        text += ("; " if text else "") + f"residual from {res}"
    return text


def _effect(n: Node) -> str:
    effect = n.info.get("ablation_effect")
    return f"loss without it {effect:.4g}" if isinstance(effect, (int, float)) else ""


def explain_text(circuit: dict[str, Any], edges_per_node: int = EDGES_PER_NODE) -> str:
    """The explanation as plain text: mechanism sentences, then the nodes layer by layer with their inputs."""
    c = load(circuit)
    lines = ["Mechanism", *(f"  - {s}" for s in mechanism(c)), ""]
    width = max(len(n.display) for n in c.nodes.values())
    layer = None
    for lay, title, members in groups(c):
        if lay != layer:
            lines.append(f"Layer {lay}")
            layer = lay
        lines.append(f"  {title}")
        for n in members:
            extra = "; ".join(p for p in (n.label, _effect(n)) if p)
            lines.append(f"    {n.display:<{width}}  {extra}".rstrip())
            inputs = _inputs(c, n, edges_per_node)
            if inputs:
                lines.append(f"    {'':<{width}}  <- {inputs}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, no line breaks."""
    return text.replace("|", "\\|").replace("\n", " ")


def explain_markdown(
    circuit: dict[str, Any], edges_per_node: int = EDGES_PER_NODE, max_edges: int = 2000
) -> str:
    """The explanation as Markdown with the circuit drawn inline as SVG (viewer/svg.py, up to max_edges)."""
    from sparsecircuits.viewer.export import circuit_title, export_svg

    c = load(circuit)
    title = circuit_title(circuit)
    parts = [f"# {title}", "", "## Mechanism", "", *(f"- {_cell(s)}" for s in mechanism(c)), ""]
    parts += ["## Drawing", "", export_svg(circuit, title, max_edges=max_edges), ""]
    layer = None
    for lay, group_title, members in groups(c):
        if lay != layer:
            parts += [f"## Layer {lay}", ""]
            layer = lay
        parts += [f"### {group_title}", "", "| node | label | loss without it | inputs (signed weight) |"]
        parts.append("|---|---|---|---|")
        for n in members:
            effect = n.info.get("ablation_effect")
            parts.append(
                f"| `{n.display}` | {_cell(n.label)} | {_fmt(effect, '.4g') if effect is not None else ''} | "
                f"{_cell(_inputs(c, n, edges_per_node, '`'))} |"
            )
        parts.append("")
    return "\n".join(parts)
