"""Edge-level pruning inside a node circuit (circuits/edge_masks.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsecircuits.circuits.circuit import make_circuit
from sparsecircuits.circuits.edge_masks import EdgeMask, stored_edge_gates
from sparsecircuits.circuits.edges import circuit_edges
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.means import mean_activations
from sparsecircuits.circuits.nodes import names_to_nodes
from sparsecircuits.circuits.prune import Evaluator, PruneConfig, prune, prune_edges
from sparsecircuits.circuits.session import circuit_gates
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.errors import UserError
from test_prune import planted_model, planted_prompts, random_means, small_model, widths


def random_node_gates(mask: NodeMask, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    return (torch.rand(mask.n_nodes, generator=torch.Generator().manual_seed(seed)) < p).float()


@pytest.mark.parametrize("opts", [{}, {"sink": True}, {"pos_emb": "concat", "d_pos_emb": 4}])
def test_all_edges_open_is_bit_identical_to_the_node_circuit(tmp_path, opts):
    model = small_model(**opts)
    means = random_means(model, tmp_path)
    mask = NodeMask(widths(model), means)
    gates = random_node_gates(mask)
    edges = EdgeMask(model, mask, gates)
    assert edges.n_edges > 0
    idx = torch.randint(0, 32, (3, 16))
    with torch.no_grad(), model.hooks(mask.hooks(gates)):
        plain = model(idx)
        with edges.hooks(model, torch.ones(edges.n_edges)):
            open_ = model(idx)
    assert torch.equal(plain, open_)


@pytest.mark.parametrize("opts", [{}, {"sink": True}, {"pos_emb": "concat", "d_pos_emb": 4}])
def test_narrow_forward_scores_node_and_edge_circuits_as_the_wide_one(tmp_path, opts):
    """gated_diff runs the last block at the answer positions only; masks and edge hooks act per position, so
    the scores equal the full forward's."""
    from sparsecircuits.circuits.scoring import PromptSet, correct_minus_wrong

    model = small_model(**opts)
    mask = NodeMask(widths(model), random_means(model, tmp_path))
    gates = random_node_gates(mask, 0.7)
    edges = EdgeMask(model, mask, gates)
    closed = (torch.rand(edges.n_edges, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    g = torch.Generator().manual_seed(2)
    prompts = PromptSet(
        tokens=torch.randint(0, 32, (6, 16), generator=g),
        last=torch.tensor([15, 3, 8, 0, 11, 6]),
        correct=torch.randint(0, 32, (6,), generator=g),
        wrong=torch.randint(0, 32, (6,), generator=g),
        sign=torch.ones(6),
    )
    with torch.no_grad(), model.hooks(mask.hooks(gates)), edges.hooks(model, closed):
        wide = correct_minus_wrong(model, prompts, narrow=False)
        narrow = correct_minus_wrong(model, prompts, narrow=True)
    assert torch.allclose(narrow, wide, atol=1e-5)


def test_closed_edges_mean_replace_their_inputs_by_hand(tmp_path):
    """With AbsTopK off, a neuron's pre-activation under closed edges is W x + b - sum (x_j - mu_j) w_ij over
    its closed edges, computed here by hand from the cached inputs."""
    model = small_model(afrac=1.0, n_layer=1)
    means = random_means(model, tmp_path)
    mask = NodeMask(widths(model), means)
    gates = torch.ones(mask.n_nodes)
    edges = EdgeMask(model, mask, gates)
    idx = torch.randint(0, 32, (2, 16))
    closed = torch.zeros(edges.n_edges)
    with torch.no_grad(), model.hooks(mask.hooks(gates)):
        cache = model.run_with_cache(idx, ["0.mlp.act_in"])
        with edges.hooks(model, closed):
            got = model.run_with_cache(idx, ["0.mlp.post_act"])["0.mlp.post_act"]
    x = cache["0.mlp.act_in"]  # [B, T, d_in]
    fc = model.transformer.h[0].mlp.c_fc
    mu = means["0.mlp.act_in"]
    # every edge closed: each nonzero weight reads mu_j instead of x_j, i.e. the whole input is the mean
    want = F.gelu(mu @ fc.weight.T + fc.bias).expand_as(got)
    assert torch.allclose(got, want, atol=1e-5)
    # one edge closed: only its term changes
    first = edges.matrices[[m.matrix.param for m in edges.matrices].index("mlp.c_fc.weight")]
    r, c = int(first.rows[0]), int(first.cols[0])
    one = torch.ones(edges.n_edges)
    one[edges.offsets[edges.matrices.index(first)]] = 0.0
    with torch.no_grad(), model.hooks(mask.hooks(gates)), edges.hooks(model, one):
        got1 = model.run_with_cache(idx, ["0.mlp.post_act"])["0.mlp.post_act"]
    pre = x @ fc.weight.T + fc.bias
    pre[..., r] -= (x[..., c] - mu[c]) * fc.weight[r, c]
    assert torch.allclose(got1, F.gelu(pre), atol=1e-5)


def test_closing_every_edge_out_of_a_node_equals_ablating_it(tmp_path):
    model = small_model(afrac=1.0)
    means = random_means(model, tmp_path)
    mask = NodeMask(widths(model), means)
    gates = torch.ones(mask.n_nodes)
    edges = EdgeMask(model, mask, gates)
    src = "0.mlp.act_in.3"
    g = torch.tensor([0.0 if s == src else 1.0 for s, _, _ in edges.edges(model)])
    ablated = gates.clone()
    ablated[mask.offsets[mask.locations.index("0.mlp.act_in")] + 3] = 0.0
    idx = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        with model.hooks(mask.hooks(gates)), edges.hooks(model, g):
            by_edges = model(idx)
        with model.hooks(mask.hooks(ablated)):
            by_node = model(idx)
    assert torch.allclose(by_edges, by_node, atol=1e-5)


def test_edges_follow_circuit_edges_order_and_weights(tmp_path):
    model = small_model()
    mask = NodeMask(widths(model), random_means(model, tmp_path))
    gates = random_node_gates(mask, seed=3)
    edges = EdgeMask(model, mask, gates)
    nodes = {loc: g.bool() for loc, g in mask.split(gates).items()}
    assert edges.edges(model) == circuit_edges(model.state_dict(), model.cfg, nodes).edges


def test_edge_pruning_refuses_a_resample_ablation():
    model = small_model()
    mask = NodeMask(widths(model), None, "resample")
    with pytest.raises(UserError, match="edge pruning"):
        EdgeMask(model, mask, torch.ones(mask.n_nodes))


def planted_with_noise_edges():
    """The planted model, plus read channel 2 feeding the planted neurons with weights too small to matter."""
    model = planted_model()
    with torch.no_grad():
        fc = model.transformer.h[0].mlp.c_fc.weight
        fc[0, 2], fc[1, 2] = 0.05, -0.05
    return model


PLANTED_EDGES = {
    ("0.mlp.act_in.0", "0.mlp.post_act.0"),
    ("0.mlp.act_in.0", "0.mlp.post_act.1"),
    ("0.mlp.post_act.0", "0.mlp.resid_delta.1"),
    ("0.mlp.post_act.1", "0.mlp.resid_delta.1"),
}


def test_edge_pruning_recovers_the_planted_edges(tmp_path):
    model = planted_with_noise_edges()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    mask = NodeMask(widths(model), means)
    names = [
        "0.mlp.act_in.0",
        "0.mlp.act_in.2",
        "0.mlp.post_act.0",
        "0.mlp.post_act.1",
        "0.mlp.resid_delta.1",
    ]
    nodes = names_to_nodes(names, model.cfg)
    gates = torch.cat([nodes[loc].float() for loc in model.node_locations()])
    # raw scores: under calibration one planted neuron alone would do (a rescaled half of the signal)
    cfg = PruneConfig(
        target_loss=0.15,
        edge_steps=300,
        edge_k_coef=1e-2,
        edge_lr=1e-2,
        calibrate=False,
        loss_convention="pair-sum",
    )
    evaluate = Evaluator(model, mask, planted_prompts(128, 1), False, cfg.loss_convention)
    assert evaluate(gates).loss <= cfg.target_loss
    edges, kept, best, _, _ = prune_edges(
        model, mask, gates, planted_prompts(256, 0), evaluate, cfg, cfg.target_loss, False
    )
    assert edges.n_edges == 6  # the 4 planted edges and the 2 noise edges from read channel 2
    assert {(s, d) for s, d, _ in edges.edges(model, kept)} == PLANTED_EDGES
    assert best.loss <= cfg.target_loss


def test_prune_records_the_edge_stage_and_validation_applies_it(tmp_path):
    model = planted_with_noise_edges()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    cfg = PruneConfig(
        target_loss=0.3, steps=100, k_coef=1e-3, lr=1e-2, edge_k_coef=1e-2, loss_convention="pair-sum"
    )
    res = prune(model, means, planted_prompts(256, 0), planted_prompts(128, 1), cfg, progress=False)
    circuit = make_circuit(model, {}, {"name": "planted"}, res)
    stages = circuit["stages"]
    assert stages["edges"]["edges"] == circuit["counts"]["edges"] == len(circuit["edges"])
    assert stages["edges"]["edges"] <= stages["edges"]["edges_before"] == stages["cleanup"]["edges"]
    assert circuit["counts"]["stage"] == "edges"
    # the stored edges, read back, give the same logit differences as the pruning result
    mask = NodeMask(widths(model), means)
    gates = circuit_gates(circuit, model)
    assert torch.equal(gates, res.gates)
    stored = stored_edge_gates(circuit, model, mask, gates)
    prompts = planted_prompts(16, 2)
    if stored is None:  # nothing was removed, so nothing needs a hook
        assert res.edge_gates is None or bool(res.edge_gates.all())
        return
    with torch.no_grad():
        with stored.hooks(model), model.hooks(mask.hooks(gates)):
            got = model(prompts.tokens)
        with res.edge_mask.hooks(model, res.edge_gates), model.hooks(mask.hooks(res.gates)):
            ref = model(prompts.tokens)
    assert torch.equal(got, ref)


def test_a_stored_edge_the_nodes_lack_is_refused(tmp_path):
    model = small_model()
    mask = NodeMask(widths(model), random_means(model, tmp_path))
    gates = random_node_gates(mask)
    edges = EdgeMask(model, mask, gates).edges(model)
    circuit = {"edges": [{"src": edges[0][0], "dst": "1.mlp.resid_delta.999"}]}
    with pytest.raises(UserError, match="does not have|do not have"):
        stored_edge_gates(circuit, model, mask, gates)
