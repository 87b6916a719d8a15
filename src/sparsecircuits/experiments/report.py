"""Self-contained HTML reports (plots inlined as PNG data URIs, no external assets)."""

from __future__ import annotations

import datetime as dt
import json
from html import escape
from pathlib import Path
from typing import Any

from sparsecircuits.circuits.circuit import circuit_summary, geometric_mean
from sparsecircuits.experiments import plots
from sparsecircuits.io import atomic_write_json, atomic_write_text
from sparsecircuits.tasks.evaluate import chance_loss

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.ok{color:#11772d}.bad{color:#b00020}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}.figs img{max-width:49%;vertical-align:top}
.note{color:#555;font-size:.9em}.drawing{overflow-x:auto}
pre.explain{white-space:pre-wrap}pre{background:#f8fafc;border:1px solid #e2e8f0;padding:.6em;overflow-x:auto;font-size:.8em;line-height:1.35}
"""


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell is escaped (floats formatted to 4 significant digits)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return escape(str(v))

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _edges(c: dict) -> int | None:
    return c["counts"]["edges"] if "counts" in c else None


def write_demo_report(
    cfg,
    runs: dict[str, Path],
    evals: dict,
    tasks: list[str],
    circuits: dict,
    targets: dict[str, float],
    smallest: dict | None = None,
) -> Path:
    """OUT/report.html and OUT/report.json for the demo. smallest: the circuit chosen to be explained
    (demo.describe_smallest: kind, task, path, nodes, edges, ...), None when no sparse circuit was reached."""
    metrics = {k: read_metrics(p) for k, p in runs.items()}
    bigram = next(
        (r.get("bigram_val_loss") for r in metrics.get("sparse", []) if r.get("bigram_val_loss")), None
    )
    both = [t for t in tasks if all(_edges(circuits[k].get(t, {})) is not None for k in runs)]
    gm = {k: geometric_mean([_edges(circuits[k][t]) for t in both]) for k in runs}
    ratio = gm["dense"] / gm["sparse"] if both and gm["sparse"] > 0 else None
    summary = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "timings_s": cfg.timings,
        "models": cfg.models,
        "preset": cfg.preset,
        "val_loss": {k: evals[k]["val_loss"] for k in runs},
        "bigram_val_loss": bigram,
        "tasks_pruned": tasks,
        "targets": targets,
        "tasks_reached_both": both,
        "geomean_edges": gm,
        "dense_over_sparse_edges": ratio,
        "loss_convention": cfg.loss_convention,
        "circuits": {
            k: {t: circuit_summary(c) if "counts" in c else c for t, c in circuits[k].items()} for k in runs
        },
        "smallest_circuit": smallest,
    }
    atomic_write_json(cfg.out / "report.json", summary)

    parts = [
        f"<h1>sparsecircuits demo</h1><p class='note'>{escape(summary['created'])} &middot; total "
        f"{cfg.timings.get('total', 0):.0f} s &middot; output <code>{escape(str(cfg.out))}</code></p>"
    ]
    parts.append("<h2>Models</h2>")
    if cfg.models == "shipped":
        origin = (
            "The models shipped in <code>artifacts/demo</code> (SHA-256 checked), trained once for longer than "
            "a CPU demo can; the command that trained them is in <code>artifacts/demo/README.md</code>. "
            "<code>sparsecircuits demo --train</code> trains both here instead."
        )
    else:
        origin = f"Both trained here with preset <code>{escape(cfg.preset)}</code>."
    parts.append(f"<p>{origin}</p>")
    parts.append(
        table(
            ["model", "val loss", "bigram baseline", "nonzero params", "total params"],
            [
                [
                    k,
                    evals[k]["val_loss"],
                    bigram if bigram is not None else "-",
                    evals[k]["nonzero_params"],
                    evals[k]["total_params"],
                ]
                for k in runs
            ],
        )
    )
    parts.append(
        f"<div class='figs'><img src='{plots.to_png_data_uri(plots.training_curves(metrics, bigram))}'></div>"
    )
    parts.append("<h2>Task suite (unpruned models, validation prompts)</h2>")
    rows = []
    for t in evals["sparse"]["tasks"]:
        row: list[Any] = [t]
        for k in runs:
            r = evals[k]["tasks"][t]
            row += [r.get("loss", "error"), r.get("acc", "-")]
        rows.append(row)
    parts.append(table(["task"] + [f"{k} {m}" for k in runs for m in ("loss", "accuracy")], rows))
    parts.append(_circuits_section(cfg, runs, tasks, circuits, both, gm, ratio, targets))
    parts.append(smallest_section(circuits, smallest))
    parts.append("<h2>Timings</h2>" + table(["stage", "seconds"], [[k, v] for k, v in cfg.timings.items()]))
    parts.append(f"<p>Browse the circuits: <code>sparsecircuits view {escape(str(cfg.out))}</code></p>")
    path = cfg.out / "report.html"
    atomic_write_text(path, page("sparsecircuits demo", "".join(parts)))
    return path


def _circuits_section(cfg, runs, tasks, circuits, both, gm, ratio, targets) -> str:
    out = [f"<h2>Circuits (the paper's target task loss is {cfg.target_loss:g})</h2>"]
    relaxed = [t for t in tasks if targets[t] != cfg.target_loss]
    if relaxed:
        out.append(
            f"<p class='note'>The demo models are not both comfortably below {cfg.target_loss:g} unpruned "
            f"(at most 80% of it) on {escape(', '.join(relaxed))}: those are pruned to a relaxed target "
            f"(0.1 per prompt, {0.1 * chance_loss(cfg.loss_convention) / chance_loss('mean'):.1f} "
            f"{escape(cfg.loss_convention)}, above the worse model's unpruned loss), marked in the table. A "
            f"task neither model learns below {cfg.relaxed_cap:g} is not pruned.</p>"
        )
    out.append(
        f"<p class='note'>Task losses use the {escape(cfg.loss_convention)} convention (chance "
        f"{chance_loss(cfg.loss_convention):.3f}). Test split: <i>suff</i> is the circuit alone, everything "
        "else mean-ablated, raw and after the logit calibration fitted on validation prompts and frozen; "
        "<i>acc</i> its raw accuracy; <i>logit diff</i> its mean raw correct-minus-wrong logit difference as a "
        "share of the unpruned model's (how much of the answer the circuit gives before any calibration); "
        "<i>nec</i> the raw loss with only the circuit ablated (the damage done); "
        "<i>natural</i> the circuit's calibrated loss on prompts mined from real code outside the training "
        "corpus (the unpruned model's beside it). A circuit whose raw accuracy is below 0.9 is "
        "<b>sufficient only after calibration</b>.</p>"
    )
    cols = (
        "nodes",
        "edges",
        "suff raw",
        "suff cal",
        "acc raw",
        "logit diff",
        "nec raw",
        "natural (full)",
        "verdict",
    )
    rows = []
    for t in tasks:
        row: list[Any] = [t, f"{targets[t]:g}" + (" (relaxed)" if t in relaxed else "")]
        for k in runs:
            c = circuits[k].get(t, {})
            if "counts" not in c:
                row += ["not reached"] + ["-"] * (len(cols) - 1)
                continue
            r = circuit_summary(c)
            nat = (
                "-"
                if r["natural_circuit"] is None
                else f"{r['natural_circuit']:.3g} ({r['natural_full_model']:.3g})"
            )
            share = "-" if r["logit_share"] is None else f"{100 * r['logit_share']:.0f} %"
            row += [r["nodes"], r["edges"], r["sufficiency_raw"], r["sufficiency_calibrated"], r["accuracy_raw"],
                    share, r["necessity_raw"], nat, r["verdict"] or "-"]  # fmt: skip
        rows.append(row)
    out.append(table(["task", "target"] + [f"{k} {m}" for k in runs for m in cols], rows))
    reached = {k: [t for t in tasks if "counts" in circuits[k].get(t, {})] for k in runs}
    out.append(
        "<p>"
        + "; ".join(
            f"{escape(k)} model reached the target on the validation prompts on {len(v)}/{len(tasks)} tasks"
            for k, v in reached.items()
        )
        + ".</p>"
    )
    if both:
        out.append(
            f"<p><b>Geometric mean of circuit edges</b> over the {len(both)} tasks both models reached: "
            f"sparse {gm['sparse']:.1f}, dense {gm['dense']:.1f}; dense/sparse = "
            f"<b>{ratio:.2f}&times;</b> (the paper reports about 16&times; at matched pretraining loss, "
            f"at far larger scale).</p>"
        )
        out.append(
            f"<div class='figs'><img src='{plots.to_png_data_uri(plots.edges_bars(both, {k: [_edges(circuits[k][t]) for t in both] for k in runs}))}'></div>"
        )
    figs = []
    for t in tasks:
        traces = {k: circuits[k][t]["bisection"] for k in runs if "bisection" in circuits[k].get(t, {})}
        if traces:
            fig = plots.loss_vs_size(traces, targets[t])
            fig.axes[0].set_title(t, fontsize=9)
            figs.append(f"<img src='{plots.to_png_data_uri(fig)}'>")
    if figs:
        out.append(
            "<h3>Task loss against circuit size (bisection)</h3><div class='figs'>" + "".join(figs) + "</div>"
        )
    return "".join(out)


def smallest_section(circuits: dict, smallest: dict | None) -> str:
    """The section "The smallest circuit, explained": its drawing (viewer/svg.py, inline, describe labels shown) and the
    `explain` text (mechanism sentences, then the nodes layer by layer) in a <pre> block."""
    from sparsecircuits.circuits.explain import explain_text
    from sparsecircuits.errors import UserError
    from sparsecircuits.viewer.export import circuit_title, export_svg

    out = ["<h2>The smallest circuit, explained</h2>"]
    if smallest is None:
        out.append("<p>No sparse-model circuit reached its target, so there is no circuit to explain.</p>")
        return "".join(out)
    circuit = circuits[smallest["kind"]][smallest["task"]]
    path = escape(smallest["path"])
    out.append(
        f"<p>The {escape(smallest['kind'])} model's circuit for <b>{escape(smallest['task'])}</b> "
        f"({smallest['nodes']} nodes, {smallest['edges']} edges), the fewest edges of its circuits. Node labels "
        f"come from <code>sparsecircuits describe</code> (what each node fires on in pretraining text and how it "
        f"differs between the task's two prompt kinds), stored in <code>{path}</code>; hover over a node for its "
        f"whole label. <code>sparsecircuits explain {path} --format md</code> prints the same text as "
        "Markdown.</p>"
    )
    if smallest.get("describe_error"):
        out.append(
            f"<p class='bad'>Its nodes could not be described: {escape(smallest['describe_error'])}. "
            "The drawing and the explanation show its structure only.</p>"
        )
    try:
        svg, text = export_svg(circuit, circuit_title(circuit)), explain_text(circuit)
    except UserError as e:
        out.append(f"<p class='bad'>It cannot be drawn or explained: {escape(str(e))}.</p>")
        return "".join(out)
    out.append(f"<div class='drawing'>{svg}</div>")
    out.append(f"<pre class='explain'>{escape(text)}</pre>")
    return "".join(out)
