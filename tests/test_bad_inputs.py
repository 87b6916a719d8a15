"""Bad input, table-driven: every case exits non-zero with one line on stderr, no traceback, and changes
nothing on disk (the whole test folder and the fixtures are hashed before and after).

Covered: out-of-range and non-finite options (parse-time types of cli_options), refusals before slow work
(demo, data build, train --set), existing outputs without --force, --force on a folder this project did not
write (the user's notes.txt, photo.jpg and notes/ must survive), and an unwritable output per command.

Unwritable outputs, honestly, even as root (chmod does not stop root): (a) a path below a regular file,
which no user can create, and (b) a folder the kernel refuses files in for every user: /sys on Linux (sysfs
creates no regular files), or, where /sys is writable or absent, a chmod 0o500 folder when not running as
root. `validate` rewrites its circuit file in place, so its writability is covered by io.check_writable's
case (b) in `test_check_writable_refuses_a_real_unwritable_folder` rather than a CLI case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from sparsecircuits.errors import UserError
from sparsecircuits.io import (
    MARKER_FILE,
    check_writable,
    commit_dir,
    legacy_kind,
    output_kind,
    staging_dir,
)
from test_train import VOCAB, dataset  # noqa: F401  (the tiny byte-level dataset fixture)

QUOTE, BRACKET = "single_double_quote", "bracket_counting"
USER_FILES = {"notes.txt": b"my notes", "photo.jpg": b"\xff\xd8 a photo", "notes/idea.md": b"# idea"}
HUGE = str(10**30)


def _unwritable() -> Path:
    """A folder nobody can create files in: /sys where the kernel refuses, else (not root) chmod 0o500."""
    sys_dir = Path("/sys")
    if sys_dir.is_dir():
        try:
            fd, probe = tempfile.mkstemp(dir=sys_dir)
        except OSError:
            return sys_dir
        os.close(fd)
        os.unlink(probe)
    if os.geteuid() == 0:
        raise RuntimeError("no unwritable folder for root here: /sys accepts files")
    ro = Path(tempfile.mkdtemp(prefix="sc-ro-"))
    ro.chmod(0o500)
    return ro


RO = _unwritable()


def tree_hash(*roots: Path) -> str:
    """Hash of every path (files, folders, links) and file content under the roots."""
    h = hashlib.sha256()
    for root in roots:
        for p in sorted(root.rglob("*")):
            h.update(str(p.relative_to(root)).encode() + b"\0")
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory) -> Path:  # noqa: F811
    """A run folder of an untrained tiny model (weights, config.json, tokenizer.json), written directly."""
    from sparsecircuits.io import mark_output_dir
    from sparsecircuits.model.gpt import GPT
    from sparsecircuits.run import save_model
    from sparsecircuits.train.config import build_config

    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    out.mkdir()
    model_cfg, train_cfg = build_config("tiny", VOCAB)
    save_model(GPT(model_cfg), out / "model.safetensors")
    shutil.copyfile(dataset / "tokenizer.json", out / "tokenizer.json")
    config = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": {"dir": str(dataset)}}
    (out / "config.json").write_text(json.dumps(config))
    mark_output_dir(out, "run")
    return out


def _user_folder(path: Path, extra: dict[str, bytes] | None = None) -> Path:
    for name, data in {**USER_FILES, **(extra or {})}.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


@pytest.fixture
def world(tmp_path, dataset, run_dir) -> dict[str, str]:  # noqa: F811
    """Placeholders for the case table: fixtures, user folders, existing files, unwritable paths."""
    a_file = tmp_path / "a_file"
    a_file.write_text("a regular file")
    (tmp_path / "existing.json").write_text('{"mine": true}\n')
    (tmp_path / "existing.html").write_text("<p>mine</p>\n")
    _user_folder(tmp_path / "user")
    _user_folder(tmp_path / "user_summary", {"summary.json": b'{"my": "summary"}'})
    _user_folder(tmp_path / "user_config", {"config.json": b"{}"})
    _user_folder(tmp_path / "user_frontier", {"frontier.md": b"# my frontier notes"})
    (tmp_path / "src").mkdir()
    (tmp_path / "c.circuit.json").write_text("{}")
    frontier = {"data": str(dataset), "models": [{"name": "a", "preset": "tiny"}]}
    for name, out in (
        ("f_user", tmp_path / "user_frontier"),
        ("f_ro", RO / "frontier"),
        ("f_file", a_file / "f"),
        ("f_new", tmp_path / "f"),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps({**frontier, "out": str(out)}))
    return {"tmp": str(tmp_path), "ds": str(dataset), "run": str(run_dir), "file": str(a_file), "ro": str(RO)}


TASKS2 = ["--task", QUOTE, "--task", BRACKET]
PRUNE = ["prune", "--model", "{run}", "--task", QUOTE, "--out", "{tmp}/c_new.circuit.json"]
TRAIN = ["train", "--data", "{ds}", "--out", "{tmp}/r", "--preset", "tiny"]
BUILD = ["data", "build", "--no-stdlib", "--synthetic", "0.01", "--out"]
EVAL = ["eval", "--model", "{run}", "--task", QUOTE]
STEER = ["bridges", "steer", "--bridged", "{run}", "--node", "0.attn.act_in.0", "--task", QUOTE]
BRIDGES = ["bridges", "train", "--dense", "{run}", "--data", "{ds}", "--preset", "tiny", "--out"]
EXPORT = ["view", "--export", "{tmp}/c.circuit.json", "--out"]
DEMO = ["demo", "--out", "{tmp}/demo"]

# (id, argv with placeholders, a piece of the expected one-line error)
CASES: list[tuple[str, list[str], str]] = [
    # sample
    ("sample-temperature-nan", ["sample", "--model", "{run}", "--temperature", "nan"], "--temperature"),
    ("sample-huge-seed", ["sample", "--model", "{run}", "--seed", HUGE], "--seed"),
    ("sample-device-tpu", ["sample", "--model", "{run}", "--device", "tpu"], "not a device"),
    # tasks show
    ("tasks-show-n-0", ["tasks", "show", QUOTE, "--n", "0"], "--n"),
    ("tasks-show-n-negative", ["tasks", "show", QUOTE, "--n", "-3"], "--n"),
    ("tasks-show-n-huge", ["tasks", "show", QUOTE, "--n", str(10**9)], "--n"),
    # eval
    ("eval-val-batches-negative", [*EVAL, "--val-batches", "-1"], "--val-batches"),
    ("eval-device-tpu", [*EVAL, "--device", "tpu"], "not a device"),
    ("eval-n-pairs-huge", [*EVAL, "--n-pairs", str(10**8)], "--n-pairs"),
    ("eval-n-pairs-0", [*EVAL, "--n-pairs", "0"], "--n-pairs"),
    ("eval-huge-seed", [*EVAL, "--seed", HUGE], "--seed"),
    ("eval-json-existing", [*EVAL, "--json", "{tmp}/existing.json"], "already exists"),
    ("eval-json-folder", [*EVAL, "--json", "{tmp}/user"], "is a directory"),
    ("eval-json-under-file", [*EVAL, "--json", "{file}/r.json"], "not a directory"),
    ("eval-json-unwritable", [*EVAL, "--json", "{ro}/r.json"], "not writable"),
    # data build
    ("data-synthetic-nan", [*BUILD, "{tmp}/d", "--synthetic", "nan"], "--synthetic"),
    ("data-synthetic-negative", [*BUILD, "{tmp}/d", "--synthetic", "-1"], "--synthetic"),
    ("data-vocab-beyond-uint16", [*BUILD, "{tmp}/d", "--vocab-size", "70000"], "--vocab-size"),
    ("data-vocab-huge", [*BUILD, "{tmp}/d", "--vocab-size", str(10**9)], "--vocab-size"),
    ("data-val-fraction", [*BUILD, "{tmp}/d", "--val-fraction", "1.5"], "--val-fraction"),
    ("data-existing-no-force", [*BUILD, "{tmp}/user"], "already exists"),
    ("data-force-user-folder", [*BUILD, "{tmp}/user", "--force"], "holds no sparsecircuits dataset"),
    ("data-force-on-a-run", [*BUILD, "{run}", "--force"], "holds a sparsecircuits run"),
    ("data-out-under-file", [*BUILD, "{file}/d"], "not a directory"),
    ("data-out-unwritable", [*BUILD, "{ro}/d"], "not writable"),
    ("data-out-is-file", [*BUILD, "{file}"], "not a directory"),
    # train
    ("train-steps-1e30", [*TRAIN, "--set", "train.steps=1e30"], "steps"),
    ("train-batch-1e12", [*TRAIN, "--set", "train.batch_size=1e12"], "batch_size"),
    ("train-d-model-1e9", [*TRAIN, "--set", "model.d_model=1e9"], "model config"),
    ("train-d-mlp-1e9", [*TRAIN, "--set", "model.d_mlp=1e9"], "parameters"),
    ("train-huge-seed", [*TRAIN, "--set", f"train.seed={HUGE}"], "seed"),
    ("train-unknown-preset", ["train", "--data", "{ds}", "--out", "{tmp}/r", "--preset", "nope"], "--preset"),
    ("train-device-tpu", [*TRAIN, "--device", "tpu"], "not a device"),
    ("train-force-user-folder", [*TRAIN[:4], "{tmp}/user", "--force"], "holds no sparsecircuits run"),
    ("train-force-empty-config", [*TRAIN[:4], "{tmp}/user_config", "--force"], "holds no sparsecircuits run"),
    ("train-existing-no-force", [*TRAIN[:4], "{tmp}/user"], "already exists"),
    ("train-out-under-file", [*TRAIN[:4], "{file}/r"], "not a directory"),
    ("train-out-unwritable", [*TRAIN[:4], "{ro}/r"], "not writable"),
    # prune
    ("prune-train-pairs-0", [*PRUNE, "--train-pairs", "0"], "--train-pairs"),
    ("prune-eval-pairs-0", [*PRUNE, "--eval-pairs", "0"], "--eval-pairs"),
    ("prune-lr-negative", [*PRUNE, "--lr", "-1"], "--lr"),
    ("prune-lr-nan", [*PRUNE, "--lr", "nan"], "--lr"),
    ("prune-k-coef-negative", [*PRUNE, "--k-coef", "-1"], "--k-coef"),
    ("prune-target-inf", [*PRUNE, "--target-loss", "inf"], "--target-loss"),
    ("prune-device-tpu", [*PRUNE, "--device", "tpu"], "not a device"),
    ("prune-task-and-all-tasks", [*PRUNE, "--all-tasks"], "not both"),
    ("prune-many-into-file-name", [*PRUNE[:3], *TASKS2, "--out", "{tmp}/x.circuit.json"], "is a directory"),
    ("prune-summary-no-force", [*PRUNE[:3], *TASKS2, "--out", "{tmp}/user_summary"], "already exists"),
    ("prune-summary-force", [*PRUNE[:3], *TASKS2, "--out", "{tmp}/user_summary", "--force"], "refusing"),
    ("prune-existing-file", [*PRUNE[:5], "--out", "{tmp}/existing.json"], "already exists"),
    ("prune-out-folder-one-task", [*PRUNE[:5], "--out", "{tmp}/user"], "is a directory"),
    ("prune-out-under-file", [*PRUNE[:5], "--out", "{file}/c.circuit.json"], "not a directory"),
    ("prune-out-unwritable", [*PRUNE[:5], "--out", "{ro}/c.circuit.json"], "not writable"),
    ("prune-many-unwritable", [*PRUNE[:3], *TASKS2, "--out", "{ro}/circuits"], "not writable"),
    # validate
    ("validate-n-pairs-0", ["validate", "--circuit", "{tmp}/c.circuit.json", "--n-pairs", "0"], "--n-pairs"),
    (
        "validate-n-random-negative",
        ["validate", "--circuit", "{tmp}/c.circuit.json", "--n-random", "-1"],
        "--n-random",
    ),
    (
        "validate-mean-windows-0",
        ["validate", "--circuit", "{tmp}/c.circuit.json", "--mean-windows", "0"],
        "--mean-windows",
    ),
    # view --export
    ("export-existing", [*EXPORT, "{tmp}/existing.html"], "already exists"),
    ("export-under-file", [*EXPORT, "{file}/c.html"], "not a directory"),
    ("export-unwritable", [*EXPORT, "{ro}/c.svg"], "not writable"),
    ("export-min-weight-nan", [*EXPORT, "{tmp}/new.svg", "--min-weight", "nan"], "--min-weight"),
    # bridges
    ("steer-json-existing", [*STEER, "--json", "{tmp}/existing.json"], "already exists"),
    ("steer-json-unwritable", [*STEER, "--json", "{ro}/s.json"], "not writable"),
    ("steer-plot-under-file", [*STEER, "--plot", "{file}/s.png"], "not a directory"),
    ("steer-n-pairs-0", [*STEER, "--n-pairs", "0"], "--n-pairs"),
    ("bridges-force-user-folder", [*BRIDGES, "{tmp}/user", "--force"], "holds no sparsecircuits run"),
    ("bridges-out-unwritable", [*BRIDGES, "{ro}/b"], "not writable"),
    ("bridges-out-under-file", [*BRIDGES, "{file}/b"], "not a directory"),
    # import-openai
    (
        "import-force-user-folder",
        ["import-openai", "--src", "{tmp}/src", "--out", "{tmp}/user", "--force"],
        "holds no",
    ),
    ("import-out-unwritable", ["import-openai", "--src", "{tmp}/src", "--out", "{ro}/imp"], "not writable"),
    # demo: refused at once, before the corpus build
    ("demo-unknown-preset", [*DEMO, "--preset", "nope"], "--preset"),
    ("demo-synthetic-nan", [*DEMO, "--synthetic", "nan"], "--synthetic"),
    ("demo-max-tasks-0", [*DEMO, "--max-tasks", "0"], "--max-tasks"),
    ("demo-max-tasks-beyond-registry", [*DEMO, "--max-tasks", "500"], "--max-tasks"),
    ("demo-target-loss-negative", [*DEMO, "--target-loss", "-1"], "--target-loss"),
    ("demo-unknown-set-key", [*DEMO, "--set", "train.stepz=3"], "unknown key"),
    ("demo-prune-steps-0", [*DEMO, "--prune-steps", "0"], "--prune-steps"),
    ("demo-force-user-folder", ["demo", "--out", "{tmp}/user", "--force"], "holds no sparsecircuits demo"),
    ("demo-resume-user-folder", ["demo", "--out", "{tmp}/user"], "holds no sparsecircuits demo"),
    ("demo-out-unwritable", ["demo", "--out", "{ro}/demo"], "not writable"),
    ("demo-out-under-file", ["demo", "--out", "{file}/demo"], "not a directory"),
    # a GPU that is not there: refused before anything is built or written
    ("demo-absent-gpu", [*DEMO, "--device", "cuda:99"], "cuda:99"),
    ("train-absent-gpu", [*TRAIN, "--device", "cuda:99"], "cuda:99"),
    ("bridges-absent-gpu", [*BRIDGES, "{tmp}/b", "--device", "cuda:99"], "cuda:99"),
    ("prune-absent-gpu", [*PRUNE, "--device", "cuda:99"], "cuda:99"),
    ("frontier-absent-gpu", ["frontier", "--config", "{tmp}/f_new.json", "--device", "cuda:99"], "cuda:99"),
    # frontier
    (
        "frontier-user-folder",
        ["frontier", "--config", "{tmp}/f_user.json"],
        "holds no sparsecircuits frontier",
    ),
    ("frontier-force-user-folder", ["frontier", "--config", "{tmp}/f_user.json", "--force"], "holds no"),
    ("frontier-out-unwritable", ["frontier", "--config", "{tmp}/f_ro.json"], "not writable"),
    ("frontier-out-under-file", ["frontier", "--config", "{tmp}/f_file.json"], "not a directory"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(name, argv, message, world, capsys):
    args = [a.format(**world) for a in argv]
    roots = [Path(world["tmp"]), Path(world["ds"]), Path(world["run"])]
    before = tree_hash(*roots)
    code = run_cli(args)
    err = capsys.readouterr().err
    assert code not in (0, None), (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
    assert message in lines[0], (name, lines[0])
    assert tree_hash(*roots) == before, f"{name} changed files on disk"
    for folder in ("user", "user_summary", "user_config", "user_frontier"):
        for rel, data in USER_FILES.items():
            assert (Path(world["tmp"]) / folder / rel).read_bytes() == data


def test_case_count():
    assert len(CASES) == len({c[0] for c in CASES}) >= 80


# ---- --force replaces only what the project wrote ----------------------------------------------------


def test_train_force_replaces_its_run_and_keeps_user_files(dataset, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    args = ["train", "--data", str(dataset), "--out", str(out), "--preset", "tiny", "--quiet"]
    for item in ("train.steps=1", "train.batch_size=1", "train.eval_batches=1", "train.eval_batch_size=1"):
        args += ["--set", item]
    args += ["--set", "model.n_ctx=32"]
    assert run_cli(args) == 0
    assert output_kind(out) == "run" and json.loads((out / MARKER_FILE).read_text())["kind"] == "run"
    _user_folder(out)
    (out / "notebook.ipynb").write_text("{}")
    first = (out / "config.json").read_text()
    assert run_cli([*args, "--force", "--set", "train.seed=7"]) == 0
    assert (out / "config.json").read_text() != first  # the run was replaced...
    for rel, data in USER_FILES.items():  # ...and the user's files beside it survive
        assert (out / rel).read_bytes() == data
    assert (out / "notebook.ipynb").read_text() == "{}"


def test_force_commit_keeps_user_files_and_replaces_old_output(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"content_hash": "old", "vocab_size": 3}))
    (out / "train.bin").write_bytes(b"old")
    _user_folder(out)
    assert legacy_kind(out) == "dataset"  # a dataset written before markers existed
    with pytest.raises(UserError, match="already exists"):
        staging_dir(out, False, "dataset")
    tmp = staging_dir(out, True, "dataset")
    (tmp / "meta.json").write_text(json.dumps({"content_hash": "new", "vocab_size": 3}))
    (tmp / "val.bin").write_bytes(b"new")
    commit_dir(tmp, out, "dataset")
    assert json.loads((out / "meta.json").read_text())["content_hash"] == "new"
    assert not (out / "train.bin").exists() and (out / "val.bin").read_bytes() == b"new"
    assert output_kind(out) == "dataset" and not tmp.exists()
    for rel, data in USER_FILES.items():
        assert (out / rel).read_bytes() == data


def test_legacy_runs_are_recognised_and_user_folders_are_not(tmp_path):
    legacy = tmp_path / "legacy"  # a run from before the marker: a real config.json and model.safetensors
    legacy.mkdir()
    config = json.loads(
        (Path(__file__).resolve().parents[1] / "artifacts/demo/sparse/config.json").read_text()
    )
    (legacy / "config.json").write_text(json.dumps(config))
    (legacy / "model.safetensors").write_bytes(b"weights")
    assert output_kind(legacy) == "run"
    empty_config = _user_folder(tmp_path / "u", {"config.json": b"{}", "model.safetensors": b"x"})
    assert output_kind(empty_config) is None
    (tmp_path / "u" / MARKER_FILE).write_text('{"project": "other", "kind": "run"}')
    assert output_kind(empty_config) is None


def test_check_writable_refuses_a_real_unwritable_folder(tmp_path):
    with pytest.raises(UserError, match="not writable"):
        check_writable(RO / "x.circuit.json", "circuit file")
    check_writable(tmp_path / "new" / "deeper" / "x.json")  # creatable: fine, and nothing is left
    assert list(tmp_path.iterdir()) == []


def test_mean_cache_falls_back_when_the_run_folder_is_read_only(tmp_path, monkeypatch):
    from sparsecircuits.circuits.means import cached_means
    from sparsecircuits.data.shards import write_tokens
    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.gpt import GPT

    cfg = dict(vocab_size=64, n_layer=1, d_model=16, n_head=2, d_head=8, d_mlp=32, n_ctx=16, afrac=0.5)
    model = GPT(ModelConfig(**cfg)).eval()
    bin_path = tmp_path / "val.bin"
    write_tokens(bin_path, torch.randint(0, 64, (2000,)).numpy())
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(tmp_path / "cache"))
    first = cached_means(model, a_file / "run", bin_path, n_windows=8)  # the run folder cannot be written
    cached = list((tmp_path / "cache" / "means").iterdir())
    assert len(cached) == 1
    again = cached_means(model, a_file / "run", bin_path, n_windows=8)  # read back from the user cache
    assert all(torch.equal(first[k].cpu(), again[k]) for k in first)
    monkeypatch.setenv("SPARSECIRCUITS_CACHE", str(a_file / "cache"))  # nowhere to write: memory only
    third = cached_means(model, a_file / "run", bin_path, n_windows=4)
    assert set(third) == set(first)


@pytest.mark.parametrize(
    "kind, ours",
    [
        (
            "demo",
            {"demo.json": b'{"models": "shipped", "preset": null}', "eval.json": b"{}", "sparse/x": b"x"},
        ),
        (
            "frontier",
            {"frontier.json": b'{"models": []}', "frontier.md": b"# table", "cells/a/t.json": b"{}"},
        ),
        ("frontier", {"cells/a/model.json": b'{"val_loss": 3.0, "nonzero_params": 5}'}),  # stopped early
        ("prune", {"summary.json": b'{"tasks_total": 2}', "a.circuit.json": b"{}"}),
    ],
)
def test_force_on_a_legacy_folder_removes_only_its_own_entries(tmp_path, kind, ours):
    from sparsecircuits.io import prepare_output_dir

    out = _user_folder(tmp_path / kind, ours)
    assert output_kind(out) == kind
    with pytest.raises(UserError, match="holds a sparsecircuits"):
        prepare_output_dir(out, "run", force=True)  # another kind is never replaced
    prepare_output_dir(out, kind, force=False)  # resume: nothing removed
    assert all((out / rel).exists() for rel in ours)
    prepare_output_dir(out, kind, force=True)
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted([MARKER_FILE, *USER_FILES])


def test_prune_folder_is_marked_and_force_keeps_user_files(run_dir, world, capsys):
    """Several tasks: summary.json and the marker are written; a rerun needs --force, which then overwrites
    only the project's files (the user's notes beside them stay). The byte-level fixture tokenizer lacks the
    tasks' tokens, so both tasks are recorded as not reached: this checks the folder handling only."""
    out = Path(world["tmp"]) / "circuits"
    args = ["prune", "--model", str(run_dir), *TASKS2, "--out", str(out), "--quiet", "--no-validate"]
    args += ["--steps", "2", "--train-pairs", "4", "--eval-pairs", "4", "--mean-windows", "2"]
    assert run_cli(args) == 0
    assert output_kind(out) == "prune" and (out / "summary.json").is_file()
    _user_folder(out)
    assert run_cli(args) == 2 and "already exists" in capsys.readouterr().err
    assert run_cli([*args, "--force"]) == 0
    for rel, data in USER_FILES.items():
        assert (out / rel).read_bytes() == data
