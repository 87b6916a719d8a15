"""Mining natural task instances from real Python files: exact instances on a hand-written tree, skipped
files, the JSONL reader, encoding (left truncation) and the `tasks mine` / `eval --prompts` commands."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli_helpers import run_cli
from sparsecircuits.data import tokenizer as data_tokenizer
from sparsecircuits.data.corpus import CorpusStats
from sparsecircuits.data.tokenizer import EOT, train_tokenizer
from sparsecircuits.errors import UserError
from sparsecircuits.tasks import all_tasks
from sparsecircuits.tasks import mine as mine_mod
from sparsecircuits.tasks.evaluate import candidate_logits, task_metrics
from sparsecircuits.tasks.mine import (
    default_natural_sources,
    encode_mined,
    minable_tasks,
    mine,
    read_mined,
    write_mined,
)
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS
from test_tasks import TinyLM

FILES = {
    "pkg/a.py": (
        'print("hello")\n'
        "print('bye')\n"
        'print("done.")\n'  # `.")\n` is one pre-token: the prompt would end inside it
        "f = open(path)\n"
        'g = open(path, "r")\n'  # `")\n`: inside a pre-token again
        "with open(path) as h:\n"
        "    pass\n"
    ),
    "b.py": (
        "def main():\n"
        "    for i, x in enumerate(xs):\n"
        "        grid = [[1, 2], [3, 4]]\n"
        "    for k in range(3):\n"
        "        flat = [1, 2, 3]\n"
        "    while running:\n"
        "        if k == 1:\n"
        "            return True\n"
        "        elif n > 2:\n"
        "            pass\n"
        "        else:\n"
        "            break\n"
        "    key = lambda v: v\n"
    ),
    "c.py": (
        "x = lambda a, b: a\n"  # two parameters: not a lambda_func instance
        "if value == 1:  # the colon is `:`, not `:\\n`: no if_ternary instance\n"
        "    pass\n"
    ),
    "broken.py": "def (:\n",
}

# (task, source, the prompt ends after this (unique) fragment of the file, correct, wrong)
EXPECTED = [
    ("single_double_quote", "pkg/a.py:1", 'print("hello', '")\n', "')\n"),
    ("single_double_quote", "pkg/a.py:2", "print('bye", "')\n", '")\n'),
    ("with_as", "pkg/a.py:4", "f = open(path", ")\n", ")"),
    ("with_as", "pkg/a.py:6", "with open(path", ")", ")\n"),
    ("bracket_counting", "b.py:3", "[[1, 2], [3, 4", "]]\n", "]\n"),
    ("bracket_counting", "b.py:5", "[1, 2, 3", "]\n", "]]\n"),
    ("for_while", "b.py:4", "for k", " in", ":\n"),
    ("for_while", "b.py:6", "while running", ":\n", " in"),
    ("else_elif", "b.py:9", "elif", " n", ":\n"),
    ("else_elif", "b.py:11", "else", ":\n", " n"),
    ("if_ternary", "b.py:7", "if k == 1", ":\n", " else"),
    ("lambda_func", "b.py:1", "def main", "():\n", ":"),
    ("lambda_func", "b.py:13", "lambda v", ":", "():\n"),
    ("if_equals", "b.py:3", "grid", " =", " =="),
    ("if_equals", "b.py:5", "flat", " =", " =="),
    ("if_equals", "b.py:7", "if k", " ==", " ="),
    ("if_equals", "b.py:13", "key", " =", " =="),
    ("if_equals", "c.py:1", "x", " =", " =="),
    ("if_equals", "c.py:2", "if value", " ==", " ="),
    ("if_equals", "pkg/a.py:4", "\nf", " =", " =="),
    ("if_equals", "pkg/a.py:5", "\ng", " =", " =="),
    ("enumerate_range", "b.py:2", "for i, x in", " enumerate", " range"),
    ("enumerate_range", "b.py:4", "for k in", " range", " enumerate"),
    ("while_return_true", "b.py:8", "return True", "\n", ":\n"),
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "latin1.py").write_bytes(b"s = '\xe9t\xe9'\n")  # not UTF-8
    return root


def expected_records() -> list[dict]:
    out = []
    for task, source, fragment, correct, wrong in EXPECTED:
        text = FILES[source.split(":")[0]]
        assert text.count(fragment) == 1, fragment
        prompt = text[: text.index(fragment) + len(fragment)]
        out.append(
            {"task": task, "prompt": prompt, "correct": correct, "wrong": wrong, "source": source,
             "prompt_start": 0}
        )  # fmt: skip
    return out


def test_mine_finds_exactly_the_expected_instances(tree):
    stats = CorpusStats()
    got = mine([tree], max_per_task=1000, progress=False, per_file=100, stats=stats)
    assert got == expected_records()
    assert stats.files_seen == 5 and stats.files_kept == 3
    assert dict(stats.skipped) == {"unparseable": 1, "undecodable": 1}


def test_mine_caps_per_file_and_per_task_and_balances_sides(tree):
    got = mine([tree], max_per_task=2, progress=False)  # default: one instance per file and side
    by_task = mine_mod.group_by_task(got)
    assert [r["correct"] for r in by_task["if_equals"]] == [" =", " =="]  # one per side, not two ` =`
    assert all(len(recs) <= 2 for recs in by_task.values())
    for recs in by_task.values():
        sides = [(r["source"].split(":")[0], r["correct"] == recs[0]["correct"]) for r in recs]
        assert len(sides) == len(set(sides))
    assert mine([tree], tasks=["for_while"], max_per_task=4, max_files=1, progress=False) in (
        [],
        [r for r in expected_records() if r["task"] == "for_while"],
    )


def test_mining_in_worker_processes_gives_the_same_records_and_counts(tree):
    """Files parsed and mined in two processes, quotas filled in file order here: the same records and skip
    counts as one process, with the quotas filled early (stopping part way) or never."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (tree / "copy_of_b.py").write_bytes((tree / "b.py").read_bytes())  # a duplicate
    sources = [tree, stdlib / "json", stdlib / "email", stdlib / "logging", stdlib / "asyncio"]
    common = ["if_equals", "single_double_quote"]
    seen = []
    for tasks, quota, per_file in ((common, 4, 1), (None, 1000, 5)):
        runs = []
        for workers in (1, 2):
            stats = CorpusStats()
            records = mine(sources, tasks, quota, 80, False, per_file=per_file, stats=stats, workers=workers)
            runs.append((records, stats))
        assert runs[0][0] and runs[0] == runs[1], (quota, per_file)
        seen.append(runs[0][1].files_seen)
    assert seen[0] < seen[1]  # the small quotas stopped part way; the large ones read every file
    assert runs[0][1].skipped["duplicate"] == 1


def test_mine_selects_tasks_and_refuses_unminable_ones(tree):
    got = mine([tree], tasks=["lambda_func"], max_per_task=10, progress=False, per_file=10)
    assert got == [r for r in expected_records() if r["task"] == "lambda_func"]
    with pytest.raises(UserError, match="no miner for task class_init"):
        mine([tree], tasks=["class_init"], progress=False)
    with pytest.raises(UserError, match="unknown task"):
        mine([tree], tasks=["nope"], progress=False)
    assert set(minable_tasks()) <= {t.name for t in all_tasks()} and len(minable_tasks()) >= 8


def test_long_prompts_are_cut_at_a_line_start(tmp_path):
    text = "".join(f"value_{i} = {i}\n" for i in range(40)) + "for k in items:\n    pass\n"
    (tmp_path / "long.py").write_text(text)
    got = mine([tmp_path], tasks=["for_while"], progress=False, max_prompt_chars=50)
    assert len(got) == 1
    rec = got[0]
    start = rec["prompt_start"]
    assert 0 < start and text[start - 1] == "\n" and rec["prompt"] == text[start : text.index("for k") + 5]
    assert len(rec["prompt"]) <= 50


def test_local_pre_tokenize_matches_the_projects():
    text = FILES["b.py"] + FILES["pkg/a.py"] + "x = [[1, 2]]\n\n\n    y  \n"
    assert mine_mod.pre_tokenize(text) == data_tokenizer.pre_tokenize(text)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_read_mined_round_trip_and_refusals(tree, tmp_path):
    records = mine([tree], max_per_task=1000, progress=False, per_file=100)
    out = tmp_path / "m.jsonl"
    write_mined(out, records)
    back = read_mined(out)
    assert list(back) == list(dict.fromkeys(r["task"] for r in records))
    assert [r for recs in back.values() for r in recs] == records

    good = {"task": "for_while", "prompt": "for k", "correct": " in", "wrong": ":\n", "source": "b.py:4"}
    bad = {
        "not valid JSON": ["{nope"],
        "expected a JSON object": [[1, 2]],
        "missing or non-string 'prompt'": [{**good, "prompt": 3}],
        "unknown task 'nope'": [{**good, "task": "nope"}],
        "two different candidates of task for_while": [{**good, "wrong": " range"}],
        "prompt_start must be": [{**good, "prompt_start": -1}],
        "has no records": [],
    }
    for message, lines in bad.items():
        path = write_lines(tmp_path / "bad.jsonl", [good, *lines] if lines else [])
        with pytest.raises(UserError, match=message) as e:
            read_mined(path)
        assert "\n" not in str(e.value)
        if lines:
            assert "bad.jsonl:2" in str(e.value)
    with pytest.raises(UserError, match="not found"):
        read_mined(tmp_path / "missing.jsonl")


@pytest.fixture(scope="module")
def tok():
    texts = [p.text + p.correct + p.closing for t in all_tasks() for pair in t.pairs(6, "train") for p in
             (pair.pos, pair.neg)] + list(FILES.values())  # fmt: skip
    return train_tokenizer(texts, vocab_size=700, required=REQUIRED_TOKENS)


def record(prompt: str, correct: str = " in", wrong: str = ":\n", **extra) -> dict:
    return {
        "task": "for_while",
        "prompt": prompt,
        "correct": correct,
        "wrong": wrong,
        "source": "t.py:1",
        **extra,
    }


def test_encode_mined_prefixes_eot_and_left_truncates(tok):
    eot = tok.token_to_id(EOT)
    long = "".join(f"total_{i} = {i}\n" for i in range(30)) + "for k"
    short = "for k"
    records = [record(short), record(long), record(short, prompt_start=7), record("while k", ":\n", " in")]
    batch = encode_mined("for_while", records, tok, n_ctx=16)
    ids = [tok.encode(r["prompt"], add_special_tokens=False).ids for r in records]
    assert len(ids[1]) > 16
    assert batch.tokens[0, : len(ids[0]) + 1].tolist() == [eot, *ids[0]]
    assert batch.tokens[1].tolist() == ids[1][-16:]  # the last 16 tokens, no end-of-text
    assert batch.tokens[2, : len(ids[2])].tolist() == ids[2]  # not the start of its file: no end-of-text
    assert batch.last.tolist() == [len(ids[0]), 15, len(ids[2]) - 1, len(ids[3])]
    assert batch.pair.tolist() == [0, 1, 2, 3]
    one = {s: tok.encode(s, add_special_tokens=False).ids[0] for s in (" in", ":\n")}
    assert batch.correct.tolist() == [one[" in"]] * 3 + [one[":\n"]]
    assert batch.wrong.tolist() == [one[":\n"]] * 3 + [one[" in"]]


def test_encode_mined_refuses_a_prompt_that_ends_inside_a_token(tok):
    # `"for` is one pre-token, and `for` a token of any BPE trained on Python: the prompt ends inside it
    glued = {"task": "with_open", "prompt": 'f = open("fo', "correct": "r", "wrong": "w", "source": "a.py:3"}
    assert tok.encode('open("for').ids[:-1] != tok.encode('open("fo').ids
    with pytest.raises(UserError, match="task with_open: a.py:3"):
        encode_mined("with_open", [glued], tok, n_ctx=64)
    with pytest.raises(UserError, match="no mined prompts"):
        encode_mined("for_while", [], tok, n_ctx=64)


def test_default_natural_sources_are_third_party_folders():
    paths = sysconfig.get_paths()
    stdlib = {Path(paths[k]).resolve() for k in ("stdlib", "platstdlib")}
    sources = default_natural_sources()
    assert sources, "this interpreter has a site-packages folder"
    for p in sources:
        assert p.is_dir() and p not in stdlib and p.name in ("site-packages", "dist-packages")


def test_cli_defaults_are_the_modules():
    from sparsecircuits.tasks import commands

    assert commands.MINE_MAX_PER_TASK == mine_mod.DEFAULT_MAX_PER_TASK
    assert commands.MINE_MAX_FILES == mine_mod.DEFAULT_MAX_FILES


def test_mine_command_writes_and_refuses_to_overwrite(tree, tmp_path, capsys):
    out = tmp_path / "natural.jsonl"
    args = ["tasks", "mine", "--source", str(tree), "--out", str(out), "--quiet"]
    assert run_cli([*args, "--task", "for_while", "--task", "with_as"]) == 0
    captured = capsys.readouterr()
    assert "unparseable 1" in captured.out and "wrote 4 instances" in captured.out
    tasks = [json.loads(line)["task"] for line in out.read_text().splitlines()]
    assert tasks == ["for_while", "for_while", "with_as", "with_as"]  # in the order asked
    assert run_cli(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli([*args, "--force"]) == 0
    assert len(out.read_text().splitlines()) == len({(r[0], r[1].split(":")[0], r[3]) for r in EXPECTED})


def test_eval_command_on_mined_prompts(tok, tree, tmp_path, monkeypatch):
    from sparsecircuits import run as run_mod
    from sparsecircuits.tasks.commands import eval_cmd

    torch.manual_seed(0)
    model = TinyLM(tok.get_vocab_size()).eval()

    class StubRun:
        path = tmp_path
        config = {"data": {"dir": str(tmp_path / "missing")}}
        tokenizer = tok

    StubRun.model = model
    monkeypatch.setattr(run_mod, "load_run", lambda path, device="cpu": StubRun())
    prompts = tmp_path / "natural.jsonl"
    write_mined(prompts, mine([tree], max_per_task=1000, progress=False, per_file=100))
    out_json = tmp_path / "eval.json"
    args = ["--model", str(tmp_path), "--prompts", str(prompts), "--device", "cpu", "--json", str(out_json)]
    result = CliRunner().invoke(eval_cmd, [*args, "--task", "if_equals", "--task", "for_while"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out_json.read_text())
    assert list(saved["tasks"]) == ["if_equals", "for_while"] and saved["prompts"] == str(prompts)
    mined = read_mined(prompts)
    for name in ("if_equals", "for_while"):
        with torch.no_grad():
            batch = encode_mined(name, mined[name], tok, n_ctx=256)
            expected = task_metrics(candidate_logits(model, batch))
        assert saved["tasks"][name]["n"] == len(mined[name])
        assert saved["tasks"][name]["loss"] == pytest.approx(expected["loss"])
        assert saved["tasks"][name]["acc"] == pytest.approx(expected["acc"])
    result = CliRunner().invoke(eval_cmd, [*args, "--force", "--task", "var_swap"])
    assert isinstance(result.exception, UserError) and "no prompts for task var_swap" in str(result.exception)
