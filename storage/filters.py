"""Run filters in the style of the wandb public API, compiled to a parameterized WHERE clause.

A filter is a MongoDB-like document::

    {"$and": [{"state": "finished"},
              {"config.optimizer": {"$in": ["adam", "sgd"]}},
              {"summary.acc": {"$gte": 0.9}},
              {"tags": "baseline"}]}

``compile_filters`` turns it into a SQL fragment over the columns of the runs
query (``runs`` joined with ``run_summaries``) plus a parameter dict. Every key
and value the user sends travels as a ``{fN:Type}`` query parameter; the SQL
text is built only from this module's constants and the column whitelist, so no
input, however hostile, can change the statement.

Semantics follow MongoDB where the two could differ:

- A bare value means ``$eq``; several operators on one field all apply (AND).
- Config and summary values keep their JSON type: a number matches numbers
  only (``1`` matches a stored ``1.0`` but not ``true``), ``"1"`` matches the
  string only, and ``$gt``/``$lt`` with a number compare numbers, with a string
  compare strings. A key a run lacks never matches a comparison.
- ``$ne``/``$nin``/``$not`` are exact negations, so they match runs that lack
  the key; ``{"config.x": None}`` matches ``null`` and missing alike.
- ``config.<x>.value``, W&B's spelling of a config value, reads ``config.<x>``
  in each run whose config has no ``<x>.value`` (in filters, sorts and groups).
- What a filter may cost is bounded (``MAX_*`` below: distinct config/summary keys,
  conditions, nesting, list values, patterns): past one, a ``QueryError`` whose
  ``details["bound"]`` names it. The runs queries add engine limits of their own
  (``storage.runs.QUERY_SETTINGS``).
- ``$regex`` is an RE2 pattern (``(?i)`` for case-insensitive) matched against
  string values; ``check_regexes`` asks the engine to compile each pattern first
  so a bad one is a ``QueryError`` rather than an engine failure.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from runstream.storage.errors import QueryError

MAX_DEPTH = 16
MAX_ITEMS = 1000
MAX_KEY_LENGTH = 256
MAX_REGEX_LENGTH = 1000
# What one filter may cost. The engine's analysis of a WHERE clause grows faster than its size, so a
# filter is bounded before it reaches SQL: each bound is a 400 that names it (``details.bound``).
MAX_CONDITIONS = 200  # operator conditions ({"$gt": 1} is one, a bare value one, an empty {} one)
MAX_MAP_KEYS = 100  # distinct config.<key> / summary.<key> fields
MAX_TOTAL_ITEMS = 10_000  # values in all $in / $nin lists together
MAX_REGEXES = 20  # distinct $regex patterns (each is compiled by the engine first)

COMPARISONS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
OPERATORS = ("$eq", "$ne", *COMPARISONS, "$in", "$nin", "$regex", "$exists", "$not")
LOGICAL = ("$and", "$or", "$nor")


@dataclass(frozen=True)
class Column:
    """A run column a filter, sort or grouping may name: the SQL to read it and how its values compare."""

    name: str  # the canonical field name users see
    sql: str  # a column of the runs query, from this table only
    kind: str  # "string" | "time" | "int" | "tags"
    nullable: bool = False


@dataclass(frozen=True)
class MapKey:
    """A flattened config or summary key: JSON text in ``text``, numbers and bools in ``num``."""

    prefix: str  # "config" | "summary"
    key: str

    @property
    def name(self) -> str:
        return f"{self.prefix}.{self.key}"

    @property
    def text(self) -> str:
        return self.prefix

    @property
    def num(self) -> str:
        return f"{self.prefix}_num"

    @property
    def fallback(self) -> str | None:
        """What ``config.<x>.value`` reads in a run whose config has no ``<x>.value``: ``<x>``. W&B's stored
        config reads {"lr": {"value": 0.01}}, so W&B users write config.lr.value for runstream's config.lr."""
        if self.prefix == "config" and self.key.endswith(".value") and len(self.key) > len(".value"):
            return self.key[: -len(".value")]
        return None

    def key_sql(self, placeholder: Callable[[str], str]) -> str:
        """The SQL of the map key each row reads (``placeholder`` binds a string): the key, or per row
        the fallback when the row lacks the key. The text map holds every key, so it decides for both maps."""
        k = placeholder(self.key)
        if self.fallback is None:
            return k
        return f"if(mapContains({self.text}, {k}), {k}, {placeholder(self.fallback)})"


_COLUMNS = [
    Column("state", "state", "string"),
    Column("name", "name", "string"),
    Column("run_id", "run_id", "string"),
    Column("group", "run_group", "string"),
    Column("job_type", "job_type", "string"),
    Column("user", "user", "string"),
    Column("host", "host", "string"),
    Column("notes", "notes", "string"),
    Column("program", "program", "string"),
    Column("tags", "tags", "tags"),
    Column("created_at", "created_at", "time"),
    Column("updated_at", "updated_at", "time"),
    Column("heartbeat_at", "heartbeat_at", "time"),
    Column("finished_at", "finished_at", "time", nullable=True),
    Column("exit_code", "exit_code", "int", nullable=True),
    Column("sweep", "sweep_id", "string"),  # the sweep's id; '' for a run of no sweep
]
# wandb's public API spells some fields differently (displayName, createdAt, ...).
_ALIASES = {
    "display_name": "name",
    "displayName": "name",
    "id": "run_id",
    "jobType": "job_type",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "heartbeatAt": "heartbeat_at",
    "finishedAt": "finished_at",
    "username": "user",
    "sweep_id": "sweep",
}
COLUMNS: dict[str, Column] = {c.name: c for c in _COLUMNS}
COLUMNS |= {alias: COLUMNS[name] for alias, name in _ALIASES.items()}
MAP_PREFIXES = {"config.": "config", "summary.": "summary", "summary_metrics.": "summary"}

FIELD_HELP = (
    f"fields are {', '.join(c.name for c in _COLUMNS)}, config.<key> and summary.<key> "
    "(<key> is the dotted path of a nested value, e.g. config.optimizer.lr)"
)


def _show(value: Any, limit: int = 80) -> str:
    """A short repr for error messages (a 10,000-character key is not echoed whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def check_key(key: str, what: str = "key") -> str:
    """A config/summary key must be 1..256 characters with no control characters."""
    if not isinstance(key, str) or not key:
        raise QueryError(f"the {what} must be a non-empty string", key=_show(key))
    if len(key) > MAX_KEY_LENGTH:
        raise QueryError(
            f"the {what} is {len(key)} characters long; at most {MAX_KEY_LENGTH} are allowed", key=_show(key)
        )
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in key):
        raise QueryError(f"the {what} {_show(key)} contains a control character or a lone surrogate", key=_show(key))
    return key


def resolve_field(name: Any) -> Column | MapKey:
    """The column or map key a field name refers to; only whitelisted names resolve."""
    if not isinstance(name, str):
        raise QueryError(f"a field name must be a string, not {_show(name)}; {FIELD_HELP}")
    if name in COLUMNS:
        return COLUMNS[name]
    for prefix, source in MAP_PREFIXES.items():
        if name.startswith(prefix):
            return MapKey(source, check_key(name[len(prefix) :], f"{source} key"))
    raise QueryError(f"unknown field {_show(name)}; {FIELD_HELP}", field=_show(name))


@dataclass
class Compiled:
    """A WHERE fragment, its parameters, and the regex patterns to check before running it."""

    sql: str
    params: dict[str, Any]
    regexes: list[str] = field(default_factory=list)
    uses_summary: bool = False


class _Compiler:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Any] = {}
        self._strings: dict[str, str] = {}  # one placeholder per distinct key or string
        self.regexes: list[str] = []
        self.uses_summary = False
        self.conditions = 0
        self.items = 0
        self.map_keys: set[tuple[str, str]] = set()

    def param(self, value: Any, type_: str) -> str:
        """A placeholder for a value; the value itself never enters the SQL text."""
        if type_ == "String" and value in self._strings:
            return self._strings[value]
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str) and not _encodable(text):
                raise QueryError(f"the value {_show(text)} is not valid Unicode (it has a lone surrogate)")
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        placeholder = f"{{{name}:{type_}}}"
        if type_ == "String":
            self._strings[value] = placeholder
        return placeholder

    # -- documents: {field: condition, "$and": [...], ...} --------------------------

    def document(self, doc: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"the filter is nested more than {MAX_DEPTH} levels deep", bound="depth", limit=MAX_DEPTH)
        if not isinstance(doc, Mapping):
            raise QueryError(f"a filter must be an object of field conditions, not {_show(doc)}")
        if not doc:  # an empty document is a condition too (it matches all), so {} * 1000 costs as much
            self.conditions += 1
            _bound("conditions", self.conditions, MAX_CONDITIONS, "conditions", "send a shorter filter")
        parts = []
        for name, cond in doc.items():
            if name in LOGICAL:
                parts.append(self.logical(name, cond, depth))
            elif isinstance(name, str) and name.startswith("$"):
                raise QueryError(
                    f"unknown operator {_show(name)} at the top of a filter; use {', '.join(LOGICAL)} "
                    f"or a field condition ({FIELD_HELP})"
                )
            else:
                parts.append(self.field(resolve_field(name), cond, depth + 1))
        return _all(parts)

    def logical(self, op: str, items: Any, depth: int) -> str:
        if not isinstance(items, list) or not items:
            raise QueryError(f"{op} takes a non-empty list of filters, not {_show(items)}")
        _check_items(op, items)
        parts = [self.document(item, depth + 1) for item in items]
        if op == "$and":
            return _all(parts)
        either = "(" + " OR ".join(parts) + ")" if len(parts) > 1 else parts[0]
        return either if op == "$or" else f"NOT {either}"

    # -- one field: a bare value or {"$op": value, ...} -----------------------------

    def field(self, target: Column | MapKey, cond: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise QueryError(f"the filter is nested more than {MAX_DEPTH} levels deep", bound="depth", limit=MAX_DEPTH)
        if isinstance(target, MapKey):
            self.uses_summary |= target.prefix == "summary"
            self.map_keys.add((target.prefix, target.key))
            _bound(
                "map_keys",
                len(self.map_keys),
                MAX_MAP_KEYS,
                "distinct config/summary keys",
                "filter on fewer keys, or select the runs in several requests",
            )
        if not (isinstance(cond, Mapping) and cond):
            return self.operator(target, "$eq", cond, depth)
        keys = list(cond)
        if not all(isinstance(k, str) and k.startswith("$") for k in keys):
            raise QueryError(
                f"the condition on {target.name!r} mixes operators and plain keys ({_show(keys)}); use operators "
                f"({', '.join(OPERATORS)}), and dotted keys for nested values (config.a.b)"
            )
        return _all([self.operator(target, op, value, depth) for op, value in cond.items()])

    def operator(self, target: Column | MapKey, op: str, value: Any, depth: int) -> str:
        self.conditions += 1
        _bound("conditions", self.conditions, MAX_CONDITIONS, "conditions", "send a shorter filter")
        if op == "$not":
            if not (isinstance(value, Mapping) and value):
                raise QueryError(
                    f'$not takes an object of operators, e.g. {{"$not": {{"$gt": 1}}}}, not {_show(value)}'
                )
            return f"NOT {self.field(target, value, depth + 1)}"
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise QueryError(f"{op} on {target.name!r} takes a list of values, not {_show(value)}")
            _check_items(op, value)
            self.items += len(value)
            _bound("items", self.items, MAX_TOTAL_ITEMS, "values in its $in/$nin lists", "send fewer values")
            if not value:  # nothing is in an empty list
                return "0" if op == "$in" else "1"
        elif op == "$regex":
            self.regexes.append(_regex(value))
            distinct = len(set(self.regexes))
            _bound("regexes", distinct, MAX_REGEXES, "distinct $regex patterns", "combine patterns with |")
        elif op == "$exists":
            if not isinstance(value, bool):
                raise QueryError(f"$exists on {target.name!r} takes true or false, not {_show(value)}")
        elif op not in OPERATORS:
            hint = " (put regex flags inline, e.g. (?i)abc)" if op == "$options" else ""
            raise QueryError(
                f"unknown operator {_show(op)} on {target.name!r}{hint}; use one of {', '.join(OPERATORS)}"
            )
        if isinstance(target, MapKey):
            return self.map_op(target, op, value)
        by_kind = {"string": self.string_op, "time": self.number_op, "int": self.number_op, "tags": self.tags_op}
        return by_kind[target.kind](target, op, value)

    # -- run columns ----------------------------------------------------------------

    def string_op(self, col: Column, op: str, value: Any) -> str:
        c = col.sql
        if op == "$exists":
            return f"({c} != '')" if value else f"({c} = '')"
        if op == "$regex":
            return f"match({c}, {self.param(value, 'String')})"
        if op in ("$in", "$nin"):
            found = f"has({self.param([_string(col, v) for v in value], 'Array(String)')}, {c})"
            return found if op == "$in" else f"NOT {found}"
        if op in COMPARISONS:
            if not isinstance(value, str):
                raise QueryError(f"{op} on {col.name!r} takes a string, not {_show(value)}")
            return f"({c} {COMPARISONS[op]} {self.param(value, 'String')})"
        equal = f"({c} = {self.param(_string(col, value), 'String')})"
        return equal if op == "$eq" else f"NOT {equal}"

    def number_op(self, col: Column, op: str, value: Any) -> str:
        # Times compare as integer milliseconds; a nullable column's NULL never matches
        # a comparison (ifNull), so the negations ($ne, $nin, $not) do match it.
        convert = _time_ms if col.kind == "time" else _integer
        expr = f"toUnixTimestamp64Milli({col.sql})" if col.kind == "time" else col.sql
        type_ = "Int64"

        def guard(sql: str) -> str:
            return f"ifNull({sql}, 0)" if col.nullable else f"({sql})"

        if op == "$exists":
            return f"isNotNull({col.sql})" if value else f"isNull({col.sql})"
        if op == "$regex":
            raise QueryError(f"$regex applies to text fields, and {col.name!r} is a {col.kind}")
        if op in ("$in", "$nin"):
            values = [convert(col, v) for v in value if v is not None]
            found = guard(f"has({self.param(values, f'Array({type_})')}, {expr})")
            if None in value:
                found = f"({found} OR isNull({col.sql}))"
            return found if op == "$in" else f"NOT {found}"
        if value is None and op in ("$eq", "$ne"):
            return f"isNull({col.sql})" if op == "$eq" else f"isNotNull({col.sql})"
        sign = COMPARISONS.get(op, "=")
        test = guard(f"{expr} {sign} {self.param(convert(col, value), type_)}")
        return f"NOT {test}" if op == "$ne" else test

    def tags_op(self, col: Column, op: str, value: Any) -> str:
        if op == "$exists":
            return "notEmpty(tags)" if value else "empty(tags)"
        if op == "$regex":
            return f"arrayExists(t -> match(t, {self.param(value, 'String')}), tags)"
        if op in ("$in", "$nin"):
            found = f"hasAny(tags, {self.param([_string(col, v) for v in value], 'Array(String)')})"
            return found if op == "$in" else f"NOT {found}"
        if op in ("$eq", "$ne"):
            found = f"has(tags, {self.param(_string(col, value), 'String')})"
            return found if op == "$eq" else f"NOT {found}"
        raise QueryError(f"{op} does not apply to tags; use a tag string, $ne, $in, $nin, $regex or $exists")

    # -- config and summary keys ----------------------------------------------------

    def map_op(self, target: MapKey, op: str, value: Any) -> str:
        k = target.key_sql(lambda key: self.param(key, "String"))
        text, num = f"{target.text}[{k}]", f"{target.num}[{k}]"
        # A number is a key in the numeric map whose JSON is not true/false; a string is
        # quoted JSON not in the numeric map (non-finite floats are stored as "NaN" text).
        is_number = f"mapContains({target.num}, {k}) AND {text} NOT IN ('true', 'false')"
        is_string = f"startsWith({text}, '\"') AND NOT mapContains({target.num}, {k})"
        missing_or_null = f"(NOT mapContains({target.text}, {k}) OR {text} = 'null')"
        if op == "$exists":
            found = f"mapContains({target.text}, {k})"
            return found if value else f"NOT {found}"
        if op == "$regex":
            return f"({is_string} AND match(JSONExtractString({text}), {self.param(value, 'String')}))"
        if op in COMPARISONS:
            sign = COMPARISONS[op]
            if _is_number(value):
                return f"({is_number} AND {num} {sign} {self.param(_finite(target, value), 'Float64')})"
            if isinstance(value, str):
                return f"({is_string} AND JSONExtractString({text}) {sign} {self.param(value, 'String')})"
            raise QueryError(f"{op} on {target.name!r} takes a number or a string, not {_show(value)}")
        if op in ("$in", "$nin"):
            numbers = [_finite(target, v) for v in value if _is_number(v)]
            texts = [_json(target, v) for v in value if not _is_number(v) and v is not None]
            parts = []
            if numbers:
                parts.append(f"({is_number} AND has({self.param(numbers, 'Array(Float64)')}, {num}))")
            if texts:
                parts.append(f"has({self.param(texts, 'Array(String)')}, {text})")
            if None in value:
                parts.append(missing_or_null)
            found = "(" + " OR ".join(parts) + ")"
            return found if op == "$in" else f"NOT {found}"
        if value is None:
            found = missing_or_null
        elif _is_number(value):
            found = f"({is_number} AND {num} = {self.param(_finite(target, value), 'Float64')})"
        else:
            found = f"({text} = {self.param(_json(target, value), 'String')})"
        return found if op == "$eq" else f"NOT {found}"


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _all(parts: list[str]) -> str:
    if not parts:
        return "1"
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


def _bound(bound: str, count: int, limit: int, what: str, hint: str) -> None:
    """A QueryError (a 400) once a filter passes one of its bounds, naming the bound so a client can adapt."""
    if count > limit:
        raise QueryError(
            f"the filter has more than {limit:,} {what}; at most {limit:,} are allowed ({hint})",
            bound=bound,
            limit=limit,
        )


def _check_items(op: str, items: list) -> None:
    if len(items) > MAX_ITEMS:
        raise QueryError(
            f"{op} has {len(items)} items; at most {MAX_ITEMS} are allowed", bound="list_items", limit=MAX_ITEMS
        )


def _regex(pattern: Any) -> str:
    if not isinstance(pattern, str):
        raise QueryError(f"$regex takes a pattern string, not {_show(pattern)}")
    if len(pattern) > MAX_REGEX_LENGTH:
        raise QueryError(
            f"the $regex pattern is {len(pattern)} characters long; at most {MAX_REGEX_LENGTH} are allowed"
        )
    return pattern


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(target: Column | MapKey, value: int | float) -> float:
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise QueryError(f"the value for {target.name!r} must be a finite number, not {_show(value)}")
    return number


def _string(col: Column, value: Any) -> str:
    """A text column's comparison value; null means "not set", stored as ''."""
    if value is None and col.kind == "string":
        return ""
    if not isinstance(value, str):
        raise QueryError(f"{col.name!r} takes string values, not {_show(value)}")
    return value


def _json(target: MapKey, value: Any) -> str:
    """A value's JSON text, as the writer stores it in the text map."""
    if isinstance(value, Mapping) and value:
        raise QueryError(
            f"{target.name!r} cannot equal an object; nested values are stored under dotted keys "
            f"(filter on {target.prefix}.<key>.<subkey>)"
        )
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise QueryError(f"unsupported value for {target.name!r}: {_show(value)}") from exc


def _integer(col: Column, value: Any) -> int:
    if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
        raise QueryError(f"{col.name!r} takes integer values, not {_show(value)}")
    if abs(value) >= 2**62:
        raise QueryError(f"{col.name!r} value {_show(value)} is out of range")
    return int(value)


def _time_ms(col: Column, value: Any) -> int:
    """A time as integer milliseconds: Unix seconds, or an ISO-8601 string (UTC unless it says otherwise)."""
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise QueryError(
                f"{col.name!r} takes Unix seconds or an ISO-8601 time like 2024-05-01T12:00:00Z, not {_show(value)}"
            ) from exc
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    else:
        raise QueryError(f"{col.name!r} takes Unix seconds or an ISO-8601 time string, not {_show(value)}")
    if not math.isfinite(seconds) or abs(seconds) > 1e13:
        raise QueryError(f"{col.name!r} time {_show(value)} is out of range")
    return round(seconds * 1000)


def compile_filters(filters: Mapping[str, Any] | None, prefix: str = "f") -> Compiled:
    """Compile a filter document to ``Compiled(sql, params, regexes, uses_summary)``.

    ``sql`` is a boolean expression over the runs query's columns (``1`` for no
    filter); its placeholders are named ``{prefix}0``, ``{prefix}1``, ... Raises
    ``QueryError`` for anything it does not understand.
    """
    compiler = _Compiler(prefix)
    sql = "1" if filters is None else compiler.document(filters, 1)
    return Compiled(sql, compiler.params, compiler.regexes, compiler.uses_summary)


_RE2_ERROR = re.compile(r"error: (.*?)\. Look at", re.S)


def check_regexes(client: Client, patterns: Iterable[str]) -> None:
    """Have the engine compile each pattern once, so a bad one is a QueryError and not a failed query."""
    for pattern in dict.fromkeys(patterns):
        try:
            client.query("SELECT match('', {pattern:String})", parameters={"pattern": pattern})
        except DatabaseError as exc:
            found = _RE2_ERROR.search(str(exc))
            reason = found.group(1) if found else "not a valid RE2 pattern"
            raise QueryError(
                f"invalid regular expression {_show(pattern)}: {reason} (the syntax is RE2: "
                "https://github.com/google/re2/wiki/Syntax)",
                pattern=_show(pattern),
            ) from None
