"use strict";
// The explanation page's script. `D` (defined just above, by page.py) is the data;
// payload.py says what each field holds. Every piece of user text reaches the page through
// textContent or setAttribute, never as HTML.

// ------------------------------------------------------------------ words (zh / en)
const STRINGS = {
  en: {
    layer: "layer", all: "all heads", none: "no heads", only: "only head",
    hideSpecial: "hide special tokens", hidePrefix: "hide the model's prefix",
    rescale: "rescale without hidden tokens", unpin: "unpin",
    precision: "Attention weights are stored to 4 decimal places (quantized to steps of " +
      "0.0001); cosines to 4 significant digits.",
    strip: w => `What ${w} attends to, layer by layer`,
    howStrip: "Each row is a layer; each cell, how much the word attends to that token " +
      "(mean over the heads shown). Brighter is more. Click a row to open that layer below.",
    headTitle: "Head view: who attends to whom",
    howHead: "Left: each token; right: the tokens it attends to. One colour per head; a " +
      "line's opacity is its weight divided by the number of heads shown, so stacked heads " +
      "add up honestly, and the strongest head is drawn on top. hover a token (either " +
      "column) to see only its lines; click to pin it (Esc unpins). The boxes beside the " +
      "tokens are each head's weight; hover one for the number.",
    contrast: (w, l, h) => `Contrast: what ${w} attends to here and in the other texts ` +
      `(layer ${l}, ${h})`,
    howContrast: "The same word in each text, at the same layer and heads: each token is " +
      "shaded by the word's attention to it. Click a point of the sense chart to move " +
      "this view and the head view to that layer.",
    neuronTitle: (w, l, h) => `Neuron view: how ${w} scores each token (layer ${l}, head ${h})`,
    howNeuron: "The word's query vector is multiplied with each token's key vector (q·k); " +
      "the product is divided by √d (d = the head's size, so scores do not grow with it); " +
      "the softmax turns the scaled scores into weights that sum to 1: the head's attention.",
    neuronHere: "This is the head open in the head view.",
    neuronAmong: h => `The head view shows this layer's heads together; head ${h} is one of ` +
      "them.",
    neuronElsewhere: (l, h) => `Computed for layer ${l}, head ${h} only; the head view shows ` +
      "another. Ask for another head with explain(..., neuron=(layer, head)) or --layer/--head.",
    neuronOpen: "open this head", neuronQuery: w => `query: ${w}`,
    neuronCols: ["key", "q·k", "q·k / √d", "softmax"],
    senseTitle: "Sense view: where in the network the uses separate",
    howSense: "Hidden state k is the word's vector after layer k (0: the embeddings, before " +
      "any context). Lower cosine: the contexts have pulled the two uses apart. The dashed " +
      "line marks where they separate most; click a point to choose that layer above.",
    contexts: w => `cosine of ${w} here and in each other text`,
    sensesChart: w => `similarity of ${w} to each sense`,
    hidden: "hidden state (0 = embeddings, then layer by layer)",
    cosine: "cosine", meanCosine: "mean cosine to its examples",
    separate: "separate most", pointTip: (s, k, v) => `${s}: hidden state ${k}, ${v}`,
    notHeld: (l, held, n) => `Layer ${l} is not on this page (it holds ` +
      `${n > 1 ? "layers" : "layer"} ${held}): ask for it with --layers ${l} or ` +
      `explain(..., layers=[${l}]).`,
    modelTitle: "Model view: every layer and head",
    howModel: "Each square is one head's map: row = a token, column = what it attends to. " +
      "Hover for the tokens and the weight; click (or Enter) to open that head above. " +
      "The open head has a red frame.",
    legend: "weight (colour = √weight, viridis)", legendMid: "(the bar's middle: 0.25)",
    shrunk: n => `${n} tokens shrunk to 56 px: each pixel shows the maximum of its block, ` +
      "so no attended token disappears.",
    modelTip: (l, h, a, b, w, block) => `layer ${l}, head ${h}: ${a} → ${b} ` +
      `${w.toFixed(4)}${block ? " (max of the block)" : ""}`,
    boxTip: (h, a, b, w) => `head ${h}: ${a} → ${b} ${w.toFixed(4)}`,
    meanHeads: n => `mean of ${n} heads`, oneHead: h => `head ${h}`,
    leftOut: (what) => `Left out: ${what}. Ask for others with explain(..., layers=[...], ` +
      "heads=[...]) or --layers / --heads.",
    ofLayers: (n, of) => `${n} of ${of} layers`, ofHeads: (n, of) => `${n} of ${of} heads`,
    and: " and ",
    fitted: (t, b) => `${t} tokens are explained and a response holds at most ` +
      `${b.toLocaleString("en")} attention values, so these layers and heads were chosen ` +
      "to fit.",
    truncated: (t, n) => `Truncated: the text is ${(t + n).toLocaleString("en")} tokens, ` +
      `and this page explains its first ${t}; the last ${n.toLocaleString("en")} are left out.`,
    long: "A long text: hover or pin a token to draw its lines.",
    termsTitle: "Terms",
    terms: [
      ["hidden state", "The vector the model holds for a token after a layer; hidden " +
        "state 0 is the embedding, before any context is mixed in."],
      ["attention", "How much a token, in one head of one layer, draws on each token; a " +
        "row sums to 1."],
      ["cosine", "How alike two vectors point: 1 = the same direction, 0 = unrelated."],
      ["query: prefix", "The model (e5) reads every text after the prefix \"query: \"; " +
        "its tokens are shown dimmed and can be hidden."],
      ["▁", "The tokenizer's mark for a word start. The page draws tokens as you typed " +
        "them, so it does not show it."],
      ["position", "The same token at the same position starts at cosine 1.0 in two " +
        "texts: the embedding is the same; only the context moves it."],
    ],
    switchTo: "中文",
  },
  zh: {
    layer: "层", all: "全部头", none: "不选头", only: "只看头",
    hideSpecial: "隐藏特殊符号", hidePrefix: "隐藏模型前缀", rescale: "隐藏后重新归一化",
    unpin: "取消固定",
    precision: "注意力权重保留 4 位小数（量化步长 0.0001）；余弦值保留 4 位有效数字。",
    strip: w => `「${w}」在每一层关注什么`,
    howStrip: "每一行是一层；每一格是这个词对该词元的注意力（所显示各头的平均），越亮越多。" +
      "点击一行，在下方打开这一层。",
    headTitle: "注意力头视图：谁关注谁",
    howHead: "左边是每个词元，右边是它关注的词元。每个头一种颜色；线的不透明度 = 权重 ÷ " +
      "显示的头数，多个头叠加仍然如实，最强的头画在最上面。把鼠标悬停在任一列的词元上" +
      "（hover）只看它的线；点击固定（Esc 取消）。词元旁的小方块是各头的权重，悬停可见数值。",
    contrast: (w, l, h) => `对照：「${w}」在本句和其他句子中关注什么（第 ${l} 层，${h}）`,
    howContrast: "同一个词在每个句子里、同一层同一组头：每个词元的底色深浅表示这个词对它的注意力。" +
      "点击词义图上的一个点，这里和注意力头视图都会跳到那一层。",
    neuronTitle: (w, l, h) => `神经元视图：「${w}」给每个词元打多少分（第 ${l} 层，头 ${h}）`,
    howNeuron: "这个词的查询向量（query）与每个词元的键向量（key）相乘得到 q·k；" +
      "再除以 √d（d 是这个头的维数，免得分数随维数变大）；softmax 把缩放后的分数变成和为 1 " +
      "的权重，这就是这个头的注意力。",
    neuronHere: "这正是注意力头视图里打开的头。",
    neuronAmong: h => `注意力头视图现在同时显示这一层的多个头，头 ${h} 是其中之一。`,
    neuronElsewhere: (l, h) => `只为第 ${l} 层、头 ${h} 计算；注意力头视图现在显示的是别的头。` +
      "可用 explain(..., neuron=(layer, head)) 或 --layer/--head 请求其他头。",
    neuronOpen: "打开这个头", neuronQuery: w => `查询：${w}`,
    neuronCols: ["键 (key)", "q·k", "q·k / √d", "softmax"],
    senseTitle: "词义视图：在网络的哪一层，两种用法分开",
    howSense: "隐藏状态 k 是这个词经过第 k 层后的向量（0 是词嵌入，还没有混入上下文）。" +
      "余弦越低，上下文把两种用法拉得越开。虚线标出分开最多的一层；点击一个点选择那一层。",
    contexts: w => `「${w}」在本句与其他句子中的余弦`,
    sensesChart: w => `「${w}」与每个词义的相似度`,
    hidden: "隐藏状态（0 = 词嵌入，之后逐层）",
    cosine: "余弦", meanCosine: "与例句的平均余弦",
    separate: "分开最多", pointTip: (s, k, v) => `${s}：隐藏状态 ${k}，${v}`,
    notHeld: (l, held) => `本页没有第 ${l} 层（只有第 ${held} 层）：可用 --layers ${l} 或 ` +
      `explain(..., layers=[${l}]) 请求。`,
    modelTitle: "模型视图：每一层的每一个头",
    howModel: "每个小方块是一个头的注意力图：行是词元，列是它关注的词元。悬停查看词元和权重；" +
      "点击（或按 Enter）在上方打开这个头。打开的头有红框。",
    legend: "权重（颜色 = √权重，viridis 色标）", legendMid: "（色标中点 = 0.25）",
    shrunk: n => `${n} 个词元缩成 56 像素：每个像素显示它所覆盖区块的最大值，被关注的词元不会消失。`,
    modelTip: (l, h, a, b, w, block) => `第 ${l} 层，头 ${h}：${a} → ${b} ` +
      `${w.toFixed(4)}${block ? "（区块最大值）" : ""}`,
    boxTip: (h, a, b, w) => `头 ${h}：${a} → ${b} ${w.toFixed(4)}`,
    meanHeads: n => `${n} 个头的平均`, oneHead: h => `头 ${h}`,
    leftOut: what => `未包含：${what}。可用 explain(..., layers=[...], heads=[...]) 或 ` +
      "--layers / --heads 请求其他部分。",
    ofLayers: (n, of) => `${of} 层中的 ${n} 层`, ofHeads: (n, of) => `${of} 个头中的 ${n} 个`,
    and: "，",
    fitted: (t, b) => `这里解释 ${t} 个词元，一次回应最多包含 ${b.toLocaleString("en")} 个` +
      "注意力值，所以页面选了能放下的层和头。",
    truncated: (t, n) => `已截断：这段文字共有 ${(t + n).toLocaleString("en")} 个词元，` +
      `本页只解释前 ${t} 个，后面 ${n.toLocaleString("en")} 个没有包含。`,
    long: "文字较长：悬停或固定一个词元来画出它的线。",
    termsTitle: "术语",
    terms: [
      ["隐藏状态 (hidden state)", "模型在某一层之后为一个词元保存的向量；隐藏状态 0 是词嵌入，" +
        "还没有混入上下文。"],
      ["注意力 (attention)", "某一层的某个头里，一个词元从各个词元取多少信息；每行之和为 1。"],
      ["余弦 (cosine)", "两个向量方向有多接近：1 = 方向相同，0 = 无关。"],
      ["query: 前缀", "模型（e5）读每段文字时前面都加了 \"query: \"；它的词元显示为灰色，可以隐藏。"],
      ["▁", "分词器标记词开头的符号。页面按你输入的样子显示词元，所以不显示它。"],
      ["位置", "同一个词元在同一个位置，在两个句子里的余弦从 1.0 开始：词嵌入相同，只有上下文" +
        "让它变化。"],
    ],
    switchTo: "English",
  },
};
let lang = STRINGS[D.lang] ? D.lang : "en";
const t = (key, ...args) => {
  const s = STRINGS[lang][key];
  return typeof s === "function" ? s(...args) : s;
};

// ------------------------------------------------------------------ data
const $ = id => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs, text) => {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
};
const html = (tag, attrs = {}, text) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
};
// Little-endian uint16 in base64 -> weights (payload.quantize).
function decode(b64) {
  const bin = atob(b64), out = new Float32Array(bin.length / 2);
  for (let k = 0; k < out.length; k++) {
    out[k] = (bin.charCodeAt(2 * k) | (bin.charCodeAt(2 * k + 1) << 8)) / D.scale;
  }
  return out;
}
const A = decode(D.attentions), T = D.tokens.length, H = D.heads.length, L = D.layers.length;
const raw = (l, h, i, j) => A[((l * H + h) * T + i) * T + j];
const word = D.target.map(i => D.tokens[i]).join("");
const colour = h => D.colours[h % D.colours.length];
// A label cut to n graphemes, keeping its end too: two texts that begin alike stay apart,
// and an emoji is never split.
const graphemes = s => (Intl.Segmenter
  ? [...new Intl.Segmenter().segment(s)].map(x => x.segment) : Array.from(s));
function cut(s, n = 26) {
  const g = graphemes(s);
  return g.length <= n ? s : g.slice(0, n - 11).join("") + "…" + g.slice(-10).join("");
}

// ------------------------------------------------------------------ state
const S = {
  layer: D.open.layer,
  on: new Set(D.open.head === null ? D.heads.map((_, i) => i) : [D.open.head]),
  pinned: D.target.length ? [...D.target] : null,  // tokens whose lines stay drawn
  hover: null,                                      // {side, token} under the pointer
  openHead: D.open.head,                            // the model view's marked head
};
const shown = () => D.tokens.map((_, i) => i).filter(i =>
  !(D.kind[i] === "special" && $("hide-special").checked) &&
  !(D.kind[i] === "prefix" && $("hide-prefix").checked));
// Weights as drawn: with "rescale", each row renormalized over the tokens shown.
let norm = null;
function renormalize() {
  const keep = shown(), hidden = keep.length < T && $("rescale").checked;
  norm = new Float32Array(L * H * T).fill(1);
  if (!hidden) return;
  for (let r = 0; r < L * H * T; r++) {
    let sum = 0;
    for (const j of keep) sum += A[r * T + j];
    norm[r] = sum > 0 ? 1 / sum : 0;
  }
}
const weight = (l, h, i, j) => raw(l, h, i, j) * norm[(l * H + h) * T + i];

// ------------------------------------------------------------------ static text
function applyLanguage() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-i18n]").forEach(el => { el.textContent = t(el.dataset.i18n); });
  $("lang").textContent = t("switchTo");
  const o = D.omitted, parts = [];
  if (o.layers[0] < o.layers[1]) parts.push(t("ofLayers", o.layers[1] - o.layers[0], o.layers[1]));
  if (o.heads[0] < o.heads[1]) parts.push(t("ofHeads", o.heads[1] - o.heads[0], o.heads[1]));
  $("omitted").textContent = (D.truncated ? t("truncated", T, D.truncated) + " " : "") +
    (D.fitted ? t("fitted", o.tokens, o.bound) + " " : "") +
    (parts.length ? t("leftOut", parts.join(t("and"))) : "");
  const layerBox = $("layer");
  layerBox.replaceChildren(...D.layers.map((l, i) => new Option(`${t("layer")} ${l}`, i)));
  layerBox.value = S.layer;
  $("only").replaceChildren(new Option("—", ""), ...D.heads.map((h, i) => new Option(h, i)));
  $("only").value = S.on.size === 1 ? [...S.on][0] : "";
  $("terms").replaceChildren(...t("terms").flatMap(([term, say]) =>
    [html("dt", {}, term), html("dd", {}, say)]));
  $("strip-title").textContent = t("strip", word);
}
function drawHeadBoxes() {
  $("heads").replaceChildren(...D.heads.map((h, i) => {
    const label = html("label", {class: "head"});
    const box = html("input", {type: "checkbox", "data-head": i});
    box.checked = S.on.has(i);
    label.append(box, html("span", {class: "swatch", style: `background:${colour(i)}`}),
                 document.createTextNode(h));
    return label;
  }));
}
function setHeads(heads) {
  S.on = new Set(heads);
  S.openHead = S.on.size === 1 ? [...S.on][0] : null;
  drawHeadBoxes();
  $("only").value = S.on.size === 1 ? [...S.on][0] : "";
  redraw();
}
function setLayer(li) {
  S.layer = li;
  $("layer").value = li;
  redraw();
}

// ------------------------------------------------------------------ word strip
function drawStrip() {
  const from = S.pinned || D.target;
  $("strip-section").hidden = !from.length;
  if (!from.length) return;
  $("strip-title").textContent = t("strip", from.map(i => D.tokens[i]).join(""));
  const keep = shown(), table = $("strip"), heads = [...S.on];
  const head = html("tr");
  head.append(html("th"), ...keep.map(j => html("th", {}, D.tokens[j])));
  const rows = D.layers.map((l, li) => {
    const tr = html("tr", {class: li === S.layer ? "now" : ""});
    const name = html("th", {tabindex: 0}, `${t("layer")} ${l}`);
    name.addEventListener("keydown", e => { if (e.key === "Enter") setLayer(li); });
    tr.append(name);
    for (const j of keep) {
      let sum = 0;
      for (const h of heads) for (const i of from) sum += weight(li, h, i, j);
      const v = heads.length ? sum / (heads.length * from.length) : 0;
      const [r, g, b] = viridis(v);
      tr.append(html("td", {"data-layer": li, "data-token": j, "data-value": v.toFixed(5),
        title: `${D.tokens[j]} ${v.toFixed(4)}`, style: `background:rgb(${r},${g},${b})`}));
    }
    tr.addEventListener("click", () => setLayer(li));
    return tr;
  });
  table.replaceChildren(head, ...rows);
}

// ------------------------------------------------------------------ head view
const ROW = 22, BOX = 6, LONG = 60;
const geometry = () => {
  const boxes = H * BOX, textW = 130;
  const leftText = boxes + textW, x1 = leftText + 10, x2 = x1 + 200;
  return {boxes, leftText, x1, x2, rightBoxes: x2 + 8, rightText: x2 + 14 + boxes,
          width: x2 + 14 + boxes + textW};
};
const rowY = n => 20 + n * ROW;
function focusTokens() {
  if (S.hover) return S.hover;
  if (S.pinned) return {side: "left", tokens: S.pinned};
  return null;
}
// The token texts are drawn once per layout; hovering redraws only the lines and boxes, so
// the token under the pointer stays the same element.
function drawHeads() {
  const view = $("headview"), keep = shown(), g = geometry();
  view.replaceChildren(svg("g", {id: "boxes"}), svg("g", {id: "lines"}));
  const height = keep.length * ROW + 20;
  view.setAttribute("viewBox", `0 0 ${g.width} ${height}`);
  view.setAttribute("width", g.width);
  keep.forEach((i, a) => {
    for (const [x, anchor, side] of [[g.leftText, "end", "left"],
                                     [g.rightText, "start", "right"]]) {
      const cls = [D.target.includes(i) ? "target" : "", D.kind[i] === "text" ? "" : "dim"];
      const el = svg("text", {x, y: rowY(a), "text-anchor": anchor, class: cls.join(" "),
                              tabindex: 0, "data-token": i, "data-side": side}, D.tokens[i]);
      const enter = () => { S.hover = {side, tokens: [i]}; drawLines(); };
      const leave = () => { S.hover = null; drawLines(); };
      el.addEventListener("mouseenter", enter);
      el.addEventListener("mouseleave", leave);
      el.addEventListener("focus", enter);
      el.addEventListener("blur", leave);
      el.addEventListener("click", () => pin(i));
      el.addEventListener("keydown", e => {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pin(i); }
      });
      view.append(el);
    }
  });
  drawLines();
}
function pin(i) {
  S.pinned = S.pinned && S.pinned.length === 1 && S.pinned[0] === i ? null : [i];
  S.hover = null;
  drawLines();
  drawStrip();
}
function drawLines() {
  const keep = shown(), li = S.layer, g = geometry(), focus = focusTokens();
  const at = new Map(keep.map((i, a) => [i, a]));
  const lines = $("lines"), boxes = $("boxes");
  lines.replaceChildren(); boxes.replaceChildren();
  document.querySelectorAll("#headview text").forEach(el => {
    el.classList.toggle("pinned", !!S.pinned && S.pinned.includes(+el.dataset.token) &&
                        el.dataset.side === "left");
  });
  $("head-tip").textContent = "";
  // Every pair of a long text is tens of thousands of lines: too slow to hover, too dense
  // to read. Past LONG tokens, lines are drawn for a hovered or pinned token only.
  if (!focus && keep.length > LONG) { $("head-tip").textContent = t("long"); return; }
  const froms = focus && focus.side === "left" ? focus.tokens : keep;
  const tos = focus && focus.side === "right" ? focus.tokens : keep;
  const items = [];
  for (const i of froms) for (const j of tos) for (const h of S.on) {
    const w = weight(li, h, i, j);
    if (w >= 0.01) items.push([w, i, j, h]);
  }
  // Weakest first, so the strongest head of each pair is drawn last, on top: the colour
  // the eye sees is the head that attends most.
  items.sort((p, q) => p[0] - q[0]);
  const n = S.on.size;
  for (const [w, i, j, h] of items) {
    lines.append(svg("line", {x1: g.x1, y1: rowY(at.get(i)) - 5, x2: g.x2,
      y2: rowY(at.get(j)) - 5, stroke: colour(h), "stroke-width": 2.5,
      "stroke-opacity": (w / n).toFixed(5), "data-from": i, "data-to": j,
      "data-head": D.heads[h], "data-weight": w.toFixed(4)}));
  }
  if (focus) drawBoxes(focus, keep, at, g);
}
// Per-head weight boxes beside the other column: one small square per head shown, its
// opacity the weight (mean over the focused tokens); hover one for the number.
function drawBoxes(focus, keep, at, g) {
  const boxes = $("boxes"), heads = [...S.on].sort((a, b) => a - b), li = S.layer;
  const others = keep, right = focus.side === "left";
  for (const o of others) {
    heads.forEach((h, k) => {
      let sum = 0;
      for (const f of focus.tokens) sum += right ? weight(li, h, f, o) : weight(li, h, o, f);
      const w = sum / focus.tokens.length;
      const x = (right ? g.rightBoxes : g.leftText - 6 - g.boxes - 4) + k * BOX;
      const a = right ? focus.tokens.map(f => D.tokens[f]).join("") : D.tokens[o];
      const b = right ? D.tokens[o] : focus.tokens.map(f => D.tokens[f]).join("");
      const rect = svg("rect", {x, y: rowY(at.get(o)) - 13, width: BOX - 1, height: 12,
        fill: colour(h), "fill-opacity": Math.max(0.04, w).toFixed(3), "data-head": D.heads[h],
        "data-token": o, "data-weight": w.toFixed(4)});
      rect.append(svg("title", {}, t("boxTip", D.heads[h], a, b, w)));
      rect.addEventListener("mouseenter", () => {
        $("head-tip").textContent = t("boxTip", D.heads[h], a, b, w); });
      boxes.append(rect);
    });
  }
}

// ------------------------------------------------------------------ model view
// viridis (perceptually even, readable in grey too), on the square root of the weight so
// that small weights are still told apart.
const VIRIDIS = [[68,1,84],[72,40,120],[62,74,137],[49,104,142],[38,130,142],[31,158,137],
                 [53,183,121],[109,205,89],[180,222,44],[253,231,37]];
function viridis(w) {
  const x = Math.min(1, Math.max(0, Math.sqrt(w))) * (VIRIDIS.length - 1);
  const lo = Math.floor(x), hi = Math.min(lo + 1, VIRIDIS.length - 1), f = x - lo;
  return VIRIDIS[lo].map((c, k) => Math.round(c + f * (VIRIDIS[hi][k] - c)));
}
const THUMB = 56;
// Token ranges of each pixel: a map of n tokens shrinks to THUMB pixels, each pixel the
// maximum of its block, so a column of attention never falls between two pixels.
const blocks = n => {
  const size = Math.min(n, THUMB);
  return Array.from({length: size}, (_, p) =>
    [Math.floor(p * n / size), Math.max(Math.floor(p * n / size) + 1, Math.floor((p + 1) * n / size))]);
};
function drawModels() {
  const grid = $("models"), keep = shown(), cells = blocks(keep.length);
  grid.replaceChildren();
  grid.style.gridTemplateColumns = `5em repeat(${H}, ${THUMB + 2}px)`;
  grid.append(html("span"));
  D.heads.forEach(h => grid.append(html("span", {class: "label"}, `${t("oneHead", h)}`)));
  D.layers.forEach((l, li) => {
    grid.append(html("span", {class: "label"}, `${t("layer")} ${l}`));
    D.heads.forEach((h, hi) => {
      const size = cells.length;
      const c = html("canvas", {width: size, height: size, tabindex: 0, "data-layer": li,
                                "data-head": hi, title: `${t("layer")} ${l}, ${t("oneHead", h)}`});
      const ctx = c.getContext("2d"), img = ctx.createImageData(size, size);
      cells.forEach(([r0, r1], a) => cells.forEach(([c0, c1], b) => {
        let w = 0;
        for (let r = r0; r < r1; r++) for (let q = c0; q < c1; q++) {
          w = Math.max(w, weight(li, hi, keep[r], keep[q]));
        }
        img.data.set([...viridis(w), 255], 4 * (a * size + b));
      }));
      ctx.putImageData(img, 0, 0);
      c.addEventListener("click", () => openHead(li, hi));
      c.addEventListener("keydown", e => { if (e.key === "Enter") openHead(li, hi); });
      c.addEventListener("mousemove", e => {
        const box = c.getBoundingClientRect();
        const a = Math.min(size - 1, Math.floor((e.clientY - box.top) / box.height * size));
        const b = Math.min(size - 1, Math.floor((e.clientX - box.left) / box.width * size));
        let best = [0, keep[cells[a][0]], keep[cells[b][0]]];
        for (let r = cells[a][0]; r < cells[a][1]; r++) for (let q = cells[b][0]; q < cells[b][1]; q++) {
          const w = weight(li, hi, keep[r], keep[q]);
          if (w > best[0]) best = [w, keep[r], keep[q]];
        }
        const isBlock = cells[a][1] - cells[a][0] > 1 || cells[b][1] - cells[b][0] > 1;
        $("model-tip").textContent = t("modelTip", l, h, D.tokens[best[1]], D.tokens[best[2]],
                                       best[0], isBlock);
      });
      if (li === S.layer && hi === S.openHead) c.classList.add("open");
      grid.append(c);
    });
  });
  drawModelLegend(keep.length);
}
function drawModelLegend(n) {
  const bar = html("canvas", {width: 100, height: 1});
  const ctx = bar.getContext("2d"), img = ctx.createImageData(100, 1);
  for (let x = 0; x < 100; x++) img.data.set([...viridis((x / 99) ** 2), 255], 4 * x);
  ctx.putImageData(img, 0, 0);
  const parts = [html("span", {}, t("legend")), html("span", {}, "0"), bar,
                 html("span", {}, "1"), html("span", {}, t("legendMid"))];
  if (n > THUMB) parts.push(html("span", {}, t("shrunk", n)));
  $("model-legend").replaceChildren(...parts);
}
function openHead(li, hi) {
  S.layer = li;
  $("layer").value = li;
  setHeads([hi]);
  $("head-section").scrollIntoView({block: "start"});
}

// ------------------------------------------------------------------ neuron view
// One head's scores for the word, step by step: q·k, q·k/√d, softmax (payload.neuron_payload).
function bar(value, scale, cls) {
  const cell = html("td", {class: "num", "data-value": value.toFixed(6)});
  const width = scale > 0 ? Math.min(100, 100 * Math.abs(value) / scale) : 0;
  cell.append(html("span", {class: `bar ${cls}${value < 0 ? " neg" : ""}`,
    style: `width:${width.toFixed(1)}%`}), html("span", {class: "val"}, value.toFixed(4)));
  return cell;
}
function neuronBlock(row) {
  const N = D.neuron, root = Math.sqrt(N.d);
  const scaled = row.dots.map(v => v / root), top = Math.max(...scaled);
  const exps = scaled.map(v => Math.exp(v - top)), sum = exps.reduce((a, b) => a + b, 0);
  const soft = exps.map(v => v / sum);
  const most = (xs) => Math.max(...xs.map(Math.abs));
  const table = html("table", {class: "neuron", "data-query": row.token});
  table.append(html("caption", {}, t("neuronQuery", D.tokens[row.token])));
  const head = html("tr");
  head.append(...t("neuronCols").map(c => html("th", {}, c)));
  table.append(head);
  row.dots.forEach((dot, j) => {
    const tr = html("tr", {"data-token": j, class: D.kind[j] === "text" ? "" : "dim"});
    tr.append(html("th", {}, D.tokens[j]), bar(dot, most(row.dots), "dot"),
              bar(scaled[j], most(scaled), "dot"), bar(soft[j], 1, "soft"));
    tr.lastChild.classList.add("softmax");
    table.append(tr);
  });
  return table;
}
function drawNeuron() {
  const N = D.neuron;
  $("neuron-section").hidden = !N;
  if (!N) return;
  const who = N.rows.map(r => D.tokens[r.token]).join("");
  $("neuron-title").textContent = t("neuronTitle", who, N.layer, N.head);
  const heads = [...S.on], li = D.layers.indexOf(N.layer), hi = D.heads.indexOf(N.head);
  const here = li === S.layer && heads.length === 1 && heads[0] === hi;
  const among = !here && li === S.layer && heads.includes(hi);  // shown, with other heads
  const which = $("neuron-which");
  which.replaceChildren(document.createTextNode(here ? t("neuronHere")
    : among ? t("neuronAmong", N.head) : t("neuronElsewhere", N.layer, N.head)));
  which.dataset.here = among ? "among" : here;
  if (!here && li >= 0 && hi >= 0) {
    const go = html("button", {type: "button", id: "neuron-open"}, t("neuronOpen"));
    go.addEventListener("click", () => { S.layer = li; $("layer").value = li; setHeads([hi]); });
    which.append(" ", go);
  }
  $("neuron").replaceChildren(...N.rows.map(neuronBlock));
}

// ------------------------------------------------------------------ contrast view
function contrastRow(name, tokens, kind, target, valueOf) {
  const row = html("div", {class: "row", "data-text": name});
  row.append(html("span", {class: "name", title: name}, cut(name, 60)));
  tokens.forEach((tok, j) => {
    if (kind[j] !== "text") return;
    const v = valueOf(j), alpha = Math.min(1, Math.sqrt(v));
    row.append(html("span", {class: "tok" + (target.includes(j) ? " word" : ""),
      "data-token": j, "data-value": v.toFixed(5), title: v.toFixed(4),
      style: `background:rgba(242,142,43,${alpha.toFixed(3)})`}, tok));
  });
  return row;
}
const compared = D.compared.map(c => ({...c, A: decode(c.rows), T: c.tokens.length}));
function drawContrast() {
  const section = $("contrast-section");
  section.hidden = !D.target.length || !compared.length;
  if (section.hidden) return;
  const li = S.layer, heads = [...S.on];
  const which = heads.length === 1 ? t("oneHead", D.heads[heads[0]]) : t("meanHeads", heads.length);
  $("contrast-title").textContent = t("contrast", word, D.layers[li], which);
  $("contrast").dataset.layer = D.layers[li];
  const mine = j => {
    let sum = 0;
    for (const h of heads) for (const i of D.target) sum += raw(li, h, i, j);
    return heads.length ? sum / (heads.length * D.target.length) : 0;
  };
  const rows = [contrastRow(D.text || document.title, D.tokens, D.kind, D.target, mine)];
  for (const c of compared) {
    const theirs = j => {
      let sum = 0;
      for (const h of heads) sum += c.A[(li * c.heads.length + h) * c.T + j];
      return heads.length ? sum / heads.length : 0;
    };
    rows.push(contrastRow(c.text, c.tokens, c.kind, c.target, theirs));
  }
  $("contrast").replaceChildren(...rows);
}

// ------------------------------------------------------------------ sense view
// One colour per series across both charts (contexts first, then senses), so that a
// colour never means two things on one page.
const seriesColour = {};
[...Object.keys(D.contexts), ...Object.keys(D.senses)].forEach((name, k) => {
  seriesColour[name] = D.colours[(k + 2) % D.colours.length];
});
function chart(kind, title, series, yLabel) {
  const w = 640, h = 260, m = {l: 64, r: 20, t: 30, b: 40};
  const n = Math.max(...Object.values(series).map(s => s.length));
  const all = Object.values(series).flat();
  // The axis spans the values (to the next 0.05), not 0-1: differences of a few hundredths
  // are the story in these curves.
  const lo = Math.floor(Math.min(...all) * 20 - 0.5) / 20;
  const hi = Math.min(1, Math.ceil(Math.max(...all) * 20 + 0.5) / 20);
  const x = i => m.l + i * (w - m.l - m.r) / Math.max(1, n - 1);
  const y = v => h - m.b - (v - lo) / (hi - lo) * (h - m.t - m.b);
  const s = svg("svg", {viewBox: `0 0 ${w} ${h}`, class: "chart", "data-chart": kind});
  s.append(svg("text", {x: m.l, y: 16, class: "title"}, title));
  s.append(svg("line", {x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b, stroke: "#444"}));
  s.append(svg("line", {x1: m.l, y1: m.t, x2: m.l, y2: h - m.b, stroke: "#444"}));
  for (let i = 0; i < n; i++) {
    s.append(svg("text", {x: x(i), y: h - m.b + 14, "text-anchor": "middle"}, i));
  }
  s.append(svg("text", {x: (m.l + w - m.r) / 2, y: h - 6, "text-anchor": "middle"}, t("hidden")));
  for (let k = 0; k <= 4; k++) {
    const v = lo + k * (hi - lo) / 4;
    s.append(svg("text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end"}, v.toFixed(3)));
    s.append(svg("line", {x1: m.l, y1: y(v), x2: w - m.r, y2: y(v), stroke: "#eee"}));
  }
  s.append(svg("text", {x: 14, y: (m.t + h - m.b) / 2, "text-anchor": "middle",
                        transform: `rotate(-90 14 ${(m.t + h - m.b) / 2})`}, yLabel));
  if (D.separate && D.separate.chart === kind) {
    const k = D.separate.k;
    s.append(svg("line", {x1: x(k), x2: x(k), y1: m.t, y2: h - m.b, stroke: "#c0392b",
                          "stroke-dasharray": "4 3", class: "separate", "data-layer": k}));
    s.append(svg("text", {x: x(k) + 4, y: m.t + 10, fill: "#c0392b"}, t("separate")));
  }
  const now = D.layers[S.layer];
  s.append(svg("line", {x1: x(now), x2: x(now), y1: m.t, y2: h - m.b, stroke: "#222",
                        "stroke-opacity": 0.35, "stroke-width": 6, class: "now",
                        "data-layer": now}));
  const legend = html("ul", {class: "legend"});
  Object.entries(series).forEach(([name, values]) => {
    const c = seriesColour[name];
    s.append(svg("polyline", {fill: "none", stroke: c, "stroke-width": 2,
      points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ")}));
    values.forEach((v, i) => {
      // A focusable point is named for a screen reader as the tip names it on sight.
      const said = t("pointTip", name, i, v.toFixed(4));
      const dot = svg("circle", {cx: x(i), cy: y(v), r: 4.5, fill: c, tabindex: 0,
                                 role: "button", "aria-label": said,
                                 "data-series": name, "data-layer": i, "data-value": v});
      const say = () => { $("tip").textContent = said; };
      dot.addEventListener("mouseenter", say);
      dot.addEventListener("focus", say);
      dot.addEventListener("click", () => chooseHidden(i));
      dot.addEventListener("keydown", e => { if (e.key === "Enter") chooseHidden(i); });
      s.append(dot);
    });
    const item = html("li", {title: name, "data-series": name, "data-colour": c});
    item.append(html("span", {class: "swatch", style: `background:${c}`}),
                document.createTextNode(cut(name)));
    legend.append(item);
  });
  const box = html("div");
  box.append(s, legend);
  return box;
}
// Hidden state k is layer k's output: choosing it opens layer k in the head, strip and
// contrast views (hidden state 0, the embeddings, has no attention: layer 1 is the nearest).
function chooseHidden(k) {
  const layer = Math.max(1, k), li = D.layers.indexOf(layer);
  if (li >= 0) setLayer(li);
  else $("tip").textContent =
    t("notHeld", layer, D.layers.join(lang === "zh" ? "、" : ", "), D.layers.length);
}
function drawSenses() {
  const view = $("senseview");
  const has = Object.keys(D.contexts).length || Object.keys(D.senses).length;
  $("sense-section").hidden = !has;
  view.replaceChildren();
  if (Object.keys(D.contexts).length) {
    view.append(chart("contexts", t("contexts", word), D.contexts, t("cosine")));
  }
  if (Object.keys(D.senses).length) {
    view.append(chart("senses", t("sensesChart", word), D.senses, t("meanCosine")));
  }
}

// ------------------------------------------------------------------ wiring
function redraw() {
  renormalize();
  drawStrip(); drawHeads(); drawNeuron(); drawContrast(); drawSenses(); drawModels();
}
$("layer").addEventListener("change", () => setLayer(+$("layer").value));
$("heads").addEventListener("change", e => {
  const i = +e.target.dataset.head, next = new Set(S.on);
  e.target.checked ? next.add(i) : next.delete(i);
  setHeads([...next]);
});
$("all").addEventListener("click", () => setHeads(D.heads.map((_, i) => i)));
$("none").addEventListener("click", () => setHeads([]));
$("only").addEventListener("change", () => {
  if ($("only").value !== "") setHeads([+$("only").value]);
});
$("unpin").addEventListener("click", () => { S.pinned = null; S.hover = null; drawLines(); drawStrip(); });
document.addEventListener("keydown", e => {
  if (e.key === "Escape") { S.pinned = null; S.hover = null; drawLines(); drawStrip(); }
});
for (const id of ["hide-special", "hide-prefix", "rescale"]) $(id).addEventListener("change", redraw);
$("lang").addEventListener("click", () => {
  lang = lang === "zh" ? "en" : "zh";
  applyLanguage(); redraw();
});
applyLanguage(); drawHeadBoxes(); redraw();
