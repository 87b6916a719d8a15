"""`sparsecircuits bridges train` and `sparsecircuits bridges steer` (docs/bridges.md)."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import (
    data_option,
    device_option,
    force_option,
    preset_option,
    quiet_option,
    seed_option,
    shown_option,
)
from sparsecircuits.errors import UserError
from sparsecircuits.tasks.base import SPLITS

MAX_PAIRS = 65_536
MAX_STRENGTHS = 1000


@click.group()
def bridges() -> None:
    """Tie a weight-sparse model to an existing dense model, and steer the dense model through the bridges."""


@bridges.command("train")
@click.option("--dense", "dense_dir", type=click.Path(path_type=Path), help="Frozen dense run to bridge to.")
@data_option()
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Bridged run directory to create."
)
@preset_option("Sparse model preset [default: demo].")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override model.*, train.* or bridge.* (afrac, coef_lm, coef_nmse, coef_kl_ds, coef_kl_sd).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@force_option("Replace the bridged run this project wrote in --out (your other files there stay).")
@device_option(default=None, help="auto, cpu, cuda or cuda:N [default: train.device].")
@quiet_option("No progress bar.")
@click.option(
    "--init",
    type=click.Path(path_type=Path),
    default=None,
    help="Start the sparse model from this trained sparse run (same model config), at its L0 from step 0.",
)
def train_cmd(dense_dir, data_dir, out, preset, sets, resume, force, device, quiet, init) -> None:
    """Train a sparse model jointly with bridges to a frozen dense model.

    Loss: LM + NMSE (both directions) + KL d->s + KL s->d, summed over the 2 * n_layer sites before each
    attention and MLP. --out becomes a normal run directory of the sparse model plus bridges.json and
    bridges.safetensors. The sparse model takes the dense model's n_layer."""
    from sparsecircuits.bridges.train import train_bridges
    from sparsecircuits.train.distributed import resolve_device

    if device is not None:
        resolve_device(device)  # an absent GPU is refused before the run folder is made
    train_bridges(
        dense_dir, data_dir, out, preset, sets, resume, force, device, progress=not quiet, init=init
    )


def _strengths(text: str) -> list[float]:
    try:
        values = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--strengths expects comma-separated numbers, got {text!r}") from None
    if not values or len(values) > MAX_STRENGTHS or any(not 0.0 <= v <= 1.0 for v in values):
        raise UserError(f"--strengths must be numbers in [0, 1], got {text!r}")
    return values


@bridges.command("steer")
@click.option("--bridged", "run_dir", required=True, type=click.Path(path_type=Path), help="Bridged run.")
@click.option(
    "--node",
    default=None,
    help="Residual-read node of the sparse model, e.g. 1.attn.act_in.17; a location such as 1.attn.act_in "
    "takes its channel with the largest delta on the task (chosen on another split).",
)
@click.option(
    "--circuit",
    "circuit_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Take the node from this circuit file (its residual read with the largest delta on the task).",
)
@click.option("--task", default=None, help="Task whose prompt pairs to use (default: the circuit's task).")
@click.option("--strengths", default=",".join(f"{0.1 * i:.1f}" for i in range(11)), show_default=True)
@click.option("--n-pairs", default=32, show_default=True, type=click.IntRange(1, MAX_PAIRS))
@click.option("--split", default="val", show_default=True, type=click.Choice(SPLITS))
@seed_option(help="Task sampling and random baseline.")
@shown_option(
    "--rms-ratio",
    "none",
    click.Choice(["none", "dense-over-sparse"]),
    "Extra factor rms_dense/rms_sparse on the edit (the decoder already maps pre-norm scales).",
)
@click.option(
    "--dense", "dense_dir", default=None, type=click.Path(path_type=Path), help="Dense run (moved)."
)
@click.option(
    "--json", "json_path", default=None, type=click.Path(path_type=Path), help="Write results here."
)
@click.option("--plot", "plot_path", default=None, type=click.Path(path_type=Path), help="Write a PNG plot.")
@force_option("Overwrite existing --json and --plot files.")
@device_option(default="cpu")
def steer_cmd(
    run_dir,
    node,
    circuit_path,
    task,
    strengths,
    n_pairs,
    split,
    seed,
    rms_ratio,
    dense_dir,
    json_path,
    plot_path,
    force,
    device,
) -> None:
    """Steer the dense model with one sparse residual-read node through its bridge (PAPER.md 11.4, Fig 9).

    Prints the dense model's mean P(target) against strength, with a same-norm random direction and no
    steering as baselines."""
    from sparsecircuits.bridges.steer import run_steer
    from sparsecircuits.io import check_output_file

    values = _strengths(strengths)
    for path, what in ((json_path, "--json file"), (plot_path, "--plot file")):
        if path is not None:
            check_output_file(path, force, what)
    result = run_steer(
        run_dir,
        node,
        circuit_path,
        task,
        values,
        n_pairs,
        split,
        seed,
        rms_ratio,
        dense_dir,
        device,
    )
    data = result.to_json()
    m = data["p_target_mean"]
    click.echo(f"{data['task']}: node {data['node']} -> dense site {data['site']}, {data['n_cases']} cases")
    click.echo(
        f"no steering {m['none']:.4f}; dense on the counterfactual prompt {m['dense_on_counterfactual']:.4f}"
    )
    click.echo("strength  steer    random   all-channels  sparse-steer")
    rows = zip(data["strengths"], m["steer"], m["random"], m["all_channels"], m["sparse_steer"], strict=True)
    for s, a, b, c, d in rows:
        click.echo(f"{s:8.2f}  {a:.4f}   {b:.4f}   {c:.4f}        {d:.4f}")
    if json_path is not None:
        from sparsecircuits.io import atomic_write_json

        atomic_write_json(json_path, data)
    if plot_path is not None:
        from sparsecircuits.bridges.steer import plot_steering

        plot_steering(result, plot_path, f"{data['task']}: {data['node']}")
