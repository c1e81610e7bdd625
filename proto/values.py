"""What texts and metadata may hold, for both sides: the server refuses the rest, and the CLI
checks a file against the same rules before it sends any of it.

- A text is Unicode text: no control character but tab, newline and carriage return, no
  lone UTF-16 surrogate (JSON's "\\ud800" escape decodes to one; the tokenizer cannot take
  it).
- Metadata is what every surface can store, filter on and send back exactly: a JSON object
  with string keys, at most MAX_METADATA_DEPTH levels deep; numbers finite (SQLite's JSON
  functions reject NaN, and then every filtered call on the collection fails), integers
  within 64 bits (filters compare them as such; HTTP's JSON encoder refuses more); strings
  and keys without U+0000 (SQLite's JSON functions end a string there, so {"a": "x"} would
  match "x\\u0000y") or a lone surrogate (no UTF-8 holds it). Filters compare with the same
  scalars, and ids (at most MAX_ID_LENGTH characters) follow the same rule for theirs.
- JSON written by hand (a filter, a patch, a file) gives each key of an object once: JSON
  keeps the last of a key given twice, so {"$gt": 1, "$gt": 0} would filter on $gt 0 unsaid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# Control characters (C0 and C1) other than tab, newline and carriage return, and lone
# surrogates. One search finds either.
CONTROL_CLASS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
REFUSED_IN_TEXT = re.compile(f"[{CONTROL_CLASS}\\ud800-\\udfff]")
# Levels of objects and arrays in metadata: HTTP's JSON encoder refuses past 254, Python's
# parser past about 1,000, and a filter reaches fields by dotted names.
MAX_METADATA_DEPTH = 32
MAX_ID_LENGTH = 256  # characters in a document id
# Where rounding to float32 gives infinity: halfway from its largest value to 2**128.
FLOAT32_ROUNDS_TO_INF = 2.0**128 - 2.0**103
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why a text is not Unicode text the model can take; None when it is."""
    found = REFUSED_IN_TEXT.search(text)
    if found is None:
        return None
    code = ord(found.group())
    what = "lone surrogate" if 0xD800 <= code <= 0xDFFF else "control character"
    return (
        f"{what} U+{code:04X} at position {found.start()}; only Unicode text is accepted, "
        "with tab, newline and carriage return the only control characters"
    )


def blank_problem(text: str) -> str | None:
    """Why a text to embed has nothing to embed (empty, or only whitespace: a blank line
    of Chinese text holds U+3000); None when it has something."""
    return None if text.strip() else "empty (or only whitespace); a text is needed"


def length_problem(text: str, max_chars: int) -> str | None:
    """Why a text is longer than a server takes (its max_text_chars, which Info reports; 0:
    a server that does not say); None when it is not."""
    if max_chars and len(text) > max_chars:
        return f"{len(text)} characters; the server takes at most {max_chars} (its max_text_chars)"
    return None


def threshold_problem(value: float) -> str | None:
    """Why this cannot be a search's score threshold (scores are float32, and so is the
    wire's threshold: a value past its range would arrive as infinity); None when it can."""
    past_range = "past float32's range (scores are float32)"
    try:
        number = float(value)
    except OverflowError:  # an int no float holds
        return past_range
    if not math.isfinite(number):
        return f"must be finite, got {value!r}"
    if abs(number) >= FLOAT32_ROUNDS_TO_INF:
        return f"{value!r} is {past_range}"
    return None


def json_kind(value: Any) -> str:
    """What a value is, in JSON's words (callers write JSON, not Python): "an array", "true",
    "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def scalar_problem(value: Any) -> str | None:
    """Why this scalar cannot be stored and compared exactly; None when it can (a list or
    an object is metadata_problem's to walk)."""
    if isinstance(value, str):
        return string_problem(value)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not a JSON number (numbers must be finite)"
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        return f"{value} is not a 64-bit integer (-2**63 to 2**63-1), as every number is kept"
    return None


def string_problem(text: str) -> str | None:
    """Why a metadata string, key or id cannot be stored and matched exactly; None when it
    can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    kind = "NUL" if char == "\x00" else "a lone surrogate, not a character"
    return (
        f"U+{ord(char):04X} ({kind}) at character {found.start()} of {text[:40]!r}: "
        "strings in metadata, ids and filters cannot hold it"
    )


def id_problem(doc_id: str) -> str | None:
    """Why this cannot be a document id; None when it can."""
    if not doc_id or len(doc_id) > MAX_ID_LENGTH:
        return f"a document id is a string of 1-{MAX_ID_LENGTH} characters, got {len(doc_id)}"
    return string_problem(doc_id)


def metadata_problem(metadata: Any, where: str) -> str | None:
    """Why this is not metadata every surface can store, filter on and send back, as
    "where.field: why"; None when it is."""
    if not isinstance(metadata, Mapping):
        return f"{where} must be a JSON object, got {type(metadata).__name__}"
    return _json_problem(metadata, where, 1)


def _json_problem(value: Any, where: str, depth: int) -> str | None:
    """`depth`: the level `value` would be if it is an object or an array (scalars are
    not a level)."""
    if isinstance(value, Mapping | list | tuple) and depth > MAX_METADATA_DEPTH:
        return f"{where}: nested more than {MAX_METADATA_DEPTH} levels deep"
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: keys are strings, not {type(key).__name__}"
            if (wrong := string_problem(key)) is not None:
                return f"{where}: a key: {wrong}"
            if (wrong := _json_problem(item, f"{where}.{key}", depth + 1)) is not None:
                return wrong
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (wrong := _json_problem(item, f"{where}[{i}]", depth + 1)) is not None:
                return wrong
        return None
    if (wrong := scalar_problem(value)) is not None:
        return f"{where}: {wrong}"
    if value is not None and not isinstance(value, bool | int | float | str):
        return f"{where}: {type(value).__name__} is not a JSON value"
    return None


class KeyTwice(ValueError):
    """A JSON object gave a key twice (`once_each`)."""


def once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook for JSON whose keys come once each: KeyTwice names the
    key given twice, where JSON keeps the last in silence."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise KeyTwice(f"{key!r} twice in one object (JSON keeps only the last)")
        seen.add(key)
    return dict(pairs)
