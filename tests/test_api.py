"""The notebook API: the walkthrough of docs/api.md runs as written (on a tiny model), and the pieces agree
with the commands' code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import sparsecircuits as sc
from sparsecircuits.errors import UserError
from test_viewer import make_fixture

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return make_fixture(tmp_path_factory.mktemp("api"))


def walkthrough() -> str:
    return re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)


@pytest.mark.slow
def test_the_walkthrough_runs(tiny, tmp_path, monkeypatch, capsys):
    code = walkthrough()
    assert code.count("\n") <= 30
    code = re.sub(r"^RUN = .*$", f"RUN = {str(tiny['run'])!r}", code, flags=re.M)
    code = re.sub(r"^TARGET = .*$", "TARGET = 5.0  # a random tiny model: any circuit", code, flags=re.M)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "Circuit('single_double_quote'" in out and "verdict:" in out
    assert sc.load_circuit(tmp_path / "quote.circuit.json").task == "single_double_quote"


def test_apply_equals_the_circuit_forward_and_leaves_the_model_unchanged(tiny):
    from sparsecircuits.circuits.masks import NodeMask
    from sparsecircuits.circuits.scoring import gated_diff

    run = sc.load_run(tiny["run"])
    circuit = sc.load_circuit(tiny["circuit"])
    prompts = sc.task_prompts(run, "single_double_quote", n_pairs=4)
    means = sc.mean_activations(run)
    widths = {loc: run.model.location_width(loc) for loc in run.model.node_locations()}
    with torch.no_grad():
        plain = run.model(prompts.tokens)
        expected = gated_diff(run.model, NodeMask(widths, means), circuit.gates(run.model), prompts)
        with circuit.apply(run, means) as model:
            logits = model(prompts.tokens)
        assert torch.equal(run.model(prompts.tokens), plain)  # hooks gone after the block
    rows = torch.arange(len(prompts))
    at_last = logits[rows, prompts.last]
    assert torch.allclose(at_last[rows, prompts.correct] - at_last[rows, prompts.wrong], expected)
    acts = sc.run_with_cache(run, prompts.tokens, ["0.attn.q"])["0.attn.q"]
    assert acts.shape == (len(prompts), prompts.tokens.shape[1], run.model.location_width("0.attn.q"))


def test_api_errors_are_one_line(tiny):
    with pytest.raises(UserError, match="unknown pruning option"):
        sc.prune(tiny["run"], "single_double_quote", 5.0, stepz=3)
    with pytest.raises(AttributeError):
        sc.no_such_name  # noqa: B018
    assert "prune" in dir(sc)
