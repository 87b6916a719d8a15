"""Bad or tampered files are refused before any work: one line on stderr, exit 2, nothing written or changed.

Covers issue 18 items 5 and 7 (file contents): a swapped tokenizer (run and dataset), circuit files with no,
duplicated or unknown nodes or a non-numeric target (validate and view --export), frontier configs with
unknown keys, bad targets, non-object models or path-like model names, an edited checkpoint state.json,
stale staging folders of killed builds, and vocabulary sizes uint16 shards cannot hold. Everything runs on
a byte-level tokenizer (257 tokens) and the tiny preset, so the whole file takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from cli_helpers import run_cli
from sparsecircuits.circuits.circuit_file import SCHEMA, read_circuit
from sparsecircuits.data.build import BuildConfig, build_dataset
from sparsecircuits.data.dataset import load_dataset
from sparsecircuits.data.tokenizer import EOT, HASH_KEY, load_tokenizer, tokenizer_sha256
from sparsecircuits.errors import UserError
from sparsecircuits.experiments import shipped
from sparsecircuits.io import file_sha256, remove_stale_staging, staging_dir, staging_prefix
from sparsecircuits.model import GPT
from sparsecircuits.run import load_run, save_model
from sparsecircuits.train import checkpoint as ckpt
from sparsecircuits.train.trainer import prepare_run

TASK = "single_double_quote"
FAST = [
    "train.steps=4",
    "train.batch_size=2",
    "train.ckpt_every=2",
    "train.eval_every=2",
    "train.log_every=2",
]


# ---- fixtures ------------------------------------------------------------------------------------------


def byte_tokenizer(path: Path, swap: bool = False) -> Path:
    """A 257-token byte-level tokenizer; `swap` exchanges the ids of two bytes (same size, other vocabulary)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    if swap:
        alphabet[97], alphabet[98] = alphabet[98], alphabet[97]
    tok = Tokenizer(models.BPE(vocab={**{ch: i for i, ch in enumerate(alphabet)}, EOT: 256}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    tok.save(str(path))
    return path


def build(out: Path, tokenizer: Path) -> Path:
    cfg = BuildConfig(out=out, no_stdlib=True, synthetic_mb=0.05, val_fraction=0.2, tokenizer=tokenizer)
    cfg.progress = False
    build_dataset(cfg)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Two tokenizers of 257 tokens (a, b), a dataset built with each, and a tiny run on dataset a."""
    root = tmp_path_factory.mktemp("bad_files")
    tok_a, tok_b = byte_tokenizer(root / "a.json"), byte_tokenizer(root / "b.json", swap=True)
    data_a, data_b = build(root / "data_a", tok_a), build(root / "data_b", tok_b)
    setup = prepare_run(data_a, root / "run", preset="tiny")
    save_model(GPT(setup.model_cfg), root / "run" / "model.safetensors")
    return {
        "root": root,
        "tok_a": tok_a,
        "tok_b": tok_b,
        "data_a": data_a,
        "data_b": data_b,
        "run": root / "run",
    }


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with the SHA-256 of its content (folders: "dir")."""
    return {
        str(p.relative_to(root)): ("dir" if p.is_dir() else file_sha256(p)) for p in sorted(root.rglob("*"))
    }


def refused(args: list[str], capsys, root: Path, match: str = "") -> str:
    """Run the CLI: exit 2, exactly one line on stderr (naming `match`), no traceback, `root` unchanged."""
    before = snapshot(root)
    capsys.readouterr()
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and match in err, err
    assert snapshot(root) == before
    return lines[0]


def copy_run(world, name: str) -> Path:
    run = world["root"] / "copies" / name
    shutil.copytree(world["run"], run)
    return run


def circuit_dict(run: Path, config: dict | None, **changes) -> dict:
    model = {"path": str(run), "content_hash": "x"}
    if config is not None:
        model["config"] = config
    circuit = {
        "schema": SCHEMA,
        "model": model,
        "task": {"name": TASK},
        "ablation": "mean",
        "target_loss": 0.15,
        "achieved": {"loss": 0.1},
        "nodes": ["0.mlp.post_act.3", "0.attn.v.1", "1.attn.act_in.2"],
        "edges": [],
        "counts": {"nodes": 3, "edges": 0},
    }
    circuit.update(changes)
    return {k: v for k, v in circuit.items() if v is not DROP}


DROP = object()


# ---- item 5: the tokenizer's hash ----------------------------------------------------------------------


def test_build_and_train_record_the_tokenizer_hash(world):
    assert load_dataset(world["data_a"]).meta[HASH_KEY] == tokenizer_sha256(
        world["data_a"] / "tokenizer.json"
    )
    config = json.loads((world["run"] / "config.json").read_text())
    assert config[HASH_KEY] == tokenizer_sha256(world["run"] / "tokenizer.json")
    assert config[HASH_KEY] != tokenizer_sha256(world["tok_b"])


@pytest.mark.parametrize(
    "args",
    [
        ["sample", "--model", "{run}", "--max-new-tokens", "2"],
        ["eval", "--model", "{run}", "--task", TASK, "--n-pairs", "2"],
        ["prune", "--model", "{run}", "--task", TASK, "--out", "{root}/c.circuit.json"],
        ["validate", "--circuit", "{root}/ok.circuit.json"],
    ],
    ids=["sample", "eval", "prune", "validate"],
)
def test_swapped_run_tokenizer_is_refused(world, capsys, args):
    run = copy_run(world, f"swapped-{args[0]}")
    shutil.copyfile(world["tok_b"], run / "tokenizer.json")
    (run.parent / "ok.circuit.json").write_text(json.dumps(circuit_dict(run, None)))
    args = [a.format(run=run, root=run.parent) for a in args]
    refused(args, capsys, run.parent, "is not the tokenizer recorded in")


def test_run_with_its_own_tokenizer_loads(world, capsys):
    assert run_cli(["sample", "--model", str(world["run"]), "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("command", ["prune", "validate"])
def test_dataset_of_another_tokenizer_is_refused(world, capsys, command):
    root = world["root"] / f"other-data-{command}"
    root.mkdir()
    (root / "ok.circuit.json").write_text(json.dumps(circuit_dict(world["run"], None)))
    args = {
        "prune": [
            "prune",
            "--model",
            str(world["run"]),
            "--task",
            TASK,
            "--out",
            str(root / "c.circuit.json"),
        ],
        "validate": ["validate", "--circuit", str(root / "ok.circuit.json")],
    }[command]
    refused([*args, "--data", str(world["data_b"])], capsys, root, "built with another tokenizer")


def test_dataset_whose_tokenizer_was_replaced_is_refused(world, capsys):
    data = world["root"] / "data_replaced"
    shutil.copytree(world["data_a"], data)
    shutil.copyfile(world["tok_b"], data / "tokenizer.json")
    args = ["prune", "--model", str(world["run"]), "--task", TASK, "--out", str(data / "c.circuit.json")]
    refused([*args, "--data", str(data)], capsys, data, "meta.json")


def test_same_vocabulary_in_other_bytes_is_accepted(world):
    """A dataset built with --tokenizer RUN/tokenizer.json re-saves it: other bytes may hold the same tokens."""
    data = load_dataset(world["data_a"])
    resaved = world["root"] / "resaved.json"
    resaved.write_text(json.dumps(json.loads(world["tok_a"].read_text()), indent=1))
    assert tokenizer_sha256(resaved) != data.tokenizer_sha256
    data.check_built_with(resaved, load_tokenizer(resaved), "a run")
    with pytest.raises(UserError, match="built with another tokenizer"):
        data.check_built_with(world["tok_b"], load_tokenizer(world["tok_b"]), "a run")


def test_viewer_refuses_a_swapped_run_tokenizer(world):
    from sparsecircuits.viewer.server import ViewerApp

    run = copy_run(world, "swapped-viewer")
    assert len(ViewerApp([run]).vocab(run)) == 257
    shutil.copyfile(world["tok_b"], run / "tokenizer.json")
    with pytest.raises(UserError, match="is not the tokenizer recorded in"):
        ViewerApp([run]).vocab(run)


def test_old_run_without_a_recorded_hash_still_loads(world):
    run = copy_run(world, "old")
    config = json.loads((run / "config.json").read_text())
    del config[HASH_KEY]
    (run / "config.json").write_text(json.dumps(config))
    shutil.copyfile(world["tok_b"], run / "tokenizer.json")
    assert load_run(run).tokenizer.get_vocab_size() == 257  # nothing recorded: nothing to check


def test_installed_demo_run_is_checked_against_shipped_sums(world, tmp_path):
    """artifacts/demo records no hash in its configs: an installed run is checked against its SHA256SUMS."""
    data = tmp_path / "data"  # install() reads only meta.json of the corpus built with the shipped tokenizer
    data.mkdir()
    shutil.copyfile(shipped.SHIPPED_DIR / "tokenizer.json", data / "tokenizer.json")
    for name in ("train.bin", "val.bin"):
        (data / name).write_bytes(b"\0\0")
    meta = {"content_hash": "x", "vocab_size": 2048, "tokens": {"train": 1, "val": 1}}
    (data / "meta.json").write_text(json.dumps(meta))
    run = shipped.install(shipped.SHIPPED_DIR, "sparse", tmp_path / "sparse", data)
    assert HASH_KEY not in json.loads((run / "config.json").read_text())
    load_run(run)
    shutil.copyfile(world["tok_b"], run / "tokenizer.json")
    with pytest.raises(UserError, match="SHA256SUMS"):
        load_run(run)


def test_shipped_run_without_its_sums_file_is_not_checked(world, tmp_path):
    run = copy_run(world, "shipped-moved")
    config = json.loads((run / "config.json").read_text())
    del config[HASH_KEY]
    config["shipped"] = {"from": str(tmp_path / "gone"), "sha256": "0" * 64}
    (run / "config.json").write_text(json.dumps(config))
    load_run(run)


# ---- item 7: circuit files -----------------------------------------------------------------------------


def bad_circuits(run: Path, cfg: dict) -> dict[str, tuple[object, str]]:
    """name -> (file content, expected words in the error)."""
    no_cfg = None
    return {
        "no nodes": (circuit_dict(run, cfg, nodes=[]), "non-empty list"),
        "nodes not a list": (circuit_dict(run, cfg, nodes="0.mlp.post_act.3"), "non-empty list"),
        "nodes missing": (circuit_dict(run, cfg, nodes=DROP), "lacks nodes"),
        "duplicate": (circuit_dict(run, cfg, nodes=["0.mlp.post_act.3", "0.mlp.post_act.3"]), "twice"),
        "duplicate head form": (circuit_dict(run, cfg, nodes=["0.attn.v.1", "0.attn.v.head0.ch1"]), "twice"),
        "duplicate, no config": (circuit_dict(run, no_cfg, nodes=["1.attn.q.0", "1.attn.q.0"]), "twice"),
        "non-string node": (circuit_dict(run, cfg, nodes=["0.mlp.post_act.3", 5]), "strings"),
        "unknown location": (circuit_dict(run, cfg, nodes=["0.attn.zz.1"]), "unknown location"),
        "index out of range": (circuit_dict(run, cfg, nodes=["0.mlp.post_act.99999"]), "out of range"),
        "layer out of range": (circuit_dict(run, cfg, nodes=["9.mlp.post_act.1"]), "unknown location"),
        "garbage name": (circuit_dict(run, cfg, nodes=["garbage"]), "garbage"),
        "bad form, no config": (circuit_dict(run, no_cfg, nodes=["0.mlp.post_act.x"]), "LAYER.LOCATION"),
        "unknown location, no config": (
            circuit_dict(run, no_cfg, nodes=["0.nope.1"]),
            "unknown node location",
        ),
        "target text": (circuit_dict(run, cfg, target_loss="abc"), "target_loss"),
        "target null": (circuit_dict(run, cfg, target_loss=None), "target_loss"),
        "target bool": (circuit_dict(run, cfg, target_loss=True), "target_loss"),
        "target negative": (circuit_dict(run, cfg, target_loss=-0.1), "target_loss"),
        "target zero": (circuit_dict(run, cfg, target_loss=0), "target_loss"),
        "target NaN": (circuit_dict(run, cfg, target_loss=float("nan")), "target_loss"),
        "bad model config": (circuit_dict(run, {**cfg, "n_layerz": 2}), "model.config"),
        "model not an object": (circuit_dict(run, cfg, model="run"), "'model' must be an object"),
        "not an object": ([1, 2], "not a circuit file"),
    }


@pytest.fixture(scope="module")
def circuit_files(world) -> dict[str, tuple[Path, str]]:
    cfg = json.loads((world["run"] / "config.json").read_text())["model"]
    folder = world["root"] / "circuits"
    folder.mkdir()
    files = {}
    for i, (name, (content, match)) in enumerate(bad_circuits(world["run"], cfg).items()):
        path = folder / f"bad{i}.circuit.json"
        path.write_text(json.dumps(content))  # NaN is written as the JSON extension NaN, which Python reads
        files[name] = (path, match)
    return files


CIRCUIT_CASES = list(bad_circuits(Path("r"), {}).keys())


@pytest.mark.parametrize("case", CIRCUIT_CASES)
def test_validate_refuses_bad_circuit_file(circuit_files, capsys, case):
    path, match = circuit_files[case]
    refused(["validate", "--circuit", str(path)], capsys, path.parent, match)


@pytest.mark.parametrize("case", CIRCUIT_CASES)
def test_export_refuses_bad_circuit_file(circuit_files, capsys, case):
    path, match = circuit_files[case]
    out = path.parent / "out.html"
    refused(["view", "--export", str(path), "--out", str(out)], capsys, path.parent, match)
    assert not out.exists()


def test_good_circuit_file_is_read_and_exported(world, tmp_path, capsys):
    cfg = json.loads((world["run"] / "config.json").read_text())["model"]
    path = tmp_path / "good.circuit.json"
    path.write_text(json.dumps(circuit_dict(world["run"], cfg, nodes=["0.attn.v.1", "0.attn.v.head0.ch2"])))
    assert read_circuit(path)["nodes"] == ["0.attn.v.1", "0.attn.v.head0.ch2"]
    assert run_cli(["view", "--export", str(path), "--out", str(tmp_path / "good.svg")]) == 0


# ---- item 7: frontier configs --------------------------------------------------------------------------


def frontier_config(data: Path, out: Path, **changes) -> dict:
    config = {
        "data": str(data),
        "out": str(out),
        "tasks": [TASK],
        "prune": {"steps": 3},
        "models": [{"name": "tiny", "preset": "tiny"}],
    }
    config.update(changes)
    return config


BAD_FRONTIER = {
    "prune key typo": ({"prune": {"stepz": 3}}, "stepz"),
    "prune value negative": ({"prune": {"steps": -3}}, "prune.steps"),
    "prune value text": ({"prune": {"budget": "2"}}, "prune.budget"),
    "held-out pairs negative": ({"prune": {"holdout_pairs": -1}}, "prune.holdout_pairs"),
    "held-out pairs text": ({"prune": {"holdout_pairs": "64"}}, "prune.holdout_pairs"),
    "k_coef zero": ({"prune": {"k_coef": 0}}, "prune.k_coef"),
    "k_coef text": ({"prune": {"k_coef": "1e-2"}}, "prune.k_coef"),
    "prune not an object": ({"prune": [3]}, "'prune'"),
    "top-level typo": ({"stepz": 3}, "stepz"),
    "sweep target negative": ({"sweep_targets": [0.3, -0.1]}, "sweep_targets"),
    "sweep target zero": ({"sweep_targets": [0]}, "sweep_targets"),
    "sweep targets not a list": ({"sweep_targets": 0.3}, "sweep_targets"),
    "target negative": ({"target_loss": -1}, "target_loss"),
    "target text": ({"target_loss": "0.1"}, "target_loss"),
    "model a string": ({"models": ["tiny"]}, "each model is an object"),
    "model a number": ({"models": [3]}, "each model is an object"),
    "model a list": ({"models": [["tiny"]]}, "each model is an object"),
    "name with slash": ({"models": [{"name": "a/b"}]}, "plain folder name"),
    "name escaping out": ({"models": [{"name": "../../escape"}]}, "plain folder name"),
    "name absolute": ({"models": [{"name": "/tmp/x"}]}, "plain folder name"),
    "name backslash": ({"models": [{"name": "a\\b"}]}, "plain folder name"),
    "name dot-dot": ({"models": [{"name": ".."}]}, "plain folder name"),
    "name hidden": ({"models": [{"name": ".hidden"}]}, "plain folder name"),
    "name empty": ({"models": [{"name": ""}]}, "plain folder name"),
    "name not a string": ({"models": [{"name": 5}]}, "each model needs a 'name'"),
    "names differ in case only": ({"models": [{"name": "A"}, {"name": "a"}]}, "unique"),
    "dense not a bool": ({"models": [{"name": "a", "dense": "yes"}]}, "'dense'"),
    "set not a list": ({"models": [{"name": "a", "set": "model.d_model=8"}]}, "'set'"),
    "unknown model key": ({"models": [{"name": "a", "steps": 3}]}, "each model needs"),
    "tasks not names": ({"tasks": [1]}, "'tasks'"),
    "unknown preset": ({"models": [{"name": "a", "preset": "nope"}]}, "unknown preset"),
    "bad set key": ({"models": [{"name": "a", "preset": "tiny", "set": ["train.stepz=3"]}]}, "stepz"),
    "run without weights": (
        {"models": [{"name": "a", "run": "/nonexistent/run"}]},
        "has no model.safetensors",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FRONTIER))
def test_frontier_refuses_bad_config(world, tmp_path, capsys, case):
    changes, match = BAD_FRONTIER[case]
    out = tmp_path / "out"
    config = tmp_path / "frontier.json"
    config.write_text(json.dumps(frontier_config(world["data_a"], out, **changes)))
    refused(["frontier", "--config", str(config)], capsys, tmp_path, match)
    assert not out.exists() and not (tmp_path / "escape").exists()


# ---- item 7: an edited checkpoint ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_run(world) -> Path:
    """A finished tiny run with its final weights removed, as if killed after its last checkpoint."""
    run = world["root"] / "trained"
    assert run_cli(["train", "--data", str(world["data_a"]), "--out", str(run), "--preset", "tiny",
                    *[a for s in FAST for a in ("--set", s)]]) == 0  # fmt: skip
    (run / "model.safetensors").unlink()
    return run


def edit_state(run: Path, edit) -> None:
    path = ckpt.latest_checkpoint(run) / "state.json"
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))


STATE_EDITS = {
    "step changed": (lambda s: s.update(step=s["step"] + 1), "was edited"),
    "rng changed": (lambda s: s["rng"].update(data=s["rng"]["torch_cpu"]), "was edited"),
    "tensor checksums removed": (lambda s: s.pop("sha256"), "was edited"),
    "state hash removed": (lambda s: s.pop("state_sha256"), "was edited"),
    "format unknown": (lambda s: s.update(format=99), "unknown format"),
}


@pytest.mark.parametrize("case", list(STATE_EDITS))
def test_edited_checkpoint_state_is_refused(world, killed_run, capsys, case):
    run = world["root"] / "edited" / case.replace(" ", "-")
    shutil.copytree(killed_run, run)
    edit, match = STATE_EDITS[case]
    edit_state(run, edit)
    refused(
        ["train", "--data", str(world["data_a"]), "--out", str(run), "--resume"], capsys, run.parent, match
    )


def test_unedited_and_format_1_checkpoints_resume(world, killed_run):
    run = world["root"] / "edited" / "format-1"
    shutil.copytree(killed_run, run)

    def as_format_1(state: dict) -> None:
        state.pop("state_sha256")
        state["format"] = 1

    edit_state(run, as_format_1)  # written before the state hash existed
    assert run_cli(["train", "--data", str(world["data_a"]), "--out", str(run), "--resume"]) == 0
    assert (run / "model.safetensors").is_file()


# ---- item 7: stale staging folders and vocabulary sizes ------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_staging(parent: Path, name: str, pid: int, host: str | None = None) -> Path:
    prefix = staging_prefix(name).replace(f"-{os.getpid()}.", f"-{pid}.")
    if host is not None:
        prefix = prefix.replace(socket.gethostname(), host)
    path = parent / f"{prefix}abcd1234.tmp"
    path.mkdir(parents=True)
    (path / "train.bin").write_bytes(b"\0" * 16)
    return path


def test_data_build_removes_staging_folders_of_killed_builds(world, tmp_path):
    out = tmp_path / "ds"
    stale = make_staging(tmp_path, "ds", dead_pid())
    running = make_staging(tmp_path, "ds", os.getppid())  # a build still running (pytest's parent)
    elsewhere = make_staging(tmp_path, "ds", dead_pid(), host="other-host")  # a shared disk's other machine
    other_output = make_staging(tmp_path, "ds2", dead_pid())  # another output's: left for its own next run
    build(out, world["tok_a"])
    assert not stale.exists()
    assert running.exists() and elsewhere.exists() and other_output.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.")) == sorted(
        [running.name, elsewhere.name]
    )


def test_staging_dir_of_any_command_cleans_its_own_leftovers(tmp_path):
    stale = make_staging(tmp_path, "imported", dead_pid())
    fresh = staging_dir(tmp_path / "imported", force=False, kind="import")
    assert not stale.exists() and fresh.name.startswith(staging_prefix("imported"))
    assert remove_stale_staging(tmp_path, "imported") == []  # our own live folder stays
    assert fresh.exists()


def test_checkpoint_save_removes_staging_folders_of_killed_saves(tmp_path):
    stale = make_staging(tmp_path / "run" / "checkpoints", "step_00000004", dead_pid())
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path / "run", model, opt, ["weight", "bias"], {"step": 6})
    assert not stale.exists()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step_00000006"]


@pytest.mark.parametrize("vocab", ["65537", "70000", "1000000000"])
def test_vocab_size_beyond_uint16_is_refused(tmp_path, capsys, vocab):
    args = ["data", "build", "--out", str(tmp_path / "ds"), "--no-stdlib", "--synthetic", "0.01"]
    refused([*args, "--vocab-size", vocab], capsys, tmp_path, "65536")
    assert list(tmp_path.iterdir()) == []
