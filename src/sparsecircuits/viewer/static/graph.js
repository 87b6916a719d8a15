// The circuit graph: SVG drawing of the layout computed by the server (viewer/graph.py), hover and
// selection, an edge filter, and the node summary (name, ablation effect, edges). Shared by the app
// and by exported HTML pages. Node colours, labels and the legend come in the graph JSON
// (graph.locations, graph.legend: the table in model/locations.py), as for viewer/svg.py.
// A group-level graph (viewer/groups.py) has box nodes (node.group), summed edges [src, dst, w, count]
// and outlines of expanded groups; the app passes onGroup / onCollapse / onPick for them.
"use strict";
(function (SC) {
  const h = (...a) => SC.h(...a);
  const s = (...a) => SC.s(...a);

  /** The graph JSON's entry for a node's location (colour, title, hollow), with fallbacks. */
  const locOf = (graph, n) => ((graph.locations || {})[n.loc]) || {};
  SC.nodeColour = (graph, n) => locOf(graph, n).colour || "#334155";
  SC.locTitle = (graph, n) => locOf(graph, n).title || n.loc;
  const FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif";
  const EDGE_CAPS = [200, 500, 1000, 2000, 5000, 20000];

  SC.edgeColour = (w) => (w === null || w === undefined ? "#64748b" : w >= 0 ? "#2563eb" : "#dc2626");
  SC.edgeWidth = (w, maxAbs) => (w === null || w === undefined || !maxAbs ? 1.2 : 0.6 + 3.4 * Math.sqrt(Math.abs(w) / maxAbs));
  SC.curve = function (a, b) {
    const my = (a.y + b.y) / 2;
    return `M${a.x},${a.y} C${a.x},${my} ${b.x},${my} ${b.x},${b.y}`;
  };

  /** Per node: incoming and outgoing edge indices, residual links and QK partners. */
  function adjacency(graph) {
    const adj = graph.nodes.map(() => ({ ins: [], outs: [], resIn: [], resOut: [], qk: [] }));
    graph.edges.forEach(([a, b], i) => {
      adj[a].outs.push(i);
      adj[b].ins.push(i);
    });
    graph.residual_links.forEach(([a, b]) => {
      adj[a].resOut.push(b);
      adj[b].resIn.push(a);
    });
    graph.qk_pairs.forEach(([q, k]) => {
      adj[q].qk.push(k);
      adj[k].qk.push(q);
    });
    return adj;
  }

  /** Width of a group box: room for "name · size". */
  const boxWidth = (n) => Math.max(64, 6.4 * (n.label.length + String(n.group.size).length + 3) + 18);

  class GraphView {
    /** opts: {onSelect(i), maxEdges, onGroup(i) (a box clicked), onCollapse(groupId), onPick(i) (shift-click), picked: Set of ids} */
    constructor(container, graph, opts = {}) {
      this.graph = graph;
      this.opts = opts;
      this.adj = adjacency(graph);
      const weights = graph.edges.map((e) => e[2]).filter((w) => typeof w === "number").map(Math.abs);
      this.maxAbs = weights.length ? Math.max(...weights) : 0;
      const nonzero = weights.filter((w) => w > 0);
      this.minAbs = nonzero.length ? Math.min(...nonzero) : 0;
      this.threshold = 0;
      this.maxEdges = opts.maxEdges || 2000;
      this.selected = null;
      this.picked = opts.picked || new Set(); // shared with the app, so picks survive a redraw
      this.zoom = 1;
      this.build(container);
    }

    build(container) {
      const g = this.graph;
      this.scroller = h("div", { class: "graph-scroll" });
      this.svg = s("svg", { class: "graph", viewBox: `0 0 ${g.width} ${g.height}`, "font-family": FONT });
      this.layers = {};
      for (const name of ["bands", "outlines", "residual", "edges", "qk", "focus", "nodes"]) this.svg.appendChild((this.layers[name] = s("g", { class: name })));
      this.tooltip = h("div", { class: "tooltip", hidden: true });
      this.scroller.appendChild(this.svg);
      container.appendChild(this.scroller);
      container.appendChild(this.tooltip);
      const legend = container.parentElement && container.parentElement.querySelector(".legend:empty");
      if (legend) legend.replaceWith(SC.legend(g)); // the pane's legend box (SC.legend called without a graph)
      this.drawBands();
      this.drawOutlines();
      this.drawResidual();
      this.drawQK();
      this.drawNodes();
      this.setFilter(0, this.maxEdges);
      this.svg.addEventListener("click", (ev) => {
        if (ev.target === this.svg || ev.target.closest(".bands") || ev.target.closest(".outline rect")) this.select(null);
      });
      this.scroller.addEventListener("wheel", (ev) => this.onWheel(ev), { passive: false });
      requestAnimationFrame(() => {
        this.fit();
        this.svg.dataset.ready = "1"; // laid out: tests and scripts may click now
      });
    }

    drawBands() {
      const g = this.graph;
      const L = this.layers.bands;
      for (const band of g.layers) {
        L.appendChild(s("rect", { x: 4, y: band.y0, width: g.width - 8, height: band.y1 - band.y0, rx: 6, fill: "#f8fafc", stroke: "#e2e8f0" }));
        L.appendChild(s("text", { x: 12, y: band.y0 + 14, "font-size": 11, "font-weight": 600, fill: "#475569", text: `layer ${band.layer}` }));
      }
      for (const row of g.rows) L.appendChild(s("text", { x: 12, y: row.y + 4, "font-size": 11, fill: "#64748b", text: row.label }));
      for (const hg of g.heads) {
        const [x0, x1, y] = [hg.x0 - 12, hg.x1 + 12, hg.y - 16];
        L.appendChild(s("path", { d: `M${x0},${y + 4} V${y} H${x1} V${y + 4}`, fill: "none", stroke: "#cbd5e1" }));
        L.appendChild(s("text", { x: (x0 + x1) / 2, y: y - 3, "font-size": 9, "text-anchor": "middle", fill: "#64748b", text: `head ${hg.head}` }));
      }
    }

    /** A dashed frame around each expanded group's members; its label collapses the group again. */
    drawOutlines() {
      for (const o of this.graph.outlines || []) {
        const [x0, y0, x1, y1] = [o.x0 - 16, o.y0 - 30, o.x1 + 16, o.y1 + 24];
        const label = s(
          "text",
          { class: "outline-label", x: x0 + 4, y: y0 - 4, "font-size": 10, "font-weight": 600, fill: "#7c3aed", tabindex: 0, text: `▾ ${o.name}` },
          s("title", { text: "collapse this group" })
        );
        const collapse = (ev) => {
          ev.stopPropagation();
          if (this.opts.onCollapse) this.opts.onCollapse(o.id);
        };
        label.addEventListener("click", collapse);
        label.addEventListener("keydown", (ev) => ev.key === "Enter" && collapse(ev));
        this.layers.outlines.appendChild(
          s("g", { class: "outline", dataset: { id: o.id } }, s("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 8, fill: "#faf5ff", "fill-opacity": 0.5, stroke: "#a78bfa", "stroke-dasharray": "5 3" }), label)
        );
      }
    }

    drawResidual() {
      const n = this.graph.nodes;
      for (const [a, b] of this.graph.residual_links) {
        this.layers.residual.appendChild(
          s("path", { d: SC.curve(n[a], n[b]), fill: "none", stroke: "#94a3b8", "stroke-width": 1, "stroke-dasharray": "3 3", opacity: 0.55, dataset: { a, b } })
        );
      }
    }

    drawQK() {
      const n = this.graph.nodes;
      for (const [q, k] of this.graph.qk_pairs) {
        const [x1, x2, y] = [n[q].x, n[k].x, n[q].y];
        this.layers.qk.appendChild(
          s("path", { d: `M${x1},${y - 7} Q${(x1 + x2) / 2},${y - 24} ${x2},${y - 7}`, fill: "none", stroke: "#d97706", "stroke-width": 1.2, "stroke-dasharray": "1.5 2.5" })
        );
      }
    }

    /** A group's box: its name and size; a click expands it (opts.onGroup). */
    groupBox(node, i) {
      const w = boxWidth(node);
      const user = node.group.source === "user";
      return s(
        "g",
        { class: "node group-box" + (user ? " user" : ""), transform: `translate(${node.x},${node.y})`, dataset: { i, name: node.id }, tabindex: 0 },
        s("rect", { x: -w / 2, y: -12, width: w, height: 24, rx: 6, fill: user ? "#f5f3ff" : "#ecfdf5", stroke: user ? "#7c3aed" : "#059669", "stroke-width": 1.6 }),
        s("text", { y: 4, "font-size": 10.5, "font-weight": 600, "text-anchor": "middle", fill: "#1e293b", text: `${node.label} · ${node.group.size}` })
      );
    }

    drawNodes() {
      this.nodeEls = this.graph.nodes.map((node, i) => {
        const colour = SC.nodeColour(this.graph, node);
        const el = node.group
          ? this.groupBox(node, i)
          : s(
              "g",
              { class: "node" + (this.picked.has(node.id) ? " picked" : ""), transform: `translate(${node.x},${node.y})`, dataset: { i, name: node.id }, tabindex: 0 },
              s("circle", { r: 7, fill: locOf(this.graph, node).hollow ? "#ffffff" : colour, stroke: colour, "stroke-width": 2 }),
              s("text", { y: 19, "font-size": 9, "text-anchor": "middle", fill: "#334155", text: node.label })
            );
        el.addEventListener("mouseenter", () => this.showTooltip(i));
        el.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
        el.addEventListener("click", (ev) => {
          ev.stopPropagation();
          if ((ev.shiftKey || ev.ctrlKey || ev.metaKey) && !node.group) this.togglePick(i);
          else this.select(i);
        });
        el.addEventListener("keydown", (ev) => ev.key === "Enter" && this.select(i));
        this.layers.nodes.appendChild(el);
        return el;
      });
    }

    /** Pick or unpick node i for a new group (shift-click); opts.onPick hears of it. */
    togglePick(i) {
      const id = this.graph.nodes[i].id;
      if (this.picked.has(id)) this.picked.delete(id);
      else this.picked.add(id);
      this.nodeEls[i].classList.toggle("picked", this.picked.has(id));
      if (this.opts.onPick) this.opts.onPick(this.picked);
    }

    edgePath(i, extra = {}) {
      const [a, b, w, count] = this.graph.edges[i];
      const n = this.graph.nodes;
      const summed = count > 1 ? ` (sum of ${count} edges)` : "";
      return s(
        "path",
        { d: SC.curve(n[a], n[b]), fill: "none", stroke: SC.edgeColour(w), "stroke-width": SC.edgeWidth(w, this.maxAbs).toFixed(2), opacity: 0.8, ...extra },
        s("title", { text: `${n[a].display} → ${n[b].display}${w === null ? "" : ": " + SC.signed(w, 4)}${summed}` })
      );
    }

    /** Draw the strongest edges with |w| >= threshold, at most maxEdges. Returns the number drawn. */
    setFilter(threshold, maxEdges) {
      this.threshold = threshold;
      this.maxEdges = maxEdges;
      const L = SC.clear(this.layers.edges);
      const shown = [];
      this.graph.edges.forEach((e, i) => {
        if (shown.length < maxEdges && (e[2] === null || Math.abs(e[2]) >= threshold)) shown.push(i);
      });
      for (const i of shown.reverse()) L.appendChild(this.edgePath(i));
      this.shown = shown.length;
      return shown.length;
    }

    /** Select node i (or null): highlight its edges (all of them, whatever the filter) and neighbours. */
    select(i, notify = true) {
      if (i !== null && this.graph.nodes[i].group && this.opts.onGroup) {
        if (notify) this.opts.onGroup(i); // a box: the app expands it
        return;
      }
      this.selected = i;
      const focus = SC.clear(this.layers.focus);
      this.nodeEls.forEach((el) => el.classList.remove("sel", "nb"));
      this.svg.classList.toggle("has-selection", i !== null);
      if (i !== null) {
        const adj = this.adj[i];
        for (const e of [...adj.ins, ...adj.outs]) {
          focus.appendChild(this.edgePath(e, { opacity: 1 }));
          const [a, b] = this.graph.edges[e];
          this.nodeEls[a === i ? b : a].classList.add("nb");
        }
        for (const j of [...adj.resIn, ...adj.resOut, ...adj.qk]) this.nodeEls[j].classList.add("nb");
        this.nodeEls[i].classList.add("sel");
        this.scrollTo(i);
      }
      if (notify && this.opts.onSelect) this.opts.onSelect(i);
    }

    scrollTo(i) {
      const n = this.graph.nodes[i];
      const sc = this.scroller;
      const [x, y] = [n.x * this.zoom, n.y * this.zoom];
      if (x < sc.scrollLeft || x > sc.scrollLeft + sc.clientWidth) sc.scrollLeft = x - sc.clientWidth / 2;
      if (y < sc.scrollTop || y > sc.scrollTop + sc.clientHeight) sc.scrollTop = y - sc.clientHeight / 2;
    }

    showTooltip(i) {
      const n = this.graph.nodes[i];
      const adj = this.adj[i];
      const effect = n.info && n.info.ablation_effect;
      const label = n.info && n.info.label;
      if (n.group) {
        SC.clear(this.tooltip).append(
          h("div", { class: "tt-name", text: n.display }),
          h("div", { class: "muted", text: `${n.group.source === "user" ? "named group" : "head group"} of ${n.group.size} nodes` }),
          h("div", { text: `in ${adj.ins.length} · out ${adj.outs.length} summed edges` }),
          h("div", { class: "muted", text: "click to expand" })
        );
      } else SC.clear(this.tooltip).append(
        h("div", { class: "tt-name", text: n.display }),
        typeof label === "string" ? h("div", { class: "tt-label", text: label }) : null,
        h("div", { class: "muted", text: SC.locTitle(this.graph, n) }),
        h("div", { text: `in ${adj.ins.length} · out ${adj.outs.length} edges` }),
        typeof effect === "number" ? h("div", { text: `ablation effect: task loss ${SC.fmt(effect, 4)}` }) : null
      );
      const box = this.nodeEls[i].getBoundingClientRect();
      const host = this.tooltip.parentElement.getBoundingClientRect();
      this.tooltip.style.left = `${box.right - host.left + 8}px`;
      this.tooltip.style.top = `${box.top - host.top - 4}px`;
      this.tooltip.hidden = false;
    }

    setZoom(z) {
      this.zoom = Math.max(0.15, Math.min(4, z));
      this.svg.setAttribute("width", Math.round(this.graph.width * this.zoom));
      this.svg.setAttribute("height", Math.round(this.graph.height * this.zoom));
    }

    /**
     * Zoom to fit the width: small graphs are enlarged (up to 1.6x, while they fit the height too), wide
     * ones shrunk no further than 0.5x so labels stay legible (scroll for the rest). whole: fit the whole
     * graph, both ways, for an overview.
     */
    fit(whole = false) {
      const w = (this.scroller.clientWidth || this.graph.width) - 4;
      const hgt = (this.scroller.clientHeight || 600) - 4;
      const byWidth = w / this.graph.width;
      const byHeight = hgt / this.graph.height;
      if (whole) this.setZoom(Math.min(byWidth, byHeight, 1.6));
      else this.setZoom(byWidth <= 1 ? Math.max(0.5, byWidth) : Math.max(1, Math.min(1.6, byWidth, byHeight)));
    }

    onWheel(ev) {
      if (!ev.ctrlKey && !ev.metaKey) return;
      ev.preventDefault();
      this.setZoom(this.zoom * (ev.deltaY < 0 ? 1.15 : 1 / 1.15));
    }

    /** A standalone SVG document of what is drawn now (for download, or for a PNG via a canvas). */
    toSVG(title) {
      const g = this.graph;
      const header = 44;
      const clone = this.svg.cloneNode(true);
      clone.removeAttribute("class");
      clone.setAttribute("width", g.width);
      clone.setAttribute("height", g.height + header);
      clone.setAttribute("viewBox", `0 -${header} ${g.width} ${g.height + header}`);
      clone.querySelectorAll(".sel, .nb").forEach((el) => el.classList.remove("sel", "nb"));
      clone.insertBefore(s("rect", { x: 0, y: -header, width: g.width, height: g.height + header, fill: "#ffffff" }), clone.firstChild);
      clone.appendChild(s("text", { x: 16, y: -22, "font-size": 15, "font-weight": 600, fill: "#0f172a", text: title || "" }));
      clone.appendChild(
        s("text", { x: 16, y: -6, "font-size": 11, fill: "#64748b", text: `${g.nodes.length} nodes, ${this.shown} of ${g.edges.length} edges shown; blue positive, red negative weight` })
      );
      return new XMLSerializer().serializeToString(clone);
    }

    /** A PNG (Blob) of toSVG, drawn at `scale` through a canvas. */
    toPNG(title, scale = 2) {
      const text = this.toSVG(title);
      const [w, hgt] = [this.graph.width, this.graph.height + 44];
      return new Promise((resolve, reject) => {
        const img = new Image();
        const url = URL.createObjectURL(new Blob([text], { type: "image/svg+xml" }));
        img.onload = () => {
          const canvas = h("canvas", { width: w * scale, height: hgt * scale });
          const ctx = canvas.getContext("2d");
          ctx.scale(scale, scale);
          ctx.drawImage(img, 0, 0, w, hgt);
          URL.revokeObjectURL(url);
          canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("PNG export failed"))), "image/png");
        };
        img.onerror = () => reject(new Error("PNG export failed"));
        img.src = url;
      });
    }
  }
  SC.GraphView = GraphView;

  /** Slider (min |weight|, log scale), edge cap, zoom buttons and the count of edges drawn. */
  SC.edgeControls = function (view) {
    const count = h("span", { class: "count" });
    const slider = h("input", { type: "range", min: 0, max: 1000, value: 0, "aria-label": "minimum edge weight" });
    const thresholdLabel = h("span", { class: "threshold" });
    const cap = h("select", { "aria-label": "edge cap" }, EDGE_CAPS.map((n) => h("option", { value: n, text: `${n} edges`, selected: n === view.maxEdges })));
    const threshold = () => {
      const p = Number(slider.value) / 1000;
      if (p === 0 || !view.maxAbs) return 0;
      const lo = Math.log(view.minAbs || view.maxAbs * 1e-3);
      return Math.min(view.maxAbs, Math.exp(lo + p * (Math.log(view.maxAbs) - lo)));
    };
    let pending = false;
    const update = () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        const t = threshold();
        const n = view.setFilter(t, Number(cap.value));
        thresholdLabel.textContent = t ? `|w| ≥ ${SC.fmt(t)}` : "all weights";
        count.textContent = `${n} of ${view.graph.edges.length} edges drawn`;
      });
    };
    slider.addEventListener("input", update);
    cap.addEventListener("change", update);
    update();
    const button = (text, title, fn) => h("button", { type: "button", class: "small", title, text, on: { click: fn } });
    return h(
      "div",
      { class: "controls" },
      h("label", {}, "min |weight| ", slider, " ", thresholdLabel),
      h("label", {}, "draw at most ", cap),
      count,
      h("span", { class: "spacer" }),
      button("−", "zoom out (or Ctrl + wheel)", () => view.setZoom(view.zoom / 1.25)),
      button("+", "zoom in (or Ctrl + wheel)", () => view.setZoom(view.zoom * 1.25)),
      button("fit", "show the whole graph", () => view.fit(true))
    );
  };

  /** The legend: node kinds from graph.legend, then the edge styles. Called without a graph (as the app
   * and the export page do), it is an empty box that the GraphView of the same pane fills in. */
  SC.legend = function (graph) {
    if (!graph) return h("div", { class: "legend" });
    const item = (colour, label, hollow) =>
      h("span", { class: "legend-item" }, h("span", { class: "dot", style: { "background-color": hollow ? "#fff" : colour, "border-color": colour } }), label);
    const line = (colour, label, dashed) => h("span", { class: "legend-item" }, h("span", { class: dashed ? "line dashed" : "line", style: { "border-color": colour } }), label);
    return h(
      "div",
      { class: "legend" },
      (graph.legend || []).map((e) => item(e.colour, e.label, e.hollow)),
      line("#2563eb", "positive weight"),
      line("#dc2626", "negative weight"),
      line("#94a3b8", "residual link", true),
      line("#d97706", "QK pair", true)
    );
  };

  /** "12 nodes · 9 edges · loss 0.149 (target 0.15)" for a circuit's meta. */
  SC.circuitFacts = function (meta) {
    const counts = meta.counts || {};
    const achieved = meta.achieved || {};
    const parts = [`${counts.nodes ?? "?"} nodes`, `${counts.edges ?? "?"} edges`];
    if (typeof achieved.loss === "number") parts.push(`loss ${SC.fmt(achieved.loss, 3)}` + (typeof meta.target_loss === "number" ? ` (target ${SC.fmt(meta.target_loss)})` : ""));
    if (meta.ablation) parts.push(`${meta.ablation} ablation`);
    return parts.join(" · ");
  };

  /** Rows of the edges of a node: the other end (a button that selects it) and the signed weight. */
  function edgeList(view, indices, otherEnd) {
    const g = view.graph;
    const sorted = indices.slice().sort((x, y) => Math.abs(g.edges[y][2] || 0) - Math.abs(g.edges[x][2] || 0));
    const shown = sorted.slice(0, 30);
    const rows = shown.map((e) => {
      const [a, b, w] = g.edges[e];
      const j = otherEnd === "src" ? a : b;
      const bar = h("span", { class: "wbar", style: { width: `${view.maxAbs ? (60 * Math.abs(w || 0)) / view.maxAbs : 0}px`, "background-color": SC.edgeColour(w) } });
      return h("tr", {}, h("td", {}, nodeButton(view, j)), h("td", { class: "num", text: w === null ? "–" : SC.signed(w, 3) }), h("td", {}, bar));
    });
    const more = sorted.length > shown.length ? h("div", { class: "muted", text: `… and ${sorted.length - shown.length} more` }) : null;
    return [h("table", { class: "edges" }, h("tbody", {}, rows)), more];
  }

  function nodeButton(view, j) {
    const n = view.graph.nodes[j];
    return h(
      "button",
      { type: "button", class: "link", title: SC.locTitle(view.graph, n), on: { click: () => view.select(j) } },
      h("span", { class: "dot small", style: { "background-color": SC.nodeColour(view.graph, n) } }),
      n.display
    );
  }

  /** Name, location, ablation effect and all edges of node i, from the graph data alone. */
  SC.nodeSummary = function (view, i, achievedLoss) {
    const n = view.graph.nodes[i];
    const adj = view.adj[i];
    const info = n.info || {};
    const facts = [["location", SC.locTitle(view.graph, n)], ["layer", String(n.layer)]];
    if (typeof info.label === "string") facts.unshift(["reads as (from data)", info.label]);
    if (n.head !== undefined) facts.push(["head · channel", `${n.head} · ${n.ch}`]);
    if (typeof info.ablation_effect === "number") {
      const delta = typeof achievedLoss === "number" ? ` (${SC.signed(info.ablation_effect - achievedLoss)} vs the circuit)` : "";
      facts.push(["ablation effect", `task loss ${SC.fmt(info.ablation_effect, 4)}${delta}`]);
    }
    if (typeof info.tau === "number") facts.push(["mask score τ", SC.fmt(info.tau, 3)]);
    const section = (title, items, body) => (items.length ? [h("h4", { text: `${title} (${items.length})` }), body] : null);
    const nodes = (list) => h("div", { class: "chips" }, list.map((j) => nodeButton(view, j)));
    return h(
      "div",
      { class: "node-summary" },
      h("div", { class: "node-title" }, h("span", { class: "dot", style: { "background-color": SC.nodeColour(view.graph, n) } }), h("span", { class: "mono", text: n.display })),
      h("dl", { class: "kv" }, facts.map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])),
      section("input edges", adj.ins, edgeList(view, adj.ins, "src")),
      section("output edges", adj.outs, edgeList(view, adj.outs, "dst")),
      section("fed through the residual stream by", adj.resIn, nodes(adj.resIn)),
      section("feeds through the residual stream", adj.resOut, nodes(adj.resOut)),
      section("QK partner", adj.qk, nodes(adj.qk))
    );
  };
})((window.SC = window.SC || {}));
