"""The vector index: collections of documents, durable in SQLite, searched with FAISS."""

from embedsense.server.index.backend import (
    BackendSettings,
    CollectionBackend,
    IndexBackend,
    open_backend,
)
from embedsense.server.index.catalog import Catalog
from embedsense.server.index.collection import Collection, CollectionInfo
from embedsense.server.index.errors import (
    CollectionExists,
    CollectionNotFound,
    DataDirInUse,
    DimensionMismatch,
    FilterError,
    IndexFailed,
    IndexOutOfStep,
    IndexStoreError,
    IndexUnavailable,
    IndexUnsupported,
    InvalidArgument,
    ModelMismatch,
    StorageFull,
)
from embedsense.server.index.hits import Hit
from embedsense.server.index.store import Document, Token

__all__ = [
    "DataDirInUse",
    "BackendSettings",
    "CollectionBackend",
    "IndexBackend",
    "open_backend",
    "Catalog",
    "Collection",
    "CollectionExists",
    "CollectionInfo",
    "CollectionNotFound",
    "DimensionMismatch",
    "Document",
    "FilterError",
    "Hit",
    "IndexFailed",
    "IndexOutOfStep",
    "IndexStoreError",
    "IndexUnavailable",
    "IndexUnsupported",
    "InvalidArgument",
    "StorageFull",
    "ModelMismatch",
    "Token",
]
