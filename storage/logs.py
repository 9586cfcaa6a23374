"""Per-run logs besides metric history: system metric series, console output, files and media, alerts.

Every query reads the current rows only: ``FINAL`` where a later row replaces
an earlier one (system samples, files, alerts), and ``LIMIT 1 BY`` the line's
identity for console lines, whose copies are identical (a replay rewrites the
same line), so a tail reads just the lines it returns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.events import FILE_KINDS
from runstream.names import MAX_TIME_MS, is_time_ms, is_time_s
from runstream.storage.errors import QueryError, require_text
from runstream.storage.filters import check_regexes
from runstream.storage.runs import select_runs

MAX_RUNS = 10_000
MAX_POINTS = 10_000
MAX_LINES = 10_000
MAX_ALERTS = 10_000
MAX_STREAM_BATCH = 1000  # alerts a live stream reads at once
MAX_QUERY_LEN = 1_000

# -- system metrics -------------------------------------------------------------------

_SYSTEM_WHERE = """team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)}
    %(metrics)s AND time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') AND time <= fromUnixTimestamp64Milli({end:Int64}, 'UTC')"""

_SYSTEM_SPANS = f"""
SELECT toString(run_id), toUnixTimestamp64Milli(min(time)), toUnixTimestamp64Milli(max(time))
FROM system_points WHERE {_SYSTEM_WHERE} GROUP BY run_id
"""

# Buckets of w milliseconds from each run's first sample t0; min/max/mean of the finite values (NaN when none).
_SYSTEM_SERIES = f"""
SELECT run, name, arrayMap(x -> x.1, s), arrayMap(x -> x.2, s), arrayMap(x -> x.3, s), arrayMap(x -> x.4, s)
FROM (
    SELECT run, name, arraySort(groupArray((t, mean, lo, hi))) AS s
    FROM (
        WITH transform(run_id, {{runs:Array(String)}}, {{t0:Array(Int64)}}, toInt64(0)) AS t0,
            transform(run_id, {{runs:Array(String)}}, {{w:Array(Int64)}}, toInt64(1)) AS w
        SELECT toString(run_id) AS run, toString(metric) AS name, intDiv(toUnixTimestamp64Milli(time) - t0, w) AS b,
            any(t0 + b * w) / 1000 AS t,
            avgIf(value, isFinite(value)) AS mean,
            ifNull(minIfOrNull(value, isFinite(value)), nan) AS lo,
            ifNull(maxIfOrNull(value, isFinite(value)), nan) AS hi
        FROM system_points FINAL WHERE {_SYSTEM_WHERE}
        GROUP BY run, name, b
    )
    GROUP BY run, name
)
ORDER BY run, name
"""


def system_series(
    client: Client,
    team: str,
    project: str,
    run_ids: Sequence[str],
    metrics: Sequence[str] | None = None,
    max_points: int = 500,
    start: float | None = None,
    end: float | None = None,
) -> dict[str, Any]:
    """System metrics of runs between ``start`` and ``end`` (Unix seconds, inclusive),
    in time buckets: ``{"runs": [{"run_id", "metric", "bucket_seconds", "time": [...],
    "mean": [...], "min": [...], "max": [...]}]}``, one entry per (run, metric) sorted.

    Each run's buckets start at its first sample in the range and are as wide
    as needed for at most ``max_points`` per run (1 ms at least, so few samples
    come back as they are); ``time`` is each bucket's start. Statistics are over
    the finite values (NaN where a bucket has none). ``metrics`` None: all.
    """
    runs = _names("run_ids", run_ids, MAX_RUNS)
    names = None if metrics is None else _names("metrics", metrics, None)
    _check_int("max_points", max_points, 1, MAX_POINTS)
    if not runs or names == []:
        return {"runs": []}
    params: dict[str, Any] = {
        "team": team,
        "project": project,
        "runs": runs,
        "metrics": names or [],
        "start": _ms("start", start, 0),
        "end": _ms("end", end, MAX_TIME_MS),
    }
    where = {"metrics": "" if names is None else "AND metric IN {metrics:Array(String)}"}
    spans = client.query(_SYSTEM_SPANS % where, parameters=params).result_rows
    if not spans:
        return {"runs": []}
    t0 = {run: lo for run, lo, _ in spans}
    width = {run: (hi - lo) // max_points + 1 for run, lo, hi in spans}
    params.update(runs=list(t0), t0=list(t0.values()), w=[width[run] for run in t0])
    rows = client.query(_SYSTEM_SERIES % where, parameters=params).result_rows
    out = [
        {
            "run_id": run_id,
            "metric": metric,
            "bucket_seconds": width[run_id] / 1000,
            "time": time,
            "mean": mean,
            "min": lo,
            "max": hi,
        }
        for run_id, metric, time, mean, lo, hi in rows
    ]
    return {"runs": out}


# -- console --------------------------------------------------------------------------

_CURSOR = re.compile(r"(\d{1,20})\.(\d{1,10})\Z")

_LINES = """
SELECT seq, row, toUnixTimestamp64Milli(time), toString(stream), line FROM console_lines
WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String}
    AND seq <= {before_seq:UInt64} AND (seq, row) < ({before_seq:UInt64}, {before_row:UInt64})
    %(match)s
ORDER BY seq DESC, row DESC
LIMIT 1 BY seq, row
LIMIT {limit:UInt64}
"""


def console_tail(
    client: Client, team: str, project: str, run_id: str, limit: int = 1000, before: str | None = None
) -> dict[str, Any]:
    """The run's last ``limit`` console lines before the cursor ``before`` (None: the
    end), oldest first: ``{"lines": [{"time", "stream", "line"}], "next_before":
    cursor of the older lines, or None when these are the first}``."""
    return _lines(client, team, project, run_id, "", {}, limit, before)


def console_search(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    query: str,
    regex: bool = False,
    limit: int = 1000,
    before: str | None = None,
) -> dict[str, Any]:
    """The last ``limit`` console lines (before the cursor ``before``) that contain
    ``query``, ignoring case, or that match it as an RE2 regular expression
    (``regex=True``; ``(?i)`` for case-insensitive). Same shape as ``console_tail``."""
    if not isinstance(query, str) or not query or len(query) > MAX_QUERY_LEN:
        raise QueryError(f"a console search needs a query of 1 to {MAX_QUERY_LEN} characters")
    if regex:
        check_regexes(client, [query])
        match = "AND match(line, {pattern:String})"
    else:
        match = "AND positionCaseInsensitiveUTF8(line, {pattern:String}) > 0"
    return _lines(client, team, project, run_id, match, {"pattern": query}, limit, before)


def _lines(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    match: str,
    extra: dict[str, Any],
    limit: int,
    before: str | None,
) -> dict[str, Any]:
    require_text("run_id", run_id)
    _check_int("limit", limit, 1, MAX_LINES)
    before_seq, before_row = _parse_cursor(before)
    params = {
        "team": team,
        "project": project,
        "run": run_id,
        "before_seq": before_seq,
        "before_row": before_row,
        "limit": limit + 1,
        **extra,
    }
    rows = client.query(_LINES % {"match": match}, parameters=params).result_rows
    older = len(rows) > limit
    rows = rows[:limit][::-1]
    return {
        "lines": [{"time": ms / 1000, "stream": stream, "line": line} for _, _, ms, stream, line in rows],
        "next_before": f"{rows[0][0]}.{rows[0][1]}" if older else None,
    }


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    if cursor is None:
        return 2**64 - 1, 2**32  # after every line
    m = _CURSOR.match(cursor) if isinstance(cursor, str) else None
    if not m or int(m[1]) >= 2**64 or int(m[2]) > 2**32:
        raise QueryError(f"malformed console cursor {cursor!r}; pass back a next_before value", cursor=cursor)
    return int(m[1]), int(m[2])


# -- files and media -----------------------------------------------------------------

_FILE_COLUMNS = """path, toString(kind), toString(media_type), step, size, toString(sha256), store_key, meta,
    toUnixTimestamp64Milli(time)"""


def run_files(
    client: Client, team: str, project: str, run_id: str, kind: str | None = None, prefix: str | None = None
) -> list[dict[str, Any]]:
    """The run's files, the current entry per path, sorted by path; optionally of one
    ``kind`` (``runstream.events.FILE_KINDS``) and under a path ``prefix``."""
    require_text("run_id", run_id)
    where = ""
    params: dict[str, Any] = {"team": team, "project": project, "run": run_id}
    if kind is not None:
        if kind not in FILE_KINDS:
            raise QueryError(f"unknown file kind {kind!r}; use one of {', '.join(FILE_KINDS)}", kind=kind)
        where += " AND kind = {kind:String}"
        params["kind"] = kind
    if prefix is not None:
        if not isinstance(prefix, str):
            raise QueryError("prefix must be a string")
        where += " AND startsWith(path, {prefix:String})"
        params["prefix"] = prefix
    return _files(client, where, "path", params)


def media_steps(client: Client, team: str, project: str, run_id: str, key: str) -> list[dict[str, Any]]:
    """The media logged under ``key`` (``run.log({key: Image(...)})``), one entry per
    file, by step: what a media panel's step slider walks."""
    require_text("run_id", run_id)
    require_text("key", key)
    params = {"team": team, "project": project, "run": run_id, "key": key}
    return _files(client, " AND kind = 'media' AND JSONExtractString(meta, 'key') = {key:String}", "step, path", params)


def _files(client: Client, where: str, order: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    sql = f"""SELECT {_FILE_COLUMNS} FROM run_files FINAL
        WHERE team = {{team:String}} AND project = {{project:String}} AND run_id = {{run:String}}{where}
        ORDER BY {order}"""
    return [
        {
            "path": path,
            "kind": kind,
            "media_type": media_type or None,
            "step": step,
            "size": size,
            "sha256": sha256,
            "store_key": store_key,
            "meta": orjson.loads(meta or "{}"),
            "time": ms / 1000,
        }
        for path, kind, media_type, step, size, sha256, store_key, meta, ms in client.query(
            sql, parameters=params
        ).result_rows
    ]


# -- alerts -------------------------------------------------------------------------------


def list_alerts(
    client: Client, team: str, project: str, run_id: str | None = None, since: float | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """A project's alerts (or one run's), newest first, optionally from ``since`` (Unix seconds) on."""
    _check_int("limit", limit, 1, MAX_ALERTS)
    where = ""
    params: dict[str, Any] = {"team": team, "project": project, "limit": limit}
    if run_id is not None:
        require_text("run_id", run_id)
        where += " AND run_id = {run:String}"
        params["run"] = run_id
    if since is not None:
        where += " AND time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
        params["since"] = _ms("since", since, 0)
    sql = f"""SELECT {_ALERT_COLUMNS}
        FROM alerts FINAL WHERE team = {{team:String}} AND project = {{project:String}}{where}
        ORDER BY time DESC, run_id, alert_id LIMIT {{limit:UInt64}}"""
    return [_alert(row) for row in client.query(sql, parameters=params).result_rows]


def alerts_after(
    client: Client,
    team: str,
    project: str,
    floor_ms: int,
    after: tuple[int, str] = (0, ""),
    exclude: Sequence[str] = (),
    run_id: str | None = None,
    limit: int = MAX_STREAM_BATCH,
) -> list[dict[str, Any]]:
    """Alerts at ``floor_ms`` (Unix milliseconds) or later whose (time in ms, alert_id) is past ``after`` and whose
    id is not in ``exclude``, oldest first: what a live stream has not sent yet. Same shape as
    ``list_alerts``, plus ``time_ms`` (the stream's cursor)."""
    for name, ms in (("floor_ms", floor_ms), ("after", after[0])):
        if not is_time_ms(ms):
            raise QueryError(f"{name} must be Unix milliseconds from 0 to {MAX_TIME_MS}, got {ms!r}")
    if not 1 <= limit <= MAX_STREAM_BATCH:
        raise QueryError(f"limit must be from 1 to {MAX_STREAM_BATCH}")
    where = ""
    params: dict[str, Any] = {
        "team": team,
        "project": project,
        "floor": floor_ms,
        "after_ms": after[0],
        "after_id": after[1],
        "exclude": list(exclude),
        "limit": limit,
    }
    if run_id is not None:
        where = " AND run_id = {run:String}"
        params["run"] = run_id
    sql = f"""SELECT {_ALERT_COLUMNS}
        FROM alerts FINAL
        WHERE team = {{team:String}} AND project = {{project:String}}{where}
            AND time >= fromUnixTimestamp64Milli({{floor:Int64}}, 'UTC')
            AND (toUnixTimestamp64Milli(time), alert_id) > ({{after_ms:Int64}}, {{after_id:String}})
            AND alert_id NOT IN {{exclude:Array(String)}}
        ORDER BY ms, alert_id LIMIT {{limit:UInt32}}"""
    return [{**_alert(row), "time_ms": row[-1]} for row in client.query(sql, parameters=params).result_rows]


_ALERT_COLUMNS = (
    "run_id, alert_id, rule_id, toString(source), toString(level), title, text, toUnixTimestamp64Milli(time) AS ms"
)


def _alert(row: Sequence[Any]) -> dict[str, Any]:
    run, alert_id, rule_id, source, level, title, text, ms = row
    return {
        "run_id": run,
        "alert_id": alert_id,
        "rule_id": rule_id or None,
        "source": source,
        "level": level,
        "title": title,
        "text": text,
        "time": ms / 1000,
    }


# -- arguments ---------------------------------------------------------------------------


def _names(what: str, values: Any, limit: int | None) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not all(isinstance(v, str) for v in values):
        raise QueryError(f"{what} must be a list of strings")
    if limit is not None and len(values) > limit:
        raise QueryError(f"at most {limit} {what}, got {len(values)}", limit=limit)
    return sorted(set(values))


def _check_int(what: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise QueryError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")


def _ms(what: str, seconds: Any, default: int) -> int:
    if seconds is None:
        return default
    if not is_time_s(seconds):
        raise QueryError(f"{what} must be a Unix time in seconds, got {seconds!r}")
    return round(seconds * 1000)


# -- media across runs ----------------------------------------------------------------------

MAX_MEDIA_RUNS = 100  # runs one cross-run media answer compares (a panel's grid or overlaid curves)
MAX_MEDIA_KEYS = 1_000
# Runs with media under a key that travel to the runs query as an id list (``$in``); past it, the matching
# runs' ids are read in order and intersected here instead (the filter compiler bounds its list values).
_MAX_IN_IDS = 2_000
_MAX_SCAN_RUNS = 50_000

_MEDIA_OF_KEY = "kind = 'media' AND JSONExtractString(meta, 'key') = {key:String}"


def latest_media(
    client: Client,
    team: str,
    project: str,
    key: str,
    filters: dict[str, Any] | None = None,
    run_ids: Sequence[str] | None = None,
    order: str = "-created_at",
    limit: int = 20,
) -> dict[str, Any]:
    """``{"key", "runs": [{run_id, name, **file}], "total"}``: the latest media file each run logged under ``key``
    (its highest step; of a gallery, the first item), for the runs that have one and that ``run_ids`` name (in
    that order) or ``filters`` select (run search's filter and ``order``), at most ``limit``; ``total`` counts
    the runs with media under the key that the selection matches. A key no run logged is an empty answer."""
    require_text("key", key)
    _check_int("limit", limit, 1, MAX_MEDIA_RUNS)
    if run_ids is not None:
        _names("run_ids", run_ids, MAX_MEDIA_RUNS)  # checks; the order given is kept below
    params: dict[str, Any] = {"team": team, "project": project, "key": key}
    having = [
        row[0]
        for row in client.query(
            f"""SELECT DISTINCT run_id FROM run_files
            WHERE team = {{team:String}} AND project = {{project:String}} AND {_MEDIA_OF_KEY}""",
            parameters=params,
        ).result_rows
    ]
    if run_ids is not None:
        wanted = set(having)
        having = [r for r in dict.fromkeys(run_ids) if r in wanted]
    # No run has the key: still one runs query, so a bad filter or order is a 400 whatever the key.
    chosen, names, total = _select_with_media(client, team, project, having, filters, order, limit, run_ids is not None)
    files = _latest_files(client, team, project, key, chosen)
    runs = [
        {"run_id": run_id, "name": name, **files[run_id]}
        for run_id, name in zip(chosen, names, strict=True)
        if run_id in files  # a file replaced between the two reads: left out, not answered as null
    ]
    return {"key": key, "runs": runs, "total": total}


def _select_with_media(
    client: Client,
    team: str,
    project: str,
    having: list[str],
    filters: dict[str, Any] | None,
    order: str,
    limit: int,
    keep_order: bool,
) -> tuple[list[str], list[str], int]:
    """Of the runs ``having`` media, those ``filters`` match, in ``order`` (``having``'s own with ``keep_order``)."""
    if len(having) <= _MAX_IN_IDS:
        ids_filter: dict[str, Any] = {"id": {"$in": having}}
        combined = {"$and": [filters, ids_filter]} if filters else ids_filter
        # Only the first ``limit`` are needed, unless the caller's own order is kept (run_ids: at most 100).
        first = max(1, len(having)) if keep_order else limit
        found, total = select_runs(client, team, project, ["run_id", "name"], {}, combined, order, first)
        pairs = list(zip(found[0], found[1], strict=True))
    else:
        found, _ = select_runs(client, team, project, ["run_id", "name"], {}, filters, order, _MAX_SCAN_RUNS)
        wanted = set(having)
        pairs = [(r, n) for r, n in zip(found[0], found[1], strict=True) if r in wanted]
        total = len(pairs)
    if keep_order:
        place = {run_id: i for i, run_id in enumerate(having)}
        pairs.sort(key=lambda pair: place[pair[0]])
    pairs = pairs[:limit]
    return [p[0] for p in pairs], [p[1] for p in pairs], total


def _latest_files(client: Client, team: str, project: str, key: str, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not run_ids:
        return {}
    sql = f"""SELECT run_id, {_FILE_COLUMNS} FROM run_files FINAL
        WHERE team = {{team:String}} AND project = {{project:String}} AND run_id IN {{runs:Array(String)}}
            AND {_MEDIA_OF_KEY}
        ORDER BY run_id, step DESC, path
        LIMIT 1 BY run_id"""
    rows = client.query(sql, parameters={"team": team, "project": project, "key": key, "runs": run_ids}).result_rows
    return {row[0]: _file_entry(row[1:]) for row in rows}


def _file_entry(row: Sequence[Any]) -> dict[str, Any]:
    """A row of ``_FILE_COLUMNS`` as ``_files`` answers it."""
    path, kind, media_type, step, size, sha256, store_key, meta, ms = row
    return {
        "path": path,
        "kind": kind,
        "media_type": media_type or None,
        "step": step,
        "size": size,
        "sha256": sha256,
        "store_key": store_key,
        "meta": orjson.loads(meta or "{}"),
        "time": ms / 1000,
    }


def media_keys(client: Client, team: str, project: str) -> list[dict[str, Any]]:
    """The keys the project's runs logged media under: ``[{key, media_types, runs}]`` by key, at most
    ``MAX_MEDIA_KEYS``; what a media panel offers to compare."""
    sql = """SELECT JSONExtractString(meta, 'key') AS k, arraySort(groupUniqArray(toString(media_type))),
            uniqExact(run_id)
        FROM run_files
        WHERE team = {team:String} AND project = {project:String} AND kind = 'media' AND k != ''
        GROUP BY k ORDER BY k LIMIT {limit:UInt32}"""
    rows = client.query(sql, parameters={"team": team, "project": project, "limit": MAX_MEDIA_KEYS}).result_rows
    return [{"key": k, "media_types": [t for t in types if t], "runs": runs} for k, types, runs in rows]
