"""Corpus filters, split, tokenizer forcing and round trip, shards and sampler, `data build` errors."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
import torch

from cli_helpers import run_cli
from sparsecircuits.data.build import BuildConfig, build_dataset
from sparsecircuits.data.corpus import CorpusStats, read_documents, split_of
from sparsecircuits.data.dataset import load_dataset
from sparsecircuits.data.shards import TokenSampler, iter_eval_batches, write_tokens
from sparsecircuits.data.synthetic import generate_programs
from sparsecircuits.data.tokenizer import EOT, pre_tokenize, train_tokenizer
from sparsecircuits.errors import UserError

CODE = [
    "def f(x):\n    return x + 1\n",
    "for i in range(10):\n    print(i)\n",
    "names = ['a', 'b']\nfor n in names:\n    print(n)\n",
    "class A:\n    def __init__(self, v):\n        self.v = v\n",
    'msg = ("hello")\nprint(msg)\n',
    "grid = [[1, 2], [3, 4]]\n",
]


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for i in range(40):
        (src / "pkg" / f"m{i}.py").write_text(CODE[i % len(CODE)] + f"# file {i}\n")
    (src / "pkg" / "dup.py").write_text(CODE[0] + "# file 0\n")  # same bytes as m0.py
    (src / "bin.py").write_bytes(b"x = 1\x00\x01\x02")
    (src / "latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (src / "big.py").write_text("x = 1\n" * 400_000)
    (src / "notes.txt").write_text("not python")
    (src / "site-packages").mkdir()
    (src / "site-packages" / "vendored.py").write_text("v = 1\n")
    return src


def test_skip_rules_and_duplicates(tree):
    stats = CorpusStats()
    docs = list(read_documents([tree], stats))
    rels = {d.relpath for d in docs}
    assert stats.skipped == {"binary": 1, "non_utf8": 1, "oversized": 1, "duplicate": 1}
    assert "bin.py" not in rels and "latin.py" not in rels and "big.py" not in rels
    assert not any("vendored" in r for r in rels) and len(docs) == 40


def test_split_is_deterministic_and_by_path():
    paths = [f"pkg/mod{i}.py" for i in range(5000)]
    a = [split_of(p) for p in paths]
    assert a == [split_of(p) for p in paths]
    frac = a.count("val") / len(a)
    assert 0.01 < frac < 0.03


def test_synthetic_programs_parse_and_are_deterministic():
    progs = list(generate_programs(200_000, seed=3))
    assert progs == list(generate_programs(200_000, seed=3))
    assert progs != list(generate_programs(200_000, seed=4))
    for p in progs:
        ast.parse(p)
    text = "".join(progs)
    for idiom in ("lambda", "with open(", "for ", "class ", 'f"', "[[", "{", "enumerate("):
        assert idiom in text


def test_tokenizer_forces_required_tokens_and_round_trips():
    texts = CODE * 20 + list(generate_programs(100_000))
    required = [" enumerate", "]]", '")', "=None", " zzyzx", "   ", "       ", "):\n", "():\n"]
    tok = train_tokenizer(texts, vocab_size=400, required=required)
    assert tok.get_vocab_size() == 400 and tok.token_to_id(EOT) == 399
    for s in required:
        assert len(tok.encode(s).ids) == 1, s
    # Forced through merges, not "added tokens": ' zzyzx' must not split ' zzyzxes' into ' zzyzx' + 'es'
    # unless BPE itself would; and ' in' inside ' index' is untouched by forcing.
    assert tok.get_added_tokens_decoder().keys() == {399}
    for t in texts[:50] + ["ünïcode ✓ \t\r\n  x"]:
        assert tok.decode(tok.encode(t).ids) == t


def test_required_token_must_be_one_pretoken():
    assert pre_tokenize('("') == ['("']
    with pytest.raises(UserError, match="pre-token"):
        train_tokenizer(CODE, 300, required=["a b"])


def test_vocab_too_small_for_required():
    with pytest.raises(UserError, match="too small"):
        train_tokenizer(CODE, 258, required=["]]", '")'])


def test_shards_sampler_bounds_and_coverage(tmp_path):
    ids = np.arange(1000)
    write_tokens(tmp_path / "t.bin", ids)
    s = TokenSampler(tmp_path / "t.bin", n_ctx=16)
    g = torch.Generator().manual_seed(0)
    seen = np.zeros(1000, bool)
    for _ in range(200):
        b = s.batch(8, g)
        assert b.shape == (8, 17) and b.dtype == torch.long
        for row in b.numpy():  # each window is a contiguous, in-bounds slice of the stream
            assert np.array_equal(row, ids[row[0] : row[0] + 17])
            seen[row[0] : row[0] + 17] = True
    assert seen.all()  # every token, the last ones included, is reachable
    ev = list(iter_eval_batches(tmp_path / "t.bin", 16, 4, 3))
    assert sum(len(b) for b in ev) == 12 and all(b.shape[1] == 17 for b in ev)


def test_build_dataset_meta_matches_files(tree, tmp_path):
    out = tmp_path / "ds"
    meta = build_dataset(
        BuildConfig(
            out=out,
            sources=[tree],
            vocab_size=300,
            synthetic_mb=0.05,
            required_tokens=("]]",),
            progress=False,
            val_fraction=0.1,
        )
    )
    ds = load_dataset(out)
    for split in ("train", "val"):
        assert (out / f"{split}.bin").stat().st_size == 2 * meta["tokens"][split]
    assert json.loads((out / "meta.json").read_text())["content_hash"] == ds.meta["content_hash"]
    assert meta["skipped"]["binary"] == 1 and meta["documents"]["synthetic"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def _cli(*args):
    return run_cli(list(args))


def test_cli_bad_inputs(tree, tmp_path, capsys):
    assert _cli("data", "build", "--source", str(tmp_path / "nope"), "--out", str(tmp_path / "o")) == 2
    assert "source does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("data", "build", "--source", str(empty), "--out", str(tmp_path / "o")) == 2
    assert "no Python files" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    assert _cli("data", "build", "--source", str(tree), "--out", str(existing), "--quiet") == 2
    assert "already exists" in capsys.readouterr().err and (existing / "keep.txt").read_text() == "precious"
    assert (
        _cli("data", "build", "--source", str(tree), "--out", str(tmp_path / "o"), "--vocab-size", "100") == 2
    )
    assert "too small" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_unwritable_output(tree, tmp_path, capsys):
    if hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0:
        ro = "/proc/sparsecircuits-ds"  # root can write anywhere but /proc
    else:
        ro_dir = tmp_path / "ro"
        ro_dir.mkdir(mode=0o500)
        ro = str(ro_dir / "ds")
    assert _cli("data", "build", "--source", str(tree), "--out", ro, "--quiet") == 2
    assert "error:" in capsys.readouterr().err


def test_load_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(UserError, match="not a dataset directory"):
        load_dataset(tmp_path)


def test_build_reuses_a_given_tokenizer(tree, tmp_path):
    first = build_dataset(
        BuildConfig(out=tmp_path / "a", sources=[tree], vocab_size=300, progress=False, val_fraction=0.1)
    )
    second = build_dataset(
        BuildConfig(
            out=tmp_path / "b",
            sources=[tree],
            tokenizer=tmp_path / "a" / "tokenizer.json",
            progress=False,
            val_fraction=0.1,
        )
    )
    assert second["tokenizer_source"].endswith("tokenizer.json") and first["tokenizer_source"] == "trained"
    assert (tmp_path / "a" / "train.bin").read_bytes() == (tmp_path / "b" / "train.bin").read_bytes()


def test_nothing_to_build(tmp_path, capsys):
    assert _cli("data", "build", "--no-stdlib", "--out", str(tmp_path / "o")) == 2
    assert "nothing to build" in capsys.readouterr().err


def test_hf_dataset_without_the_extra_says_how_to_install(tmp_path, capsys):
    try:
        import datasets  # noqa: F401
    except ImportError:
        (tmp_path / "d.jsonl").write_text('{"content": "x = 1"}\n')
        assert (
            _cli(
                "data",
                "build",
                "--hf-dataset",
                str(tmp_path / "d.jsonl"),
                "--no-stdlib",
                "--out",
                str(tmp_path / "o"),
            )
            == 2
        )
        assert "sparsecircuits[datasets]" in capsys.readouterr().err
    else:  # with the extra installed: a local jsonl file is read offline
        (tmp_path / "d.jsonl").write_text("".join(f'{{"content": "x{i} = {i}"}}\n' for i in range(200)))
        meta = build_dataset(
            BuildConfig(
                out=tmp_path / "o",
                no_stdlib=True,
                hf_dataset=str(tmp_path / "d.jsonl"),
                vocab_size=300,
                progress=False,
            )
        )
        assert meta["documents"]["train"] + meta["documents"]["val"] == 200
