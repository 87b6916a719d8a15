"""Bridges: hybrid passes on the one forward, the loss terms, joint training, steering, files and CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from cli_helpers import run_cli
from sparsecircuits import cli
from sparsecircuits.bridges.config import BridgeConfig, build_bridge_config, split_sets
from sparsecircuits.bridges.files import check_same_vocab, load_bridged
from sparsecircuits.bridges.losses import bridge_losses, hybrid_logits, kl_per_token, nmse, read_sites
from sparsecircuits.bridges.modules import BridgedModel, Bridges, bridge_sites
from sparsecircuits.bridges.steer import (
    Scaling,
    aligned_delta,
    dense_edits,
    location_nodes,
    pick_node,
    residual_read_nodes,
    resolve_node,
    steer,
    target_probs,
)
from sparsecircuits.bridges.train import bridged_step, build_bridged_optimizer, train_bridges
from sparsecircuits.circuits.means import model_content_hash
from sparsecircuits.data.build import BuildConfig, build_dataset
from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT, ModelConfig
from sparsecircuits.run import load_run, load_tensors
from sparsecircuits.tasks.evaluate import TaskBatch
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS
from sparsecircuits.train.config import TrainConfig
from sparsecircuits.train.schedules import fractions
from sparsecircuits.train.sparsity import WeightSparsifier, kept_count
from sparsecircuits.train.trainer import train

V = 32
BASE = dict(vocab_size=V, n_layer=2, n_head=2, d_head=8, n_ctx=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and much faster than on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_pair(seed: int = 0, **sparse_kw) -> tuple[BridgedModel, GPT]:
    """A frozen dense model (d_model 16, no AbsTopK, peaked logits) and a sparse one (d_model 24) with bridges."""
    torch.manual_seed(seed)
    dense = GPT(ModelConfig(**BASE, d_model=16, d_mlp=64, afrac=1.0)).eval().requires_grad_(False)
    with torch.no_grad():
        dense.lm_head.weight.mul_(50)  # a near-uniform teacher would make the KL terms trivially small
    sparse = GPT(ModelConfig(**{**BASE, "d_model": 24, "d_mlp": 96, **sparse_kw}))
    return BridgedModel(sparse, Bridges.for_models(sparse, dense)), dense


def tokens(seed: int = 0, batch: int = 4, length: int = 17) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- modules -------------------------------------------------------------------------------------


def test_sites_shapes_and_encoder_sparsity():
    model, dense = tiny_pair()
    b = model.bridges
    assert b.sites == bridge_sites(2) == ["0.resid_in", "0.resid_mid", "1.resid_in", "1.resid_mid"]
    assert (b.d_dense, b.d_sparse, b.k) == (16, 24, 6)
    h = torch.randn(3, 5, 16)
    z = b.encode(2, h)
    assert z.shape == (3, 5, 24) and int((z != 0).sum(-1).max()) <= 6
    assert b.decode(2, z).shape == (3, 5, 16)
    assert sorted(b.state_dict())[:2] == ["decoders.0.bias", "decoders.0.weight"]


# ---- hybrid passes on the one forward --------------------------------------------------------------


@pytest.mark.parametrize("which", ["sparse", "dense"])
def test_hybrid_pass_without_a_switch_equals_the_plain_pass(which):
    model, dense = tiny_pair()
    net = model.sparse if which == "sparse" else dense
    idx = tokens()[:, :-1]
    with torch.no_grad():
        plain = net(idx)
        read, acts = read_sites(net, idx, model.bridges.sites)
        assert torch.equal(read, plain)
        for site, h in zip(model.bridges.sites, acts, strict=True):
            # "switching" to the model's own activation is no switch at all: bit-identical logits
            assert torch.equal(hybrid_logits(net, idx, site, h.clone()), plain)


def test_hybrid_pass_runs_the_suffix_on_the_replacement():
    model, dense = tiny_pair()
    idx = tokens()[:, :-1]
    sites = model.bridges.sites
    with torch.no_grad():
        _, h_s = read_sites(model.sparse, idx, sites)
        _, h_d = read_sites(dense, idx, sites)
        plain = model.sparse(idx)
        hybrid = hybrid_logits(model.sparse, idx, sites[1], model.bridges.encode(1, h_d[1]))
        assert not torch.allclose(hybrid, plain)
        # the suffix sees the replacement: reading the next site inside the hybrid pass differs from h_s
        with model.sparse.hooks({sites[1]: lambda _x: model.bridges.encode(1, h_d[1])}):
            _, inside = read_sites(model.sparse, idx, sites)
        assert torch.equal(inside[0], h_s[0]) and not torch.allclose(inside[2], h_s[2])


# ---- loss terms ------------------------------------------------------------------------------------


def test_nmse_and_kl_definitions():
    t = torch.randn(4, 6, 8)
    assert float(nmse(t, t)) == 0.0
    mean = t.reshape(-1, 8).mean(0).expand_as(t)
    assert float(nmse(mean, t)) == pytest.approx(1.0, rel=1e-5)
    p = torch.randn(4, 6, 8)
    assert float(nmse(3 * p, 3 * t)) == pytest.approx(float(nmse(p, t)), rel=1e-5)  # scale-free
    logits = torch.randn(3, 5, V)
    assert float(kl_per_token(logits.log_softmax(-1), logits)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(3, 5, V)
    ref = logits.log_softmax(-1)
    manual = (ref.exp() * (ref - other.log_softmax(-1))).sum(-1).mean()
    assert float(kl_per_token(ref, other)) == pytest.approx(float(manual), rel=1e-5)


def test_loss_terms_are_finite_and_zero_coefficients_skip_terms():
    model, dense = tiny_pair()
    w = tokens()
    terms = bridge_losses(model, dense, w[:, :-1], w[:, 1:], BridgeConfig())
    for name in ("nmse_enc", "nmse_dec", "kl_ds", "kl_sd"):
        assert terms[name].shape == (4,) and torch.isfinite(terms[name]).all()
    expected = terms["lm"] + sum(terms[k].sum() for k in ("nmse_enc", "nmse_dec", "kl_ds", "kl_sd"))
    assert float(terms["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    only_lm = bridge_losses(
        model, dense, w[:, :-1], w[:, 1:], BridgeConfig(coef_nmse=0, coef_kl_ds=0, coef_kl_sd=0)
    )
    assert set(only_lm) == {"lm", "loss"} and torch.equal(only_lm["loss"], terms["lm"])


def test_gradients_reach_sparse_model_and_bridges_but_not_dense():
    model, dense = tiny_pair()
    w = tokens()
    bridge_losses(model, dense, w[:, :-1], w[:, 1:], BridgeConfig(coef_lm=0, coef_nmse=0, coef_kl_ds=0))[
        "loss"
    ].backward()
    # KL s->d alone: through the frozen dense suffix into the decoders and the sparse prefix
    assert all(p.grad is None for p in dense.parameters())
    assert model.bridges.decoders[0].weight.grad.abs().sum() > 0
    assert model.sparse.transformer.wte.weight.grad.abs().sum() > 0
    assert model.bridges.encoders[0].weight.grad is None


def test_every_loss_term_decreases_in_a_short_joint_run():
    model, dense = tiny_pair()
    cfg = TrainConfig(steps=30, lr=0.01, eps=1e-8, l0_target=0.5, warmup_frac=0.0, anneal_frac=0.5)
    opt, names = build_bridged_optimizer(model, cfg, torch.device("cpu"))
    assert len(names) == sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sparsifier = WeightSparsifier(model.sparse, cfg.min_fan)
    w = tokens(length=17)
    history = []
    for step in range(cfg.steps):
        terms, grad_rms = bridged_step(model, dense, opt, sparsifier, w, BridgeConfig(), cfg, step)
        assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(grad_rms)
        history.append({k: float(v) for k, v in terms.items()})
    first, last = history[0], history[-1]
    for name in ("lm", "nmse_enc", "nmse_dec", "kl_ds", "kl_sd", "loss"):
        assert last[name] < first[name], (name, first[name], last[name])
    # the sparse model sits at the final L0 fraction; the bridges stay dense
    assert fractions(cfg, cfg.steps - 1)[0] == 0.5
    for t in sparsifier.tensors:
        assert int(torch.count_nonzero(t.param)) <= kept_count(0.5, t.param.numel())
    assert all(
        int(torch.count_nonzero(p)) == p.numel()
        for p in model.bridges.encoders[0].parameters()
        if p.ndim == 2
    )


# ---- steering ----------------------------------------------------------------------------------------


def test_aligned_delta_pins_the_shared_prefix_and_aligns_the_rest_from_the_end():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(
        aligned_delta(a, torch.tensor([1.0, 2.0, 5.0, 9.0]), prefix=2), torch.tensor([0, 0, 2.0, 5.0])
    )
    # counterfactual one token longer: the cue position maps to the partner shifted by one
    cf = torch.tensor([1.0, 2.0, 7.0, 8.0, 14.0])
    assert torch.equal(aligned_delta(a, cf, prefix=2), torch.tensor([0, 0, 5.0, 10.0]))
    # shorter counterfactual: positions without a partner get 0
    assert torch.equal(aligned_delta(a, torch.tensor([1.0, 6.0]), prefix=1), torch.tensor([0, 0, 0, 2.0]))


def toy_task_batch(pairs: int = 3, equal: bool = False) -> TaskBatch:
    """Pairs that share a prefix and a suffix and differ in a one- or two-token cue; right-padded."""
    gen = torch.Generator().manual_seed(1)
    rows, correct = [], []
    for i in range(pairs):
        prefix, suffix = torch.randint(0, V, (4,), generator=gen), torch.randint(0, V, (3,), generator=gen)
        cue_neg = torch.tensor([5, 6]) if i % 2 and not equal else torch.tensor([6])
        rows += [torch.cat([prefix, torch.tensor([7]), suffix]), torch.cat([prefix, cue_neg, suffix])]
        correct += [1, 2]
    t = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        t[i, : len(r)] = r
    last = torch.tensor([len(r) - 1 for r in rows])
    correct_t = torch.tensor(correct)
    return TaskBatch(t, last, correct_t, 3 - correct_t, torch.arange(len(rows)) // 2)


RMS = {"sparse": [1.5, 1.2, 0.9, 0.7], "dense": [2.0, 2.5, 3.0, 3.5]}


def test_strength_zero_changes_nothing_and_strength_one_does():
    model, dense = tiny_pair()
    batch = toy_task_batch()
    node = resolve_node("1.attn.act_in.5", model.sparse.cfg)
    result = steer(model.sparse, dense, model.bridges, batch, node, RMS, [0.0, 0.5, 1.0])
    none = result.levels["none"]
    for name in ("steer", "random", "all_channels"):
        assert torch.equal(result.curves[name][0], none), name
    c = result.cases
    assert torch.equal(none, target_probs(dense, c.tokens, c.last, c.target))
    assert torch.equal(
        result.curves["sparse_steer"][0], target_probs(model.sparse, c.tokens, c.last, c.target)
    )
    assert c.delta.abs().sum() > 0 and not torch.equal(result.curves["steer"][2], none)
    data = result.to_json()
    assert (
        data["n_cases"] == 6 and data["equal_length_pairs"] == 2 and len(data["p_target_mean"]["steer"]) == 3
    )
    assert torch.equal(c.target, batch.correct[c.counterfactual])


def test_all_channels_through_an_identity_bridge_reproduce_the_counterfactual():
    """Same model on both sides and g_i = identity: patching every channel of a site at strength 1 is running
    the counterfactual prompt (equal-length pairs), which checks the alignment and the edit end to end."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**BASE, d_model=16, d_mlp=64)).eval()
    bridges = Bridges.for_models(model, model)
    with torch.no_grad():
        for dec in bridges.decoders:
            dec.weight.copy_(torch.eye(16))
    batch = toy_task_batch(4, equal=True)
    for name in ("0.mlp.act_in.3", "1.attn.act_in.2"):
        node = resolve_node(name, model.cfg)
        result = steer(model, model, bridges, batch, node, RMS, [0.0, 1.0])
        patched, target = result.curves["all_channels"][1], result.levels["dense_on_counterfactual"]
        assert torch.allclose(patched, target, rtol=1e-4, atol=1e-7), name
        assert not torch.allclose(result.levels["none"], target)


def test_edit_is_delta_times_decoder_column_and_random_has_the_same_norm():
    model, _ = tiny_pair()
    node = resolve_node("0.mlp.act_in.3", model.sparse.cfg)
    assert (node.site, node.site_index) == ("0.resid_mid", 1)
    delta = torch.randn(4, 7)
    scaling = Scaling(sparse_rms=1.2, dense_rms=2.5, gain=0.8)
    edit, random = dense_edits(delta, model.bridges, node, scaling, seed=3)
    column = model.bridges.decoders[1].weight[:, 3].detach()
    assert torch.allclose(edit, (delta * 1.2 / 0.8)[..., None] * column)
    assert torch.allclose(random.norm(dim=-1), edit.norm(dim=-1), rtol=1e-5, atol=1e-6)
    assert Scaling(1.2, 2.5, 0.8, "dense-over-sparse").factor == pytest.approx(2.5 / 0.8)


def test_node_choice_takes_the_residual_read_with_the_largest_delta():
    model, _ = tiny_pair()
    batch = toy_task_batch()
    cfg = model.sparse.cfg
    names = ["0.mlp.post_act.3", "1.attn.act_in.5", "0.mlp.act_in.2", "1.attn.q.4"]
    nodes = residual_read_nodes(names, cfg)
    assert [n.name for n in nodes] == ["1.attn.act_in.5", "0.mlp.act_in.2"]
    node, size = pick_node(model.sparse, batch, nodes, RMS)
    assert node in nodes and size > 0
    # over a whole location, the chosen channel has the largest pre-norm delta at the last token
    everyone = location_nodes("1.attn.act_in", cfg)
    assert len(everyone) == cfg.d_model
    best, best_size = pick_node(model.sparse, batch, everyone, RMS)
    for other in everyone[:5]:
        assert pick_node(model.sparse, batch, [other], RMS)[1] <= best_size + 1e-12
    with pytest.raises(UserError, match="no residual-read node"):
        pick_node(model.sparse, batch, residual_read_nodes(["0.mlp.post_act.3"], cfg), RMS)


# ---- bad input ---------------------------------------------------------------------------------------


def test_bad_input_is_a_user_error():
    model, dense = tiny_pair()
    cfg = model.sparse.cfg
    other_vocab = GPT(ModelConfig(**{**BASE, "vocab_size": V + 1, "d_model": 16, "d_mlp": 64}))
    with pytest.raises(UserError, match="vocabulary mismatch"):
        Bridges.for_models(model.sparse, other_vocab)
    deeper = GPT(ModelConfig(**{**BASE, "n_layer": 3, "d_model": 16, "d_mlp": 64}))
    with pytest.raises(UserError, match="layer mismatch"):
        Bridges.for_models(model.sparse, deeper)
    with pytest.raises(UserError, match="not a residual read"):
        resolve_node("0.mlp.post_act.3", cfg)
    with pytest.raises(UserError, match="not a residual read"):
        resolve_node("1.attn.resid_delta.3", cfg)
    with pytest.raises(UserError, match="out of range"):
        resolve_node("1.attn.act_in.24", cfg)
    with pytest.raises(UserError, match="unknown location"):
        resolve_node("7.attn.act_in.0", cfg)
    with pytest.raises(UserError):
        resolve_node("nonsense", cfg)
    concat = ModelConfig(**{**BASE, "d_model": 24, "d_mlp": 96, "pos_emb": "concat", "d_pos_emb": 4})
    with pytest.raises(UserError, match="position channel"):
        resolve_node("0.attn.act_in.25", concat)
    with pytest.raises(UserError, match="unknown key"):
        build_bridge_config(["bridge.coef_kl=1"])
    with pytest.raises(UserError, match=">= 0"):
        build_bridge_config(["bridge.coef_nmse=-1"])
    assert split_sets(["bridge.afrac=0.5", "train.lr=0.1"]) == (["bridge.afrac=0.5"], ["train.lr=0.1"])
    assert build_bridge_config(["bridge.afrac=0.5"]).encoder_k(24) == 12
    a = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    b = Tokenizer(models.WordLevel({"a": 0, "c": 1}, unk_token="a"))
    c = Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))
    check_same_vocab(a, a, "x", "y")
    with pytest.raises(UserError, match="tokenizer mismatch"):
        check_same_vocab(a, b, "x", "y")
    with pytest.raises(UserError, match="vocabulary mismatch"):
        check_same_vocab(a, c, "x", "y")


# ---- end to end: bridges train and bridges steer on disk ------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bridges-data") / "ds"
    build_dataset(
        BuildConfig(
            out=out,
            synthetic_mb=0.05,
            no_stdlib=True,
            vocab_size=512,
            val_fraction=0.1,
            required_tokens=REQUIRED_TOKENS,
            progress=False,
        )
    )
    return out


SMALL = ["model.d_model=16", "model.d_mlp=64", "model.n_ctx=256"]  # task prompts need a long context


@pytest.fixture(scope="module")
def dense_run(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bridges-dense") / "dense"
    sets = [*SMALL, "model.afrac=1", "train.steps=3", "train.batch_size=2", "train.eval_batches=1"]
    train(dataset, out, preset="tiny", dense=True, sets=sets, progress=False)
    return out


BRIDGE_SETS = [
    *SMALL,
    "model.d_model=24",
    "train.steps=4",
    "train.batch_size=2",
    "train.eval_every=2",
    "train.ckpt_every=2",
    "train.log_every=1",
    "train.eval_batches=1",
    "train.eval_batch_size=2",
    "bridge.coef_nmse=0.5",
]


@pytest.fixture
def commands(monkeypatch):
    """Register the bridges group (a no-op once cli.py registers it itself)."""
    monkeypatch.setitem(cli.COMMANDS, "bridges", ("sparsecircuits.bridges.commands", "bridges"))


def test_train_resume_and_steer_on_disk(dataset, dense_run, tmp_path, commands, capsys):
    out = tmp_path / "bridged"
    args = ["bridges", "train", "--dense", str(dense_run), "--data", str(dataset), "--out", str(out)]
    args += ["--preset", "tiny", "--quiet", *[x for s in BRIDGE_SETS for x in ("--set", s)]]
    assert run_cli(args) == 0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl"):
        assert (out / f).is_file(), f
    assert load_run(out).model.cfg.d_model == 24  # a normal run directory of the sparse model
    meta = json.loads((out / "bridges.json").read_text())
    assert meta["sites"] == bridge_sites(2) and (meta["d_dense"], meta["d_sparse"], meta["k"]) == (16, 24, 6)
    assert meta["config"]["coef_nmse"] == 0.5 and len(meta["reference_rms"]["dense"]) == 4
    assert meta["dense"]["content_hash"] == model_content_hash(load_run(dense_run).model)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    for key in ("loss", "lm", "nmse_enc", "nmse_dec", "kl_ds", "kl_sd", "l0_frac", "grad_rms"):
        assert key in recs[-1], key
    assert len(recs[-1]["val_kl_ds_sites"]) == 4 and recs[-1]["val_loss"] > 0

    # kill after the step-2 checkpoint, resume: bit-identical final weights
    final = {f: load_tensors(out / f) for f in ("model.safetensors", "bridges.safetensors")}
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    (out / "model.safetensors").unlink()
    resume = ["bridges", "train", "--data", str(dataset), "--out", str(out), "--resume", "--quiet"]
    assert run_cli(resume) == 0
    for f, tensors in final.items():
        again = load_tensors(out / f)
        assert all(torch.equal(again[k], v) for k, v in tensors.items()), f
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [
        0,
        1,
        2,
        3,
        4,
    ]

    bridged = load_bridged(out)
    assert bridged.bridges.k == 6 and bridged.dense.model.cfg.d_model == 16

    capsys.readouterr()
    steer_args = ["bridges", "steer", "--bridged", str(out), "--node", "1.attn.act_in.5"]
    steer_args += ["--task", "single_double_quote", "--n-pairs", "2", "--strengths", "0,0.5,1"]
    steer_args += ["--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "s.png")]
    assert run_cli(steer_args) == 0
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["site"] == "1.resid_in" and data["n_cases"] == 4 and data["strengths"] == [0.0, 0.5, 1.0]
    assert data["p_target_mean"]["steer"][0] == data["p_target_mean"]["none"]
    assert data["p_target_mean"]["all_channels"][0] == data["p_target_mean"]["none"]
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert "no steering" in capsys.readouterr().out

    # a circuit file of this model supplies the node (its residual read)
    circuit = {
        "schema": "sparsecircuits.circuit/1",
        "model": {"path": str(out), "content_hash": model_content_hash(bridged.sparse.model)},
        "task": {"name": "single_double_quote"},
        **{k: None for k in ("ablation", "achieved", "edges", "counts")},
        "target_loss": 0.15,  # read_circuit refuses a non-numeric target
        "nodes": ["0.mlp.post_act.3", "0.mlp.act_in.7"],
    }
    (tmp_path / "c.circuit.json").write_text(json.dumps(circuit))
    args = ["bridges", "steer", "--bridged", str(out), "--circuit", str(tmp_path / "c.circuit.json")]
    assert run_cli([*args, "--n-pairs", "1", "--strengths", "0,1", "--json", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["node"] == "0.mlp.act_in.7"

    # a location instead of a node: the channel with the largest delta, chosen on the train split
    args = [
        "bridges",
        "steer",
        "--bridged",
        str(out),
        "--node",
        "0.mlp.act_in",
        "--task",
        "single_double_quote",
    ]
    assert run_cli([*args, "--n-pairs", "1", "--strengths", "0,1", "--json", str(tmp_path / "l.json")]) == 0
    chosen = json.loads((tmp_path / "l.json").read_text())
    assert chosen["location"] == "0.mlp.act_in" and chosen["node_selection"]["split"] == "train"

    # bad input through the CLI: one line, exit status 2
    capsys.readouterr()
    bad = [
        "bridges",
        "steer",
        "--bridged",
        str(out),
        "--node",
        "1.mlp.post_act.2",
        "--task",
        "single_double_quote",
    ]
    assert run_cli(bad) == 2
    err = capsys.readouterr().err
    assert "not a residual read" in err and err.count("\n") == 1
    assert run_cli([*bad[:4], "--node", "1.attn.q", "--task", "single_double_quote"]) == 2
    assert "not a residual read" in capsys.readouterr().err
    assert run_cli([*bad[:4], "--node", "1.attn.act_in.2", "--task", "no_such_task"]) == 2
    assert run_cli([*bad[:4], "--task", "single_double_quote"]) == 2  # neither --node nor --circuit
    train_cmd = ["bridges", "train", "--data", str(dataset), "--quiet"]
    assert run_cli([*train_cmd, "--out", str(tmp_path / "x")]) == 2  # no --dense
    assert not (tmp_path / "x").exists()
    assert run_cli([*train_cmd, "--dense", str(dense_run), "--out", str(out)]) == 2  # exists, no --force


def test_init_starts_from_a_trained_sparse_run(dataset, dense_run, tmp_path, commands, capsys):
    sparse = tmp_path / "sparse"
    sets = [*SMALL, "model.d_model=24", "train.steps=2", "train.batch_size=2", "train.eval_batches=1"]
    train(dataset, sparse, preset="tiny", sets=sets, progress=False)
    start = load_tensors(sparse / "model.safetensors")

    out = tmp_path / "bridged"
    args = ["bridges", "train", "--dense", str(dense_run), "--data", str(dataset), "--out", str(out)]
    args += ["--preset", "tiny", "--quiet", "--init", str(sparse)]
    args += [x for s in [*BRIDGE_SETS, "train.steps=1", "train.lr=1e-12"] for x in ("--set", s)]
    assert run_cli(args) == 0
    meta = json.loads((out / "bridges.json").read_text())
    assert meta["init"]["content_hash"] == model_content_hash(load_run(sparse).model)
    assert json.loads((out / "config.json").read_text())["train"]["anneal_frac"] == 0
    after = load_tensors(out / "model.safetensors")  # lr ~0: the init weights, projected to the same L0
    assert all(torch.allclose(after[k], v, atol=1e-8) for k, v in start.items())

    capsys.readouterr()
    other = tmp_path / "other"
    args[args.index(str(out))] = str(other)
    args += ["--set", "model.d_mlp=32"]
    assert run_cli(args) == 2
    assert "its model differs" in capsys.readouterr().err and not other.exists()


def test_resume_from_the_final_checkpoint_writes_the_bridged_files(dataset, dense_run, tmp_path):
    """A run killed after its last checkpoint but before its files: the trainer's loop evaluates once more
    (val_loss and the bridge terms) and writes bridges.safetensors, bridges.json and the model."""
    out = tmp_path / "bridged"
    train_bridges(dense_run, dataset, out, preset="tiny", sets=BRIDGE_SETS, progress=False)
    files = {f: load_tensors(out / f) for f in ("model.safetensors", "bridges.safetensors")}
    before = json.loads((out / "bridges.json").read_text())["final"]
    for f in files:
        (out / f).unlink()
    last = train_bridges(None, dataset, out, resume=True, progress=False)
    assert last["step"] == 4 and last["val_kl_ds"] == before["val_kl_ds"]
    for f, tensors in files.items():
        again = load_tensors(out / f)
        assert all(torch.equal(again[k], v) for k, v in tensors.items()), f
    after = json.loads((out / "bridges.json").read_text())["final"]
    assert {k: v for k, v in before.items() if k.startswith("val_")} == {
        k: v for k, v in after.items() if k.startswith("val_")
    }
