"""The client's exceptions: one per gRPC status a caller may want to handle on its own."""

from __future__ import annotations

import grpc


class EmbedSenseError(Exception):
    """A failed call: `code` is the gRPC status, `message` the server's explanation."""

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
    """The server is overloaded: retried with backoff, then raised."""


class DeadlineExceeded(EmbedSenseError):
    pass


class Unauthenticated(EmbedSenseError):
    pass


class Unavailable(EmbedSenseError):
    """The server cannot be reached or is shutting down: retried with backoff, then raised."""


class Unimplemented(EmbedSenseError):
    pass


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
}

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def from_rpc_error(error: grpc.RpcError) -> EmbedSenseError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return _BY_CODE.get(code, EmbedSenseError)(code, details or "")
