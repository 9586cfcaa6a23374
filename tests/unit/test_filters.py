"""The filter compiler: every operator compiles, input only ever travels as parameters, bad input is a QueryError."""

from __future__ import annotations

import re

import orjson
import pytest

from runstream.storage.errors import QueryError
from runstream.storage.filters import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_MAP_KEYS,
    MAX_REGEXES,
    compile_filters,
    resolve_field,
)

_PLACEHOLDER = re.compile(r"\{(f\d+):([A-Za-z0-9()]+)\}")


def _compiled(filters):
    """Compile and check that placeholders and parameters match one to one."""
    out = compile_filters(filters)
    used = {name for name, _ in _PLACEHOLDER.findall(out.sql)}
    assert used == set(out.params), (out.sql, out.params)
    return out


def _skeleton(sql: str) -> str:
    """The SQL with placeholders blanked: what is left must be this module's own text."""
    return _PLACEHOLDER.sub("?", sql)


# Every operator on every kind of field.
CASES = [
    {"state": "finished"},
    {"state": {"$eq": "finished"}},
    {"state": {"$ne": "running"}},
    {"state": {"$in": ["finished", "crashed"]}},
    {"state": {"$nin": ["failed"]}},
    {"name": {"$regex": "^exp-"}},
    {"display_name": {"$gt": "a", "$lte": "m"}},
    {"displayName": {"$gte": "a", "$lt": "m"}},
    {"group": None},
    {"group": {"$exists": False}},
    {"job_type": {"$exists": True}},
    {"id": "abc"},
    {"run_id": {"$in": ["a", "b"]}},
    {"user": "alice", "host": "gpu-1", "notes": {"$regex": "(?i)todo"}, "program": "train.py"},
    {"tags": "baseline"},
    {"tags": {"$eq": "baseline"}},
    {"tags": {"$ne": "baseline"}},
    {"tags": {"$in": ["a", "b"]}},
    {"tags": {"$nin": ["a", "b"]}},
    {"tags": {"$regex": "^gpu"}},
    {"tags": {"$exists": True}},
    {"created_at": {"$gt": "2024-05-01T12:00:00Z"}},
    {"createdAt": {"$lt": 1714564800}},
    {"updated_at": {"$gte": "2024-05-01T12:00:00+02:00", "$lte": 1714564800.5}},
    {"heartbeat_at": {"$eq": 1714564800}},
    {"finished_at": None},
    {"finished_at": {"$ne": None}},
    {"finished_at": {"$exists": True}},
    {"finished_at": {"$in": [1714564800, None]}},
    {"finished_at": {"$nin": ["2024-05-01"]}},
    {"exit_code": 0},
    {"exit_code": {"$ne": 0}},
    {"exit_code": {"$gt": 0, "$in": [1, 2]}},
    {"config.lr": 0.001},
    {"config.lr": {"$gt": 0.001, "$lte": 1}},
    {"config.lr": {"$gte": 1, "$lt": 2}},
    {"config.optimizer": "adam"},
    {"config.optimizer": {"$ne": "adam"}},
    {"config.optimizer": {"$gt": "a"}},
    {"config.use_amp": True},
    {"config.maybe": None},
    {"config.maybe": {"$ne": None}},
    {"config.layers": [1, 2, 3]},
    {"config.empty": {}},
    {"config.x": {"$in": [1, "a", True, None, [1]]}},
    {"config.x": {"$nin": [1, "a"]}},
    {"config.x": {"$in": []}},
    {"state": {"$nin": []}},
    {"config.model.act": {"$regex": "^re"}},
    {"config.x": {"$exists": True}},
    {"config.x": {"$exists": False}},
    {"config.x": {"$not": {"$gt": 5}}},
    {"summary.acc": {"$gte": 0.9}},
    {"summary_metrics.acc": {"$lt": 0.9}},
    {"$and": [{"state": "finished"}, {"config.lr": {"$lt": 0.1}}]},
    {"$or": [{"state": "finished"}, {"tags": "baseline"}]},
    {"$nor": [{"state": "failed"}]},
    {"$or": [{"$and": [{"config.a": 1}, {"config.b": 2}]}, {"$or": [{"summary.c": {"$exists": True}}]}]},
    {},
]


@pytest.mark.parametrize("filters", CASES, ids=[str(c)[:60] for c in CASES])
def test_every_operator_compiles(filters):
    out = _compiled(filters)
    assert out.sql
    assert out.uses_summary == ("summary" in str(filters))


def test_no_filter_is_true():
    assert compile_filters(None).sql == "1" and compile_filters(None).params == {}
    assert compile_filters({}).sql == "1"


def test_negations_are_exact_complements():
    eq, ne = _compiled({"config.x": 3}), _compiled({"config.x": {"$ne": 3}})
    assert ne.sql == f"NOT {eq.sql}"
    found, absent = _compiled({"config.x": {"$in": [1, "a"]}}), _compiled({"config.x": {"$nin": [1, "a"]}})
    assert absent.sql == f"NOT {found.sql}"
    assert _compiled({"config.x": {"$not": {"$gt": 5}}}).sql == f"NOT {_compiled({'config.x': {'$gt': 5}}).sql}"


def test_numbers_strings_and_bools_use_the_right_map():
    number = _compiled({"config.lr": 0.5})
    assert "config_num[" in number.sql and 0.5 in number.params.values()
    string = _compiled({"config.opt": "adam"})
    assert "config_num[" not in string.sql.replace("mapContains(config_num", "")
    assert '"adam"' in string.params.values()  # the JSON text, as the writer stores it
    assert "true" in _compiled({"config.amp": True}).params.values()
    assert "[1,2]" in _compiled({"config.l": [1, 2]}).params.values()


def test_tags_have_array_semantics():
    assert _compiled({"tags": "x"}).sql.startswith("has(tags")
    assert _compiled({"tags": {"$in": ["x"]}}).sql.startswith("hasAny(tags")
    assert _compiled({"tags": {"$nin": ["x"]}}).sql.startswith("NOT hasAny(tags")
    assert _compiled({"tags": {"$ne": "x"}}).sql.startswith("NOT has(tags")
    assert "arrayExists" in _compiled({"tags": {"$regex": "x"}}).sql
    assert _compiled({"tags": {"$exists": True}}).sql == "notEmpty(tags)"


def test_times_become_milliseconds():
    iso, unix = (
        _compiled({"created_at": {"$gt": "2024-05-01T12:00:00Z"}}),
        _compiled({"created_at": {"$gt": 1714564800}}),
    )
    assert list(iso.params.values()) == list(unix.params.values()) == [1714564800000]
    naive = _compiled({"created_at": "2024-05-01T12:00:00"})  # no offset: UTC
    assert list(naive.params.values()) == [1714564800000]
    offset = _compiled({"created_at": "2024-05-01T14:00:00+02:00"})
    assert list(offset.params.values()) == [1714564800000]


def test_aliases_resolve_to_the_same_column():
    assert resolve_field("display_name") == resolve_field("name") == resolve_field("displayName")
    assert resolve_field("id") == resolve_field("run_id")
    assert resolve_field("summary_metrics.acc") == resolve_field("summary.acc")
    assert resolve_field("config.a.b").key == "a.b"


def test_regex_patterns_are_returned_for_checking():
    out = _compiled({"$or": [{"name": {"$regex": "a+"}}, {"config.x": {"$regex": "(b"}}, {"tags": {"$regex": "c"}}]})
    assert out.regexes == ["a+", "(b", "c"]


HOSTILE = [
    "a'; DROP TABLE runs; --",
    'x"y',
    "`tick`",
    "semi;colon",
    "-- comment",
    "/* block */",
    "{p0:String}",
    "{team:String}",
    "ключ.ü.中文.🙂",
    "back\\slash",
    "a' OR '1'='1",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_keys_and_values_only_travel_as_parameters(hostile):
    filters = {
        "$or": [
            {f"config.{hostile}": hostile},
            {f"config.{hostile}": {"$in": [hostile, 1]}},
            {f"summary.{hostile}": {"$gt": hostile}},
            {f"config.{hostile}": {"$regex": hostile, "$exists": True}},
            {"name": hostile, "tags": {"$in": [hostile]}, "state": {"$regex": hostile}},
        ]
    }
    out = _compiled(filters)
    skeleton = _skeleton(out.sql)
    assert hostile not in out.sql
    assert hostile not in skeleton
    assert "DROP" not in out.sql and "--" not in out.sql and "`" not in out.sql and ";" not in out.sql
    assert hostile in out.params.values()


@pytest.mark.parametrize("value", ["\x00", "a\x00b", "x" * 10_000, "line\nbreak", "\u2028", "'" * 50])
def test_hostile_values_are_parameters_of_any_length(value):
    out = _compiled({"config.k": value, "name": value, "tags": value})
    assert value not in out.sql
    assert value in out.params.values()  # name and tags compare the value itself
    assert orjson.dumps(value).decode() in out.params.values()  # config compares its JSON text


@pytest.mark.parametrize(
    "key, message",
    [
        ("x" * 10_000, "at most 256"),
        ("x" * 257, "at most 256"),
        ("a\x00b", "control character"),
        ("tab\there", "control character"),
        ("", "non-empty"),
        ("bad\ud800", "surrogate"),
    ],
)
def test_bad_keys_are_query_errors(key, message):
    with pytest.raises(QueryError, match=message) as err:
        compile_filters({f"config.{key}": 1})
    assert len(err.value.message) < 500  # a huge key is not echoed whole


def test_a_key_of_256_characters_is_allowed():
    assert _compiled({f"config.{'k' * 256}": 1})


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"nope": 1}, r"unknown field 'nope'.*state.*config\.<key>.*summary\.<key>"),
        ({"config": 1}, "unknown field"),
        ({"x" * 10_000: 1}, "unknown field"),
        ({"state": {"$foo": 1}}, r"unknown operator '\$foo'.*\$eq.*\$regex"),
        ({"name": {"$regex": "a", "$options": "i"}}, r"inline.*\(\?i\)"),
        ({"$xor": []}, r"unknown operator '\$xor'.*\$and"),
        ({"config.lr": {"$gt": [1, 2]}}, "takes a number or a string"),
        ({"config.lr": {"$gt": None}}, "takes a number or a string"),
        ({"config.lr": {"$lt": True}}, "takes a number or a string"),
        ({"config.lr": {"$gt": float("nan")}}, "finite"),
        ({"config.lr": {"$eq": 10**400}}, "finite"),
        ({"config.lr": {"$in": 1}}, "takes a list"),
        ({"config.lr": {"$in": list(range(MAX_ITEMS + 1))}}, f"at most {MAX_ITEMS}"),
        ({"config.lr": {"$exists": 1}}, "true or false"),
        ({"config.lr": {"$regex": 5}}, "pattern string"),
        ({"config.lr": {"$regex": "a" * 1001}}, "at most 1000"),
        ({"config.m": {"a": 1}}, "mixes operators and plain keys"),
        ({"config.m": {"$eq": {"a": 1}}}, "dotted keys"),
        ({"config.m": {"$not": 3}}, r"\$not takes an object"),
        ({"$and": {"state": "x"}}, r"\$and takes a non-empty list"),
        ({"$or": []}, r"\$or takes a non-empty list"),
        ({"$and": ["state"]}, "must be an object"),
        ({"state": 3}, "takes string values"),
        ({"state": {"$gt": 3}}, "takes a string"),
        ({"state": {"$in": ["a", 3]}}, "takes string values"),
        ({"tags": {"$gt": "a"}}, "does not apply to tags"),
        ({"tags": ["a", "b"]}, "takes string values"),
        ({"tags": None}, "takes string values"),
        ({"created_at": "yesterday"}, "ISO-8601"),
        ({"created_at": {"$gt": True}}, "Unix seconds"),
        ({"created_at": {"$regex": "2024"}}, "text fields"),
        ({"created_at": 1e300}, "out of range"),
        ({"exit_code": 1.5}, "integer"),
        ({"exit_code": "0"}, "integer"),
        ({"name": "bad\ud800"}, "surrogate"),
        ({1: 2}, "field name must be a string"),
    ],
)
def test_bad_filters_are_query_errors_that_say_what_is_allowed(filters, message):
    with pytest.raises(QueryError, match=message):
        compile_filters(filters)


def test_a_filter_must_be_an_object():
    for bad in ([{"state": "x"}], "state", 3):
        with pytest.raises(QueryError, match="must be an object"):
            compile_filters(bad)


def _nested(depth: int) -> dict:
    doc: dict = {"state": "x"}
    for _ in range(depth - 1):
        doc = {"$and": [doc]}
    return doc


def test_nesting_is_limited():
    _compiled(_nested(MAX_DEPTH // 2))
    with pytest.raises(QueryError, match=f"more than {MAX_DEPTH} levels"):
        compile_filters(_nested(MAX_DEPTH + 1))
    deep_not: dict = {"$gt": 1}
    for _ in range(MAX_DEPTH + 1):
        deep_not = {"$not": deep_not}
    with pytest.raises(QueryError, match=f"more than {MAX_DEPTH} levels"):
        compile_filters({"config.x": deep_not})


def test_one_placeholder_per_distinct_key():
    out = _compiled({"config.lr": {"$gt": 0.1, "$lt": 0.5, "$ne": 0.3}})
    assert list(out.params.values()).count("lr") == 1


# -- what one filter may cost: each bound is a QueryError naming it (a 400) ----------------------------------


@pytest.mark.parametrize(
    ("filters", "bound"),
    [
        ({f"config.k{i}": i for i in range(MAX_MAP_KEYS + 1)}, "map_keys"),
        ({"$or": [{f"config.k{i}": 1} for i in range(60)] + [{f"summary.k{i}": 1} for i in range(60)]}, "map_keys"),
        ({"$and": [{"state": {"$ne": str(i)}} for i in range(MAX_CONDITIONS + 1)]}, "conditions"),
        ({"$and": [{"$and": [{}] * 100}, {"$and": [{}] * 101}]}, "conditions"),
        ({"$and": [{f"config.k{i}": {"$in": list(range(1000))}} for i in range(11)]}, "items"),
        ({"config.lr": {"$in": list(range(MAX_ITEMS + 1))}}, "list_items"),
        ({"$or": [{"name": {"$regex": f"^{i}"}} for i in range(MAX_REGEXES + 1)]}, "regexes"),
        (_nested(MAX_DEPTH + 1), "depth"),
    ],
)
def test_a_filter_past_a_bound_says_which(filters, bound):
    with pytest.raises(QueryError) as refused:
        compile_filters(filters)
    assert refused.value.details["bound"] == bound
    assert "at most" in refused.value.message or "levels deep" in refused.value.message


def test_a_filter_at_its_bounds_compiles():
    at_keys = _compiled({f"config.k{i}": {"$gt": i, "$lt": i + 1} for i in range(MAX_MAP_KEYS - 1)})
    assert len(at_keys.params) > MAX_MAP_KEYS
    _compiled({"$or": [{"name": {"$regex": f"^{i}"}} for i in range(MAX_REGEXES)]})
    _compiled({"config.k": {"$in": list(range(MAX_ITEMS))}, "summary.k": {"$nin": list(range(MAX_ITEMS))}})
