"""`sparsecircuits demo` (and later `frontier`)."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import (
    POSITIVE,
    FiniteFloat,
    LazyChoice,
    count,
    device_option,
    force_option,
    loss_convention_option,
    preset_names,
    shown_option,
)


@click.command()
@click.option("--out", default=Path("runs/demo"), show_default=True, type=click.Path(path_type=Path))
@shown_option(
    "--synthetic", 40.0, FiniteFloat(0.0, 100_000.0), "MB of synthetic idioms.", dest="synthetic_mb"
)
@click.option(
    "--train",
    "train_here",
    is_flag=True,
    help="Train both models here instead of using the shipped ones (implied by --preset and by a GPU).",
)
@click.option(
    "--preset",
    type=LazyChoice(preset_names),
    default=None,
    help="Training preset (default: demo on CPU, demo-gpu where CUDA is present).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Training override for both models.")
@shown_option(
    "--max-tasks", 4, count(1), "Tasks to prune: the two required ones first, then the best learned."
)
@click.option(
    "--all-learned",
    is_flag=True,
    help="Prune the required tasks plus every task both models learn below the target loss (instead of "
    "--max-tasks; about 4 CPU minutes per circuit).",
)
@click.option("--target-loss", default=0.15, show_default=True, type=POSITIVE)
@loss_convention_option()
@click.option(
    "--no-natural", is_flag=True, help="Skip mining natural prompts from the installed third-party packages."
)
@click.option("--prune-steps", default=150, show_default=True, type=count(1, 1_000_000))
@device_option()
@force_option(
    "Remove what an earlier demo wrote in OUT and start again (default: resume finished stages); "
    "your other files there stay."
)
def demo(
    out,
    synthetic_mb,
    train_here,
    preset,
    sets,
    max_tasks,
    all_learned,
    target_loss,
    loss_convention,
    no_natural,
    prune_steps,
    device,
    force,
) -> None:
    """End to end on the embedded default: corpus, sparse and dense models, circuits, report.

    On a CPU the models are the ones shipped in artifacts/demo (trained once for longer than a demo can;
    hash-checked); `--train` trains both here in a few minutes instead. Where CUDA is present both are trained
    with the larger demo-gpu preset.
    """
    import torch

    from sparsecircuits.experiments import shipped
    from sparsecircuits.experiments.demo import DemoConfig, run_demo

    gpu = torch.cuda.is_available() and device != "cpu"
    train_here = train_here or preset is not None or bool(sets) or gpu or not shipped.available()
    if preset is None:
        preset = "demo-gpu" if gpu else "demo"
    cfg = DemoConfig(
        out=out,
        models="train" if train_here else "shipped",
        synthetic_mb=synthetic_mb,
        preset=preset,
        sets=tuple(sets),
        max_tasks=None if all_learned else max_tasks,
        target_loss=target_loss,
        loss_convention=loss_convention,
        natural=not no_natural,
        prune_steps=prune_steps,
        device=device,
        force=force,
    )
    run_demo(cfg)


@click.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(path_type=Path), help="Frontier JSON config."
)
@device_option()
@force_option("Remove what an earlier sweep wrote in its out folder and start again (default: resume).")
def frontier(config_path, device, force) -> None:
    """Sweep models x tasks: pretraining loss, circuit sizes, and the sparse-vs-dense plots (resumable)."""
    from sparsecircuits.experiments.frontier import FrontierConfig, run_frontier
    from sparsecircuits.io import prepare_output_dir
    from sparsecircuits.train.distributed import resolve_device

    cfg = FrontierConfig.load(config_path)
    cfg.device = device
    resolve_device(device)  # an absent GPU is refused before anything is written
    prepare_output_dir(cfg.out, "frontier", force)  # a user's folder (their own frontier.md) is refused
    summary = run_frontier(cfg)
    click.echo((cfg.out / "frontier.md").read_text())
    click.echo(
        f"wrote {cfg.out}/frontier.json, frontier.md, fig3_frontier.png"
        + (", fig2_loss_vs_edges.png" if (summary.get("matched_pair") or {}).get("shared_tasks") else "")
    )
