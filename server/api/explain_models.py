"""The REST API of explanations as typed models: /v1/explain (attention maps, what a word
attends to, one head's query and key vectors) and /v1/compare_layers (where in the stack two
uses of a word pull apart). Field names are the Python SDK's; the limits are gRPC's."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedsense.server.api.collection_models import CollectionRequest
from embedsense.server.api.http_inputs import Whole, whole_within
from embedsense.server.api.sense_models import OccurrenceRequest, Span, SpanReply

ROLE = (
    'The text read as a "query" (with the e5 prefix "query: ") or as a "passage", as stored '
    "documents are. Omitted: the server's --default-prompt-name (query unless set)."
)
LONG_TEXT = (
    'A text longer than the model takes: "error" (400) or "truncate" (its first window is '
    "explained; a word past it is still an error). Omitted: the server's --auto-truncate "
    '("error" unless set).'
)
ENCODING = (
    '"float": the tensors as nested lists of numbers; "base64": each as base64 of its '
    "little-endian float32 values, row-major, in the shape the field names (about half the "
    "size)."
)


LayerNumber = whole_within(1)  # 1-based; the model's count is checked by the explainer
HeadNumber = whole_within(0)  # 0-based


class NeuronRequest(CollectionRequest):
    layer: Whole = Field(ge=1, description="1-based, as in layers.")
    head: Whole = Field(ge=0, description="0-based, as in heads.")


class ExplainRequest(OccurrenceRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text": "我买了最新的苹果手机", "word": "苹果", "layers": [12], "heads": [0, 1],
    }]})  # fmt: skip
    layers: list[LayerNumber] | None = Field(
        None,
        min_length=1,
        description="The layers to map (1-based), each once; the reply has them in ascending "
        "order. Omitted: all.",
    )
    heads: list[HeadNumber] | None = Field(
        None,
        min_length=1,
        description="The heads to map (0-based), each once; the reply has them in ascending "
        "order. Omitted: all.",
    )
    role: Literal["query", "passage"] | None = Field(None, description=ROLE)
    long_text: Literal["error", "truncate"] | None = Field(None, description=LONG_TEXT)
    neuron: NeuronRequest | None = Field(
        None,
        description="One head whose query vectors (the word's tokens', or every token's "
        "without a word) and key vectors (every token's) to return too.",
    )
    encoding_format: Literal["float", "base64"] = Field("float", description=ENCODING)


class Tokens(BaseModel):
    tokens: list[str]
    ids: list[int]
    offsets: list[tuple[int, int]] = Field(
        description="Each token's characters in the text, [start, end), counted in Unicode "
        "code points (in JavaScript, index Array.from(text), not the string's UTF-16 units); "
        "[0, 0] for specials."
    )
    from_text: list[bool] = Field(description="False for specials and the model's prefix.")


class TokenWeight(BaseModel):
    token: int = Field(description="An index into tokens.")
    weight: float


class Focus(BaseModel):
    layer: int = Field(description="1-based.")
    head: int | None = Field(description="0-based; null: the mean over the heads.")
    tokens: list[TokenWeight] = Field(description="What the word attends to, heaviest first.")


class Neuron(BaseModel):
    layer: int
    head: int
    query_tokens: list[int] = Field(description="The word's tokens; with no word, every token.")
    queries: list[list[float]] | str = Field(
        description="(len(query_tokens), head_size): after the query projection, before the "
        "scaled dot product."
    )
    keys: list[list[float]] | str = Field(description="(T, head_size): every token's key.")


class ExplainResponse(BaseModel):
    tokens: Tokens
    layers: list[int] = Field(description="1-based, ascending: the order of attentions.")
    heads: list[int] = Field(description="0-based, ascending: the order of attentions.")
    attentions: list[list[list[list[float]]]] | str = Field(
        description="(len(layers), len(heads), T, T), T = len(tokens.tokens): row i is what "
        "token i attends to; each row sums to 1."
    )
    span: SpanReply | None = Field(
        description="The word's characters (Unicode code points, as offsets); null without one."
    )
    target_tokens: list[int] = Field(description="The tokens that cover the word.")
    focus: list[Focus] = Field(
        description="With a word, per layer: the mean over the heads, then each head."
    )
    max_attention_values: int = Field(
        description="The most attention values a reply holds: a long text asks for fewer "
        "layers or heads."
    )
    truncated_tokens: int = Field(description='Past the first window (long_text "truncate").')
    neuron: Neuron | None = None


class CompareLayersRequest(CollectionRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "text_a": "我喜欢吃苹果", "text_b": "苹果发布了新手机", "word": "苹果",
    }]})  # fmt: skip
    text_a: str = Field(json_schema_extra={"x-limit": "inputs"})
    text_b: str = Field(json_schema_extra={"x-limit": "inputs"})
    word: str = Field(
        "",
        description="Found in both texts as written: a whole word where the script spaces its "
        "words, anywhere in a run of a script written without spaces (Chinese, Japanese, "
        "Thai...). May be left out where span_a and span_b are both given.",
    )
    occurrence_a: Whole = Field(0, ge=0, description="Which appearance in text_a (0: the first).")
    occurrence_b: Whole = Field(0, ge=0, description="Which appearance in text_b.")
    span_a: Span | None = Field(
        None,
        description="Instead of the word's occurrence in text_a: its characters there (a word "
        "written inside a longer one, say).",
    )
    span_b: Span | None = Field(None, description="The same in text_b.")
    role: Literal["query", "passage"] | None = Field(None, description=ROLE)
    long_text: Literal["error", "truncate"] | None = Field(None, description=LONG_TEXT)


class LayerComparison(BaseModel):
    cosines: list[float] = Field(
        description="The word's cosine across the texts at each hidden state: 0 is the "
        "embeddings, then each layer."
    )
    span_a: SpanReply
    span_b: SpanReply
