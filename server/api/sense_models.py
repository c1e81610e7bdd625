"""The REST API of word senses as typed models: the requests and replies of /v1/senses,
/v1/inventories and a collection's occurrences and senses. Field names are the Python
SDK's; the limits are gRPC's (sense_ops.py, checks.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from embedsense.server.api.checks import MAX_OCCURRENCES
from embedsense.server.api.collection_models import NAME_PATTERN, CollectionRequest
from embedsense.server.api.http_inputs import Whole, whole_within
from embedsense.server.senses.method import MAX_SENSES

WORD = (
    "The word to look at, as written in text (its occurrence-th appearance); or give span. "
    "Found as written: a whole word where the script spaces its words ('apple' is not in "
    "'pineapple'), anywhere in a run of a script written without spaces (Chinese, Japanese, "
    "Thai...)."
)
SENSES = (
    'Sense label -> example sentences that use the word in that sense, e.g. {"fruit": '
    '["我喜欢吃苹果"], "company": ["苹果发布了新手机"]}. Omitted: the inventory\'s entry.'
)


class Span(CollectionRequest):
    start: Whole = Field(ge=0, description="The first character (Unicode code points).")
    end: Whole = Field(ge=0, description="One past the last character.")

    def pair(self) -> tuple[int, int]:
        return self.start, self.end


class OccurrenceRequest(CollectionRequest):
    text: str = Field(examples=["我喜欢吃苹果"], json_schema_extra={"x-limit": "inputs"})
    word: str = Field("", description=WORD, examples=["苹果"])
    span: Span | None = Field(None, description="Instead of word: its characters in text.")
    occurrence: Whole = Field(0, ge=0, description="Which appearance of word (0: the first).")

    def span_pair(self) -> tuple[int, int] | None:
        return None if self.span is None else self.span.pair()


# ------------------------------------------------------------------ disambiguate


class DisambiguateRequest(OccurrenceRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "我买了最新的苹果手机", "word": "苹果"}]}
    )
    senses: dict[str, list[str]] | None = Field(
        None, description=SENSES, json_schema_extra={"x-limit": "senses"}
    )
    inventory: str | None = Field(
        None, description='A stored inventory (not with senses). Omitted: "default".'
    )
    layers: list[Whole] | None = Field(
        None,
        description="Hidden states to average (0: the embeddings; negatives count from the "
        "end), each once. Omitted: the last layer.",
    )
    centre: bool = Field(True, description="Compare vectors centred on the word's mean.")
    with_sentence: bool = Field(
        True,
        description="Compare the sentence's vector too; false for a sentence that uses the "
        "word in two senses.",
    )


class SenseScore(BaseModel):
    label: str
    probability: float = Field(description="softmax(similarity / temperature) over the senses.")
    similarity: float = Field(description="Cosine to the sense's prototype.")


class SenseExample(BaseModel):
    label: str
    text: str
    similarity: float


class SpanReply(BaseModel):
    start: int
    end: int


def span_reply(start: int, end: int) -> SpanReply:
    """A reply's span, built without validation (the server's own numbers)."""
    return SpanReply.model_construct(start=start, end=end)


class DisambiguateResponse(BaseModel):
    label: str = Field(description="The most probable sense.")
    scores: list[SenseScore] = Field(description="Every sense, best first.")
    nearest: list[SenseExample] = Field(description="The closest examples, best first.")
    span: SpanReply = Field(description="The occurrence that was judged.")
    layers: list[int]
    centred: bool
    temperature: float
    with_sentence: bool


# ------------------------------------------------------------------ inventories

InventoryWords = dict[str, dict[str, list[str]]]


class CreateInventoryRequest(CollectionRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "fruit-or-firm",
        "words": {"苹果": {"fruit": ["我喜欢吃苹果"], "company": ["苹果发布了新手机"]}},
        "replace": True,
    }]})  # fmt: skip
    name: str = Field(
        pattern=NAME_PATTERN, description="1-64 of [A-Za-z0-9_.-], starting with a letter or digit."
    )
    words: InventoryWords = Field(
        description="Word -> sense label -> example sentences.",
        json_schema_extra={"x-limit": "words"},
        examples=[{"苹果": {"fruit": ["我喜欢吃苹果"], "company": ["苹果发布了新手机"]}}],
    )
    replace: bool = Field(False, description="Replace an inventory of that name (else 409).")


class Inventory(BaseModel):
    name: str
    builtin: bool = Field(description="Shipped with the server (read-only).")
    words: InventoryWords


class InventoryList(BaseModel):
    inventories: list[Inventory]


class DeletedInventory(BaseModel):
    deleted: str


# ------------------------------------------------------------------ a collection's senses


class SearchOccurrencesRequest(OccurrenceRequest):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "我买了最新的苹果手机", "word": "苹果", "k": 5}]}
    )
    k: Whole = Field(10, ge=1, le=MAX_OCCURRENCES)


class Occurrence(BaseModel):
    id: str = Field(description="The document's id.")
    text: str = Field(description="The document's whole text.")
    span: SpanReply
    score: float
    metadata: dict[str, Any]


class SearchOccurrencesResponse(BaseModel):
    occurrences: list[Occurrence] = Field(description="Best first.")
    compared: int = Field(description="How many of the word's occurrences were compared.")


SenseCount = whole_within(1, MAX_SENSES)


class InduceSensesRequest(CollectionRequest):
    model_config = ConfigDict(json_schema_extra={"examples": [{"word": "苹果", "max_k": 4}]})
    word: str = Field(examples=["苹果"])
    k: SenseCount | None = Field(
        None, description="How many senses; omitted: chosen by silhouette."
    )
    max_k: SenseCount | None = Field(
        None, description="The most senses the silhouette may choose (6)."
    )
    central: Whole = Field(
        3, ge=1, le=MAX_OCCURRENCES, description="The most central occurrences shown per sense."
    )


class InducedSense(BaseModel):
    size: int = Field(description="Its occurrences.")
    central: list[Occurrence] = Field(description="Its most central occurrences, best first.")


class InduceSensesResponse(BaseModel):
    senses: list[InducedSense] = Field(description="Largest first.")
    occurrences: int
    silhouette: float
