"""`sparsecircuits prune` and `sparsecircuits validate`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from sparsecircuits.circuits.circuit import geometric_mean
from sparsecircuits.circuits.session import PruneSession, pick_device, prune_one
from sparsecircuits.cli_options import (
    NON_NEGATIVE,
    POSITIVE,
    count,
    data_option,
    device_option,
    force_option,
    quiet_option,
    seed_option,
)
from sparsecircuits.errors import UserError

SUMMARY_FILE = "summary.json"
MAX_PAIRS = 65_536  # pairs per task split (far above what a pool holds distinct)
MAX_WINDOWS = 100_000
MAX_STEPS = 1_000_000
DATA_OPTION = data_option(
    required=False,
    help="Pretraining dataset for mean activations (default: the one the model was trained on).",
)


def _summary_line(c: dict) -> str:
    v = c.get("validation", {})
    extra = ""
    if v:
        extra = (
            f"  test: sufficiency {v['sufficiency']['loss']:.3f}, necessity {v['necessity']['loss']:.3f}, "
            f"random {v['random']['loss']:.3f}, resample {v['resample']['loss']:.3f}"
        )
    a = c["achieved"]
    return (
        f"{c['task']['name']}: {c['counts']['nodes']} nodes, {c['counts']['edges']} edges, "
        f"loss {a['loss']:.4f} (uncalibrated {a['loss_uncalibrated']:.4f}, full model "
        f"{a['full_model_loss']:.4f}){extra}"
    )


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option(
    "--task", "tasks", multiple=True, help="Task name (repeatable). See `sparsecircuits tasks list`."
)
@click.option("--all-tasks", is_flag=True, help="Prune every task; --out is then a directory.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Circuit file (one task) or directory (several tasks).",
)
@DATA_OPTION
@click.option(
    "--target-loss", default=0.15, show_default=True, type=POSITIVE, help="Task loss the circuit must reach."
)
@click.option(
    "--ablation", type=click.Choice(["mean", "zero", "resample"]), default="mean", show_default=True
)
@click.option(
    "--steps", default=200, show_default=True, type=count(1, MAX_STEPS), help="Mask training steps per trial."
)
@click.option(
    "--budget",
    default=1,
    show_default=True,
    type=count(1, 1000),
    help="Hyperparameter trials per task (1: Table 2 centers).",
)
@click.option("--k-coef", default=1e-4, show_default=True, type=NON_NEGATIVE, help="Penalty per active node.")
@click.option("--lr", default=3e-3, show_default=True, type=POSITIVE, help="Mask learning rate.")
@click.option(
    "--batch-pairs",
    default=32,
    show_default=True,
    type=count(1, MAX_PAIRS),
    help="Pairs per mask training step (the paper: 64).",
)
@click.option(
    "--train-pairs",
    default=256,
    show_default=True,
    type=count(1, MAX_PAIRS),
    help="Training pairs to draw batches from.",
)
@click.option(
    "--eval-pairs",
    default=64,
    show_default=True,
    type=count(1, MAX_PAIRS),
    help="Fixed validation pairs for the bisection.",
)
@click.option(
    "--mean-windows",
    default=64,
    show_default=True,
    type=count(1, MAX_WINDOWS),
    help="Pretraining windows for mean activations.",
)
@click.option("--no-calibrate", is_flag=True, help="Compare the uncalibrated loss with the target.")
@click.option("--no-validate", is_flag=True, help="Skip the sufficiency/necessity/random/resample checks.")
@seed_option()
@device_option()
@force_option("Overwrite the circuit files (and summary.json) this project wrote.")
@quiet_option()
def prune(
    model_dir,
    data_dir,
    tasks,
    all_tasks,
    out,
    target_loss,
    ablation,
    steps,
    budget,
    k_coef,
    lr,
    batch_pairs,
    train_pairs,
    eval_pairs,
    mean_windows,
    no_calibrate,
    no_validate,
    seed,
    device,
    force,
    quiet,
) -> None:
    """Find the smallest circuit of a model for a task (learned node masks, mean ablation, bisection)."""
    from sparsecircuits.circuits.circuit_file import write_circuit
    from sparsecircuits.circuits.prune import PruneConfig
    from sparsecircuits.tasks import all_tasks as registry
    from sparsecircuits.tasks import get_task

    if all_tasks and tasks:
        raise UserError("give either --task NAME (repeatable) or --all-tasks, not both")
    if all_tasks:
        tasks = tuple(t.name for t in registry())
    if not tasks:
        raise UserError("name a task with --task NAME, or use --all-tasks")
    tasks = tuple(dict.fromkeys(tasks))  # a task named twice is pruned once
    for t in tasks:
        get_task(t)  # unknown names fail before any work
    many = len(tasks) > 1 or all_tasks
    paths = {t: (out / f"{t}.circuit.json" if many else out) for t in tasks}
    _check_prune_out(out, paths, many, force)
    cfg = PruneConfig(
        target_loss=target_loss,
        ablation=ablation,
        steps=steps,
        k_coef=k_coef,
        lr=lr,
        batch_pairs=batch_pairs,
        calibrate=not no_calibrate,
        seed=seed,
    ).validate()
    session = PruneSession(
        model_dir, pick_device(device), mean_windows, progress=not quiet, data_dir=data_dir
    )
    rows = []
    for t in tasks:
        click.echo(f"pruning {t} ...", err=True)
        try:
            circuit = prune_one(session, t, cfg, budget, train_pairs, eval_pairs, not no_validate)
        except UserError as e:
            if not many:
                raise
            click.echo(f"{t}: skipped: {e}", err=True)
            rows.append({"task": t, "reached": False, "reason": str(e)})
            continue
        write_circuit(paths[t], circuit)
        click.echo(_summary_line(circuit))
        rows.append(
            {
                "task": t,
                "reached": True,
                "nodes": circuit["counts"]["nodes"],
                "edges": circuit["counts"]["edges"],
                "loss": circuit["achieved"]["loss"],
                "file": paths[t].name,
            }
        )
    if many:
        _write_summary(out, rows, target_loss)


def _check_prune_out(out: Path, paths: dict[str, Path], many: bool, force: bool) -> None:
    """Refuse, before any work, outputs that exist (without --force), are not ours, or cannot be written."""
    from sparsecircuits.io import check_output_file, check_output_files

    if not many:
        check_output_file(out, force, "--out circuit file")
        return
    if out.name.endswith(".json"):
        raise UserError(f"with several tasks --out is a directory, got the file name {out}")
    check_output_files(out, [p.name for p in paths.values()] + [SUMMARY_FILE], force, "prune")


def _write_summary(out: Path, rows: list[dict], target: float) -> None:
    from sparsecircuits.io import atomic_write_json, mark_output_dir

    mark_output_dir(out, "prune")  # --force may later replace these circuit files and summary.json

    reached = [r for r in rows if r["reached"]]
    gm = geometric_mean([r["edges"] for r in reached])
    atomic_write_json(
        out / SUMMARY_FILE,
        {
            "target_loss": target,
            "tasks": rows,
            "geometric_mean_edges": gm,
            "tasks_reached": len(reached),
            "tasks_total": len(rows),
        },
    )
    click.echo(f"\n{'task':28s} {'nodes':>7s} {'edges':>7s} {'loss':>8s}")
    for r in rows:
        if r["reached"]:
            click.echo(f"{r['task']:28s} {r['nodes']:7d} {r['edges']:7d} {r['loss']:8.4f}")
        else:
            click.echo(f"{r['task']:28s} {'-':>7s} {'-':>7s}  not reached: {r['reason']}")
    click.echo(
        f"geometric mean of edges over {len(reached)}/{len(rows)} tasks that reached the target: {gm:.1f}"
    )


@click.command(name="validate")
@click.option("--circuit", "circuit_path", required=True, type=click.Path(path_type=Path))
@click.option(
    "--model", "model_dir", type=click.Path(path_type=Path), help="Run directory (default: as recorded)."
)
@DATA_OPTION
@click.option(
    "--n-pairs", default=128, show_default=True, type=count(1, MAX_PAIRS), help="Test pairs to evaluate on."
)
@click.option(
    "--n-random", default=5, show_default=True, type=count(1, 1000), help="Random circuits for the baseline."
)
@click.option("--mean-windows", default=64, show_default=True, type=count(1, MAX_WINDOWS))
@device_option()
@click.option("--no-write", is_flag=True, help="Print only; do not store the results in the circuit file.")
def validate_cmd(
    circuit_path, model_dir, data_dir, n_pairs, n_random, mean_windows, device, no_write
) -> None:
    """Check a circuit: sufficiency, necessity, a random baseline and a resample test (stored in the file)."""
    from sparsecircuits.circuits.circuit_file import read_circuit, write_circuit
    from sparsecircuits.circuits.nodes import names_to_nodes
    from sparsecircuits.circuits.validate import validate

    circuit = read_circuit(circuit_path)
    if not no_write:
        from sparsecircuits.io import check_writable

        check_writable(circuit_path, "circuit file")  # the results are stored in it: check before the work
    run_dir = model_dir or Path(circuit["model"]["path"])
    session = PruneSession(run_dir, pick_device(device), mean_windows, data_dir=data_dir)
    if session.model_info["content_hash"] != circuit["model"].get("content_hash"):
        raise UserError(f"{circuit_path} was pruned from another model (content hash differs)")
    nodes = names_to_nodes(circuit["nodes"], session.model.cfg)
    gates = torch.cat([nodes[loc].float() for loc in session.model.node_locations()])
    prompts = session.prompts(circuit["task"]["name"], n_pairs, "test", 0)
    calibrated = "calibration" in circuit["achieved"]
    result = validate(session.model, session.means, gates, prompts, calibrated, n_random)
    result["split"] = "test"
    click.echo(
        json.dumps(
            {k: (v["loss"] if isinstance(v, dict) and "loss" in v else v) for k, v in result.items()},
            indent=2,
        )
    )
    if not no_write:
        circuit["validation"] = result
        write_circuit(circuit_path, circuit)
