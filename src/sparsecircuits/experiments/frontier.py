"""`sparsecircuits frontier`: models x tasks -> pretraining loss, circuit sizes, and the paper's two plots.

A config file (JSON) names the dataset, the models and how to prune:

    {
      "data": "runs/demo/data",
      "out": "runs/frontier",
      "target_loss": 0.15,
      "sweep_targets": [0.5, 0.3, 0.15, 0.08],
      "tasks": ["single_double_quote", "bracket_counting"],      // default: all 20
      "prune": {"steps": 300, "budget": 1},                      // also k_coef, eval_pairs, ...
      "models": [
        {"name": "dense-64", "preset": "demo", "dense": true, "set": ["model.d_model=64"]},
        {"name": "sparse-128-l0.25", "preset": "demo", "set": ["train.l0_target=0.25"]},
        {"name": "existing", "run": "runs/demo/sparse"},         // reuse a trained run as is
        {"name": "dense-matched", "preset": "demo", "dense": true,
         "match_loss_of": "sparse-128-l0.25"}                    // stop at that model's final val loss
      ]
    }

A model to train may stop early at a validation loss: "stop_at_loss": X (train.stop_at_loss), or
"match_loss_of": NAME, the final validation loss of an earlier model in the list (its metrics.jsonl), which
makes a loss-matched partner; the matched pair in the outputs is then that pair.

Every cell (a model trained, a task pruned) is written to OUT as it completes; a rerun skips finished cells.
The whole config is checked before any work: unknown keys (also inside "prune" and each model), targets that
are not positive numbers, models that are not objects, and model names that are not plain folder names
(letters, digits, `.`, `_`, `-`; they become OUT/models/NAME) are one-line errors, and so is a model whose
preset or `set` overrides would fail (checked against the dataset's vocabulary).
Outputs: OUT/frontier.json, OUT/frontier.md (table), OUT/fig2_loss_vs_edges.png (loss-matched sparse and dense
pair over the sweep of targets), OUT/fig3_frontier.png (geometric-mean edges against pretraining loss).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sparsecircuits.errors import UserError, reject_unknown_keys
from sparsecircuits.io import atomic_write_json, atomic_write_text, read_json

MODEL_KEYS = {"name", "preset", "dense", "set", "run", "stop_at_loss", "match_loss_of"}
PRUNE_INT_KEYS = {"steps", "budget", "train_pairs", "eval_pairs"}
PRUNE_BOOL_KEYS = {"cleanup", "edges"}  # the clean-up and edge stages (both on by default, as in `prune`)
PRUNE_KEYS = PRUNE_INT_KEYS | PRUNE_BOOL_KEYS | {"min_raw_accuracy", "holdout_pairs", "k_coef"}
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a plain folder name: never a path


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _strings(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def check_model_entry(m: Any, where: str) -> None:
    """UserError unless a "models" entry is an object of known keys with a plain folder name as its name."""
    if not isinstance(m, dict):
        raise UserError(f"{where}: each model is an object with a 'name', got {json.dumps(m)}")
    if set(m) - MODEL_KEYS or not isinstance(m.get("name"), str):
        raise UserError(f"{where}: each model needs a 'name' and only {sorted(MODEL_KEYS)}: {m}")
    if not MODEL_NAME.fullmatch(m["name"]):
        raise UserError(
            f"{where}: model name {m['name']!r} must be a plain folder name (letters, digits, '.', '_', '-'; "
            "no path separators, not starting with '.')"
        )
    types = {"preset": (str, "a string"), "dense": (bool, "true or false"), "run": (str, "a path string")}
    for key, (kind, what) in types.items():
        if key in m and not isinstance(m[key], kind):
            raise UserError(f"{where}: model {m['name']}: {key!r} must be {what}, got {m[key]!r}")
    if "set" in m and not _strings(m["set"]):
        raise UserError(f"{where}: model {m['name']}: 'set' must be a list of KEY=VALUE strings")
    check_stop_keys(m, where)


def check_stop_keys(m: dict[str, Any], where: str) -> None:
    """UserError unless "stop_at_loss" (a positive number) and "match_loss_of" (a model name) are used
    one at a time, and only on a model this config trains."""
    stops = [k for k in ("stop_at_loss", "match_loss_of") if k in m]
    if not stops:
        return
    name = m["name"]
    if len(stops) > 1:
        raise UserError(f"{where}: model {name}: 'stop_at_loss' and 'match_loss_of' contradict; pick one")
    if "run" in m:
        raise UserError(f"{where}: model {name}: {stops[0]!r} applies to a model trained here, not a 'run'")
    if "stop_at_loss" in m and not _positive_number(m["stop_at_loss"]):
        raise UserError(
            f"{where}: model {name}: 'stop_at_loss' must be a positive number, got {m['stop_at_loss']!r}"
        )
    if "match_loss_of" in m and not isinstance(m["match_loss_of"], str):
        raise UserError(
            f"{where}: model {name}: 'match_loss_of' must be a model name, got {m['match_loss_of']!r}"
        )


def check_matches(models: list[dict[str, Any]], where: str) -> None:
    """UserError unless every "match_loss_of" names a model listed before it (trained, or reused, first)."""
    seen: set[str] = set()
    for m in models:
        other = m.get("match_loss_of")
        if other is not None and other not in seen:
            raise UserError(
                f"{where}: model {m['name']}: 'match_loss_of' must name a model listed before it, got {other!r}"
            )
        seen.add(m["name"])


def check_values(raw: dict[str, Any], where: str) -> None:
    """UserError for the first bad value of a frontier config (its keys are already known)."""
    for key in ("data", "out"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise UserError(f"{where}: {key!r} must be a path string, got {raw[key]!r}")
    if "target_loss" in raw and not _positive_number(raw["target_loss"]):
        raise UserError(f"{where}: 'target_loss' must be a positive number, got {raw['target_loss']!r}")
    sweep = raw.get("sweep_targets", [])
    if not isinstance(sweep, list) or not all(_positive_number(t) for t in sweep):
        raise UserError(f"{where}: 'sweep_targets' must be a list of positive numbers, got {sweep!r}")
    if not _strings(raw.get("tasks", [])):
        raise UserError(f"{where}: 'tasks' must be a list of task names")
    if raw.get("loss_convention", "pair-sum") not in ("pair-sum", "mean"):
        raise UserError(f'{where}: \'loss_convention\' must be "pair-sum" or "mean"')
    if not isinstance(raw.get("device", "auto"), str):
        raise UserError(f"{where}: 'device' must be a string")
    prune = raw.get("prune", {})
    if not isinstance(prune, dict):
        raise UserError(f"{where}: 'prune' must be an object with keys from {sorted(PRUNE_KEYS)}")
    unknown = sorted(set(prune) - PRUNE_KEYS)
    if unknown:
        raise UserError(
            f"{where}: prune: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(PRUNE_KEYS))})"
        )
    bad = [k for k, v in prune.items() if k in PRUNE_INT_KEYS and not _positive_int(v)]
    if bad:
        raise UserError(f"{where}: prune.{bad[0]} must be a positive integer, got {prune[bad[0]]!r}")
    bad = [k for k, v in prune.items() if k in PRUNE_BOOL_KEYS and not isinstance(v, bool)]
    if bad:
        raise UserError(f"{where}: prune.{bad[0]} must be true or false, got {prune[bad[0]]!r}")
    held = prune.get("holdout_pairs", 0)
    if isinstance(held, bool) or not isinstance(held, int) or held < 0:
        raise UserError(f"{where}: prune.holdout_pairs must be an integer >= 0, got {held!r}")
    floor = prune.get("min_raw_accuracy", 0.9)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 1:
        raise UserError(f"{where}: prune.min_raw_accuracy must be a number in [0, 1], got {floor!r}")
    if "k_coef" in prune and not _positive_number(prune["k_coef"]):
        raise UserError(f"{where}: prune.k_coef must be a positive number, got {prune['k_coef']!r}")


@dataclass
class FrontierConfig:
    data: Path
    out: Path
    models: list[dict[str, Any]]
    tasks: list[str] = field(default_factory=list)
    target_loss: float = 0.15
    loss_convention: str = "pair-sum"  # tasks/evaluate.py: the authors' pair sum, or the per-prompt mean
    sweep_targets: list[float] = field(default_factory=lambda: [0.5, 0.3, 0.15, 0.08])
    prune: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"

    @classmethod
    def load(cls, path: Path) -> FrontierConfig:
        raw = read_json(path, "frontier config")
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a frontier config is a JSON object")
        reject_unknown_keys(cls, raw, str(path))
        for key in ("data", "out", "models"):
            if key not in raw:
                raise UserError(f"{path}: missing {key!r}")
        models = raw["models"]
        if not isinstance(models, list) or not models:
            raise UserError(f"{path}: 'models' must be a non-empty list")
        for m in models:
            check_model_entry(m, str(path))
        names = [m["name"].casefold() for m in models]  # one folder each, also on case-insensitive disks
        if len(set(names)) != len(names):
            raise UserError(f"{path}: model names must be unique")
        check_matches(models, str(path))
        check_values(raw, str(path))
        cfg = cls(**{**raw, "data": Path(raw["data"]), "out": Path(raw["out"])})
        from sparsecircuits.tasks import get_task, task_names

        cfg.tasks = cfg.tasks or task_names()
        for t in cfg.tasks:
            get_task(t)
        from sparsecircuits.data.dataset import load_dataset

        check_model_configs(cfg, load_dataset(cfg.data).meta.get("vocab_size"))
        return cfg


def model_dir(cfg: FrontierConfig, m: dict) -> Path:
    return Path(m["run"]) if m.get("run") else cfg.out / "models" / m["name"]


def ensure_model(cfg: FrontierConfig, m: dict) -> Path:
    """Train the model unless its run already has final weights (or it names an existing run)."""
    from sparsecircuits.run import MODEL_FILE
    from sparsecircuits.train.trainer import train

    path = model_dir(cfg, m)
    if (path / MODEL_FILE).is_file():
        return path
    if m.get("run"):
        raise UserError(f"model {m['name']}: run {path} has no {MODEL_FILE}")
    resume = (path / "checkpoints").is_dir()
    click.echo(f"==> training {m['name']}" + (" (resuming)" if resume else ""), err=True)
    train(
        cfg.data,
        path,
        None if resume else m.get("preset", "demo"),  # a resumed run keeps its own config.json
        dense=not resume and bool(m.get("dense")),
        sets=[] if resume else model_sets(cfg, m),
        resume=resume,
        force=not resume,
        device=None if cfg.device == "auto" else cfg.device,
    )
    return path


def model_sets(cfg: FrontierConfig, m: dict, matched_loss: float | None = None) -> list[str]:
    """The model's `set` overrides plus its early stop, if any: "stop_at_loss", or "match_loss_of" (the
    named model's final val loss; `matched_loss` stands in for it before that model is trained)."""
    from sparsecircuits.train.trainer import final_val_loss

    loss = m.get("stop_at_loss")
    if m.get("match_loss_of"):
        other = next(o for o in cfg.models if o["name"] == m["match_loss_of"])
        loss = matched_loss if matched_loss is not None else final_val_loss(model_dir(cfg, other))
    stop = [f"train.stop_at_loss={float(loss)!r}"] if loss is not None else []
    return [*m.get("set", []), *stop]


def model_row(cfg: FrontierConfig, m: dict, path: Path) -> dict:
    """Pretraining validation loss and parameter counts of one model (cached in its cell file)."""
    cell = cfg.out / "cells" / m["name"] / "model.json"
    if cell.is_file():
        return json.loads(cell.read_text())
    from sparsecircuits.run import load_run
    from sparsecircuits.train.evaluate import validation_loss

    run = load_run(path)
    row = {
        "name": m["name"],
        "path": str(path),
        "kind": "dense" if _is_dense(run.config) else "sparse",
        "val_loss": validation_loss(run.model, cfg.data),
        "total_params": run.model.num_params(),
        "nonzero_params": run.model.num_nonzero(),
        "d_model": run.model.cfg.d_model,
        **({"matched_to": m["match_loss_of"]} if m.get("match_loss_of") else {}),
    }
    atomic_write_json(cell, row)
    return row


def _is_dense(config: dict) -> bool:
    return float((config.get("train") or {}).get("l0_target", 1.0)) >= 1.0


def prune_cells(cfg: FrontierConfig, m: dict, path: Path) -> dict[str, dict]:
    """Prune every task of one model; each task's summary is a cell file."""
    from sparsecircuits.circuits.circuit import circuit_summary
    from sparsecircuits.circuits.circuit_file import write_circuit
    from sparsecircuits.circuits.prune import PruneConfig
    from sparsecircuits.circuits.session import PruneSession, pick_device, prune_one

    out: dict[str, dict] = {}
    session = None
    p = {"steps": 300, "budget": 1, "train_pairs": 256, "eval_pairs": 128, **cfg.prune}
    pcfg = PruneConfig(
        target_loss=cfg.target_loss,
        steps=p["steps"],
        loss_convention=cfg.loss_convention,
        cleanup=p.get("cleanup", True),
        edges=p.get("edges", True),
        min_raw_accuracy=p.get("min_raw_accuracy", 0.9),
        holdout_pairs=p.get("holdout_pairs", PruneConfig.holdout_pairs),
        k_coef=float(p.get("k_coef", PruneConfig.k_coef)),
    )
    for task in cfg.tasks:
        cell = cfg.out / "cells" / m["name"] / f"{task}.json"
        if cell.is_file():
            row = json.loads(cell.read_text())
            if row.get("loss_convention", "mean") == cfg.loss_convention:  # else pruned under another one
                out[task] = row
                continue
        session = session or PruneSession(path, pick_device(cfg.device), data_dir=cfg.data)
        click.echo(f"==> {m['name']}: pruning {task}", err=True)
        try:
            c = prune_one(
                session,
                task,
                pcfg,
                p["budget"],
                p["train_pairs"],
                p["eval_pairs"],
                True,
                tuple(cfg.sweep_targets),
            )
        except UserError as e:
            row = {"task": task, "reached": False, "reason": str(e), "loss_convention": cfg.loss_convention}
        else:
            circuit_path = cfg.out / "circuits" / m["name"] / f"{task}.circuit.json"
            write_circuit(circuit_path, c)
            row = {**circuit_summary(c), "sweep": c.get("sweep", []), "circuit": str(circuit_path)}
        atomic_write_json(cell, row)
        out[task] = row
    return out


def run_frontier(cfg: FrontierConfig) -> dict:
    """Train/reuse every model, prune every task, write the table and plots. Returns the summary."""
    from sparsecircuits.circuits.circuit import geometric_mean
    from sparsecircuits.data.dataset import load_dataset

    load_dataset(cfg.data)
    rows = []
    for m in cfg.models:
        path = ensure_model(cfg, m)
        row = model_row(cfg, m, path)
        cells = prune_cells(cfg, m, path)
        reached = [c for c in cells.values() if c["reached"]]
        row.update(
            tasks=cells,
            tasks_reached=len(reached),
            geomean_edges=geometric_mean([c["edges"] for c in reached]) if reached else None,
        )
        rows.append(row)
    summary = {
        "target_loss": cfg.target_loss,
        "loss_convention": cfg.loss_convention,
        "tasks": cfg.tasks,
        "models": rows,
        "matched_pair": matched_pair(rows, cfg.tasks),
    }
    atomic_write_json(cfg.out / "frontier.json", summary)
    atomic_write_text(cfg.out / "frontier.md", markdown_table(summary))
    write_plots(cfg, summary)
    return summary


def check_model_configs(cfg: FrontierConfig, vocab: int | None) -> None:
    """Before any training: every model to train has a valid preset and `set` overrides for this vocabulary,
    and every existing run named by "run" has final weights."""
    from sparsecircuits.run import MODEL_FILE
    from sparsecircuits.train.config import build_config

    for m in cfg.models:
        if m.get("run") and not (Path(m["run"]) / MODEL_FILE).is_file():
            raise UserError(f"model {m['name']}: run {m['run']} has no {MODEL_FILE}")
        if m.get("run") or vocab is None:
            continue
        try:
            sets = model_sets(cfg, m, matched_loss=1.0)  # the matched loss is only known once trained
            build_config(m.get("preset", "demo"), vocab, bool(m.get("dense")), sets)
        except UserError as e:
            raise UserError(f"model {m['name']}: {e}") from None


def common_tasks(a: dict, b: dict, tasks: list[str]) -> list[str]:
    return [t for t in tasks if a["tasks"][t]["reached"] and b["tasks"][t]["reached"]]


def matched_pair(rows: list[dict], tasks: list[str]) -> dict | None:
    """The sparse and dense models closest in validation loss (or the first pair that a "match_loss_of"
    made), and their circuit-size ratio on shared tasks."""
    from sparsecircuits.circuits.circuit import geometric_mean

    by_name = {r["name"]: r for r in rows}
    explicit = [
        (r, by_name[r["matched_to"]])
        for r in rows
        if r.get("matched_to") in by_name
        and {r["kind"], by_name[r["matched_to"]]["kind"]} == {"sparse", "dense"}
    ]
    pairs = [
        (abs(s["val_loss"] - d["val_loss"]), s, d)
        for s in rows
        if s["kind"] == "sparse"
        for d in rows
        if d["kind"] == "dense"
    ]
    if not pairs:
        return None
    _, s, d = min(pairs, key=lambda p: p[0])
    if explicit:
        a, b = explicit[0]
        s, d = (a, b) if a["kind"] == "sparse" else (b, a)
    shared = common_tasks(s, d, tasks)
    if not shared:
        return {"sparse": s["name"], "dense": d["name"], "shared_tasks": [], "ratio": None}
    gs = geometric_mean([s["tasks"][t]["edges"] for t in shared])
    gd = geometric_mean([d["tasks"][t]["edges"] for t in shared])
    return {
        "sparse": s["name"],
        "dense": d["name"],
        "sparse_val_loss": s["val_loss"],
        "dense_val_loss": d["val_loss"],
        "shared_tasks": shared,
        "sparse_geomean_edges": gs,
        "dense_geomean_edges": gd,
        "ratio": gd / gs,
    }


def markdown_table(summary: dict) -> str:
    lines = [
        f"# Frontier (target task loss {summary['target_loss']:g}, "
        f"{summary.get('loss_convention', 'mean')} convention)",
        "",
        "| model | kind | total params | nonzero params | val loss | tasks reached | geomean edges |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in summary["models"]:
        gm = f"{r['geomean_edges']:.1f}" if r["geomean_edges"] else "-"
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['total_params']:,} | {r['nonzero_params']:,} | "
            f"{r['val_loss']:.4f} | {r['tasks_reached']}/{len(summary['tasks'])} | {gm} |"
        )
    lines += [
        "",
        "Edges per task:",
        "",
        "| task | " + " | ".join(r["name"] for r in summary["models"]) + " |",
        "|---|" + "---:|" * len(summary["models"]),
    ]
    for t in summary["tasks"]:
        cells = [str(r["tasks"][t].get("edges", "-")) for r in summary["models"]]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    mp = summary.get("matched_pair")
    if mp and mp.get("ratio"):
        lines += [
            "",
            f"Loss-matched pair: {mp['sparse']} (val {mp['sparse_val_loss']:.4f}) vs {mp['dense']} "
            f"(val {mp['dense_val_loss']:.4f}) on {len(mp['shared_tasks'])} shared tasks: dense/sparse "
            f"geometric-mean edges = {mp['ratio']:.2f}x (paper: about 16x).",
        ]
    return "\n".join(lines) + "\n"


def write_plots(cfg: FrontierConfig, summary: dict) -> None:
    from sparsecircuits.circuits.circuit import geometric_mean
    from sparsecircuits.experiments import plots

    fig = plots.frontier(summary["models"])
    fig.savefig(cfg.out / "fig3_frontier.png", dpi=120, bbox_inches="tight")
    mp = summary.get("matched_pair")
    if not mp or not mp["shared_tasks"]:
        return
    by_name = {r["name"]: r for r in summary["models"]}
    curves = {}
    for kind in ("sparse", "dense"):
        r = by_name[mp[kind]]
        pts = []
        for target in cfg.sweep_targets:
            edges = [
                next(
                    (s["edges"] for s in r["tasks"][t]["sweep"] if s["target"] == target and s["reached"]),
                    None,
                )
                for t in mp["shared_tasks"]
            ]
            if all(e is not None for e in edges):
                pts.append({"k": geometric_mean(edges), "loss": target})
        curves[f"{kind} ({r['name']})"] = pts
    fig = plots.loss_vs_size(curves, cfg.target_loss, xlabel="geometric mean of circuit edges")
    fig.savefig(cfg.out / "fig2_loss_vs_edges.png", dpi=120, bbox_inches="tight")
