"""Candidate circuits scored side by side on model replicas (circuits/parallel.py): same results as one by one."""

from __future__ import annotations

import numpy as np
import torch

from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.means import mean_activations
from sparsecircuits.circuits.parallel import Replicas
from sparsecircuits.circuits.prune import Evaluator, PruneConfig, prune, train_mask
from sparsecircuits.data.shards import write_tokens
from test_prune import planted_model, planted_prompts, random_means, small_model, widths


def test_replicas_map_in_order_on_separate_models():
    model = small_model()
    with Replicas(model, 2) as pool:
        assert len({id(m) for m in pool.map(lambda m, _x: m, list(range(8)))}) <= 2
        assert pool.map(lambda _m, x: x * x, list(range(10))) == [x * x for x in range(10)]
    assert pool.map(lambda m, _x: m, [0, 1]) == [model, model]  # closed: runs in the caller, on the model


def test_scores_side_by_side_equal_scores_one_by_one(tmp_path):
    model = small_model()
    mask = NodeMask(widths(model), random_means(model, tmp_path))
    prompts = planted_prompts(64, 1)
    g = torch.Generator().manual_seed(0)
    gate_list = [(torch.rand(mask.n_nodes, generator=g) < 0.5).float() for _ in range(6)]
    alone = [Evaluator(model, mask, prompts, True)(gates) for gates in gate_list]
    with Replicas(model, 2) as pool:
        together = Evaluator(model, mask, prompts, True, pool=pool).many(gate_list)
    assert [s.to_json() for s in together] == [s.to_json() for s in alone]


def test_mask_training_does_not_depend_on_the_number_of_workers(tmp_path):
    model = small_model().requires_grad_(False)
    means = random_means(model, tmp_path)
    cfg = PruneConfig(steps=15, batch_pairs=32)
    taus = []
    for workers in (1, 2):
        mask = NodeMask(widths(model), means, generator=torch.Generator().manual_seed(0))
        with Replicas(model, workers) as pool:
            train_mask(model, mask, planted_prompts(128, 0), cfg, progress=False, pool=pool)
        taus.append(mask.tau.detach().clone())
    assert torch.equal(taus[0], taus[1])


def test_prune_gives_the_same_circuit_with_two_workers(tmp_path):
    model = planted_model()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    cfg = PruneConfig(target_loss=0.3, steps=60, k_coef=1e-3, lr=1e-2, edge_steps=30)
    results = [
        prune(model, means, planted_prompts(256, 0), planted_prompts(128, 1), cfg, progress=False, workers=w)
        for w in (1, 2)
    ]
    a, b = results
    assert torch.equal(a.gates, b.gates) and a.stages["cleanup"]["passes"] == b.stages["cleanup"]["passes"]
    assert a.removal_effects == b.removal_effects and a.score.to_json() == b.score.to_json()
    assert (a.edge_gates is None) == (b.edge_gates is None)
    if a.edge_gates is not None:
        assert torch.equal(a.edge_gates, b.edge_gates)
