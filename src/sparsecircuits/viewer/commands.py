"""`sparsecircuits view`: browse runs, tasks and circuits in a local web app, or export one circuit."""

from __future__ import annotations

from pathlib import Path

import click

from sparsecircuits.cli_options import NON_NEGATIVE, force_option, shown_option
from sparsecircuits.errors import UserError


@click.command("view")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow a --host beyond loopback (reachable from other machines; the Host header is then not checked).",
)
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free)."
)
@shown_option(
    "--windows",
    64,
    click.IntRange(1, 4096),
    "Validation windows (of n_ctx tokens) scanned for a node's corpus snippets.",
)
@click.option(
    "--export",
    "export_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Export this circuit file instead of serving (needs --out).",
)
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), help="Export target: FILE.html or FILE.svg."
)
@click.option(
    "--max-edges", default=2000, show_default=True, type=click.IntRange(1), help="SVG export: edges drawn."
)
@shown_option("--min-weight", 0.0, NON_NEGATIVE, "SVG export: smallest |weight| drawn.")
@force_option("Export: overwrite an existing --out file.")
@click.option("--verbose", is_flag=True, help="Log every request.")
def view(
    paths: tuple[Path, ...],
    host: str,
    allow_remote: bool,
    port: int,
    windows: int,
    export_path: Path | None,
    out: Path | None,
    max_edges: int,
    min_weight: float,
    force: bool,
    verbose: bool,
) -> None:
    """Start a local, read-only web app for runs, tasks and circuits under PATHS (default: runs/).

    PATHS may be run directories, circuit files (*.circuit.json) or directories holding them. Only
    entries under PATHS are shown; a circuit file also opens the run it was pruned from. Fully
    offline: no CDN, nothing fetched. With --export FILE.circuit.json --out FILE.html|FILE.svg it
    writes a self-contained page or a picture of the circuit and exits.
    """
    if export_path is not None or out is not None:
        _export(export_path, out, min_weight, max_edges, force)
        return
    _serve(list(paths) or [Path("runs")], host, port, windows, verbose, allow_remote)


def _export(circuit: Path | None, out: Path | None, min_weight: float, max_edges: int, force: bool) -> None:
    from sparsecircuits.io import check_output_file
    from sparsecircuits.viewer.export import export_file

    if circuit is None or out is None:
        raise UserError("--export and --out go together: --export FILE.circuit.json --out FILE.html|FILE.svg")
    if out.suffix.lower() not in (".html", ".htm", ".svg"):
        raise UserError(f"--out must end in .html or .svg, got {out.name}")
    check_output_file(out, force, "--out file")
    written = export_file(circuit, out, min_weight, max_edges)
    click.echo(f"wrote {written}")


def _serve(paths: list[Path], host: str, port: int, windows: int, verbose: bool, allow_remote: bool) -> None:
    from sparsecircuits.viewer.server import make_server

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        hint = (
            " (train a model first, or give run directories / circuit files)" if missing == ["runs"] else ""
        )
        raise UserError(f"path not found: {', '.join(missing)}{hint}")
    try:
        server = make_server(paths, host, port, windows, verbose, allow_remote)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    catalog = server.app.catalog
    click.echo(
        f"{len(catalog.runs)} run(s), {len(catalog.circuits)} circuit file(s) under {', '.join(map(str, paths))}"
    )
    if not server.is_loopback():
        click.echo(
            f"warning: listening on {host} (--allow-remote): reachable from other machines, read-only, "
            "any Host header accepted",
            err=True,
        )
    click.echo(f"sparsecircuits viewer at {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()
