"""Metadata filters: a small JSON query language, parsed into a tree and compiled to one SQL
condition (the milvus backend compiles the same tree to a Milvus expression).

    {"lang": "zh"}                          equality (strings, numbers, booleans, null)
    {"lang": {"$ne": "zh"}}                 not equal (a document without the field matches)
    {"year": {"$gte": 2020, "$lt": 2025}}   comparisons: $gt $gte $lt $lte
    {"lang": {"$in": ["zh", "en"]}}         one of the values
    {"lang": {"$nin": ["zh", "en"]}}        none of the values (a missing field matches)
    {"note": {"$exists": true}}             the field is there (with any value, null too)
    {"tags": {"$contains": "red"}}          the array field has this element
    {"tags": {"$contains_any": ["a", "b"]}} the array field has one of these elements
    {"source.site": "wiki"}                 a dotted name reaches into nested objects
    {"$and": [f, ...]}                      every filter holds
    {"$or": [f, ...]}                       at least one filter holds
    {"$not": f}                             the filter does not hold

Several keys in one object must all hold (`{"lang": "zh", "$or": [...]}` is an AND), and so
must several operators on one field. Types are strict: "1", 1 and true are three different
values, as in JSON; comparisons match only values of the operand's kind (numbers with
numbers, strings with strings). A condition on a field a document lacks is false, so its
`$not` is true. Values are what metadata may hold (embedsense.proto.values): finite numbers,
integers within 64 bits, strings without U+0000. Field names are letters, digits and marks
of any script, _ and -.

Limits, so that one request cannot make the store scan forever: nesting at most MAX_DEPTH
objects deep (the filter itself is depth 1; each $and/$or/$not adds one), at most
MAX_CONDITIONS field conditions, and at most MAX_VALUES values in all the lists together.

The search turns the matching documents into a FAISS ID selector, so the filter applies
inside the search, not after it.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedsense.proto.values import json_kind, scalar_problem
from embedsense.server.index.errors import FilterError

COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
LISTS = ("$in", "$nin", "$contains_any")  # operators whose operand is a list of values
FIELD_OPERATORS = (*COMPARISONS, *LISTS, "$exists", "$contains")
LOGICAL = ("$and", "$or", "$not")
MAX_DEPTH = 8
MAX_CONDITIONS = 256
MAX_VALUES = 10_000
MAX_IN = MAX_VALUES  # the old name: one list can take them all


@dataclass(frozen=True)
class Condition:
    """One checked field condition: a field path, an operator, its operand.

    op is "$eq" (operand: str, int, float, bool or None), "$ne" (the same; a document
    without the field matches), "$in"/"$nin" (a list of such values; $nin matches a missing
    field), a comparison "$gt", "$gte", "$lt", "$lte" (a number or a string: it matches only
    values of the same kind), "$exists" (a bool), "$contains" (a value the array field must
    hold) or "$contains_any" (a list: the array holds one of them)."""

    path: tuple[str, ...]
    op: str
    operand: Any


@dataclass(frozen=True)
class And:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    part: Node


Node = Condition | And | Or | Not


class _Budget:
    """What a filter has used of its limits while it is parsed."""

    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def condition(self, field: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise FilterError(
                f"a filter takes at most {MAX_CONDITIONS} field conditions; the "
                f"{self.conditions}th is on {field!r} (merge equalities into one $in)"
            )

    def spend(self, field: str, op: str, n: int) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise FilterError(
                f"{field}: {op} brings the filter to {self.values:,} values; a filter takes "
                f"at most {MAX_VALUES:,} values in all its lists together (split the request, "
                "or filter on a field the values share)"
            )


def parse(where: Mapping[str, Any] | None) -> Node | None:
    """The filter as a tree, checked (None for no filter: None or {}); FilterError names what
    is wrong and where."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise FilterError(f"a filter is a JSON object of field conditions, got {json_kind(where)}")
    if not where:
        return None
    return _object(where, 1, _Budget(), "the filter")


def required_filter(where: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The filter of an operation that must have one (delete by filter): FilterError for
    none, so that an empty filter never deletes a whole collection by accident."""
    if parse(where) is None:
        raise FilterError(
            "delete by filter needs a non-empty filter; to delete every document, drop the "
            "collection (or delete by ids)"
        )
    return where  # type: ignore[return-value]  # parse checked it is a mapping


def _object(where: Any, depth: int, budget: _Budget, where_in: str) -> Node:
    if depth > MAX_DEPTH:
        raise FilterError(
            f"{where_in}: filters nest at most {MAX_DEPTH} objects deep "
            "($and, $or and $not each add one)"
        )
    if not isinstance(where, Mapping):
        raise FilterError(f"{where_in}: expected a filter object, got {where!r:.80}")
    if not where:
        raise FilterError(f"{where_in}: an empty filter object")
    parts: list[Node] = []
    for key, value in where.items():
        if key in LOGICAL:
            parts.append(_logical(key, value, depth, budget))
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(
                f"unknown operator {key!r} where a field name or {', '.join(LOGICAL)} goes; "
                f"field operators such as $in go inside a field: {{'field': {{'$in': [...]}}}}"
            )
        else:
            parts.extend(_field(key, value, budget))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _logical(op: str, value: Any, depth: int, budget: _Budget) -> Node:
    if op == "$not":
        return Not(_object(value, depth + 1, budget, "$not"))
    if not isinstance(value, list) or not value:
        raise FilterError(f"{op} takes a non-empty list of filter objects, got {value!r:.80}")
    parts = tuple(_object(part, depth + 1, budget, f"{op}[{i}]") for i, part in enumerate(value))
    return parts[0] if len(parts) == 1 else (And if op == "$and" else Or)(parts)


def _field(field: Any, condition: Any, budget: _Budget) -> list[Condition]:
    if not isinstance(field, str) or not all(map(_name_part, field.split("."))):
        raise FilterError(
            f"bad field name {field!r}: letters, digits, _ and - (marks after a letter or "
            "digit), with dots for nesting"
        )
    path = tuple(field.split("."))
    if not isinstance(condition, Mapping):
        budget.condition(field)
        return [Condition(path, "$eq", _scalar(field, condition))]
    if not condition:
        raise FilterError(f"{field}: an empty condition object")
    conditions = []
    for op, operand in condition.items():
        budget.condition(field)
        conditions.append(Condition(path, op, _operand(field, op, operand, budget)))
    return conditions


def _name_part(part: str) -> bool:
    """Letters, digits and marks of any script (Thai, Devanagari, a decomposed é carry
    combining marks), `_` and `-`; not empty, not starting with a mark."""
    return (
        bool(part)
        and not unicodedata.category(part[0]).startswith("M")
        and all(c.isalnum() or c in "_-" or unicodedata.category(c).startswith("M") for c in part)
    )


def _operand(field: str, op: str, operand: Any, budget: _Budget) -> Any:
    if op in LISTS:
        if not isinstance(operand, list) or not operand:
            raise FilterError(f"{field}: {op} takes a non-empty list of values")
        budget.spend(field, op, len(operand))
        return [_scalar(field, value) for value in operand]
    if op in ("$eq", "$ne", "$contains"):
        return _scalar(field, operand)
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(f"{field}: $exists takes true or false, got {json_kind(operand)}")
        return operand
    if op in COMPARISONS:
        if isinstance(operand, bool) or not isinstance(operand, int | float | str):
            raise FilterError(
                f"{field}: {op} compares with a number or a string, got {json_kind(operand)}"
            )
        return _scalar(field, operand)
    if op in LOGICAL:
        hint = " ($and, $or and $not go outside a field)"
    elif not str(op).startswith("$"):  # an object where a value goes: a nested field?
        hint = f" (a nested field goes by its dotted name: {{'{field}.{op}': ...}})"
    else:
        hint = ""
    raise FilterError(
        f"{field}: unknown operator {op!r}; known: {', '.join(FIELD_OPERATORS)}{hint}"
    )


def _scalar(field: str, value: Any) -> Any:
    if (wrong := scalar_problem(value)) is not None:
        raise FilterError(f"{field}: {wrong}")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise FilterError(
        f"{field}: compare with a string, number, boolean or null, not {json_kind(value)}"
    )


def negated(node: Node) -> Node:
    """The node's negation pushed down to the field conditions (De Morgan): what a backend
    whose NOT is not strict (Milvus drops rows that lack the field) compiles."""
    if isinstance(node, Not):
        return node.part
    if isinstance(node, And):
        return Or(tuple(negated(p) for p in node.parts))
    if isinstance(node, Or):
        return And(tuple(negated(p) for p in node.parts))
    return Not(node)


def normal_form(node: Node | None) -> dict[str, Any]:
    """The filter as JSON written one way, the same for each way of writing it that the
    grammar reads as one: keys and the parts of $and and $or in any order, {"x": v} or
    {"x": {"$eq": v}}, 1 or 1.0 (one number, as the filter matches them), $and within
    $and. A filter already in this form comes back as it was ({} for none)."""
    return {} if node is None else _normal(node)


def _normal(node: Node) -> dict[str, Any]:
    if isinstance(node, Condition):
        return _one_object([node])
    if isinstance(node, Not):
        return {"$not": _normal(node.part)}
    parts = _flat(node)
    if isinstance(node, Or):
        return {"$or": _sorted([_normal(p) for p in parts])}
    simple = [p for p in parts if isinstance(p, Condition)]
    fields = [".".join(c.path) for c in simple]
    others = [p for p in parts if not isinstance(p, Condition)]
    kinds = [type(p) for p in others]
    ops = [(f, c.op) for f, c in zip(fields, simple, strict=True)]
    if len(set(ops)) == len(ops) and len(set(kinds)) == len(kinds):  # one object holds them
        merged = _one_object(simple)
        for other in others:
            merged.update(_normal(other))
        return merged
    return {"$and": _sorted([_normal(p) for p in parts])}


def _flat(node: And | Or) -> list[Node]:
    """The parts, with those of the same kind of node within opened up, at any depth."""
    return [
        q
        for p in node.parts
        for q in (_flat(p) if type(p) is type(node) else [p])  # type: ignore[arg-type]
    ]


def _one_object(conditions: list[Condition]) -> dict[str, Any]:
    """Field conditions as one object: an equality alone on its field as the bare value."""
    by_field: dict[str, dict[str, Any]] = {}
    for c in conditions:
        by_field.setdefault(".".join(c.path), {})[c.op] = _one_number(c.operand)
    return {field: ops["$eq"] if list(ops) == ["$eq"] else ops for field, ops in by_field.items()}


def _sorted(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(objects, key=lambda o: json.dumps(o, sort_keys=True, ensure_ascii=False))


def _one_number(value: Any) -> Any:
    if isinstance(value, list):
        return [_one_number(v) for v in value]
    # Below 2**53 only, as the milvus backend takes a whole float for an int (_elements).
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


# ------------------------------------------------------------------ SQL (the faiss backend)


def compile_filter(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """The filter as an SQL condition on the `metadata` column, and its parameters."""
    node = parse(where)
    if node is None:
        return "1", []
    params: list[Any] = []
    return _sql(node, params), params


def _sql(node: Node, params: list[Any]) -> str:
    if isinstance(node, And | Or):
        glue = " AND " if isinstance(node, And) else " OR "
        return "(" + glue.join(_sql(part, params) for part in node.parts) + ")"
    if isinstance(node, Not):
        # A condition on a missing field is SQL's NULL (unknown), never true: AND and OR
        # keep that meaning false, and NOT must see it as false too.
        return f"NOT COALESCE({_sql(node.part, params)}, 0)"
    clause, clause_params = _condition(node)
    params += clause_params
    return clause


def _condition(c: Condition) -> tuple[str, list[Any]]:
    path = "$." + ".".join(f'"{part}"' for part in c.path)
    if c.op == "$in":
        return _member(path, c.operand)
    if c.op == "$nin":
        clause, params = _member(path, c.operand)
        return f"NOT COALESCE({clause}, 0)", params
    if c.op == "$eq":
        return _equals(path, c.operand)
    if c.op == "$ne":
        clause, params = _equals(path, c.operand)
        return f"NOT COALESCE({clause}, 0)", params
    if c.op == "$exists":
        return f"(json_type(metadata, ?) IS {'NOT ' if c.operand else ''}NULL)", [path]
    if c.op in ("$contains", "$contains_any"):
        values = [c.operand] if c.op == "$contains" else c.operand
        member, params = _member("$", values, source="value", type_of="type")
        # The elements of an array field, each tested as `$in` tests a field.
        return (
            f"(json_type(metadata, ?) = 'array' AND EXISTS (SELECT 1 FROM "
            f"json_each(metadata, ?) WHERE {member}))",
            [path, path, *params],
        )
    kinds = "('text')" if isinstance(c.operand, str) else "('integer', 'real')"
    return (
        f"(json_extract(metadata, ?) {COMPARISONS[c.op]} ? AND json_type(metadata, ?) IN {kinds})",
        [path, c.operand, path],
    )


def _unambiguous(values: list[Any]) -> bool:
    """Whether json_extract alone tells these values apart from every other JSON value. It
    gives true and false as 1 and 0, and an array or object as its JSON text; a value
    neither can equal needs no json_type check (half the JSON work per document)."""
    return all(
        not v.startswith(("[", "{")) if isinstance(v, str) else v not in (0, 1) for v in values
    )


def _member(
    path: str, values: list[Any], source: str = "", type_of: str = ""
) -> tuple[str, list[Any]]:
    """`$in`: at most one clause per JSON type among the values, each looking the field up
    in a JSON array bound as one parameter. One `=` per value, OR-ed, would nest as deep as
    the list is long, and SQLite refuses expressions over 1,000 deep.

    With `source`/`type_of` (columns of a json_each row: value, type), the same test on an
    array element instead of the field at `path`."""
    if source:
        kind, value, kind_params, value_params = type_of, source, [], []
    else:
        kind, value = "json_type(metadata, ?)", "json_extract(metadata, ?)"
        kind_params, value_params = [path], [path]
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    # true, false and null: the value's JSON type says all there is.
    kinds = {
        "null" if v is None else "true" if v else "false"
        for v in values
        if v is None or isinstance(v, bool)
    }
    clauses, params = [], []
    for same_kind, types in ((strings, "('text')"), (numbers, "('integer', 'real')")):
        if not same_kind:
            continue
        # The value first: most documents fail it, and the type is not looked at then.
        clauses.append(f"{value} IN (SELECT value FROM json_each(?))")
        params += [*value_params, json.dumps(same_kind, ensure_ascii=False)]
        if source or not _unambiguous(same_kind):
            clauses[-1] = f"({clauses[-1]} AND {kind} IN {types})"
            params += kind_params
    if kinds:
        clauses.append(f"{kind} IN (SELECT value FROM json_each(?))")
        params += [*kind_params, json.dumps(sorted(kinds))]
    return "(" + " OR ".join(clauses) + ")", params


def _equals(path: str, value: Any) -> tuple[str, list[Any]]:
    if value is None:
        return "json_type(metadata, ?) = 'null'", [path]
    if isinstance(value, bool):
        return "json_type(metadata, ?) = ?", [path, "true" if value else "false"]
    if _unambiguous([value]):
        return "json_extract(metadata, ?) = ?", [path, value]
    kinds = "('text')" if isinstance(value, str) else "('integer', 'real')"
    return f"(json_extract(metadata, ?) = ? AND json_type(metadata, ?) IN {kinds})", [
        path,
        value,
        path,
    ]
