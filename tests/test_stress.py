"""tasks/stress.py and `sparsecircuits tasks stress`: stressed variants of a task's pairs, scored per level."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from cli_helpers import run_cli
from sparsecircuits.data.tokenizer import train_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.tasks import stress
from sparsecircuits.tasks.evaluate import candidate_logits, encode_pairs, task_metrics
from sparsecircuits.tasks.registry import all_tasks, get_task
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS
from test_tasks import TinyLM

KINDS = [(k.task, k.name) for k in stress.KINDS]


@pytest.mark.parametrize("task,kind", KINDS)
def test_stressed_prompts_only_insert_material_and_keep_answers(task, kind):
    normal = get_task(task).pairs(20, "val", 3)
    for level in (1, 5):
        stressed = stress.stressed_task_pairs(task, kind, level, 20, "val", 3)
        assert len(stressed) == len(normal)
        for pair, (pos, neg) in zip(normal, stressed):
            for base, s in ((pair.pos, pos), (pair.neg, neg)):
                assert s.base == base
                assert (s.prompt.correct, s.prompt.wrong) == (base.correct, base.wrong)
                assert s.inserted and s.prompt.text != base.text
                assert s.prompt.text[: s.at] + s.prompt.text[s.at + len(s.inserted) :] == base.text
                assert s.prompt.text[s.at : s.at + len(s.inserted)] == s.inserted


@pytest.mark.parametrize("task,kind", KINDS)
def test_level_zero_is_the_normal_prompts_and_levels_nest(task, kind):
    normal = get_task(task).pairs(10, "val", 0)
    zero = stress.stressed_task_pairs(task, kind, 0, 10)
    assert [(p.prompt, n.prompt) for p, n in zero] == [(pair.pos, pair.neg) for pair in normal]
    low, high = (stress.stressed_task_pairs(task, kind, lv, 10) for lv in (2, 6))
    for (a, _), (b, _) in zip(low, high):
        assert a.at == b.at and b.inserted.startswith(a.inserted) and len(b.inserted) > len(a.inserted)


def test_material_of_each_kind():
    (pos, neg), *_ = stress.stressed_task_pairs("bracket_counting", "dilute", 3, 4)
    assert pos.inserted == neg.inserted and pos.inserted.count(", ") == 3 and pos.at == len(pos.base.text)
    (pos, neg), *_ = stress.stressed_task_pairs("bracket_counting", "distract", 3, 4)
    assert pos.inserted == neg.inserted and pos.inserted.count("[") == 3 and pos.inserted.count("#") == 3
    assert pos.inserted.endswith("\n") and "]" not in pos.inserted
    for kind, flip in (("distract", True), ("same", False)):
        for p in (q for pair in stress.stressed_task_pairs("single_double_quote", kind, 2, 6) for q in pair):
            own = p.prompt.correct[0]
            want = {'"': "'", "'": '"'}[own] if flip else own
            other = ({'"', "'"} - {want}).pop()
            assert p.inserted.count("\n") == 2 and p.inserted.count(want) == 4 and other not in p.inserted


def test_bad_kinds_and_levels_are_user_errors():
    with pytest.raises(UserError, match="unknown task"):
        stress.get_kind("nope", "dilute")
    with pytest.raises(UserError, match="has no stress kinds"):
        stress.get_kind("for_while", "dilute")
    with pytest.raises(UserError, match="choose dilute or distract"):
        stress.get_kind("bracket_counting", "same")
    with pytest.raises(UserError, match="comma-separated"):
        stress.parse_levels("1,,2")
    with pytest.raises(UserError, match="out of range"):
        stress.parse_levels("-1")
    assert stress.parse_levels("8,2,2") == [0, 2, 8]


@pytest.fixture(scope="module")
def tok():
    texts = [p.text + p.correct + p.closing for t in all_tasks() for pair in t.pairs(6, "train") for p in
             (pair.pos, pair.neg)]  # fmt: skip
    return train_tokenizer(texts, vocab_size=700, required=REQUIRED_TOKENS)


def test_evaluate_stress_scores_each_level_and_drops_pairs_that_do_not_fit(tok):
    torch.manual_seed(0)
    model = TinyLM(tok.get_vocab_size()).eval()
    rows = stress.evaluate_stress(model, tok, "bracket_counting", "dilute", [0, 4], n_pairs=8)
    assert [r["level"] for r in rows] == [0, 4] and rows[0]["flipped"] == 0.0
    task = get_task("bracket_counting")
    for row in rows:
        pairs = [
            type(pair)(p.prompt, n.prompt)
            for pair, (p, n) in zip(
                task.pairs(8, "val"), stress.stressed_task_pairs(task.name, "dilute", row["level"], 8)
            )
        ]
        with torch.no_grad():
            expected = task_metrics(candidate_logits(model, encode_pairs(task, pairs, tok)))
        assert row["loss"] == pytest.approx(expected["loss"]) and row["acc"] == pytest.approx(expected["acc"])
        assert set(row["acc_by_answer"]) == {"]]\n", "]\n"}
    # A short context keeps only the pairs whose prompts fit at the highest level, or refuses.
    model.cfg = SimpleNamespace(n_ctx=70)
    rows = stress.evaluate_stress(model, tok, "bracket_counting", "dilute", [0, 4], n_pairs=4)
    assert rows[0]["n"] == 8
    model.cfg = SimpleNamespace(n_ctx=20)
    with pytest.raises(UserError, match="fit the model's context at level 4"):
        stress.evaluate_stress(model, tok, "bracket_counting", "dilute", [0, 4], n_pairs=4)


def test_stress_command_writes_json_for_each_model(tok, tmp_path, monkeypatch):
    from sparsecircuits import run as run_mod
    from sparsecircuits.tasks.commands import stress_cmd

    torch.manual_seed(0)
    models = {"a": TinyLM(tok.get_vocab_size()).eval(), "b": TinyLM(tok.get_vocab_size()).eval()}
    monkeypatch.setattr(
        run_mod,
        "load_run",
        lambda path, device="cpu": SimpleNamespace(path=path, tokenizer=tok, model=models[str(path)[-1]]),
    )
    out = tmp_path / "stress.json"
    args = ["--model", str(tmp_path / "a"), "--model", str(tmp_path / "b"), "--task", "single_double_quote"]
    args += ["--kind", "distract", "--levels", "2,1", "--n-pairs", "6", "--device", "cpu", "--json", str(out)]
    result = CliRunner().invoke(stress_cmd, args)
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["levels"] == [0, 1, 2] and (saved["task"], saved["kind"]) == (
        "single_double_quote",
        "distract",
    )
    assert list(saved["models"]) == [str(tmp_path / "a"), str(tmp_path / "b")]
    for name, rows in saved["models"].items():
        expected = stress.evaluate_stress(models[name[-1]], tok, "single_double_quote", "distract", [1, 2], 6)
        assert rows == json.loads(json.dumps(expected))
    assert "flipped" in result.output and result.output.count("\nb ") == 3
    result = CliRunner().invoke(stress_cmd, args)
    assert isinstance(result.exception, UserError) and "exists" in str(result.exception)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--task", "nope", "--kind", "dilute"], "unknown task 'nope'"),
        (["--task", "if_equals", "--kind", "dilute"], "has no stress kinds"),
        (["--task", "bracket_counting", "--kind", "x"], "unknown stress kind 'x'"),
        (["--task", "bracket_counting", "--kind", "dilute", "--levels", "a"], "comma-separated"),
        (["--task", "bracket_counting", "--kind", "dilute", "--levels", "9999"], "out of range"),
        (["--task", "bracket_counting", "--kind", "dilute", "--n-pairs", "0"], "--n-pairs"),
    ],
)
def test_stress_command_bad_inputs_are_one_line_errors(tmp_path, capsys, extra, message):
    assert run_cli(["tasks", "stress", "--model", str(tmp_path), *extra]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    if "--n-pairs" not in message:
        assert len(err.splitlines()) == 1


def test_fitting_pairs_keeps_the_first_pairs_that_fit_in_task_order():
    kind = stress.get_kind("bracket_counting", "dilute")
    assert stress.fitting_pairs(kind, 8, 10) == get_task("bracket_counting").pairs(10, "val")
    drawn = get_task("bracket_counting").pairs(stress.DRAW_FACTOR * 10, "val")
    limit = sorted(len(p.pos.text) for p in drawn)[len(drawn) // 2] + 30  # about half fit at level 8

    def fits(text: str) -> bool:
        return len(text) <= limit

    kept = stress.fitting_pairs(kind, 8, 10, fits=fits)
    assert len(kept) == 10 and kept != drawn[:10]
    assert [p for p in drawn if p in kept] == kept  # a subsequence, in Task.pairs order
    for p, n in stress.stress_pairs(kept, kind, 8):
        assert fits(p.prompt.text) and fits(n.prompt.text)
    with pytest.raises(UserError, match="only"):
        stress.fitting_pairs(kind, 8, 10, fits=lambda text: False)
