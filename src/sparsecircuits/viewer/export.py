"""Export a circuit without a server: a self-contained HTML page (graph, filter, node info) or an SVG."""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

from sparsecircuits.circuits.circuit_file import read_circuit
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_text
from sparsecircuits.viewer.graph import build_graph, circuit_meta
from sparsecircuits.viewer.svg import render_svg

EXPORT_SCRIPTS = ("dom.js", "plot.js", "graph.js", "export.js")
_PLACEHOLDER = re.compile(r"\{\{(TITLE|CSS|JS|DATA)\}\}")


def static_text(name: str) -> str:
    """A file of the viewer's static folder (packaged with sparsecircuits)."""
    return resources.files("sparsecircuits.viewer").joinpath("static", name).read_text(encoding="utf-8")


def script_json(obj: Any) -> str:
    """JSON that is safe inside <script type="application/json">: no `<`, `>`, `&` or line separators."""
    text = json.dumps(obj, separators=(",", ":"))
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text


def circuit_title(circuit: dict[str, Any], fallback: str = "circuit") -> str:
    task = circuit.get("task") if isinstance(circuit.get("task"), dict) else {}
    name = task.get("name")
    return f"{name} circuit" if isinstance(name, str) and name else fallback


def export_html(circuit: dict[str, Any], title: str) -> str:
    """A single HTML file holding the viewer's graph code, its style and the circuit's graph data."""
    css = static_text("style.css")
    js = "\n".join(static_text(name) for name in EXPORT_SCRIPTS)
    if "</style" in css.lower() or "</script" in js.lower():
        raise AssertionError("static assets must not close their own <style>/<script> element")
    data = script_json({"title": title, "graph": build_graph(circuit), "meta": circuit_meta(circuit)})
    values = {"TITLE": html.escape(title), "CSS": css, "JS": js, "DATA": data}
    # One pass, so a placeholder that appears inside the data is never substituted again.
    return _PLACEHOLDER.sub(lambda m: values[m[1]], static_text("export.html"))


def export_svg(circuit: dict[str, Any], title: str, min_abs: float = 0.0, max_edges: int = 2000) -> str:
    return render_svg(build_graph(circuit), title, min_abs, max_edges)


def export_file(
    circuit_path: str | Path, out: str | Path, min_abs: float = 0.0, max_edges: int = 2000
) -> Path:
    """Write `out` (.html or .svg, by its suffix) for the circuit file; returns the path written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".svg"):
        raise UserError(f"--out must end in .html or .svg, got {out.name}")
    circuit = read_circuit(circuit_path)
    title = circuit_title(circuit, Path(circuit_path).name)
    if suffix == ".svg":
        atomic_write_text(out, export_svg(circuit, title, min_abs, max_edges))
    else:
        atomic_write_text(out, export_html(circuit, title))
    return out
