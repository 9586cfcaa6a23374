"""Run search: filter, sort, page, count and group a project's runs, and list its keys.

Every page is one SQL statement: the current row of each run (``runs FINAL``)
left-joined with its current summary, filtered by a compiled filter document
(``storage.filters``), sorted, and cut with a keyset condition, so page 50 costs
what page 1 does and runs written between pages neither repeat nor vanish.

Sorting on a config or summary key is numeric when the key catalog has seen a
number or bool for it, else by the JSON text of the values. Runs without a
value (and, in a numeric sort, runs whose value is not a number, or NaN) come
last in both directions. Every sort ends with ``run_id``, so the order is total
and the cursor, which remembers the last row's sort values, is exact.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from runstream.storage.errors import QueryError
from runstream.storage.filters import Column, Compiled, MapKey, check_key, check_regexes, compile_filters, resolve_field

MAX_LIMIT = 1000
MAX_GROUP_KEYS = 8
MAX_AGGREGATES = 100
MAX_GROUPS = 10_000
_CURSOR_VERSION = 1
_MAX_CURSOR = 1_000_000

#: Each filtered query's own engine limits, so no single request can hold the engine for long; passing
#: one is a 400 that names it (``filtered_query``). ``query_plan_merge_filters`` off: merging a long chain
#: of filter steps is what made the engine's cost grow with the square of a filter's conditions.
MAX_EXECUTION_S = 30
QUERY_SETTINGS: dict[str, Any] = {
    "max_execution_time": MAX_EXECUTION_S,
    "timeout_overflow_mode": "throw",
    "max_query_size": 1 << 20,
    "max_ast_elements": 200_000,
    "max_expanded_ast_elements": 500_000,
    "max_ast_depth": 1000,
    "query_plan_merge_filters": 0,
}
# ClickHouse error codes of a passed limit: the bound each one names and how to say it.
_LIMIT_ERRORS = {
    159: ("execution_time", f"the query ran for more than {MAX_EXECUTION_S} s"),  # TIMEOUT_EXCEEDED
    160: ("execution_time", f"the query would run for more than {MAX_EXECUTION_S} s"),  # TOO_SLOW
    167: ("ast_depth", "the query is nested too deeply"),  # TOO_DEEP_AST
    168: ("ast_elements", "the query has too many elements"),  # TOO_BIG_AST
    306: ("ast_depth", "the query is nested too deeply"),  # TOO_DEEP_RECURSION
}
_CODE = re.compile(r"Code: (\d+)")


def filtered_query(client: Client, sql: str, params: dict[str, Any]) -> Any:
    """Run a query that carries a user's filter under ``QUERY_SETTINGS``; a passed limit is a QueryError."""
    known = getattr(client, "server_settings", None) or QUERY_SETTINGS
    # A server that does not know a setting (an older release) would refuse the query: leave that one out.
    settings = {name: value for name, value in QUERY_SETTINGS.items() if name in known}
    try:
        return client.query(sql, parameters=params, settings=settings)
    except DatabaseError as exc:
        text = str(exc)
        found = _CODE.search(text)
        code = getattr(exc, "code", None) or (int(found.group(1)) if found else 0)
        if code in _LIMIT_ERRORS or "Max query size exceeded" in text:
            bound, said = _LIMIT_ERRORS.get(int(code), ("query_size", "the query is too large"))
            raise QueryError(
                f"{said}, past what one request may cost; narrow the filter (fewer conditions, keys or runs)",
                bound=bound,
            ) from None
        raise


# The current summary of each run in the project; runs without one get empty maps.
_SUMMARIES = """
LEFT JOIN (SELECT run_id, summary, summary_num FROM run_summaries FINAL
           WHERE team = {team:String} AND project = {project:String}) AS s USING (run_id)"""

_PROJECT = "team = {team:String} AND project = {project:String}"
# A project's runs, less the deleted and moved ones (storage/deletion.py): hidden from the moment their
# tombstone is written, while their rows are still being removed.
_RUNS = f"{_PROJECT} AND run_id NOT IN (SELECT run_id FROM run_tombstones WHERE {_PROJECT})"

# Times travel as integer milliseconds; non-finite floats are stored as "NaN"/"Infinity"
# JSON strings, so the few numeric-map entries that are not finite come along to restore them.
_PLAIN_COLUMNS = """
    run_id, name, state,
    toUnixTimestamp64Milli(created_at) AS _created_ms, toUnixTimestamp64Milli(updated_at) AS _updated_ms,
    toUnixTimestamp64Milli(heartbeat_at) AS _heartbeat_ms, toUnixTimestamp64Milli(finished_at) AS _finished_ms,
    exit_code, run_group, job_type, tags, notes, user, host, program, args, python, git, error, metric_defs,
    sweep_id"""
#: The maps, the costly part of a run (the summaries come from a join): a search may leave them out.
_MAP_COLUMNS = {
    "config": "config, mapFilter((k, v) -> NOT isFinite(v), config_num) AS _config_nonfinite",
    "summary": "summary, mapFilter((k, v) -> NOT isFinite(v), summary_num) AS _summary_nonfinite",
}
MAPS = tuple(_MAP_COLUMNS)
_RUN_COLUMNS = ", ".join([_PLAIN_COLUMNS, *_MAP_COLUMNS.values()])


# -- sorting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sort:
    """How rows order for one sort key: (missing, number, text, run_id), missing always last."""

    name: str  # canonical, with direction: "-summary.acc"
    descending: bool
    missing: str
    number: str
    text: str
    with_: str = ""  # defines _numeric: whether a config/summary key sorts as a number
    params: Mapping[str, str] = field(default_factory=dict)


def _sort(order: Any) -> _Sort:
    if not isinstance(order, str) or order.lstrip("+-") == "":
        raise QueryError(f"order must be a field name with an optional - (descending) or + prefix, not {order!r}")
    descending = order.startswith("-")
    target = resolve_field(order[1:] if order[0] in "+-" else order)
    name = ("-" if descending else "+") + target.name
    if isinstance(target, MapKey):
        return _map_sort(name, descending, target)
    if target.kind == "tags":
        raise QueryError("runs cannot be sorted by tags; sort by a run column, config.<key> or summary.<key>")
    if target.kind == "string":
        return _Sort(name, descending, f"({target.sql} = '')", "0.", target.sql)
    value = f"toUnixTimestamp64Milli({target.sql})" if target.kind == "time" else target.sql
    missing = f"isNull({target.sql})" if target.nullable else "0"
    return _Sort(name, descending, missing, f"toFloat64(ifNull({value}, 0))", "''")


def _map_sort(name: str, descending: bool, key: MapKey) -> _Sort:
    # Whether to sort numerically is the catalog's answer, read in the same statement
    # (later pages reuse the first page's answer, kept in the cursor).
    params = {"sort_kind": key.prefix}
    k = _map_key(key, "sort_key", params)
    keys = ", ".join(f"{{{bound}:String}}" for bound in params if bound != "sort_kind")
    numeric = (
        "WITH (SELECT count() > 0 FROM key_catalog WHERE team = {team:String} AND project = {project:String}"
        f" AND kind = {{sort_kind:String}} AND key IN ({keys}) AND type IN ('number', 'bool')) AS _numeric"
    )
    text, num = f"{key.text}[{k}]", f"{key.num}[{k}]"
    missing = f"if(_numeric, NOT mapContains({key.num}, {k}) OR isNaN({num}), NOT mapContains({key.text}, {k}))"
    return _Sort(
        name,
        descending,
        f"toUInt8({missing})",
        f"if(_numeric AND _missing = 0, {num}, 0.)",
        f"if(_numeric OR _missing = 1, '', {text})",
        numeric,
        params,
    )


def _map_key(key: MapKey, name: str, params: dict[str, Any]) -> str:
    """The SQL of the map key a row reads for ``key`` (``MapKey.key_sql``), bound as ``name`` (and ``name_alt``)."""
    names = iter((name, f"{name}_alt"))

    def placeholder(value: str) -> str:
        bound = next(names)
        params[bound] = value
        return f"{{{bound}:String}}"

    return key.key_sql(placeholder)


def _encode_cursor(sort: _Sort, row: Mapping[str, Any]) -> str:
    """The last row's place in the order (floats as repr, exact and JSON-safe even when infinite)."""
    payload = [
        _CURSOR_VERSION,
        sort.name,
        int(row["_numeric_sort"]),
        int(row["_missing"]),
        repr(float(row["_num"])),
        row["_text"],
        row["run_id"],
    ]
    return base64.urlsafe_b64encode(orjson.dumps(payload)).rstrip(b"=").decode()


def _decode_cursor(cursor: Any, sort: _Sort) -> dict[str, Any]:
    """The keyset parameters of a cursor made by this sort; anything else is a QueryError."""
    if not isinstance(cursor, str) or len(cursor) > _MAX_CURSOR:
        raise QueryError("malformed cursor: pass next_cursor from the previous page unchanged")
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        version, name, numeric, missing, number, text, run_id = payload
        if (
            version != _CURSOR_VERSION
            or not all(type(v) is int and v in (0, 1) for v in (numeric, missing))
            or not all(isinstance(v, str) for v in (name, number, text, run_id))
        ):
            raise ValueError
        number = float(number)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise QueryError("malformed cursor: pass next_cursor from the previous page unchanged") from None
    if name != sort.name:
        raise QueryError(
            f"this cursor belongs to a search ordered by {name!r}, not {sort.name!r}; start again without a cursor",
            cursor_order=name,
            order=sort.name,
        )
    return {"c_numeric": numeric, "c_missing": missing, "c_number": number, "c_text": text, "c_run": run_id}


# -- decoding rows -------------------------------------------------------------------------


def _decode(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys back to nested dicts: {"opt.lr": 1} -> {"opt": {"lr": 1}}.

    Flattening loses whether a dot was a level or part of a key; where a dotted
    key collides with a value ({"a": 1, "a.b": 2}) it stays dotted at that level.
    """
    nested: dict[str, Any] = {}
    for key in sorted(flat):  # "a" sorts before "a.b": values are placed before their would-be children
        parts = key.split(".")
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                node[".".join(parts[i:])] = flat[key]
                break
            node = child
        else:
            node[parts[-1]] = flat[key]
    return nested


def _values(text: Mapping[str, str], nonfinite: Mapping[str, float]) -> dict[str, Any]:
    return unflatten({k: nonfinite[k] if k in nonfinite else _decode(v) for k, v in text.items()})


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def _run(row: Mapping[str, Any]) -> dict[str, Any]:
    git = _decode(row["git"]) if row["git"] else {}
    return {
        "run_id": row["run_id"],
        "name": row["name"],
        "state": row["state"],
        "created_at": _seconds(row["_created_ms"]),
        "updated_at": _seconds(row["_updated_ms"]),
        "heartbeat_at": _seconds(row["_heartbeat_ms"]),
        "finished_at": _seconds(row["_finished_ms"]),
        "exit_code": row["exit_code"],
        "group": row["run_group"] or None,
        "job_type": row["job_type"] or None,
        "tags": list(row["tags"]),
        "notes": row["notes"],
        "user": row["user"],
        "host": row["host"],
        "program": row["program"],
        "args": list(row["args"]),
        "python": row["python"],
        "git": git if isinstance(git, dict) else {},
        "error": row["error"] or None,
        "metrics": _decode(row["metric_defs"] or "[]"),
        "sweep": row["sweep_id"] or None,
        **{name: _values(row[name], row[f"_{name}_nonfinite"]) for name in MAPS if name in row},
    }


# -- queries -------------------------------------------------------------------------------


def _check_project(team: Any, project: Any) -> dict[str, str]:
    for what, value in (("team", team), ("project", project)):
        if not isinstance(value, str) or not value:
            raise QueryError(f"{what} must be a non-empty string")
    return {"team": team, "project": project}


def _where(client: Client, filters: Mapping[str, Any] | None) -> Compiled:
    """The compiled filter, its regex patterns already checked by the engine."""
    compiled = compile_filters(filters)
    check_regexes(client, compiled.regexes)
    return compiled


def search_runs(
    client: Client,
    team: str,
    project: str,
    filters: Mapping[str, Any] | None = None,
    order: str = "-created_at",
    limit: int = 100,
    cursor: str | None = None,
    maps: Collection[str] = MAPS,
) -> dict[str, Any]:
    """One page of a project's runs: ``{"runs": [...], "next_cursor": str | None}``.

    ``order`` is a run column, ``config.<key>`` or ``summary.<key>``, ``-`` first
    for descending; ``cursor`` is a previous page's ``next_cursor``. ``maps`` are the
    maps each run comes with (config, summary); without the summary, the summaries are
    joined only when the filter or the order needs them.
    """
    if not set(maps) <= set(MAPS):
        raise QueryError(f"maps are some of {', '.join(MAPS)}, not {sorted(maps)!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    params = _check_project(team, project)
    sort = _sort(order)
    params |= sort.params
    compiled = _where(client, filters)
    params |= compiled.params
    direction, after = ("DESC", "<") if sort.descending else ("ASC", ">")
    keyset, with_ = "1", sort.with_
    if cursor is not None:
        params |= _decode_cursor(cursor, sort)
        with_ = "WITH {c_numeric:UInt8} AS _numeric" if sort.with_ else ""
        keyset = (
            "(_missing > {c_missing:UInt8} OR (_missing = {c_missing:UInt8} AND "
            f"(_num, _text, run_id) {after} ({{c_number:Float64}}, {{c_text:String}}, {{c_run:String}})))"
        )
    columns = ", ".join([_PLAIN_COLUMNS, *(_MAP_COLUMNS[name] for name in MAPS if name in maps)])
    joined = "summary" in maps or compiled.uses_summary or sort.name[1:].startswith("summary.")
    sql = f"""{with_}
SELECT {columns}, {"toUInt8(_numeric)" if sort.with_ else "0"} AS _numeric_sort,
    {sort.missing} AS _missing, {sort.number} AS _num, {sort.text} AS _text
FROM runs FINAL {_SUMMARIES if joined else ""}
WHERE {_RUNS} AND {compiled.sql} AND {keyset}
ORDER BY _missing ASC, _num {direction}, _text {direction}, run_id {direction}
LIMIT {limit + 1}"""
    rows = list(filtered_query(client, sql, params).named_results())
    more = len(rows) > limit
    rows = rows[:limit]
    return {"runs": [_run(r) for r in rows], "next_cursor": _encode_cursor(sort, rows[-1]) if more else None}


def get_run(client: Client, team: str, project: str, run_id: str) -> dict[str, Any] | None:
    """One run with its config and summary, or None."""
    if not isinstance(run_id, str):
        raise QueryError("run_id must be a string")
    params = _check_project(team, project) | {"run": run_id}
    sql = f"SELECT {_RUN_COLUMNS} FROM runs FINAL {_SUMMARIES} WHERE {_RUNS} AND run_id = {{run:String}}"
    rows = list(client.query(sql, parameters=params).named_results())
    return _run(rows[0]) if rows else None


def count_runs(client: Client, team: str, project: str, filters: Mapping[str, Any] | None = None) -> int:
    """How many of a project's runs match the filters."""
    params = _check_project(team, project)
    compiled = _where(client, filters)
    join = _SUMMARIES if compiled.uses_summary else ""
    sql = f"SELECT count() FROM runs FINAL {join} WHERE {_RUNS} AND {compiled.sql}"
    return int(filtered_query(client, sql, params | compiled.params).result_rows[0][0])


def matching_run_ids(
    client: Client, team: str, project: str, filters: Mapping[str, Any] | None = None, limit: int = 100_000
) -> list[str]:
    """The ids of the runs that match, oldest first: how charts and exports select runs by a filter.

    More than ``limit`` matches is a QueryError (narrow the filter), never a silent cut.
    """
    params = _check_project(team, project)
    compiled = _where(client, filters)
    join = _SUMMARIES if compiled.uses_summary else ""
    sql = (
        f"SELECT run_id FROM runs FINAL {join} WHERE {_RUNS} AND {compiled.sql} "
        f"ORDER BY created_at, run_id LIMIT {int(limit) + 1}"
    )
    ids = [row[0] for row in filtered_query(client, sql, params | compiled.params).result_rows]
    if len(ids) > limit:
        raise QueryError(f"the filter matches more than {limit:,} runs; narrow it", limit=limit)
    return ids


def select_runs(
    client: Client,
    team: str,
    project: str,
    select: Sequence[str],
    params: Mapping[str, Any],
    filters: Mapping[str, Any] | None = None,
    order: str = "-created_at",
    limit: int = MAX_LIMIT,
    *,
    summaries: bool = False,
) -> tuple[list[Sequence[Any]], int]:
    """Columns of the runs that match, in ``order`` as ``search_runs`` sorts them, at most ``limit``; and how many match.

    ``select`` are SQL expressions over the runs query's columns (``Column.sql``, ``MapKey.text``/``num``,
    the summaries joined with ``summaries``), their parameters in ``params`` (named apart from ``team``,
    ``project``, ``f<N>`` and ``sort_*``). One statement, answered column by column: how panels read
    thousands of runs' values (``storage.panels``).
    """
    params = _check_project(team, project) | dict(params)
    sort = _sort(order)
    compiled = _where(client, filters)
    params |= sort.params
    params |= compiled.params
    direction = "DESC" if sort.descending else "ASC"
    joined = summaries or compiled.uses_summary or sort.name[1:].startswith("summary.")
    sql = f"""{sort.with_}
SELECT {", ".join(select)}, count() OVER () AS _total,
    {sort.missing} AS _missing, {sort.number} AS _num, {sort.text} AS _text
FROM runs FINAL {_SUMMARIES if joined else ""}
WHERE {_RUNS} AND {compiled.sql}
ORDER BY _missing ASC, _num {direction}, _text {direction}, run_id {direction}
LIMIT {int(limit)}"""
    columns = filtered_query(client, sql, params).result_columns
    if not columns or not len(columns[0]):
        return [[] for _ in select], 0
    return list(columns[: len(select)]), int(columns[len(select)][0])


def group_runs(
    client: Client,
    team: str,
    project: str,
    by: Sequence[str],
    filters: Mapping[str, Any] | None = None,
    aggregates: Sequence[str] = (),
    *,
    run_ids: bool = False,
    limit: int = MAX_GROUPS,
) -> list[dict[str, Any]]:
    """Matching runs grouped by one or more fields, with numeric statistics per group.

    ``by`` names text columns (group, job_type, state, user, host, name, ...),
    ``tags`` (a run counts once under each of its tags) or ``config.<key>`` /
    ``summary.<key>``; a run without the value groups under None. ``aggregates``
    are summary keys (``acc`` or ``summary.acc``) or ``config.<key>``, each giving
    ``{"mean", "min", "max", "count"}`` over the group's numeric values (NaN and
    bools skipped). Groups order by their values: numbers numerically, then text,
    None last. ``run_ids=True`` adds each group's sorted run ids.
    """
    params = _check_project(team, project)
    if isinstance(by, str) or not isinstance(by, Sequence) or not 1 <= len(by) <= MAX_GROUP_KEYS:
        raise QueryError(f"by must be a list of 1 to {MAX_GROUP_KEYS} fields")
    if len(set(by)) != len(by):
        raise QueryError("by names a field more than once")
    if isinstance(aggregates, str) or not isinstance(aggregates, Sequence) or len(aggregates) > MAX_AGGREGATES:
        raise QueryError(f"aggregates must be a list of at most {MAX_AGGREGATES} summary keys")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_GROUPS:
        raise QueryError(f"limit must be an integer from 1 to {MAX_GROUPS}")

    targets = [resolve_field(name) for name in by]
    columns, group_by, order_by = [], [], []
    for i, target in enumerate(targets):
        value, number = _group_key(target, f"g{i}", params)
        columns += [f"{value} AS _g{i}", f"{number} AS _o{i}"]
        group_by += [f"_g{i}", f"_o{i}"]
        order_by += [f"_o{i} ASC NULLS LAST", f"_g{i} ASC NULLS LAST"]
    for i, name in enumerate(aggregates):
        key = _aggregate_key(name)
        k = _map_key(key, f"a{i}", params)
        num = f"{key.num}[{k}]"
        ok = f"mapContains({key.num}, {k}) AND NOT isNaN({num}) AND {key.text}[{k}] NOT IN ('true', 'false')"
        columns += [
            f"countIf({ok}) AS _n{i}",
            f"avgIf({num}, {ok}) AS _mean{i}",
            f"minIf({num}, {ok}) AS _min{i}",
            f"maxIf({num}, {ok}) AS _max{i}",
        ]
    if run_ids:
        columns.append("arraySort(groupArray(run_id)) AS _runs")
    compiled = _where(client, filters)
    sql = f"""SELECT count() AS _count, {", ".join(columns)}
FROM runs FINAL {_SUMMARIES}
WHERE {_RUNS} AND {compiled.sql}
GROUP BY {", ".join(group_by)}
ORDER BY {", ".join(order_by)}
LIMIT {limit}"""
    groups = []
    for row in filtered_query(client, sql, params | compiled.params).named_results():
        group = {
            "group": {name: _group_value(target, row[f"_g{i}"]) for i, (name, target) in enumerate(zip(by, targets))},
            "count": row["_count"],
            "summary": {
                name: {"mean": row[f"_mean{i}"], "min": row[f"_min{i}"], "max": row[f"_max{i}"], "count": row[f"_n{i}"]}
                if row[f"_n{i}"]
                else {"mean": None, "min": None, "max": None, "count": 0}
                for i, name in enumerate(aggregates)
            },
        }
        if run_ids:
            group["run_ids"] = list(row["_runs"])
        groups.append(group)
    return groups


def _group_key(target: Column | MapKey, name: str, params: dict[str, Any]) -> tuple[str, str]:
    """The SQL of a grouping value (NULL when missing) and of its numeric order (NULL when not a number)."""
    if isinstance(target, MapKey):
        k = _map_key(target, name, params)
        return (
            f"if(mapContains({target.text}, {k}), {target.text}[{k}], NULL)",
            f"if(mapContains({target.num}, {k}) AND NOT isNaN({target.num}[{k}]), {target.num}[{k}], NULL)",
        )
    if target.kind == "tags":
        return "arrayJoin(if(empty(tags), [NULL], arrayMap(t -> toNullable(t), tags)))", "NULL"
    if target.kind == "string":
        return f"nullIf(toString({target.sql}), '')", "NULL"
    raise QueryError(
        f"runs cannot be grouped by {target.name!r}; group by a text field, tags, config.<key> or summary.<key>"
    )


def _group_value(target: Column | MapKey, value: str | None) -> Any:
    return _decode(value) if isinstance(target, MapKey) and value is not None else value


def _aggregate_key(name: Any) -> MapKey:
    """``summary.acc``, ``config.lr``, or a bare summary key ``acc``."""
    if not isinstance(name, str):
        raise QueryError(f"an aggregate must be a summary key, not {name!r}")
    if name.startswith(("summary.", "summary_metrics.", "config.")):
        target = resolve_field(name)
        assert isinstance(target, MapKey)
        return target
    return MapKey("summary", check_key(name, "summary key"))


def key_catalog(client: Client, team: str, project: str) -> dict[str, list[dict[str, Any]]]:
    """The keys a project has seen, by kind, each with the JSON types seen: ``{"config": [{"key", "types"}], ...}``."""
    params = _check_project(team, project)
    rows = client.query(
        f"""SELECT toString(kind), key, arraySort(groupUniqArray(type)) FROM key_catalog
WHERE {_PROJECT} GROUP BY kind, key ORDER BY kind, key""",
        parameters=params,
    ).result_rows
    catalog: dict[str, list[dict[str, Any]]] = {"config": [], "summary": [], "metric": [], "system": []}
    for kind, key, types in rows:
        catalog[kind].append({"key": key, "types": list(types)})
    return catalog
