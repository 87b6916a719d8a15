"""The one-command demo end to end, at smoke size (tiny preset, a small corpus, two tasks)."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from sparsecircuits.experiments.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    cfg = DemoConfig(
        out=tmp_path / "demo",
        sources=(stdlib / "json", stdlib / "email"),
        synthetic_mb=0.3,
        preset="tiny",
        max_tasks=2,
        relaxed_cap=1.5,
        dense_sets=(),
        eval_pairs=16,
        target_loss=1.0,
        prune_steps=5,
        device="cpu",
    )
    report = run_demo(cfg)
    summary = json.loads((cfg.out / "report.json").read_text())
    assert report.is_file() and "<img src='data:image/png;base64," in report.read_text()
    assert summary["tasks_pruned"] == ["single_double_quote", "bracket_counting"]
    assert set(summary["targets"]) == set(summary["tasks_pruned"])
    for kind in ("sparse", "dense"):
        for task in summary["tasks_pruned"]:
            circuit = json.loads((cfg.out / "circuits" / kind / f"{task}.circuit.json").read_text())
            assert circuit["achieved"]["loss"] <= 1.0 and "validation" in circuit
    # a rerun resumes: every stage is found complete and nothing is retrained
    before = (cfg.out / "sparse" / "model.safetensors").stat().st_mtime_ns
    run_demo(DemoConfig(**{**cfg.__dict__, "timings": {}}))
    assert (cfg.out / "sparse" / "model.safetensors").stat().st_mtime_ns == before
