"""HTTP errors before they take an API's shape: one ApiError (status, message, kind, the field
at fault), made from whatever went wrong (a request check, a model's validation, the engine),
and the Dialect each API answers it in (openai_routes.py, tei_routes.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from embedsense.server.api.checks import BadRequest, ReplyTooLarge
from embedsense.server.engine import TextTooLong
from embedsense.server.index import FilterError, StorageFull

# gRPC statuses, as the service's error mapping gives them, to HTTP's.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class ApiError(Exception):
    """An HTTP error: its status, a message for the caller, a kind the dialects map (e.g.
    "too_long", "empty", "invalid_body"), and the request field at fault, if one is."""

    def __init__(self, status: int, message: str, kind: str = "", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers: dict[str, str] = {}  # e.g. a 405's Allow


class Dialect(Protocol):
    """How one API answers an error: its status (APIs differ: a text over the model's
    length is OpenAI's 400 and text-embeddings-inference's 413) and its JSON body, whose
    model `error_model` documents."""

    error_model: type[BaseModel]

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]: ...


def from_validation(err: ValidationError, tagged: bool = False) -> ApiError:
    """A request body that does not fit its model: the fields at fault and why. `tagged`: the
    model is a union of bodies, whose tag pydantic puts before each field's place."""
    problems = err.errors(include_url=False, include_input=False)
    if tagged:
        problems = [{**p, "loc": p["loc"][1:]} for p in problems]
    first = problems[0]["loc"] if problems else ()
    described = "; ".join(
        f"{'.'.join(map(str, p['loc'])) or 'body'}: {_why(p)}" for p in problems[:5]
    )
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return ApiError(422, described + more, "invalid_body", str(first[0]) if first else None)


def _why(problem: Mapping[str, Any]) -> str:
    # pydantic's "Extra inputs are not permitted" does not say that the name is at fault.
    if problem["type"] == "extra_forbidden":
        return "unknown field (a misspelling?); the request's fields are in /openapi.json"
    # pydantic's names the model's Python class ("a valid dictionary or instance of Span").
    if problem["type"] in ("model_type", "dict_type"):
        return "must be a JSON object"
    return problem["msg"]


def from_exception(
    err: BaseException, to_status: Callable[[BaseException], str | None]
) -> ApiError | None:
    """A domain error (a request check's, the engine's, the index's) as an ApiError; None for
    one nobody expected (a 500)."""
    if isinstance(err, BadRequest):
        return ApiError(400, str(err), err.kind, err.param)
    if isinstance(err, ReplyTooLarge):
        # gRPC's RESOURCE_EXHAUSTED, but not HTTP's 429: that says "retry later", and the
        # same request makes the same reply. 413: too large, ask for less.
        return ApiError(413, str(err), "reply_too_large", err.param)
    if isinstance(err, StorageFull):
        # Not 429 either: waiting does not free a disk. 507: the server cannot store it.
        return ApiError(507, str(err), "insufficient_storage")
    code = to_status(err)
    if code is None:
        return None
    if isinstance(err, TextTooLong):
        return ApiError(HTTP_STATUS[code], str(err), "too_long", "input")
    if isinstance(err, FilterError):  # every route takes its filter as "filter"
        return ApiError(HTTP_STATUS[code], str(err), code.lower(), "filter")
    return ApiError(HTTP_STATUS[code], str(err), code.lower(), getattr(err, "param", None))
