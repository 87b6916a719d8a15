// Start-up of an exported circuit page (viewer/export.py inlines this with dom.js, plot.js, graph.js):
// the graph, its filter and the node summary, from the JSON in #circuit-data. No server needed.
"use strict";
(function (SC) {
  const h = (...a) => SC.h(...a);

  function start() {
    const source = document.getElementById("circuit-data");
    if (!source) return;
    const data = JSON.parse(source.textContent);
    const meta = data.meta || {};
    const host = h("div", { class: "graph-host" });
    const detail = h("aside", { class: "detail" });
    const toolbar = h("div", { class: "graph-toolbar" });
    const main = document.getElementById("main");
    main.append(
      h("div", { class: "page-header" }, h("div", {}, h("h1", { text: data.title }), h("div", { class: "muted", text: SC.circuitFacts(meta) }))),
      h("div", { class: "graph-layout" }, h("div", { class: "graph-main" }, toolbar, SC.legend(), host), detail)
    );
    const achieved = (meta.achieved || {}).loss;
    const show = (i) => {
      SC.clear(detail);
      if (i === null) detail.append(h("div", { class: "placeholder" }, h("h3", { text: "Node" }), h("p", { class: "muted", text: "Click a node for its edges and ablation effect." })));
      else detail.append(SC.nodeSummary(view, i, achieved));
    };
    const view = new SC.GraphView(host, data.graph, { onSelect: show });
    toolbar.append(SC.edgeControls(view));
    show(null);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})((window.SC = window.SC || {}));
