"""Trainer: a tiny run learns, checkpoints round-trip, kill-and-resume is exact, DDP matches one process,
config overrides and every bad input give one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from cli_helpers import run_cli
from sparsecircuits import cli
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.data.synthetic import generate_programs
from sparsecircuits.data.tokenizer import EOT
from sparsecircuits.errors import UserError
from sparsecircuits.model.gpt import GPT
from sparsecircuits.run import load_run, load_tensors, save_model
from sparsecircuits.train import checkpoint as ckpt
from sparsecircuits.train.config import TrainConfig, build_config, parse_value
from sparsecircuits.train.evaluate import bigram_log_probs, pair_counts, validation_loss
from sparsecircuits.train.sparsity import kept_count, sparse_tensors
from sparsecircuits.train.trainer import Trainer, build_optimizer, clip_grad_rms_, prepare_run, train

VOCAB = 257
# Overrides on the tiny preset that keep each run to about a second.
FAST = [
    "train.steps=12",
    "train.batch_size=4",
    "train.ckpt_every=6",
    "train.eval_every=6",
    "train.log_every=3",
    "train.l0_target=0.3",
    "train.anneal_frac=0.5",
]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small dataset directory in the `data build` layout, made directly (about a second): a byte-level
    tokenizer (256 bytes + end of text = 257 tokens) and generated Python split 90/10."""
    out = tmp_path_factory.mktemp("data") / "ds"
    out.mkdir()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)
    tok = Tokenizer(models.BPE(vocab={**{ch: i for i, ch in enumerate(alphabet)}, EOT: 256}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    tok.save(str(out / "tokenizer.json"))
    docs = list(generate_programs(150_000, seed=0))
    ids = np.array([i for enc in tok.encode_batch(docs, add_special_tokens=False) for i in [*enc.ids, 256]])
    split = len(ids) * 9 // 10
    write_tokens(out / "train.bin", ids[:split])
    write_tokens(out / "val.bin", ids[split:])
    meta = {
        "content_hash": hashlib.sha256(ids.tobytes()).hexdigest()[:16],
        "vocab_size": VOCAB,
        "tokens": {"train": split, "val": len(ids) - split},
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture
def commands(monkeypatch):
    """Register train/sample in the CLI (a no-op once cli.py registers them itself)."""
    monkeypatch.setitem(cli.COMMANDS, "train", ("sparsecircuits.train.commands", "train"))
    monkeypatch.setitem(cli.COMMANDS, "sample", ("sparsecircuits.train.commands", "sample"))


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---- a whole run ---------------------------------------------------------------------------------


def test_tiny_run_lowers_loss_and_writes_run_dir(dataset, tmp_path):
    run = tmp_path / "run"
    last = train(dataset, run, preset="tiny", sets=["train.steps=30", "train.eval_every=30"], progress=False)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (run / f).is_file(), f
    recs = metrics(run)
    start, end = recs[0], recs[-1]
    assert start["step"] == 0 and start["bigram_val_loss"] > 0
    assert end["step"] == 30 and end == last
    assert end["val_loss"] < start["val_loss"] - 0.5
    for key in ("tokens", "loss", "lr", "l0_frac", "nonzero", "tokens_per_s", "grad_rms"):
        assert key in end
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["content_hash"] and config["model"]["vocab_size"] == VOCAB
    assert config["bigram_val_loss"] == start["bigram_val_loss"]
    loaded = load_run(run)
    assert not loaded.model.training
    # Every sparsified tensor of the saved model is at exactly the target count.
    for t in sparse_tensors(loaded.model):
        assert int(torch.count_nonzero(t.param)) <= kept_count(0.25, t.param.numel())
    assert end["nonzero"] == sum(int(torch.count_nonzero(t.param)) for t in sparse_tensors(loaded.model))
    assert validation_loss(loaded.model, dataset, n_batches=2, batch_size=8) == pytest.approx(
        end["val_loss"], rel=0.2
    )


def test_train_step_exact_counts_and_dense_moments(dataset, tmp_path):
    setup = prepare_run(
        dataset, tmp_path / "r", preset="tiny", sets=["train.steps=4", "train.anneal_frac=0.25"]
    )
    trainer = Trainer(setup, progress=False)
    trainer.train_step(0)  # anneal over 1 step: the target applies after step 0
    frac = trainer.fractions(0)[0]
    assert frac == 0.25
    for t in trainer.sparsifier.tensors:
        assert int(torch.count_nonzero(t.param)) == kept_count(frac, t.param.numel()) or t.name.endswith(
            "bias"
        )
        if t.name.endswith("mlp.c_fc.weight"):
            assert int((t.param != 0).sum(1).min()) >= 4  # min-fan
            # Adam moments stay dense: the second moment is nonzero where the weight was zeroed.
            v = trainer.opt.state[t.param]["exp_avg_sq"]
            assert bool((v[t.param == 0] > 0).any())


def test_paper_quirk_schedule_in_trainer(dataset, tmp_path):
    sets = [
        "train.steps=8",
        "train.sparsity_schedule=paper_quirk",
        "train.quirk_start_frac=0.5",
        "train.quirk_ramp_steps=2",
        "train.l0_target=0.2",
    ]
    trainer = Trainer(prepare_run(dataset, tmp_path / "r", preset="tiny", sets=sets), progress=False)
    assert trainer.fractions(3) == (0.2, 1.0)  # matrices at the target, embeddings and biases still dense
    assert trainer.fractions(4) == (0.2, pytest.approx(0.6))
    assert trainer.fractions(5) == (0.2, 0.2)
    for step in range(4):
        trainer.train_step(step)
    wte = trainer.model.transformer.wte.weight
    assert int(torch.count_nonzero(wte)) == wte.numel()


def test_clip_grad_rms():
    p = torch.nn.Parameter(torch.zeros(4, 25))
    p.grad = torch.full((4, 25), 3.0)
    rms = clip_grad_rms_([p], 1.0)
    assert float(rms) == pytest.approx(3.0)
    assert p.grad.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    p.grad = torch.full((4, 25), 0.5)
    clip_grad_rms_([p], 1.0)
    assert torch.allclose(p.grad, torch.full((4, 25), 0.5))  # below the limit: untouched


def test_weight_decay_only_on_matrices(dataset, tmp_path):
    model_cfg, train_cfg = build_config("tiny", 512, sets=["model.bigram_table=true"])
    opt, names = build_optimizer(GPT(model_cfg), train_cfg, torch.device("cpu"))
    decayed = names[: len(opt.param_groups[0]["params"])]
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert "lm_head.weight" in decayed and "transformer.h.0.mlp.c_fc.weight" in decayed
    assert not any(n.endswith("bias") or "ln_" in n or n == "bigram_table" for n in decayed)


# ---- checkpoints and resume ----------------------------------------------------------------------


def test_checkpoint_round_trip(dataset, tmp_path):
    setup = prepare_run(dataset, tmp_path / "r", preset="tiny", sets=["train.steps=4"])
    a = Trainer(setup, progress=False)
    for s in range(3):
        a.train_step(s)
        a.step += 1
    a.save_checkpoint()
    path = ckpt.latest_checkpoint(tmp_path / "r")
    assert path.name == "step_00000003"
    b = Trainer(setup, progress=False)
    b._load(path)
    assert b.step == 3
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a.opt.state[p][key], b.opt.state[q][key]), (n, key)
    assert torch.equal(a.data_gen.get_state(), b.data_gen.get_state())


def test_kill_and_resume_is_bit_identical(dataset, tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(dataset, straight, preset="tiny", sets=FAST, progress=False)

    original = Trainer.train_step

    def dies_at_step_8(self, step):
        if step == 8:
            raise RuntimeError("killed")
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies_at_step_8)
    with pytest.raises(RuntimeError, match="killed"):
        train(dataset, killed, preset="tiny", sets=FAST, progress=False)
    monkeypatch.undo()
    assert not (killed / "model.safetensors").exists()
    assert ckpt.latest_checkpoint(killed).name == "step_00000006"

    train(dataset, killed, resume=True, progress=False)
    a, b = tensors_of(straight / "model.safetensors"), tensors_of(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in metrics(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # records after the checkpoint were replaced
    assert metrics(killed)[-1]["val_loss"] == metrics(straight)[-1]["val_loss"]
    # Resuming a finished run is a no-op; one killed after its last checkpoint just writes the model.
    assert train(dataset, killed, resume=True, progress=False)["already_complete"]
    (killed / "model.safetensors").unlink()
    assert train(dataset, killed, resume=True, progress=False)["step"] == 12
    assert torch.equal(tensors_of(killed / "model.safetensors")["lm_head.weight"], a["lm_head.weight"])


def test_non_finite_loss_stops_and_keeps_last_checkpoint(dataset, tmp_path, monkeypatch):
    original = Trainer.train_step

    def nan_from_step_7(self, step):
        loss, rms = original(self, step)
        return (loss * float("nan") if step >= 7 else loss), rms

    monkeypatch.setattr(Trainer, "train_step", nan_from_step_7)
    with pytest.raises(UserError, match="non-finite|became nan") as e:
        train(dataset, tmp_path / "r", preset="tiny", sets=FAST, progress=False)
    assert "step_00000006" in str(e.value)
    assert ckpt.latest_checkpoint(tmp_path / "r").name == "step_00000006"
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_corrupt_checkpoint_is_a_user_error(dataset, tmp_path, commands):
    run = tmp_path / "r"
    train(dataset, run, preset="tiny", sets=FAST + ["train.keep_checkpoints=1"], progress=False)
    path = ckpt.latest_checkpoint(run)
    opt_file = path / "optimizer.safetensors"
    opt_file.write_bytes(opt_file.read_bytes()[:100])  # truncated
    with pytest.raises(UserError, match="corrupt or truncated"):
        prepare_and_load(dataset, run)
    assert run_cli(["train", "--data", str(dataset), "--out", str(run), "--resume"]) == 2
    (path / "state.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        prepare_and_load(dataset, run)


def prepare_and_load(dataset: Path, run: Path) -> Trainer:
    return Trainer(prepare_run(dataset, run, resume=True), progress=False)


# ---- DDP -----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, dataset: str, out: str, sets: list[str]) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    train(dataset, out, preset="tiny", sets=sets, device="cpu", progress=False)


def test_ddp_two_processes_match_one(dataset, tmp_path):
    """2 gloo processes at global batch 8 give the weights of 1 process at batch 8, to float tolerance.

    The all-reduce sums in a different order than one process (differences ~1e-9), and top-k selection
    (weights and AbsTopK activations) is discontinuous, so a rare near-tie can flip and nudge weights by
    ~1e-4 after a few steps. Bugs (wrong data share, gradients not averaged) give differences ~lr = 0.1.
    Uses the paper's AdamW eps = 0.1: with eps ~1e-8 Adam maps near-zero gradients to updates of +-lr and
    amplifies the rounding differences, so such runs agree statistically but not entry by entry."""
    import torch.multiprocessing as mp

    sets = FAST + ["train.steps=8", "train.batch_size=8", "train.eps=0.1", "train.lr=0.1"]
    train(dataset, tmp_path / "one", preset="tiny", sets=sets, progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(dataset), str(tmp_path / "two"), sets), nprocs=2)
    a, b = (
        tensors_of(tmp_path / "one" / "model.safetensors"),
        tensors_of(tmp_path / "two" / "model.safetensors"),
    )
    total = flipped = 0
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-3, k
        total += a[k].numel()
        flipped += int(((a[k] != 0) != (b[k] != 0)).sum())
    assert flipped <= 1e-3 * total  # sparsity masks agree (up to a rare near-tie)
    la, lb = metrics(tmp_path / "one")[-1], metrics(tmp_path / "two")[-1]
    assert la["val_loss"] == pytest.approx(lb["val_loss"], abs=1e-4)
    assert la["loss"] == pytest.approx(lb["loss"], abs=1e-4)


# ---- config and --set ----------------------------------------------------------------------------


def test_build_config_presets_dense_and_overrides():
    model, tr = build_config("demo", 2048)
    assert model.vocab_size == 2048 and tr.l0_target < 1
    model, tr = build_config("demo", 2048, dense=True)
    assert tr.l0_target == 1.0 and model.afrac < 1  # --dense keeps AbsTopK
    model, tr = build_config("paper", 2048)
    assert (model.n_layer, model.d_model, model.d_head) == (8, 2048, 16)
    model, tr = build_config(
        "tiny",
        512,
        sets=[
            "model.d_model=64",
            "train.lr=0.02",
            "train.betas=0.8,0.99",
            "model.sink=true",
            "train.l0_target=1/1000",
            "model.afrac_locs=mlp.post_act,attn.q",
            "train.steps=1e3",
        ],
    )
    assert model.d_model == 64 and model.sink is True and model.afrac_locs == ("mlp.post_act", "attn.q")
    assert tr.lr == 0.02 and tr.betas == (0.8, 0.99) and tr.l0_target == 0.001 and tr.steps == 1000
    assert TrainConfig.from_dict(tr.to_dict()) == tr


def test_every_preset_is_valid_and_listed_in_the_cli():
    from sparsecircuits.bridges.commands import train_cmd as bridges_train
    from sparsecircuits.experiments.commands import demo
    from sparsecircuits.train.commands import train as train_cmd
    from sparsecircuits.train.config import PRESETS

    for command in (train_cmd, bridges_train, demo):  # the choices come from PRESETS itself
        (option,) = [p for p in command.params if p.name == "preset"]
        assert tuple(option.type.choices) == tuple(PRESETS)
    for name in PRESETS:
        model, tr = build_config(name, 2048)
        assert model.n_head * model.d_head == model.d_model and tr.steps > 0


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr"], "KEY=VALUE"),
        (["lr=0.1"], "KEY=VALUE"),
        (["train.lrr=0.1"], "did you mean train.lr"),
        (["model.n_layers=3"], "did you mean model.n_layer"),
        (["train.steps=abc"], "expected an integer"),
        (["train.steps=1.5"], "expected an integer"),
        (["model.sink=maybe"], "true or false"),
        (["train.l0_target=0"], "l0_target"),
        (["train.l0_target=1.5"], "l0_target"),
        (["train.sparsity_schedule=buggy"], "sparsity_schedule"),
        (["model.afrac=0.01"], "AbsTopK keeps 0"),
        (["model.vocab_size=100"], "tokenizer"),
        (["train.betas=0.9"], "2 comma-separated"),
    ],
)
def test_bad_overrides_are_user_errors(sets, message):
    with pytest.raises(UserError, match=message):
        build_config("tiny", 512, sets=sets)


def test_parse_value_optional():
    assert parse_value("none", int | None) is None
    assert parse_value("3", int | None) == 3


# ---- command line --------------------------------------------------------------------------------


def test_cli_errors(dataset, tmp_path, commands, capsys):
    data, out = str(dataset), str(tmp_path / "run")
    assert run_cli(["train", "--data", str(tmp_path / "nope"), "--out", out]) == 2
    assert "data directory not found" in capsys.readouterr().err
    assert run_cli(["train", "--data", str(tmp_path), "--out", out]) == 2  # exists but not a dataset
    assert run_cli(["train", "--data", data, "--out", out, "--set", "train.l0_target=2"]) == 2
    assert run_cli(["train", "--data", data, "--out", out, "--set", "model.vocab_size=100"]) == 2
    assert run_cli(["train", "--data", data, "--out", out, "--set", "model.afrac=0.001"]) == 2
    assert run_cli(["train", "--data", data, "--out", out, "--preset", "huge"]) == 2
    assert run_cli(["train", "--data", data, "--out", out, "--resume"]) == 2  # nothing to resume
    assert not Path(out).exists()  # no error above left anything behind
    args = ["train", "--data", data, "--out", out, "--preset", "tiny", "--quiet", "--set", "train.steps=3"]
    assert run_cli(args) == 0
    assert run_cli(args) == 2  # exists: needs --force or --resume
    assert "already exists" in capsys.readouterr().err
    assert run_cli([*args, "--resume"]) == 2  # --resume takes no --preset/--set
    assert run_cli([*args, "--force"]) == 0
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    (not_a_run / "keep.txt").write_text("x")
    assert run_cli(["train", "--data", data, "--out", str(not_a_run), "--force"]) == 2  # never deleted
    assert (not_a_run / "keep.txt").exists()


def test_tokenizer_vocab_mismatch_on_load(dataset, tmp_path):
    run = tmp_path / "run"
    train(dataset, run, preset="tiny", sets=["train.steps=2"], progress=False)
    config = json.loads((run / "config.json").read_text())
    config["model"]["vocab_size"] = 1024
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="vocab"):
        load_run(run)


def test_load_run_errors(dataset, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_run(tmp_path / "missing")
    run = tmp_path / "run"
    train(dataset, run, preset="tiny", sets=["train.steps=2"], progress=False)
    model_file = run / "model.safetensors"
    good = model_file.read_bytes()
    model_file.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_run(run)
    model_file.unlink()
    with pytest.raises(UserError, match="--resume"):
        load_run(run)
    (run / "config.json").write_text("[]")
    with pytest.raises(UserError, match="model"):
        load_run(run)


def test_save_model_round_trip(tmp_path):
    model_cfg, _ = build_config("tiny", 512)
    torch.manual_seed(0)
    model = GPT(model_cfg)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_tensors(tmp_path / "m.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded[k])


def test_sample_command(dataset, tmp_path, commands, capsys):
    run = tmp_path / "run"
    train(dataset, run, preset="tiny", sets=["train.steps=2"], progress=False)
    args = ["sample", "--model", str(run), "--prompt", "def f(x):", "--max-new-tokens", "8", "--seed", "1"]
    assert run_cli(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("def f(x):")
    assert run_cli(args) == 0
    assert capsys.readouterr().out == first  # seeded
    assert run_cli(["sample", "--model", str(tmp_path / "nope")]) == 2


# ---- bigram baseline -----------------------------------------------------------------------------


def test_bigram_baseline_counts_and_smoothing():
    tokens = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]).numpy()
    counts = pair_counts(tokens, 3, chunk=3)  # chunked counting joins chunk boundaries
    assert counts.tolist() == [[0, 3, 0], [0, 0, 2], [2, 0, 0]]
    logp = bigram_log_probs(counts, alpha=0.1)
    assert torch.allclose(torch.tensor(logp).exp().sum(1), torch.ones(3, dtype=torch.float64))
    assert logp[0, 1] > -0.1  # a deterministic successor is nearly certain
