"""Pictures of an explanation as a PNG (matplotlib, `pip install 'embedsense[plot]'`); the
interactive HTML page is attention_page.py.

Chinese tokens need a CJK font. The PNG uses the first one fontconfig/matplotlib knows
(on Debian: `apt-get install fonts-noto-cjk`); without one it warns and writes tokens as
code points (U+82F9) rather than drawing empty boxes.
"""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from embedsense.client.attention_page.payload import display_tokens
from embedsense.client.types import Explanation, LayerComparison

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "Source Han Sans SC",
             "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
             "AR PL UMing CN")  # fmt: skip


def cjk_font() -> str | None:
    """The family name of an installed font with CJK glyphs, or None."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FONTS if name in installed), None)
    if found is None:
        # matplotlib's font cache is built once; fonts installed after it are unknown to it
        # until they are added by path.
        for path in font_manager.findSystemFonts():
            if any(mark in Path(path).name.lower() for mark in ("cjk", "wqy", "droidsansfallback")):
                font_manager.fontManager.addfont(path)
        installed = {font.name for font in font_manager.fontManager.ttflist}
        found = next((name for name in CJK_FONTS if name in installed), None)
    return found


def glyphs_of(families: Sequence[str]) -> Callable[[int], bool]:
    """Whether one of these font families has a glyph for a code point."""
    from matplotlib import font_manager, ft2font

    fonts = [ft2font.FT2Font(font_manager.findfont(family)) for family in families]
    return lambda code: any(font.get_char_index(code) for font in fonts)


def token_labels(
    tokens: list[str], can_draw_cjk: bool, has_glyph: Callable[[int], bool] | None = None
) -> list[str]:
    """Tokens as the figure labels them: a character no font draws (Chinese without a CJK
    font; an emoji, which CJK fonts lack: `has_glyph` says), or one that draws nothing (a
    zero-width joiner), as its code point, never an empty box or a blank label."""

    def label(ch: str) -> str:
        code = ord(ch)
        if unicodedata.category(ch) == "Cf":  # format characters: invisible
            return f"U+{code:04X}"
        if has_glyph is not None:
            return ch if code < 0x80 or has_glyph(code) else f"U+{code:04X}"
        return ch if can_draw_cjk or code < 0x2E80 else f"U+{code:04X}"

    return ["".join(map(label, t)) for t in tokens]


def render_png(
    explanation: Explanation,
    path: Path | str,
    comparison: LayerComparison | None = None,
    layer: int | None = None,
    head: int | None = None,
    title: str = "",
    text: str | None = None,
    curves: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Panels: the word's attention per layer (mean over heads) and which token each head of
    each layer attends to most, when a word was explained; one layer's token-by-token map
    when `layer` is given or no word was; the layer trajectory, when a comparison or
    `curves` are given (a name -> the word's cosine per hidden state, one line each).
    `text`: the explained text, so that tokens are drawn as typed (no ▁, full-width
    punctuation kept), as on the HTML page. A ValueError for a layer or head the
    explanation lacks (Explanation.check_view)."""
    explanation.check_view(layer, head)
    curves = dict(curves or {})
    if comparison is not None:
        curves = {"across the two texts": comparison.cosines, **curves}
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
    has_glyph = glyphs_of([*([font] if font else []), "DejaVu Sans"])
    labels = token_labels(display_tokens(explanation, text), font is not None, has_glyph)
    word_panels = bool(explanation.target_tokens) and layer is None
    panels = (2 if word_panels else 1) + bool(curves)
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.4), squeeze=False)
    axes = list(axes[0])
    if word_panels:
        _word_by_layer(axes.pop(0), explanation, labels)
        _head_grid(axes.pop(0), explanation, labels)
    else:
        _layer_map(axes.pop(0), explanation, labels, layer, head)
    if curves:  # the legend's names (texts, sense labels) drawn as the tokens are
        named = {token_labels([name], font is not None, has_glyph)[0]: cosines
                 for name, cosines in curves.items()}  # fmt: skip
        _trajectory(axes.pop(0), named)
    if title:  # the sentence, as code points too when no font can draw it
        fig.suptitle(token_labels([title], font is not None, has_glyph)[0])
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _target_name(e: Explanation, labels: list[str]) -> str:
    return "".join(labels[i] for i in e.target_tokens)


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
            ax.text(hi, li, labels[best[li, hi]], ha="center", va="center",
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


def _trajectory(ax, curves: Mapping[str, Sequence[float]]) -> None:  # noqa: ANN001
    for name, cosines in curves.items():
        ax.plot(range(len(cosines)), cosines, marker="o", label=name)
    ax.set_xlabel("hidden state (0 = embeddings)")
    ax.set_ylabel("cosine of the word with its vector there")
    lowest = min(min(cosines) for cosines in curves.values())
    ax.set_ylim(min(0.0, lowest - 0.05), 1.02)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    ax.set_title("where the contexts separate")
