"""Pictures of an explanation: a PNG (matplotlib, `pip install 'embedsense[plot]'`) and a
self-contained HTML page (no CDN, no dependency).

Chinese tokens need a CJK font. The PNG uses the first one fontconfig/matplotlib knows
(on Debian: `apt-get install fonts-noto-cjk`); without one it warns and writes tokens as
code points (U+82F9) rather than drawing empty boxes.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np

from embedsense.client.types import Explanation, LayerComparison

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "Source Han Sans SC",
             "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
             "AR PL UMing CN")  # fmt: skip


def cjk_font() -> str | None:
    """The family name of an installed font with CJK glyphs, or None."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return next((name for name in CJK_FONTS if name in installed), None)


def token_labels(tokens: list[str], can_draw_cjk: bool) -> list[str]:
    if can_draw_cjk:
        return tokens
    return ["".join(ch if ord(ch) < 0x2E80 else f"U+{ord(ch):04X}" for ch in t) for t in tokens]


def render_png(
    explanation: Explanation,
    path: Path | str,
    comparison: LayerComparison | None = None,
    layer: int | None = None,
    head: int | None = None,
    title: str = "",
) -> Path:
    """Panels: the word's attention per layer (mean over heads) and which token each head of
    each layer attends to most, when a word was explained; one layer's token-by-token map
    when `layer` is given or no word was; the layer trajectory, when a comparison is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    font = cjk_font()
    if font is None:
        warnings.warn(
            "no CJK font found (on Debian: apt-get install fonts-noto-cjk); Chinese tokens "
            "are drawn as code points", stacklevel=2,
        )  # fmt: skip
    else:
        plt.rcParams["font.family"] = [font, "DejaVu Sans"]
    labels = token_labels(explanation.tokens.tokens, font is not None)
    word_panels = bool(explanation.target_tokens) and layer is None
    panels = (2 if word_panels else 1) + (comparison is not None)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.4), squeeze=False)
    axes = list(axes[0])
    if word_panels:
        _word_by_layer(axes.pop(0), explanation, labels)
        _head_grid(axes.pop(0), explanation, labels)
    else:
        _layer_map(axes.pop(0), explanation, labels, layer, head)
    if comparison is not None:
        _trajectory(axes.pop(0), comparison)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _target_name(e: Explanation, labels: list[str]) -> str:
    return "".join(labels[i] for i in e.target_tokens).replace("▁", "")


def _word_by_layer(ax, e: Explanation, labels: list[str]) -> None:  # noqa: ANN001
    # (layers, T): the target's attention, averaged over its tokens and the heads.
    rows = e.attentions[:, :, e.target_tokens, :].mean(axis=(1, 2))
    image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(e.layers)), [str(layer) for layer in e.layers])
    ax.set_ylabel("layer")
    ax.set_title(f"what {_target_name(e, labels)} attends to (mean over heads)")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def _head_grid(ax, e: Explanation, labels: list[str]) -> None:  # noqa: ANN001
    # For each layer and head, the text token the word attends to most, and how much. The
    # special tokens and the model's prefix are left out: many heads park most of their
    # attention on <s> or </s> (a "sink"), which says little about the word.
    weights = e.attentions[:, :, e.target_tokens, :].mean(axis=2)  # (layers, heads, T)
    weights = np.where(np.array(e.tokens.from_text), weights, 0.0)
    best = weights.argmax(axis=2)
    strongest = weights.max(axis=2)
    image = ax.imshow(strongest, aspect="auto", cmap="magma", vmin=0)
    for li in range(len(e.layers)):
        for hi in range(len(e.heads)):
            bright = strongest[li, hi] >= 0.6 * strongest.max()
            ax.text(hi, li, labels[best[li, hi]].replace("▁", ""), ha="center", va="center",
                    fontsize=6, color="black" if bright else "white")  # fmt: skip
    ax.set_xticks(range(len(e.heads)), [str(h) for h in e.heads])
    ax.set_yticks(range(len(e.layers)), [str(layer) for layer in e.layers])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"the text token each head of {_target_name(e, labels)} attends to most")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def _layer_map(ax, e: Explanation, labels, layer: int | None, head: int | None) -> None:  # noqa: ANN001
    li = e.layers.index(layer) if layer is not None else len(e.layers) - 1
    maps = e.attentions[li]
    grid = maps[e.heads.index(head)] if head is not None else maps.mean(axis=0)
    image = ax.imshow(grid, cmap="viridis", vmin=0)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("attends to")
    which = f"head {head}" if head is not None else "mean over heads"
    ax.set_title(f"layer {e.layers[li]}, {which}")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)


def _trajectory(ax, c: LayerComparison) -> None:  # noqa: ANN001
    ax.plot(range(len(c.cosines)), c.cosines, marker="o")
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("cosine of the word across the two texts")
    ax.set_ylim(min(0.0, min(c.cosines) - 0.05), 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("where the two contexts separate")


def render_html(
    explanation: Explanation,
    path: Path | str,
    comparison: LayerComparison | None = None,
    title: str = "embedsense: attention",
) -> Path:
    """One HTML file with the data inline and a small script: pick a layer and a head (or
    their mean), see the token-by-token map; hover a cell for its weight."""
    data = {
        "tokens": explanation.tokens.tokens,
        "layers": explanation.layers,
        "heads": explanation.heads,
        "attentions": np.round(explanation.attentions, 4).tolist(),
        "target": explanation.target_tokens,
        "cosines": comparison.cosines if comparison else None,
    }
    page = _HTML.replace("__TITLE__", html.escape(title)).replace(
        "__DATA__", json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


_HTML = """<!doctype html>
<html lang="zh"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,"Noto Sans CJK SC",sans-serif;margin:1.5em}
table{border-collapse:collapse}td,th{width:2.4em;height:2.4em;text-align:center;font-size:12px}
th{font-weight:normal}th.target{color:#c00;font-weight:bold}
#hover{min-height:1.4em;margin:.6em 0}svg{border:1px solid #ddd}
</style></head><body>
<h2>__TITLE__</h2>
<label>layer <select id="layer"></select></label>
<label>head <select id="head"></select></label>
<div id="hover">hover a cell: row token attends to column token</div>
<table id="map"></table>
<div id="trajectory"></div>
<script>
const D = __DATA__;
const ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"};
const esc = s => s.replace(/[&<>"]/g, c => ENTITIES[c]);
const layer = document.getElementById("layer"), head = document.getElementById("head");
D.layers.forEach((l, i) => layer.add(new Option(l, i)));
head.add(new Option("mean", -1));
D.heads.forEach((h, i) => head.add(new Option(h, i)));
layer.value = D.layers.length - 1;
function grid() {
  const L = D.attentions[layer.value], h = +head.value;
  return L[0].map((row, i) => row.map((_, j) =>
    h < 0 ? L.reduce((s, m) => s + m[i][j], 0) / L.length : L[h][i][j]));
}
function draw() {
  const g = grid(), t = D.tokens, table = document.getElementById("map");
  const cls = i => D.target.includes(i) ? ' class="target"' : "";
  let s = "<tr><th></th>" + t.map((x, j) => `<th${cls(j)}>${esc(x)}</th>`).join("") + "</tr>";
  g.forEach((row, i) => {
    s += `<tr><th${cls(i)}>${esc(t[i])}</th>` + row.map((w, j) =>
      `<td style="background:rgba(40,90,200,${w.toFixed(3)})" data-i="${i}" data-j="${j}"
       data-w="${w.toFixed(3)}"></td>`).join("") + "</tr>";
  });
  table.innerHTML = s;
}
document.getElementById("map").addEventListener("mouseover", e => {
  const c = e.target.dataset; if (!c.w) return;
  document.getElementById("hover").textContent =
    `${D.tokens[c.i]} → ${D.tokens[c.j]}: ${c.w}`;
});
layer.onchange = head.onchange = draw;
draw();
if (D.cosines) {
  const w = 420, h = 160, n = D.cosines.length, lo = Math.min(0, ...D.cosines);
  const pts = D.cosines.map((c, i) =>
    `${20 + i * (w - 40) / (n - 1)},${h - 20 - (c - lo) / (1 - lo) * (h - 40)}`).join(" ");
  document.getElementById("trajectory").innerHTML =
    `<h3>cosine of the word across the two texts, per layer (0 = embeddings)</h3>
     <svg width="${w}" height="${h}"><polyline fill="none" stroke="#285ac8" stroke-width="2"
     points="${pts}"/></svg><div>${D.cosines.map(c => c.toFixed(3)).join("  ")}</div>`;
}
</script></body></html>
"""
