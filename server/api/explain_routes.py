"""Explanations over HTTP, beside the collections' and the senses' REST routes and in the
same dialect, behind the same API key, body limits and deadline:

    POST /v1/explain          attention maps, what a word attends to, one head's q/k vectors
    POST /v1/compare_layers   a word's cosine across two texts at every layer

Each handler only translates shapes: the work is explain_ops.py's, the same calls gRPC makes.
The tensors come as nested lists, or with "encoding_format": "base64" as float32 bytes,
which is what a page that draws them wants (a Float32Array over the decoded bytes).
"""

from __future__ import annotations

import math

from aiohttp import web

from embedsense.model import TextRole
from embedsense.server.api import explain_models as m
from embedsense.server.api.checks import (
    JSON_BYTES_PER_NUMBER,
    ReplyTooLarge,
    json_string_bytes,
    role_named,
)
from embedsense.server.api.collection_routes import ERRORS, rest_route
from embedsense.server.api.explain_ops import ExplainOps
from embedsense.server.api.http import HttpRoute, float32s
from embedsense.server.api.sense_models import span_reply
from embedsense.server.explain import MAX_ATTENTION_VALUES, Explanation

TAG = "Explanations"
# The most JSON bytes of the reply's other numbers, with their commas: a whole number (an
# index, an id, an offset) and a Python float (a focus weight, "-1.2345678901234567e-300").
JSON_INT_BYTES = 11
JSON_FLOAT64_BYTES = 25
# A token's JSON beyond its text: its id, its offsets ("[start,end],"), its from_text.
JSON_TOKEN_BYTES = JSON_INT_BYTES + (2 * JSON_INT_BYTES + 3) + len("false,")
# A focus entry beyond its weights ({"layer":..,"head":..,"tokens":[]},), and one weight
# ({"token":..,"weight":..},).
JSON_FOCUS_BYTES = 31 + 2 * JSON_INT_BYTES
JSON_WEIGHT_BYTES = 21 + JSON_INT_BYTES + JSON_FLOAT64_BYTES
# The reply's field names, braces and lone numbers.
JSON_FRAME_BYTES = 600


def tensor_bytes(shape: tuple[int, ...], encoding: str) -> int:
    """The most JSON bytes a float32 tensor of `shape` takes, with its comma: base64 of its
    bytes in quotes, or its numbers in nested lists (each list's brackets and comma)."""
    values = math.prod(shape)
    if encoding == "base64":
        return 4 * math.ceil(4 * values / 3) + 3
    lists = sum(math.prod(shape[:depth]) for depth in range(len(shape)))
    return values * JSON_BYTES_PER_NUMBER + 3 * lists


def reply_bytes_at_most(result: Explanation, encoding: str) -> int:
    """A bound from above on the reply's JSON, from its shapes: what the reply limit is
    checked against before any of it is written."""
    t = result.tokenized
    size = JSON_FRAME_BYTES + tensor_bytes(result.attentions.shape, encoding)
    size += sum(json_string_bytes(token) + 1 + JSON_TOKEN_BYTES for token in t.tokens)
    whole = len(result.layers) + len(result.heads) + len(result.target_tokens)
    size += JSON_INT_BYTES * whole
    size += sum(JSON_FOCUS_BYTES + JSON_WEIGHT_BYTES * len(f.tokens) for f in result.focus)
    if (n := result.neuron) is not None:
        size += JSON_INT_BYTES * len(n.query_tokens)
        size += tensor_bytes(n.queries.shape, encoding) + tensor_bytes(n.keys.shape, encoding)
    return size


def _explanation(result: Explanation, encoding: str) -> m.ExplainResponse:
    t = result.tokenized
    neuron = None
    if (n := result.neuron) is not None:
        neuron = m.Neuron.model_construct(
            layer=n.layer, head=n.head, query_tokens=n.query_tokens,
            queries=float32s(n.queries, encoding), keys=float32s(n.keys, encoding),
        )  # fmt: skip
    target = result.target
    return m.ExplainResponse.model_construct(
        tokens=m.Tokens.model_construct(tokens=t.tokens, ids=t.ids, offsets=t.offsets,
                                        from_text=t.from_text),
        layers=result.layers, heads=result.heads,
        attentions=float32s(result.attentions, encoding),
        span=None if target is None else span_reply(target.start, target.end),
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

    def _truncate(self, long_text: str | None) -> bool:
        """Whether a long text is cut to its first window: as the request says, or the
        server's --auto-truncate (as for every HTTP route)."""
        return self.ops.settings.auto_truncate if long_text is None else long_text == "truncate"

    def routes(self) -> list[HttpRoute]:
        route = rest_route(TAG)
        s = self.ops.settings
        defaults = (
            f" A text is read as a **{s.default_prompt_name}** unless role says otherwise, and "
            f"one longer than the model takes is {'cut' if s.auto_truncate else 'refused'} "
            "unless long_text says otherwise (this server's --default-prompt-name and "
            "--auto-truncate)."
        )
        errors = tuple(status for status in ERRORS if status != 404)  # no path names a thing
        return [
            route("POST", "/v1/explain", self.explain,
                  "Attention maps, and what a word attends to",
                  "The attention of the layers x heads asked for (all by default; a reply "
                  f"holds at most {MAX_ATTENTION_VALUES:,} values, so a long text asks for "
                  "fewer), and for a word, the tokens it attends to most in each layer and "
                  "head. One explanation runs at a time, beside the engine's batches." + defaults,
                  body=m.ExplainRequest, reply=m.ExplainResponse, heavy_reply=True,
                  errors=errors),
            route("POST", "/v1/compare_layers", self.compare_layers,
                  "Where in the stack two uses of a word pull apart",
                  "The cosine of the word's vectors in the two texts at every hidden state, "
                  "from the embeddings (0) to the last layer." + defaults,
                  body=m.CompareLayersRequest, reply=m.LayerComparison, errors=errors),
        ]  # fmt: skip

    async def explain(self, request: web.Request, body: m.ExplainRequest) -> m.ExplainResponse:
        neuron = None if body.neuron is None else (body.neuron.layer, body.neuron.head)
        result = await self.ops.explain(
            body.text, body.word, span=body.span_pair(), occurrence=body.occurrence,
            layers=body.layers, heads=body.heads, role=self._role(body.role),
            truncate=self._truncate(body.long_text), neuron=neuron,
        )  # fmt: skip
        size = reply_bytes_at_most(result, body.encoding_format)
        limit = self.ops.settings.max_message_bytes
        if size > limit:
            smaller = ' or encoding_format "base64"' if body.encoding_format == "float" else ""
            raise ReplyTooLarge(f"the explanation would be up to {size:,} bytes of JSON, over "
                                f"max_message_bytes ({limit:,}): ask for fewer layers or "
                                f"heads{smaller}", "layers")  # fmt: skip
        return _explanation(result, body.encoding_format)

    async def compare_layers(
        self, request: web.Request, body: m.CompareLayersRequest
    ) -> m.LayerComparison:
        cosines, a, b = await self.ops.compare_layers(
            body.text_a, body.text_b, body.word, body.occurrence_a, body.occurrence_b,
            span_a=body.span_a and body.span_a.pair(), span_b=body.span_b and body.span_b.pair(),
            role=self._role(body.role), truncate=self._truncate(body.long_text),
        )  # fmt: skip
        return m.LayerComparison.model_construct(
            cosines=cosines, span_a=span_reply(a.start, a.end), span_b=span_reply(b.start, b.end)
        )
