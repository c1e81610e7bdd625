"""The filter language's grammar and limits (server/index/filters.py), without a backend:
what parses, into which tree, and every refusal naming the limit and the part at fault."""

from __future__ import annotations

import json

import pytest

from embedsense.server.index.errors import FilterError
from embedsense.server.index.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_VALUES,
    And,
    Condition,
    Not,
    Or,
    negated,
    normal_form,
    parse,
    required_filter,
)
from embedsense.server.index.milvus.filters import milvus_expression


def nested(depth: int) -> dict:
    """A filter `depth` objects deep: $not inside $not ... around one condition."""
    where: dict = {"lang": "zh"}
    for _ in range(depth - 1):
        where = {"$not": where}
    return where


def test_a_filter_parses_into_a_tree():
    assert parse(None) is None and parse({}) is None
    assert parse({"lang": "zh"}) == Condition(("lang",), "$eq", "zh")
    where = {"a": 1, "$or": [{"b": {"$nin": [1, "x"]}}, {"$not": {"c.d": {"$exists": True}}}]}
    assert parse(where) == And(
        (
            Condition(("a",), "$eq", 1),
            Or((Condition(("b",), "$nin", [1, "x"]), Not(Condition(("c", "d"), "$exists", True)))),
        )
    )  # fmt: skip
    tags = ("tags",)
    assert parse({"tags": {"$contains": "red", "$contains_any": ["a", None]}}) == And(
        (Condition(tags, "$contains", "red"), Condition(tags, "$contains_any", ["a", None]))
    )
    assert parse({"$and": [{"a": 1}]}) == Condition(("a",), "$eq", 1)  # one part: itself


def test_negation_is_pushed_down_by_de_morgan():
    a, b = Condition(("a",), "$eq", 1), Condition(("b",), "$eq", 2)
    assert negated(And((a, b))) == Or((Not(a), Not(b)))
    assert negated(Or((a, Not(b)))) == And((Not(a), b))
    assert negated(Not(a)) == a


@pytest.mark.parametrize(
    "name", ["语言", "名前", "ชื่อ", "हिन्दी", "தமிழ்", "cafe\u0301", "x-1_y", "来源.站点"]
)
def test_field_names_are_the_words_of_any_script(name):
    """Thai, Devanagari, Tamil and decomposed accents carry combining marks, which `\\w`
    alone refused."""
    assert parse({name: 1}) == Condition(tuple(name.split(".")), "$eq", 1)
    assert milvus_expression({name: 1})


@pytest.mark.parametrize(
    "where, message",
    [
        ({"$or": {"a": 1}}, r"\$or takes a non-empty list of filter objects"),
        ({"$and": []}, r"\$and takes a non-empty list"),
        ({"$or": [{"a": 1}, {}]}, r"\$or\[1\]: an empty filter object"),
        ({"$or": [{"a": 1}, 3]}, r"\$or\[1\]: expected a filter object, got 3"),
        ({"$not": []}, r"\$not: expected a filter object"),
        ({"$xor": [{"a": 1}]}, r"unknown operator '\$xor'"),
        ({"$in": [1]}, r"unknown operator '\$in' where a field name"),
        ({"a": {"$or": [1]}}, r"a: unknown operator '\$or'.*go outside a field"),
        ({"a": {"$regex": "."}}, r"a: unknown operator '\$regex'"),
        # An object where a value goes: the dotted name it likely meant.
        ({"src": {"site": "wiki"}}, r"src: unknown operator 'site'.*\{'src\.site': \.\.\.\}"),
        ({"a": {"$exists": 1}}, r"a: \$exists takes true or false, got a number"),
        (
            {"a": {"$contains": [1]}},
            r"a: compare with a string, number, boolean or null, not an array",
        ),
        # JSON's words, not Python's ("got True", "not dict"): callers write JSON
        ({"a": {"$gt": True}}, r"a: \$gt compares with a number or a string, got true"),
        ({"a": {"$lt": None}}, r"a: \$lt compares with a number or a string, got null"),
        (
            {"a": {"$eq": {"b": 1}}},
            r"a: compare with a string, number, boolean or null, not an object",
        ),
        ({"a": {"$contains_any": []}}, r"a: \$contains_any takes a non-empty list"),
        ({"a": {"$nin": "x"}}, r"a: \$nin takes a non-empty list"),
        ({"a b": 1}, r"bad field name 'a b'"),
        ({"a\n": 1}, r"bad field name 'a\\n'"),  # `$` let a trailing newline through
        ({"a..b": 1}, r"bad field name 'a..b'"),
        # a combining mark starts no name, and the message says marks may follow
        ({"\u0301a": 1}, r"bad field name .*marks after a letter or digit"),
        ([{"a": 1}], r"a filter is a JSON object of field conditions, got an array"),
    ],
)
def test_bad_filters_are_refused_naming_the_part(where, message):
    with pytest.raises(FilterError, match=message):
        parse(where)
    with pytest.raises(FilterError, match=message):
        milvus_expression(where)


def test_the_depth_limit():
    assert parse(nested(MAX_DEPTH)) is not None
    with pytest.raises(FilterError, match=rf"\$not: filters nest at most {MAX_DEPTH} objects"):
        parse(nested(MAX_DEPTH + 1))
    deep_or = {"$or": [{"a": 1}, nested(MAX_DEPTH)]}
    with pytest.raises(FilterError, match=rf"\$not: filters nest at most {MAX_DEPTH}"):
        parse(deep_or)


def test_the_condition_limit():
    most = {"$or": [{f"f{i}": i} for i in range(MAX_CONDITIONS)]}
    assert len(parse(most).parts) == MAX_CONDITIONS
    with pytest.raises(FilterError, match=rf"at most {MAX_CONDITIONS} field conditions.*'f256'"):
        parse({"$or": [{f"f{i}": i} for i in range(MAX_CONDITIONS + 1)]})
    # Several operators on one field count one each.
    with pytest.raises(FilterError, match="at most 256 field conditions"):
        parse({"$and": [{f"f{i}": {"$gt": 0, "$lt": 9}} for i in range(129)]})


def test_the_value_limit_counts_every_list_together():
    half = list(range(MAX_VALUES // 2))
    assert parse({"a": {"$in": half}, "b": {"$nin": half}}) is not None
    with pytest.raises(FilterError, match=r"c: \$contains_any brings the filter to 10,001 values"):
        parse({"a": {"$in": half}, "$or": [{"b": {"$nin": half}}, {"c": {"$contains_any": [1]}}]})


def test_delete_by_filter_needs_a_filter():
    for where in (None, {}):
        with pytest.raises(FilterError, match="needs a non-empty filter.*drop the collection"):
            required_filter(where)
    assert required_filter({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    "one, other",
    [
        ({"a": 1, "b": "x"}, {"b": "x", "a": 1}),
        ({"a": 1}, {"a": {"$eq": 1}}),
        ({"a": 1}, {"a": 1.0}),
        ({"a": {"$in": [1, 2.0]}}, {"a": {"$in": [1.0, 2]}}),
        (
            {"$and": [{"$and": [{"$and": [{"a": 1}, {"b": 2}]}, {"c": 3}]}, {"d": 4}]},
            {"a": 1, "b": 2, "c": 3, "d": 4},
        ),  # fmt: skip
        (
            {"$or": [{"a": 1}, {"$or": [{"b": 2}, {"c": 3}]}]},
            {"$or": [{"c": 3}, {"b": 2}, {"a": 1}]},
        ),
        (
            {"a": {"$gt": 1}, "$or": [{"b": 1}, {"c": 1}]},
            {"$and": [{"$or": [{"c": 1}, {"b": 1}]}, {"a": {"$gt": 1}}]},
        ),
        ({"a": {"$gt": 1, "$lt": 5}}, {"$and": [{"a": {"$lt": 5}}, {"a": {"$gt": 1}}]}),
    ],
)
def test_one_filter_written_two_ways_has_one_normal_form(one, other):
    assert written(one) == written(other)


@pytest.mark.parametrize(
    "one, other",
    [
        ({"a": True}, {"a": 1}),  # a boolean is no number
        ({"a": {"$gt": 1}}, {"a": {"$gte": 1}}),
        ({"a": "1"}, {"a": 1}),
        (
            {"a": {"$contains": 2**53}},
            {"a": {"$contains": float(2**53)}},
        ),  # Milvus tells them apart
        ({"$and": [{"a": {"$gt": 1}}, {"a": {"$gt": 2}}]}, {"a": {"$gt": 2}}),
        ({"$not": {"a": 1}}, {"a": {"$ne": 1}}),  # alike on faiss, not where a field is missing
    ],
)
def test_filters_that_may_match_otherwise_have_two_normal_forms(one, other):
    assert written(one) != written(other)


def written(where: dict) -> str:
    """The normal form as JSON, as it is fingerprinted (True == 1 in Python, not in JSON)."""
    return json.dumps(normal_form(parse(where)), sort_keys=True)


@pytest.mark.parametrize(
    "where", [{}, {"a": 1}, {"a": 1, "b": {"$gt": 2}}, {"$or": [{"a": 1}, {"b": 2}]}]
)
def test_a_filter_in_the_normal_form_is_its_own(where):
    assert normal_form(parse(where)) == where
