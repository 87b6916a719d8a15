"""The one-command demo end to end, at smoke size (tiny preset, a small corpus, two tasks)."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import click
import pytest

from sparsecircuits.experiments.demo import DemoConfig, run_demo


@pytest.fixture
def two_threads():
    """Two or more torch threads: the demo prunes its two models side by side, in worker processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_demo_smoke(tmp_path, two_threads, capsys):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    cfg = DemoConfig(
        out=tmp_path / "demo",
        sources=(stdlib / "json", stdlib / "email"),
        synthetic_mb=0.3,
        preset="tiny",
        max_tasks=2,
        relaxed_cap=3.0,
        dense_sets=(),
        eval_pairs=16,
        target_loss=2.0,  # pair-sum (chance 1.386): tiny models barely learn
        natural_sources=(Path(click.__file__).parent,),
        prune_steps=5,
        device="cpu",
    )
    report = run_demo(cfg)
    assert "circuits in 2 worker processes" in capsys.readouterr().err  # the side-by-side path ran
    summary = json.loads((cfg.out / "report.json").read_text())
    assert report.is_file() and "<img src='data:image/png;base64," in report.read_text()
    assert "sparse logit diff" in report.read_text()  # the circuits' share of the logit difference
    assert summary["tasks_pruned"] == ["single_double_quote", "bracket_counting"]
    assert set(summary["targets"]) == set(summary["tasks_pruned"])
    for kind in ("sparse", "dense"):
        for task in summary["tasks_pruned"]:
            circuit = json.loads((cfg.out / "circuits" / kind / f"{task}.circuit.json").read_text())
            assert circuit["achieved"]["loss"] <= summary["targets"][task] and "validation" in circuit
            assert circuit["loss_convention"] == "pair-sum" and circuit["validation"]["verdict"]
    assert (cfg.out / "natural.jsonl").is_file()
    described = check_smallest_circuit_explained(cfg.out, summary, report.read_text())
    # a rerun resumes: every stage is found complete and nothing is retrained
    before = (cfg.out / "sparse" / "model.safetensors").stat().st_mtime_ns
    run_demo(DemoConfig(**{**cfg.__dict__, "timings": {}}))
    assert (cfg.out / "sparse" / "model.safetensors").stat().st_mtime_ns == before
    rerun = json.loads(Path(summary["smallest_circuit"]["path"]).read_text())
    assert rerun["descriptions"] == described["descriptions"]  # the labels are not computed again


def check_smallest_circuit_explained(out: Path, summary: dict, html: str) -> dict:
    """The sparse circuit with the fewest edges (then nodes) has describe labels in its file, and the report
    draws it (inline SVG) and holds its `explain` text. Returns the chosen circuit file's contents."""
    from html import escape
    from xml.sax.saxutils import escape as xml_escape

    from sparsecircuits.circuits.explain import explain_text
    from sparsecircuits.viewer.svg import SHORT_LABEL_MAX_NODES, short_label

    sizes = {}
    for task in summary["tasks_pruned"]:
        c = json.loads((out / "circuits" / "sparse" / f"{task}.circuit.json").read_text())
        sizes[task] = (c["counts"]["edges"], c["counts"]["nodes"])
    chosen = summary["smallest_circuit"]
    assert chosen["kind"] == "sparse" and chosen["task"] == min(sizes, key=sizes.get)
    assert (chosen["edges"], chosen["nodes"]) == sizes[chosen["task"]]
    circuit = json.loads(Path(chosen["path"]).read_text())
    labels = [circuit["node_info"][n]["label"] for n in circuit["nodes"]]
    assert all(isinstance(label, str) for label in labels) and any(labels)
    assert chosen["labelled_nodes"] == sum(map(bool, labels)) and "describe_error" not in chosen
    assert circuit["descriptions"]["prompts"]["task"] == chosen["task"]
    section = html[html.index("<h2>The smallest circuit, explained</h2>") : html.index("<h2>Timings</h2>")]
    svg = section[section.index("<svg") : section.index("</svg>")]
    assert f"{chosen['task']} circuit" in svg and svg.count("<circle") == len(circuit["nodes"])
    if len(labels) <= SHORT_LABEL_MAX_NODES:
        assert all(xml_escape(short_label(label)) in svg for label in labels if label)
    else:
        assert all(xml_escape(label) in svg for label in labels if label)  # in the tooltips
    assert f"<pre class='explain'>{escape(explain_text(circuit))}</pre>" in section
    return circuit


# ---- shipped demo models ------------------------------------------------------------------------------


def _tiny_run(path: Path, tag: str, seed: int) -> Path:
    """A run directory with a real (random, 3/4 zeroed, bigram-table) GPT's weights."""
    import torch

    from sparsecircuits.model.config import ModelConfig
    from sparsecircuits.model.gpt import GPT
    from sparsecircuits.run import save_model

    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=40, n_layer=1, d_model=16, n_head=2, d_head=8, d_mlp=32, n_ctx=8, bigram_table=True
    )
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
            if p.dim() == 2 and p is not model.bigram_table:
                p.mul_(torch.rand_like(p) < 0.25)
    path.mkdir(parents=True)
    save_model(model, path / "model.safetensors")
    (path / "config.json").write_text(
        json.dumps({"data": {"dir": "/elsewhere", "content_hash": "x"}, "tag": tag})
    )
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    (path / "tokenizer.json").write_text("{}")
    return path


def test_shipped_models_pack_verify_and_install(tmp_path):
    from sparsecircuits.data.build import BuildConfig, build_dataset
    from sparsecircuits.errors import UserError
    from sparsecircuits.experiments import shipped
    from sparsecircuits.run import load_tensors

    runs = {k: _tiny_run(tmp_path / "runs" / k, k, seed) for seed, k in enumerate(shipped.KINDS)}
    root = tmp_path / "artifacts"
    shipped.pack(runs, root)
    assert shipped.available(root)
    shipped.verify(root)
    assert not (root / "dense" / "model.safetensors").exists()  # shipped compact only

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    data = tmp_path / "data"
    build_dataset(BuildConfig(out=data, sources=[src], vocab_size=300, val_fraction=0.5, progress=False))
    out = shipped.install(root, "dense", tmp_path / "demo" / "dense", data)
    config = json.loads((out / "config.json").read_text())
    meta = json.loads((data / "meta.json").read_text())
    assert config["data"]["dir"] == str(data.resolve())
    assert config["data"]["content_hash"] == meta["content_hash"]
    assert config["trained_on"] == {"dir": "/elsewhere", "content_hash": "x"}
    assert config["tag"] == "dense"
    assert config["shipped"]["sha256"] == shipped.read_sums(root)["dense/weights.safetensors"]
    assert config["shipped"]["weights"] == shipped.STORED_AS  # an installed run says its table is 8-bit
    trained, installed = (
        load_tensors(runs["dense"] / "model.safetensors"),
        load_tensors(out / "model.safetensors"),
    )
    assert set(installed) == set(trained)
    for name, t in trained.items():
        if name == "bigram_table":  # 8 bits per entry: within half a step of its row's scale
            step = t.abs().amax(dim=1, keepdim=True) / 127
            assert ((installed[name] - t).abs() <= step / 2 + 1e-6).all()
        else:
            assert installed[name].equal(t), name

    (root / "sparse" / "weights.safetensors").write_bytes(b"weights tampered")
    with pytest.raises(UserError, match="does not match its SHA-256"):
        shipped.verify(root)
    (root / "sparse" / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="missing"):
        shipped.verify(root)


def test_repository_ships_verified_demo_models():
    from sparsecircuits.experiments import shipped

    assert shipped.available(), f"no {shipped.SUMS} in {shipped.SHIPPED_DIR}"
    shipped.verify()


def test_a_demo_directory_is_not_resumed_with_other_models(tmp_path):
    from sparsecircuits.errors import UserError
    from sparsecircuits.experiments.demo import check_models_kind

    out = tmp_path / "demo"
    out.mkdir()
    check_models_kind(DemoConfig(out=out, models="train", preset="tiny"))
    check_models_kind(DemoConfig(out=out, models="train", preset="tiny"))  # a resume of the same demo
    with pytest.raises(UserError, match="holds a demo with train models .preset tiny.; use --force"):
        check_models_kind(DemoConfig(out=out, models="shipped"))
    with pytest.raises(UserError, match="preset tiny"):
        check_models_kind(DemoConfig(out=out, models="train", preset="demo"))


def test_a_demo_is_not_resumed_with_a_model_shipped_before_the_current_one(tmp_path):
    from sparsecircuits.errors import UserError
    from sparsecircuits.experiments import shipped
    from sparsecircuits.experiments.demo import shipped_model

    data = tmp_path / "data"  # install() reads only meta.json of the corpus built with the shipped tokenizer
    data.mkdir()
    shutil.copyfile(shipped.SHIPPED_DIR / "tokenizer.json", data / "tokenizer.json")
    for name in ("train.bin", "val.bin"):
        (data / name).write_bytes(b"\0\0")
    (data / "meta.json").write_text(
        json.dumps({"content_hash": "x", "vocab_size": 2048, "tokens": {"train": 1, "val": 1}})
    )
    cfg = DemoConfig(out=tmp_path / "demo", models="shipped")
    run = shipped_model(cfg, data, "sparse")
    assert shipped_model(cfg, data, "sparse") == run  # a resume with the same shipped model
    config = json.loads((run / "config.json").read_text())
    config["shipped"]["sha256"] = "0" * 64  # as installed from an earlier artifacts/demo
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="holds another sparse model than the one shipped"):
        shipped_model(cfg, data, "sparse")


def test_demo_prunes_the_required_tasks_and_every_task_both_models_learn():
    from sparsecircuits.experiments.demo import choose_tasks

    losses = {"a": (0.01, 0.02), "b": (0.1, 0.2), "c": (0.12, 0.05), "single_double_quote": (0.9, 0.9)}
    evals = {
        kind: {"tasks": {**{t: {"loss": v[i]} for t, v in losses.items()}, "bracket_counting": {"loss": 1.0}}}
        for i, kind in enumerate(("sparse", "dense"))
    }
    cfg = DemoConfig(target_loss=0.15, max_tasks=None)  # --all-learned
    # b is learned by the sparse model only; c by both (worst 0.12 after a's 0.02)
    assert choose_tasks(cfg, evals) == ["single_double_quote", "bracket_counting", "a", "c"]
    assert choose_tasks(DemoConfig(max_tasks=5), evals) == [
        "single_double_quote",
        "bracket_counting",
        "a",
        "c",
        "b",
    ]
    assert choose_tasks(DemoConfig(max_tasks=2), evals) == ["single_double_quote", "bracket_counting"]
