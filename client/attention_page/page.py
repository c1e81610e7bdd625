"""The HTML around the data: the template, style and script from assets/, and the escaping
that keeps user text (the explained text, compared texts, sense labels) inert inside the
page's one <script>."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path

from embedsense.client.attention_page import payload
from embedsense.client.types import Explanation, LayerComparison

# Inside <script>, the HTML parser still reacts to "</script", "<!--" and "<script": every
# "<" (and ">" and "&", for good measure) becomes a JSON escape the script reads back as
# the same character. U+2028/U+2029 are escaped for older JavaScript parsers.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                              "\u2028": "\\u2028", "\u2029": "\\u2029"})  # fmt: skip


def script_json(data: object) -> str:
    """`data` as a JavaScript literal that cannot end or alter the <script> holding it."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).translate(_SCRIPT_SAFE)


@cache
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def render(
    explanation: Explanation,
    path: Path | str | None = None,
    contexts: Mapping[str, LayerComparison] | None = None,
    senses: Mapping[str, Sequence[float]] | None = None,
    title: str = "embedsense: attention",
    num_layers: int | None = None,
    num_heads: int | None = None,
    *,
    text: str | None = None,
    compared: Mapping[str, Explanation] | None = None,
    layer: int | None = None,
    head: int | None = None,
    fitted: bool = False,
    lang: str | None = None,
) -> str:
    """The page (written to `path` when given, UTF-8).

    contexts: another text -> its CompareLayers answer against this one; senses: label ->
    similarity per hidden state (`sense_profile`); compared: another text -> its Explain
    answer for the same word and layers (the contrast view). text: the explained text, so
    tokens are drawn as typed. num_layers/num_heads: the model's, to say what was left out;
    fitted: the caller chose the layers/heads to fit the response bound (the page says so).
    layer (1-based) and head (0-based): the view it opens on (default: the last layer, all
    heads). lang: "zh" or "en" (default: Chinese when the text is)."""
    data = payload.build(
        explanation, text=text, title=title, contexts=contexts or {}, senses=senses or {},
        compared=compared or {}, num_layers=num_layers, num_heads=num_heads, layer=layer,
        head=head, fitted=fitted, lang=lang,
    )  # fmt: skip
    parts = {
        "LANG": data["lang"],
        "STYLE": _asset("page.css"),
        "TITLE": html.escape(title),
        "SCRIPT": "const D = " + script_json(data) + ";\n" + _asset("page.js"),
    }
    # One pass, so that a placeholder inside the user's title or data stays text.
    page = re.sub(r"__(LANG|STYLE|TITLE|SCRIPT)__", lambda m: parts[m[1]], _asset("page.html"))
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page
