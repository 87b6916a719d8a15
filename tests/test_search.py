"""Successive halving over pruning settings: short trials for all, the better half continued."""

from __future__ import annotations

import math
from types import SimpleNamespace

import sparsecircuits.circuits.search as search_mod
from sparsecircuits.circuits.prune import PruneConfig


def trial(k: int, loss: float = 0.1, bisected: int | None = None, mask=None, history=None) -> SimpleNamespace:
    """What the search reads of a PruneResult: k nodes (`bisected` before the clean-up, default k)."""
    stages = {"bisection": {"nodes": k if bisected is None else bisected}}
    return SimpleNamespace(
        k=k, score=SimpleNamespace(loss=loss), seconds=0.0, stages=stages, mask=mask, history=history or []
    )


def fake_prune(calls: list, held: list | None = None):
    """A prune whose circuit size falls with k_coef and with more steps (a stand-in for mask training);
    `held` collects the held-out prompts each call got."""

    def prune(model, means, train, evaluation, cfg, *args, held_out=None, **kwargs):
        calls.append(cfg)
        if held is not None:
            held.append(held_out)
        return trial(int(1000 / (1 + 1e4 * cfg.k_coef) / math.sqrt(cfg.steps)))

    return prune


def test_successive_halving_runs_short_trials_and_continues_the_best(monkeypatch):
    calls: list = []
    held: list = []
    monkeypatch.setattr(search_mod, "prune", fake_prune(calls, held))
    base = PruneConfig(steps=600)
    best, rows = search_mod.search(
        None, None, None, None, base, budget=8, progress=False, log=lambda s: None, held_out="HELD"
    )
    assert [r["rung"] for r in rows] == [0] * 8 + [1] * 4 + [2] * 2 + [3]
    assert [r["steps"] for r in rows] == [75] * 8 + [150] * 4 + [300] * 2 + [600]
    assert [c.cleanup for c in calls] == [False] * 14 + [True]  # clean-up only for the final run
    assert held == [None] * 14 + ["HELD"]  # and so its held-out check
    # each rung keeps the better half: the survivors are the settings with the smallest circuits so far
    rung0 = sorted(rows[:8], key=lambda r: r["k"])
    assert {r["k_coef"] for r in rows[8:12]} == {r["k_coef"] for r in rung0[:4]}
    assert {r["k_coef"] for r in rows[12:14]} == {
        r["k_coef"] for r in sorted(rows[8:12], key=lambda r: r["k"])[:2]
    }
    assert rows[-1]["k_coef"] == min(rows[12:14], key=lambda r: r["k"])["k_coef"]
    assert best.k == rows[-1]["k"]


def test_budget_one_is_one_plain_trial(monkeypatch):
    calls: list = []
    monkeypatch.setattr(search_mod, "prune", fake_prune(calls))
    base = PruneConfig(steps=150)
    _, rows = search_mod.search(None, None, None, None, base, budget=1, progress=False)
    assert len(calls) == 1 and calls[0] == base and rows[0]["steps"] == 150


def test_no_rung_is_shorter_than_the_floor(monkeypatch):
    """Fewer, longer rungs where halving would go under MIN_RUNG_STEPS: each then keeps a smaller share."""
    assert search_mod.MIN_RUNG_STEPS == 75
    assert search_mod.rung_plan(8, 300) == [(8, 75), (3, 150), (1, 300)]
    assert search_mod.rung_plan(8, 160) == [(8, 80), (1, 160)]
    assert search_mod.rung_plan(4, 100) == [(4, 100)]  # no room to halve: every setting in full
    calls: list = []
    monkeypatch.setattr(search_mod, "prune", fake_prune(calls))
    best, rows = search_mod.search(None, None, None, None, PruneConfig(steps=160), budget=8, progress=False)
    assert [r["steps"] for r in rows] == [80] * 8 + [160]
    assert rows[-1]["k_coef"] == min(rows[:8], key=lambda r: r["k"])["k_coef"]  # the best of rung 0 goes on
    assert [c.cleanup for c in calls] == [False] * 8 + [True]
    calls.clear()
    best, rows = search_mod.search(None, None, None, None, PruneConfig(steps=100), budget=4, progress=False)
    assert [r["steps"] for r in rows] == [100] * 4 and all(c.cleanup for c in calls)
    assert best.k == min(r["k"] for r in rows)


def test_a_shorter_trial_that_bisected_smaller_is_finished_and_can_win(monkeypatch):
    """At a strong penalty more steps can close every gate and lose the ranking: then the short rung's best
    trial goes through the final stages from its own trained gates, and the smaller finished circuit wins."""
    calls: list = []
    finished_from: list = []

    def fake(model, means, train, evaluation, cfg, *args, trained=None, **kwargs):
        calls.append(cfg)
        if trained is not None:  # finishing: the clean-up takes the bisection's 20 nodes to 12
            finished_from.append(trained)
            return trial(12, loss=0.12, bisected=20, mask=trained)
        strong = cfg.k_coef > 0.03
        k = (3000 if cfg.steps > 100 else 20) if strong else 60  # strong and long: every gate closed
        return trial(k, mask=("gates", cfg.k_coef, cfg.steps), history=[{"step": 0}])

    monkeypatch.setattr(search_mod, "prune", fake)
    logs: list[str] = []
    best, rows = search_mod.search(
        None,
        None,
        None,
        None,
        PruneConfig(steps=200),
        budget=8,
        progress=False,
        log=logs.append,
        held_out="HELD",
    )
    assert [r["steps"] for r in rows[:9]] == [100] * 8 + [200]
    assert any(r["k_coef"] > 0.03 for r in rows[:8]) and rows[8]["k"] == 3000  # the long run lost its ranking
    (gates,) = finished_from  # one finishing run, from that setting's own 100-step gates
    assert gates[1] > 0.03 and gates[2] == 100
    assert calls[-1].steps == 100 and calls[-1].cleanup and calls[-1].edges
    assert rows[-1]["finished"] and rows[-1]["k"] == 12 and best.k == 12 and best.history == [{"step": 0}]
    assert any("finishing" in line for line in logs)


def test_no_finishing_when_the_final_run_bisected_smallest(monkeypatch):
    calls: list = []
    monkeypatch.setattr(search_mod, "prune", fake_prune(calls))
    best, rows = search_mod.search(None, None, None, None, PruneConfig(steps=160), budget=8, progress=False)
    assert len(rows) == 9 and not any(r.get("finished") for r in rows)  # more steps gave fewer nodes
