"""Automatic clean-up after the bisection, and tied query/key masks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sparsecircuits.circuits.cleanup import clean_up
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.means import mean_activations
from sparsecircuits.circuits.prune import PruneConfig, prune
from sparsecircuits.data.shards import write_tokens
from test_prune import planted_model, planted_prompts, small_model, widths

NEEDED, COSTLY = {2, 5}, {7, 8}


def fake_evaluate(calls: list):
    """Loss of a kept set: +1 per missing needed node, +0.01 per missing costly node, over a base of 0.1."""

    def evaluate(g: torch.Tensor):
        kept = set(torch.nonzero(g).flatten().tolist())
        calls.append(kept)
        return SimpleNamespace(loss=0.1 + len(NEEDED - kept) + 0.01 * len(COSTLY - kept), accuracy_raw=1.0)

    return evaluate


def test_cleanup_stays_at_the_target_and_stops_when_no_single_node_can_go():
    calls: list = []
    res = clean_up(fake_evaluate(calls), torch.ones(10), target=0.105, progress=False)
    kept = set(torch.nonzero(res.gates).flatten().tolist())
    assert kept == NEEDED | COSTLY and res.nodes_before == 10 and res.nodes_after == 4
    assert res.score.loss <= 0.105
    # the last pass tried every remaining node against the final circuit and removed none
    assert res.passes[-1]["removed"] == 0 and res.passes[-1]["tried"] == 4
    # with a laxer target the costly nodes can go too, one at a time, but not both
    res = clean_up(fake_evaluate([]), torch.ones(10), target=0.115, progress=False)
    assert len(set(torch.nonzero(res.gates).flatten().tolist()) & COSTLY) == 1
    # a target every subset meets still leaves one node: a circuit is never empty
    assert clean_up(fake_evaluate([]), torch.ones(10), target=99.0, progress=False).nodes_after == 1


def test_later_passes_spend_one_forward_per_node():
    """Nodes 3 and 6 can go only once node 4 has gone: pass 1 removes the free nodes, pass 2 (one evaluation per
    kept node, each removed at once if the circuit still meets the target) removes 3 and 6, pass 3 verifies."""
    calls: list = []

    def evaluate(g: torch.Tensor):
        kept = set(torch.nonzero(g).flatten().tolist())
        calls.append(kept)
        loss = 0.1 + (0 not in kept) + (4 in kept) * ((3 not in kept) + (6 not in kept))
        return SimpleNamespace(loss=loss, accuracy_raw=1.0)

    res = clean_up(evaluate, torch.ones(7), target=0.105, progress=False)
    assert set(torch.nonzero(res.gates).flatten().tolist()) == {0}
    assert [p["tried"] for p in res.passes] == [7, 3, 1] and [p["removed"] for p in res.passes] == [4, 2, 0]
    # the start, pass 1's 7 measurements and 3 removals after its first, then 3 and 1
    assert len(calls) == 1 + 7 + 3 + 3 + 1


def test_the_clean_up_says_what_keeps_each_node():
    """Node 0 is held by the loss, node 1 by the raw-accuracy floor alone, node 2 by both; the rest can go."""
    from sparsecircuits.circuits.commands import score_lines
    from sparsecircuits.circuits.scoring import Target

    def evaluate(g: torch.Tensor):
        kept = set(torch.nonzero(g).flatten().tolist())
        loss = 0.1 + (0 not in kept) + (2 not in kept)
        return SimpleNamespace(loss=loss, accuracy_raw=1.0 - 0.2 * ((1 not in kept) + (2 not in kept)))

    res = clean_up(evaluate, torch.ones(6), Target(0.15, 0.9), progress=False)
    assert set(torch.nonzero(res.gates).flatten().tolist()) == {0, 1, 2}
    assert res.kept_by == {"loss": 1, "raw_accuracy": 1, "both": 1, "last": 0}
    # a target any removal meets keeps one node, for no reason but that a circuit is never empty
    assert clean_up(evaluate, torch.ones(3), Target(99.0), progress=False).kept_by["last"] == 1
    score = {"loss_raw": 0.4, "loss_calibrated": 0.1, "accuracy_raw": 0.9}
    circuit = {
        "task": {"name": "t"},
        "target_loss": 0.15,
        "achieved": {**score, "full_model": score},
        "counts": {"nodes": 3, "edges": 2, "stage": "cleanup"},
        "stages": {"bisection": {"nodes": 6}, "cleanup": {"nodes": 3, "kept_by": res.kept_by}},
    }
    text = "\n".join(score_lines(circuit))
    assert "the loss target 1, the raw-accuracy floor alone 1, both 1" in text


def plain_clean_up(evaluate, gates: torch.Tensor, target: float):
    """The clean-up as first written: every pass scores every kept node (the reference for the faster loop)."""
    gates = gates.clone()

    def drop(g, u):
        g = g.clone()
        g[u] = 0.0
        return g

    kept = torch.nonzero(gates).flatten().tolist()
    first = sorted((evaluate(drop(gates, u)).loss, u) for u in kept)
    effects, removed = {u: loss for loss, u in first}, 0
    for loss, u in first:
        if loss > target:
            break
        s = evaluate(drop(gates, u)).loss if removed else loss
        if s <= target and drop(gates, u).any():
            gates, removed = drop(gates, u), removed + 1
    removals = [removed]
    while removed:
        order = sorted(torch.nonzero(gates).flatten().tolist(), key=lambda u: (effects[u], u))
        effects, removed = {}, 0
        for u in order:
            effects[u] = evaluate(drop(gates, u)).loss
            if effects[u] <= target and drop(gates, u).any():
                gates, removed = drop(gates, u), removed + 1
        removals.append(removed)
    return gates, removals, effects


def interacting_evaluate(n: int, seed: int, calls: list):
    """A loss where a missing node u costs pair[u, v] while node v is kept: once v has gone, u can go too, so
    passes after the first keep removing nodes (up to 6 passes over these seeds)."""
    g = torch.Generator().manual_seed(seed)
    single = torch.rand(n, generator=g) * 0.02
    pair = (torch.rand(n, n, generator=g) < 0.05) * torch.rand(n, n, generator=g) * 0.5

    def evaluate(gates: torch.Tensor):
        calls.append(1)
        missing = 1.0 - gates
        loss = 0.1 + float(single @ missing + missing @ pair @ gates)
        return SimpleNamespace(loss=loss, accuracy_raw=1.0)

    return evaluate


def test_skipping_known_scores_and_scoring_side_by_side_keep_the_plain_loops_result():
    for seed in range(6):
        plain_calls: list = []
        ref_gates, ref_removed, ref_effects = plain_clean_up(
            interacting_evaluate(24, seed, plain_calls), torch.ones(24), 0.25
        )
        for width in (1, 3):
            calls: list = []
            evaluate = interacting_evaluate(24, seed, calls)
            res = clean_up(
                evaluate,
                torch.ones(24),
                0.25,
                progress=False,
                evaluate_many=lambda gs, evaluate=evaluate: [evaluate(g) for g in gs],
                width=width,
            )
            assert torch.equal(res.gates, ref_gates)
            assert [p["removed"] for p in res.passes] == ref_removed
            assert res.effects == pytest.approx(ref_effects)
            if width == 1:  # never more forwards than the plain loop (its start evaluation aside)
                assert len(calls) - 1 <= len(plain_calls)


def test_tied_query_key_masks_keep_or_drop_both():
    model = small_model()
    mask = NodeMask(widths(model), None, "zero", tie_qk=True, generator=torch.Generator().manual_seed(0))
    w = model.location_width("0.attn.q")
    assert mask.n_units == mask.n_nodes - model.cfg.n_layer * w
    for k in (0, 3, 10, 50, mask.n_units):
        g = mask.split(mask.top_k_gates(k))
        for layer in range(model.cfg.n_layer):
            assert torch.equal(g[f"{layer}.attn.q"], g[f"{layer}.attn.k"])
    with torch.no_grad():
        mask.tau.uniform_(-1, 1)
    g = mask.split(mask.gates())
    assert torch.equal(g["1.attn.q"], g["1.attn.k"]) and g["1.attn.q"].any() and not g["1.attn.q"].all()
    assert NodeMask(widths(model), None, "zero").n_units == mask.n_nodes  # untied: one unit per node


def test_planted_circuit_is_recovered_exactly_after_cleanup(tmp_path):
    model = planted_model()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    cfg = PruneConfig(target_loss=0.3, steps=300, k_coef=1e-3, lr=1e-2, seed=0, loss_convention="pair-sum")
    res = prune(model, means, planted_prompts(256, 0), planted_prompts(128, 1), cfg, progress=False)
    kept = {
        loc: torch.nonzero(g).flatten().tolist() for loc, g in res.mask.split(res.gates).items() if g.any()
    }
    assert res.stages["cleanup"]["nodes"] == res.k <= res.stages["bisection"]["nodes"]
    assert kept.get("0.mlp.act_in") == [0] and kept.get("0.mlp.resid_delta") == [1], kept
    assert set(kept) == {"0.mlp.act_in", "0.mlp.post_act", "0.mlp.resid_delta"}, kept
    assert set(kept["0.mlp.post_act"]) <= {0, 1}, kept
    assert res.score.loss <= 0.3


def test_tied_circuit_file_gives_each_node_its_units_tau(tmp_path):
    from sparsecircuits.circuits.circuit import make_circuit

    model = planted_model()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    cfg = PruneConfig(
        target_loss=5.0, steps=5, tie_qk=True, cleanup=False
    )  # keeps q and k nodes of late units
    res = prune(model, means, planted_prompts(64, 0), planted_prompts(32, 1), cfg, progress=False)
    with torch.no_grad():
        res.mask.tau.copy_(torch.linspace(-1, 1, res.mask.n_units))
    res.gates = torch.ones(res.mask.n_nodes)  # every node, so the last units' nodes are described too
    info = make_circuit(model, {}, {"name": "planted"}, res)["node_info"]
    assert len(info) == res.mask.n_nodes
    width = model.location_width("0.attn.q")
    for i in range(width):
        assert info[f"0.attn.q.{i}"]["tau"] == info[f"0.attn.k.{i}"]["tau"]
    assert (
        info["0.mlp.resid_delta.7"]["tau"] == 1.0
    )  # the last node's unit, beyond n_units when read per node
