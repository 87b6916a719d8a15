"""Every command answers --help, and user mistakes give one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sparsecircuits.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "Usage:" in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsecircuits", *args], capture_output=True, text=True)


def test_user_errors_are_one_line_without_traceback(tmp_path):
    cases = [
        (
            "prune",
            "--model",
            str(tmp_path / "missing"),
            "--task",
            "single_double_quote",
            "--out",
            str(tmp_path / "c.json"),
        ),
        ("prune", "--model", str(tmp_path), "--task", "no_such_task", "--out", str(tmp_path / "c.json")),
        ("validate", "--circuit", str(tmp_path / "missing.circuit.json")),
        ("eval", "--model", str(tmp_path / "missing")),
        ("tasks", "show", "no_such_task"),
    ]
    for args in cases:
        r = _run(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert "Traceback" not in r.stderr
