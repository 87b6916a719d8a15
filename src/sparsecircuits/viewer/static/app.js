// The single-page app: sidebar of runs and circuits, circuit page (graph, task, model tabs), run page.
// Routes live in the URL hash: #circuit=ID&tab=graph&node=NAME, #run=ID. The graph's view state goes there
// too, so a shared URL reopens it: view=groups, expand=GROUP (repeated), trim=0.9, group=GROUP (selected).
"use strict";
(function (SC) {
  const h = (...a) => SC.h(...a);
  const main = () => document.getElementById("main");
  const state = { listing: null, page: null };

  // ---- routing -------------------------------------------------------------------------------------

  function route() {
    const params = new URLSearchParams(location.hash.slice(1));
    const r = Object.fromEntries(params.entries());
    r.expand = params.getAll("expand");
    return r;
  }

  function go(params, replace = false) {
    const hash = "#" + SC.query(params);
    if (replace) history.replaceState(null, "", hash);
    else location.hash = hash;
  }

  async function onRoute() {
    const r = route();
    markActive(r);
    try {
      if (r.circuit) await showCircuit(r.circuit, r.tab || "graph", r.node, r);
      else if (r.run) await showRun(r.run);
      else showHome();
    } catch (e) {
      state.page = null;
      SC.clear(main()).append(h("div", { class: "error-box", text: `Could not open this page: ${e.message}` }));
    }
  }

  // ---- sidebar -------------------------------------------------------------------------------------

  async function loadListing() {
    state.listing = await SC.getJSON("/api/index");
    renderTree();
  }

  function circuitLink(c) {
    const sub = c.error ? c.error : `${c.nodes ?? "?"} nodes · ${c.edges ?? "?"} edges` + (typeof c.loss === "number" ? ` · loss ${SC.fmt(c.loss)}` : "");
    return h(
      "a",
      { class: "tree-item circuit", href: "#" + SC.query({ circuit: c.id }), dataset: { id: c.id }, title: c.name },
      h("span", { class: "tree-name", text: c.task || c.name }),
      h("span", { class: "tree-sub", text: sub })
    );
  }

  function renderTree() {
    const tree = SC.clear(document.getElementById("tree"));
    const listing = state.listing;
    const needle = document.getElementById("filter").value.trim().toLowerCase();
    const match = (c) => !needle || `${c.task || ""} ${c.name}`.toLowerCase().includes(needle);
    for (const run of listing.runs) {
      const circuits = run.circuits.filter(match);
      if (needle && !circuits.length && !run.name.toLowerCase().includes(needle)) continue;
      const m = run.model || {};
      tree.append(
        h(
          "a",
          { class: "tree-item run", href: "#" + SC.query({ run: run.id }), dataset: { id: run.id }, title: run.name },
          h("span", { class: "tree-name", text: run.name }),
          h("span", { class: "tree-sub", text: run.error || `${m.n_layer}L · d_model ${m.d_model} · ${run.circuits.length} circuits` })
        ),
        h("div", { class: "tree-children" }, circuits.map(circuitLink))
      );
    }
    const loose = listing.circuits.filter(match);
    if (loose.length) tree.append(h("div", { class: "tree-heading", text: "Circuits without a run" }), ...loose.map(circuitLink));
    if (!listing.runs.length && !listing.circuits.length)
      tree.append(h("div", { class: "muted pad", text: `No runs or circuit files under ${listing.roots.join(", ")}.` }));
    markActive(route());
  }

  function markActive(r) {
    document.querySelectorAll(".tree-item").forEach((el) => {
      const kind = el.classList.contains("run") ? "run" : "circuit";
      el.classList.toggle("active", r[kind] === el.dataset.id);
    });
  }

  // ---- pages ---------------------------------------------------------------------------------------

  function showHome() {
    state.page = null;
    const l = state.listing || { runs: [], circuits: [], roots: [] };
    const n = l.runs.reduce((a, r) => a + r.circuits.length, l.circuits.length);
    SC.clear(main()).append(
      h(
        "div",
        { class: "home" },
        h("h1", { text: "Circuits of weight-sparse transformers" }),
        h("p", { text: `${l.runs.length} runs and ${n} circuits under ${l.roots.join(", ")}.` }),
        h("p", { class: "muted", text: "Pick a circuit on the left to see its graph, its task results and its model. Click a node for its activations on the pretraining corpus and on the task." })
      )
    );
  }

  function pageHeader(title, subtitle, actions) {
    return h("div", { class: "page-header" }, h("div", {}, h("h1", { text: title }), h("div", { class: "muted", text: subtitle })), h("div", { class: "actions" }, actions));
  }

  function tabs(names, active, onPick) {
    return h(
      "div",
      { class: "tabs", role: "tablist" },
      names.map(([key, label]) => h("button", { type: "button", role: "tab", class: key === active ? "tab active" : "tab", dataset: { tab: key }, text: label, on: { click: () => onPick(key) } }))
    );
  }

  async function showCircuit(id, tab, node, r) {
    let page = state.page;
    if (!page || page.kind !== "circuit" || page.id !== id) {
      SC.clear(main()).append(h("div", { class: "loading", text: "Loading circuit…" }));
      const data = await SC.getJSON("/api/circuit?" + SC.query({ id }));
      page = state.page = buildCircuitPage(data);
    }
    page.show(tab);
    if (tab !== "graph") return;
    if (!(await page.applyGraphState(r))) return; // a newer route took over
    if (r.group) {
      page.view.select(null, false);
      page.renderGroup(r.group);
      return;
    }
    const i = node ? page.view.graph.nodes.findIndex((n) => n.id === node) : -1;
    const want = i >= 0 ? i : null;
    if (page.view.selected !== want || page.showingGroup) {
      page.view.select(want, false);
      page.renderDetail(want);
    }
  }

  /** The graph state of a route: view mode, expanded groups, trim share, selected group. */
  function graphState(r) {
    return { view: r.view === "groups" ? "groups" : "nodes", expand: r.expand || [], trim: r.trim || "", group: r.group };
  }

  function buildCircuitPage(data) {
    const meta = data.meta;
    const page = { kind: "circuit", id: data.id, data, panes: {} };
    const exportButtons = [
      h("a", { class: "button small", href: "/export/circuit.html?" + SC.query({ id: data.id }), download: "", text: "Export HTML", title: "a self-contained page with the graph" }),
      h("button", { type: "button", class: "small", text: "SVG", title: "the graph as drawn now", on: { click: () => SC.download(`${fileStem(data.name)}.svg`, new Blob([page.view.toSVG(data.title)], { type: "image/svg+xml" })) } }),
      h("button", { type: "button", class: "small", text: "PNG", on: { click: async () => SC.download(`${fileStem(data.name)}.png`, await page.view.toPNG(data.title)) } }),
    ];
    const tabNames = [["graph", "Graph"], ["task", "Task"], ["model", "Model"]];
    const selectedNode = () => (page.view.selected === null ? undefined : page.view.graph.nodes[page.view.selected].id);
    const tabBar = tabs(tabNames, "graph", (key) => page.navigate({ tab: key, node: selectedNode() }));
    const body = h("div", { class: "tab-body" });
    SC.clear(main()).append(pageHeader(data.title, `${data.name} · ${SC.circuitFacts(meta)}`, exportButtons), tabBar, body);
    const panes = {};
    for (const [key] of tabNames) body.append((panes[key] = h("div", { class: `pane pane-${key}`, hidden: true })));
    buildGraphPane(page, panes.graph);
    page.show = (tab) => {
      if (!panes[tab]) tab = "graph";
      for (const [key, el] of Object.entries(panes)) el.hidden = key !== tab;
      tabBar.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
      if (tab === "task" && !page.panes.task) page.panes.task = renderTaskPane(panes.task, data);
      if (tab === "model" && !page.panes.model) page.panes.model = renderModelPane(panes.model, data.run, data.id);
    };
    return page;
  }

  function fileStem(name) {
    return String(name || "circuit").replace(/\.circuit\.json$/, "").replace(/[^A-Za-z0-9._-]/g, "_");
  }

  // ---- graph pane and node detail --------------------------------------------------------------------

  function buildGraphPane(page, pane) {
    const host = h("div", { class: "graph-host" });
    const detail = h("aside", { class: "detail" });
    const edgeBar = h("div", { class: "edge-bar" });
    const notes = h("div", { class: "graph-notes" });
    page.gs = graphState({});
    page.graphKey = JSON.stringify(["nodes", [], ""]);
    page.picked = new Set();
    page.groupInfo = null;
    const groupBar = groupControls(page);
    pane.append(h("div", { class: "graph-layout" }, h("div", { class: "graph-main" }, h("div", { class: "graph-toolbar" }, groupBar, edgeBar), notes, SC.legend(), host), detail));
    page.renderDetail = (i) => {
      page.showingGroup = false;
      renderDetail(page, detail, i);
    };
    page.renderGroup = (id) => {
      page.showingGroup = true;
      renderGroupDetail(page, detail, id);
    };
    /** Go to this circuit's graph with the current state changed by `changes` (a route like any other). */
    page.navigate = (changes, replace = false) => {
      const gs = page.gs;
      const params = { circuit: page.id, tab: "graph", view: gs.view === "groups" ? "groups" : undefined, expand: gs.expand, trim: gs.trim, group: gs.group, node: undefined, ...changes };
      const hash = "#" + SC.query(params);
      if (hash !== location.hash) go(params, replace);
      else if (!replace) onRoute();
    };
    page.setGraph = (graph) => {
      SC.clear(host);
      page.view = new SC.GraphView(host, graph, {
        picked: page.picked,
        onSelect: (i) => {
          page.gs.group = undefined;
          page.navigate({ node: i === null ? undefined : graph.nodes[i].id }, true);
          page.renderDetail(i);
        },
        onGroup: (i) => {
          const id = graph.nodes[i].id;
          page.navigate({ view: "groups", expand: [...page.gs.expand.filter((x) => x !== id), id], group: id });
        },
        onCollapse: (id) => page.navigate({ expand: page.gs.expand.filter((x) => x !== id), group: id }),
        onPick: () => groupBar.update(),
      });
      SC.clear(edgeBar).append(SC.edgeControls(page.view));
      groupBar.update();
      renderNotes(page, notes);
    };
    /** Fetch and draw the graph a route asks for, unless it is already drawn; false when a newer route took over. */
    page.applyGraphState = async (r) => {
      const gs = graphState(r);
      const key = JSON.stringify([gs.view, gs.expand.slice().sort(), gs.trim]);
      const token = (page.graphToken = {});
      if (key !== page.graphKey || !page.groupInfo) {
        const plain = gs.view === "nodes" && !gs.trim;
        const info = await SC.getJSON("/api/graph?" + SC.query({ id: page.id, view: gs.view, expand: gs.expand, trim: gs.trim, graph: plain ? "0" : undefined }));
        if (token !== page.graphToken) return false;
        page.groupInfo = info;
        page.gs = gs;
        if (key !== page.graphKey || !page.view) {
          page.graphKey = key;
          page.setGraph(plain ? page.data.graph : info.graph);
        } else renderNotes(page, notes);
      }
      page.gs = gs;
      groupBar.update();
      return true;
    };
    page.setGraph(page.data.graph);
    page.renderDetail(null);
  }

  /** The toolbar's group part: node view / group view, trim, and the form naming the picked nodes. */
  function groupControls(page) {
    const viewButton = (key, label) => h("button", { type: "button", class: "small", dataset: { view: key }, text: label, on: { click: () => page.navigate({ view: key === "groups" ? "groups" : undefined }) } });
    const views = h("span", { class: "view-controls", role: "group", "aria-label": "view" }, "show ", viewButton("nodes", "nodes"), viewButton("groups", "groups"));
    const trims = [["", "all nodes"], ["0.99", "99% of influence"], ["0.95", "95% of influence"], ["0.9", "90% of influence"], ["0.8", "80% of influence"], ["0.5", "50% of influence"]];
    const trim = h("select", { "aria-label": "trim", title: "keep, for display, the nodes carrying this share of the influence on the task loss" }, trims.map(([v, label]) => h("option", { value: v, text: label })));
    trim.addEventListener("change", () => page.navigate({ trim: trim.value }));
    const name = h("input", { type: "text", placeholder: "name the picked nodes", "aria-label": "group name", maxlength: 80 });
    const save = h("button", { type: "button", class: "small", text: "Save group" });
    const status = h("span", { class: "form-status muted" });
    const form = h("span", { class: "group-form", title: "shift-click nodes to pick them" }, name, save, status);
    save.addEventListener("click", async () => {
      status.textContent = "";
      try {
        const wanted = name.value.trim();
        await SC.postJSON("/api/groups/save", { circuit: page.id, name: wanted, nodes: [...page.picked] });
        page.picked.clear();
        name.value = "";
        page.groupInfo = null; // refetch: the groups changed
        page.graphKey = null;
        page.navigate({ view: "groups", group: "user:" + wanted });
      } catch (e) {
        status.textContent = e.message;
      }
    });
    name.addEventListener("keydown", (ev) => ev.key === "Enter" && save.click());
    const bar = h("div", { class: "controls group-controls" }, views, h("label", {}, "trim ", trim), form);
    bar.update = () => {
      views.querySelectorAll("button").forEach((b) => b.classList.toggle("active", b.dataset.view === page.gs.view));
      trim.value = [...trim.options].some((o) => o.value === page.gs.trim) ? page.gs.trim : "";
      if (page.gs.trim && trim.value !== page.gs.trim && ![...trim.options].some((o) => o.value === page.gs.trim)) trim.append(h("option", { value: page.gs.trim, text: `${page.gs.trim} of influence`, selected: true }));
      const writable = page.groupInfo ? page.groupInfo.writable : false;
      const n = page.picked.size;
      save.textContent = n ? `Save group (${n} nodes)` : "Save group";
      save.disabled = !writable || !n;
      name.disabled = !writable;
      form.title = writable ? "shift-click nodes to pick them, then name them" : "this viewer is read-only";
    };
    return bar;
  }

  /** Notes above the graph: what the trim kept, and a broken groups file. */
  function renderNotes(page, notes) {
    SC.clear(notes);
    const info = page.groupInfo;
    if (!info) return;
    const t = info.trim;
    if (t) {
      const share = t.total_influence ? (100 * t.kept_influence) / t.total_influence : 100;
      const basis = t.basis === "ablation_effect" ? "|ablation effect − circuit loss| per node" : "summed |edge weight| per node (some nodes have no ablation effect)";
      notes.append(h("div", { class: "note trim-note", text: `Trimmed for display: ${t.kept} of ${t.total} nodes, carrying ${SC.fmt(share)}% of the influence (${basis}). The circuit itself is unchanged.` }));
    }
    if (info.groups_error) notes.append(h("div", { class: "error-box", text: `Named groups not shown: ${info.groups_error}` }));
  }

  /** The side panel for a group: its kind, members (links when drawn), expand/collapse and delete. */
  function renderGroupDetail(page, aside, id) {
    SC.clear(aside);
    page.detailToken = {};
    const groups = (page.groupInfo && page.groupInfo.groups) || [];
    const g = groups.find((x) => x.id === id);
    if (!g) {
      aside.append(h("div", { class: "note", text: `No group ${id} in this circuit.` }));
      return;
    }
    const graph = page.view.graph;
    const index = new Map(graph.nodes.map((n, i) => [n.id, i]));
    const expanded = page.gs.expand.includes(id);
    const member = (m) =>
      index.has(m) && !graph.nodes[index.get(m)].group
        ? h("button", { type: "button", class: "link", text: m, on: { click: () => page.view.select(index.get(m)) } })
        : h("span", { class: "mono muted", text: m });
    const toggle = h("button", { type: "button", class: "small", text: expanded ? "collapse" : "expand", on: { click: () => page.navigate({ view: "groups", expand: expanded ? page.gs.expand.filter((x) => x !== id) : [...page.gs.expand, id], group: id }) } });
    const remove =
      g.source === "user" && page.groupInfo.writable
        ? h("button", {
            type: "button",
            class: "small",
            text: "delete group",
            on: {
              click: async () => {
                try {
                  await SC.postJSON("/api/groups/delete", { circuit: page.id, name: g.name });
                  page.groupInfo = null;
                  page.graphKey = null;
                  page.navigate({ expand: page.gs.expand.filter((x) => x !== id), group: undefined });
                } catch (e) {
                  aside.append(h("div", { class: "error-box", text: e.message }));
                }
              },
            },
          })
        : null;
    const kind = g.source === "user" ? `named group, saved in ${page.groupInfo.groups_file}` : "head group: the query, key and value channels of one head";
    aside.append(
      h(
        "div",
        { class: "group-summary" },
        h("div", { class: "node-title" }, h("span", { class: "group-swatch " + g.source }), h("span", { text: g.name })),
        h("dl", { class: "kv" }, h("dt", { text: "kind" }), h("dd", { text: kind }), h("dt", { text: "members" }), h("dd", { text: String(g.members.length) })),
        h("div", { class: "actions" }, toggle, remove),
        h("h4", { text: `members (${g.members.length})` }),
        h("div", { class: "chips" }, g.members.map(member))
      )
    );
  }

  function renderDetail(page, aside, i) {
    SC.clear(aside);
    page.detailToken = {};
    if (i === null) {
      aside.append(h("div", { class: "placeholder" }, h("h3", { text: "Node detail" }), h("p", { class: "muted", text: "Hover a node for its name; click it for its edges, ablation effect and activations." })));
      return;
    }
    const achieved = (page.data.meta.achieved || {}).loss;
    aside.append(SC.nodeSummary(page.view, i, achieved));
    if (page.view.graph.nodes[i].group) return;
    const computed = h("div", { class: "computed" }, h("div", { class: "loading", text: "Computing activations…" }));
    aside.append(computed);
    if (!page.data.run) {
      SC.clear(computed).append(h("div", { class: "note", text: "The circuit's run is not under the viewer's paths, so activations cannot be computed. Start the viewer with the run directory too." }));
      return;
    }
    const token = page.detailToken;
    const node = page.view.graph.nodes[i].id;
    SC.getJSON("/api/node?" + SC.query({ circuit: page.id, node }))
      .then((d) => token === page.detailToken && SC.clear(computed).append(nodeDetail(d)))
      .catch((e) => token === page.detailToken && SC.clear(computed).append(h("div", { class: "error-box", text: e.message })));
  }

  /** Token spans coloured by value; the focus token is outlined. */
  function tokenRun(tokens, scale, focus) {
    return h(
      "span",
      { class: "tokens" },
      tokens.map(([text, v], j) => {
        const c = SC.valueColour(v, scale);
        return h("span", { class: "tok" + (j === focus ? " focus" : "") + (c.dark ? " dark" : ""), style: { "background-color": c.bg }, title: `${JSON.stringify(text)}  ${SC.signed(v, 4)}`, text: SC.tokenText(text) });
      })
    );
  }

  function snippetRow(sn, scale, label) {
    return h("div", { class: "snippet" }, h("span", { class: "snip-label", text: label }), h("span", { class: "snip-value", text: SC.signed(sn.value, 3) }), tokenRun(sn.tokens, scale, sn.focus));
  }

  function noteOrError(part) {
    return h("div", { class: "note", text: part.error });
  }

  function corpusSection(c) {
    const out = [h("h4", { text: "Pretraining corpus" })];
    if (c.error) return out.concat(noteOrError(c));
    const st = c.stats;
    out.push(
      h("div", { class: "muted small", text: `${c.n_tokens} tokens in ${c.n_windows} validation windows · mean ${SC.fmt(st.mean)} · std ${SC.fmt(st.std)} · range ${SC.fmt(st.min)} to ${SC.fmt(st.max)} · active on ${SC.fmt(100 * st.frac_active)}% of tokens` }),
      h("h5", { text: "Top activations" }),
      c.top.map((sn, j) => snippetRow(sn, c.scale, `#${j + 1}`)),
      h("h5", { text: "At quantiles" }),
      c.quantiles.map((sn) => snippetRow(sn, c.scale, `q${Math.round(sn.q * 100)}`)),
      h("h5", { text: "Bottom activations" }),
      c.bottom.map((sn, j) => snippetRow(sn, c.scale, `#${j + 1}`))
    );
    return out;
  }

  function taskSection(t, scale) {
    const out = [h("h4", { text: "Task prompts (last position)" })];
    if (t.error) return out.concat(noteOrError(t));
    out.push(
      h("dl", { class: "kv" }, h("dt", { text: "positive prompts" }), h("dd", { text: `mean ${SC.signed(t.pos_mean)} (${t.pos.length})` }), h("dt", { text: "negative prompts" }), h("dd", { text: `mean ${SC.signed(t.neg_mean)} (${t.neg.length})` }), h("dt", { text: "difference" }), h("dd", { class: "strong", text: SC.signed(t.diff) })),
      SC.stripPlot([{ label: "positive", values: t.pos, colour: "#2563eb" }, { label: "negative", values: t.neg, colour: "#ea580c" }], { width: 380 })
    );
    const ex = t.example || {};
    const all = [...(ex.pos || []), ...(ex.neg || [])].map((p) => Math.abs(p[1]));
    const s = Math.max(scale || 0, ...all, 1e-9);
    if (ex.pos) out.push(h("div", { class: "prompt" }, h("div", { class: "prompt-label" }, "positive prompt → ", h("code", { text: SC.tokenText(ex.correct) })), tokenRun(ex.pos, s, ex.pos.length - 1)));
    if (ex.neg) out.push(h("div", { class: "prompt" }, h("div", { class: "prompt-label" }, "negative prompt → ", h("code", { text: SC.tokenText(ex.wrong) })), tokenRun(ex.neg, s, ex.neg.length - 1)));
    return out;
  }

  function attentionSection(a) {
    const short = (t) => {
      const x = SC.tokenText(t);
      return x.length > 10 ? x.slice(0, 9) + "…" : x;
    };
    const lastMax = Math.max(...a.last_row, 1e-9);
    const labels = a.tokens.map((t, j) => `${a.offset + j}:${short(t)}`);
    return [
      h("h4", { text: `Attention of head ${a.head}` }),
      h("div", { class: "muted small", text: `On the ${a.source}. Colour: attention from the last position.` }),
      h("div", { class: "prompt" }, tokenRun(a.all_tokens.map((t, j) => [t, a.last_row[j]]), lastMax, a.all_tokens.length - 1)),
      h("div", { class: "heatmap-wrap" }, SC.heatmap(a.matrix, labels, labels, { labelWidth: 84 })),
    ];
  }

  function nodeDetail(d) {
    const scale = d.corpus && !d.corpus.error ? d.corpus.scale : null;
    return h("div", { class: "node-detail" }, taskSection(d.task, scale), d.attention ? attentionSection(d.attention) : null, corpusSection(d.corpus));
  }

  // ---- task pane -------------------------------------------------------------------------------------

  function card(label, value, sub) {
    return h("div", { class: "card" }, h("div", { class: "card-label", text: label }), h("div", { class: "card-value", text: value }), sub ? h("div", { class: "card-sub", text: sub }) : null);
  }

  function renderTaskPane(pane, data) {
    const m = data.meta;
    const a = m.achieved || {};
    const v = m.validation || {};
    const task = m.task || {};
    const info = data.task_info || {};
    const full = a.full_model || {};
    const pct = (x) => (typeof x === "number" ? `${SC.fmt(100 * x)}%` : "–");
    const conv = m.loss_convention || "mean";
    pane.append(
      h("div", { class: "cards" }, card("full model loss", SC.fmt(full.loss_raw, 4), `before pruning (${a.split || "val"})`), card("circuit loss", SC.fmt(a.loss_calibrated, 4), `calibrated; target ${SC.fmt(m.target_loss)} (${conv})`), card("raw loss", SC.fmt(a.loss_raw, 4), "uncalibrated"), card("raw accuracy", pct(a.accuracy_raw), `calibrated ${pct(a.accuracy_calibrated)}`), card("nodes", String((m.counts || {}).nodes ?? "–")), card("edges", String((m.counts || {}).edges ?? "–")))
    );
    const grid = h("div", { class: "panels" });
    pane.append(grid);
    const panel = (title, ...body) => grid.append(h("section", { class: "panel" }, h("h3", { text: title }), body));
    if (v.sufficiency) {
      const kinds = [["full model", v.full_model, "#059669"], ["sufficiency", v.sufficiency, "#2563eb"], ["necessity", v.necessity, "#dc2626"], ["random", v.random, "#94a3b8"], ["resample", v.resample, "#7c3aed"]].filter((r) => r[1]);
      const items = kinds.map(([label, s, colour]) => ({ label: `${label} (raw)`, value: s.loss_raw, err: s.loss_raw_std, colour }));
      const refs = [{ value: typeof v.chance === "number" ? v.chance : Math.LN2, label: "chance" }];
      const rows = kinds.map(([label, s]) => h("tr", {}, h("th", { text: label }), [s.loss_raw, s.accuracy_raw, s.loss_calibrated, s.accuracy_calibrated, s.logit_diff].map((x, i) => h("td", { text: i % 2 ? pct(x) : SC.fmt(x, 3) }))));
      const table = h("table", { class: "grid-table compact" }, h("thead", {}, h("tr", {}, ["", "loss raw", "acc raw", "loss cal", "acc cal", "logit diff"].map((t) => h("th", { text: t })))), h("tbody", {}, rows));
      const verdict = v.verdict || "–";
      panel(`Validation${v.split ? ` (${v.split} split)` : ""}: ${verdict}`, SC.barPlot(items, { refs }), table, h("p", { class: "muted small", text: `Task loss (${v.loss_convention || conv} convention). Sufficiency keeps only the circuit; necessity ablates only the circuit (its raw loss is the headline: the damage done); random keeps as many random nodes per location; resample fills ablated nodes from clean forwards of pretraining windows. Logit diff is the mean raw correct-minus-wrong logit difference, before any calibration. Calibrations (scale ≥ 0, shift) were fitted on ${v.calibration_fitted_on || "?"} prompts and frozen.${verdict === "sufficient only after calibration" ? " Raw accuracy is below 90%: the circuit alone does not do the task without the fitted logit scale and shift." : ""}` }));
      if (v.natural) panel(`Natural code (${v.natural.n_prompts} mined prompts)`, h("table", { class: "grid-table compact" }, h("tbody", {}, [["full model", v.natural.full_model], ["circuit", v.natural.circuit]].map(([label, s]) => h("tr", {}, h("th", { text: label }), h("td", { text: `loss ${SC.fmt(s.loss_raw, 3)} raw, ${SC.fmt(s.loss_calibrated, 3)} calibrated; accuracy ${pct(s.accuracy_raw)}` }))))));
    } else panel("Validation", h("div", { class: "note", text: "No validation results in this file (run `sparsecircuits validate`)." }));
    const bis = (m.bisection || []).map((r) => [r.k, r.loss]);
    const chosen = (m.counts || {}).nodes;
    panel("Bisection: task loss against circuit size", SC.linePlot({ series: [{ name: "circuit loss", points: bis, marker: true }], xlabel: "nodes kept (k)", ylabel: "task loss", logx: bis.every((p) => p[0] > 0) && bis.length > 2, hlines: [{ y: m.target_loss, label: "target" }], vlines: chosen ? [{ x: chosen, label: `k = ${chosen}` }] : [] }));
    const hist = (m.pruning || {}).history || [];
    if (hist.length)
      panel(
        "Pruning",
        SC.linePlot({ series: [{ name: "task loss", points: hist.map((r) => [r.step, r.task_loss]) }], xlabel: "step", ylabel: "task loss", height: 180 }),
        SC.linePlot({ series: [{ name: "active nodes", points: hist.map((r) => [r.step, r.active]), colour: "#ea580c" }], xlabel: "step", ylabel: "nodes", height: 180 })
      );
    const rows = [["task", task.name], ["train split", task.split && `${task.split} (${task.n_pairs} pairs)`], ["evaluation", task.eval_split && `${task.eval_split} (${task.eval_pairs} pairs)`], ["ablation", m.ablation], ["loss", m.loss_convention], ["created", m.created]];
    panel("About", h("dl", { class: "kv" }, rows.filter((r) => r[1]).map(([k, val]) => [h("dt", { text: k }), h("dd", { text: String(val) })])));
    if (info.error) panel("Task prompts", h("div", { class: "note", text: info.error }));
    else
      panel(
        "Task prompts",
        h("p", { text: info.description || "" }),
        (info.examples || []).map((ex) => h("div", { class: "example" }, h("pre", { class: "code" }, promptTail(ex.text), h("span", { class: "completion", title: "correct completion", text: ex.correct })), h("div", { class: "small" }, "correct ", h("code", { text: ex.correct }), " · wrong ", h("code", { text: ex.wrong }))))
      );
    return true;
  }

  /** The last lines of a prompt (the prediction is made at its end). */
  function promptTail(text, lines = 10) {
    const all = String(text).split("\n");
    return all.length > lines ? "…\n" + all.slice(-lines).join("\n") : String(text);
  }

  // ---- model pane ------------------------------------------------------------------------------------

  function renderModelPane(pane, runId, circuitId) {
    if (!runId) {
      pane.append(h("div", { class: "note", text: "The circuit's run is not under the viewer's paths." }));
      return true;
    }
    pane.append(h("div", { class: "loading", text: "Loading model…" }));
    SC.getJSON("/api/model?" + SC.query({ run: runId, circuit: circuitId }))
      .then((d) => SC.clear(pane).append(modelPanel(d, runId)))
      .catch((e) => SC.clear(pane).append(h("div", { class: "error-box", text: e.message })));
    return true;
  }

  function densityTable(density) {
    const cols = density.columns;
    const cell = (d) => (d ? h("td", { class: "num heat", style: { "background-color": `rgba(37, 99, 235, ${(0.05 + 0.6 * Math.sqrt(d.density)).toFixed(3)})` }, title: `${d.nonzero} of ${d.numel} nonzero`, text: `${SC.fmt(100 * d.density, 3)}%` }) : h("td", { text: "–" }));
    return h(
      "div",
      {},
      h("table", { class: "grid-table" }, h("thead", {}, h("tr", {}, h("th", { text: "layer" }), cols.map((c) => h("th", { text: c })))), h("tbody", {}, density.layers.map((row, l) => h("tr", {}, h("th", { text: String(l) }), cols.map((c) => cell(row[c])))))),
      h("table", { class: "grid-table compact" }, h("tbody", {}, Object.entries(density.global).map(([name, d]) => h("tr", {}, h("th", { class: "mono", text: name }), cell(d)))))
    );
  }

  function embeddingCards(items) {
    return items.map((ch) =>
      h(
        "div",
        { class: "emb-card" },
        h("div", { class: "emb-title", text: `channel ${ch.channel}` }, h("span", { class: "muted small", text: ` · ${ch.nonzero} nonzero tokens` })),
        h("div", { class: "chips" }, ch.tokens.length ? ch.tokens.map(([t, w]) => h("span", { class: "chip tok-chip", style: { "border-color": SC.edgeColour(w) }, title: SC.signed(w, 4) }, h("span", { class: "mono", text: SC.tokenText(t) }), h("span", { class: "chip-val", text: SC.signed(w, 2) }))) : h("span", { class: "muted", text: "no nonzero entries" }))
      )
    );
  }

  function modelPanel(d, runId) {
    const cfg = (d.config || {}).model || {};
    const metrics = d.metrics || {};
    const grid = h("div", { class: "panels" });
    const panel = (title, ...body) => grid.append(h("section", { class: "panel" }, h("h3", { text: title }), body));
    panel("Training loss", SC.linePlot({ series: [{ name: "train loss", points: metrics.loss }, { name: "val loss", points: metrics.val_loss, marker: true }], xlabel: "step", ylabel: "loss (nats/token)" }));
    panel("Sparsity over training", SC.linePlot({ series: [{ name: "L0 fraction", points: metrics.l0_frac }, { name: "nonzero fraction", points: metrics.nonzero_frac }], xlabel: "step", ylabel: "fraction of weights", logy: true }));
    panel("Weight density per layer and matrix", densityTable(d.density));
    const keys = ["n_layer", "d_model", "n_head", "d_head", "d_mlp", "n_ctx", "vocab_size", "afrac", "sink", "pos_emb"];
    const data = (d.config || {}).data || {};
    panel("Configuration", h("dl", { class: "kv" }, keys.filter((k) => k in cfg).map((k) => [h("dt", { text: k }), h("dd", { text: String(cfg[k]) })]), data.dir ? [h("dt", { text: "dataset" }), h("dd", { class: "mono", text: String(data.dir) })] : null));
    const cards = h("div", { class: "emb-cards" }, embeddingCards(d.embedding || []));
    const input = h("input", { type: "text", placeholder: "channels, e.g. 5, 17", "aria-label": "embedding channels", size: 16 });
    const status = h("span", { class: "muted small" });
    const lookup = async () => {
      try {
        status.textContent = "";
        const items = await SC.getJSON("/api/embedding?" + SC.query({ run: runId, channels: input.value.replace(/\s+/g, "") }));
        SC.clear(cards).append(...embeddingCards(items));
      } catch (e) {
        status.textContent = e.message;
      }
    };
    input.addEventListener("keydown", (ev) => ev.key === "Enter" && lookup());
    grid.append(h("section", { class: "panel wide" }, h("h3", { text: "Embedding channels: tokens with the largest |wte[token, channel]|" }), h("div", { class: "controls" }, input, h("button", { type: "button", class: "small", text: "show", on: { click: lookup } }), status), cards));
    return h("div", {}, h("div", { class: "muted small path", text: d.path }), grid);
  }

  async function showRun(id) {
    state.page = null;
    const run = (state.listing.runs || []).find((r) => r.id === id);
    SC.clear(main()).append(pageHeader(run ? run.name : id, run && run.model ? `${run.model.n_layer} layers · d_model ${run.model.d_model} · ${run.circuits.length} circuits` : ""));
    if (run && run.circuits.length) {
      const row = (c) => h("tr", {}, h("td", {}, h("a", { href: "#" + SC.query({ circuit: c.id }), text: c.task || c.name })), h("td", { class: "num", text: String(c.nodes ?? "–") }), h("td", { class: "num", text: String(c.edges ?? "–") }), h("td", { class: "num", text: SC.fmt(c.loss, 4) }), h("td", { class: "muted", text: c.name }));
      main().append(h("section", { class: "panel wide" }, h("h3", { text: "Circuits" }), h("table", { class: "grid-table list" }, h("thead", {}, h("tr", {}, ["task", "nodes", "edges", "loss", "file"].map((t) => h("th", { text: t })))), h("tbody", {}, run.circuits.map(row)))));
    }
    const pane = h("div", {});
    main().append(pane);
    renderModelPane(pane, id, undefined);
  }

  // ---- start ---------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    document.getElementById("filter").addEventListener("input", renderTree);
    window.addEventListener("hashchange", onRoute);
    try {
      await loadListing();
    } catch (e) {
      SC.clear(main()).append(h("div", { class: "error-box", text: `Could not reach the viewer's server: ${e.message}` }));
      return;
    }
    await onRoute();
  });
})((window.SC = window.SC || {}));
