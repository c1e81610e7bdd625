"""The explanation as one self-contained HTML page: data, script and style inline, no CDN,
no network, works from file://. What each view shows is told on the page itself, in Chinese
or English (payload.py chooses, the reader switches).

- Word strip: what the explained word attends to, layer by layer (the PNG's first panel).
- Head view (as BertViz draws it): the tokens in two columns, a line from each token to each
  token it attends to, one colour per head, opacity = weight ÷ heads shown, the strongest
  head drawn last; the word is pinned when the page opens.
- Model view: every layer x head as a small map; shrunk maps keep each block's maximum.
- Contrast view: the word's attention in this text and in each compared text, side by side,
  at the same layer and heads; linked to the sense chart.
- Sense view (ours): the word's cosine across contexts and to each sense, per hidden state.

The page's pieces: payload.py (the data: quantized attention, display tokens, what was left
out), page.py (the HTML around it, with the escaping that makes user text safe inside
<script>), assets/ (the CSS and JavaScript, shipped as package data).
"""

from embedsense.client.attention_page.page import render
from embedsense.client.attention_page.payload import sense_profile

__all__ = ["render", "sense_profile"]
