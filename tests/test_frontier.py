"""The frontier sweep at smoke size: two tiny models, two tasks, table, plots, and resume."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from sparsecircuits.data.build import BuildConfig, build_dataset
from sparsecircuits.errors import UserError
from sparsecircuits.experiments.frontier import FrontierConfig, run_frontier
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS


@pytest.mark.slow
def test_frontier_smoke(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = tmp_path / "data"
    build_dataset(
        BuildConfig(
            out=data,
            sources=[stdlib / "json"],
            synthetic_mb=0.3,
            required_tokens=REQUIRED_TOKENS,
            progress=False,
        )
    )
    config = {
        "data": str(data),
        "out": str(tmp_path / "frontier"),
        "target_loss": 2.0,  # pair-sum (chance 1.386): tiny models barely learn
        "sweep_targets": [2.0, 1.38],
        "tasks": ["single_double_quote", "bracket_counting"],
        "prune": {"steps": 3, "train_pairs": 16, "eval_pairs": 16, "k_coef": 0.02},
        "models": [{"name": "sparse", "preset": "tiny"}, {"name": "dense", "preset": "tiny", "dense": True}],
    }
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(config))
    cfg = FrontierConfig.load(path)
    cfg.device = "cpu"
    summary = run_frontier(cfg)
    out = tmp_path / "frontier"
    assert {m["kind"] for m in summary["models"]} == {"sparse", "dense"}
    for m in summary["models"]:
        assert m["tasks_reached"] == 2 and m["geomean_edges"] is not None
    assert summary["matched_pair"]["ratio"] is not None and summary["loss_convention"] == "pair-sum"
    assert "pair-sum convention" in (out / "frontier.md").read_text()
    for f in ("frontier.json", "frontier.md", "fig3_frontier.png", "fig2_loss_vs_edges.png"):
        assert (out / f).is_file(), f
    circuits = list(out.rglob("*.circuit.json"))
    assert circuits and all(
        json.loads(p.read_text())["pruning"]["hyperparameters"]["k_coef"] == 0.02 for p in circuits
    )
    # a rerun reuses every finished cell: no model is retrained, no circuit rewritten
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.circuit.json")}
    run_frontier(FrontierConfig.load(path))
    assert stamp and all(p.stat().st_mtime_ns == t for p, t in stamp.items())


def test_frontier_config_errors(tmp_path):
    path = tmp_path / "f.json"
    for bad, msg in [
        ({"out": "x", "models": []}, "missing 'data'"),
        ({"data": "d", "out": "x", "models": []}, "non-empty"),
        ({"data": "d", "out": "x", "models": [{"name": "a", "lr": 1}]}, "each model"),
        ({"data": "d", "out": "x", "models": [{"name": "a"}], "tasks": ["nope"]}, "unknown task"),
        ({"data": "d", "out": "x", "models": [{"name": "a"}], "extra": 1}, "unknown key"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(UserError, match=msg):
            FrontierConfig.load(path)
