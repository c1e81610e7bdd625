"""Request messages built with errors that name their field: protobuf's own ("Value out of
range: 1000000000000", a bare UnicodeEncodeError for a lone surrogate) name none."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

INT_FIELDS = {  # what protobuf's integer fields carry; a value past it is its ValueError
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
}

SCALAR_KINDS = {  # what a field of each type takes: (one, a list of them, Python's types)
    **dict.fromkeys(INT_FIELDS, ("an integer", "integers", (int,))),
    FieldDescriptor.TYPE_STRING: ("a string", "strings", (str,)),
    FieldDescriptor.TYPE_FLOAT: ("a number", "numbers", (int, float)),
    FieldDescriptor.TYPE_DOUBLE: ("a number", "numbers", (int, float)),
    FieldDescriptor.TYPE_BOOL: ("True or False", "True or False values", (bool,)),
}


def message(kind: type[M], **fields: Any) -> M:
    """kind(**fields). Protobuf's own error for a value a field cannot hold ("Value out of
    range: 1000000000000") names no field; this one names it, and the range it can carry
    (the server checks its own, narrower limits on what arrives)."""
    try:
        return kind(**fields)
    except (ValueError, TypeError):
        for name, value in fields.items():
            try:
                kind(**{name: value})
            except UnicodeEncodeError:
                raise ValueError(_unsendable(name, value)) from None
            except (ValueError, TypeError) as wrong:
                field = kind.DESCRIPTOR.fields_by_name[name]
                if isinstance(wrong, ValueError) and field.type in INT_FIELDS:
                    low, high = INT_FIELDS[field.type]
                    wrong = ValueError(
                        f"out of the range its field can carry ({low:,} to {high:,})"
                    )
                elif isinstance(wrong, TypeError) and field.type in SCALAR_KINDS:
                    wrong = TypeError(_mistyped(field, value))
                raise type(wrong)(f"{name}={value!r:.80}: {wrong}") from None
        raise


def _mistyped(field: FieldDescriptor, value: Any) -> str:
    """What the field takes and what it got instead (protobuf's "bad argument type for
    built-in operation" says neither)."""
    one, many, types = SCALAR_KINDS[field.type]
    if not field.is_repeated:
        return f"expected {one}, got {_a(type(value).__name__)}"
    if isinstance(value, list | tuple):
        # bool is an int in Python, not to protobuf's integer and number fields.
        fits = [isinstance(x, types) and (bool in types or not isinstance(x, bool)) for x in value]
        if False in fits:
            odd = value[fits.index(False)]
            return f"expected a list of {many}, got a list holding {_a(type(odd).__name__)}"
    return f"expected a list of {many}, got {_a(type(value).__name__)}"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _unsendable(name: str, value: Any) -> str:
    """Which string of a field holds what no UTF-8 can (a lone surrogate), and where."""
    strings = {name: value} if isinstance(value, str) else {
        f"{name}[{i}]": s for i, s in enumerate(value) if isinstance(s, str)
    }  # fmt: skip
    for where, text in strings.items():
        try:
            text.encode()
        except UnicodeEncodeError as err:
            code = ord(text[err.start])
            return (
                f"{where}: lone surrogate U+{code:04X} at position {err.start}; no UTF-8 holds it"
            )
    return f"{name}: a string no UTF-8 holds"
