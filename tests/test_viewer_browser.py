"""End to end in headless Chromium: open a circuit, click a node, see its detail; escaping; offline export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_viewer import EVIL_TASK, XSS_IMG, XSS_TOKEN, circuit_id, served_site

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    yield from served_site(tmp_path_factory, "viewer-browser")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page that records script errors, console errors and dialogs (an alert would mean injected code)."""
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    pg = context.new_page()
    pg.problems = []
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("console", lambda m: m.type == "error" and pg.problems.append(f"console: {m.text}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    context.close()


def assert_legend_and_colours(page):
    """Legend and node colours come from the graph JSON (the location table), not from a copy in the JS."""
    items = page.locator(".legend .legend-item").all_inner_texts()
    assert items[:6] == ["read", "query", "key", "value", "neuron", "write"]
    circle = page.locator('g.node[data-name="0.attn.q.0"] circle')
    assert (circle.get_attribute("fill"), circle.get_attribute("stroke")) == ("#059669", "#059669")
    read = page.locator('g.node[data-name^="0.attn.act_in."] circle').first
    assert (read.get_attribute("fill"), read.get_attribute("stroke")) == ("#ffffff", "#64748b")


def test_open_circuit_click_node_and_see_detail(site, page, tmp_path):
    server, _ = site
    cid = circuit_id(server, "quote.circuit.json")
    page.goto(f"{server.url}/#circuit={cid}")
    page.wait_for_selector("svg.graph[data-ready] g.node")
    assert page.locator("svg.graph g.node").count() == 16
    assert page.locator("svg.graph .edges path").count() > 0
    assert_legend_and_colours(page)
    page.screenshot(path=str(tmp_path / "graph.png"), full_page=True)

    page.locator('g.node[data-name="0.attn.q.0"]').click()
    summary = page.locator(".node-summary")
    summary.wait_for()
    assert "0.attn.q.head0.ch0" in summary.inner_text()
    assert "ablation effect" in summary.inner_text()
    assert "0.attn.q.0" in page.url  # the selection is in the URL
    page.wait_for_selector(".node-detail", timeout=60_000)
    detail = page.locator(".node-detail").inner_text()
    assert "Pretraining corpus" in detail and "top activations" in detail.lower()
    assert "Task prompts" in detail and "Attention of head 0" in detail
    assert page.locator(".node-detail svg.heatmap rect").count() > 10
    page.screenshot(path=str(tmp_path / "node.png"), full_page=True)

    # token text with markup is shown as text, never parsed
    tokens = page.locator(".node-detail .tok").all_inner_texts()
    assert XSS_TOKEN in tokens
    assert page.evaluate("window.__xss") is None
    assert page.locator("script").count() == 4  # our own four
    assert page.locator(".node-detail img").count() == 0
    assert XSS_IMG in tokens or XSS_TOKEN in tokens

    # the edge filter redraws fewer edges
    before = page.locator("svg.graph .edges path").count()
    page.locator(".controls input[type=range]").fill("950")
    # Polled from Python: wait_for_function evaluates a string, which the page's CSP (no unsafe-eval) refuses.
    for _ in range(200):
        if page.locator("svg.graph .edges path").count() < before:
            break
        page.wait_for_timeout(25)
    else:
        pytest.fail(f"the edge filter did not redraw fewer than {before} edges")
    assert "edges drawn" in page.locator(".controls .count").inner_text()

    # exports from the page: the graph as drawn (SVG), and a PNG through a canvas
    for button, magic in (("SVG", b"<svg"), ("PNG", b"\x89PNG")):
        with page.expect_download() as download:
            page.locator(".page-header button", has_text=button).click()
        saved = tmp_path / download.value.suggested_filename
        download.value.save_as(saved)
        assert saved.read_bytes().startswith(magic), button

    page.locator("button.tab", has_text="Task").click()
    page.wait_for_selector(".pane-task .panel svg.plot")
    assert "sufficiency" in page.locator(".pane-task").inner_text()
    assert "logit diff" in page.locator(".pane-task").inner_text()
    assert "4.32" in page.locator(".pane-task .grid-table").first.inner_text()  # the scores' logit_diff
    page.screenshot(path=str(tmp_path / "task.png"), full_page=True)

    page.locator("button.tab", has_text="Model").click()
    page.wait_for_selector(".pane-model .emb-card", timeout=30_000)
    assert "Weight density" in page.locator(".pane-model").inner_text()
    page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
    assert not page.problems, page.problems


def test_untrusted_strings_from_files_are_escaped(site, page, tmp_path):
    server, _ = site
    page.goto(f"{server.url}/#circuit={circuit_id(server, 'evil.circuit.json')}")
    page.wait_for_selector("svg.graph[data-ready] g.node")
    assert page.locator(".page-header h1").inner_text() == f"{EVIL_TASK} circuit"
    assert EVIL_TASK in page.locator("#tree").inner_text()
    assert page.locator("script").count() == 4
    page.locator("button.tab", has_text="Task").click()
    page.wait_for_selector(".pane-task .panel")
    assert not page.problems, page.problems


def test_exported_html_works_offline(site, page, tmp_path):
    server, fixture = site
    status, _, body = server.get("/export/circuit.html?id=" + circuit_id(server, "quote.circuit.json"))
    assert status == 200
    out = tmp_path / "circuit.html"
    out.write_bytes(body)
    server_down = tmp_path / "copy.html"  # a copy read straight from disk: no server involved
    shutil.copy(out, server_down)
    page.route(
        "**/*",
        lambda route: route.abort() if not route.request.url.startswith("file:") else route.continue_(),
    )
    page.goto(server_down.as_uri())
    page.wait_for_selector("svg.graph[data-ready] g.node")
    assert_legend_and_colours(page)
    page.locator('g.node[data-name="0.mlp.post_act.4"]').click()
    assert "0.mlp.post_act.4" in page.locator(".node-summary").inner_text()
    assert "MLP neuron" in page.locator(".node-summary").inner_text()  # the location's title, from the JSON
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    assert not page.problems, page.problems
