// DOM helpers. Every string from a file or the server becomes a text node or an attribute value:
// nothing here parses HTML, so token text such as "<script>" is shown, never run.
"use strict";
(function (SC) {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function applyAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "style") for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
      else if (key.startsWith("on")) throw new Error("use the 'on' object for event handlers");
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function appendAll(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  /** An HTML element: h("div", {class: "x", text: "..."}, child, "text child", ...). */
  SC.h = function (tag, attrs, ...children) {
    const el = document.createElement(tag);
    applyAttrs(el, attrs);
    appendAll(el, children);
    return el;
  };

  /** An SVG element, same calling convention as SC.h. */
  SC.s = function (tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    applyAttrs(el, attrs);
    appendAll(el, children);
    return el;
  };

  SC.clear = function (el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    return el;
  };

  /** A number for people: 3 significant digits, exponent for very large or small values. */
  SC.fmt = function (x, digits = 3) {
    if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(digits - 1);
    return String(Number(x.toPrecision(digits)));
  };

  SC.signed = (x, digits = 3) => (typeof x === "number" && x > 0 ? "+" : "") + SC.fmt(x, digits);

  /** Visible whitespace for token text: newline ↵, tab ⇥ (spaces stay, the container keeps them). */
  SC.tokenText = (t) => String(t).replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/\r/g, "␍");

  /** Background for a signed value in [-scale, scale]: blue positive, red negative. */
  SC.valueColour = function (v, scale) {
    const a = Math.min(1, Math.abs(v) / (scale || 1));
    const rgb = v >= 0 ? "37, 99, 235" : "220, 38, 38";
    return { bg: `rgba(${rgb}, ${(0.85 * a).toFixed(3)})`, dark: a > 0.55 };
  };

  SC.download = function (name, blob) {
    const url = URL.createObjectURL(blob);
    const a = SC.h("a", { href: url, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  /** The JSON body of a fetch response; a non-2xx answer throws an Error carrying the server's message. */
  async function readJSON(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = { error: response.statusText || "bad response" };
    }
    if (!response.ok) throw new Error((body && body.error) || response.statusText);
    return body;
  }

  /** GET a JSON endpoint; a non-2xx answer throws an Error carrying the server's message. */
  SC.getJSON = async function (url) {
    return readJSON(await fetch(url, { headers: { Accept: "application/json" } }));
  };

  /** POST a JSON body to an endpoint; like getJSON, a non-2xx answer throws the server's message. */
  SC.postJSON = async function (url, body) {
    const headers = { Accept: "application/json", "Content-Type": "application/json" };
    return readJSON(await fetch(url, { method: "POST", headers, body: JSON.stringify(body) }));
  };

  /** A query string; an array value repeats its key (expand=a&expand=b). */
  SC.query = (params) =>
    Object.entries(params)
      .flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v]]))
      .filter(([, v]) => v !== undefined && v !== null && v !== "")
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
      .join("&");
})((window.SC = window.SC || {}));
