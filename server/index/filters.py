"""Metadata filters: a small JSON query language, compiled to one SQL condition.

    {"lang": "zh"}                        equality (strings, numbers, booleans, null)
    {"lang": {"$in": ["zh", "en"]}}       membership
    {"year": {"$gte": 2020, "$lt": 2025}} comparisons: $eq $ne $gt $gte $lt $lte
    {"source.site": "wiki"}               a dotted name reaches into nested objects

Several fields in one filter must all hold. Types are strict: "1", 1 and true are three
different values, as in JSON. Numbers are finite, and integers fit in 64 bits. A `$in`
takes up to 10,000 values. The search turns the matching documents into a FAISS ID
selector, so the filter applies inside the search, not after it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedsense.server.index.errors import FilterError

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MAX_IN = 10_000


@dataclass(frozen=True)
class Condition:
    """One checked condition of a filter: a field path, an operator, its operand.

    op is "$eq" (operand: str, int, float, bool or None), "$ne" (the same; a document
    without the field matches), "$in" (a list of such values) or a comparison "$gt", "$gte",
    "$lt", "$lte" (a number or a string: it matches only values of the same kind)."""

    path: tuple[str, ...]
    op: str
    operand: Any


def parse_filter(where: Mapping[str, Any] | None) -> list[Condition]:
    """The filter's conditions (all must hold), checked; FilterError names what is wrong."""
    if not where:
        return []
    if not isinstance(where, Mapping):
        raise FilterError(
            f"a filter is a JSON object of field conditions, got {type(where).__name__}"
        )
    conditions = []
    for field, condition in where.items():
        if not isinstance(field, str) or not _FIELD.match(field):
            raise FilterError(
                f"bad field name {field!r}: letters, digits, _ and -, with dots for nesting"
            )
        path = tuple(field.split("."))
        if not isinstance(condition, Mapping):
            conditions.append(Condition(path, "$eq", _scalar(field, condition)))
            continue
        if not condition:
            raise FilterError(f"{field}: an empty condition object")
        for op, operand in condition.items():
            conditions.append(Condition(path, op, _operand(field, op, operand)))
    return conditions


def _operand(field: str, op: str, operand: Any) -> Any:
    if op == "$in":
        if not isinstance(operand, list) or not operand:
            raise FilterError(f"{field}: $in takes a non-empty list of values")
        if len(operand) > MAX_IN:
            raise FilterError(
                f"{field}: $in takes at most {MAX_IN:,} values, got {len(operand):,} "
                "(split the list, or filter on a field the values share)"
            )
        return [_scalar(field, value) for value in operand]
    if op in ("$eq", "$ne"):
        return _scalar(field, operand)
    if op in COMPARISONS:
        if isinstance(operand, bool) or not isinstance(operand, int | float | str):
            raise FilterError(f"{field}: {op} compares with a number or a string, got {operand!r}")
        return _scalar(field, operand)
    raise FilterError(f"{field}: unknown operator {op!r}; known: $in, {', '.join(COMPARISONS)}")


def _scalar(field: str, value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise FilterError(f"{field}: {value!r} is not a finite number")
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise FilterError(
            f"{field}: {value} is outside the 64-bit integers (-2**63 to 2**63-1) that "
            "metadata numbers are compared as"
        )
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise FilterError(
        f"{field}: compare with a string, number, boolean or null, not {type(value).__name__}"
    )


def compile_filter(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """The filter as an SQL condition on the `metadata` column, and its parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    for condition in parse_filter(where):
        clause, clause_params = _sql(condition)
        clauses.append(clause)
        params += clause_params
    return (" AND ".join(clauses) or "1"), params


def _sql(c: Condition) -> tuple[str, list[Any]]:
    path = "$." + ".".join(f'"{part}"' for part in c.path)
    if c.op == "$in":
        return _member(path, c.operand)
    if c.op == "$eq":
        return _equals(path, c.operand)
    if c.op == "$ne":
        clause, params = _equals(path, c.operand)
        # A document without the field is "not equal" too (SQL would say NULL: unknown).
        return f"NOT COALESCE({clause}, 0)", params
    kinds = "('text')" if isinstance(c.operand, str) else "('integer', 'real')"
    return (
        f"(json_type(metadata, ?) IN {kinds} AND json_extract(metadata, ?) {COMPARISONS[c.op]} ?)",
        [path, path, c.operand],
    )


def _member(path: str, values: list[Any]) -> tuple[str, list[Any]]:
    """`$in`: at most one clause per JSON type among the values, each looking the field up
    in a JSON array bound as one parameter. One `=` per value, OR-ed, would nest as deep as
    the list is long, and SQLite refuses expressions over 1,000 deep."""
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
        if same_kind:
            clauses.append(
                f"(json_type(metadata, ?) IN {types} AND json_extract(metadata, ?) IN "
                "(SELECT value FROM json_each(?)))"
            )
            params += [path, path, json.dumps(same_kind, ensure_ascii=False)]
    if kinds:
        clauses.append("json_type(metadata, ?) IN (SELECT value FROM json_each(?))")
        params += [path, json.dumps(sorted(kinds))]
    return "(" + " OR ".join(clauses) + ")", params


def _equals(path: str, value: Any) -> tuple[str, list[Any]]:
    if value is None:
        return "json_type(metadata, ?) = 'null'", [path]
    if isinstance(value, bool):
        return "json_type(metadata, ?) = ?", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        return (
            "(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?)",
            [path, path, value],
        )
    return "(json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?)", [
        path,
        path,
        value,
    ]
