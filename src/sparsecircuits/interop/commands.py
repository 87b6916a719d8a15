"""`sparsecircuits import-openai`: convert a model released by the paper authors into a run directory."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import force_option


@click.command("import-openai")
@click.option(
    "--src",
    required=True,
    type=click.Path(path_type=Path),
    help="Authors' model directory (beeg_config.json, final_model.pt), e.g. models/csp_yolo1.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to write.")
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="Directory with vocab.bpe and encoder.json [default: SRC, or a tinypython/ folder in or above SRC].",
)
@force_option("Replace a run this project imported into --out (your other files there stay).")
def import_openai(src: Path, out: Path, tokenizer_dir: Path | None, force: bool) -> None:
    """Import one of the authors' released models (csp_yolo1, csp_yolo2, csp_sweep1_*) and their tokenizer.

    Nothing is downloaded: fetch the files yourself first (docs/import.md).
    """
    from sparsecircuits.interop.convert import import_openai as convert

    convert(src, out, tokenizer_dir, force, log=lambda s: click.echo(s, err=True))
    click.echo(f"imported {src} -> {out}")
