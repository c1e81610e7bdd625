"""What both HTTP APIs' request models share: a strict base (JSON's true is not 1, "yes" is
not true), and the input fields, validated in one pass over the value. A union of list types
validated member by member would build an error for every item of a long list that is not
the member's (a million errors for a million ids); these look at each item once and say
what was expected.

`x-limit` marks a field whose size the server's limits bound; openapi.py writes the limits
into the published schema (the checks in checks.py enforce them, for gRPC too)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

TokenId = Annotated[int, Field(ge=0)]
INPUTS_EXPECTED = "a string, a list of strings, a list of token ids, or a list of such lists"


class RequestModel(BaseModel):
    """Strict types; unknown fields are ignored, as both APIs' servers ignore them."""

    model_config = ConfigDict(strict=True, extra="ignore")


def _is_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def _refuse(expected: str, value: Any) -> PydanticCustomError:
    got = type(value).__name__ if not isinstance(value, list) else "a list of other things"
    return PydanticCustomError(
        "inputs", "expected {expected}; got {got}", {"expected": expected, "got": got}
    )


def inputs_of(value: Any) -> list[str] | list[list[int]]:
    """Texts, or token-id lists: a string, strings, token ids (one input), or lists of
    token ids; never a mix. A batch always (a single input becomes a list of one)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _refuse(INPUTS_EXPECTED, value)
    if not value:
        return []  # the checks name an empty batch
    if all(isinstance(x, str) for x in value):
        return value
    if all(_is_id(x) for x in value):
        return [value]
    if all(isinstance(x, list) and all(_is_id(i) for i in x) for x in value):
        return value
    raise _refuse(INPUTS_EXPECTED + " (not a mix)", value)


def texts_of(value: Any) -> list[str]:
    """A string or a list of strings, as a list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return value
    raise _refuse("a string or a list of strings", value)


def ids_of(value: Any) -> list[list[int]]:
    """Token ids, or lists of token ids, as a list of lists."""
    if isinstance(value, list) and all(_is_id(x) for x in value):
        return [value] if value else []
    if isinstance(value, list) and all(
        isinstance(x, list) and all(_is_id(i) for i in x) for x in value
    ):
        return value
    raise _refuse("a list of token ids or a list of such lists", value)


Inputs = Annotated[
    list[str] | list[list[int]],
    PlainValidator(
        inputs_of, json_schema_input_type=str | list[str] | list[TokenId] | list[list[TokenId]]
    ),
    Field(json_schema_extra={"x-limit": "inputs"}),
]
Texts = Annotated[
    list[str],
    PlainValidator(texts_of, json_schema_input_type=str | list[str]),
    Field(json_schema_extra={"x-limit": "inputs"}),
]
Ids = Annotated[
    list[list[int]],
    PlainValidator(ids_of, json_schema_input_type=list[TokenId] | list[list[TokenId]]),
    Field(json_schema_extra={"x-limit": "inputs"}),
]
