"""Checks on requests before any work starts: each failure is a BadRequest, which the API
answers with INVALID_ARGUMENT and a message naming the field and the limit."""

from __future__ import annotations

import json
import re
from typing import Any

from embedsense.model import TextRole
from embedsense.model.pooling import Pooling
from embedsense.proto.v1 import embedsense_pb2 as pb


class BadRequest(ValueError):
    """A request field that is wrong before any work starts (INVALID_ARGUMENT)."""


ROLES = {pb.ROLE_QUERY: TextRole.QUERY, pb.ROLE_PASSAGE: TextRole.PASSAGE}
MAX_OCCURRENCES = 1000  # SearchOccurrences answers at most this many
POOLINGS = {pb.POOLING_DEFAULT: None, pb.POOLING_MEAN: Pooling.MEAN, pb.POOLING_CLS: Pooling.CLS}


# Control characters (C0 and C1) other than tab, newline and carriage return.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_text(text: str, field: str, max_chars: int) -> str:
    """A text the model can take: not empty, not over `max_chars`, no control characters."""
    if not text.strip():
        raise BadRequest(f"{field}: empty (or only whitespace); a text is needed")
    if len(text) > max_chars:
        raise BadRequest(
            f"{field}: {len(text)} characters; the limit is {max_chars} (max_text_chars)"
        )
    if (found := CONTROL.search(text)) is not None:
        raise BadRequest(
            f"{field}: control character U+{ord(found.group()):04X} at position "
            f"{found.start()}; only tab, newline and carriage return are accepted"
        )
    return text


LONG_TEXT = {pb.LONG_TEXT_ERROR: "error", pb.LONG_TEXT_TRUNCATE: "truncate",
             pb.LONG_TEXT_WINDOWS: "windows"}  # fmt: skip


def choice(table: dict[int, Any], value: int, field: str) -> Any:
    """An enum field's meaning; a number the contract does not define is the caller's error
    (proto3 lets any integer through)."""
    if value not in table:
        raise BadRequest(f"{field}: {value} is not one of {sorted(table)}")
    return table[value]


def role_of(value: int) -> TextRole:
    return TextRole.QUERY if value == pb.ROLE_UNSPECIFIED else choice(ROLES, value, "role")


def k_of(request: Any, default: int = 10) -> int:
    """k as sent; unset means the default, an explicit 0 is an error."""
    if not request.HasField("k"):
        return default
    if request.k == 0:
        raise BadRequest("k: must be at least 1")
    return request.k


def metadata_of(text: str, field: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(f"{field}: not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{field}: must be a JSON object, got {type(value).__name__}")
    return value


def span_of(request: Any) -> tuple[int, int] | None:
    return (request.span.start, request.span.end) if request.HasField("span") else None
