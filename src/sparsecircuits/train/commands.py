"""The `sparsecircuits train` and `sparsecircuits sample` commands."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import (
    POSITIVE,
    FiniteFloat,
    data_option,
    device_option,
    force_option,
    preset_option,
    quiet_option,
    seed_option,
)

MAX_NEW_TOKENS = 100_000


@click.command()
@data_option()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@preset_option()
@click.option("--dense", is_flag=True, help="Dense weights (train.l0_target=1); AbsTopK stays unless --set.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field, e.g. --set model.d_model=256 --set train.lr=0.01 (repeatable).",
)
@click.option(
    "--stop-at-loss",
    type=POSITIVE,
    default=None,
    help="Finish at the first evaluation with val loss <= this (--set train.stop_at_loss=X).",
)
@click.option(
    "--match-loss",
    type=click.Path(path_type=Path),
    default=None,
    metavar="RUN",
    help="Stop at the final val loss of the finished run RUN (a loss-matched partner).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@force_option("Replace the run this project wrote in --out (your other files there stay) and start again.")
@device_option(default=None, help="auto, cpu, cuda or cuda:N [default: train.device].")
@quiet_option("No progress bar.")
def train(data_dir, out, preset, dense, sets, stop_at_loss, match_loss, resume, force, device, quiet) -> None:
    """Train a weight-sparse (or --dense) GPT on a dataset built by `data build`.

    Writes config.json, tokenizer.json, metrics.jsonl, checkpoints/ and finally model.safetensors to
    --out. Run under `torchrun --nproc_per_node N` for data-parallel training."""
    from sparsecircuits.train.trainer import train as run_training

    sets = (*sets, *stop_override(stop_at_loss, match_loss, resume))
    run_training(data_dir, out, preset, dense, sets, resume, force, device, progress=not quiet)


def stop_override(stop_at_loss: float | None, match_loss: Path | None, resume: bool) -> tuple[str, ...]:
    """--stop-at-loss / --match-loss as the `--set train.stop_at_loss=X` they stand for (none when unset).

    The loss is written with repr, so a matched run stops at exactly the other run's recorded loss."""
    from sparsecircuits.errors import UserError
    from sparsecircuits.train.trainer import final_val_loss

    if stop_at_loss is None and match_loss is None:
        return ()
    if stop_at_loss is not None and match_loss is not None:
        raise UserError("--stop-at-loss and --match-loss contradict each other; pick one")
    if resume:
        raise UserError(
            "--resume keeps the run's own train.stop_at_loss; drop --stop-at-loss and --match-loss"
        )
    loss = final_val_loss(match_loss) if match_loss is not None else stop_at_loss
    return (f"train.stop_at_loss={loss!r}",)


@click.command()
@click.option("--model", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--prompt", default="", help="Text to continue (default: start of a new file).")
@click.option("--max-new-tokens", default=100, show_default=True, type=click.IntRange(1, MAX_NEW_TOKENS))
@click.option(
    "--temperature", default=0.8, show_default=True, type=FiniteFloat(0.0, 100.0), help="0 = greedy."
)
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="Sample from the k likeliest tokens.")
@seed_option()
@device_option(default="cpu")
def sample(run_dir, prompt, max_new_tokens, temperature, top_k, seed, device) -> None:
    """Generate Python code from a trained model."""
    import torch

    from sparsecircuits.data.tokenizer import EOT
    from sparsecircuits.run import load_run
    from sparsecircuits.train.distributed import resolve_device
    from sparsecircuits.train.sample import generate

    dev = resolve_device(device)
    run = load_run(run_dir, device=dev)
    eot = run.tokenizer.token_to_id(EOT)
    ids = run.tokenizer.encode(prompt, add_special_tokens=False).ids if prompt else []
    if not ids:
        ids = [eot] if eot is not None else [0]  # a document boundary: "start of a new file"
    idx = torch.tensor([ids], dtype=torch.long, device=dev)
    gen = torch.Generator().manual_seed(seed)
    out = generate(run.model, idx, max_new_tokens, temperature, top_k, gen, stop_token=eot)
    new = [t for t in out[0, len(ids) :].tolist() if t != eot]
    click.echo(prompt + run.tokenizer.decode(new, skip_special_tokens=True))
