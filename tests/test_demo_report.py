"""The demo report's "The smallest circuit, explained" section (experiments/report.py, demo.describe_smallest)
and the describe labels in the circuit drawing (viewer/svg.py). The end-to-end check, with a tiny demo, is in
test_demo.py::test_demo_smoke."""

from __future__ import annotations

from html import escape
from xml.etree import ElementTree

from sparsecircuits.circuits.explain import explain_text
from sparsecircuits.experiments.demo import DemoConfig, describe_smallest, smallest_circuit
from sparsecircuits.experiments.report import smallest_section
from sparsecircuits.viewer.export import export_svg
from sparsecircuits.viewer.svg import SHORT_LABEL_MAX_NODES, short_label
from test_describe import PLANTED, circuit_of
from test_prune import planted_model

SVG = "{http://www.w3.org/2000/svg}"
LABELS = {
    "0.mlp.act_in.0": "negative on identifier tokens; higher on '(' prompts",
    "0.mlp.post_act.0": "fires on '\"' after '('; higher on '(' prompts",
    "0.mlp.post_act.1": "fires on mixed tokens, most '<'; higher on ')' prompts",
    "0.mlp.resid_delta.1": "silent on pretraining text; direct logit diff +0.42",
}


def described_circuit() -> dict:
    circuit = circuit_of(planted_model(), PLANTED)
    for name, label in LABELS.items():
        circuit["node_info"][name]["label"] = label
    return circuit


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ElementTree.fromstring(svg).iter(SVG + "text")]


def titles(svg: str) -> list[str]:
    return [t.text or "" for t in ElementTree.fromstring(svg).iter(SVG + "title")]


def fake(edges: int, nodes: int) -> dict:
    return {"counts": {"edges": edges, "nodes": nodes}}


def test_the_smallest_circuit_has_the_fewest_edges_then_nodes():
    circuits = {
        "sparse": {"a": fake(9, 3), "b": fake(5, 8), "c": fake(5, 4), "d": {"skipped": "not reached"}},
        "dense": {"e": fake(1, 1)},  # only the sparse model's circuits are candidates
    }
    assert smallest_circuit(circuits) == "c"
    assert smallest_circuit({"sparse": {"a": fake(5, 4), "b": fake(5, 4)}}) == "a"  # ties: task order
    assert smallest_circuit({"sparse": {"d": {"skipped": "not reached"}}, "dense": {"e": fake(1, 1)}}) is None


def test_no_circuit_reached_is_said_in_the_report(tmp_path):
    circuits = {"sparse": {"t": {"skipped": "not reached"}}, "dense": {}}
    assert describe_smallest(DemoConfig(out=tmp_path), {}, circuits) is None
    section = smallest_section(circuits, None)
    assert "<h2>The smallest circuit, explained</h2>" in section
    assert "No sparse-model circuit reached its target" in section and "<svg" not in section


def test_the_section_draws_and_explains_the_chosen_circuit():
    circuit = described_circuit()
    chosen = {"kind": "sparse", "task": "single_double_quote", "path": "c<1>.json", "nodes": 4, "edges": 4}
    section = smallest_section({"sparse": {"single_double_quote": circuit}}, chosen)
    svg = section[section.index("<svg") : section.index("</svg>") + len("</svg>")]
    assert "single_double_quote circuit" in texts(svg)
    assert f"<pre class='explain'>{escape(explain_text(circuit))}</pre>" in section
    assert all(escape(label) in section for label in LABELS.values())  # in the explain text
    assert "c&lt;1&gt;.json" in section and "c<1>" not in section
    assert "could not be described" not in section


def test_a_describe_failure_is_shown_and_the_circuit_still_drawn():
    circuit = circuit_of(planted_model(), PLANTED)
    chosen = {"kind": "sparse", "task": "t", "path": "c.json", "nodes": 4, "edges": 4}
    section = smallest_section({"sparse": {"t": circuit}}, {**chosen, "describe_error": "no <val.bin>"})
    assert "could not be described: no &lt;val.bin&gt;" in section
    assert "<svg" in section and "no descriptions yet" in section  # explain's pointer to describe


def test_svg_shows_short_labels_of_a_small_described_circuit():
    circuit = described_circuit()
    svg = export_svg(circuit, "t")
    shown = texts(svg)
    assert "\u2212identifier" in shown  # 'negative on identifier tokens'
    assert "'\"' after '('" in shown and "~'<'" in shown and "silent" in shown
    assert any("teal: what a node fires on" in t for t in shown)
    assert any(t.startswith("0.mlp.post_act.1: " + LABELS["0.mlp.post_act.1"]) for t in titles(svg))


def test_svg_of_a_large_or_undescribed_circuit_has_no_visible_labels(monkeypatch):
    plain = circuit_of(planted_model(), PLANTED)
    before = export_svg(plain, "t")
    assert not any("teal" in t for t in texts(before)) and 'fill="#0f766e"' not in before
    large = described_circuit()
    assert len(large["nodes"]) <= SHORT_LABEL_MAX_NODES
    # the same circuit over the limit: its labels stay in the tooltips
    monkeypatch.setattr("sparsecircuits.viewer.svg.SHORT_LABEL_MAX_NODES", len(large["nodes"]) - 1)
    svg = export_svg(large, "t")
    assert 'fill="#0f766e"' not in svg and not any("teal" in t for t in texts(svg))
    assert any(LABELS["0.mlp.act_in.0"] in t for t in titles(svg))


def test_short_label():
    assert short_label("negative on identifier tokens; higher on '(' prompts") == "\u2212identifier"
    assert short_label("fires on mixed tokens, most ' import'") == "~' import'"
    assert short_label("fires on ' while' after 7 spaces") == "' while' after\u2026"
    assert len(short_label("x" * 100)) == 15


def test_demo_prunes_again_a_circuit_pruned_with_other_settings(tmp_path, monkeypatch):
    """A circuit of an older demo (other pruning defaults) is pruned again; one with the same settings is kept."""
    from dataclasses import asdict

    from sparsecircuits.circuits import commands, session
    from sparsecircuits.circuits.circuit_file import write_circuit
    from sparsecircuits.circuits.prune import PruneConfig
    from sparsecircuits.experiments.demo import prune_tasks

    cfg = DemoConfig(out=tmp_path, workers=1)  # in this process, where the fakes below are installed
    same = PruneConfig(
        target_loss=0.15,
        steps=cfg.prune_steps,
        batch_pairs=cfg.prune_batch_pairs,
        loss_convention=cfg.loss_convention,
    )
    calls = []
    monkeypatch.setattr(session, "PruneSession", lambda *a, **k: object())
    monkeypatch.setattr(commands, "score_lines", lambda c: [])
    monkeypatch.setattr(
        session, "prune_one", lambda s, task, *a, **k: calls.append(task) or new_circuit(task)
    )

    def new_circuit(task: str) -> dict:
        c = circuit_of(planted_model(), PLANTED)
        c["task"]["name"] = task
        c["pruning"] = {"hyperparameters": asdict(same), "seconds": 1.0, "history": [], "search": []}
        return c

    for task, hyper in (("kept", asdict(same)), ("stale", {**asdict(same), "min_raw_accuracy": 0.0})):
        c = new_circuit(task)
        c["pruning"]["hyperparameters"] = hyper
        write_circuit(tmp_path / "circuits" / "sparse" / f"{task}.circuit.json", c)
    prune_tasks(cfg, {"sparse": tmp_path}, ["kept", "stale"], {"kept": 0.15, "stale": 0.15})
    assert calls == ["stale"]
