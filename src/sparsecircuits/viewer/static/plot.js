// Small SVG charts: line plots (training curves, bisection), horizontal bars, heatmaps, strip plots.
"use strict";
(function (SC) {
  const s = (...a) => SC.s(...a);
  const PALETTE = ["#2563eb", "#ea580c", "#059669", "#7c3aed", "#db2777", "#0891b2"];
  SC.PALETTE = PALETTE;

  /** About n round tick values covering [lo, hi]. */
  function niceTicks(lo, hi, n = 5) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }

  function logTicks(lo, hi) {
    const ticks = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of hi / lo < 100 ? [1, 2, 5] : [1]) {
        const t = m * Math.pow(10, e);
        if (t >= lo * 0.999 && t <= hi * 1.001) ticks.push(t);
      }
    }
    return ticks.length >= 2 ? ticks : niceTicks(lo, hi, 4).filter((t) => t > 0);
  }

  function scale(lo, hi, a, b, log) {
    const f = log ? Math.log10 : (x) => x;
    const [l, h] = [f(lo), f(hi)];
    return (x) => (h === l ? (a + b) / 2 : a + ((f(x) - l) / (h - l)) * (b - a));
  }

  function extent(values, log, pad = 0.05) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (log) return [lo, hi === lo ? hi * 10 : hi];
    if (hi === lo) return [lo - 1, hi + 1];
    const p = (hi - lo) * pad;
    return [lo - p, hi + p];
  }

  /**
   * A line plot. opts: {series: [{name, points: [[x, y]], colour, marker}], xlabel, ylabel, logx, logy,
   * hlines: [{y, label, colour}], vlines: [{x, label, colour}], width, height}.
   */
  SC.linePlot = function (opts) {
    const W = opts.width || 460;
    const series = (opts.series || []).filter((sr) => sr.points && sr.points.length);
    const legend = series.length > 1 || (series.length === 1 && series[0].name);
    const H = (opts.height || 230) + (legend ? 12 : 0);
    const m = { l: 56, r: 14, t: legend ? 28 : 14, b: 40 };
    const keep = (v, log) => typeof v === "number" && isFinite(v) && (!log || v > 0);
    series.forEach((sr) => (sr.points = sr.points.filter((p) => keep(p[0], opts.logx) && keep(p[1], opts.logy))));
    const xs = series.flatMap((sr) => sr.points.map((p) => p[0]));
    const ys = series.flatMap((sr) => sr.points.map((p) => p[1]));
    (opts.hlines || []).forEach((l) => keep(l.y, opts.logy) && ys.push(l.y));
    const svg = s("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    if (!xs.length) {
      svg.appendChild(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: "no data" }));
      return svg;
    }
    const [x0, x1] = extent(xs, opts.logx, 0.02);
    const [y0, y1] = extent(ys, opts.logy);
    const X = scale(x0, x1, m.l, W - m.r, opts.logx);
    const Y = scale(y0, y1, H - m.b, m.t, opts.logy);
    const axes = s("g", { class: "axes" });
    for (const t of opts.logy ? logTicks(y0, y1) : niceTicks(y0, y1, 4)) {
      axes.appendChild(s("line", { x1: m.l, x2: W - m.r, y1: Y(t), y2: Y(t), class: "grid" }));
      axes.appendChild(s("text", { x: m.l - 6, y: Y(t) + 3.5, "text-anchor": "end", text: SC.fmt(t) }));
    }
    for (const t of opts.logx ? logTicks(x0, x1) : niceTicks(x0, x1, 5)) {
      axes.appendChild(s("line", { x1: X(t), x2: X(t), y1: H - m.b, y2: H - m.b + 4, class: "tick" }));
      axes.appendChild(s("text", { x: X(t), y: H - m.b + 15, "text-anchor": "middle", text: SC.fmt(t) }));
    }
    axes.appendChild(s("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "axis" }));
    axes.appendChild(s("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b, class: "axis" }));
    if (opts.xlabel) axes.appendChild(s("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle", class: "label", text: opts.xlabel }));
    if (opts.ylabel)
      axes.appendChild(
        s("text", { x: 12, y: (m.t + H - m.b) / 2, transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})`, "text-anchor": "middle", class: "label", text: opts.ylabel })
      );
    svg.appendChild(axes);
    for (const l of opts.hlines || []) {
      if (!keep(l.y, opts.logy)) continue;
      svg.appendChild(s("line", { x1: m.l, x2: W - m.r, y1: Y(l.y), y2: Y(l.y), stroke: l.colour || "#94a3b8", "stroke-dasharray": "4 3" }));
      if (l.label) svg.appendChild(s("text", { x: W - m.r - 4, y: Y(l.y) - 4, "text-anchor": "end", class: "ref", text: l.label }));
    }
    for (const l of opts.vlines || []) {
      if (!keep(l.x, opts.logx)) continue;
      svg.appendChild(s("line", { x1: X(l.x), x2: X(l.x), y1: m.t, y2: H - m.b, stroke: l.colour || "#94a3b8", "stroke-dasharray": "4 3" }));
      const right = X(l.x) > W - m.r - 60;
      if (l.label) svg.appendChild(s("text", { x: X(l.x) + (right ? -4 : 4), y: m.t + 10, "text-anchor": right ? "end" : "start", class: "ref", text: l.label }));
    }
    series.forEach((sr, i) => {
      const colour = sr.colour || PALETTE[i % PALETTE.length];
      const d = sr.points.map((p, j) => `${j ? "L" : "M"}${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
      svg.appendChild(s("path", { d, fill: "none", stroke: colour, "stroke-width": 1.6 }));
      if (sr.marker || sr.points.length <= 40) {
        for (const p of sr.points)
          svg.appendChild(s("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.6, fill: colour }, s("title", { text: `${SC.fmt(p[0])}: ${SC.fmt(p[1], 4)}` })));
      }
    });
    if (legend) {
      let x = m.l;
      series.forEach((sr, i) => {
        const colour = sr.colour || PALETTE[i % PALETTE.length];
        svg.appendChild(s("rect", { x, y: 8, width: 12, height: 3, fill: colour }));
        const label = s("text", { x: x + 16, y: 13, class: "legend", text: sr.name || "" });
        svg.appendChild(label);
        x += 28 + 6.5 * String(sr.name || "").length;
      });
    }
    return svg;
  };

  /** Horizontal bars: items [{label, value, err, colour}]; opts {refs: [{value, label}], width}. */
  SC.barPlot = function (items, opts = {}) {
    const W = opts.width || 460;
    const rowH = 26;
    const m = { l: 110, r: 60, t: 8, b: 26 };
    const H = m.t + m.b + rowH * items.length;
    const values = items.map((it) => it.value).filter((v) => typeof v === "number" && isFinite(v));
    (opts.refs || []).forEach((r) => values.push(r.value));
    const hi = Math.max(...values, 1e-9) * 1.08;
    const X = scale(0, hi, m.l, W - m.r, false);
    const svg = s("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    for (const t of niceTicks(0, hi, 4)) {
      svg.appendChild(s("line", { x1: X(t), x2: X(t), y1: m.t, y2: H - m.b, class: "grid" }));
      svg.appendChild(s("text", { x: X(t), y: H - m.b + 14, "text-anchor": "middle", class: "axes-text", text: SC.fmt(t) }));
    }
    items.forEach((it, i) => {
      const y = m.t + i * rowH;
      svg.appendChild(s("text", { x: m.l - 8, y: y + rowH / 2 + 4, "text-anchor": "end", class: "barlabel", text: it.label }));
      if (typeof it.value !== "number" || !isFinite(it.value)) return;
      svg.appendChild(s("rect", { x: m.l, y: y + 5, width: Math.max(1, X(it.value) - m.l), height: rowH - 10, rx: 3, fill: it.colour || PALETTE[0] }));
      if (typeof it.err === "number" && it.err > 0)
        svg.appendChild(s("line", { x1: X(it.value - it.err), x2: X(it.value + it.err), y1: y + rowH / 2, y2: y + rowH / 2, stroke: "#0f172a" }));
      svg.appendChild(s("text", { x: X(it.value) + 6, y: y + rowH / 2 + 4, class: "barvalue", text: SC.fmt(it.value, 3) }));
    });
    for (const r of opts.refs || []) {
      svg.appendChild(s("line", { x1: X(r.value), x2: X(r.value), y1: m.t, y2: H - m.b, stroke: r.colour || "#0f172a", "stroke-dasharray": "4 3" }));
      svg.appendChild(s("text", { x: X(r.value) + 3, y: H - m.b - 3, class: "ref", text: r.label }));
    }
    return svg;
  };

  /** A heatmap of values in [0, max] (e.g. attention probabilities); rows attend to columns. */
  SC.heatmap = function (matrix, rowLabels, colLabels, opts = {}) {
    const n = matrix.length;
    const cell = opts.cell || Math.max(6, Math.min(14, Math.floor(360 / Math.max(n, 1))));
    const m = { l: opts.labelWidth || 90, t: opts.labelWidth || 90 };
    const W = m.l + cell * (colLabels.length || 1) + 4;
    const H = m.t + cell * n + 4;
    const max = Math.max(1e-9, ...matrix.flat());
    const svg = s("svg", { class: "plot heatmap", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    matrix.forEach((row, i) => {
      svg.appendChild(s("text", { x: m.l - 4, y: m.t + cell * i + cell * 0.75, "text-anchor": "end", class: "tick-label", text: rowLabels[i] }));
      row.forEach((v, j) => {
        if (v <= 0) return;
        svg.appendChild(
          s("rect", { x: m.l + cell * j, y: m.t + cell * i, width: cell, height: cell, fill: "#2563eb", "fill-opacity": (0.08 + 0.92 * (v / max)).toFixed(3) },
            s("title", { text: `${rowLabels[i]} → ${colLabels[j]}: ${SC.fmt(v)}` }))
        );
      });
    });
    colLabels.forEach((label, j) => {
      const x = m.l + cell * j + cell * 0.75;
      svg.appendChild(s("text", { x, y: m.t - 4, transform: `rotate(-90 ${x} ${m.t - 4})`, class: "tick-label", text: label }));
    });
    svg.appendChild(s("rect", { x: m.l, y: m.t, width: cell * colLabels.length, height: cell * n, fill: "none", stroke: "#cbd5e1" }));
    return svg;
  };

  /** Dots of per-prompt values in rows: groups [{label, values, colour}]. */
  SC.stripPlot = function (groups, opts = {}) {
    const W = opts.width || 460;
    const rowH = 26;
    const m = { l: 80, r: 16, t: 6, b: 24 };
    const H = m.t + m.b + rowH * groups.length;
    const all = groups.flatMap((g) => g.values).filter((v) => isFinite(v));
    const [lo, hi] = extent(all.length ? all.concat([0]) : [0, 1], false);
    const X = scale(lo, hi, m.l, W - m.r, false);
    const svg = s("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
    for (const t of niceTicks(lo, hi, 5)) {
      svg.appendChild(s("line", { x1: X(t), x2: X(t), y1: m.t, y2: H - m.b, class: t === 0 ? "axis" : "grid" }));
      svg.appendChild(s("text", { x: X(t), y: H - m.b + 14, "text-anchor": "middle", class: "axes-text", text: SC.fmt(t) }));
    }
    groups.forEach((g, i) => {
      const y = m.t + rowH * i + rowH / 2;
      svg.appendChild(s("text", { x: m.l - 8, y: y + 4, "text-anchor": "end", class: "barlabel", text: g.label }));
      g.values.forEach((v, j) => {
        const jitter = ((j * 7919) % 11) - 5;
        svg.appendChild(s("circle", { cx: X(v), cy: y + jitter * 0.9, r: 3, fill: g.colour, "fill-opacity": 0.65 }, s("title", { text: SC.fmt(v, 4) })));
      });
      if (g.values.length) {
        const mean = g.values.reduce((a, b) => a + b, 0) / g.values.length;
        svg.appendChild(s("line", { x1: X(mean), x2: X(mean), y1: y - 10, y2: y + 10, stroke: "#0f172a", "stroke-width": 2 }));
      }
    });
    return svg;
  };
})((window.SC = window.SC || {}));
