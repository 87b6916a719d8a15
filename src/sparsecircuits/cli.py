"""The `sparsecircuits` command. Each subcommand lives beside the code it drives; this file only wires them."""

from __future__ import annotations

import importlib
import sys

import click

from sparsecircuits import __version__
from sparsecircuits.errors import UserError

# (module, attribute) of each click command, imported lazily so `--help` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("sparsecircuits.data.commands", "data"),
    "train": ("sparsecircuits.train.commands", "train"),
    "sample": ("sparsecircuits.train.commands", "sample"),
    "tasks": ("sparsecircuits.tasks.commands", "tasks"),
    "eval": ("sparsecircuits.tasks.commands", "eval_cmd"),
    "prune": ("sparsecircuits.circuits.commands", "prune"),
    "validate": ("sparsecircuits.circuits.commands", "validate_cmd"),
    "describe": ("sparsecircuits.circuits.describe_commands", "describe"),
    "explain": ("sparsecircuits.circuits.describe_commands", "explain"),
    "view": ("sparsecircuits.viewer.commands", "view"),
    "demo": ("sparsecircuits.experiments.commands", "demo"),
    "frontier": ("sparsecircuits.experiments.commands", "frontier"),
    "import-openai": ("sparsecircuits.interop.commands", "import_openai"),
    "bridges": ("sparsecircuits.bridges.commands", "bridges"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparsecircuits")
def cli() -> None:
    """Train weight-sparse transformers on Python code and extract the circuits they use."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a UserError becomes one line on stderr and exit status 2."""
    try:
        # standalone_mode=False returns the exit code of --help and similar instead of exiting
        code = cli.main(args=argv, prog_name="sparsecircuits", standalone_mode=False)
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option value or name: one line, like a UserError
        click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
