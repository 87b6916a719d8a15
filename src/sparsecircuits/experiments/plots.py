"""Matplotlib figures for reports: training curves, task loss against circuit size, the frontier."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"sparse": "#1f77b4", "dense": "#d62728"}


def to_png_data_uri(fig) -> str:
    """Render a figure as a base64 PNG data URI (so an HTML report is one self-contained file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def training_curves(curves: dict[str, list[dict]], bigram: float | None = None):
    """Validation loss (and training loss, faint) against tokens for each named run."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for i, (name, rows) in enumerate(curves.items()):
        color = COLORS.get(name, f"C{i}")
        tr = [(r["tokens"], r["loss"]) for r in rows if r.get("loss") is not None and "tokens" in r]
        va = [(r["tokens"], r["val_loss"]) for r in rows if r.get("val_loss") is not None and "tokens" in r]
        if tr:
            ax.plot(*zip(*tr), color=color, alpha=0.25, lw=1)
        if va:
            ax.plot(*zip(*va), color=color, marker="o", ms=3, label=f"{name} (validation)")
    if bigram is not None:
        ax.axhline(bigram, color="gray", ls="--", lw=1, label="bigram baseline")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def loss_vs_size(traces: dict[str, Sequence[dict]], target: float, xlabel: str = "nodes kept"):
    """Task loss against circuit size (bisection points), one line per model: the paper's Fig 2 per task."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, rows) in enumerate(traces.items()):
        pts = sorted((r["k"], r["loss"]) for r in rows if r["k"] > 0)
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, color=COLORS.get(name, f"C{i}"), label=name)
    ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("task loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def edges_bars(tasks: list[str], edges: dict[str, list[float | None]]):
    """Circuit edges per task for each model (missing where the target was not reached)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(tasks) + 2), 3.4))
    width = 0.8 / max(1, len(edges))
    for i, (name, values) in enumerate(edges.items()):
        xs = [j + i * width for j, v in enumerate(values) if v is not None]
        ys = [max(v, 1) for v in values if v is not None]
        ax.bar(xs, ys, width=width, color=COLORS.get(name, f"C{i}"), label=name)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(tasks))], tasks, rotation=30, ha="right", fontsize=8
    )
    ax.set_yscale("log")
    ax.set_ylabel("circuit edges")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig


def frontier(points: list[dict]):
    """Geometric-mean circuit edges against pretraining loss, one point per model (the paper's Fig 3)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for kind, marker in (("sparse", "o"), ("dense", "s")):
        pts = [p for p in points if p["kind"] == kind and p.get("geomean_edges")]
        if pts:
            sc = ax.scatter(
                [p["val_loss"] for p in pts],
                [p["geomean_edges"] for p in pts],
                marker=marker,
                c=[p["total_params"] for p in pts],
                cmap="viridis",
                norm=matplotlib.colors.LogNorm(),
                label=kind,
                edgecolors="k",
            )
            for p in pts:
                ax.annotate(
                    p["name"],
                    (p["val_loss"], p["geomean_edges"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    if any(p.get("geomean_edges") for p in points):
        fig.colorbar(sc, ax=ax, label="total parameters")
    ax.set_yscale("log")
    ax.margins(x=0.2, y=0.1)  # room for the labels right of the outermost points
    ax.set_xlabel("pretraining validation loss")
    ax.set_ylabel("geometric mean of circuit edges")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig
