"""The REST API of collections and documents as typed models: the requests and replies of
/v1/collections/..., and its error body. Validation and the published OpenAPI document both
come from them; the limits are the ones gRPC has (collection_ops.py, checks.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

from embedsense.proto import MAX_SCROLL_PAGE
from embedsense.proto.values import MAX_ID_LENGTH, json_kind
from embedsense.server.api.collection_ops import DEFAULT_PAGE
from embedsense.server.api.http_inputs import RequestModel, Whole
from embedsense.server.index.validation import MAX_K

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
FILTER = (
    'A metadata filter (the grammar: docs/collections.md, Filters), e.g. {"lang": "zh"}, '
    '{"$or": [{"year": {"$gte": 2020}}, {"tags": {"$contains": "news"}}]}. '
    "Omitted: every document."
)


def _is_number(value: Any) -> bool:
    return type(value) is float or type(value) is int


def _refuse(expected: str, value: Any, nested: bool) -> PydanticCustomError:
    """The error for a value that is no vector, in JSON's words: a list's item at fault by
    its place ("item [1][0] is null")."""
    if not isinstance(value, list) or not value:
        got = "got an empty array" if isinstance(value, list) else f"got {json_kind(value)}"
    else:
        got = _first_misfit(value, nested)
    return PydanticCustomError("vectors", "expected {expected}; {got}",
                               {"expected": expected, "got": got})  # fmt: skip


def _first_misfit(items: list, nested: bool) -> str:
    """A list's first item at fault. `nested`: a list of vectors may be what was meant,
    as its first item being a list says."""
    if not (nested and isinstance(items[0], list)):
        for i, item in enumerate(items):
            if not _is_number(item):
                return f"item [{i}] is {json_kind(item)}"
    for i, item in enumerate(items):
        if not isinstance(item, list):
            return f"item [{i}] is {json_kind(item)}"
        if not item:
            return f"item [{i}] is an empty array"
        wrong = next((j for j, x in enumerate(item) if not _is_number(x)), None)
        if wrong is not None:
            return f"item [{i}][{wrong}] is {json_kind(item[wrong])}"
    return "got a list that is neither"  # not reached: called for a list that fits no form


def vector_of(value: Any) -> list[float]:
    """One vector: a list of numbers, looked at once (a union of list types would build an
    error per item for each member)."""
    if isinstance(value, list) and value and all(map(_is_number, value)):
        return value
    raise _refuse("a non-empty list of numbers", value, nested=False)


def vectors_of(value: Any) -> list[list[float]]:
    """One vector, or a list of them, as a list of vectors."""
    if isinstance(value, list) and value and all(map(_is_number, value)):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, list) and v and all(map(_is_number, v)) for v in value)
    ):
        return value
    raise _refuse("a vector (a list of numbers) or a non-empty list of vectors", value, nested=True)


# What the validators take, for the schema: no vector is empty, nor a list of them.
_NonEmpty = Annotated[list[float], Field(min_length=1)]
Vector = Annotated[list[float], PlainValidator(vector_of, json_schema_input_type=_NonEmpty)]
Vectors = Annotated[
    list[list[float]],
    PlainValidator(
        vectors_of,
        json_schema_input_type=_NonEmpty | Annotated[list[_NonEmpty], Field(min_length=1)],
    ),
]
Filter = dict[str, Any]


def one_of_two(extra: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """The schema of a field that is one of two alternatives (the model's oneOf requires
    one of them): its value when given, so no null branch and no null default; `extra`
    added."""

    def edit(schema: dict[str, Any]) -> None:
        schema.pop("default", None)
        if "anyOf" in schema:
            schema["anyOf"] = [s for s in schema["anyOf"] if s.get("type") != "null"]
        schema.update(extra)

    return edit


def _not_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError(
            "null", "null, which this field does not take: give a value, or leave it out"
        )
    return value


# A one_of_two field's value as sent: null, which its schema does not offer, is refused (a
# field left out is not validated, and stays None).
NotNull = BeforeValidator(_not_null)
DocumentId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class CollectionRequest(RequestModel):
    """Our own API's requests refuse fields they do not have (the OpenAI and TEI dialects
    ignore them, as those servers do): here a misspelled field would change what the call
    does and still answer 200 (a document's "meta" stored as no metadata, "mod": "replace"
    merging, "filtre" counting everything)."""

    model_config = ConfigDict(extra="forbid")  # merged with RequestModel's (strict)


# ------------------------------------------------------------------ collections


class CreateCollectionRequest(CollectionRequest):
    name: str = Field(
        pattern=NAME_PATTERN,
        description="1-64 of [A-Za-z0-9_.-], starting with a letter or digit.",
        examples=["news"],
    )
    index: str = Field(
        "Flat", description='A FAISS factory string: "Flat", "HNSW32", "IVF1024,PQ48"...'
    )
    metric: Literal["cosine", "ip", "l2"] = "cosine"
    store_tokens: bool = Field(
        False, description="Keep token vectors (for word-occurrence search)."
    )
    ef_search: Whole = Field(0, ge=0, le=65_536, description="HNSW search breadth (0: 64).")
    nprobe: Whole = Field(0, ge=0, le=65_536, description="IVF lists probed (0: 16).")
    dim: Whole = Field(
        0,
        ge=0,
        le=65_536,
        description="0: the served model's vectors (texts are embedded by the server). Given: "
        'a collection of vectors embedded elsewhere, of this dimension (model "external"): '
        "upsert vectors and search by vector; texts to embed are refused (400).",
    )
    exist_ok: bool = Field(
        False,
        description="true: a collection of this name made with these settings (index, metric, "
        "store_tokens and dim as given or at their defaults; ef_search and nprobe where given) "
        "is the answer, as if made now; one made with other settings is still 409, naming them.",
    )


class CollectionInfo(BaseModel):
    name: str
    model: str
    dim: int
    metric: str
    index: str
    store_tokens: bool
    count: int
    created_at: float = Field(description="Seconds since the epoch.")
    trained: bool = Field(description="False while a spec that needs training answers exactly.")
    training_size: int
    ef_search: int
    nprobe: int
    tokens: int
    bytes_per_token: float


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class Dropped(BaseModel):
    dropped: str


# ------------------------------------------------------------------ documents


class NewDocument(CollectionRequest):
    # A text to embed, or a vector (with a text to store beside it, or none).
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["text"]}, {"required": ["vector"]}]}
    )

    id: DocumentId | None = Field(
        None,
        description="Omitted: made from the text and metadata (a vector alone needs an id).",
    )
    text: str = Field(
        "",
        description="The text, embedded as a passage by the server; may be left out when "
        "`vector` is given (a text given with a vector is stored as it is, not embedded).",
        json_schema_extra=one_of_two({"x-limit": "inputs"}),
    )
    metadata: dict[str, Any] | None = Field(None, description="A JSON object.")
    vector: Annotated[Vector | None, NotNull] = Field(
        None,
        description="The document's vector, embedded elsewhere: its dimension must be the "
        "collection's (400 naming both).",
        json_schema_extra=one_of_two({}),
    )


class UpsertRequest(CollectionRequest):
    documents: list[NewDocument] = Field(
        description="Stored durably before the reply; an id given again replaces its document.",
        json_schema_extra={"x-limit": "inputs"},
    )


class UpsertResponse(BaseModel):
    upserted: int
    ids: list[str] = Field(description="In the order sent.")


class GetRequest(CollectionRequest):
    ids: list[DocumentId] = Field(json_schema_extra={"x-limit": "ids_or_none"})
    with_vectors: bool = False


class StoredDocument(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]
    vector: list[float] | None = Field(None, description="With with_vectors.")


class GetResponse(BaseModel):
    documents: list[StoredDocument] = Field(description="In the order asked, missing ids left out.")
    missing: list[str]


class DeleteRequest(CollectionRequest):
    ids: list[DocumentId] | None = Field(
        None,
        description="The documents to delete; or:",
        json_schema_extra={"x-limit": "ids_or_none"},
    )
    filter: Filter | None = Field(
        None,
        description="Delete every document matching it (not with ids; {} is refused: drop "
        "the collection to delete everything).",
    )


class DeleteResponse(BaseModel):
    deleted: int


class CountRequest(CollectionRequest):
    filter: Filter | None = Field(None, description=FILTER)


class CountResponse(BaseModel):
    count: int


class ScrollRequest(CollectionRequest):
    filter: Filter | None = Field(None, description=FILTER)
    limit: Whole = Field(DEFAULT_PAGE, ge=1, le=MAX_SCROLL_PAGE, description="Documents per page.")
    cursor: str | None = Field(
        None,
        description="The previous page's next_cursor, as it came; omitted: the first page. "
        "A document that exists and matches for the whole scroll comes exactly once; one "
        "added, removed or changed meanwhile may or may not; none twice. A cursor belongs "
        "to its filter.",
    )
    with_vectors: bool = False


class ScrollResponse(BaseModel):
    documents: list[StoredDocument] = Field(description="In id order.")
    next_cursor: str | None = Field(description="null: this was the last page.")


class UpdateMetadataRequest(CollectionRequest):
    ids: list[DocumentId] = Field(json_schema_extra={"x-limit": "ids"})
    patch: dict[str, Any] = Field(description="A JSON object.")
    mode: Literal["merge", "replace"] = Field(
        "merge",
        description="merge: the patch's top-level keys are set (null is stored as null); "
        "replace: the patch becomes the whole metadata.",
    )


class UpdateMetadataResponse(BaseModel):
    updated: int = Field(description="How many of the ids existed.")


class SearchRequest(CollectionRequest):
    # Query texts or query vectors: exactly one of the two.
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["query"]}, {"required": ["vector"]}]}
    )

    query: Annotated[str | list[str] | None, NotNull] = Field(
        None,
        description="A query text, or several (embedded together, as queries). Or give vector.",
        examples=["苹果手机"],
        json_schema_extra=one_of_two({"x-limit": "inputs"}),
    )
    vector: Annotated[Vectors | None, NotNull] = Field(
        None,
        description="A query vector, or a list of them.",
        json_schema_extra=one_of_two({}),
    )
    k: Whole = Field(10, ge=1, le=MAX_K)
    filter: Filter | None = Field(None, description=FILTER)
    ef_search: Whole = Field(0, ge=0, le=65_536, description="0: the collection's.")
    nprobe: Whole = Field(0, ge=0, le=65_536, description="0: the collection's.")
    score_threshold: float | None = Field(
        None,
        description="Only hits at least this near: score >= it (cosine, ip), squared L2 "
        "distance <= it (l2).",
    )
    with_vectors: bool = Field(False, description="Hits carry their stored vectors.")


class Hit(BaseModel):
    id: str
    score: float = Field(description="Cosine / inner product (higher is nearer), or squared L2.")
    text: str
    metadata: dict[str, Any]
    vector: list[float] | None = None


class SearchResponse(BaseModel):
    results: list[list[Hit]] = Field(description="A hit list per query, in order; best first.")


# ------------------------------------------------------------------ errors


class ErrorDetail(BaseModel):
    message: str
    code: str = Field(description="e.g. invalid_argument, not_found, already_exists")
    param: str | None = Field(description="The request field at fault, if one is.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
