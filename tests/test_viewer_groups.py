"""Named groups in the viewer: head groups, user groups in a sidecar, the group-level graph, trimming, the
API that serves and saves them, and (marked slow) the group view in headless Chromium."""

from __future__ import annotations

import http.client
import json
import shutil
from pathlib import Path

import pytest

from sparsecircuits.errors import UserError
from sparsecircuits.viewer.graph import build_graph
from sparsecircuits.viewer.groups import (
    GROUPS_SUFFIX,
    all_groups,
    check_groups,
    delete_user_group,
    group_graph,
    groups_path,
    load_user_groups,
    node_influence,
    save_user_group,
    trim,
)
from test_viewer import CIRCUIT_NODES, Server, circuit_id, served_site

D_HEAD = 4


def toy_circuit() -> dict:
    """Two heads in layer 0 (d_head 4: q.0, k.0, v.1 are head 0; v.5 is head 1), MLP and residual nodes,
    with weighted edges, some inside head 0, and ablation effects around a circuit loss of 1.0."""
    nodes = ["0.attn.act_in.1", "0.attn.q.0", "0.attn.k.0", "0.attn.v.1", "0.attn.v.5", "0.attn.v.6",
             "0.attn.resid_delta.2", "0.mlp.post_act.4", "0.mlp.post_act.7"]  # fmt: skip
    edges = [
        ("0.attn.act_in.1", "0.attn.q.0", 0.5),
        ("0.attn.act_in.1", "0.attn.k.0", -0.25),
        ("0.attn.act_in.1", "0.attn.v.1", 2.0),
        ("0.attn.act_in.1", "0.attn.v.5", 1.0),
        ("0.attn.q.0", "0.attn.k.0", 9.0),  # inside head 0 (not a real edge kind, but it must vanish)
        ("0.attn.v.1", "0.attn.resid_delta.2", 0.75),
        ("0.attn.v.5", "0.attn.resid_delta.2", -3.0),
        ("0.attn.v.6", "0.attn.resid_delta.2", 0.5),
        ("0.attn.resid_delta.2", "0.mlp.post_act.4", 1.5),
    ]
    effects = [1.5, 3.0, 1.1, 1.2, 0.0, 1.0, 1.05, 1.0, 1.0]  # |effect - 1| = .5 2 .1 .2 1 0 .05 0 0
    return {
        "model": {"config": {"d_head": D_HEAD, "n_head": 2, "n_layer": 1, "d_model": 16, "d_mlp": 32}},
        "achieved": {"loss": 1.0},
        "nodes": nodes,
        "node_info": {n: {"ablation_effect": e} for n, e in zip(nodes, effects)},
        "edges": [{"src": a, "dst": b, "weight": w} for a, b, w in edges],
        "residual_links": [],
        "qk_pairs": [{"q": "0.attn.q.0", "k": "0.attn.k.0"}],
    }


# ---- groups ------------------------------------------------------------------------------------------


def test_head_groups_hold_the_q_k_v_of_one_head():
    groups = all_groups(toy_circuit(), [])
    by_id = {g.id: g for g in groups}
    assert set(by_id) == {"head:0.0", "head:0.1"}
    assert sorted(by_id["head:0.0"].members) == ["0.attn.k.0", "0.attn.q.0", "0.attn.v.1"]
    assert by_id["head:0.0"].name == "L0 head 0" and by_id["head:0.0"].source == "head"
    assert sorted(by_id["head:0.1"].members) == ["0.attn.v.5", "0.attn.v.6"]  # channels 1 and 2 of head 1


def test_a_user_group_takes_its_nodes_out_of_head_groups():
    user = [{"name": "mover", "nodes": ["0.attn.v.1", "0.attn.v.5", "0.mlp.post_act.4"]}]
    groups = {g.id: g for g in all_groups(toy_circuit(), user)}
    assert groups["user:mover"].members == ["0.attn.v.1", "0.attn.v.5", "0.mlp.post_act.4"]
    assert sorted(groups["head:0.0"].members) == ["0.attn.k.0", "0.attn.q.0"]
    assert "head:0.1" not in groups  # one channel left (v.6): no group of one


def test_summed_edges_between_groups_equal_the_member_edges():
    circuit = toy_circuit()
    graph = build_graph(circuit)
    grouped = group_graph(graph, all_groups(circuit, []), set())
    ids = [n["id"] for n in grouped["nodes"]]
    assert "head:0.0" in ids and "head:0.1" in ids
    assert not {"0.attn.q.0", "0.attn.k.0", "0.attn.v.1", "0.attn.v.5"} & set(ids)
    box = grouped["nodes"][ids.index("head:0.0")]
    assert box["group"]["size"] == 3 and box["label"] == "L0 head 0"
    members = [n for n in graph["nodes"] if n["id"] in box["group"]["members"]]
    assert box["x"] == pytest.approx(sum(n["x"] for n in members) / 3, abs=0.1)
    edges = {(ids[a], ids[b]): (w, c) for a, b, w, c in grouped["edges"]}
    assert edges[("0.attn.act_in.1", "head:0.0")] == (pytest.approx(0.5 - 0.25 + 2.0), 3)
    assert edges[("head:0.1", "0.attn.resid_delta.2")] == (pytest.approx(-3.0 + 0.5), 2)
    assert edges[("head:0.0", "0.attn.resid_delta.2")] == (pytest.approx(0.75), 1)
    assert not any(a == b for a, b in edges)  # the q -> k edge inside head 0 is hidden
    assert sum(c for *_, c in grouped["edges"]) == len(circuit["edges"]) - 1
    assert grouped["qk_pairs"] == []  # both ends inside one box
    weights = [abs(w) for _, _, w, _ in grouped["edges"]]
    assert weights == sorted(weights, reverse=True)


def test_an_expanded_group_shows_its_members_in_place():
    circuit = toy_circuit()
    graph = build_graph(circuit)
    grouped = group_graph(graph, all_groups(circuit, []), {"head:0.0"})
    ids = [n["id"] for n in grouped["nodes"]]
    assert "head:0.0" not in ids and "0.attn.q.0" in ids and "head:0.1" in ids
    before = {n["id"]: (n["x"], n["y"]) for n in graph["nodes"]}
    assert all((n["x"], n["y"]) == before[n["id"]] for n in grouped["nodes"] if n["id"] in before)
    assert [o["id"] for o in grouped["outlines"]] == ["head:0.0"]
    assert [ids[a] for a, b in grouped["qk_pairs"]] == ["0.attn.q.0"]


def test_trim_keeps_the_stated_share_of_the_influence():
    circuit = toy_circuit()
    influence, basis = node_influence(circuit)
    assert basis == "ablation_effect" and influence["0.attn.q.0"] == pytest.approx(2.0)
    total = sum(influence.values())
    for share in (0.5, 0.8, 0.9, 0.99, 1.0):
        trimmed, info = trim(circuit, share)
        kept = trimmed["nodes"]
        got = sum(influence[n] for n in kept)
        assert got >= share * total - 1e-9 and info["kept"] == len(kept)
        # the smallest such set: dropping the weakest kept node falls short
        weakest = min(influence[n] for n in kept)
        assert got - weakest < share * total
        assert all(e["src"] in kept and e["dst"] in kept for e in trimmed["edges"])
    trimmed, _ = trim(circuit, 0.8)
    assert sorted(trimmed["nodes"]) == sorted(["0.attn.q.0", "0.attn.v.5", "0.attn.act_in.1"])
    assert circuit["nodes"] == toy_circuit()["nodes"]  # the circuit itself is untouched
    with pytest.raises(UserError):
        trim(circuit, 0.0)


def test_trim_falls_back_to_edge_weights_without_effects():
    circuit = toy_circuit()
    del circuit["node_info"]["0.attn.v.6"]["ablation_effect"]
    influence, basis = node_influence(circuit)
    assert basis == "edge_weight"
    assert influence["0.attn.resid_delta.2"] == pytest.approx(0.75 + 3.0 + 0.5 + 1.5)


# ---- the sidecar ---------------------------------------------------------------------------------------


def test_sidecar_round_trip_and_validation(tmp_path):
    circuit_path = tmp_path / "quote.circuit.json"
    nodes = toy_circuit()["nodes"]
    assert groups_path(circuit_path) == tmp_path / f"quote{GROUPS_SUFFIX}"
    assert load_user_groups(groups_path(circuit_path), nodes) == []
    save_user_group(circuit_path, nodes, " movers ", ["0.attn.v.1", "0.attn.v.5"])
    save_user_group(circuit_path, nodes, "mlp", ["0.mlp.post_act.4"])
    save_user_group(circuit_path, nodes, "movers", ["0.attn.v.1"])  # replaced by name
    assert load_user_groups(groups_path(circuit_path), nodes) == [
        {"name": "mlp", "nodes": ["0.mlp.post_act.4"]},
        {"name": "movers", "nodes": ["0.attn.v.1"]},
    ]
    bad = {
        "": ["0.attn.v.1"],
        "unknown": ["0.attn.q.99"],
        "twice": ["0.mlp.post_act.4"],  # already in "mlp"
        "empty": [],
    }
    for name, members in bad.items():
        with pytest.raises(UserError) as e:
            save_user_group(circuit_path, nodes, name, members)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not in the circuit: 0.attn.q.99"):
        save_user_group(circuit_path, nodes, "unknown", ["0.attn.q.99"])
    with pytest.raises(UserError, match="in two groups"):
        save_user_group(circuit_path, nodes, "twice", ["0.mlp.post_act.4"])
    with pytest.raises(UserError, match="non-empty name"):
        save_user_group(circuit_path, nodes, "  ", ["0.attn.v.1"])
    delete_user_group(circuit_path, nodes, "mlp")
    assert [g["name"] for g in load_user_groups(groups_path(circuit_path), nodes)] == ["movers"]
    with pytest.raises(UserError, match="no group named"):
        delete_user_group(circuit_path, nodes, "mlp")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # written atomically


def test_broken_sidecars_are_one_line_errors(tmp_path):
    nodes = toy_circuit()["nodes"]
    path = tmp_path / "x.groups.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_user_groups(path, nodes)
    path.write_text(json.dumps({"schema": "other", "groups": []}))
    with pytest.raises(UserError, match="not a groups file"):
        load_user_groups(path, nodes)
    with pytest.raises(UserError, match="two groups named"):
        check_groups(
            [{"name": "a", "nodes": ["0.attn.v.1"]}, {"name": "a", "nodes": ["0.attn.v.5"]}], nodes, "f"
        )
    with pytest.raises(UserError, match="not in the circuit"):
        check_groups([{"name": "a", "nodes": [["0.attn.v.1"], {"x": 1}]}], nodes, "f")
    with pytest.raises(UserError, match="must be a list"):
        check_groups({"a": 1}, nodes, "f")


# ---- the API -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from served_site(tmp_path_factory, "viewer-groups")


def post(server: Server, path: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_api_grouped_graph_and_trim(site):
    server, fixture = site
    cid = circuit_id(server, "quote.circuit.json")
    d = server.json(f"/api/graph?id={cid}&view=groups")
    ids = [n["id"] for n in d["graph"]["nodes"]]
    assert "head:0.0" in ids and "0.attn.q.0" not in ids  # the other heads have one channel each
    assert d["writable"] is True and d["groups_error"] is None
    heads = {g["id"]: g for g in d["groups"]}
    assert sorted(heads["head:0.0"]["members"]) == ["0.attn.k.0", "0.attn.q.0", "0.attn.v.1"]
    full = server.json(f"/api/circuit?id={cid}")["graph"]
    assert sum(e[3] for e in d["graph"]["edges"]) <= len(full["edges"])
    opened = server.json(f"/api/graph?id={cid}&view=groups&expand=head:0.0&expand=nothing")
    assert {n["id"] for n in opened["graph"]["nodes"]} == set(CIRCUIT_NODES)
    trimmed = server.json(f"/api/graph?id={cid}&trim=0.5")
    assert trimmed["trim"]["basis"] == "ablation_effect"
    assert len(trimmed["graph"]["nodes"]) == trimmed["trim"]["kept"] < len(CIRCUIT_NODES)
    assert trimmed["trim"]["kept_influence"] >= 0.5 * trimmed["trim"]["total_influence"]
    for bad in ("trim=0", "trim=x", "trim=1.5", "view=boxes"):
        assert server.get(f"/api/graph?id={cid}&{bad}")[0] == 400
    assert server.get("/api/graph?id=0:nope.circuit.json")[0] == 404
    before = fixture["circuit"].read_bytes()
    server.json(f"/api/graph?id={cid}&view=groups&trim=0.9")
    assert fixture["circuit"].read_bytes() == before


def test_api_save_and_delete_a_user_group(site):
    server, fixture = site
    cid = circuit_id(server, "quote.circuit.json")
    sidecar = fixture["circuit"].with_name("quote.groups.json")
    circuit_before = fixture["circuit"].read_bytes()
    status, body = post(server, "/api/groups/save", {"circuit": cid, "name": "<b>v path</b>",
                                                      "nodes": ["0.attn.v.1", "0.attn.resid_delta.2"]})  # fmt: skip
    assert status == 200, body
    assert json.loads(sidecar.read_text())["groups"] == [
        {"name": "<b>v path</b>", "nodes": ["0.attn.v.1", "0.attn.resid_delta.2"]}
    ]
    d = server.json(f"/api/graph?id={cid}&view=groups")
    groups = {g["id"]: g for g in d["groups"]}
    assert groups["user:<b>v path</b>"]["source"] == "user"
    assert sorted(groups["head:0.0"]["members"]) == ["0.attn.k.0", "0.attn.q.0"]  # v.1 moved out
    # errors: one line, 400, nothing written
    for bad in ({"circuit": cid, "name": "x", "nodes": ["0.attn.q.999"]},
                {"circuit": cid, "name": "y", "nodes": ["0.attn.v.1"]},
                {"circuit": cid, "name": "", "nodes": ["0.attn.q.0"]},
                {"name": "z", "nodes": ["0.attn.q.0"]}):  # fmt: skip
        status, body = post(server, "/api/groups/save", bad)
        assert status == 400 and "\n" not in body["error"], body
    assert len(json.loads(sidecar.read_text())["groups"]) == 1
    status, body = post(server, "/api/groups/delete", {"circuit": cid, "name": "<b>v path</b>"})
    assert status == 200 and body["groups"] == []
    assert not sidecar.exists()  # the last group gone: no sidecar left
    assert fixture["circuit"].read_bytes() == circuit_before


def test_api_writes_are_guarded(site, tmp_path):
    server, fixture = site
    cid = circuit_id(server, "quote.circuit.json")
    ok = {"circuit": cid, "name": "g", "nodes": ["0.attn.q.0"]}
    assert post(server, "/api/groups/save", ok, {"Host": "evil.example"})[0] == 403
    assert post(server, "/api/groups/save", ok, {"Origin": "http://evil.example"})[0] == 403
    assert post(server, "/api/groups/save", ok, {"Content-Type": "text/plain"})[0] == 400
    assert (
        post(server, "/api/groups/save", {"circuit": "0:../../x.circuit.json", "name": "g", "nodes": []})[0]
        == 403
    )
    assert post(server, "/api/index", {})[0] == 501
    assert not fixture["circuit"].with_name("quote.groups.json").exists()
    origin = f"http://127.0.0.1:{server.port}"
    status, _ = post(server, "/api/groups/save", ok, {"Origin": origin})
    assert status == 200
    assert post(server, "/api/groups/delete", {"circuit": cid, "name": "g"})[0] == 200
    # a read-only server refuses writes
    from sparsecircuits.viewer.server import make_server

    ro = Server.__new__(Server)
    ro.httpd = make_server([fixture["root"] / "runs"], "127.0.0.1", 0, n_windows=4, read_only=True)
    ro.port = ro.httpd.server_address[1]
    ro.url = f"http://127.0.0.1:{ro.port}"
    import threading

    ro.thread = threading.Thread(target=ro.httpd.serve_forever, daemon=True)
    ro.thread.start()
    try:
        rid = circuit_id(ro, "quote.circuit.json")
        status, body = post(ro, "/api/groups/save", {**ok, "circuit": rid})
        assert status == 403 and "read-only" in body["error"]
        assert ro.json(f"/api/graph?id={rid}")["writable"] is False
    finally:
        ro.close()


def test_a_broken_sidecar_leaves_the_head_groups(site):
    server, fixture = site
    cid = circuit_id(server, "quote.circuit.json")
    sidecar = fixture["circuit"].with_name("quote.groups.json")
    sidecar.write_text(
        json.dumps({"schema": "sparsecircuits.groups/1", "groups": [{"name": "a", "nodes": ["9.attn.q.1"]}]})
    )
    try:
        d = server.json(f"/api/graph?id={cid}&view=groups")
        assert "not in the circuit" in d["groups_error"]
        assert {g["source"] for g in d["groups"]} == {"head"}
    finally:
        sidecar.unlink()


# ---- the browser ---------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium")
def test_group_view_in_the_browser(site, tmp_path):
    from playwright.sync_api import sync_playwright

    from test_viewer_browser import LAUNCH_ARGS

    server, fixture = site
    cid = circuit_id(server, "quote.circuit.json")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.goto(f"{server.url}/#circuit={cid}")
            page.wait_for_selector("svg.graph[data-ready] g.node")
            page.locator(".view-controls button", has_text="groups").click()
            page.wait_for_selector('svg.graph[data-ready] g.group-box[data-name="head:0.0"]')
            assert page.locator("svg.graph g.group-box").count() == 1
            assert "L0 head 0 · 3" in page.locator('g.group-box[data-name="head:0.0"]').text_content()
            assert page.locator('g.node[data-name="0.attn.q.0"]').count() == 0
            assert "view=groups" in page.url
            page.screenshot(path=str(tmp_path / "groups.png"), full_page=True)

            page.locator('g.group-box[data-name="head:0.0"]').click()  # expands in place
            page.wait_for_selector('svg.graph[data-ready] g.node[data-name="0.attn.q.0"]')
            assert page.locator('g.group-box[data-name="head:0.0"]').count() == 0
            assert page.locator("svg.graph g.group-box").count() == 0
            assert page.locator("svg.graph .outline").count() == 1
            assert "L0 head 0" in page.locator(".group-summary").inner_text()
            url = page.url
            assert "expand=head%3A0.0" in url and "group=head%3A0.0" in url

            # name two picked nodes as a group (shift-click picks)
            page.locator('g.node[data-name="0.attn.q.0"]').click(modifiers=["Shift"])
            page.locator('g.node[data-name="0.attn.k.0"]').click(modifiers=["Shift"])
            page.locator(".group-form input").fill("qk of head 0")
            page.locator(".group-form button", has_text="Save group").click()
            page.wait_for_selector('g.group-box[data-name="user:qk of head 0"]')
            sidecar = fixture["circuit"].with_name("quote.groups.json")
            assert json.loads(sidecar.read_text())["groups"][0]["nodes"] == ["0.attn.q.0", "0.attn.k.0"]
            assert page.locator('g.node[data-name="0.attn.q.0"]').count() == 0  # inside the new box
            page.locator('g.group-box[data-name="user:qk of head 0"]').click()
            page.wait_for_selector('svg.graph[data-ready] g.node[data-name="0.attn.q.0"]')
            url = page.url
            assert "expand=user%3Aqk%20of%20head%200" in url and "group=user%3Aqk%20of%20head%200" in url

            # the URL reopens the same view in a fresh page
            again = browser.new_page(viewport={"width": 1500, "height": 950})
            again.goto(url)
            again.wait_for_selector('svg.graph[data-ready] g.node[data-name="0.attn.q.0"]')
            assert again.locator(".view-controls button.active").inner_text() == "groups"
            # the named group is expanded; head 0 (only v.1 left in it) is no group any more
            assert [again.locator("svg.graph g.outline").get_attribute("data-id")] == ["user:qk of head 0"]
            assert "qk of head 0" in again.locator(".group-summary").inner_text()  # the selected group
            assert "named group" in again.locator(".group-summary").inner_text()
            again.screenshot(path=str(tmp_path / "reopened.png"), full_page=True)
            again.locator(".group-summary button", has_text="collapse").click()
            again.wait_for_selector('svg.graph[data-ready] g.group-box[data-name="user:qk of head 0"]')

            # trim from the URL
            again.goto(url + "&trim=0.5")
            again.wait_for_selector("svg.graph[data-ready]")
            again.wait_for_selector(".trim-note")
            assert "of the influence" in again.locator(".trim-note").inner_text()
            assert not problems, problems
            shutil.copy(sidecar, tmp_path / "saved.groups.json")
            sidecar.unlink()
        finally:
            browser.close()
