"""What both HTTP APIs' request models share: a strict base (JSON's true is not 1, "yes" is
not true), and the input fields, validated in one pass over the value. A union of list types
validated member by member would build an error for every item of a long list that is not
the member's (a million errors for a million ids); these look at each item once and say
what was expected.

`x-limit` marks a field whose size the server's limits bound; openapi.py writes the limits
into the published schema (the checks in checks.py enforce them, for gRPC too)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator
from pydantic_core import PydanticCustomError

from embedsense.proto.values import json_kind

# Past 2**53 a float's integer is not the number written (9007199254740993.0 reads as ...992).
EXACT_FLOAT_INTEGERS = 2**53


def _whole(value: Any) -> Any:
    """A number JSON Schema counts as an integer, written with a point (5.0), as an int;
    anything else as it is, for the strict int check to refuse."""
    if type(value) is float and value.is_integer() and abs(value) < EXACT_FLOAT_INTEGERS:
        return int(value)
    return value


# An integer field: JSON Schema's "integer" is any number with no fraction, 5.0 too.
Whole = Annotated[int, BeforeValidator(_whole)]
TokenId = Annotated[int, Field(ge=0)]


def whole_within(low: int, high: int | None = None) -> Any:
    """A Whole from `low` to `high` (None: no top), for a field that may be null or a list's
    item: bounds placed after the validator come out in the schema as pydantic's ge and le,
    words JSON Schema lacks."""
    return Annotated[int, Field(ge=low, le=high), BeforeValidator(_whole)]


INPUTS_EXPECTED = "a string, a list of strings, a list of token ids, or a list of such lists"


class RequestModel(BaseModel):
    """Strict types; unknown fields are ignored, as both APIs' servers ignore them."""

    model_config = ConfigDict(strict=True, extra="ignore")


def _is_id(value: Any) -> bool:
    return type(_whole(value)) is int and value >= 0


def _ids(values: list) -> list[int]:
    """A list of token ids (each `_is_id`) as ints: 5.0 is the token 5."""
    return values if all(type(x) is int for x in values) else [int(x) for x in values]


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
    if ids and type(_whole(value)) is int:
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
        return [_ids(value)]
    if all(isinstance(x, list) and all(_is_id(i) for i in x) for x in value):
        return [_ids(x) for x in value]
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
        return [_ids(value)] if value else []
    if isinstance(value, list) and all(
        isinstance(x, list) and all(_is_id(i) for i in x) for x in value
    ):
        return [_ids(x) for x in value]
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
