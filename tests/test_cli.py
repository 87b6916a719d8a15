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


def _all_commands():
    """Every leaf click command of the CLI, with its full name."""
    import importlib

    import click

    for name, (module, attr) in sorted(COMMANDS.items()):
        command = getattr(importlib.import_module(module), attr)
        subs = command.commands.items() if isinstance(command, click.Group) else [("", command)]
        for sub, leaf in subs:
            yield f"{name} {sub}".strip(), leaf


def test_shared_options_come_from_one_module():
    """--device, --seed and --preset of every command are the cli_options ones (one type, one range, one
    registry), and every --force/--quiet is a flag."""
    from sparsecircuits.cli_options import MAX_SEED, DeviceType, LazyChoice
    from sparsecircuits.train.config import PRESETS

    seen = set()
    for name, command in _all_commands():
        for p in command.params:
            if p.name == "device":
                assert isinstance(p.type, DeviceType), name
            elif p.name == "seed":
                assert (p.type.min, p.type.max) == (0, MAX_SEED), name
            elif p.name == "preset":
                assert isinstance(p.type, LazyChoice) and p.type.choices == tuple(PRESETS), name
            elif p.name in ("force", "quiet"):
                assert p.is_flag, name
            else:
                continue
            seen.add(p.name)
    assert seen == {"device", "seed", "preset", "force", "quiet"}


def test_one_device_resolver_checks_the_cuda_index(monkeypatch):
    import torch

    from sparsecircuits.errors import UserError
    from sparsecircuits.train.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="only 1 CUDA device"):
        resolve_device("cuda:3")
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")
