"""A static SVG of a circuit graph (the layout of graph.py), for `view --export FILE --out X.svg`.

Looks like the browser view (static/graph.js draws the same layout with the same palette, which both read
from the graph JSON's `locations`, i.e. the table in model/locations.py): blue edges
are positive weights, red negative, width grows with |weight|; residual links are faint dashed lines;
dotted arcs join the query and key channels of a QK pair. A node's `describe` label (node_info, circuits/
describe.py) is in its tooltip; a small described circuit also shows the label's first words under each node.
"""

from __future__ import annotations

import math
from typing import Any
from xml.sax.saxutils import escape, quoteattr

POSITIVE, NEGATIVE, UNSIGNED = "#2563eb", "#dc2626", "#64748b"
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
HEADER = 44
SHORT_LABEL_MAX_NODES = 40  # above this many nodes, describe labels are in the tooltips only
SHORT_LABEL_CHARS = 15  # visible labels alternate between two lines, so two slots (2 * graph.DX) hold one


def edge_width(w: float | None, max_abs: float) -> float:
    """Stroke width of an edge: 0.6 to 4 px, by sqrt(|w| / max |w|)."""
    if w is None or max_abs <= 0:
        return 1.2
    return 0.6 + 3.4 * math.sqrt(abs(w) / max_abs)


def edge_colour(w: float | None) -> str:
    return UNSIGNED if w is None else POSITIVE if w >= 0 else NEGATIVE


def curve(x1: float, y1: float, x2: float, y2: float) -> str:
    """A vertical S-curve from (x1, y1) to (x2, y2)."""
    my = (y1 + y2) / 2
    return f"M{x1:.1f},{y1:.1f} C{x1:.1f},{my:.1f} {x2:.1f},{my:.1f} {x2:.1f},{y2:.1f}"


def select_edges(graph: dict[str, Any], min_abs: float = 0.0, max_edges: int = 2000) -> list[list[Any]]:
    """The strongest edges with |w| >= min_abs, at most max_edges (edges come sorted by |w|)."""
    kept = [e for e in graph["edges"] if e[2] is None or abs(e[2]) >= min_abs]
    return kept[:max_edges]


def describe_label(node: dict[str, Any]) -> str:
    """The node's `describe` label ("" when it has none)."""
    label = node["info"].get("label")
    return label if isinstance(label, str) else ""


# describe.pretraining_phrase's wording, shortened for the drawing (the subtitle gives the key)
_SHORTER = (
    ("fires on mixed tokens, most ", "~"),
    ("negative on mixed tokens, most ", "\u2212~"),
    ("fires on ", ""),
    ("negative on ", "\u2212"),
    ("silent on pretraining text", "silent"),
)


def short_label(label: str, max_chars: int = SHORT_LABEL_CHARS) -> str:
    """The first phrase of a describe label, shortened ('negative on identifier tokens' -> '-identifier',
    'fires on mixed tokens, most ','' -> '~','') and cut to max_chars with an ellipsis."""
    text = label.split("; ", 1)[0].strip()
    for long, short in _SHORTER:
        if text.startswith(long):
            text = short + text[len(long) :]
            break
    text = text.removesuffix(" tokens")
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "\u2026"


def shows_short_labels(graph: dict[str, Any]) -> bool:
    """Visible short labels: a described circuit of at most SHORT_LABEL_MAX_NODES nodes."""
    nodes = graph["nodes"]
    return len(nodes) <= SHORT_LABEL_MAX_NODES and any(describe_label(n) for n in nodes)


def render_svg(graph: dict[str, Any], title: str = "", min_abs: float = 0.0, max_edges: int = 2000) -> str:
    """The whole SVG document as a string; every text is XML-escaped."""
    width, height = graph["width"], graph["height"] + HEADER
    edges = select_edges(graph, min_abs, max_edges)
    short = shows_short_labels(graph)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family={quoteattr(FONT)}>',
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
        f'<text x="16" y="22" font-size="15" font-weight="600" fill="#0f172a">{escape(title)}</text>',
        f'<text x="16" y="38" font-size="11" fill="#64748b">{escape(_subtitle(graph, edges))}</text>',
        f'<g transform="translate(0,{HEADER})">',
        *_bands(graph),
        *_residual_links(graph),
        *_edges(graph, edges),
        *_qk_arcs(graph),
        *_nodes(graph),
        *(_short_labels(graph) if short else []),
        "</g></svg>",
    ]
    return "\n".join(parts) + "\n"


def _subtitle(graph: dict[str, Any], edges: list[list[Any]]) -> str:
    n_edges = len(graph["edges"])
    shown = f"{len(edges)} of {n_edges} edges shown" if len(edges) < n_edges else f"{n_edges} edges"
    text = f"{len(graph['nodes'])} nodes, {shown}; blue positive, red negative weight; width |weight|"
    if shows_short_labels(graph):
        text += "; teal: what a node fires on (\u2212 negative, ~ mostly)"
    return text


def _bands(graph: dict[str, Any]) -> list[str]:
    out = []
    for band in graph["layers"]:
        out.append(
            f'<rect x="4" y="{band["y0"]:.1f}" width="{graph["width"] - 8:.0f}" '
            f'height="{band["y1"] - band["y0"]:.1f}" rx="6" fill="#f8fafc" stroke="#e2e8f0"/>'
        )
        out.append(
            f'<text x="12" y="{band["y0"] + 14:.1f}" font-size="11" font-weight="600" '
            f'fill="#475569">layer {int(band["layer"])}</text>'
        )
    for row in graph["rows"]:
        out.append(
            f'<text x="12" y="{row["y"] + 4:.1f}" font-size="11" fill="#64748b">{escape(row["label"])}</text>'
        )
    for g in graph["heads"]:
        x0, x1, y = g["x0"] - 12, g["x1"] + 12, g["y"] - 16
        out.append(
            f'<path d="M{x0:.1f},{y + 4:.1f} V{y:.1f} H{x1:.1f} V{y + 4:.1f}" fill="none" stroke="#cbd5e1"/>'
        )
        out.append(
            f'<text x="{(x0 + x1) / 2:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle" '
            f'fill="#64748b">head {int(g["head"])}</text>'
        )
    return out


def _residual_links(graph: dict[str, Any]) -> list[str]:
    nodes = graph["nodes"]
    return [
        f'<path d="{curve(nodes[a]["x"], nodes[a]["y"], nodes[b]["x"], nodes[b]["y"])}" fill="none" '
        f'stroke="#94a3b8" stroke-width="1" stroke-dasharray="3 3" opacity="0.55"/>'
        for a, b in graph["residual_links"]
    ]


def _edges(graph: dict[str, Any], edges: list[list[Any]]) -> list[str]:
    nodes = graph["nodes"]
    max_abs = max((abs(e[2]) for e in graph["edges"] if e[2] is not None), default=0.0)
    out = []
    for a, b, w in reversed(edges):  # strongest drawn last, on top
        title = f"{nodes[a]['display']} → {nodes[b]['display']}" + ("" if w is None else f": {w:+.4g}")
        out.append(
            f'<path d="{curve(nodes[a]["x"], nodes[a]["y"], nodes[b]["x"], nodes[b]["y"])}" fill="none" '
            f'stroke="{edge_colour(w)}" stroke-width="{edge_width(w, max_abs):.2f}" opacity="0.8">'
            f"<title>{escape(title)}</title></path>"
        )
    return out


def _qk_arcs(graph: dict[str, Any]) -> list[str]:
    nodes = graph["nodes"]
    out = []
    for q, k in graph["qk_pairs"]:
        (x1, y), x2 = (nodes[q]["x"], nodes[q]["y"]), nodes[k]["x"]
        out.append(
            f'<path d="M{x1:.1f},{y - 7:.1f} Q{(x1 + x2) / 2:.1f},{y - 24:.1f} {x2:.1f},{y - 7:.1f}" '
            f'fill="none" stroke="#d97706" stroke-width="1.2" stroke-dasharray="1.5 2.5"/>'
        )
    return out


def _nodes(graph: dict[str, Any]) -> list[str]:
    out = []
    locations = graph.get("locations", {})
    for n in graph["nodes"]:
        loc = locations.get(n["loc"], {})
        colour = loc.get("colour", "#334155")
        fill = "#ffffff" if loc.get("hollow") else colour
        effect = n["info"].get("ablation_effect")
        label = describe_label(n)
        title = n["display"] + (f": {label}" if label else "")
        title += "" if effect is None else f" (ablation effect {effect:.4g})"
        out.append(
            f'<g><title>{escape(title)}</title><circle cx="{n["x"]:.1f}" cy="{n["y"]:.1f}" r="7" '
            f'fill="{fill}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{n["x"]:.1f}" y="{n["y"] + 19:.1f}" font-size="9" text-anchor="middle" '
            f'fill="#334155">{escape(n["label"])}</text></g>'
        )
    return out


def _short_labels(graph: dict[str, Any]) -> list[str]:
    """The describe label's first words under each described node; neighbours in a row alternate between two
    lines, so a label may be about two node slots wide."""
    rows: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for n in graph["nodes"]:
        rows.setdefault((n["layer"], n["row"]), []).append(n)
    out = []
    for members in rows.values():
        for i, n in enumerate(sorted(members, key=lambda m: m["x"])):
            label = describe_label(n)
            if label:
                out.append(
                    f'<text x="{n["x"]:.1f}" y="{n["y"] + 28 + 8 * (i % 2):.1f}" font-size="8" '
                    f'text-anchor="middle" fill="#0f766e" stroke="#ffffff" stroke-width="2.5" paint-order="stroke">'
                    f"{escape(short_label(label))}</text>"
                )
    return out
