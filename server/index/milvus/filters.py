"""What the milvus backend filters on: metadata filters compiled to Milvus expressions, and
the character grams that find the documents a word occurs in.

Metadata: Milvus compares JSON values loosely (true == 1, a null equals a missing key, and a
`not` drops documents without the field), where our filter language is strict. So filters
run on a typed copy of the metadata: strings become "s:…", booleans "b:1"/"b:0", null
"null:", numbers stay numbers; the compiled expression says exactly what the SQLite one does
(tests/test_backends.py checks both give identical ids on one set of filter cases).
Milvus's `not` is loose in the same way, so `$not` is pushed down to the field conditions
(De Morgan) and each is negated exactly: "not (exists f) or not (...)". A range comparison
with a value of another kind is unknown too, so its negation names the other kinds: strings
(`like "%"`) and non-empty arrays (`exists f[0]`); an object or an empty array has no test
that Milvus 2.3 parses, and is the one value `$not` of a range does not match here (faiss
matches it). Array membership ($contains, $contains_any) is json_contains_any on the typed
elements.

Occurrences: Milvus before 2.4 has no infix LIKE, and a word is any substring (苹果 inside
我喜欢吃苹果). Each document of a collection with token vectors keeps the set of its
characters and pairs of adjacent characters (`grams`, an ARRAY field); the documents that
contain a word are among those whose grams hold all of the word's (array_contains_all, an
exact comparison every supported Milvus runs), and its text confirms which. A text with more
distinct grams than an ARRAY holds keeps one marker instead, and is always a candidate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from embedsense.server.index.filters import (
    COMPARISONS,
    And,
    Condition,
    Node,
    Not,
    Or,
    negated,
    parse,
)

MAX_GRAMS = 4096  # Milvus's ARRAY capacity
MAX_GRAM_BYTES = 16  # two characters are at most 8 UTF-8 bytes
EVERY_GRAM = "<every gram>"  # longer than any gram: "too many to list, always a candidate"
OPPOSITE = {"$gt": "<=", "$gte": "<", "$lt": ">=", "$lte": ">"}  # what each comparison is not


def typed(value: Any) -> Any:
    """The filterable copy of a metadata value: each scalar tagged with its JSON type."""
    if isinstance(value, Mapping):
        return {str(k): typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, bool):
        return "b:1" if value else "b:0"
    if value is None:
        return "null:"
    return value


# What a Milvus string literal escapes. Milvus 2.3 and milvus-lite both read control
# characters as they are, but milvus-lite knows no \u escape (json.dumps writes one for
# each), nor \b or \f; both take \n, \r and \t, and need `"` and `\` escaped.
_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


INT64_MIN = -(2**63)


def literal(value: Any) -> str:
    """A Milvus expression literal: a string quoted so that every supported Milvus reads it
    back exactly, a number as Python writes it."""
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if value == INT64_MIN and isinstance(value, int):
        # Milvus 2.3 reads "-9223372036854775808" as minus 2**63, out of int64's range.
        return f"({INT64_MIN + 1} - 1)"
    return repr(value)  # int or float (booleans and null are tagged strings by now)


def literal_list(values: list[Any]) -> str:
    return "[" + ", ".join(literal(v) for v in values) + "]"


def milvus_expression(where: Mapping[str, Any] | None) -> str:
    """The filter language as a Milvus boolean expression on the typed copy ("" for none)."""
    node = parse(where)
    return "" if node is None else _expression(node)


def _expression(node: Node) -> str:
    if isinstance(node, And | Or):
        glue = " and " if isinstance(node, And) else " or "
        return "(" + glue.join(_expression(part) for part in node.parts) + ")"
    if isinstance(node, Not):
        # Milvus's `not` is not strict (a row without the field drops out of `not (...)`
        # too), so a negation is pushed down to the field conditions, each negated exactly.
        part = node.part
        return _negative(part) if isinstance(part, Condition) else _expression(negated(part))
    return _positive(node)


def _path(c: Condition) -> str:
    return "filterable" + "".join(f"[{literal(part)}]" for part in c.path)


def _positive(c: Condition) -> str:
    field = _path(c)

    def equals(value: Any) -> str:
        return f"{field} == {literal(typed(value))}"

    if c.op == "$eq":
        return equals(c.operand)
    if c.op == "$in":
        # milvus-lite refuses `in` on a JSON key: expanded, one `==` per value. milvus-lite
        # evaluates that row by row, parsing the row's JSON for each value: a $in of
        # 10,000 values over 40 rows takes about a second there.
        return "(" + " or ".join(equals(v) for v in c.operand) + ")"
    if c.op in ("$ne", "$nin"):
        return _negative(Condition(c.path, "$eq" if c.op == "$ne" else "$in", c.operand))
    if c.op == "$exists":
        return f"(exists {field})" if c.operand else f"(not (exists {field}))"
    if c.op in ("$contains", "$contains_any"):
        values = [c.operand] if c.op == "$contains" else c.operand
        return f"json_contains_any({field}, {literal_list(_elements(values))})"
    op = COMPARISONS[c.op]
    if isinstance(c.operand, str):  # only strings: between the "s:" and "s;" tags
        return f'({field} >= "s:" and {field} < "s;" and {field} {op} {literal(typed(c.operand))})'
    return f"{field} {op} {literal(c.operand)}"


def _negative(c: Condition) -> str:
    """Exactly the rows where the condition is false, a row without the field included."""
    if c.op == "$exists":
        return _positive(Condition(c.path, c.op, not c.operand))
    if c.op in ("$ne", "$nin"):
        return _positive(Condition(c.path, "$eq" if c.op == "$ne" else "$in", c.operand))
    field = _path(c)
    if c.op in OPPOSITE:
        # A comparison with a value of another kind is unknown in Milvus, and so is its
        # `not`: the complement is spelled out as the opposite comparison or another kind.
        opposite = OPPOSITE[c.op]
        if isinstance(c.operand, str):
            other_kind = f'not ({field} like "s:%")'  # booleans and null are "b:"/"null:"
        else:  # strings (all tagged) or arrays; not an object or [] (above)
            # Each in parentheses: Milvus 2.3 reads `exists a or b` as `exists (a or b)`.
            other_kind = f'({field} like "%") or (exists {field}[0])'
        return (
            f"(not (exists {field}) or {other_kind} or "
            f"{field} {opposite} {literal(typed(c.operand))})"
        )
    return f"(not (exists {field}) or not ({_positive(c)}))"


def _elements(values: list[Any]) -> list[Any]:
    """Array elements to look for, typed; a whole number also as a float (1 and 1.0 are one
    number in the filter language, and Milvus compares an array's elements by type)."""
    elements: list[Any] = []
    for value in values:
        elements.append(typed(value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            if float(value).is_integer() and abs(value) < 2**53:
                elements += [int(value), float(value)]
    unique = {(type(e).__name__, e): e for e in elements}  # 1 and 1.0 are both kept
    return list(unique.values())


# ------------------------------------------------------------------ occurrences


def _word_grams(text: str) -> set[str]:
    return set(text) | {text[i : i + 2] for i in range(len(text) - 1)}


def grams(text: str) -> list[str]:
    """What a document keeps so that the words it contains can be found (module docstring)."""
    found = _word_grams(text)
    return sorted(found) if len(found) <= MAX_GRAMS else [EVERY_GRAM]


def containing(word: str) -> str:
    """The expression that keeps every document containing `word` (and a few that hold its
    grams elsewhere: the caller checks the text)."""
    needed = {word} if len(word) == 1 else {word[i : i + 2] for i in range(len(word) - 1)}
    return (
        f"(array_contains(grams, {literal(EVERY_GRAM)}) or "
        f"array_contains_all(grams, {literal_list(sorted(needed))}))"
    )


def like_containing(word: str) -> str:
    """The infix LIKE of collections made before `grams` (Milvus >= 2.4 and milvus-lite)."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"text like {literal(f'%{escaped}%')}"
