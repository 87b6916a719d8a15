"""The circuit viewer: catalog, graph layout, JSON API, node detail, model panel, exports and security."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sparsecircuits.circuits.circuit_file import write_circuit
from sparsecircuits.circuits.edges import circuit_edges
from sparsecircuits.circuits.nodes import names_to_nodes
from sparsecircuits.data.shards import write_tokens
from sparsecircuits.data.tokenizer import train_tokenizer
from sparsecircuits.io import atomic_write_json
from sparsecircuits.model import GPT, ModelConfig
from sparsecircuits.run import save_model
from sparsecircuits.tasks.tokens import REQUIRED_TOKENS
from sparsecircuits.viewer.catalog import Catalog, Forbidden, NotFound
from sparsecircuits.viewer.commands import view
from sparsecircuits.viewer.export import export_html, script_json
from sparsecircuits.viewer.graph import build_graph
from sparsecircuits.viewer.server import make_server

XSS_TOKEN = "<script>"
XSS_IMG = '<img src=x onerror="window.__xss=1">'
EVIL_TASK = "<script>alert(1)</script> & 'quotes'"
CIRCUIT_NODES = [
    "0.attn.act_in.1",
    "0.attn.act_in.3",
    "0.attn.q.0",
    "0.attn.k.0",
    "0.attn.v.1",
    "0.attn.v.5",
    "0.attn.resid_delta.2",
    "0.attn.resid_delta.3",
    "0.mlp.act_in.2",
    "0.mlp.act_in.3",
    "0.mlp.post_act.4",
    "0.mlp.post_act.7",
    "0.mlp.resid_delta.5",
    "1.attn.act_in.5",
    "1.attn.v.6",
    "1.attn.resid_delta.9",
]


def corpus_texts() -> list[str]:
    """Code with markup-like tokens, and task prompts (so BPE can force the task suite's tokens)."""
    from sparsecircuits.tasks import all_tasks

    rng = np.random.default_rng(0)
    names = ["x", "value", "items", "total", "name", "path"]
    lines = []
    for i in range(400):
        a, b = rng.choice(names, 2)
        lines.append(f'def f{i}({a}, {b}):\n    s = "{XSS_TOKEN}" & {a}\n    return {b} + [{i}]\n')
        if i % 7 == 0:
            lines.append(f"# {XSS_IMG} {a} < {b} and 'q' != \"dq\"\n")
    pairs = [pair for t in all_tasks() for pair in t.pairs(8, "train")]
    return lines + [p.text + p.correct + p.closing for pair in pairs for p in (pair.pos, pair.neg)]


def make_fixture(root: Path) -> dict[str, Path]:
    """A tiny but complete run (weights, tokenizer, metrics, dataset) and two circuit files."""
    texts = corpus_texts()
    tok = train_tokenizer(texts, vocab_size=700, required=REQUIRED_TOKENS)
    tok.add_tokens([XSS_TOKEN, XSS_IMG])
    data_dir, run_dir = root / "data", root / "runs" / "tiny"
    data_dir.mkdir(parents=True)
    run_dir.mkdir(parents=True)
    tok.save(str(data_dir / "tokenizer.json"))
    tok.save(str(run_dir / "tokenizer.json"))
    ids = np.array([i for t in texts for i in tok.encode(t).ids], dtype=np.int64)
    write_tokens(data_dir / "train.bin", ids)
    write_tokens(data_dir / "val.bin", ids[: len(ids) // 2])
    atomic_write_json(data_dir / "meta.json", {"tokens": {"train": len(ids), "val": len(ids) // 2}})

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), n_layer=2, d_model=16, n_head=2, d_head=4, d_mlp=32, n_ctx=256
    )
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:  # weight-sparse look: keep ~40% of each matrix
                p.mul_((torch.rand_like(p) < 0.4).float())
            if (
                name.endswith("c_attn.weight")
                or name.endswith("c_fc.weight")
                or name.endswith("c_proj.weight")
            ):
                p.mul_(5.0)
    save_model(model, run_dir / "model.safetensors")
    config = {
        "model": cfg.to_dict(),
        "train": {"steps": 30},
        "data": {"dir": str(data_dir)},
        "preset": "tiny",
    }
    atomic_write_json(run_dir / "config.json", config)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(0, 31, 5):
            rec = {"step": step, "loss": 5.0 - 0.1 * step, "l0_frac": max(0.4, 1 - step / 20)}
            if step % 10 == 0:
                rec["val_loss"] = 5.1 - 0.1 * step
            f.write(json.dumps(rec) + "\n")
        f.write('{"step": 31, "loss": NaN}\n{"broken line\n')

    circuits_dir = run_dir / "circuits"
    write_circuit(circuits_dir / "quote.circuit.json", circuit_dict(model, run_dir, "single_double_quote"))
    loose = root / "loose"
    write_circuit(loose / "evil.circuit.json", circuit_dict(model, run_dir, EVIL_TASK))
    write_circuit(loose / "orphan.circuit.json", circuit_dict(model, root / "nowhere", "orphan_task"))
    return {"root": root, "run": run_dir, "data": data_dir, "circuit": circuits_dir / "quote.circuit.json",
            "evil": loose / "evil.circuit.json"}  # fmt: skip


def score(raw: float, acc: float, cal: float) -> dict:
    return {"loss_raw": raw, "accuracy_raw": acc, "loss_calibrated": cal, "accuracy_calibrated": acc,
            "calibration": {"scale": 1.0, "bias": 0.0, "fitted_on": "val"}, "logit_diff": 4.321}  # fmt: skip


def circuit_dict(model: GPT, run_dir: Path, task: str) -> dict:
    graph = circuit_edges(model.state_dict(), model.cfg, names_to_nodes(CIRCUIT_NODES, model.cfg))
    return {
        "model": {"path": str(run_dir), "content_hash": "test", "config": model.cfg.to_dict()},
        "task": {"name": task, "split": "train", "n_pairs": 8, "eval_split": "val", "eval_pairs": 8},
        "ablation": "mean",
        "target_loss": 0.15,
        "loss_convention": "pair-sum",
        "achieved": {"loss": 0.149, **score(0.2, 0.97, 0.149), "full_model": score(0.05, 1.0, 0.05)},
        "nodes": CIRCUIT_NODES,
        "node_info": {
            n: {"tau": 0.5 + i / 100, "ablation_effect": 0.2 + i / 50} for i, n in enumerate(CIRCUIT_NODES)
        },
        **graph.to_json(),
        "bisection": [{"k": k, "loss": 1.0 / k, "loss_raw": 1.2 / k} for k in (1, 2, 4, 8, 16)],
        "pruning": {
            "steps": 10,
            "history": [{"step": s, "task_loss": 1 - s / 20, "active": 40 - s} for s in range(10)],
        },
        "validation": {
            "sufficiency": score(0.2, 0.97, 0.149),
            "necessity": score(1.9, 0.2, 1.3),
            "random": {"n": 5, **score(0.7, 0.5, 0.69), "loss_raw_std": 0.02},
            "resample": score(0.16, 0.9, 0.15),
            "full_model": score(0.05, 1.0, 0.05),
            "chance": 1.386,
            "loss_convention": "pair-sum",
            "verdict": "sufficient",
        },
    }


@pytest.fixture(scope="module")
def fixture(tmp_path_factory) -> dict[str, Path]:
    return make_fixture(tmp_path_factory.mktemp("viewer"))


class Server:
    """The viewer on a free loopback port, in a background thread."""

    def __init__(self, paths: list[Path]):
        self.httpd = make_server(paths, "127.0.0.1", 0, n_windows=16)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Raw GET (no path normalisation), so traversal attempts reach the server as written."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def json(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=120) as r:
            assert r.headers["Content-Type"] == "application/json"
            return json.loads(r.read())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(fixture: dict[str, Path]) -> Server:
    """A viewer over the fixture's run folder and its loose circuits."""
    return Server([fixture["root"] / "runs", fixture["root"] / "loose"])


def served_site(tmp_path_factory, name: str):
    """Fixture body: a fresh fixture tree in a folder `name` and a viewer over it, as (server, fixture)."""
    fixture = make_fixture(tmp_path_factory.mktemp(name))
    server = serve(fixture)
    yield server, fixture
    server.close()


@pytest.fixture(scope="module")
def server(fixture):
    s = serve(fixture)
    yield s
    s.close()


def circuit_id(server: Server, name: str) -> str:
    listing = server.json("/api/index")
    items = [c for r in listing["runs"] for c in r["circuits"]] + listing["circuits"]
    return next(c["id"] for c in items if c["name"] == name)


# ---- catalog and listing -------------------------------------------------------------------------------


def test_listing_groups_circuits_under_their_run(server, fixture):
    listing = server.json("/api/index")
    assert len(listing["runs"]) == 1
    run = listing["runs"][0]
    assert run["model"]["n_layer"] == 2
    # one circuit lies inside the run, the other names it by model.path
    assert sorted(c["task"] for c in run["circuits"]) == sorted(["single_double_quote", EVIL_TASK])
    assert run["circuits"][0]["nodes"] == len(CIRCUIT_NODES)
    assert [c["task"] for c in listing["circuits"]] == ["orphan_task"]  # its run is nowhere


def test_circuit_file_path_opens_its_run(fixture):
    catalog = Catalog([fixture["evil"]])
    assert list(catalog.circuits) == ["0:evil.circuit.json"]
    assert [r.path for r in catalog.runs.values()] == [fixture["run"].resolve()]
    assert catalog.run_of_circuit("0:evil.circuit.json").path == fixture["run"].resolve()


def test_catalog_refuses_traversal_and_unknown_ids(fixture):
    catalog = Catalog([fixture["root"] / "runs"])
    for bad in ("0:../loose/evil.circuit.json", "0:/etc/passwd", "0:a/../../x", "0:a\\..\\b", "\x00"):
        with pytest.raises(Forbidden):
            catalog.circuit(bad)
    with pytest.raises(NotFound):
        catalog.circuit("5:tiny/circuits/quote.circuit.json")


def test_symlinks_out_of_a_root_are_not_listed(tmp_path, fixture):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link.circuit.json").symlink_to(fixture["evil"])
    (root / "linked_dir").symlink_to(fixture["root"] / "runs", target_is_directory=True)
    (root / "inside.circuit.json").write_text(fixture["evil"].read_text())
    catalog = Catalog([root])
    assert list(catalog.circuits) == ["0:inside.circuit.json"]
    assert not catalog.runs
    with pytest.raises(NotFound):
        catalog.circuit("0:link.circuit.json")


# ---- HTTP security -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc/passwd",
        "/api/circuit?id=0:../../../../etc/passwd",
        "/api/circuit?id=0:%2Fetc%2Fpasswd",
        "/api/circuit?id=1:../runs/tiny/circuits/quote.circuit.json",
        "/export/circuit.svg?id=0:../../loose/evil.circuit.json",
    ],
)
def test_traversal_is_refused(server, path):
    status, headers, body = server.get(path)
    assert status in (403, 404)
    assert b"root:" not in body
    assert "error" in json.loads(body)


@pytest.mark.parametrize(
    "path", ["/static/style.css/../../catalog.py", "/static/sub/x.js", "/catalog.py", "/static/"]
)
def test_only_packaged_static_files_are_served(server, path):
    status, _, _ = server.get(path)
    assert status in (403, 404)


def test_unknown_entries_are_404(server):
    assert server.get("/api/circuit?id=0:nope.circuit.json")[0] == 404
    assert server.get("/api/model?run=0:nope")[0] == 404
    assert server.get("/api/circuit")[0] == 400


def test_foreign_host_header_is_refused(server):
    status, _, _ = server.get("/api/index", headers={"Host": "attacker.example:80"})
    assert status == 403
    assert server.get("/api/index", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_read_only_and_security_headers(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", "/api/index", body=b"{}")
    assert conn.getresponse().status == 501
    conn.close()
    status, headers, body = server.get("/")
    assert status == 200 and b'<main id="main">' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_binds_loopback_by_default(fixture):
    httpd = make_server([fixture["root"] / "runs"], port=0)
    try:
        assert httpd.server_address[0] == "127.0.0.1" and httpd.is_loopback()
    finally:
        httpd.server_close()


# ---- circuit graph -------------------------------------------------------------------------------------


def test_circuit_graph_json(server):
    data = server.json("/api/circuit?id=" + circuit_id(server, "quote.circuit.json"))
    graph = data["graph"]
    assert data["run"] is not None
    assert {n["id"] for n in graph["nodes"]} == set(CIRCUIT_NODES)
    weights = [abs(e[2]) for e in graph["edges"]]
    assert weights == sorted(weights, reverse=True) and len(weights) > 0
    nodes = {n["id"]: n for n in graph["nodes"]}
    for n in graph["nodes"]:
        assert 0 < n["x"] < graph["width"] and 0 < n["y"] < graph["height"]
    # layers top to bottom, rows in forward order within a layer
    assert nodes["0.attn.act_in.1"]["y"] < nodes["0.attn.q.0"]["y"] < nodes["0.attn.resid_delta.2"]["y"]
    assert nodes["0.mlp.resid_delta.5"]["y"] < nodes["1.attn.act_in.5"]["y"]
    # residual channel 5 shares a column, so its residual link is vertical
    assert nodes["0.mlp.resid_delta.5"]["x"] == nodes["1.attn.act_in.5"]["x"]
    # q/k/v: grouped by head, display names in the head form
    assert nodes["0.attn.v.5"]["head"] == 1 and nodes["0.attn.v.5"]["display"] == "0.attn.v.head1.ch1"
    assert {g["head"] for g in graph["heads"] if g["layer"] == 0} == {0, 1}
    assert nodes["0.attn.q.0"]["info"]["ablation_effect"] == pytest.approx(0.24)
    idx = {n["id"]: i for i, n in enumerate(graph["nodes"])}
    assert [idx["0.mlp.resid_delta.5"], idx["1.attn.act_in.5"]] in graph["residual_links"]
    assert [idx["0.attn.q.0"], idx["0.attn.k.0"]] in graph["qk_pairs"]
    meta = data["meta"]
    assert meta["validation"]["necessity"]["loss_raw"] == 1.9 and len(meta["bisection"]) == 5
    assert "error" in data["task_info"] or data["task_info"]["examples"]


def test_graph_skips_malformed_entries():
    circuit = {
        "nodes": ["0.attn.q.1", "garbage", 5, "0.mlp.post_act.2"],
        "edges": [
            {"src": "0.attn.q.1", "dst": "nope", "weight": 1},
            {"src": "0.attn.q.1", "dst": "0.mlp.post_act.2"},
        ],
        "model": {"config": {"d_head": 4, "unknown_key": 1}},
    }
    graph = build_graph(circuit)
    assert [n["id"] for n in graph["nodes"]] == ["0.attn.q.1", "0.mlp.post_act.2"]
    assert graph["edges"] == [[0, 1, None]]


# ---- node detail ---------------------------------------------------------------------------------------


def test_node_detail_of_a_query_channel(server):
    cid = circuit_id(server, "quote.circuit.json")
    d = server.json(f"/api/node?circuit={cid}&node=0.attn.q.0")
    assert d["node"] == "0.attn.q.0" and d["task_name"] == "single_double_quote"
    corpus = d["corpus"]
    assert corpus["n_windows"] == 16 and corpus["n_tokens"] == 16 * 256
    tops = [s["value"] for s in corpus["top"]]
    assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(corpus["stats"]["max"])
    assert [q["q"] for q in corpus["quantiles"]] == [0.99, 0.9, 0.5, 0.1, 0.01]
    first = corpus["top"][0]
    assert first["tokens"][first["focus"]][1] == pytest.approx(first["value"], abs=1e-3)
    task = d["task"]
    assert len(task["pos"]) == len(task["neg"]) == 16
    assert task["diff"] == pytest.approx(np.mean(task["pos"]) - np.mean(task["neg"]), abs=1e-3)
    assert task["example"]["correct"] in ('")\n', "')\n")
    att = d["attention"]
    assert att["source"] == "first positive task prompt"
    assert att["head"] == 0 and len(att["matrix"]) == len(att["tokens"]) == len(att["matrix"][0])
    # Entries are rounded to 4 decimals: each may be off by 5e-5.
    assert sum(att["last_row"]) == pytest.approx(1.0, abs=5e-5 * len(att["last_row"]))


def test_node_detail_matches_a_direct_hooked_forward(server, fixture):
    from sparsecircuits.run import load_run

    cid = circuit_id(server, "quote.circuit.json")
    d = server.json(f"/api/node?circuit={cid}&node=0.mlp.post_act.7")
    run = load_run(fixture["run"])
    top = d["corpus"]["top"][0]
    seen = []
    from sparsecircuits.viewer.detail import corpus_windows

    windows = torch.from_numpy(corpus_windows(run, 16))
    with torch.no_grad(), run.model.hooks({"0.mlp.post_act": lambda x: seen.append(x[..., 7])}):
        run.model(windows[top["window"] : top["window"] + 1])
    assert seen[0][0, top["pos"]].item() == pytest.approx(top["value"], abs=1e-5)


def test_node_detail_is_cached_for_the_circuits_siblings(server):
    cid = circuit_id(server, "quote.circuit.json")
    server.json(f"/api/node?circuit={cid}&node=0.attn.act_in.1")
    loaded = next(iter(server.httpd.app.runs._runs.values()))
    assert ("0.attn.act_in.3", "single_double_quote") in loaded.details  # computed alongside
    again = server.json(f"/api/node?circuit={cid}&node=0.attn.act_in.3")
    assert again["node"] == "0.attn.act_in.3"


def test_node_detail_errors(server):
    cid = circuit_id(server, "quote.circuit.json")
    assert server.get(f"/api/node?circuit={cid}&node=0.attn.q.999")[0] == 400
    assert server.get(f"/api/node?circuit={cid}")[0] == 400
    run_id = server.json("/api/index")["runs"][0]["id"]
    d = server.json(f"/api/node?run={run_id}&node=1.attn.v.head1.ch2")
    assert d["node"] == "1.attn.v.6" and "error" in d["task"]


def test_token_text_is_passed_through_verbatim(server):
    """The API returns raw token text (JSON-encoded); the browser test checks it is shown as text."""
    cid = circuit_id(server, "quote.circuit.json")
    d = server.json(f"/api/node?circuit={cid}&node=0.attn.v.1")
    texts = {t for s in d["corpus"]["top"] + d["corpus"]["bottom"] for t, _ in s["tokens"]}
    assert XSS_TOKEN in texts


# ---- model panel ---------------------------------------------------------------------------------------


def test_model_panel(server):
    run_id = server.json("/api/index")["runs"][0]["id"]
    cid = circuit_id(server, "quote.circuit.json")
    d = server.json(f"/api/model?run={run_id}&circuit={cid}")
    m = d["metrics"]
    assert [p[0] for p in m["loss"]] == [0, 5, 10, 15, 20, 25, 30]  # the NaN and the broken line are dropped
    assert len(m["val_loss"]) == 4 and m["l0_frac"][-1][1] == pytest.approx(0.4)
    layer0 = d["density"]["layers"][0]
    assert set(layer0) == {"attn.q", "attn.k", "attn.v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    assert 0.2 < layer0["attn.q"]["density"] < 0.6 and layer0["attn.q"]["numel"] == 8 * 16
    assert "transformer.wte.weight" in d["density"]["global"]
    assert [e["channel"] for e in d["embedding"]] == [1, 3]  # circuit reads fed by no circuit write
    tokens = d["embedding"][0]["tokens"]
    assert [abs(w) for _, w in tokens] == sorted((abs(w) for _, w in tokens), reverse=True)


def test_embedding_lookup(server):
    run_id = server.json("/api/index")["runs"][0]["id"]
    d = server.json(f"/api/embedding?run={run_id}&channels=0,15")
    assert [e["channel"] for e in d] == [0, 15]
    assert server.get(f"/api/embedding?run={run_id}&channels=16")[0] == 400
    assert server.get(f"/api/embedding?run={run_id}&channels=a")[0] == 400


# ---- exports and escaping ------------------------------------------------------------------------------


def test_export_html_is_self_contained_and_escaped(server, fixture):
    cid = circuit_id(server, "evil.circuit.json")
    status, headers, body = server.get("/export/circuit.html?id=" + cid)
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    page = body.decode()
    assert page.count("</script>") == 2  # the data block and the code block: nothing from the data
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page  # title is escaped
    fetched = page.replace("http://www.w3.org/2000/svg", "")  # a namespace name, never fetched
    assert "http://" not in fetched and "https://" not in fetched  # offline: nothing to fetch
    data = page.split('<script type="application/json" id="circuit-data">')[1].split("</script>")[0]
    assert json.loads(data)["meta"]["task"]["name"] == EVIL_TASK


def test_export_svg_is_well_formed_and_escaped(server):
    cid = circuit_id(server, "evil.circuit.json")
    status, headers, body = server.get("/export/circuit.svg?id=" + cid)
    assert status == 200 and headers["Content-Type"] == "image/svg+xml"
    root = ET.fromstring(body)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert f"{EVIL_TASK} circuit" in texts
    assert len(root.findall(".//{http://www.w3.org/2000/svg}circle")) == len(CIRCUIT_NODES)


def test_script_json_cannot_close_its_element():
    text = script_json({"a": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


def test_export_html_ignores_placeholders_inside_data(fixture):
    circuit = json.loads(fixture["circuit"].read_text())
    circuit["task"]["name"] = "{{JS}} {{CSS}}"
    page = export_html(circuit, "t")
    assert page.count("SC.GraphView = GraphView") == 1


def test_cli_export(tmp_path, fixture):
    runner = CliRunner()
    for suffix in ("html", "svg"):
        out = tmp_path / f"c.{suffix}"
        result = runner.invoke(view, ["--export", str(fixture["circuit"]), "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 1000
    bad = runner.invoke(view, ["--export", str(fixture["circuit"]), "--out", str(tmp_path / "c.pdf")])
    assert bad.exit_code != 0 and ".html or .svg" in str(bad.exception)
    alone = runner.invoke(view, ["--out", str(tmp_path / "c.svg")])
    assert alone.exit_code != 0


def test_cli_refuses_missing_paths(tmp_path):
    result = CliRunner().invoke(view, [str(tmp_path / "missing")])
    assert result.exit_code != 0 and "path not found" in str(result.exception)
