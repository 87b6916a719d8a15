"""The held-out check of the clean-up and the edge stage: removals that only looked harmless on the
validation pairs are put back (the fewest of the last removals; the fewest extra top edges), and a check that passes
changes nothing."""

from __future__ import annotations

import numpy as np
import torch

from sparsecircuits.circuits.cleanup import put_back
from sparsecircuits.circuits.masks import Gates, NodeMask
from sparsecircuits.circuits.means import mean_activations
from sparsecircuits.circuits.prune import (
    HeldOut,
    PruneConfig,
    _clean_up_stage,
    _widen_to_held_out,
    prune,
)
from sparsecircuits.circuits.scoring import Calibration, Score, Target
from sparsecircuits.data.shards import write_tokens
from test_prune import planted_model, planted_prompts


class FakeEvaluator:
    """Scores a gate vector by loss(gates); the interface prune.Evaluator gives the clean-up."""

    width = 1

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, gates: torch.Tensor, calibration: Calibration | None = None) -> Score:
        v = float(self.loss(gates))
        return Score(v, 1.0, v, 1.0, calibration or Calibration())

    def many(self, gate_list):
        return [self(g) for g in gate_list]

    def rebase(self, gates) -> None:
        pass


def test_put_back_undoes_the_fewest_last_removals_that_make_the_check_hold():
    gates = torch.tensor([1.0, 0, 1, 0, 0, 1])
    removed = [4, 1, 3]  # removal order
    holds = lambda g: bool(g[1])  # noqa: E731 - needs node 1, the second removed
    out, back = put_back(holds, gates, removed)
    assert back == 2 and out.tolist() == [1, 1, 1, 1, 0, 1]  # 3 then 1 back; 4 stays out
    assert put_back(lambda g: True, gates, removed) == (gates, 0)
    out, back = put_back(lambda g: False, gates, removed)
    assert back == 3 and out.tolist() == [1.0] * 6  # the bisection's circuit is taken to hold
    # a long clean-up: the last 37 of 100 removals are needed back, found in about log2(100) checks
    calls = []
    needed = set(range(63, 100))

    def holds(g):
        calls.append(1)
        return all(g[u] for u in needed)

    out, back = put_back(holds, torch.zeros(100), list(range(100)))
    assert back == 37 and set(torch.nonzero(out).flatten().tolist()) == needed and len(calls) <= 8


def test_the_clean_up_stage_puts_back_what_the_held_out_pairs_need():
    # nodes 0 and 1 matter on both sets; nodes 5 and 6 only on the held-out pairs
    def val_loss(g):
        return 0.05 + 1.0 * float((1 - g[:2]).sum()) + 0.001 * float((1 - g[2:]).sum())

    def held_loss(g):
        return val_loss(g) + 0.5 * float((1 - g[5:7]).sum())

    mask = NodeMask({"0.mlp.act_in": 10}, {"0.mlp.act_in": torch.zeros(10)})
    val, held = FakeEvaluator(val_loss), FakeEvaluator(held_loss)
    target = Target(0.1)
    gates, best, effects, record = _clean_up_stage(val, mask, torch.ones(10), target, None, False)
    assert gates.tolist() == [1.0, 1.0] + [0.0] * 8  # without the check: nodes 2..9 removed, in that order
    gates, best, effects, record = _clean_up_stage(
        val, mask, torch.ones(10), target, HeldOut(val, held), False
    )
    # the last five removals (5 to 9) back make the held-out loss 0.05 + 0.003 <= 0.1; four are not enough
    assert gates.tolist() == [1, 1, 0, 0, 0, 1, 1, 1, 1, 1]
    assert record["held_out"]["put_back"] == 5 and record["held_out"]["size_before"] == 2
    assert record["nodes"] == 7 and best.loss <= target.loss and effects == {}
    assert held_loss(gates) <= record["held_out"]["floor"] == target.loss


def test_a_circuit_that_already_misses_held_out_may_not_get_worse():
    mask = NodeMask({"0.mlp.act_in": 4}, {"0.mlp.act_in": torch.zeros(4)})
    val = FakeEvaluator(lambda g: 0.05 + 0.01 * float((1 - g).sum()))
    held = FakeEvaluator(lambda g: 0.3 + 0.01 * float((1 - g).sum()))  # misses 0.1 whatever the circuit
    gates, _, _, record = _clean_up_stage(val, mask, torch.ones(4), Target(0.1), HeldOut(val, held), False)
    assert gates.tolist() == [1.0] * 4 and record["held_out"]["floor"] == 0.3


def test_the_edge_check_keeps_the_fewest_extra_top_edges():
    edges = Gates(12, 0.0, 0.0, 1.0, None)
    with torch.no_grad():
        edges.tau.copy_(torch.linspace(1, -1, 12))  # edge i is the (i+1)-th by rank
    val = FakeEvaluator(lambda g: 0.05 if g[:5].all() else 1.0)  # the bisection keeps 5
    held = FakeEvaluator(lambda g: 0.05 if g[:8].all() else 1.0)  # held out, 8 are needed
    k, best, record = _widen_to_held_out(HeldOut(val, held), edges, 5, Target(0.1))
    assert k == 8 and record["put_back"] == 3 and best.loss == 0.05
    k, _, record = _widen_to_held_out(HeldOut(val, val), edges, 5, Target(0.1))
    assert k == 5 and record["put_back"] == 0


def test_the_planted_circuit_passes_its_held_out_check(tmp_path):
    model = planted_model()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 8, 4000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=32, batch_size=8)
    cfg = PruneConfig(target_loss=0.15, steps=300, k_coef=1e-3, lr=1e-2, seed=0)
    args = (model, means, planted_prompts(256, 0), planted_prompts(128, 1), cfg)
    plain = prune(*args, progress=False)
    checked = prune(*args, progress=False, held_out=planted_prompts(128, 2))
    assert torch.equal(plain.gates, checked.gates)
    assert checked.stages["cleanup"]["held_out"]["put_back"] == 0
    assert "held_out" not in plain.stages["cleanup"]


def test_held_out_pairs_follow_the_training_pairs_and_differ_from_them():
    from sparsecircuits.tasks.registry import all_tasks

    for task in all_tasks():
        drawn = task.pairs(256 + 64, "train", 0)
        assert drawn[:256] == task.pairs(256, "train", 0), task.name  # prune_one's training pairs
        texts = {(p.pos.text, p.neg.text) for p in drawn[:256]}
        assert not texts & {(p.pos.text, p.neg.text) for p in drawn[256:]}, task.name


def test_bad_held_out_settings_are_refused():
    import pytest

    from sparsecircuits.errors import UserError

    with pytest.raises(UserError, match="holdout_pairs"):
        PruneConfig(holdout_pairs=-1).validate()
    with pytest.raises(UserError, match="learning rates"):
        PruneConfig(edge_lr=0.0).validate()


def test_the_summary_names_what_the_check_put_back():
    from sparsecircuits.circuits.commands import score_lines

    held = {"size_before": 85, "put_back": 40, "loss": 0.144, "accuracy_raw": 0.93, "floor": 0.15}
    score = {"loss_raw": 0.4, "loss_calibrated": 0.1, "accuracy_raw": 0.9}
    circuit = {
        "task": {"name": "var_if", "held_out_pairs": 64},
        "target_loss": 0.15,
        "achieved": {**score, "full_model": score},
        "counts": {"nodes": 125, "edges": 204, "stage": "cleanup"},
        "stages": {
            "bisection": {"nodes": 253, "edges": 581},
            "cleanup": {"nodes": 125, "edges": 204, "held_out": held},
        },
    }
    text = "\n".join(score_lines(circuit))
    assert "held-out check (64 pairs): cleanup put back 40 nodes" in text and "must reach 0.150" in text


def test_the_frontier_config_takes_held_out_pairs():
    import pytest

    from sparsecircuits.errors import UserError
    from sparsecircuits.experiments.frontier import check_values

    def config(held):
        return {"data": "data/mix", "out": "runs/f", "prune": {"holdout_pairs": held}}

    check_values(config(0), "frontier.json")  # 0 turns the check off
    check_values(config(256), "frontier.json")
    with pytest.raises(UserError, match="holdout_pairs"):
        check_values(config(1.5), "frontier.json")
