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

from embedsense.proto.values import json_kind

TokenId = Annotated[int, Field(ge=0)]
INPUTS_EXPECTED = "a string, a list of strings, a list of token ids, or a list of such lists"


class RequestModel(BaseModel):
    """Strict types; unknown fields are ignored, as both APIs' servers ignore them."""

    model_config = ConfigDict(strict=True, extra="ignore")


def _is_id(value: Any) -> bool:
    return type(value) is int and value >= 0


def _refuse(expected: str, value: Any, texts: bool = True, ids: bool = True) -> PydanticCustomError:
    """The error for a value that fits none of the forms (`texts`, `ids`: whether strings,
    token ids and lists of them are among them): a list's first item at fault, named."""
    got = f"got {json_kind(value)}" if not isinstance(value, list) else None
    if got is None:
        strings = texts and any(isinstance(x, str) for x in value)
        mixed = "strings and token ids mixed" if strings else "token ids and lists of them mixed"
        got = _first_misfit(value, texts, ids) or mixed
    return PydanticCustomError(
        "inputs", "expected {expected}; {got}", {"expected": expected, "got": got}
    )


def _first_misfit(items: list, texts: bool, ids: bool) -> str | None:
    """The first item that fits no form, by its place: "item [0][1] is -1, not a token id"
    (the error's location names the field)."""
    for i, item in enumerate(items):
        if isinstance(item, list) and ids:
            wrong = next((j for j, x in enumerate(item) if not _is_id(x)), None)
            if wrong is not None:
                return f"item [{i}][{wrong}] is {_misfit(item[wrong], ids)}"
        elif not (isinstance(item, str) and texts or _is_id(item) and ids):
            return f"item [{i}] is {_misfit(item, ids)}"
    return None


def _misfit(value: Any, ids: bool) -> str:
    if ids and type(value) is int:
        return f"{value}, not a token id (ids are 0 or more)"
    return json_kind(value)


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
    raise _refuse("a string or a list of strings", value, ids=False)


def ids_of(value: Any) -> list[list[int]]:
    """Token ids, or lists of token ids, as a list of lists."""
    if isinstance(value, list) and all(_is_id(x) for x in value):
        return [value] if value else []
    if isinstance(value, list) and all(
        isinstance(x, list) and all(_is_id(i) for i in x) for x in value
    ):
        return value
    raise _refuse("a list of token ids or a list of such lists", value, texts=False)


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
