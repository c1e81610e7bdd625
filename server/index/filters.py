"""Metadata filters: a small JSON query language, compiled to one SQL condition.

    {"lang": "zh"}                        equality (strings, numbers, booleans, null)
    {"lang": {"$in": ["zh", "en"]}}       membership
    {"year": {"$gte": 2020, "$lt": 2025}} comparisons: $eq $ne $gt $gte $lt $lte
    {"source.site": "wiki"}               a dotted name reaches into nested objects

Several fields in one filter must all hold. Types are strict: "1", 1 and true are three
different values, as in JSON. The search turns the matching documents into a FAISS ID
selector, so the filter applies inside the search, not after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedsense.server.index.errors import FilterError

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_MAX_IN = 10_000


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
        if len(operand) > _MAX_IN:
            raise FilterError(f"{field}: $in takes at most {_MAX_IN} values, got {len(operand)}")
        return [_scalar(field, value) for value in operand]
    if op in ("$eq", "$ne"):
        return _scalar(field, operand)
    if op in COMPARISONS:
        if isinstance(operand, bool) or not isinstance(operand, int | float | str):
            raise FilterError(f"{field}: {op} compares with a number or a string, got {operand!r}")
        return operand
    raise FilterError(f"{field}: unknown operator {op!r}; known: $in, {', '.join(COMPARISONS)}")


def _scalar(field: str, value: Any) -> Any:
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
        alternatives = [_equals(path, value) for value in c.operand]
        return "(" + " OR ".join(clause for clause, _ in alternatives) + ")", [
            p for _, ps in alternatives for p in ps
        ]
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
