"""The `sparsecircuits train` and `sparsecircuits sample` commands."""

from __future__ import annotations

from pathlib import Path

import click

PRESET_NAMES = ("tiny", "demo", "demo-gpu", "paper")  # train.config.PRESETS; listed here so --help stays fast


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path), help="Dataset directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default=None,
    help="Model and training preset [default: demo].",
)
@click.option("--dense", is_flag=True, help="Dense weights (train.l0_target=1); AbsTopK stays unless --set.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a field, e.g. --set model.d_model=256 --set train.lr=0.01 (repeatable).",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--force", is_flag=True, help="Delete an existing run in --out and start again.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help="Default: train.device."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data_dir, out, preset, dense, sets, resume, force, device, quiet) -> None:
    """Train a weight-sparse (or --dense) GPT on a dataset built by `data build`.

    Writes config.json, tokenizer.json, metrics.jsonl, checkpoints/ and finally model.safetensors to
    --out. Run under `torchrun --nproc_per_node N` for data-parallel training."""
    from sparsecircuits.train.trainer import train as run_training

    run_training(data_dir, out, preset, dense, sets, resume, force, device, progress=not quiet)


@click.command()
@click.option("--model", "run_dir", required=True, type=click.Path(path_type=Path), help="Run directory.")
@click.option("--prompt", default="", help="Text to continue (default: start of a new file).")
@click.option("--max-new-tokens", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--temperature", default=0.8, show_default=True, type=click.FloatRange(min=0.0), help="0 = greedy."
)
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="Sample from the k likeliest tokens.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
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
