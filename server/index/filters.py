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
from typing import Any

from embedsense.server.index.errors import FilterError

_FIELD = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_COMPARISONS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
_MAX_IN = 10_000


def compile_filter(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    """The filter as an SQL condition on the `metadata` column, and its parameters."""
    if not where:
        return "1", []
    if not isinstance(where, Mapping):
        raise FilterError(
            f"a filter is a JSON object of field conditions, got {type(where).__name__}"
        )
    clauses: list[str] = []
    params: list[Any] = []
    for field, condition in where.items():
        if not isinstance(field, str) or not _FIELD.match(field):
            raise FilterError(
                f"bad field name {field!r}: letters, digits, _ and -, with dots for nesting"
            )
        path = "$." + ".".join(f'"{part}"' for part in field.split("."))
        if isinstance(condition, Mapping):
            if not condition:
                raise FilterError(f"{field}: an empty condition object")
            for op, operand in condition.items():
                clause, clause_params = _operator(field, path, op, operand)
                clauses.append(clause)
                params += clause_params
        else:
            clause, clause_params = _equals(field, path, condition)
            clauses.append(clause)
            params += clause_params
    return " AND ".join(clauses), params


def _operator(field: str, path: str, op: str, operand: Any) -> tuple[str, list[Any]]:
    if op == "$in":
        if not isinstance(operand, list) or not operand:
            raise FilterError(f"{field}: $in takes a non-empty list of values")
        if len(operand) > _MAX_IN:
            raise FilterError(f"{field}: $in takes at most {_MAX_IN} values, got {len(operand)}")
        alternatives = [_equals(field, path, value) for value in operand]
        return "(" + " OR ".join(c for c, _ in alternatives) + ")", [
            p for _, ps in alternatives for p in ps
        ]
    if op == "$eq":
        return _equals(field, path, operand)
    if op == "$ne":
        clause, params = _equals(field, path, operand)
        # A document without the field is "not equal" too (SQL would say NULL: unknown).
        return f"NOT COALESCE({clause}, 0)", params
    if op in _COMPARISONS:
        if isinstance(operand, bool) or not isinstance(operand, int | float | str):
            raise FilterError(f"{field}: {op} compares with a number or a string, got {operand!r}")
        kinds = "('integer', 'real')" if not isinstance(operand, str) else "('text')"
        return (
            f"(json_type(metadata, ?) IN {kinds} AND json_extract(metadata, ?) "
            f"{_COMPARISONS[op]} ?)",
            [path, path, operand],
        )
    raise FilterError(f"{field}: unknown operator {op!r}; known: $in, {', '.join(_COMPARISONS)}")


def _equals(field: str, path: str, value: Any) -> tuple[str, list[Any]]:
    if value is None:
        return "json_type(metadata, ?) = 'null'", [path]
    if isinstance(value, bool):
        return "json_type(metadata, ?) = ?", [path, "true" if value else "false"]
    if isinstance(value, int | float):
        return (
            "(json_type(metadata, ?) IN ('integer', 'real') AND json_extract(metadata, ?) = ?)",
            [path, path, value],
        )
    if isinstance(value, str):
        return "(json_type(metadata, ?) = 'text' AND json_extract(metadata, ?) = ?)", [
            path,
            path,
            value,
        ]
    raise FilterError(
        f"{field}: compare with a string, number, boolean or null, not {type(value).__name__}"
    )
