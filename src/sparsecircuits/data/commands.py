"""The `sparsecircuits data` command group."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import (
    FRACTION,
    NON_NEGATIVE,
    force_option,
    quiet_option,
    seed_option,
    shown_option,
)


@click.group()
def data() -> None:
    """Build tokenized datasets of Python code."""


@data.command()
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Directory or .py file to read (repeatable). Default: the running Python's standard library.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output dataset directory.")
@shown_option(
    "--vocab-size",
    2048,
    click.IntRange(1, 2**16),
    "BPE vocabulary size (the paper's is 2048; at most 65536: shards hold uint16 ids).",
)
@shown_option(
    "--synthetic",
    0.0,
    NON_NEGATIVE,
    "Megabytes of generated simple-idiom Python to mix in.",
    dest="synthetic_mb",
)
@click.option(
    "--tokenizer",
    "tokenizer",
    default=None,
    type=click.Path(path_type=Path),
    help="Reuse this tokenizer.json (e.g. an imported model's) instead of training one.",
)
@click.option(
    "--val-fraction", default=0.02, show_default=True, type=FRACTION, help="Fraction of files for validation."
)
@click.option("--hf-dataset", default=None, help="A Hugging Face dataset name or local parquet/jsonl path.")
@click.option(
    "--column", "hf_column", default="content", show_default=True, help="Text column of --hf-dataset."
)
@seed_option(help="Seed of the synthetic generator.")
@click.option("--no-stdlib", is_flag=True, help="Do not read the standard library when no --source is given.")
@force_option("Replace a dataset this project wrote in --out (your other files there stay).")
@quiet_option()
def build(
    sources,
    out,
    vocab_size,
    synthetic_mb,
    val_fraction,
    hf_dataset,
    hf_column,
    seed,
    no_stdlib,
    tokenizer,
    force,
    quiet,
) -> None:
    """Walk the sources, train the tokenizer and write train.bin / val.bin / meta.json."""
    from sparsecircuits.data.build import BuildConfig, build_dataset
    from sparsecircuits.tasks.tokens import REQUIRED_TOKENS

    cfg = BuildConfig(
        out=out,
        sources=list(sources),
        no_stdlib=no_stdlib,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        val_fraction=val_fraction,
        synthetic_mb=synthetic_mb,
        seed=seed,
        hf_dataset=hf_dataset,
        hf_column=hf_column,
        required_tokens=REQUIRED_TOKENS,
        force=force,
        progress=not quiet,
    )
    meta = build_dataset(cfg)
    t = meta["tokens"]
    click.echo(
        f"wrote {out}: {meta['documents']['train']} + {meta['documents']['val']} documents, "
        f"{t['train']:,} train / {t['val']:,} val tokens, vocab {meta['vocab_size']}, "
        f"skipped {sum(meta['skipped'].values())} files, {meta['seconds']['total']:.1f} s"
    )
