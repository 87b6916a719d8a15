"""The task suite: registry, generation, splits, tokenizer contract, task loss and the CLI."""

from __future__ import annotations

import ast
import json
import math

import pytest
import torch
from click.testing import CliRunner
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from torch import nn

from sparsecircuits.data.tokenizer import EOT, SPLIT_PATTERN, check_required, train_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.tasks import all_tasks, get_task, task_names
from sparsecircuits.tasks.evaluate import (
    candidate_logits,
    encode_task,
    evaluate_task,
    logit_diff_loss,
    task_metrics,
)
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS, check_tokenizer, pre_tokenize

PAPER_NAMES = [
    "single_double_quote",
    "final_kwarg",
    "set_or_string",
    "set_or_string_fixedvarname",
    "class_init",
    "with_as",
    "bracket_brace",
    "with_open",
    "bracket_counting",
    "for_while",
    "else_elif",
    "fstring_brace",
    "if_ternary",
    "var_swap",
    "indent_for",
    "lambda_func",
    "if_equals",
    "enumerate_range",
    "var_if",
    "while_return_true",
]
N = 60  # pairs per task in the generation tests


@pytest.fixture(scope="module")
def samples() -> dict[str, list]:
    """N validation pairs of every task."""
    return {t.name: t.pairs(N, "val") for t in all_tasks()}


def prompts(pairs):
    return [p for pair in pairs for p in (pair.pos, pair.neg)]


# ---- registry --------------------------------------------------------------------------------------------


def test_all_twenty_tasks_registered_in_paper_order():
    assert task_names() == PAPER_NAMES
    assert [get_task(n).name for n in PAPER_NAMES] == PAPER_NAMES
    assert all(t.description and t.cue and t.candidates for t in all_tasks())


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError) as e:
        get_task("no_such_task")
    msg = str(e.value)
    assert "no_such_task" in msg and all(n in msg for n in PAPER_NAMES) and "\n" not in msg


def test_unknown_split_is_a_user_error():
    with pytest.raises(UserError, match="split"):
        get_task("var_if").pairs(1, "dev")


# ---- generation --------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_seeded():
    for t in all_tasks():
        a, b = t.pairs(10, "val", seed=3), t.pairs(10, "val", seed=3)
        assert a == b
        assert len({(p.pos.text, p.neg.text) for p in a}) == 10  # distinct pairs
        assert t.pairs(10, "val", seed=4) != a


def test_splits_are_disjoint():
    for t in all_tasks():
        owner: dict[str, str] = {}
        for split, n in (("train", 150), ("val", 40), ("test", 40)):
            for seed in (0, 1):
                for p in prompts(t.pairs(n, split, seed)):
                    assert owner.setdefault(p.text, split) == split, (t.name, p.text)


def test_pairs_swap_candidates(samples):
    for name, pairs in samples.items():
        for pair in pairs:
            assert pair.pos.correct == pair.neg.wrong and pair.neg.correct == pair.pos.wrong, name
            assert pair.pos.correct != pair.pos.wrong, name
            assert {pair.pos.correct, pair.pos.wrong} <= set(get_task(name).candidates), name


def _cue_spans(a: str, b: str) -> tuple[str, str]:
    """The parts of a and b left after removing their longest common prefix and suffix."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    j = 0
    while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
        j += 1
    return a[i : len(a) - j], b[i : len(b) - j]


def test_pairs_differ_only_in_a_short_cue(samples):
    for name, pairs in samples.items():
        limit = get_task(name).max_cue_chars
        for pair in pairs:
            assert pair.pos.text != pair.neg.text
            for span in _cue_spans(pair.pos.text, pair.neg.text):
                assert len(span) <= limit and "\n" not in span, (name, span, pair)


def test_correct_completion_gives_valid_python(samples):
    """text + correct + the task's closing code parses; prompts look like real code."""
    for name, pairs in samples.items():
        for p in prompts(pairs):
            code = p.text + p.correct + p.closing
            try:
                ast.parse(code)
            except SyntaxError as e:  # pragma: no cover - the message shows the failing snippet
                pytest.fail(f"{name}: {e}\n{code}")


def test_prompts_vary(samples):
    for name, pairs in samples.items():
        texts = [p.pos.text for p in pairs]
        assert len(set(texts)) == len(texts), name
        assert len({t.count("\n") for t in texts}) >= 3, name  # different context lengths
        assert len({t.split("\n", 1)[0] for t in texts}) >= 5, name  # different first lines


def test_prompts_are_well_under_the_context(samples):
    for name, pairs in samples.items():
        for p in prompts(pairs):
            assert len(pre_tokenize(p.text)) <= 128, name


# ---- tokenizer contract ---------------------------------------------------------------------------------


def test_required_tokens_are_single_pre_tokens():
    assert check_required(REQUIRED_TOKENS) == list(REQUIRED_TOKENS)
    for t in all_tasks():
        assert set(t.candidates) <= set(REQUIRED_TOKENS)


def test_each_candidate_is_the_next_pre_token_of_every_prompt(samples):
    """Pre-tokenizing text + candidate gives text's pre-tokens and the candidate whole, for both
    candidates; and in the full program (correct candidate, then the rest of the code) the candidate is
    still the next pre-token, so the tokenizer produces exactly that token there in real text."""
    for name, pairs in samples.items():
        for p in prompts(pairs):
            base = pre_tokenize(p.text)
            for cand in (p.correct, p.wrong):
                assert pre_tokenize(p.text + cand) == base + [cand], (name, p.text[-40:], cand)
            full = pre_tokenize(p.text + p.correct + p.closing)
            assert full[: len(base) + 1] == base + [p.correct], (name, p.text[-40:], full[len(base)])


@pytest.fixture(scope="module")
def task_tokenizer() -> Tokenizer:
    """A small BPE with every required token forced in, trained on some task prompts."""
    texts = [p.text + p.correct + p.closing for t in all_tasks() for p in prompts(t.pairs(8, "train"))]
    return train_tokenizer(texts, vocab_size=700, required=REQUIRED_TOKENS)


def test_check_tokenizer_accepts_a_tokenizer_with_the_required_tokens(task_tokenizer):
    check_tokenizer(task_tokenizer)
    check_tokenizer(task_tokenizer, ["final_kwarg", get_task("with_as")])


def test_check_tokenizer_names_task_and_missing_token():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["hello world", "x = 1", "def f(a):\n    return a"] * 5, trainer=trainer)
    with pytest.raises(UserError) as e:
        check_tokenizer(tok, ["final_kwarg"])
    assert "final_kwarg" in str(e.value) and "'=None'" in str(e.value)


# ---- task loss -----------------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    """Embedding, causal cumulative mean over positions, linear readout: logits [B, T, V]."""

    def __init__(self, vocab: int, d: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor, at: torch.Tensor | None = None) -> torch.Tensor:
        h = self.emb(tokens).cumsum(1) / torch.arange(1, tokens.shape[1] + 1).view(1, -1, 1)
        logits = self.out(h)
        return logits if at is None else logits[torch.arange(len(at)), at]


def test_encode_task_layout(task_tokenizer):
    batch = encode_task("bracket_counting", task_tokenizer, n_pairs=5, split="val")
    pairs = get_task("bracket_counting").pairs(5, "val")
    eot = task_tokenizer.token_to_id(EOT)
    assert batch.tokens.shape[0] == len(batch) == 10
    assert batch.pair.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert (batch.tokens[:, 0] == eot).all()
    for i, p in enumerate(prompts(pairs)):
        ids = task_tokenizer.encode(p.text, add_special_tokens=False).ids
        assert batch.last[i] == len(ids)  # the EOT prefix shifts by one
        assert batch.tokens[i, 1 : len(ids) + 1].tolist() == ids
        assert task_tokenizer.decode([int(batch.correct[i])]) == p.correct
        assert task_tokenizer.decode([int(batch.wrong[i])]) == p.wrong
    assert (batch.correct[0::2] == batch.wrong[1::2]).all()


def test_batched_logits_equal_one_at_a_time(task_tokenizer):
    torch.manual_seed(0)
    model = TinyLM(task_tokenizer.get_vocab_size())
    batch = encode_task("class_init", task_tokenizer, n_pairs=6, split="val")
    with torch.no_grad():
        batched = candidate_logits(model, batch, chunk=5)
        single = []
        for i in range(len(batch)):
            n = int(batch.last[i]) + 1
            logits = model(batch.tokens[i : i + 1, :n])[0, -1]
            single.append(torch.stack([logits[batch.correct[i]], logits[batch.wrong[i]]]))
    assert batched.shape == (12, 2)
    torch.testing.assert_close(batched, torch.stack(single), rtol=1e-5, atol=1e-5)


def test_candidate_logits_keep_gradients(task_tokenizer):
    model = TinyLM(task_tokenizer.get_vocab_size())
    batch = encode_task("var_if", task_tokenizer, n_pairs=2)
    cand = candidate_logits(model, batch)
    logit_diff_loss(cand[:, 0] - cand[:, 1]).backward()
    assert model.emb.weight.grad is not None


def test_metrics_on_hand_made_logits():
    tie = task_metrics(torch.zeros(4, 2), "mean")
    assert tie["loss"] == pytest.approx(math.log(2)) and tie["acc"] == 0.5 and tie["logit_diff"] == 0
    m = task_metrics(torch.tensor([[3.0, 1.0], [0.0, 1.0], [5.0, 5.0], [10.0, -10.0]]), "mean")
    diffs = [2.0, -1.0, 0.0, 20.0]
    assert m["loss"] == pytest.approx(sum(math.log1p(math.exp(-d)) for d in diffs) / 4)
    assert m["acc"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert m["logit_diff"] == pytest.approx(sum(diffs) / 4)
    assert m["n"] == 4
    assert float(logit_diff_loss(torch.tensor([100.0]))) == pytest.approx(0.0, abs=1e-6)


def test_evaluate_task_runs_on_a_tiny_model(task_tokenizer):
    torch.manual_seed(0)
    model = TinyLM(task_tokenizer.get_vocab_size()).eval()
    out = evaluate_task(model, task_tokenizer, "for_while", n_pairs=8, split="test")
    assert out["task"] == "for_while" and out["split"] == "test" and out["n"] == 16
    assert 0 <= out["acc"] <= 1 and out["loss"] > 0


# ---- command line -------------------------------------------------------------------------------------------


def test_tasks_list_and_show():
    from sparsecircuits.tasks.commands import tasks

    runner = CliRunner()
    out = runner.invoke(tasks, ["list"])
    assert out.exit_code == 0 and all(n in out.output for n in PAPER_NAMES)
    out = runner.invoke(tasks, ["show", "var_swap", "--n", "2", "--split", "test"])
    assert out.exit_code == 0 and out.output.count("⟨?⟩") == 4
    out = runner.invoke(tasks, ["show", "nope"])
    assert isinstance(out.exception, UserError)


def test_eval_command_with_a_stub_run(task_tokenizer, tmp_path, monkeypatch):
    run_mod = pytest.importorskip("sparsecircuits.run")
    from sparsecircuits.tasks.commands import eval_cmd

    class StubRun:
        path = tmp_path
        config = {"data": {"dir": str(tmp_path / "missing")}}
        model = TinyLM(task_tokenizer.get_vocab_size()).eval()
        tokenizer = task_tokenizer

    monkeypatch.setattr(run_mod, "load_run", lambda path, device="cpu": StubRun())
    out_json = tmp_path / "eval.json"
    args = ["--model", str(tmp_path), "--task", "if_equals", "--task", "with_open", "--n-pairs", "4"]
    result = CliRunner().invoke(eval_cmd, [*args, "--device", "cpu", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "if_equals" in result.output and "with_open" in result.output and "n/a" in result.output
    saved = json.loads(out_json.read_text())
    assert set(saved["tasks"]) == {"if_equals", "with_open"} and saved["pretrain_val_loss"] is None
