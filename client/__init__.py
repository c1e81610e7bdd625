"""The embedsense client SDK: needs grpcio, protobuf and numpy only (no torch, no faiss).

from embedsense.client import Client
with Client("127.0.0.1:50051") as c:
    c.create_collection("notes")
    c.upsert("notes", ["我喜欢吃苹果", "我买了最新的苹果手机"])
    c.search("notes", "水果", k=1)
"""

from embedsense.client._api import TLS, Retry
from embedsense.client.aio import AsyncClient
from embedsense.client.client import Client
from embedsense.client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    EmbedSenseError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from embedsense.client.types import (
    CollectionInfo,
    Disambiguation,
    Explanation,
    Focus,
    Hit,
    InducedSense,
    Induction,
    Info,
    Inventory,
    LayerComparison,
    Occurrence,
    Occurrences,
    SenseScore,
    StoredDocument,
    TokenEmbeddings,
    Tokens,
)

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "Client",
    "CollectionInfo",
    "DeadlineExceeded",
    "Disambiguation",
    "Explanation",
    "Focus",
    "EmbedSenseError",
    "FailedPrecondition",
    "Hit",
    "InducedSense",
    "Induction",
    "Info",
    "Inventory",
    "LayerComparison",
    "InvalidArgument",
    "NotFound",
    "Occurrence",
    "Occurrences",
    "ResourceExhausted",
    "Retry",
    "SenseScore",
    "StoredDocument",
    "TLS",
    "TokenEmbeddings",
    "Tokens",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Aborted",
]
