"""Run the `sparsecircuits` CLI in-process and return its exit status (the CLI always ends in SystemExit)."""

from __future__ import annotations

import pytest

from sparsecircuits import cli


def run_cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        cli.main(list(args))
    return e.value.code
