"""The data the page draws, as one JSON-able dict: no HTML, no browser, testable alone.

Attention weights travel as little-endian uint16 in base64, each weight rounded to the
nearest 1/SCALE (0.0001): 2 bytes a value before base64, so 12 layers x 12 heads of 82
tokens fit in under 3 MB, where decimal JSON took 20 MB. Cosines keep 4 significant digits.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from embedsense.client.types import Explanation, LayerComparison

SCALE = 10_000  # attention weights are stored as round(weight * SCALE): 4 decimal places
SIGNIFICANT = 4  # cosines and similarities: 4 significant digits
# One colour per head, and one per sense-view series: distinct hues readable on white
# (Tableau's palette, extended).
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#7f7f7f", "#1f3b73", "#8cd17d"]  # fmt: skip
# Han characters. Full-width punctuation and letters are no sign of Chinese (English text
# may hold them), and kana say Japanese, whose kanji are Han too.
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# (U+30FB ・ and U+30FC ー left out: Chinese writes foreign names with the dot.)
_KANA = re.compile(r"[\u3040-\u30fa\u30fd-\u30ff\u31f0-\u31ff\uff66-\uff9f]")


class HasCosines(Protocol):
    cosines: Sequence[float]


def sense_profile(
    comparisons: Mapping[str, Sequence[LayerComparison]],
) -> dict[str, list[float]]:
    """A sense's similarity per layer: the mean, over its examples, of the word's cosine
    between the explained text and the example (CompareLayers' answers). A ValueError
    naming a sense without examples (its mean would be NaN)."""
    if empty := [label for label, found in comparisons.items() if not found]:
        raise ValueError(f"senses {empty}: no examples compared, so no similarity per layer")
    return {label: np.mean([c.cosines for c in found], axis=0).round(6).tolist()
            for label, found in comparisons.items()}  # fmt: skip


def quantize(weights: np.ndarray) -> str:
    """Weights in [0, 1] as base64 of little-endian uint16 round(w * SCALE), row-major."""
    q = np.clip(np.rint(np.asarray(weights, dtype=np.float64) * SCALE), 0, SCALE)
    return base64.b64encode(q.astype("<u2").tobytes()).decode("ascii")


def significant(values: Sequence[float]) -> list[float]:
    return [float(f"{v:.{SIGNIFICANT}g}") for v in values]


def display_tokens(e: Explanation, text: str | None) -> list[str]:
    """Each token as the reader typed it: the characters its offsets cover in `text` (so
    full-width punctuation stays full-width and there is no ▁); specials as the model names
    them; the model's prefix without ▁. A token covering only a space shows as ␣."""
    shown = []
    for token, (start, end), real in zip(
        e.tokens.tokens, e.tokens.offsets, e.tokens.from_text, strict=True
    ):
        piece = text[start:end] if real and text is not None and end > start else token
        if piece.startswith("<") and piece.endswith(">") and not real:
            shown.append(piece)
            continue
        piece = piece.replace("▁", " ").strip()
        shown.append(piece or "␣")
    return shown


def token_kinds(e: Explanation) -> list[str]:
    # Specials are the template's first and last tokens; the other tokens not from the
    # caller's text are the model's prefix ("query:").
    last = len(e.tokens.tokens) - 1
    return ["special" if i in (0, last) else ("text" if real else "prefix")
            for i, real in enumerate(e.tokens.from_text)]  # fmt: skip


def language(*texts: str) -> str:
    """The interface language: Chinese when the texts hold Chinese (Han characters, and no
    kana), else English."""
    joined = "".join(texts)
    return "zh" if _HAN.search(joined) and not _KANA.search(joined) else "en"


def separation(
    contexts: Mapping[str, Sequence[float]], senses: Mapping[str, Sequence[float]]
) -> dict[str, Any] | None:
    """The hidden state (1 or later) where the senses differ most (their spread), or, with
    fewer than two senses, where the other contexts are furthest from this one (the lowest
    mean cosine). None when there is nothing to compare."""
    if len(senses) >= 2:
        spread = np.ptp(np.array(list(senses.values())), axis=0)
        return {"chart": "senses", "k": int(spread[1:].argmax()) + 1}
    if contexts:
        mean = np.mean(np.array(list(contexts.values())), axis=0)
        return {"chart": "contexts", "k": int(mean[1:].argmin()) + 1}
    return None


def word_rows(e: Explanation) -> np.ndarray:
    """(layers, heads, T): the explained word's attention, averaged over its tokens."""
    return e.attentions[:, :, e.target_tokens, :].mean(axis=2)


def neuron_payload(e: Explanation) -> dict[str, Any] | None:
    """The neuron view's data: for each query token, its dot product with every token's key
    (the page divides by sqrt(d) and takes the softmax, showing each step). Six significant
    digits, so the page's softmax matches the head's attention to about 1e-5. With a target
    word, only its tokens' rows: a wordless neuron holds every token's query (T x T dots)."""
    n = e.neuron
    if n is None:
        return None
    dots = n.queries.astype(np.float64) @ n.keys.astype(np.float64).T  # (queries, T)
    keep = set(e.target_tokens or n.query_tokens)
    rows = [{"token": int(i), "dots": [float(f"{v:.6g}") for v in row]}
            for i, row in zip(n.query_tokens, dots, strict=True) if i in keep]  # fmt: skip
    return {"layer": n.layer, "head": n.head, "d": int(n.keys.shape[1]), "rows": rows}


def compared_payload(
    text: str, e: Explanation, layers: Sequence[int], heads: Sequence[int]
) -> dict[str, Any] | None:
    """Another text's word rows at the main page's layers, for the contrast view; None when
    it has no word, lacks one of those layers, or holds other heads."""
    if not e.target_tokens or not set(layers) <= set(e.layers) or list(heads) != e.heads:
        return None
    rows = word_rows(e)[[e.layers.index(layer) for layer in layers]]
    return {"text": text, "tokens": display_tokens(e, text), "kind": token_kinds(e),
            "heads": e.heads, "target": e.target_tokens, "rows": quantize(rows)}  # fmt: skip


def build(
    e: Explanation,
    *,
    text: str | None,
    title: str,
    contexts: Mapping[str, HasCosines | LayerComparison],
    senses: Mapping[str, Sequence[float]],
    compared: Mapping[str, Explanation],
    num_layers: int | None,
    num_heads: int | None,
    layer: int | None,
    head: int | None,
    fitted: bool,
    lang: str | None,
) -> dict[str, Any]:
    """The page's data. `layer` (1-based) and `head` (0-based): the view the page opens on;
    a ValueError names the ones the explanation holds when they are not among them."""
    e.check_view(layer, head)
    curves = {name: significant(c.cosines) for name, c in contexts.items()}
    profiles = {label: significant(values) for label, values in senses.items()}
    others = [compared_payload(t, c, e.layers, e.heads) for t, c in compared.items()]
    return {
        "lang": lang or language(text or "", title),
        "text": text,
        "tokens": display_tokens(e, text),
        "kind": token_kinds(e),
        "layers": e.layers,
        "heads": e.heads,
        "scale": SCALE,
        "attentions": quantize(e.attentions),
        "target": e.target_tokens,
        "contexts": curves,
        "senses": profiles,
        "separate": separation(curves, profiles),
        "compared": [c for c in others if c is not None],
        "neuron": neuron_payload(e),
        "omitted": omitted(e, num_layers, num_heads),
        "fitted": fitted,
        "truncated": e.truncated_tokens,
        "open": {
            "layer": e.layers.index(layer) if layer is not None else len(e.layers) - 1,
            "head": e.heads.index(head) if head is not None else None,
        },  # fmt: skip
        "colours": COLOURS,
    }


def omitted(e: Explanation, num_layers: int | None, num_heads: int | None) -> dict[str, Any]:
    """What the explanation leaves out of the model (the page words it in its language)."""
    return {
        "layers": [len(e.layers), num_layers or len(e.layers)],
        "heads": [len(e.heads), num_heads or len(e.heads)],
        "bound": e.max_attention_values,
        "tokens": len(e.tokens.tokens),
    }
