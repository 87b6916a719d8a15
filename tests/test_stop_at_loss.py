"""train.stop_at_loss: a loss-matched early stop stops at the first evaluation at or below the given loss,
finishes the run like a normal end, keeps the full run's schedules, and a stopped run resumes as finished.
Also `train --stop-at-loss / --match-loss` and the frontier's "stop_at_loss" / "match_loss_of" entries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cli_helpers import run_cli
from sparsecircuits import cli
from sparsecircuits.errors import UserError
from sparsecircuits.experiments.frontier import FrontierConfig, matched_pair, model_sets
from sparsecircuits.run import load_tensors
from sparsecircuits.train import checkpoint as ckpt
from sparsecircuits.train.config import TrainConfig
from sparsecircuits.train.trainer import final_val_loss, train
from test_train import dataset  # noqa: F401  (the session fixture: a small byte-level dataset)

# Tiny runs of 12 steps with an evaluation (and a kept checkpoint) every 3 steps.
STEPS, EVERY = 12, 3
FAST = [
    f"train.steps={STEPS}",
    "train.batch_size=4",
    f"train.eval_every={EVERY}",
    f"train.ckpt_every={EVERY}",
    f"train.log_every={EVERY}",
    "train.keep_checkpoints=10",
    "train.l0_target=0.3",
]
TIMING = {"tokens_per_s"}  # wall-clock measurements differ between two identical runs


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def evals(run: Path) -> dict[int, float]:
    """{step: val_loss} of the evaluations after step 0."""
    return {r["step"]: r["val_loss"] for r in metrics(run) if r["step"] > 0 and "val_loss" in r}


def same_record(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


def first_at_or_below(losses: dict[int, float], target: float) -> int | None:
    return next((s for s in sorted(losses) if s < STEPS and losses[s] <= target), None)


@pytest.fixture(scope="module")
def full(dataset, tmp_path_factory) -> Path:  # noqa: F811
    """The unstopped reference run, with a checkpoint kept at every evaluation."""
    run = tmp_path_factory.mktemp("full") / "run"
    train(dataset, run, preset="tiny", sets=FAST, progress=False)
    return run


@pytest.fixture
def commands(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "train", ("sparsecircuits.train.commands", "train"))


def test_stops_at_first_evaluation_at_or_below_the_loss(dataset, full, tmp_path):  # noqa: F811
    losses = evals(full)
    assert losses[3] > losses[6]  # the tiny run learns, so a target between two evaluations exists
    target = (losses[3] + losses[6]) / 2
    expected = first_at_or_below(losses, target)
    assert expected == 6
    run = tmp_path / "stopped"
    last = train(dataset, run, preset="tiny", sets=[*FAST, f"train.stop_at_loss={target!r}"], progress=False)
    recs, ref = metrics(run), metrics(full)
    # Same records as the full run up to the stop (the schedules are those of the full run's steps) ...
    assert [r["step"] for r in recs] == [r["step"] for r in ref if r["step"] <= expected]
    for a, b in zip(recs[:-1], ref, strict=False):
        assert same_record(a, b)
    end = recs[-1]
    assert end == last and end["step"] == expected and end["val_loss"] == losses[expected] <= target
    assert end["stopped_early"] is True and end["stop_at_loss"] == target
    assert same_record({k: v for k, v in end.items() if k not in ("stopped_early", "stop_at_loss")}, ref[2])
    assert not any(r.get("stopped_early") for r in ref)
    # ... and the final weights are bit-identical to the full run's checkpoint at that step.
    final = load_tensors(run / "model.safetensors")
    at_stop = load_tensors(full / "checkpoints" / f"step_{expected:08d}" / "model.safetensors")
    assert final.keys() == at_stop.keys()
    for k in final:
        assert torch.equal(final[k], at_stop[k]), k
    assert ckpt.latest_checkpoint(run).name == f"step_{expected:08d}"
    assert json.loads((run / "config.json").read_text())["train"]["stop_at_loss"] == target


def test_exactly_the_loss_of_an_evaluation_stops_there(dataset, full, tmp_path):  # noqa: F811
    losses = evals(full)
    target = losses[9]  # "at or below": equality stops
    expected = first_at_or_below(losses, target)
    last = train(
        dataset, tmp_path / "r", preset="tiny", sets=[*FAST, f"train.stop_at_loss={target!r}"], progress=False
    )
    assert last["step"] == expected and last["val_loss"] == target and last["stopped_early"]


def test_loss_above_the_first_evaluation_stops_there(dataset, full, tmp_path):  # noqa: F811
    target = evals(full)[EVERY] + 1.0  # above the first evaluation after step 0 (step 0 never stops a run)
    assert metrics(full)[0]["val_loss"] <= target  # even the untrained model's: step 0 is not a stop
    run = tmp_path / "r"
    last = train(dataset, run, preset="tiny", sets=[*FAST, f"train.stop_at_loss={target!r}"], progress=False)
    assert last["step"] == EVERY and last["stopped_early"]
    assert [r["step"] for r in metrics(run)] == [0, EVERY]


def test_unreachable_loss_runs_to_the_end(dataset, full, tmp_path):  # noqa: F811
    run = tmp_path / "r"
    last = train(dataset, run, preset="tiny", sets=[*FAST, "train.stop_at_loss=0.001"], progress=False)
    assert last["step"] == STEPS and "stopped_early" not in last
    assert last["val_loss"] == metrics(full)[-1]["val_loss"]
    assert not any(r.get("stopped_early") for r in metrics(run))


def test_resuming_a_stopped_run_does_nothing(dataset, full, tmp_path):  # noqa: F811
    target = evals(full)[EVERY] + 1.0
    run = tmp_path / "r"
    train(dataset, run, preset="tiny", sets=[*FAST, f"train.stop_at_loss={target!r}"], progress=False)
    weights, log = (run / "model.safetensors").read_bytes(), (run / "metrics.jsonl").read_text()
    again = train(dataset, run, resume=True, progress=False)
    assert again["already_complete"] and again["stopped_early"] and again["step"] == EVERY
    assert (run / "model.safetensors").read_bytes() == weights and (run / "metrics.jsonl").read_text() == log
    assert ckpt.latest_checkpoint(run).name == f"step_{EVERY:08d}"
    # Killed after the stop's checkpoint but before the weights: resuming only writes them, no more steps.
    (run / "model.safetensors").unlink()
    last = train(dataset, run, resume=True, progress=False)
    assert last["step"] == EVERY and last["stopped_early"] and not last.get("already_complete")
    assert (run / "model.safetensors").read_bytes() == weights
    assert max(r["step"] for r in metrics(run)) == EVERY


def test_resumed_run_keeps_honouring_the_stop(dataset, full, tmp_path, monkeypatch):  # noqa: F811
    from sparsecircuits.train.trainer import Trainer

    losses = evals(full)
    target = losses[9]
    expected = first_at_or_below(losses, target)
    assert expected > EVERY
    original = Trainer.train_step

    def dies_after_first_checkpoint(self, step):
        if step == EVERY + 1:
            raise RuntimeError("killed")
        return original(self, step)

    monkeypatch.setattr(Trainer, "train_step", dies_after_first_checkpoint)
    run = tmp_path / "r"
    with pytest.raises(RuntimeError, match="killed"):
        train(dataset, run, preset="tiny", sets=[*FAST, f"train.stop_at_loss={target!r}"], progress=False)
    monkeypatch.undo()
    last = train(dataset, run, resume=True, progress=False)
    assert last["step"] == expected and last["stopped_early"] and last["val_loss"] == target


def test_config_validation():
    assert TrainConfig().stop_at_loss == 0.0  # off
    for bad in (-1.0, math.nan, math.inf, True):
        with pytest.raises(UserError, match="stop_at_loss"):
            TrainConfig(stop_at_loss=bad).validate()


def one_line_error(capsys, args: list[str], text: str) -> None:
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1, err


def test_cli_stop_at_loss_and_match_loss(dataset, full, tmp_path, commands, capsys):  # noqa: F811
    base = ["train", "--data", str(dataset), "--preset", "tiny", "--quiet"]
    sets = [a for s in FAST for a in ("--set", s)]
    # --match-loss stops at exactly the other run's final val loss (equal to it here, so at the end).
    out = tmp_path / "matched"
    assert run_cli([*base, *sets, "--out", str(out), "--match-loss", str(full)]) == 0
    final = metrics(full)[-1]["val_loss"]
    assert final_val_loss(full) == final
    assert json.loads((out / "config.json").read_text())["train"]["stop_at_loss"] == final
    # --stop-at-loss is --set train.stop_at_loss
    target = evals(full)[EVERY] + 1.0
    out = tmp_path / "flag"
    assert run_cli([*base, *sets, "--out", str(out), "--stop-at-loss", repr(target)]) == 0
    assert metrics(out)[-1]["step"] == EVERY and metrics(out)[-1]["stopped_early"]
    # One-line errors, nothing written.
    bad = tmp_path / "bad"
    one_line_error(
        capsys, [*base, "--out", str(bad), "--match-loss", str(tmp_path / "nope")], "not a finished"
    )
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text('{"step": 0, "val_loss": 5.0}\n')
    one_line_error(capsys, [*base, "--out", str(bad), "--match-loss", str(unfinished)], "not a finished")
    no_loss = tmp_path / "no_loss"
    no_loss.mkdir()
    (no_loss / "model.safetensors").write_bytes((full / "model.safetensors").read_bytes())
    (no_loss / "metrics.jsonl").write_text('{"step": 0}\nnot json\n')
    one_line_error(capsys, [*base, "--out", str(bad), "--match-loss", str(no_loss)], "no validation loss")
    one_line_error(
        capsys, [*base, "--out", str(bad), "--match-loss", str(full), "--stop-at-loss", "3"], "contradict"
    )
    one_line_error(
        capsys,
        ["train", "--data", str(dataset), "--out", str(out), "--resume", "--stop-at-loss", "3"],
        "--resume",
    )
    one_line_error(capsys, [*base, "--out", str(bad), "--stop-at-loss", "-1"], "--stop-at-loss")
    one_line_error(capsys, [*base, "--out", str(bad), "--set", "train.stop_at_loss=-1"], "stop_at_loss")
    assert not bad.exists()


# ---- frontier ------------------------------------------------------------------------------------


def frontier_config(tmp_path: Path, dataset: Path, models: list) -> Path:  # noqa: F811
    path = tmp_path / "frontier.json"
    config = {
        "data": str(dataset),
        "out": str(tmp_path / "f"),
        "tasks": ["single_double_quote"],
        "models": models,
    }
    path.write_text(json.dumps(config))
    return path


def test_frontier_entries_validate(dataset, tmp_path):  # noqa: F811
    sparse = {"name": "sparse", "preset": "tiny"}
    good = frontier_config(
        tmp_path,
        dataset,
        [
            sparse,
            {"name": "dense", "preset": "tiny", "dense": True, "match_loss_of": "sparse"},
            {"name": "fixed", "preset": "tiny", "dense": True, "stop_at_loss": 4.5},
        ],
    )
    cfg = FrontierConfig.load(good)
    assert model_sets(cfg, cfg.models[2]) == ["train.stop_at_loss=4.5"]
    assert model_sets(cfg, cfg.models[0]) == []
    for models, msg in [
        (
            [sparse, {"name": "d", "preset": "tiny", "match_loss_of": "later"}, {"name": "later"}],
            "listed before",
        ),
        ([{"name": "d", "preset": "tiny", "match_loss_of": "d"}], "listed before"),
        ([sparse, {"name": "d", "match_loss_of": "sparse", "stop_at_loss": 3}], "contradict"),
        ([{"name": "d", "stop_at_loss": -3}], "positive number"),
        ([{"name": "d", "stop_at_loss": True}], "positive number"),
        ([{"name": "d", "match_loss_of": 3}], "model name"),
        ([{"name": "d", "run": "x", "stop_at_loss": 3}], "not a 'run'"),
    ]:
        with pytest.raises(UserError, match=msg):
            FrontierConfig.load(frontier_config(tmp_path, dataset, models))


def test_frontier_matched_partner_stops_at_the_other_models_loss(dataset, full, tmp_path):  # noqa: F811
    from sparsecircuits.experiments.frontier import ensure_model

    path = frontier_config(
        tmp_path,
        dataset,
        [
            {"name": "sparse", "run": str(full)},
            {"name": "dense", "preset": "tiny", "dense": True, "set": FAST, "match_loss_of": "sparse"},
        ],
    )
    cfg = FrontierConfig.load(path)
    cfg.device = "cpu"
    target = final_val_loss(full)
    assert model_sets(cfg, cfg.models[1]) == [*FAST, f"train.stop_at_loss={target!r}"]
    run = ensure_model(cfg, cfg.models[1])
    assert json.loads((run / "config.json").read_text())["train"]["stop_at_loss"] == target
    last, stop = metrics(run)[-1], first_at_or_below(evals(run), target)
    if stop is None:  # the dense partner never got there: it ran to the end
        assert last["step"] == STEPS and "stopped_early" not in last
    else:
        assert last["step"] == stop and last["stopped_early"] and last["val_loss"] <= target


def test_matched_pair_prefers_the_explicit_partner():
    rows = [
        {"name": "s", "kind": "sparse", "val_loss": 3.0},
        {"name": "d-close", "kind": "dense", "val_loss": 3.0},
        {"name": "d-matched", "kind": "dense", "val_loss": 2.9, "matched_to": "s"},
    ]
    for r in rows:
        r["tasks"] = {}
    pair = matched_pair(rows, [])
    assert (pair["sparse"], pair["dense"]) == ("s", "d-matched")
    assert matched_pair(rows[:2], [])["dense"] == "d-close"
