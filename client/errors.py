"""The client's exceptions: one per gRPC status a caller may want to handle on its own."""

from __future__ import annotations

import grpc

from embedsense.proto.metadata import (
    OVERLOADED_TRAILER,
    REPLY_TOO_LARGE_TRAILER,
    RETRY_PUSHBACK_TRAILER,
)


class EmbedSenseError(Exception):
    """A failed call: `code` is the gRPC status, `message` the server's explanation.

    A failed `upsert` also says what it stored (None on other calls): `stored_ids`, the ids
    of the documents that are stored, one per stored input document, in input order (an id
    whose last write failed is not: its earlier text may be stored, not the one sent); and
    `document_ids`, every input document's id (those read, for an iterator), the ids the
    client made included: sending the same documents again stores none of them twice.
    """

    stored_ids: list[str] | None = None
    document_ids: list[str] | None = None

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidArgument(EmbedSenseError):
    pass


class NotFound(EmbedSenseError):
    pass


class AlreadyExists(EmbedSenseError):
    pass


class FailedPrecondition(EmbedSenseError):
    pass


class ResourceExhausted(EmbedSenseError):
    """The server is overloaded (retried with backoff, then raised), or a message is over
    the size limit (never retried: send less per call). `reply_too_large`: the server's
    reply would have been over its limit (ask for fewer documents or hits)."""

    reply_too_large: bool = False


class DeadlineExceeded(EmbedSenseError):
    pass


class Unauthenticated(EmbedSenseError):
    pass


class Unavailable(EmbedSenseError):
    """The server cannot be reached, or it answered that it cannot serve the call now (what
    it needs, such as its Milvus, is down): retried with backoff, then raised.
    `server_answered` tells the two apart."""

    server_answered: bool = False


class Unimplemented(EmbedSenseError):
    pass


class Aborted(EmbedSenseError):
    """A write the server stopped before it stored anything (its index out of step): the
    SDK retries it, as UNAVAILABLE."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.ABORTED: Aborted,
}


def closed_while_running(client: str) -> RuntimeError:
    """What a call raises when its `client` ("Client", "AsyncClient") is closed while it
    runs: a RuntimeError, as a call made after close() raises. gRPC's own was a CANCELLED
    that no class here stands for, or in asyncio a CancelledError, though no one had
    cancelled the caller's task."""
    return RuntimeError(f"this {client} was closed while the call ran: make a new one")


def cancelled(error: grpc.RpcError) -> bool:
    """Whether the call was cancelled on this side: by its caller, or by its channel's
    close()."""
    code = error.code() if hasattr(error, "code") else None
    return code is grpc.StatusCode.CANCELLED


def retryable(error: grpc.RpcError) -> bool:
    """UNAVAILABLE, ABORTED (a write stopped before it stored anything), and
    RESOURCE_EXHAUSTED when the server says it is overloaded: they mean "not now", never
    "not this"."""
    code = error.code() if hasattr(error, "code") else None
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED):
        return True
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and _has_trailer(error, OVERLOADED_TRAILER)


def _has_trailer(error: grpc.RpcError, name: str) -> bool:
    if not hasattr(error, "trailing_metadata"):
        return False
    return any(key == name for key, _ in error.trailing_metadata() or ())


def reported(error: grpc.RpcError, earlier: grpc.RpcError | None) -> EmbedSenseError:
    """The error a call raises: its last attempt's, unless that attempt only ran out of the
    time an earlier one, which said "not now" and why, had left: then the earlier's."""
    code = error.code() if hasattr(error, "code") else None
    if earlier is not None and code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return from_rpc_error(earlier)
    return from_rpc_error(error)


def from_rpc_error(error: grpc.RpcError) -> EmbedSenseError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    raised = _BY_CODE.get(code, EmbedSenseError)(code, details or "")
    if isinstance(raised, Unavailable):
        raised.server_answered = _has_trailer(error, RETRY_PUSHBACK_TRAILER)
    if isinstance(raised, ResourceExhausted):
        raised.reply_too_large = _has_trailer(error, REPLY_TOO_LARGE_TRAILER)
    return raised
