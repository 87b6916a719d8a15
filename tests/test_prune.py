"""Masks on the one forward, mean ablation, recalibration, bisection, and a planted circuit recovered."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsecircuits.circuits.masks import HeavisideSTE, NodeMask
from sparsecircuits.circuits.means import mean_activations, model_content_hash
from sparsecircuits.circuits.prune import PruneConfig, bisect_nodes, prune, removal_effects_of
from sparsecircuits.circuits.scoring import PromptSet, gated_diff, score
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.errors import UserError
from sparsecircuits.model import GPT, ModelConfig


def small_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=32, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16)
    return GPT(ModelConfig(**{**cfg, **kw})).eval()


def widths(model: GPT) -> dict[str, int]:
    return {loc: model.location_width(loc) for loc in model.node_locations()}


def random_means(model: GPT, tmp_path) -> dict[str, torch.Tensor]:
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, model.cfg.vocab_size, 2000))
    return mean_activations(model, tmp_path / "v.bin", n_windows=16, batch_size=4)


@pytest.mark.parametrize("opts", [{}, {"sink": True, "bigram_table": True}, {"afrac": 1.0}])
def test_open_mask_is_bit_identical(tmp_path, opts):
    model = small_model(**opts)
    mask = NodeMask(widths(model), random_means(model, tmp_path))
    idx = torch.randint(0, 32, (3, 16))
    with torch.no_grad():
        plain = model(idx)
        with model.hooks(mask.hooks(torch.ones(mask.n_nodes))):
            gated = model(idx)
    assert torch.equal(plain, gated)


def test_closed_mask_equals_all_mean_forward(tmp_path):
    model = small_model()
    means = random_means(model, tmp_path)
    mask = NodeMask(widths(model), means)
    idx = torch.randint(0, 32, (3, 16))
    with torch.no_grad():
        with model.hooks({loc: (lambda m: lambda x: m.expand_as(x).clone())(means[loc]) for loc in means}):
            all_mean = model(idx)
        with model.hooks(mask.hooks(torch.zeros(mask.n_nodes))):
            closed = model(idx)
    assert torch.equal(all_mean, closed)
    # with every node at its mean, the logits depend only on the current token (embedding -> unembedding)
    same_token = torch.zeros(3, 16, dtype=torch.long) + idx[:, :1]
    with torch.no_grad(), model.hooks(mask.hooks(torch.zeros(mask.n_nodes))):
        flat = model(same_token)
    assert torch.allclose(flat[:, 0], flat[:, -1], atol=1e-5)


def test_means_use_the_pruned_forward(tmp_path):
    model = small_model()
    means = random_means(model, tmp_path)
    k = model.cfg.topk_k("mlp.post_act")
    assert set(means) == set(model.node_locations())
    assert means["0.mlp.post_act"].shape == (64,) and k == 16
    assert len(model_content_hash(model)) == 16


def test_heaviside_surrogate_gradient():
    tau = torch.tensor([-0.5, 0.0, 0.3], requires_grad=True)
    g = HeavisideSTE.apply(tau, 0.5)
    assert g.tolist() == [0.0, 0.0, 1.0]
    g.sum().backward()
    s = torch.sigmoid(tau.detach() / 0.5)
    assert torch.allclose(tau.grad, s * (1 - s) / 0.5)


def test_bisection_finds_smallest_k():
    class FakeMask:
        n_nodes = n_units = 100
        tau = torch.linspace(1, -1, 100)

        def top_k_gates(self, k):
            g = torch.zeros(100)
            g[:k] = 1
            return g

    def evaluate(g):
        k = int(g.sum())
        return score(torch.full((4,), 0.1 * k), torch.ones(4), convention="mean", fit=False)

    k, best, trace = bisect_nodes(evaluate, FakeMask(), target=0.05)
    losses = {r["k"]: r["loss"] for r in trace}
    assert best.loss <= 0.05 and (k - 1 not in losses or losses[k - 1] > 0.05)
    assert math.log1p(math.exp(-0.1 * (k - 1))) > 0.05 >= math.log1p(math.exp(-0.1 * k))


# ---- a planted circuit --------------------------------------------------------------------------
X, Y, A, B = 1, 2, 3, 4


def planted_model() -> GPT:
    """One layer; MLP neurons 0/1 read channel 0 (the cue) and write channel 1, which the unembedding reads.

    Everything else is random noise that is useful for nothing in particular.
    """
    model = small_model(seed=1, n_layer=1, d_model=8, n_head=2, d_head=4, d_mlp=16, afrac=1.0, vocab_size=8)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    for k in sd:
        if k.endswith("weight") and "ln" not in k:
            sd[k] = 0.3 * torch.randn(sd[k].shape, generator=g)
    wte = sd["transformer.wte.weight"]
    wte[:, :2] = 0.0
    wte[Y] = wte[X]  # X and Y differ only in the sign of channel 0, so no norm carries the cue
    wte[X, 0], wte[Y, 0] = 3.0, -3.0
    fc, proj = sd["transformer.h.0.mlp.c_fc.weight"], sd["transformer.h.0.mlp.c_proj.weight"]
    fc[:, 0] = 0.0  # only the planted neurons read the cue channel
    fc[0, :], fc[1, :] = 0.0, 0.0
    fc[0, 0], fc[1, 0] = 4.0, -4.0
    proj[1, :] = 0.0  # only the planted neurons write channel 1
    proj[:, 0], proj[:, 1] = 0.0, 0.0
    proj[0, :] = 0.0  # nothing else writes the cue channel
    proj[1, 0], proj[1, 1] = 3.0, -3.0
    sd["transformer.h.0.attn.c_attn.weight"][:, 0] = 0.0  # attention ignores the cue
    sd["transformer.h.0.attn.c_proj.weight"][:2, :] = 0.0
    head = sd["lm_head.weight"]
    head[A, :], head[B, :] = 0.0, 0.0
    head[A, 1], head[B, 1] = 0.5, -0.5  # confident but not saturated: the task loss still has a gradient
    model.load_state_dict(sd)
    return model


def planted_prompts(n: int, seed: int) -> PromptSet:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(5, 8, (n, 6), generator=g)
    cue = torch.tensor([X, Y] * (n // 2))
    toks[:, -1] = cue
    correct = torch.where(cue == X, A, B)
    wrong = torch.where(cue == X, B, A)
    sign = torch.where(cue == X, 1.0, -1.0)
    return PromptSet(toks, torch.full((n,), 5), correct, wrong, sign)


@pytest.fixture(scope="module")
def planted_pruned(tmp_path_factory):
    """The planted model and its pruning result (run once for the tests below)."""
    model = planted_model()
    tokens = tmp_path_factory.mktemp("planted") / "v.bin"
    write_tokens(tokens, np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tokens, n_windows=32, batch_size=8)
    cfg = PruneConfig(target_loss=0.15, steps=300, k_coef=1e-3, lr=1e-2, seed=0)
    return model, prune(model, means, planted_prompts(256, 0), planted_prompts(128, 1), cfg, progress=False)


def test_planted_circuit_is_recovered(planted_pruned):
    model, res = planted_pruned
    kept = {
        loc: torch.nonzero(g).flatten().tolist() for loc, g in res.mask.split(res.gates).items() if g.any()
    }
    planted = 4  # mlp.act_in.0, post_act.0 and .1, resid_delta.1
    assert res.k <= 2 * planted, kept
    assert kept.get("0.mlp.act_in") == [0] and kept.get("0.mlp.resid_delta") == [1], kept
    assert set(kept.get("0.mlp.post_act", [])) <= {0, 1} and kept.get("0.mlp.post_act"), kept
    assert res.score.loss <= 0.15
    with torch.no_grad():  # the circuit alone really does the task
        diff = gated_diff(model, res.mask, res.gates, planted_prompts(64, 9))
    assert (diff > 0).all()


def test_unreachable_target_reports_unpruned_loss(tmp_path):
    model = small_model()
    means = random_means(model, tmp_path)
    prompts = planted_prompts(32, 0)
    prompts.tokens[:] = prompts.tokens % 32
    with pytest.raises(UserError, match="unpruned model's task loss is"):
        prune(model, means, prompts, prompts, PruneConfig(target_loss=1e-6, steps=1), progress=False)


def test_node_effects_reused_when_the_edge_stage_keeps_every_edge(planted_pruned):
    """An edge stage that removes nothing changes no forward, so the clean-up's per-node effects are reused;
    they equal effects measured afresh on the final circuit."""
    _, res = planted_pruned
    assert res.edge_gates is not None and bool(res.edge_gates.all()), res.stages
    assert res.removal_effects and res.removal_effects == removal_effects_of(res.evaluate, res.gates, {})


def test_finishing_from_trained_gates_trains_nothing_and_gives_the_same_circuit(planted_pruned):
    """prune(trained=mask) (the search finishing an earlier trial) starts the bisection, clean-up and edge
    stage from that mask's ranking: the same circuit as the run that trained it, no mask-training history."""
    model, res = planted_pruned
    tau = res.mask.tau.detach().clone()
    cfg = PruneConfig(target_loss=0.15, steps=300, k_coef=1e-3, lr=1e-2, seed=0)
    again = prune(model, None, planted_prompts(256, 0), planted_prompts(128, 1), cfg, False, trained=res.mask)
    assert torch.equal(res.mask.tau, tau)  # not trained further
    assert torch.equal(again.gates, res.gates) and again.k == res.k
    assert again.stages["bisection"]["nodes"] == res.stages["bisection"]["nodes"]
    node_steps = [[r for r in x.history if "stage" not in r] for x in (res, again)]  # not the edge stage's
    assert node_steps[0] and node_steps[1] == []
