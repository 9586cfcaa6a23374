"""Reading metric data: one run's history (sampled or paged), chart series of many runs, group bands, system
metrics of many runs, exports.

Non-finite numbers: a history cell is what the run logged, so NaN and
infinities come as the event contract's strings ("NaN", "Infinity",
"-Infinity") and ``null`` means "not logged in this row"; a metric whose every
finite value was logged as an int comes as ints (``history.integer_metrics``). Chart arrays (series,
bands, system) are statistics: ``min``, ``max`` and ``mean`` are over a bucket's finite
values and ``null`` where it has none, and ``y`` (the bucket's last logged
value) is ``null`` when that value is not finite; ``count`` says how many finite
values a bucket had.

Chart series leave storage as numpy arrays and go straight to orjson, so a
compare chart of 1,000 runs costs no Python loop per point or per run here.

Exports are checked and their first chunk produced before the response starts:
a bad argument or a failing query is a JSON error with its status, never a
stream cut short.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from runstream.api.auth import read_project, require_project
from runstream.api.errors import ApiError, not_found
from runstream.api.requests import json_body, query_int, query_list
from runstream.api.responses import json_response, render_json, rendered_json
from runstream.api._transition import (
    SCHEMAS, body_field, check_fields, documented, names_field, nullable, query_filters, run_exists,
)
from runstream.api.requests import PROJECT_PATH, RUN_PATH, project_path, run_path
from runstream.api.responses import contract_numbers
from runstream.events import encode_value
from runstream.storage import export, history, logs, runs
from runstream.storage import series as charts

DEFAULT_SAMPLES = 500
MAX_SAMPLES = 100_000
_SAMPLED_PAGE = 50_000
_MAX_STEP = 2**64 - 1
_MAX_SECONDS = 10**10  # storage keeps times to the year 2286 (logs._MAX_MS)

# -- history --------------------------------------------------------------------------------------


def contract_column(values: list[Any], integer: bool = False) -> list[Any]:
    """A history column (floats, None where not logged) with non-finite floats as the contract's strings,
    and with ``integer`` (a metric logged as ints) its finite values as ints.

    numpy finds the few cells to change, so a page of 100,000 rows costs no Python loop per value.
    """
    if not values:
        return values
    array = np.array(values, dtype=float)  # None becomes NaN: those are skipped below
    finite = np.isfinite(array)
    for i in np.flatnonzero(~finite).tolist():
        if values[i] is not None:
            values[i] = encode_value(values[i])
    whole = np.flatnonzero(finite)
    if integer and len(whole) and np.abs(array[whole]).max() < 2.0**63:  # beyond int64: stays float
        out = np.array(values, dtype=object)
        out[whole] = array[whole].astype(np.int64)  # into an object array as Python ints
        values = out.tolist()
    return values


def history_columns(page: dict[str, Any], integer: Collection[str] = ()) -> dict[str, list[Any]]:
    """A ``history_page`` as the API's columns: ``_step``, ``_timestamp`` and one per key (those in
    ``integer`` as ints)."""
    columns: dict[str, list[Any]] = {"_step": page["step"], "_timestamp": page["time"]}
    for name, values in page["columns"].items():
        columns[name] = contract_column(values, name in integer)
    return columns


@dataclass(frozen=True)
class _Rows:
    """History rows as arrays: a row's step and time, and per key its value and whether it was logged."""

    step: np.ndarray  # (n,) uint64
    time: np.ndarray  # (n,) seconds, NaN where unknown
    has_time: np.ndarray  # (n,) bool
    values: np.ndarray  # (k, n) float
    logged: np.ndarray  # (k, n) bool

    @classmethod
    def of(cls, page: dict[str, Any], names: list[str]) -> _Rows:
        n = len(page["step"])

        def present(column: list[Any]) -> np.ndarray:
            return np.fromiter((v is not None for v in column), dtype=bool, count=n)

        columns = [page["columns"][name] for name in names]
        return cls(
            np.asarray(page["step"], dtype=np.uint64),
            np.array(page["time"], dtype=float),
            present(page["time"]),
            np.array(columns, dtype=float).reshape(len(names), n),
            np.array([present(c) for c in columns], dtype=bool).reshape(len(names), n),
        )

    def __len__(self) -> int:
        return len(self.step)

    def take(self, index: np.ndarray) -> _Rows:
        return _Rows(self.step[index], self.time[index], self.has_time[index], self.values[:, index],
                     self.logged[:, index])

    def concat(self, other: _Rows) -> _Rows:
        return _Rows(np.concatenate([self.step, other.step]), np.concatenate([self.time, other.time]),
                     np.concatenate([self.has_time, other.has_time]), np.concatenate([self.values, other.values], 1),
                     np.concatenate([self.logged, other.logged], 1))

    def columns(self, names: list[str], integer: Collection[str]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"_step": self.step.tolist(), "_timestamp": _gaps(self.time, self.has_time)}
        for i, name in enumerate(names):
            out[name] = contract_column(_gaps(self.values[i], self.logged[i]), name in integer)
        return out


def _gaps(values: np.ndarray, present: np.ndarray) -> list[Any]:
    out: list[Any] = values.tolist()
    for i in np.flatnonzero(~present).tolist():
        out[i] = None
    return out


def _extremes(rows: _Rows, first_step: int, width: int) -> np.ndarray:
    """The first and last row, and in every bucket of ``width`` steps the rows of each key's finite min and max."""
    bucket = (rows.step - np.uint64(first_step)) // np.uint64(width)
    picks = [np.array([0, len(rows) - 1])]
    for values, logged in zip(rows.values, rows.logged):
        rows_ok = np.flatnonzero(logged & np.isfinite(values))
        if not len(rows_ok):
            continue
        order = np.lexsort((values[rows_ok], bucket[rows_ok]))  # by bucket, then value
        sorted_buckets = bucket[rows_ok][order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        ends = np.r_[starts[1:] - 1, len(order) - 1]
        picks += [rows_ok[order[starts]], rows_ok[order[ends]]]
    return np.unique(np.concatenate(picks))


def sampled_history(client: Client, team: str, project: str, run_id: str, keys: list[str] | None,
                    samples: int) -> dict[str, Any] | None:
    """At most ``samples`` rows of a run's history, keeping every key's extremes; None when the run does not exist.

    A run with at most ``samples`` rows comes whole. Otherwise its steps are cut
    into buckets (as many as leave room for each key's min and max row in each),
    and the rows kept are the first, the last, and those holding a key's finite
    min or max in a bucket: a one-step spike stays visible. Pages are reduced as
    they are read (extremes of extremes are the extremes), so memory stays at a
    page whatever the run's length.
    """
    if not run_exists(client, team, project, run_id):
        return None
    names = list(dict.fromkeys(keys if keys is not None else history.run_metrics(client, team, project, run_id)))
    spans = list(charts.extents(client, team, project, [run_id], names).get(run_id, {}).values()) if names else []
    if not spans:
        return {"columns": {"_step": [], "_timestamp": [], **{name: [] for name in names}}}
    first = min(e.first_step for e in spans)
    last = max(e.last_step for e in spans)
    buckets = max(1, (samples - 2) // (2 * len(names)))
    width = (last - first) // buckets + 1
    kept: _Rows | None = None
    after: int | None = None
    while True:
        page = history.history_page(client, team, project, run_id, names, after_step=after, page_size=_SAMPLED_PAGE)
        rows = _Rows.of(page, names)
        kept = rows if kept is None else kept.concat(rows)
        if len(kept) > samples:
            kept = kept.take(_extremes(kept, first, width))
        after = page["next_after_step"]
        if after is None:
            break
    if len(kept) > samples:  # more keys than samples has room for: evenly spaced rows
        kept = kept.take(np.unique(np.linspace(0, len(kept) - 1, samples).round().astype(np.int64)))
    return {"columns": kept.columns(names, history.integer_metrics(client, team, project, run_id, names))}


def _keys(request: Request) -> list[str] | None:
    keys = query_list(request, "keys")
    if keys is not None and len(keys) > charts.MAX_METRICS * 10:
        raise ApiError(400, f"ask for at most {charts.MAX_METRICS * 10} keys at once")
    return keys


@documented()
async def run_history(request: Request) -> Response:
    """At most ``samples`` rows of a run's metrics, sampled keeping each key's extremes (its min and max).

    A row is a step at which any of the keys was logged; ``null`` where it did not log a key.

    ---
    summary: A run's sampled history
    tags: [history]
    parameters:
      - {name: keys, in: query, required: false, schema: {type: string}, description: "comma-joined metric names (every metric when omitted)"}
      - {name: samples, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 100000, default: 500}}
    responses:
      200:
        description: "columns of equal length: _step, _timestamp (Unix seconds) and one per key"
        content: {application/json: {schema: {type: object, required: [columns], properties: {columns: $COLUMNS}}}}
      400: {description: bad arguments, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "read")
    keys = _keys(request)
    samples = query_int(request, "samples", DEFAULT_SAMPLES, 1, MAX_SAMPLES)
    result = await request.app.state.backend.run(sampled_history, team, project, run_id, keys, samples)
    if result is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    return json_response(result)


_CURSOR = re.compile(r"\d{1,20}\Z")


def _step_param(request: Request, name: str, empty_ok: bool = False) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or (raw == "" and empty_ok):
        return None
    if not _CURSOR.match(raw) or int(raw) > _MAX_STEP:
        raise ApiError(400, f"{name} must be a step (a whole number from 0 to 2**64 - 1), got {raw[:40]!r}")
    return int(raw)


@documented()
async def run_history_scan(request: Request) -> Response:
    """A page of a run's unsampled history, by step (``min_step`` inclusive, ``max_step`` exclusive).

    ---
    summary: A run's full history, paged
    tags: [history]
    parameters:
      - {name: keys, in: query, required: false, schema: {type: string}, description: "comma-joined metric names (every metric when omitted)"}
      - {name: page_size, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 100000, default: 1000}}
      - {name: cursor, in: query, required: false, schema: {type: string}, description: next_cursor of the previous page}
      - {name: min_step, in: query, required: false, schema: {type: integer, minimum: 0}}
      - {name: max_step, in: query, required: false, schema: {type: integer, minimum: 0}}
    responses:
      200:
        description: "a page of columns; next_cursor is null on the last"
        content:
          application/json:
            schema: {type: object, required: [columns, next_cursor], properties: {columns: $COLUMNS, next_cursor: {type: string, nullable: true}}}
      400: {description: bad arguments or cursor, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "read")
    keys = _keys(request)
    page_size = query_int(request, "page_size", 1000, 1, history.MAX_PAGE_SIZE)
    after = _step_param(request, "cursor", empty_ok=True)
    min_step = _step_param(request, "min_step")
    max_step = _step_param(request, "max_step")

    def scan(client: Client) -> tuple[dict[str, Any], set[str]] | None:
        if not run_exists(client, team, project, run_id):
            return None
        if max_step == 0:  # exclusive: nothing before step 0
            names = keys if keys is not None else history.run_metrics(client, team, project, run_id)
            return {"step": [], "time": [], "columns": {n: [] for n in names}, "next_after_step": None}, set()
        page = history.history_page(client, team, project, run_id, keys, min_step=min_step,
                                    max_step=None if max_step is None else max_step - 1, after_step=after,
                                    page_size=page_size)
        return page, history.integer_metrics(client, team, project, run_id, [n for n, v in page["columns"].items() if v])

    found = await request.app.state.backend.run(scan)
    if found is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    page, integer = found
    cursor = page["next_after_step"]
    return json_response({"columns": history_columns(page, integer),
                          "next_cursor": None if cursor is None else str(cursor)})


# -- charts ------------------------------------------------------------------------------------------


def _selection(body: dict[str, Any]) -> tuple[list[str] | None, dict[str, Any] | None]:
    """The runs a body names: ``run_ids``, or a ``filters`` document (no filter: every run)."""
    if body.get("run_ids") is not None and body.get("filters") is not None:
        raise ApiError(400, "send run_ids or filters, not both")
    run_ids = names_field(body, "run_ids")
    filters = body_field(body, "filters", dict, "a filter object")
    return run_ids, filters


def _points(body: dict[str, Any]) -> int:
    points = body_field(body, "points", int, f"an integer from 2 to {charts.MAX_POINTS}", 500)
    if not 2 <= points <= charts.MAX_POINTS:
        raise ApiError(400, f"points must be an integer from 2 to {charts.MAX_POINTS}, got {points}")
    return points


SERIES_FIELDS = ("x", "step", "y", "mean", "min", "max", "count")
_RANGE = {"type": "array", "minItems": 2, "maxItems": 2, "nullable": True,
          "items": {"type": "integer", "minimum": 0, "maximum": _MAX_STEP, "nullable": True},
          "description": "[first, last] steps, inclusive; null for an open end"}
_SERIES_BODY = {
    "type": "object", "required": ["metrics"], "additionalProperties": False,
    "properties": {
        "run_ids": nullable({"type": "array", "minItems": 1, "maxItems": charts.MAX_RUNS,
                             "items": {"type": "string", "minLength": 1}}),
        "filters": nullable(SCHEMAS["FILTERS"]),
        "metrics": {"type": "array", "minItems": 1, "maxItems": charts.MAX_METRICS, "items": {"type": "string", "minLength": 1}},
        "points": nullable({"type": "integer", "minimum": 2, "maximum": charts.MAX_POINTS, "default": 500}),
        "x": nullable({"type": "string", "enum": [*charts.X_AXES, None], "default": "step"}),
        "x_metric": nullable({"type": "string", "minLength": 1}),
        "step_range": _RANGE,
        "fields": nullable({"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(SERIES_FIELDS)},
                            "description": "the arrays to answer (all when omitted): a chart needs fewer"}),
    },
}
_ARRAY = {"type": "array", "items": {"type": "number", "nullable": True}}
_SERIES = {
    "type": "object", "required": ["x", "points", "series"],
    "properties": {
        "x": {"type": "string"}, "x_metric": {"type": "string", "nullable": True}, "points": {"type": "integer"},
        "series": {"type": "array", "items": {
            "type": "object", "required": ["run_id", "metric"],
            "properties": {"run_id": {"type": "string"}, "metric": {"type": "string"}, "level": {"type": "integer"},
                           "bucket_steps": {"type": "integer"}, "x": _ARRAY, "step": _ARRAY, "y": _ARRAY,
                           "mean": _ARRAY, "min": _ARRAY, "max": _ARRAY, "count": _ARRAY}}},
    },
}


@documented(BODY=_SERIES_BODY, SERIES=_SERIES)
async def post_series(request: Request) -> Response:
    """Chart series: at most ``points`` points per (run, metric), each bucket's last value, mean, min and max.

    Runs are ``run_ids``, or those matching ``filters`` (every run of the project
    when neither is sent). ``x``: step, time (Unix seconds), relative (seconds
    since the run's first step) or metric (the value of ``x_metric``). ``fields``
    picks the arrays to answer: a line with its min/max envelope needs only x, y,
    min and max (measured: 25 MB instead of 35 MB for 1,000 runs of 400 points).

    ---
    summary: Chart series of many runs
    tags: [charts]
    requestBody: {required: true, content: {application/json: {schema: $BODY}}}
    responses:
      200: {description: "one entry per (run, metric) with data, by metric then run", content: {application/json: {schema: $SERIES}}}
      400: {description: bad arguments or filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    return rendered_json(await read_project(request, team, project, lambda: _series_read(request, team, project)))


async def _series_read(request: Request, team: str, project: str) -> Callable[[Client], bytes]:
    """The series request's arguments, checked, as the read that answers it."""
    body = await json_body(request)
    check_fields(body, ("run_ids", "filters", "metrics", "points", "x", "x_metric", "step_range", "fields"))
    run_ids, filters = _selection(body)
    metrics = names_field(body, "metrics", required=True)
    points = _points(body)
    x = body_field(body, "x", str, f"one of {', '.join(charts.X_AXES)}", "step")
    if x not in charts.X_AXES:
        raise ApiError(400, f"x must be one of {', '.join(charts.X_AXES)}, got {x[:40]!r}")
    x_metric = body_field(body, "x_metric", str, "a metric name")
    if x_metric == "":
        raise ApiError(400, "x_metric must be a metric name, not empty")
    if x == "metric" and not x_metric:
        raise ApiError(400, "x \"metric\" needs x_metric: the metric to plot against")
    step_range = body_field(body, "step_range", list, "[first, last] (null for an open end)")
    fields = names_field(body, "fields")
    if fields is not None and not set(fields) <= set(SERIES_FIELDS):
        raise ApiError(400, f"fields are some of {', '.join(SERIES_FIELDS)}")
    dropped = set() if fields is None else set(SERIES_FIELDS) - set(fields)

    def read(client: Client) -> bytes:
        ids = run_ids if run_ids is not None else runs.matching_run_ids(client, team, project, filters, charts.MAX_RUNS)
        if not ids:
            result = {"x": x, "x_metric": x_metric if x == "metric" else None, "points": points, "series": []}
        else:
            result = charts.series(client, team, project, ids, metrics, points, x, x_metric,
                                   None if step_range is None else tuple(step_range))
        if dropped:
            result["series"] = [{k: v for k, v in s.items() if k not in dropped} for s in result["series"]]
        return render_json(result)  # here, in the worker thread: 1,000 runs make megabytes

    return read


_BANDS_BODY = {
    "type": "object", "required": ["metric"], "additionalProperties": False,
    "properties": {
        "groups": nullable({"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}}),
        "by": nullable({"type": "array", "minItems": 1, "maxItems": runs.MAX_GROUP_KEYS,
                        "items": {"type": "string", "minLength": 1}}),
        "filters": nullable(SCHEMAS["FILTERS"]),
        "metric": {"type": "string", "minLength": 1},
        "points": nullable({"type": "integer", "minimum": 2, "maximum": charts.MAX_POINTS, "default": 500}),
        "step_range": _RANGE,
    },
}
_BANDS = {
    "type": "object", "required": ["metric", "points", "groups"],
    "properties": {
        "metric": {"type": "string"}, "points": {"type": "integer"}, "level": {"type": "integer"},
        "bucket_steps": {"type": "integer"},
        "groups": {"type": "array", "items": {
            "type": "object", "required": ["group", "x", "mean", "std", "min", "max", "runs"],
            "properties": {"group": {"type": "string"}, "values": {"type": "object"}, "run_count": {"type": "integer"},
                           "x": _ARRAY, "mean": _ARRAY, "std": _ARRAY, "min": _ARRAY, "max": _ARRAY,
                           "runs": _ARRAY}}},
    },
}


def _label(values: dict[str, Any]) -> str:
    """A group's values as a legend label: ``adam / 0.001``."""
    return " / ".join("null" if v is None else v if isinstance(v, str) else str(contract_numbers(v))
                      for v in values.values())


@documented(BODY=_BANDS_BODY, BANDS=_BANDS)
async def post_bands(request: Request) -> Response:
    """Group bands of one metric: per group, at aligned steps, the mean and std across its runs and the min/max.

    Groups are given (``groups``: label to run ids), or made by grouping the
    runs that match ``filters`` by fields (``by``, as in ``runs/groups``; each
    group then carries its ``values`` and ``run_count``, and its label joins the values).

    ---
    summary: Group bands
    tags: [charts]
    requestBody: {required: true, content: {application/json: {schema: $BODY}}}
    responses:
      200: {description: "one entry per group with data", content: {application/json: {schema: $BANDS}}}
      400: {description: bad arguments or filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    return json_response(await read_project(request, team, project, lambda: _bands_read(request, team, project)))


async def _bands_read(request: Request, team: str, project: str) -> Callable[[Client], dict[str, Any]]:
    """The bands request's arguments, checked, as the read that answers it."""
    body = await json_body(request)
    check_fields(body, ("groups", "by", "filters", "metric", "points", "step_range"))
    groups = body_field(body, "groups", dict, "an object mapping a label to a list of run ids")
    by = names_field(body, "by")
    filters = body_field(body, "filters", dict, "a filter object")
    if (groups is None) == (by is None):
        raise ApiError(400, "send groups ({label: [run ids]}) or by (fields to group the runs by), one of them")
    if groups is not None and filters is not None:
        raise ApiError(400, "filters select runs to group by fields: send them with by, not with groups")
    if by is not None and "tags" in by:
        raise ApiError(400, "bands cannot group by tags: a run with several tags would be in several bands")
    metric = body_field(body, "metric", str, "a metric name")
    if not metric:
        raise ApiError(400, "name the metric to band: {\"metric\": \"loss\"}")
    points = _points(body)
    step_range = body_field(body, "step_range", list, "[first, last] (null for an open end)")
    step_range = None if step_range is None else tuple(step_range)

    def read(client: Client) -> dict[str, Any]:
        if groups is not None:
            return charts.group_bands(client, team, project, groups, metric, points, step_range)
        found = runs.group_runs(client, team, project, by, filters, run_ids=True)
        if not found:
            return {"metric": metric, "points": points, "groups": []}
        result = charts.group_bands(client, team, project, {str(i): g["run_ids"] for i, g in enumerate(found)},
                                    metric, points, step_range)
        for band in result["groups"]:
            group = found[int(band["group"])]
            band.update(group=_label(group["group"]), values=contract_numbers(group["group"]), run_count=group["count"])
        return result

    return read


_SYSTEM_METRICS = charts.MAX_METRICS * 10  # system metrics of a machine with many GPUs: a few per GPU
_SYSTEM_BODY = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "run_ids": nullable({"type": "array", "minItems": 1, "maxItems": logs.MAX_RUNS,
                             "items": {"type": "string", "minLength": 1}}),
        "filters": nullable(SCHEMAS["FILTERS"]),
        "metrics": nullable({"type": "array", "minItems": 1, "maxItems": _SYSTEM_METRICS,
                             "items": {"type": "string", "minLength": 1},
                             "description": "system metric names (every one when omitted)"}),
        "points": nullable({"type": "integer", "minimum": 1, "maximum": logs.MAX_POINTS, "default": 500,
                            "description": "at most this many buckets per (run, metric)"}),
        "start": nullable({"type": "number", "minimum": 0, "maximum": _MAX_SECONDS, "description": "Unix seconds, inclusive"}),
        "end": nullable({"type": "number", "minimum": 0, "maximum": _MAX_SECONDS, "description": "Unix seconds, inclusive"}),
    },
}
_SYSTEM_SERIES = {
    "type": "object", "required": ["points", "series"],
    "properties": {
        "points": {"type": "integer"},
        "series": {"type": "array", "items": {
            "type": "object", "required": ["run_id", "metric", "bucket_seconds", "time", "mean", "min", "max"],
            "properties": {"run_id": {"type": "string"}, "metric": {"type": "string"},
                           "bucket_seconds": {"type": "number"}, "time": _ARRAY, "mean": _ARRAY, "min": _ARRAY,
                           "max": _ARRAY}}},
    },
}


@documented(BODY=_SYSTEM_BODY, SYSTEM_SERIES=_SYSTEM_SERIES)
async def post_system(request: Request) -> Response:
    """System metrics (CPU, memory, GPU, ...) of many runs in time buckets: mean, min and max of each.

    The project-wide form of a run's ``/system``: a workspace panel of a system
    metric draws every run it shows from this one request, instead of one request
    per run (1,000 runs were 1,000 requests, so the UI drew only the first 20).
    Runs are ``run_ids``, or those matching ``filters`` (every run of the project
    when neither is sent); ``metrics`` (every one when omitted); at most ``points``
    buckets per (run, metric), from the run's first sample between ``start`` and
    ``end`` (Unix seconds, inclusive). Entries are as the run's endpoint answers
    them, with ``run_id``, ordered by metric then by the order of ``run_ids``
    (oldest run first for a filter); a run without samples of a metric has none.

    ---
    summary: System metrics of many runs
    tags: [charts]
    requestBody: {required: true, content: {application/json: {schema: $BODY}}}
    responses:
      200: {description: "one entry per (run, metric) with samples; time in Unix seconds (each bucket's start), null where a bucket has no finite value", content: {application/json: {schema: $SYSTEM_SERIES}}}
      400: {description: bad arguments or filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    return rendered_json(await read_project(request, team, project, lambda: _system_read(request, team, project)))


def _seconds(body: dict[str, Any], name: str) -> float | None:
    value = body_field(body, name, (int, float), "a Unix time in seconds")
    if value is not None and not 0 <= value <= _MAX_SECONDS:
        raise ApiError(400, f"{name} must be a Unix time in seconds from 0 to {_MAX_SECONDS}, got {value}")
    return value


async def _system_read(request: Request, team: str, project: str) -> Callable[[Client], bytes]:
    """The system request's arguments, checked, as the read that answers it."""
    body = await json_body(request)
    check_fields(body, ("run_ids", "filters", "metrics", "points", "start", "end"))
    run_ids, filters = _selection(body)
    metrics = names_field(body, "metrics")
    if metrics is not None and len(metrics) > _SYSTEM_METRICS:
        raise ApiError(400, f"ask for at most {_SYSTEM_METRICS} metrics at once, got {len(metrics)}")
    points = body_field(body, "points", int, f"an integer from 1 to {logs.MAX_POINTS}", 500)
    if not 1 <= points <= logs.MAX_POINTS:
        raise ApiError(400, f"points must be an integer from 1 to {logs.MAX_POINTS}, got {points}")
    start, end = _seconds(body, "start"), _seconds(body, "end")
    if start is not None and end is not None and start > end:
        raise ApiError(400, f"start ({start}) is after end ({end}): the range would be empty")

    def read(client: Client) -> bytes:
        ids = run_ids if run_ids is not None else runs.matching_run_ids(client, team, project, filters, logs.MAX_RUNS)
        found = logs.system_series(client, team, project, ids, metrics, points, start, end)["runs"] if ids else []
        order = {run_id: i for i, run_id in enumerate(dict.fromkeys(ids))}
        found.sort(key=lambda s: (s["metric"], order[s["run_id"]]))
        return render_json({"points": points, "series": found})  # here, in the worker thread: NaN becomes null

    return read


# -- exports -------------------------------------------------------------------------------------------

MEDIA_TYPES = {"parquet": "application/vnd.apache.parquet", "arrow": "application/vnd.apache.arrow.stream",
               "csv": "text/csv; charset=utf-8"}
EXTENSIONS = {"parquet": "parquet", "arrow": "arrows", "csv": "csv"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _format(request: Request) -> str:
    fmt = request.query_params.get("format", "parquet")
    if fmt not in MEDIA_TYPES:
        raise ApiError(400, f"unknown export format {fmt[:40]!r}; use one of {', '.join(MEDIA_TYPES)}")
    return fmt


def _started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The export with its first chunk already made, so a failure there is an error answer, not a cut stream."""
    first = next(chunks, None)
    return itertools.chain(() if first is None else (first,), chunks)


def _stream(chunks: Iterator[bytes], fmt: str, name: str, runs_count: int) -> StreamingResponse:
    filename = f"{_UNSAFE.sub('_', name)}.{EXTENSIONS[fmt]}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "X-Runstream-Runs": str(runs_count)}
    return StreamingResponse(chunks, media_type=MEDIA_TYPES[fmt], headers=headers)


_EXPORT_CONTENT = {media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()}


@documented(FILE=_EXPORT_CONTENT)
async def export_project(request: Request) -> Response:
    """Export runs' metric history (long format: run_id, metric, step, time, value) or their metadata (``table=runs``).

    Runs are ``run_ids``, or those matching ``filters`` (every run when neither is sent).

    ---
    summary: Export a project's runs
    tags: [export]
    parameters:
      - {name: format, in: query, required: false, schema: {type: string, enum: [parquet, arrow, csv], default: parquet}}
      - {name: table, in: query, required: false, schema: {type: string, enum: [history, runs], default: history}}
      - {name: run_ids, in: query, required: false, schema: {type: string}, description: comma-joined run ids}
      - {name: filters, in: query, required: false, content: {application/json: {schema: $FILTERS}}}
      - {name: metrics, in: query, required: false, schema: {type: string}, description: "comma-joined metric names (history; all when omitted)"}
    responses:
      200: {description: "the file, streamed (Content-Disposition names it)", content: $FILE}
      400: {description: bad arguments or filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    await require_project(request, team, project, "read")
    fmt = _format(request)
    table = request.query_params.get("table", "history")
    if table not in ("history", "runs"):
        raise ApiError(400, f"table must be history (metric points) or runs (run metadata), got {table[:40]!r}")
    run_ids = query_list(request, "run_ids")
    filters = query_filters(request)
    if run_ids is not None and filters is not None:
        raise ApiError(400, "send run_ids or filters, not both")
    metrics = query_list(request, "metrics")
    if table == "runs" and metrics is not None:
        raise ApiError(400, "metrics selects history columns; a runs export has none: leave it out")

    def start(client: Client) -> tuple[Iterator[bytes], int]:
        ids = run_ids if run_ids is not None else runs.matching_run_ids(client, team, project, filters, export.MAX_RUNS)
        if table == "runs":
            return _started(export.export_runs(client, team, project, ids, fmt)), len(ids)
        return _started(export.export_history(client, team, project, ids, metrics, fmt)), len(ids)

    chunks, count = await request.app.state.backend.run(start)
    return _stream(chunks, fmt, f"{team}-{project}-{table}", count)


@documented(FILE=_EXPORT_CONTENT)
async def export_run(request: Request) -> Response:
    """Export one run's full metric history (long format: run_id, metric, step, time, value).

    ---
    summary: Export a run's history
    tags: [export]
    parameters:
      - {name: format, in: query, required: false, schema: {type: string, enum: [parquet, arrow, csv], default: parquet}}
      - {name: metrics, in: query, required: false, schema: {type: string}, description: "comma-joined metric names (all when omitted)"}
    responses:
      200: {description: "the file, streamed (Content-Disposition names it)", content: $FILE}
      400: {description: bad arguments, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "read")
    fmt = _format(request)
    metrics = query_list(request, "metrics")

    def start(client: Client) -> Iterator[bytes] | None:
        if not run_exists(client, team, project, run_id):
            return None
        return _started(export.export_history(client, team, project, [run_id], metrics, fmt))

    chunks = await request.app.state.backend.run(start)
    if chunks is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    return _stream(chunks, fmt, f"{team}-{project}-{run_id}-history", 1)


routes = [
    Route(RUN_PATH + "/history", run_history, methods=["GET"]),
    Route(RUN_PATH + "/history/scan", run_history_scan, methods=["GET"]),
    Route(RUN_PATH + "/export", export_run, methods=["GET"]),
    Route(PROJECT_PATH + "/series", post_series, methods=["POST"]),
    Route(PROJECT_PATH + "/bands", post_bands, methods=["POST"]),
    Route(PROJECT_PATH + "/system", post_system, methods=["POST"]),
    Route(PROJECT_PATH + "/export", export_project, methods=["GET"]),
]
