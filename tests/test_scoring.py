"""The scoring protocol: a >= 0 calibration fitted on one split and frozen for another, raw beside calibrated,
the pair-sum loss convention, clean resampling from pretraining windows, and schema-1 circuit files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sparsecircuits.circuits.ablations import DonorSource, get_ablation
from sparsecircuits.circuits.circuit_file import SCHEMA, read_circuit
from sparsecircuits.circuits.masks import NodeMask
from sparsecircuits.circuits.means import mean_activations
from sparsecircuits.circuits.scoring import Calibration, PromptSet, fit_calibration, gated_diff, score
from sparsecircuits.circuits.validate import sufficiency_verdict, validate
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.errors import UserError
from sparsecircuits.io import atomic_write_json
from sparsecircuits.model import GPT, ModelConfig
from sparsecircuits.tasks.evaluate import chance_loss, logit_diff_loss, task_metrics

SIGN = torch.tensor([1.0, -1.0] * 20)  # pairs: the positive prompt's answer is A, the negative's is B


def test_pair_sum_is_twice_the_prompt_mean_on_a_hand_built_pair():
    diff = torch.tensor([2.0, -0.5])  # one pair: the positive prompt right, the negative one wrong
    per_prompt = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(0.5))]
    assert float(logit_diff_loss(diff, "mean")) == pytest.approx(sum(per_prompt) / 2)
    assert float(logit_diff_loss(diff, "pair-sum")) == pytest.approx(sum(per_prompt))
    assert chance_loss("pair-sum") == pytest.approx(2 * math.log(2)) and chance_loss("mean") == math.log(2)
    assert task_metrics(torch.zeros(4, 2))["loss"] == pytest.approx(1.3862944)  # the default is pair-sum
    with pytest.raises(UserError, match="loss convention"):
        logit_diff_loss(diff, "sum")


def test_a_circuit_that_is_always_wrong_is_refused():
    diff = -3.0 * torch.ones(40)  # correct-minus-wrong: every prompt answered wrongly, confidently
    cal = fit_calibration(diff, SIGN)
    assert cal.scale >= 0  # a negative scale would flip every answer and score near 0
    s = score(diff, SIGN, "mean", cal)
    assert s.accuracy_raw == 0.0
    assert s.loss_calibrated >= math.log(2) - 1e-6  # no better than chance: refused at any sane target
    assert sufficiency_verdict(s.to_json(), 0.15) == "not sufficient"


def test_calibration_cannot_use_the_label():
    cal = fit_calibration(torch.zeros(40), SIGN)
    assert score(torch.zeros(40), SIGN, "mean", cal).loss == pytest.approx(math.log(2), abs=1e-6)
    diff = 3.0 * SIGN  # a model that always says A: right on positive prompts, wrong on negative ones
    assert score(diff, SIGN, "mean").loss >= math.log(2) - 1e-6


def test_calibration_fitted_on_one_set_applies_frozen_to_another():
    g = torch.Generator().manual_seed(0)
    val = 0.2 + 0.3 * torch.randn(40, generator=g)  # right but timid: calibration scales it up
    test = 0.2 + 0.3 * torch.randn(40, generator=g)
    cal = fit_calibration(val, SIGN, "val")
    assert cal.scale > 1 and cal.fitted_on == "val"
    frozen = score(test, SIGN, "pair-sum", cal)
    by_hand = logit_diff_loss(cal.scale * test.double() + SIGN.double() * cal.bias, "pair-sum")
    assert frozen.loss_calibrated == pytest.approx(float(by_hand))
    assert frozen.calibration == cal  # not refitted on the test prompts
    refit = score(test, SIGN, "pair-sum")
    assert refit.calibration != cal and refit.loss_calibrated <= frozen.loss_calibrated + 1e-9
    raw = score(test, SIGN, "pair-sum", fit=False)
    assert raw.loss_raw == raw.loss_calibrated == pytest.approx(float(logit_diff_loss(test, "pair-sum")))
    assert Calibration.from_json(cal.to_json()) == cal


def test_raw_accuracy_below_the_floor_is_flagged():
    suff = {"loss_calibrated": 0.1, "accuracy_raw": 0.5}
    assert sufficiency_verdict(suff, 0.15) == "sufficient only after calibration"
    assert sufficiency_verdict({**suff, "accuracy_raw": 0.95}, 0.15) == "sufficient"


# ---- on a tiny model ---------------------------------------------------------------------------------------
def tiny(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16)
    model = GPT(cfg).eval()
    write_tokens(tmp_path / "v.bin", np.random.default_rng(0).integers(0, 32, 3000))
    means = mean_activations(model, tmp_path / "v.bin", n_windows=16, batch_size=4)
    return model, means, tmp_path / "v.bin"


def prompts(n: int, seed: int) -> PromptSet:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, 32, (n, 8), generator=g)
    correct = torch.tensor([3, 4] * (n // 2))
    return PromptSet(toks, torch.full((n,), 7), correct, 7 - correct, torch.where(correct == 3, 1.0, -1.0))


def recorder(store: dict, loc: str, fn=None):
    """A hook that applies `fn` (if any) and records what the forward then carries at `loc`."""

    def hook(x: torch.Tensor) -> torch.Tensor:
        out = fn(x) if fn is not None else x
        store[loc] = out.detach().clone()
        return out

    return hook


def test_resampled_values_come_from_a_clean_forward_of_pretraining_windows(tmp_path):
    model, _, bin_path = tiny(tmp_path)
    locations = model.node_locations()
    source = DonorSource(model, get_ablation("resample"), bin_path, seed=3)
    p = prompts(6, 0)
    donors = source(p.tokens, p.last, locations)
    replay = DonorSource(model, get_ablation("resample"), bin_path, seed=3)  # the same donor windows
    windows = replay.donor_tokens(p.tokens, p.last)
    data = np.fromfile(bin_path, dtype=np.uint16)
    for row in windows.numpy():  # every donor is a real window of the pretraining stream
        assert any(np.array_equal(data[s : s + len(row)], row) for s in range(len(data) - len(row) + 1))
    seen: dict[str, torch.Tensor] = {}
    with model.hooks({loc: recorder(seen, loc) for loc in locations}):
        model(windows)  # a plain forward of the donors, read through hooks
    for loc in locations:
        assert torch.equal(donors[loc], seen[loc]), loc
    # every node ablated: each takes exactly the donor's value at the same prompt and position
    mask = NodeMask({loc: model.location_width(loc) for loc in locations}, None, "resample")
    gated = mask.hooks(torch.zeros(mask.n_nodes), donors)
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.hooks({loc: recorder(got, loc, gated[loc]) for loc in locations}):
        model(p.tokens)
    for loc in locations:
        assert torch.equal(got[loc], donors[loc]), loc
    with pytest.raises(UserError, match="needs donor activations"):
        mask.hooks(torch.zeros(mask.n_nodes))


def test_validation_reports_raw_necessity_above_chance_and_frozen_calibration(tmp_path):
    model, means, bin_path = tiny(tmp_path)
    test, val = prompts(40, 1), prompts(40, 2)
    widths = {loc: model.location_width(loc) for loc in model.node_locations()}
    mask = NodeMask(widths, means)
    gates = torch.zeros(mask.n_nodes)
    gates[: mask.n_nodes // 3] = 1.0
    with torch.no_grad():
        val_diff = gated_diff(model, mask, gates, val)
    cal = fit_calibration(val_diff, val.sign, "val")
    out = validate(model, means, gates, test, val, 0.15, cal, pretraining=str(bin_path), n_random=2)
    with torch.no_grad():
        test_diff = gated_diff(model, mask, gates, test)
    assert out["sufficiency"] == score(test_diff, test.sign, "pair-sum", cal).to_json()
    assert out["sufficiency"]["calibration"]["fitted_on"] == "val"
    assert out["necessity"]["calibration"]["fitted_on"] == "val"
    for key in ("sufficiency", "necessity", "resample", "full_model"):
        assert set(out[key]) == {
            "loss_raw",
            "accuracy_raw",
            "loss_calibrated",
            "accuracy_calibrated",
            "calibration",
            "logit_diff",
        }
    assert out["sufficiency"]["logit_diff"] == pytest.approx(float(test_diff.double().mean()))
    assert out["random"]["n"] == 2 and "loss_raw" in out["random"] and "accuracy_calibrated" in out["random"]
    assert out["chance"] == pytest.approx(2 * math.log(2)) and out["loss_convention"] == "pair-sum"
    assert out["verdict"] in ("sufficient", "sufficient only after calibration", "not sufficient")
    # a random model is confidently wrong on some prompts: raw necessity is not capped at chance
    with torch.no_grad():
        nec = gated_diff(model, mask, 1.0 - gates, test)
    assert out["necessity"]["loss_raw"] == pytest.approx(float(logit_diff_loss(nec.double())))


def test_necessity_above_chance_is_reported_raw():
    diff = -4.0 * torch.ones(40)  # the circuit removed: the model now confidently wrong
    s = score(diff, SIGN, "pair-sum")
    assert s.loss_raw > chance_loss("pair-sum")  # the damage done, above chance
    assert s.loss_calibrated <= chance_loss("pair-sum") + 1e-6  # calibration alone would hide it


def test_schema_1_circuit_files_still_load(tmp_path):
    old = {
        "schema": "sparsecircuits.circuit/1",
        "model": {"path": "runs/x", "content_hash": "ab"},
        "task": {"name": "single_double_quote"},
        "ablation": "mean",
        "loss_convention": "binary cross-entropy ..., mean over prompts",
        "target_loss": 0.15,
        "achieved": {
            "loss": 0.14,
            "loss_uncalibrated": 1.7,
            "accuracy": 0.5,
            "calibration": {"scale": 2.1, "bias": 10.9},
            "full_model_loss": 0.05,
            "full_model_loss_uncalibrated": 0.06,
        },
        "nodes": ["0.attn.q.1"],
        "edges": [],
        "counts": {"nodes": 1, "edges": 0},
        "validation": {
            "sufficiency": {"loss": 0.177, "loss_uncalibrated": 1.778, "accuracy": 0.5, "calibration": {}},
            "necessity": {"loss": 0.693, "loss_uncalibrated": 0.9, "accuracy": 0.4},
            "random": {"loss": 0.7, "std": 0.01, "n": 5},
            "chance": 0.693,
        },
    }
    atomic_write_json(tmp_path / "old.circuit.json", old)
    c = read_circuit(tmp_path / "old.circuit.json")
    assert c["schema"] == SCHEMA and c["loss_convention"] == "mean"
    assert c["achieved"]["loss_raw"] == 1.7 and c["achieved"]["loss_calibrated"] == 0.14
    assert c["achieved"]["full_model"]["loss_raw"] == 0.06
    v = c["validation"]
    assert v["sufficiency"]["loss_raw"] == 1.778 and v["sufficiency"]["calibration"]["fitted_on"] == "test"
    assert v["verdict"] == "not sufficient"  # 0.177 > 0.15
    assert v["random"]["loss_calibrated"] == 0.7


def test_natural_prompts_score_under_a_resample_ablation(tmp_path):
    from sparsecircuits.circuits.validate import score_natural

    model, means, bin_path = tiny(tmp_path)
    natural = prompts(8, 3)
    gates = torch.ones(sum(model.location_width(loc) for loc in model.node_locations()))
    out = score_natural(
        model, means, gates, natural, Calibration(), ablation="resample", pretraining=str(bin_path)
    )
    assert out["n_prompts"] == 8 and out["circuit"] == out["full_model"]  # every node kept: nothing resampled


def test_length_buckets_give_the_logit_differences_of_one_padded_forward():
    """gated_diff runs one forward per length bucket; a prompt's answer does not depend on the padding after
    it, so the result equals one forward over the whole right-padded set (zero and resample ablations)."""
    from sparsecircuits.circuits.scoring import correct_minus_wrong

    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=32, n_layer=2, d_model=16, n_head=2, d_head=8, d_mlp=64, n_ctx=16)
    ).eval()
    n, T = 70, 16
    last = torch.randint(1, T, (n,))
    prompts = PromptSet(
        torch.randint(0, 32, (n, T)),
        last,
        torch.randint(0, 32, (n,)),
        torch.randint(0, 32, (n,)),
        torch.ones(n),
    )
    assert len(prompts.length_buckets()) == 4
    assert sorted(torch.cat(prompts.length_buckets()).tolist()) == list(range(n))
    widths = {loc: model.location_width(loc) for loc in model.node_locations()}
    for ablation in ("zero", "resample"):
        mask = NodeMask(widths, None, ablation)
        gates = (torch.rand(mask.n_nodes) < 0.5).float()
        donors = {loc: torch.randn(n, T, w) for loc, w in widths.items()} if ablation == "resample" else None
        with torch.no_grad(), model.hooks(mask.hooks(gates, donors)):
            whole = correct_minus_wrong(model, prompts)
        with torch.no_grad():
            bucketed = gated_diff(model, mask, gates, prompts, donors)
        assert torch.allclose(bucketed, whole, atol=1e-5), (bucketed - whole).abs().max()


def test_the_summary_gives_the_circuits_share_of_the_logit_difference():
    """A calibration can blow a whisper up to a sufficient loss: the summary says how much of an answer the
    circuit gives before it (mean raw correct-minus-wrong, against the full model's) and the scale applied."""
    from sparsecircuits.circuits.circuit import circuit_summary
    from sparsecircuits.circuits.commands import score_lines

    cal = {"scale": 334.0, "bias": 759.0, "fitted_on": "val"}
    own = {"loss_raw": 2.4, "accuracy_raw": 0.5, "loss_calibrated": 0.06, "accuracy_calibrated": 0.99}
    full = {"loss_raw": 0.01, "accuracy_raw": 1.0, "loss_calibrated": 0.0, "accuracy_calibrated": 1.0}
    circuit = {
        "task": {"name": "while_return_true"},
        "target_loss": 0.15,
        "achieved": {**own, "loss": 0.06, "full_model": full},
        "counts": {"nodes": 16, "edges": 13},
        "validation": {
            "sufficiency": {**own, "calibration": cal, "logit_diff": 0.032},
            "full_model": {**full, "logit_diff": 6.64},
            "verdict": "sufficient only after calibration",
            "chance": 1.386,
        },
    }
    text = "\n".join(score_lines(circuit))
    assert (
        "circuit 0.032, full model 6.640 (0.5 % of it; the calibration scales the circuit's by 334.000)"
        in text
    )
    assert circuit_summary(circuit)["logit_share"] == pytest.approx(0.032 / 6.64)  # the demo report's column
    del circuit["validation"]["sufficiency"]["logit_diff"]  # a file written before it was stored
    assert circuit_summary(circuit)["logit_share"] is None
    assert "logit difference" not in "\n".join(score_lines(circuit))
