"""The explanation as one self-contained HTML page: data and script inline, no CDN, no
network, works from file://.

- Head view (as BertViz draws it): the tokens in two columns, a line from each token to
  each token it attends to, weighted by attention, one colour per head; heads toggled on
  and off; hover a token to see only its lines; the layer chosen by a control.
- Model view: every layer x head as a small map (a perceptual colour scale); a click
  opens that head in the head view.
- Sense view (ours): the word's cosine across contexts per layer, and, given senses, its
  similarity to each sense per layer, as charts with axes, labels and values on hover —
  where in the network the senses separate.
Special tokens and the model's prefix can be hidden (shown by default: attention sinks).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from embedsense.client.types import Explanation, LayerComparison

# One colour per head: 12 distinct hues, readable on white (Tableau's palette, extended).
HEAD_COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                "#ff9da7", "#9c755f", "#7f7f7f", "#1f3b73", "#8cd17d"]  # fmt: skip


def sense_profile(
    comparisons: Mapping[str, Sequence[LayerComparison]],
) -> dict[str, list[float]]:
    """A sense's similarity per layer: the mean, over its examples, of the word's cosine
    between the explained text and the example (CompareLayers' answers)."""
    return {label: np.mean([c.cosines for c in found], axis=0).round(6).tolist()
            for label, found in comparisons.items()}  # fmt: skip


def render(
    explanation: Explanation,
    path: Path | str | None = None,
    contexts: Mapping[str, LayerComparison] | None = None,
    senses: Mapping[str, Sequence[float]] | None = None,
    title: str = "embedsense: attention",
    num_layers: int | None = None,
    num_heads: int | None = None,
) -> str:
    """The page (written to `path` when given). `contexts`: another text -> its
    CompareLayers answer against this one; `senses`: label -> similarity per layer
    (`sense_profile`). num_layers/num_heads: the model's, to say what was left out."""
    e = explanation
    last = len(e.tokens.tokens) - 1
    data = {
        "tokens": e.tokens.tokens,
        # Specials are the template's first and last tokens; the other tokens not from the
        # caller's text are the model's prefix ("query:").
        "kind": [
            "special" if i in (0, last) else ("text" if real else "prefix")
            for i, real in enumerate(e.tokens.from_text)
        ],  # fmt: skip
        "layers": e.layers,
        "heads": e.heads,
        "attentions": np.round(e.attentions, 4).tolist(),
        "target": e.target_tokens,
        "contexts": {text: c.cosines for text, c in (contexts or {}).items()},
        "senses": {label: list(values) for label, values in (senses or {}).items()},
        "omitted": _omitted(e, num_layers, num_heads),
        "colours": HEAD_COLOURS,
    }
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace(
        "__DATA__", json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    )
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


def _omitted(e: Explanation, num_layers: int | None, num_heads: int | None) -> str:
    missing = []
    if num_layers and len(e.layers) < num_layers:
        missing.append(f"{num_layers - len(e.layers)} of {num_layers} layers")
    if num_heads and len(e.heads) < num_heads:
        missing.append(f"{num_heads - len(e.heads)} of {num_heads} heads")
    if not missing:
        return ""
    return (f"Left out: {' and '.join(missing)} (a response holds at most "
            f"{e.max_attention_values:,} attention values). Ask for others with "
            "explain(..., layers=[...], heads=[...]) or --layers / --heads.")  # fmt: skip


_PAGE = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,"Noto Sans CJK SC","Noto Sans CJK JP",sans-serif;margin:1.2em;
     color:#222;max-width:1100px}
h1{font-size:1.25em}h2{font-size:1.05em;margin:1.4em 0 .4em}
.controls{display:flex;flex-wrap:wrap;gap:.4em 1.2em;align-items:center;margin:.4em 0}
.head{display:inline-flex;align-items:center;gap:.2em;font-size:.85em;cursor:pointer}
.swatch{width:.9em;height:.9em;border-radius:2px;display:inline-block}
#headview text{font-size:14px;cursor:pointer}#headview text.target{font-weight:bold}
#lines{pointer-events:none}
#headview text.dim{fill:#aaa}#omitted{color:#8a4b00}
#models{display:grid;gap:3px}#models canvas{cursor:pointer;border:1px solid #ddd;
     image-rendering:pixelated;width:56px;height:56px}#models canvas:hover{outline:2px solid #222}
#models .label{font-size:11px;color:#555;align-self:center}
.chart text{font-size:11px}.chart .title{font-size:13px}#tip{min-height:1.3em;font-size:.9em}
</style></head><body>
<h1>__TITLE__</h1>
<p id="omitted"></p>
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label><input type="checkbox" id="hide-special"> hide special tokens</label>
  <label><input type="checkbox" id="hide-prefix"> hide the model's prefix</label>
  <span id="heads"></span>
</div>
<h2>Head view: who attends to whom (hover a token)</h2>
<svg id="headview" width="520"></svg>
<h2>Model view: every layer and head (click one to open it above)</h2>
<div id="models"></div>
<h2 id="sense-title">Sense view</h2>
<div id="tip"></div>
<div id="senseview"></div>
<script>
"use strict";
const D = __DATA__;
const $ = id => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs, text) => {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
};
const on = new Set(D.heads.map((_, i) => i));  // heads shown in the head view
let focus = null;                                // the hovered token, or null

$("omitted").textContent = D.omitted;
D.layers.forEach((l, i) => $("layer").add(new Option(`layer ${l}`, i)));
$("layer").value = D.layers.length - 1;
D.heads.forEach((h, i) => {
  const label = document.createElement("label");
  label.className = "head";
  label.innerHTML = `<input type="checkbox" checked data-head="${i}">` +
    `<span class="swatch" style="background:${D.colours[i % D.colours.length]}"></span>${h}`;
  $("heads").append(label);
});
$("heads").addEventListener("change", e => {
  const i = +e.target.dataset.head;
  e.target.checked ? on.add(i) : on.delete(i);
  drawLines();
});
function shown() {
  return D.tokens.map((_, i) => i).filter(i =>
    !(D.kind[i] === "special" && $("hide-special").checked) &&
    !(D.kind[i] === "prefix" && $("hide-prefix").checked));
}
const ROW = 22, rowY = n => 20 + n * ROW;
// The tokens are drawn once per layout; hovering redraws only the lines, so the token under
// the pointer stays the same element.
function drawHeads() {
  const view = $("headview"), keep = shown();
  view.replaceChildren(svg("g", {id: "lines"}));
  view.setAttribute("height", keep.length * ROW + 20);
  keep.forEach((i, a) => {
    const cls = (D.target.includes(i) ? "target " : "") + (D.kind[i] === "text" ? "" : "dim");
    for (const [x, anchor, side] of [[140, "end", "left"], [380, "start", "right"]]) {
      const t = svg("text", {x, y: rowY(a), "text-anchor": anchor, class: cls,
                             "data-token": i, "data-side": side}, D.tokens[i]);
      if (side === "left") {
        t.addEventListener("mouseenter", () => { focus = i; drawLines(); });
        t.addEventListener("mouseleave", () => { focus = null; drawLines(); });
      }
      view.append(t);
    }
  });
  drawLines();
}
function drawLines() {
  const keep = shown(), layer = +$("layer").value, lines = $("lines");
  lines.replaceChildren();
  keep.forEach((i, a) => keep.forEach((j, b) => {
    if (focus !== null && i !== focus) return;
    for (const h of on) {
      const w = D.attentions[layer][h][i][j];
      if (w < 0.01) continue;
      lines.append(svg("line", {x1: 150, y1: rowY(a) - 5, x2: 370, y2: rowY(b) - 5,
        stroke: D.colours[h % D.colours.length], "stroke-width": 0.5 + 4 * w,
        "stroke-opacity": Math.min(1, 0.15 + w), "data-from": i, "data-to": j,
        "data-head": D.heads[h], "data-weight": w.toFixed(4)}));
    }
  }));
}
// The model view's colour scale: viridis (perceptually even, readable in grey too).
const VIRIDIS = [[68,1,84],[72,40,120],[62,74,137],[49,104,142],[38,130,142],[31,158,137],
                 [53,183,121],[109,205,89],[180,222,44],[253,231,37]];
function viridis(w) {
  const x = Math.min(1, Math.max(0, Math.sqrt(w))) * (VIRIDIS.length - 1);
  const lo = Math.floor(x), hi = Math.min(lo + 1, VIRIDIS.length - 1), f = x - lo;
  return VIRIDIS[lo].map((c, k) => Math.round(c + f * (VIRIDIS[hi][k] - c)));
}
function drawModels() {
  const grid = $("models"), keep = shown();
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `5em repeat(${D.heads.length}, 58px)`;
  grid.append(document.createElement("span"));
  D.heads.forEach(h => { const s = document.createElement("span"); s.className = "label";
                         s.textContent = `head ${h}`; grid.append(s); });
  D.layers.forEach((l, li) => {
    const name = document.createElement("span");
    name.className = "label"; name.textContent = `layer ${l}`; grid.append(name);
    D.heads.forEach((h, hi) => {
      const c = document.createElement("canvas"), n = keep.length;
      c.width = c.height = n; c.dataset.layer = li; c.dataset.head = hi;
      c.title = `layer ${l}, head ${h}`;
      const ctx = c.getContext("2d"), img = ctx.createImageData(n, n);
      keep.forEach((i, a) => keep.forEach((j, b) => {
        const [r, g, bl] = viridis(D.attentions[li][hi][i][j]), p = 4 * (a * n + b);
        img.data.set([r, g, bl, 255], p);
      }));
      ctx.putImageData(img, 0, 0);
      c.addEventListener("click", () => openHead(li, hi));
      grid.append(c);
    });
  });
}
function openHead(li, hi) {
  $("layer").value = li;
  on.clear(); on.add(hi);
  document.querySelectorAll("#heads input").forEach(b => { b.checked = +b.dataset.head === hi; });
  drawHeads();
  $("headview").scrollIntoView();
}
function chart(title, series, yLabel) {
  const w = 720, h = 280, m = {l: 64, r: 170, t: 30, b: 40};
  const n = Math.max(...Object.values(series).map(s => s.length));
  const all = Object.values(series).flat();
  // The axis spans the values (to the next 0.05), not 0-1: differences of a few hundredths
  // are the story in these curves.
  const lo = Math.floor(Math.min(...all) * 20 - 0.5) / 20;
  const hi = Math.min(1, Math.ceil(Math.max(...all) * 20 + 0.5) / 20);
  const x = i => m.l + i * (w - m.l - m.r) / (n - 1);
  const y = v => h - m.b - (v - lo) / (hi - lo) * (h - m.t - m.b);
  const s = svg("svg", {width: w, height: h, class: "chart"});
  s.append(svg("text", {x: m.l, y: 16, class: "title"}, title));
  s.append(svg("line", {x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b, stroke: "#444"}));
  s.append(svg("line", {x1: m.l, y1: m.t, x2: m.l, y2: h - m.b, stroke: "#444"}));
  for (let i = 0; i < n; i++) {
    s.append(svg("text", {x: x(i), y: h - m.b + 14, "text-anchor": "middle"}, i));
  }
  s.append(svg("text", {x: (m.l + w - m.r) / 2, y: h - 6, "text-anchor": "middle"},
               "hidden state (0 = embeddings, then layer by layer)"));
  for (let k = 0; k <= 4; k++) {
    const v = lo + k * (hi - lo) / 4;
    s.append(svg("text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(3)));
    s.append(svg("line", {x1: m.l, y1: y(v), x2: w - m.r, y2: y(v), stroke: "#eee"}));
  }
  s.append(svg("text", {x: 14, y: (m.t + h - m.b) / 2, "text-anchor": "middle",
                        transform: `rotate(-90 14 ${(m.t + h - m.b) / 2})`}, yLabel));
  Object.entries(series).forEach(([name, values], k) => {
    const colour = D.colours[k % D.colours.length];
    s.append(svg("polyline", {fill: "none", stroke: colour, "stroke-width": 2,
      points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ")}));
    values.forEach((v, i) => {
      const dot = svg("circle", {cx: x(i), cy: y(v), r: 4, fill: colour, "data-series": name,
                                 "data-layer": i, "data-value": v});
      dot.addEventListener("mouseenter", () => {
        $("tip").textContent = `${name}: hidden state ${i}, ${v.toFixed(4)}`; });
      s.append(dot);
    });
    s.append(svg("text", {x: w - m.r + 8, y: m.t + 14 * k + 10, fill: colour},
                 name.length > 18 ? name.slice(0, 18) + "…" : name));
  });
  return s;
}
function drawSenses() {
  const view = $("senseview"), word = D.target.map(i => D.tokens[i]).join("");
  const has = Object.keys(D.contexts).length || Object.keys(D.senses).length;
  $("sense-title").hidden = !has;
  if (Object.keys(D.contexts).length) {
    view.append(chart(`cosine of ${word} here and in each other context`, D.contexts, "cosine"));
  }
  if (Object.keys(D.senses).length) {
    view.append(chart(`similarity of ${word} to each sense, per layer`, D.senses,
                      "mean cosine to its examples"));
  }
}
$("layer").onchange = drawLines;
$("hide-special").onchange = $("hide-prefix").onchange = () => { drawHeads(); drawModels(); };
drawHeads(); drawModels(); drawSenses();
</script></body></html>
"""
