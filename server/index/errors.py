"""The index's errors; each maps to one gRPC status in the API layer."""

from __future__ import annotations


class IndexStoreError(Exception):
    """Base of the index's errors."""


class CollectionNotFound(IndexStoreError, KeyError):
    """NOT_FOUND: no collection by that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CollectionExists(IndexStoreError):
    """ALREADY_EXISTS: a collection by that name exists."""


class IndexUnavailable(IndexStoreError):
    """UNAVAILABLE: the index backend (a Milvus server) cannot be reached right now."""


class DataDirInUse(IndexStoreError):
    """Another server holds the data directory (data_lock.py): refused at start."""


class StorageFull(IndexStoreError):
    """RESOURCE_EXHAUSTED: the disk that holds the store is full; nothing was stored."""


class IndexUnsupported(IndexStoreError):
    """FAILED_PRECONDITION: a valid request that this index cannot serve as it stands (its
    Milvus is too old for it, or the collection was made before the feature)."""


class IndexFailed(IndexStoreError):
    """INTERNAL: the index backend failed in a way that is neither an outage nor the
    request's fault. Deliberately mapped to no status: the API layer answers INTERNAL and
    logs the error with its cause."""


class IndexOutOfStep(IndexStoreError):
    """ABORTED: a write found the in-memory index out of step with the store, stored
    nothing, and could not bring the index back in step; a retry can succeed."""


class InvalidArgument(IndexStoreError, ValueError):
    """INVALID_ARGUMENT: a bad name, spec, document or query. param: the request field at
    fault, where it is one field (HTTP's error names it)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DimensionMismatch(InvalidArgument):
    """A vector whose dimension is not the collection's."""


class ModelMismatch(InvalidArgument):
    """Vectors from a model other than the one the collection was built with."""


class FilterError(InvalidArgument):
    """A metadata filter that does not parse."""
