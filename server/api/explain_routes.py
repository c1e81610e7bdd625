"""Explanations over HTTP, beside the collections' and the senses' REST routes and in the
same dialect, behind the same API key, body limits and deadline:

    POST /v1/explain          attention maps, what a word attends to, one head's q/k vectors
    POST /v1/compare_layers   a word's cosine across two texts at every layer

Each handler only translates shapes: the work is explain_ops.py's, the same calls gRPC makes.
The tensors come as nested lists, or with "encoding_format": "base64" as float32 bytes,
which is what a page that draws them wants (a Float32Array over the decoded bytes).
"""

from __future__ import annotations

import base64

import numpy as np
from aiohttp import web

from embedsense.model import TextRole
from embedsense.server.api import explain_models as m
from embedsense.server.api.checks import ReplyTooLarge, role_named
from embedsense.server.api.collection_routes import rest_route
from embedsense.server.api.explain_ops import ExplainOps
from embedsense.server.api.http import HttpRoute
from embedsense.server.api.sense_models import SpanReply
from embedsense.server.explain import MAX_ATTENTION_VALUES, Explanation

TAG = "Explanations"
# The most JSON bytes one float32 value takes, with its comma: "-1.2345678e-38," as a
# number; 4 bytes in base64 are 16/3 characters.
JSON_VALUE_BYTES = {"float": 16, "base64": 6}
# A token's JSON beyond its text: its id, offsets, from_text and their punctuation.
JSON_TOKEN_BYTES = 40


def _tensor(values: np.ndarray, encoding: str) -> np.ndarray | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()
    return values


def _span(start: int, end: int) -> SpanReply:
    return SpanReply.model_construct(start=start, end=end)


def _json_bytes(result: Explanation, encoding: str) -> int:
    """About how large the reply's JSON is, from above: its tensors' values and its tokens."""
    values = result.attentions.size
    if result.neuron is not None:
        values += result.neuron.queries.size + result.neuron.keys.size
    tokens = sum(len(t.encode()) + JSON_TOKEN_BYTES for t in result.tokenized.tokens)
    return values * JSON_VALUE_BYTES[encoding] + tokens


def _explanation(result: Explanation, encoding: str) -> m.ExplainResponse:
    t = result.tokenized
    neuron = None
    if (n := result.neuron) is not None:
        neuron = m.Neuron.model_construct(
            layer=n.layer, head=n.head, query_tokens=n.query_tokens,
            queries=_tensor(n.queries, encoding), keys=_tensor(n.keys, encoding),
        )  # fmt: skip
    target = result.target
    return m.ExplainResponse.model_construct(
        tokens=m.Tokens.model_construct(tokens=t.tokens, ids=t.ids, offsets=t.offsets,
                                        from_text=t.from_text),
        layers=result.layers, heads=result.heads,
        attentions=_tensor(result.attentions, encoding),
        span=None if target is None else _span(target.start, target.end),
        target_tokens=result.target_tokens,
        focus=[m.Focus.model_construct(layer=f.layer, head=f.head,
                                       tokens=[m.TokenWeight.model_construct(token=i, weight=w)
                                               for i, w in f.tokens])
               for f in result.focus],
        max_attention_values=MAX_ATTENTION_VALUES, truncated_tokens=t.truncated_tokens,
        neuron=neuron,
    )  # fmt: skip


class ExplainRoutes:
    def __init__(self, ops: ExplainOps) -> None:
        self.ops = ops

    def _role(self, named: str | None) -> TextRole:
        """The role a request names, or the server's --default-prompt-name (as for every
        HTTP route; gRPC's default is query)."""
        return role_named(named, "role", self.ops.settings.default_prompt_name)

    def routes(self) -> list[HttpRoute]:
        route = rest_route(TAG)
        return [
            route("POST", "/v1/explain", self.explain,
                  "Attention maps, and what a word attends to",
                  "The attention of the layers x heads asked for (all by default; a reply "
                  f"holds at most {MAX_ATTENTION_VALUES:,} values, so a long text asks for "
                  "fewer), and for a word, the tokens it attends to most in each layer and "
                  "head. One explanation runs at a time, beside the engine's batches.",
                  body=m.ExplainRequest, reply=m.ExplainResponse, heavy_reply=True),
            route("POST", "/v1/compare_layers", self.compare_layers,
                  "Where in the stack two uses of a word pull apart",
                  "The cosine of the word's vectors in the two texts at every hidden state, "
                  "from the embeddings (0) to the last layer.",
                  body=m.CompareLayersRequest, reply=m.LayerComparison),
        ]  # fmt: skip

    async def explain(self, request: web.Request, body: m.ExplainRequest) -> m.ExplainResponse:
        neuron = None if body.neuron is None else (body.neuron.layer, body.neuron.head)
        result = await self.ops.explain(
            body.text, body.word, span=body.span_pair(), occurrence=body.occurrence,
            layers=body.layers, heads=body.heads, role=self._role(body.role),
            truncate=body.long_text == "truncate", neuron=neuron,
        )  # fmt: skip
        size, limit = _json_bytes(result, body.encoding_format), self.ops.settings.max_message_bytes
        if size > limit:
            smaller = ' or encoding_format "base64"' if body.encoding_format == "float" else ""
            raise ReplyTooLarge(f"the explanation would be about {size:,} bytes of JSON, over "
                                f"max_message_bytes ({limit:,}): ask for fewer layers or "
                                f"heads{smaller}", "layers")  # fmt: skip
        return _explanation(result, body.encoding_format)

    async def compare_layers(
        self, request: web.Request, body: m.CompareLayersRequest
    ) -> m.LayerComparison:
        cosines, a, b = await self.ops.compare_layers(
            body.text_a, body.text_b, body.word, body.occurrence_a, body.occurrence_b,
            role=self._role(body.role), truncate=body.long_text == "truncate",
        )  # fmt: skip
        return m.LayerComparison.model_construct(
            cosines=cosines, span_a=_span(a.start, a.end), span_b=_span(b.start, b.end)
        )
