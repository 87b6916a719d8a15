"""`sparsecircuits describe` (node labels from data, stored in the circuit file) and `sparsecircuits explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sparsecircuits.cli_options import (
    count,
    data_option,
    device_option,
    force_option,
    quiet_option,
    shown_option,
)
from sparsecircuits.errors import UserError

MAX_WINDOWS = 100_000
MAX_PAIRS = 65_536


def _open_run(circuit: dict[str, Any], circuit_path: Path, model_dir: Path | None, device: str):
    """The circuit's run (recorded path unless --model), checked to be the model it was pruned from."""
    from sparsecircuits.circuits.circuit_file import check_pruned_from
    from sparsecircuits.circuits.means import model_content_hash
    from sparsecircuits.circuits.session import pick_device
    from sparsecircuits.run import load_run

    run_dir = model_dir or Path(str((circuit.get("model") or {}).get("path") or ""))
    if not str(run_dir) or not run_dir.is_dir():
        raise UserError(f"model directory not found: {run_dir or '(none recorded)'} (pass --model DIR)")
    run = load_run(run_dir, pick_device(device))
    if circuit["model"].get("content_hash"):  # a circuit recording no hash is described as it is
        check_pruned_from(circuit, model_content_hash(run.model), f"{circuit_path} (model {run_dir})")
    return run


def _task_prompts(run, circuit: dict[str, Any], n_pairs: int):
    """The task's validation prompts (seed of the pruning) as a PromptSet on the model's device, and the seed."""
    from sparsecircuits.circuits.session import task_prompts

    hyper = (circuit.get("pruning") or {}).get("hyperparameters") or {}
    seed = int(hyper.get("seed", 0))
    return task_prompts(run, circuit["task"]["name"], n_pairs, "val", seed), seed


@click.command(name="describe")
@click.option(
    "--circuit", "circuit_path", required=True, type=click.Path(path_type=Path), help="Circuit file."
)
@click.option(
    "--model", "model_dir", type=click.Path(path_type=Path), help="Run directory (default: as recorded)."
)
@data_option(required=False, help="Pretraining dataset (default: the one the model was trained on).")
@shown_option(
    "--windows",
    256,
    count(1, MAX_WINDOWS),
    "Pretraining windows (of n_ctx tokens, from val.bin) to find what each node fires on.",
)
@shown_option(
    "--pairs",
    64,
    count(1, MAX_PAIRS),
    "Task prompt pairs (validation split) for the prompt-kind means and attention.",
)
@click.option("--batch-size", default=32, show_default=True, type=count(1, 4096), help="Windows per forward.")
@click.option("--no-write", is_flag=True, help="Print the labels only; leave the circuit file as it is.")
@device_option()
@quiet_option()
def describe(circuit_path, model_dir, data_dir, windows, pairs, batch_size, no_write, device, quiet) -> None:
    """Describe every circuit node from data and store a label and the evidence in the circuit file."""
    from sparsecircuits.circuits.circuit_file import read_circuit, write_circuit
    from sparsecircuits.circuits.describe import add_descriptions, describe_nodes
    from sparsecircuits.circuits.session import pretraining_data

    circuit = read_circuit(circuit_path)
    if not no_write:
        from sparsecircuits.io import check_writable

        check_writable(circuit_path, "circuit file")  # before the work
    run = _open_run(circuit, circuit_path, model_dir, device)
    tokens = pretraining_data(run, data_dir).val_bin
    prompts, seed = _task_prompts(run, circuit, pairs)
    described = describe_nodes(
        run.model, run.tokenizer, circuit, tokens, prompts, windows, batch_size, progress=not quiet
    )
    meta = {
        "windows": windows,
        "data": str(tokens),
        "prompts": {"task": circuit["task"]["name"], "split": "val", "pairs": pairs, "seed": seed},
    }
    width = max(len(n) for n in described)
    for name, d in described.items():
        click.echo(f"{name:<{width}}  {d['label']}")
    if not no_write:
        write_circuit(circuit_path, add_descriptions(circuit, described, meta))
        click.echo(f"stored {len(described)} labels in {circuit_path}", err=True)


@click.command(name="explain")
@click.argument("circuit_path", metavar="CIRCUIT", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "md"]),
    help="text, or Markdown with an SVG drawing [default: md when --out ends in .md, else text].",
)
@click.option("--out", type=click.Path(path_type=Path), help="Write to this file instead of stdout.")
@shown_option(
    "--edges-per-node",
    8,
    count(0, 100_000),
    "Incoming edges listed per node, strongest first (the rest are counted).",
)
@click.option(
    "--max-edges", default=2000, show_default=True, type=count(0, 1_000_000), help="Edges drawn in the SVG."
)
@force_option("Overwrite an existing --out file.")
def explain(circuit_path, fmt, out, edges_per_node, max_edges, force) -> None:
    """Print a circuit as a person would write it: the mechanism, then its nodes and edges layer by layer."""
    from sparsecircuits.circuits.circuit_file import read_circuit
    from sparsecircuits.circuits.explain import explain_markdown, explain_text
    from sparsecircuits.io import atomic_write_text, check_output_file

    if fmt is None:
        fmt = "md" if out is not None and out.suffix.lower() == ".md" else "text"
    if out is not None:
        check_output_file(out, force, "--out file")
    circuit = read_circuit(circuit_path)
    if fmt == "md":
        text = explain_markdown(circuit, edges_per_node, max_edges)
    else:
        text = explain_text(circuit, edges_per_node)
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}", err=True)
