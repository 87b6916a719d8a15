"""`sparsecircuits prune` and `sparsecircuits validate`."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.circuits.ablations import ABLATIONS
from sparsecircuits.circuits.circuit import circuit_summary, geometric_mean, logit_diffs
from sparsecircuits.circuits.session import PruneSession, pick_device, prune_one
from sparsecircuits.cli_options import (
    NON_NEGATIVE,
    POSITIVE,
    count,
    data_option,
    device_option,
    force_option,
    loss_convention_option,
    quiet_option,
    seed_option,
    shown_option,
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
PROMPTS_OPTION = click.option(
    "--prompts",
    "prompts_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also score on natural prompts mined from real code (`sparsecircuits tasks mine`).",
)


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def score_lines(c: dict) -> list[str]:
    """The terminal summary of a circuit: size, then raw and calibrated test scores and the verdict."""
    a = c["achieved"]
    stage = c["counts"].get("stage", "bisection")
    lines = [
        f"{c['task']['name']}: {c['counts']['nodes']} nodes, {c['counts']['edges']} edges after {stage} "
        f"(target {c['target_loss']:g}, {c.get('loss_convention', 'mean')} convention; val loss "
        f"{_fmt(a['loss_calibrated'])} calibrated, {_fmt(a['loss_raw'])} raw; full model {_fmt(a['full_model']['loss_raw'])})"
    ]
    st = c.get("stages") or {}
    sizes = [
        f"{name} {st[name]['nodes']} / {st[name].get('edges', '-')}"
        for name in ("bisection", "cleanup", "edges")
        if "nodes" in st.get(name, {})
    ]
    if len(sizes) > 1:
        lines.append("  nodes / edges: " + " -> ".join(sizes))
    kept = (st.get("cleanup") or {}).get("kept_by")
    if kept:
        lines.append(
            f"  clean-up: what keeps each node (tied pairs count once): the loss target {kept['loss']}, "
            f"the raw-accuracy floor alone {kept['raw_accuracy']}, both {kept['both']}"
        )
    checks = [
        f"{name} put back {st[name]['held_out']['put_back']} {unit} (held-out loss "
        f"{_fmt(st[name]['held_out']['loss'])}, must reach {_fmt(st[name]['held_out']['floor'])})"
        for name, unit in (("cleanup", "nodes"), ("edges", "edges"))
        if "held_out" in st.get(name, {})
    ]
    if checks:
        lines.append(f"  held-out check ({c['task'].get('held_out_pairs', '?')} pairs): " + "; ".join(checks))
    v = c.get("validation") or {}
    if "sufficiency" in v:
        lines.append(
            f"  {'test split':14s} {'loss raw':>9s} {'acc raw':>8s} {'loss cal':>9s} {'acc cal':>8s}"
        )
        for key in ("sufficiency", "necessity", "random", "resample", "full_model"):
            if key in v:
                s = v[key]
                lines.append(
                    f"  {key:14s} {_fmt(s.get('loss_raw')):>9s} {_fmt(s.get('accuracy_raw')):>8s} "
                    f"{_fmt(s.get('loss_calibrated')):>9s} {_fmt(s.get('accuracy_calibrated')):>8s}"
                )
        lines.append(
            f"  verdict: {v.get('verdict', '-')} (chance {_fmt(v.get('chance'))}; necessity headline is raw)"
        )
        diffs = logit_diffs(v)
        if diffs is not None:
            own, full = diffs
            share = 100 * own / full
            lines.append(
                f"  logit difference (raw, correct - wrong): circuit {own:.3f}, full model {full:.3f} "
                f"({share:.{1 if abs(share) < 10 else 0}f} % of it; the calibration scales the circuit's by "
                f"{_fmt(v['sufficiency'].get('calibration', {}).get('scale'))})"
            )
        nat = v.get("natural")
        if nat:
            lines.append(
                f"  natural code ({nat['n_prompts']} prompts): full model {_fmt(nat['full_model']['loss_raw'])}, "
                f"circuit {_fmt(nat['circuit']['loss_raw'])} raw / {_fmt(nat['circuit']['loss_calibrated'])} calibrated"
            )
    return lines


def load_natural(prompts_file: Path | None, task: str) -> list[dict] | None:
    """The mined records of `task` in `prompts_file` (None without a file; a task absent from it: [])."""
    if prompts_file is None:
        return None
    from sparsecircuits.tasks.mine import read_mined

    return read_mined(prompts_file).get(task, [])


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
    "--ablation",
    type=click.Choice(list(ABLATIONS)),
    default="mean",
    show_default=True,
    help="; ".join(f"{a.name}: {a.description}" for a in ABLATIONS.values()),
)
@loss_convention_option()
@PROMPTS_OPTION
@click.option(
    "--steps", default=200, show_default=True, type=count(1, MAX_STEPS), help="Mask training steps per trial."
)
@shown_option(
    "--budget",
    1,
    count(1, 1000),
    "Settings tried per task by successive halving: all run briefly (never under 75 steps), the better half "
    "again with twice the steps, until one runs --steps in full (1: the given settings alone).",
)
@click.option(
    "--k-coef",
    default=1e-2,
    show_default=True,
    type=NON_NEGATIVE,
    help="Penalty per active node (the paper's search center: 1e-4; docs/circuits.md, choosing the defaults).",
)
@click.option("--lr", default=3e-3, show_default=True, type=POSITIVE, help="Mask learning rate.")
@shown_option("--batch-pairs", 32, count(1, MAX_PAIRS), "Pairs per mask training step (the paper: 64).")
@shown_option("--train-pairs", 256, count(1, MAX_PAIRS), "Training pairs to draw batches from.")
@shown_option("--eval-pairs", 64, count(1, MAX_PAIRS), "Fixed validation pairs for the bisection.")
@shown_option(
    "--holdout-pairs",
    128,
    count(0, MAX_PAIRS),
    "More training-split pairs, used for nothing else, that the clean-up and the edge stage must also pass "
    "(removals put back until they do; 0: no check).",
)
@shown_option("--mean-windows", 64, count(1, MAX_WINDOWS), "Pretraining windows for mean activations.")
@click.option("--no-calibrate", is_flag=True, help="Compare the uncalibrated loss with the target.")
@click.option(
    "--min-raw-accuracy",
    default=0.9,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="The circuit must also answer this share of the validation prompts right before calibration "
    "(capped at the full model's own; 0: off).",
)
@click.option("--tie-qk", is_flag=True, help="One mask per query/key channel pair (PAPER.md 5.1).")
@click.option(
    "--no-cleanup", is_flag=True, help="Skip the greedy node removal after the bisection (docs/circuits.md)."
)
@click.option(
    "--no-edges",
    is_flag=True,
    help="Skip edge pruning (gates on the weights between circuit nodes, after the clean-up; docs/circuits.md).",
)
@shown_option("--edge-steps", 100, count(1, MAX_STEPS), "Edge-gate training steps.")
@click.option(
    "--edge-k-coef", default=1e-4, show_default=True, type=NON_NEGATIVE, help="Penalty per open edge."
)
@click.option(
    "--edge-lr", default=6e-3, show_default=True, type=POSITIVE, help="Learning rate of the edge gates."
)
@click.option("--no-validate", is_flag=True, help="Skip the sufficiency/necessity/random/resample checks.")
@click.option(
    "--workers",
    type=count(1, 256),
    default=None,
    help="Threads scoring candidate circuits side by side, each on its own copy of the model  "
    "[default: torch's CPU thread count; 1 on a GPU]. Results do not depend on it.",
)
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
    loss_convention,
    prompts_file,
    steps,
    budget,
    k_coef,
    lr,
    batch_pairs,
    train_pairs,
    eval_pairs,
    holdout_pairs,
    mean_windows,
    no_calibrate,
    min_raw_accuracy,
    tie_qk,
    no_cleanup,
    no_edges,
    edge_steps,
    edge_k_coef,
    edge_lr,
    no_validate,
    workers,
    seed,
    device,
    force,
    quiet,
) -> None:
    """Find the smallest circuit of a model for a task (learned node masks, mean ablation, bisection, greedy
    clean-up, then learned edge masks inside the node circuit)."""
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
        loss_convention=loss_convention,
        steps=steps,
        k_coef=k_coef,
        lr=lr,
        batch_pairs=batch_pairs,
        calibrate=not no_calibrate,
        min_raw_accuracy=min_raw_accuracy,
        tie_qk=tie_qk,
        cleanup=not no_cleanup,
        edges=not no_edges,
        edge_steps=edge_steps,
        edge_k_coef=edge_k_coef,
        edge_lr=edge_lr,
        holdout_pairs=holdout_pairs,
        seed=seed,
    ).validate()
    natural = {t: load_natural(prompts_file, t) for t in tasks}  # a malformed file fails before any work
    session = PruneSession(
        model_dir, pick_device(device), mean_windows, progress=not quiet, data_dir=data_dir, workers=workers
    )
    rows = []
    for t in tasks:
        click.echo(f"pruning {t} ...", err=True)
        try:
            circuit = prune_one(
                session, t, cfg, budget, train_pairs, eval_pairs, not no_validate, natural=natural[t]
            )
        except UserError as e:
            if not many:
                raise
            click.echo(f"{t}: skipped: {e}", err=True)
            rows.append({"task": t, "reached": False, "reason": str(e)})
            continue
        write_circuit(paths[t], circuit)
        click.echo("\n".join(score_lines(circuit)))
        rows.append({**circuit_summary(circuit), "file": paths[t].name})
    if many:
        _write_summary(out, rows, target_loss, loss_convention)


def _check_prune_out(out: Path, paths: dict[str, Path], many: bool, force: bool) -> None:
    """Refuse, before any work, outputs that exist (without --force), are not ours, or cannot be written."""
    from sparsecircuits.io import check_output_file, check_output_files

    if not many:
        check_output_file(out, force, "--out circuit file")
        return
    if out.name.endswith(".json"):
        raise UserError(f"with several tasks --out is a directory, got the file name {out}")
    check_output_files(out, [p.name for p in paths.values()] + [SUMMARY_FILE], force, "prune")


def _write_summary(out: Path, rows: list[dict], target: float, convention: str) -> None:
    from sparsecircuits.io import atomic_write_json, mark_output_dir, output_kind

    if output_kind(out) in (None, "prune"):  # never re-mark another kind's folder (e.g. a run's)
        mark_output_dir(out, "prune")  # --force may later replace these circuit files and summary.json

    reached = [r for r in rows if r["reached"]]
    gm = geometric_mean([r["edges"] for r in reached])
    atomic_write_json(
        out / SUMMARY_FILE,
        {
            "target_loss": target,
            "loss_convention": convention,
            "tasks": rows,
            "geometric_mean_edges": gm,
            "tasks_reached": len(reached),
            "tasks_total": len(rows),
        },
    )
    head = f"{'task':24s} {'nodes':>6s} {'edges':>6s} {'val loss':>8s} {'suff raw':>8s} {'acc raw':>7s} {'nec raw':>7s}"
    click.echo("\n" + head + "  verdict (test split)")
    for r in rows:
        if r["reached"]:
            click.echo(
                f"{r['task']:24s} {r['nodes']:6d} {r['edges']:6d} {r['loss']:8.4f} "
                f"{_fmt(r['sufficiency_raw']):>8s} {_fmt(r['accuracy_raw']):>7s} "
                f"{_fmt(r['necessity_raw']):>7s}  {r['verdict'] or '-'}"
            )
        else:
            click.echo(f"{r['task']:24s} {'-':>6s} {'-':>6s}  not reached: {r['reason']}")
    click.echo(
        f"geometric mean of edges over {len(reached)}/{len(rows)} tasks that reached the target "
        f"{target:g} ({convention}): {gm:.1f}"
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
@PROMPTS_OPTION
@click.option("--no-write", is_flag=True, help="Print only; do not store the results in the circuit file.")
def validate_cmd(
    circuit_path, model_dir, data_dir, n_pairs, n_random, mean_windows, device, prompts_file, no_write
) -> None:
    """Check a circuit: sufficiency, necessity, a random baseline and a resample test (stored in the file)."""
    from sparsecircuits.circuits.circuit_file import check_pruned_from, read_circuit, write_circuit
    from sparsecircuits.circuits.session import validate_circuit

    circuit = read_circuit(circuit_path)
    if not no_write:
        from sparsecircuits.io import check_writable

        check_writable(circuit_path, "circuit file")  # the results are stored in it: check before the work
    run_dir = model_dir or Path(circuit["model"]["path"])
    session = PruneSession(run_dir, pick_device(device), mean_windows, data_dir=data_dir)
    check_pruned_from(circuit, session.model_info["content_hash"], str(circuit_path))
    natural = load_natural(prompts_file, circuit["task"]["name"])
    result = validate_circuit(session, circuit, n_pairs, n_random, natural)
    circuit["validation"] = result
    click.echo("\n".join(score_lines(circuit)))
    if not no_write:
        write_circuit(circuit_path, circuit)
