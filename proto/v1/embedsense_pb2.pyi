from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_QUERY: _ClassVar[Role]
    ROLE_PASSAGE: _ClassVar[Role]

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_BULK: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_QUERY: _ClassVar[Priority]

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_DEFAULT: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_CLS: _ClassVar[Pooling]

class LongText(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LONG_TEXT_ERROR: _ClassVar[LongText]
    LONG_TEXT_TRUNCATE: _ClassVar[LongText]
    LONG_TEXT_WINDOWS: _ClassVar[LongText]

class MetadataMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METADATA_MERGE: _ClassVar[MetadataMode]
    METADATA_REPLACE: _ClassVar[MetadataMode]
ROLE_UNSPECIFIED: Role
ROLE_QUERY: Role
ROLE_PASSAGE: Role
PRIORITY_UNSPECIFIED: Priority
PRIORITY_BULK: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_QUERY: Priority
POOLING_DEFAULT: Pooling
POOLING_MEAN: Pooling
POOLING_CLS: Pooling
LONG_TEXT_ERROR: LongText
LONG_TEXT_TRUNCATE: LongText
LONG_TEXT_WINDOWS: LongText
METADATA_MERGE: MetadataMode
METADATA_REPLACE: MetadataMode

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("version", "model", "dim", "device", "dtype", "max_tokens", "num_layers", "max_batch_tokens", "max_queued_tokens", "max_concurrent_requests", "max_texts_per_request", "max_message_bytes", "auth_required", "index_backend", "replica", "dtype_reason", "max_text_chars")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    INDEX_BACKEND_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: str
    dim: int
    device: str
    dtype: str
    max_tokens: int
    num_layers: int
    max_batch_tokens: int
    max_queued_tokens: int
    max_concurrent_requests: int
    max_texts_per_request: int
    max_message_bytes: int
    auth_required: bool
    index_backend: str
    replica: str
    dtype_reason: str
    max_text_chars: int
    def __init__(self, version: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., max_tokens: _Optional[int] = ..., num_layers: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_queued_tokens: _Optional[int] = ..., max_concurrent_requests: _Optional[int] = ..., max_texts_per_request: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., auth_required: _Optional[bool] = ..., index_backend: _Optional[str] = ..., replica: _Optional[str] = ..., dtype_reason: _Optional[str] = ..., max_text_chars: _Optional[int] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("text", "role")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    text: str
    role: Role
    def __init__(self, text: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("tokens", "ids", "starts", "ends", "from_text")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    STARTS_FIELD_NUMBER: _ClassVar[int]
    ENDS_FIELD_NUMBER: _ClassVar[int]
    FROM_TEXT_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    ids: _containers.RepeatedScalarFieldContainer[int]
    starts: _containers.RepeatedScalarFieldContainer[int]
    ends: _containers.RepeatedScalarFieldContainer[int]
    from_text: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, tokens: _Optional[_Iterable[str]] = ..., ids: _Optional[_Iterable[int]] = ..., starts: _Optional[_Iterable[int]] = ..., ends: _Optional[_Iterable[int]] = ..., from_text: _Optional[_Iterable[bool]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "role", "sentence_vectors", "token_vectors", "layers", "no_normalize", "pooling", "long_text", "priority")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SENTENCE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NO_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    LONG_TEXT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    role: Role
    sentence_vectors: bool
    token_vectors: bool
    layers: _containers.RepeatedScalarFieldContainer[int]
    no_normalize: bool
    pooling: Pooling
    long_text: LongText
    priority: Priority
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., role: _Optional[_Union[Role, str]] = ..., sentence_vectors: _Optional[bool] = ..., token_vectors: _Optional[bool] = ..., layers: _Optional[_Iterable[int]] = ..., no_normalize: _Optional[bool] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., long_text: _Optional[_Union[LongText, str]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class TokenVectors(_message.Message):
    __slots__ = ("tokens", "vectors", "windows", "truncated_tokens")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenizeResponse
    vectors: Tensor
    windows: int
    truncated_tokens: int
    def __init__(self, tokens: _Optional[_Union[TokenizeResponse, _Mapping]] = ..., vectors: _Optional[_Union[Tensor, _Mapping]] = ..., windows: _Optional[int] = ..., truncated_tokens: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("sentence_vectors", "token_vectors")
    SENTENCE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_VECTORS_FIELD_NUMBER: _ClassVar[int]
    sentence_vectors: Tensor
    token_vectors: _containers.RepeatedCompositeFieldContainer[TokenVectors]
    def __init__(self, sentence_vectors: _Optional[_Union[Tensor, _Mapping]] = ..., token_vectors: _Optional[_Iterable[_Union[TokenVectors, _Mapping]]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "index", "metric", "store_tokens", "ef_search", "nprobe", "dim", "exist_ok")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    STORE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    EXIST_OK_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: str
    metric: str
    store_tokens: bool
    ef_search: int
    nprobe: int
    dim: int
    exist_ok: bool
    def __init__(self, name: _Optional[str] = ..., index: _Optional[str] = ..., metric: _Optional[str] = ..., store_tokens: _Optional[bool] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., dim: _Optional[int] = ..., exist_ok: _Optional[bool] = ...) -> None: ...

class CollectionRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "model", "dim", "metric", "index", "store_tokens", "count", "created_at", "trained", "training_size", "ef_search", "nprobe", "tokens", "bytes_per_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STORE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SIZE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    dim: int
    metric: str
    index: str
    store_tokens: bool
    count: int
    created_at: float
    trained: bool
    training_size: int
    ef_search: int
    nprobe: int
    tokens: int
    bytes_per_token: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., index: _Optional[str] = ..., store_tokens: _Optional[bool] = ..., count: _Optional[int] = ..., created_at: _Optional[float] = ..., trained: _Optional[bool] = ..., training_size: _Optional[int] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., tokens: _Optional[int] = ..., bytes_per_token: _Optional[float] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "text", "metadata_json", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata_json: str
    vector: Tensor
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "documents", "priority")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    priority: Priority
    def __init__(self, collection: _Optional[str] = ..., documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "ids")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, upserted: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class StoredDocument(_message.Message):
    __slots__ = ("id", "text", "metadata_json", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    metadata_json: str
    vector: Tensor
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("documents", "missing")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[StoredDocument]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, documents: _Optional[_Iterable[_Union[StoredDocument, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids", "filter_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter_json: str
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., filter_json: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "text", "vector", "k", "filter_json", "ef_search", "nprobe", "priority", "score_threshold", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    vector: Tensor
    k: int
    filter_json: str
    ef_search: int
    nprobe: int
    priority: Priority
    score_threshold: float
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ..., k: _Optional[int] = ..., filter_json: _Optional[str] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ..., score_threshold: _Optional[float] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "score", "text", "metadata_json", "vector")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    text: str
    metadata_json: str
    vector: Tensor
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., metadata_json: _Optional[str] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("collection", "texts", "vectors", "k", "filter_json", "ef_search", "nprobe", "priority", "score_threshold", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    vectors: Tensor
    k: int
    filter_json: str
    ef_search: int
    nprobe: int
    priority: Priority
    score_threshold: float
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Union[Tensor, _Mapping]] = ..., k: _Optional[int] = ..., filter_json: _Optional[str] = ..., ef_search: _Optional[int] = ..., nprobe: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ..., score_threshold: _Optional[float] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class HitList(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[HitList]
    def __init__(self, results: _Optional[_Iterable[_Union[HitList, _Mapping]]] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter_json")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter_json: str
    def __init__(self, collection: _Optional[str] = ..., filter_json: _Optional[str] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ScrollRequest(_message.Message):
    __slots__ = ("collection", "filter_json", "limit", "cursor", "with_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_JSON_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter_json: str
    limit: int
    cursor: str
    with_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., filter_json: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ..., with_vectors: _Optional[bool] = ...) -> None: ...

class ScrollResponse(_message.Message):
    __slots__ = ("documents", "next_cursor")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[StoredDocument]
    next_cursor: str
    def __init__(self, documents: _Optional[_Iterable[_Union[StoredDocument, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class UpdateMetadataRequest(_message.Message):
    __slots__ = ("collection", "ids", "patch_json", "mode")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PATCH_JSON_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    patch_json: str
    mode: MetadataMode
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., patch_json: _Optional[str] = ..., mode: _Optional[_Union[MetadataMode, str]] = ...) -> None: ...

class UpdateMetadataResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class Span(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class SenseExamples(_message.Message):
    __slots__ = ("examples",)
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, examples: _Optional[_Iterable[str]] = ...) -> None: ...

class DisambiguateRequest(_message.Message):
    __slots__ = ("text", "word", "span", "occurrence", "senses", "inventory", "layers", "no_centring", "word_only", "priority")
    class SensesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SenseExamples
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SenseExamples, _Mapping]] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    SENSES_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    NO_CENTRING_FIELD_NUMBER: _ClassVar[int]
    WORD_ONLY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    text: str
    word: str
    span: Span
    occurrence: int
    senses: _containers.MessageMap[str, SenseExamples]
    inventory: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    no_centring: bool
    word_only: bool
    priority: Priority
    def __init__(self, text: _Optional[str] = ..., word: _Optional[str] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., occurrence: _Optional[int] = ..., senses: _Optional[_Mapping[str, SenseExamples]] = ..., inventory: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., no_centring: _Optional[bool] = ..., word_only: _Optional[bool] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class SenseScore(_message.Message):
    __slots__ = ("label", "probability", "similarity")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    similarity: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ..., similarity: _Optional[float] = ...) -> None: ...

class SenseExample(_message.Message):
    __slots__ = ("label", "text", "similarity")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    text: str
    similarity: float
    def __init__(self, label: _Optional[str] = ..., text: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class DisambiguateResponse(_message.Message):
    __slots__ = ("label", "scores", "nearest", "span", "layers", "centred", "temperature", "with_sentence")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NEAREST_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CENTRED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    WITH_SENTENCE_FIELD_NUMBER: _ClassVar[int]
    label: str
    scores: _containers.RepeatedCompositeFieldContainer[SenseScore]
    nearest: _containers.RepeatedCompositeFieldContainer[SenseExample]
    span: Span
    layers: _containers.RepeatedScalarFieldContainer[int]
    centred: bool
    temperature: float
    with_sentence: bool
    def __init__(self, label: _Optional[str] = ..., scores: _Optional[_Iterable[_Union[SenseScore, _Mapping]]] = ..., nearest: _Optional[_Iterable[_Union[SenseExample, _Mapping]]] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., layers: _Optional[_Iterable[int]] = ..., centred: _Optional[bool] = ..., temperature: _Optional[float] = ..., with_sentence: _Optional[bool] = ...) -> None: ...

class WordSenses(_message.Message):
    __slots__ = ("senses",)
    class SensesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SenseExamples
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SenseExamples, _Mapping]] = ...) -> None: ...
    SENSES_FIELD_NUMBER: _ClassVar[int]
    senses: _containers.MessageMap[str, SenseExamples]
    def __init__(self, senses: _Optional[_Mapping[str, SenseExamples]] = ...) -> None: ...

class CreateInventoryRequest(_message.Message):
    __slots__ = ("name", "words", "replace")
    class WordsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: WordSenses
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[WordSenses, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    words: _containers.MessageMap[str, WordSenses]
    replace: bool
    def __init__(self, name: _Optional[str] = ..., words: _Optional[_Mapping[str, WordSenses]] = ..., replace: _Optional[bool] = ...) -> None: ...

class InventoryRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class InventoryInfo(_message.Message):
    __slots__ = ("name", "words", "builtin")
    class WordsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: WordSenses
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[WordSenses, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    words: _containers.MessageMap[str, WordSenses]
    builtin: bool
    def __init__(self, name: _Optional[str] = ..., words: _Optional[_Mapping[str, WordSenses]] = ..., builtin: _Optional[bool] = ...) -> None: ...

class ListInventoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInventoriesResponse(_message.Message):
    __slots__ = ("inventories",)
    INVENTORIES_FIELD_NUMBER: _ClassVar[int]
    inventories: _containers.RepeatedCompositeFieldContainer[InventoryInfo]
    def __init__(self, inventories: _Optional[_Iterable[_Union[InventoryInfo, _Mapping]]] = ...) -> None: ...

class DeleteInventoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Occurrence(_message.Message):
    __slots__ = ("id", "text", "span", "score", "metadata_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    span: Span
    score: float
    metadata_json: str
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., score: _Optional[float] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class SearchOccurrencesRequest(_message.Message):
    __slots__ = ("collection", "text", "word", "span", "occurrence", "k", "priority")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    collection: str
    text: str
    word: str
    span: Span
    occurrence: int
    k: int
    priority: Priority
    def __init__(self, collection: _Optional[str] = ..., text: _Optional[str] = ..., word: _Optional[str] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., occurrence: _Optional[int] = ..., k: _Optional[int] = ..., priority: _Optional[_Union[Priority, str]] = ...) -> None: ...

class SearchOccurrencesResponse(_message.Message):
    __slots__ = ("occurrences", "compared")
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    COMPARED_FIELD_NUMBER: _ClassVar[int]
    occurrences: _containers.RepeatedCompositeFieldContainer[Occurrence]
    compared: int
    def __init__(self, occurrences: _Optional[_Iterable[_Union[Occurrence, _Mapping]]] = ..., compared: _Optional[int] = ...) -> None: ...

class InduceSensesRequest(_message.Message):
    __slots__ = ("collection", "word", "k", "max_k", "central")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    CENTRAL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    word: str
    k: int
    max_k: int
    central: int
    def __init__(self, collection: _Optional[str] = ..., word: _Optional[str] = ..., k: _Optional[int] = ..., max_k: _Optional[int] = ..., central: _Optional[int] = ...) -> None: ...

class InducedSense(_message.Message):
    __slots__ = ("size", "central")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CENTRAL_FIELD_NUMBER: _ClassVar[int]
    size: int
    central: _containers.RepeatedCompositeFieldContainer[Occurrence]
    def __init__(self, size: _Optional[int] = ..., central: _Optional[_Iterable[_Union[Occurrence, _Mapping]]] = ...) -> None: ...

class InduceSensesResponse(_message.Message):
    __slots__ = ("senses", "occurrences", "silhouette")
    SENSES_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCES_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_FIELD_NUMBER: _ClassVar[int]
    senses: _containers.RepeatedCompositeFieldContainer[InducedSense]
    occurrences: int
    silhouette: float
    def __init__(self, senses: _Optional[_Iterable[_Union[InducedSense, _Mapping]]] = ..., occurrences: _Optional[int] = ..., silhouette: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("text", "word", "span", "occurrence", "layers", "heads", "role", "truncate", "neuron")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    text: str
    word: str
    span: Span
    occurrence: int
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    role: Role
    truncate: bool
    neuron: NeuronRequest
    def __init__(self, text: _Optional[str] = ..., word: _Optional[str] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., occurrence: _Optional[int] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., role: _Optional[_Union[Role, str]] = ..., truncate: _Optional[bool] = ..., neuron: _Optional[_Union[NeuronRequest, _Mapping]] = ...) -> None: ...

class NeuronRequest(_message.Message):
    __slots__ = ("layer", "head")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ...) -> None: ...

class Neuron(_message.Message):
    __slots__ = ("layer", "head", "query_tokens", "queries", "keys")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    QUERY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    query_tokens: _containers.RepeatedScalarFieldContainer[int]
    queries: Tensor
    keys: Tensor
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., query_tokens: _Optional[_Iterable[int]] = ..., queries: _Optional[_Union[Tensor, _Mapping]] = ..., keys: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class TokenWeight(_message.Message):
    __slots__ = ("token", "weight")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    token: int
    weight: float
    def __init__(self, token: _Optional[int] = ..., weight: _Optional[float] = ...) -> None: ...

class Focus(_message.Message):
    __slots__ = ("layer", "head", "tokens")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    head: int
    tokens: _containers.RepeatedCompositeFieldContainer[TokenWeight]
    def __init__(self, layer: _Optional[int] = ..., head: _Optional[int] = ..., tokens: _Optional[_Iterable[_Union[TokenWeight, _Mapping]]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("tokens", "layers", "heads", "attentions", "span", "target_tokens", "focus", "max_attention_values", "neuron", "truncated_tokens")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ATTENTIONS_FIELD_NUMBER: _ClassVar[int]
    SPAN_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FOCUS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTENTION_VALUES_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: TokenizeResponse
    layers: _containers.RepeatedScalarFieldContainer[int]
    heads: _containers.RepeatedScalarFieldContainer[int]
    attentions: Tensor
    span: Span
    target_tokens: _containers.RepeatedScalarFieldContainer[int]
    focus: _containers.RepeatedCompositeFieldContainer[Focus]
    max_attention_values: int
    neuron: Neuron
    truncated_tokens: int
    def __init__(self, tokens: _Optional[_Union[TokenizeResponse, _Mapping]] = ..., layers: _Optional[_Iterable[int]] = ..., heads: _Optional[_Iterable[int]] = ..., attentions: _Optional[_Union[Tensor, _Mapping]] = ..., span: _Optional[_Union[Span, _Mapping]] = ..., target_tokens: _Optional[_Iterable[int]] = ..., focus: _Optional[_Iterable[_Union[Focus, _Mapping]]] = ..., max_attention_values: _Optional[int] = ..., neuron: _Optional[_Union[Neuron, _Mapping]] = ..., truncated_tokens: _Optional[int] = ...) -> None: ...

class CompareLayersRequest(_message.Message):
    __slots__ = ("text_a", "text_b", "word", "occurrence_a", "occurrence_b", "truncate", "role", "span_a", "span_b")
    TEXT_A_FIELD_NUMBER: _ClassVar[int]
    TEXT_B_FIELD_NUMBER: _ClassVar[int]
    WORD_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_A_FIELD_NUMBER: _ClassVar[int]
    OCCURRENCE_B_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SPAN_A_FIELD_NUMBER: _ClassVar[int]
    SPAN_B_FIELD_NUMBER: _ClassVar[int]
    text_a: str
    text_b: str
    word: str
    occurrence_a: int
    occurrence_b: int
    truncate: bool
    role: Role
    span_a: Span
    span_b: Span
    def __init__(self, text_a: _Optional[str] = ..., text_b: _Optional[str] = ..., word: _Optional[str] = ..., occurrence_a: _Optional[int] = ..., occurrence_b: _Optional[int] = ..., truncate: _Optional[bool] = ..., role: _Optional[_Union[Role, str]] = ..., span_a: _Optional[_Union[Span, _Mapping]] = ..., span_b: _Optional[_Union[Span, _Mapping]] = ...) -> None: ...

class CompareLayersResponse(_message.Message):
    __slots__ = ("cosines", "span_a", "span_b")
    COSINES_FIELD_NUMBER: _ClassVar[int]
    SPAN_A_FIELD_NUMBER: _ClassVar[int]
    SPAN_B_FIELD_NUMBER: _ClassVar[int]
    cosines: _containers.RepeatedScalarFieldContainer[float]
    span_a: Span
    span_b: Span
    def __init__(self, cosines: _Optional[_Iterable[float]] = ..., span_a: _Optional[_Union[Span, _Mapping]] = ..., span_b: _Optional[_Union[Span, _Mapping]] = ...) -> None: ...
