"""Assemble a circuit file from a pruning result: nodes, edges, counts, stages and per-node effects."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import torch

from sparsecircuits import __version__
from sparsecircuits.circuits.edges import circuit_edges, count_edges
from sparsecircuits.circuits.nodes import nodes_to_names
from sparsecircuits.circuits.prune import PruneResult


def gates_to_nodes(result: PruneResult, gates: torch.Tensor) -> dict[str, torch.Tensor]:
    return {loc: g.bool() for loc, g in result.mask.split(gates).items()}


def node_effects(result: PruneResult) -> dict[str, dict[str, float]]:
    """Per circuit node: its tau and the task loss with it alone removed (ablated) from the circuit, on the
    bisection's validation prompts with the closed edges ablated (measured by prune; none above
    prune.MAX_EFFECT_NODES nodes)."""
    kept = torch.nonzero(result.gates).flatten()
    names = nodes_to_names(gates_to_nodes(result, result.gates))
    info: dict[str, dict[str, float]] = {}
    tau = result.mask.expand(result.mask.tau.detach())  # per node (tie_qk: a pair shares its unit's tau)
    for name, i in zip(names, kept.tolist()):  # names and kept indices share the forward order
        entry = {"tau": round(float(tau[i]), 4)}
        if i in result.removal_effects:
            entry["ablation_effect"] = round(result.removal_effects[i], 5)
        info[name] = entry
    return info


def make_circuit(
    model,
    model_info: dict[str, Any],
    task: dict[str, Any],
    result: PruneResult,
    search_rows: list[dict] | None = None,
) -> dict[str, Any]:
    """The circuit dict of docs/formats.md without its validation (write it with circuit_file.write_circuit)."""
    nodes = gates_to_nodes(result, result.gates)
    graph = circuit_edges(model.state_dict(), model.cfg, nodes)
    stages = {k: dict(v) for k, v in result.stages.items()}
    if result.bisection_gates is not None and "bisection" in stages:
        bisected = gates_to_nodes(result, result.bisection_gates)
        stages["bisection"]["edges"] = count_edges(model.state_dict(), model.cfg, bisected)
    if "nodes" in stages.get("cleanup", {}):
        stages["cleanup"]["edges"] = graph.n_edges
    if result.edge_gates is not None:
        graph.edges = result.edge_mask.edges(model, result.edge_gates)
    last = [name for name, st in stages.items() if "nodes" in st]
    counts_stage = last[-1] if last else "bisection"
    circuit: dict[str, Any] = {
        "code_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": model_info,
        "task": task,
        "ablation": result.config["ablation"],
        "loss_convention": result.config["loss_convention"],
        "target_loss": result.config["target_loss"],
        # on the bisection's validation prompts; "loss" is what met the target (calibrated unless disabled)
        "achieved": {
            "split": "val",
            "loss": result.score.loss,
            **result.score.to_json(),
            "full_model": result.full_score.to_json(),
        },
        "nodes": nodes_to_names(nodes),
        "node_info": node_effects(result),
        **graph.to_json(),
        "bisection": result.bisection,
        # the counts above are after the last stage that ran ("stage" in counts): bisection, cleanup or edges
        "stages": stages,
        "pruning": {
            "hyperparameters": result.config,
            "seconds": round(result.seconds, 2),
            "history": result.history,
            "search": search_rows or [],
        },
    }
    circuit["counts"]["stage"] = counts_stage
    return circuit


def circuit_summary(c: dict[str, Any]) -> dict[str, Any]:
    """The numbers a summary line shows: sizes, the validation loss that met the target, and the test-split
    scores (raw and calibrated sufficiency, raw accuracy, raw necessity, the share of the full model's logit
    difference, natural code, verdict)."""
    v = c.get("validation") or {}
    suff = v.get("sufficiency") or {}
    natural = v.get("natural") or {}
    diffs = logit_diffs(v)
    return {
        "task": c["task"]["name"],
        "reached": True,
        "nodes": c["counts"]["nodes"],
        "edges": c["counts"]["edges"],
        "stage": c["counts"].get("stage", "bisection"),  # the stage the sizes are after
        "loss": c["achieved"]["loss"],
        "loss_convention": c.get("loss_convention"),
        "sufficiency_raw": suff.get("loss_raw"),
        "sufficiency_calibrated": suff.get("loss_calibrated"),
        "accuracy_raw": suff.get("accuracy_raw"),
        "necessity_raw": (v.get("necessity") or {}).get("loss_raw"),
        # the circuit's raw logit difference as a share of the full model's (files before it was stored: None)
        "logit_share": None if diffs is None else diffs[0] / diffs[1],
        "natural_full_model": (natural.get("full_model") or {}).get("loss_raw"),
        "natural_circuit": (natural.get("circuit") or {}).get("loss_calibrated"),
        "verdict": v.get("verdict"),
    }


def logit_diffs(validation: dict[str, Any]) -> tuple[float, float] | None:
    """(circuit, full model) mean raw logit differences of a validation record, or None where either is
    missing (files before they were stored) or the full model's is not positive (no share to give)."""
    own = (validation.get("sufficiency") or {}).get("logit_diff")
    full = (validation.get("full_model") or {}).get("logit_diff")
    ok = isinstance(own, float) and isinstance(full, float) and full > 0
    return (own, full) if ok else None


def geometric_mean(values: list[float]) -> float:
    """Geometric mean of positive counts (an edge count of 0 counts as 1, so the mean stays defined)."""
    if not values:
        return float("nan")
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values))
