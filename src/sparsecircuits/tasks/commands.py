"""`sparsecircuits tasks list|show|mine|stress` and `sparsecircuits eval`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sparsecircuits.cli_options import (
    count,
    device_option,
    force_option,
    loss_convention_option,
    quiet_option,
    seed_option,
    shown_option,
)
from sparsecircuits.tasks.base import SPLITS
from sparsecircuits.tasks.registry import all_tasks, get_task

MARK = "⟨?⟩"
MAX_SHOW = 1000  # pairs printed by `tasks show`
MAX_EVAL_PAIRS = 65_536  # pairs per task for `eval` (far above what a pool holds distinct)
MAX_VAL_BATCHES = 100_000
MINE_MAX_PER_TASK, MINE_MAX_FILES = 200, 5000  # tasks.mine's defaults (not imported: it pulls in torch)


def _shown(s: str) -> str:
    """A completion string as printed: repr, so whitespace and newlines are visible."""
    return repr(s)


@click.group("tasks")
def tasks() -> None:
    """Browse the 20 Python next-token tasks."""


@tasks.command("list")
def list_tasks() -> None:
    """List the tasks with their cue and candidate completions."""
    for t in all_tasks():
        cands = ", ".join(_shown(c) for c in t.candidates[:4]) + (", ..." if len(t.candidates) > 4 else "")
        click.echo(f"{t.name:28s} {t.description}")
        click.echo(f"{'':28s}   cue: {t.cue}; candidates: {cands}")


@tasks.command("show")
@click.argument("name")
@click.option("--n", "n", default=3, show_default=True, type=count(1, MAX_SHOW), help="Number of pairs.")
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True)
@seed_option()
def show(name: str, n: int, split: str, seed: int) -> None:
    """Print example pairs of task NAME, the predicted position marked ⟨?⟩."""
    task = get_task(name)
    click.echo(f"{task.name}: {task.description}\ncue: {task.cue}\n")
    for i, pair in enumerate(task.pairs(n, split, seed)):
        for sign, p in (("+", pair.pos), ("-", pair.neg)):
            click.echo(f"--- pair {i} {sign}  correct {_shown(p.correct)}  wrong {_shown(p.wrong)}")
            click.echo(p.text + MARK)
        click.echo()


@tasks.command("mine")
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder or .py file to mine (repeatable) [default: this interpreter's site-packages].",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="JSONL file to write.")
@click.option(
    "--task", "task_names", multiple=True, help="Task name (repeatable); default every minable task."
)
@shown_option("--max-per-task", MINE_MAX_PER_TASK, count(1, 1_000_000), "Instances per task.")
@click.option(
    "--max-files", default=MINE_MAX_FILES, show_default=True, type=count(1), help="Files read at most."
)
@click.option(
    "--workers",
    type=count(1, 64),
    default=None,
    help="Processes parsing files side by side [default: the CPU count, at most 4]. Results do not depend "
    "on it.",
)
@force_option("Overwrite an existing --out file.")
@quiet_option()
def mine_cmd(sources, out, task_names, max_per_task, max_files, workers, force, quiet) -> None:
    """Find natural instances of the tasks in real Python files (see docs/tasks.md)."""
    from collections import Counter

    from sparsecircuits.data.corpus import CorpusStats
    from sparsecircuits.errors import UserError
    from sparsecircuits.io import check_output_file
    from sparsecircuits.tasks import mine

    check_output_file(out, force, "--out file")
    sources = list(sources) or mine.default_natural_sources()
    stats = CorpusStats()
    workers = workers or min(4, os.cpu_count() or 1)
    names = list(task_names) or None
    records = mine.mine(sources, names, max_per_task, max_files, not quiet, stats=stats, workers=workers)
    if not records:
        raise UserError(f"no natural instances found in {', '.join(map(str, sources))}")
    mine.write_mined(out, records)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items())) or "none"
    click.echo(f"read {stats.files_kept} of {stats.files_seen} files (skipped: {skipped})")
    for name, recs in mine.group_by_task(records).items():
        sides = ", ".join(f"{_shown(c)} {n}" for c, n in Counter(r["correct"] for r in recs).items())
        click.echo(f"{name:28s} {len(recs):5d}  ({sides})")
    click.echo(f"wrote {len(records)} instances to {out}")


def _pretrain_loss(run, val_batches: int) -> tuple[float | None, str]:
    """(validation loss, note) of the run's model on its pretraining data, or (None, why not)."""
    from sparsecircuits.train.evaluate import validation_loss

    data_dir = (run.config.get("data") or {}).get("dir")
    if not data_dir or not Path(data_dir).is_dir():
        return None, f"pretraining data dir not found ({data_dir}); skipped"
    return validation_loss(run.model, data_dir, n_batches=val_batches), str(data_dir)


def _table(rows: list[dict]) -> str:
    lines = [f"{'task':28s} {'loss':>8s} {'acc':>7s} {'logit diff':>11s}"]
    for r in rows:
        lines.append(f"{r['task']:28s} {r['loss']:8.4f} {r['acc']:7.3f} {r['logit_diff']:11.3f}")
    return "\n".join(lines)


def _mined_prompts(path: Path, task_names: tuple[str, ...]) -> dict[str, list[dict]]:
    """The records of a `tasks mine` file by task, only the --task ones (each must be in the file) if given."""
    from sparsecircuits.errors import UserError
    from sparsecircuits.tasks.mine import read_mined

    mined = read_mined(path)
    names = list(dict.fromkeys(get_task(n).name for n in task_names)) or list(mined)
    missing = [n for n in names if n not in mined]
    if missing:
        raise UserError(f"{path} has no prompts for task {missing[0]}; it has {', '.join(mined)}")
    return {n: mined[n] for n in names}


def _eval_mined(run, mined: dict[str, list[dict]], convention: str) -> list[dict]:
    """Task metrics of the run's model on each task's mined prompts (tasks.mine.evaluate_mined)."""
    from tqdm import tqdm

    from sparsecircuits.tasks.mine import evaluate_mined

    items = tqdm(mined.items(), desc="tasks", file=sys.stderr, disable=len(mined) < 2)
    return [
        evaluate_mined(run.model, run.tokenizer, name, recs, convention=convention) for name, recs in items
    ]


@click.command("eval")
@click.option("--model", "run_path", required=True, type=click.Path(), help="Run directory.")
@click.option("--task", "task_names", multiple=True, help="Task name (repeatable); default all 20.")
@shown_option("--n-pairs", 256, count(1, MAX_EVAL_PAIRS), "Pairs per task (2 prompts each).")
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True)
@seed_option()
@shown_option("--val-batches", 20, count(1, MAX_VAL_BATCHES), "Batches for the pretraining val loss.")
@device_option()
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write the results here.")
@force_option("Overwrite an existing --json file.")
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Score natural prompts from a `tasks mine` JSONL file instead of generated pairs.",
)
@loss_convention_option()
def eval_cmd(
    run_path,
    task_names,
    n_pairs,
    split,
    seed,
    val_batches,
    device,
    json_path,
    force,
    prompts_path,
    loss_convention,
) -> None:
    """Task loss, accuracy and logit difference on every task, plus the pretraining validation loss.

    Task loss is the binary cross-entropy of correct vs wrong token; by default summed over the two prompts of
    a pair as in the paper authors' code (--loss-convention pair-sum; chance 1.386), or per prompt (mean).
    """
    from tqdm import tqdm

    from sparsecircuits.io import atomic_write_json, check_output_file
    from sparsecircuits.run import load_run
    from sparsecircuits.tasks.evaluate import evaluate_task
    from sparsecircuits.train.distributed import resolve_device

    selected = [get_task(name) for name in task_names] or all_tasks()
    mined = _mined_prompts(prompts_path, task_names) if prompts_path else None
    if json_path:
        check_output_file(json_path, force, "--json file")
    run = load_run(run_path, device=resolve_device(device))
    if mined is not None:
        rows = _eval_mined(run, mined, loss_convention)
        click.echo(f"natural prompts from {prompts_path} ({sum(r['n'] for r in rows)} prompts)")
    else:
        rows = []
        for task in tqdm(selected, desc="tasks", file=sys.stderr, disable=len(selected) < 2):
            rows.append(
                evaluate_task(
                    run.model,
                    run.tokenizer,
                    task,
                    n_pairs=n_pairs,
                    split=split,
                    seed=seed,
                    convention=loss_convention,
                )
            )
    pretrain, note = _pretrain_loss(run, val_batches)
    click.echo(_table(rows))
    mean = sum(r["loss"] for r in rows) / len(rows)
    click.echo(f"{'mean':28s} {mean:8.4f}")
    if pretrain is None:
        click.echo(f"pretraining val loss: n/a ({note})")
    else:
        click.echo(f"pretraining val loss: {pretrain:.4f} ({note})")
    if json_path:
        atomic_write_json(
            json_path,
            {
                "model": str(run.path),
                "prompts": None if prompts_path is None else str(prompts_path),
                "split": split,
                "n_pairs": n_pairs,
                "seed": seed,
                "loss_convention": loss_convention,
                "pretrain_val_loss": pretrain,
                "tasks": {r["task"]: r for r in rows},
            },
        )


# ---- tasks stress (tasks/stress.py) ---------------------------------------------------------------------------


def _stress_table(name: str, rows: list[dict]) -> str:
    answers = list(rows[0]["acc_by_answer"])
    labels = ["acc " + a.replace("\n", "\\n") for a in answers]  # a line end shown as \n
    head = f"{'model':10s} {'level':>5s} {'loss':>8s} {'acc':>7s} " + " ".join(f"{x:>10s}" for x in labels)
    lines = [head + f" {'flipped':>8s}"]
    for r in rows:
        accs = " ".join(f"{r['acc_by_answer'][a]:10.3f}" for a in answers)
        lines.append(
            f"{name:10s} {r['level']:5d} {r['loss']:8.4f} {r['acc']:7.3f} {accs} {r['flipped']:8.3f}"
        )
    return "\n".join(lines)


@tasks.command("stress")
@click.option(
    "--model", "run_paths", required=True, multiple=True, type=click.Path(), help="Run (repeatable)."
)
@click.option("--task", "task_name", required=True, help="Task: bracket_counting or single_double_quote.")
@click.option(
    "--kind", required=True, help="Stress kind: dilute, distract (brackets); distract, same (quotes)."
)
@click.option("--levels", default="0,1,2,4,8", show_default=True, help="Comma-separated levels (0 = normal).")
@shown_option("--n-pairs", 128, count(1, MAX_EVAL_PAIRS), "Pairs per level (2 prompts each).")
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True)
@seed_option()
@device_option()
@click.option("--json", "json_path", type=click.Path(), default=None, help="Also write the results here.")
@force_option("Overwrite an existing --json file.")
@loss_convention_option()
def stress_cmd(
    run_paths, task_name, kind, levels, n_pairs, split, seed, device, json_path, force, loss_convention
) -> None:
    """Task loss and accuracy on stressed prompts (a distractor, a diluted list) per level (tasks/stress.py).

    Level 0 is the normal prompts. acc 'X' is the accuracy on prompts whose answer is X; flipped is the
    fraction of prompts right at level 0 and wrong at this level.
    """
    from sparsecircuits.io import atomic_write_json, check_output_file
    from sparsecircuits.run import load_run
    from sparsecircuits.tasks.stress import evaluate_stress, get_kind, parse_levels
    from sparsecircuits.train.distributed import resolve_device

    stress, level_list = get_kind(task_name, kind), parse_levels(levels)
    if json_path:
        check_output_file(json_path, force, "--json file")
    click.echo(f"{stress.task} / {stress.name}: predicted {stress.prediction}")
    results = {}
    for path in run_paths:
        run = load_run(path, device=resolve_device(device))
        rows = evaluate_stress(
            run.model,
            run.tokenizer,
            stress.task,
            stress.name,
            level_list,
            n_pairs,
            split,
            seed,
            loss_convention,
        )
        click.echo(_stress_table(Path(path).name, rows))
        results[str(run.path)] = rows
    if json_path:
        atomic_write_json(
            json_path,
            {
                "task": stress.task,
                "kind": stress.name,
                "prediction": stress.prediction,
                "levels": level_list,
                "n_pairs": n_pairs,
                "split": split,
                "seed": seed,
                "loss_convention": loss_convention,
                "models": results,
            },
        )
