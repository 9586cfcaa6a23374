"""Columnar bulk inserts of validated events and processor state into ClickHouse.

Every writer sends one columnar insert per table. The high-volume ones (metric
points and step times, system samples) build Arrow columns, the fast path of
both engines, with repeated identity strings as dictionary columns that
ClickHouse reads straight into LowCardinality; the small ones insert Python
columns. The stream processors and the embedded server call these; nothing
else writes the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from runstream.events import CONSOLE, METRICS, SYSTEM, Event, decode_value, encode_value
from runstream.storage.buckets import refresh_buckets

_TIME = pa.timestamp("ms", tz="UTC")


class _Dictionary:
    """Builds a dictionary-encoded string column from runs of one repeated value."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self._index: dict[str, int] = {}

    def extend(self, value: str, count: int) -> None:
        code = self._index.setdefault(value, len(self._index))
        self.codes.extend([code] * count)

    def array(self) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(
            pa.array(self.codes, pa.int32()), pa.array(list(self._index), pa.string())
        )


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _insert(client: Client, table: str, columns: Mapping[str, pa.Array | list]) -> None:
    client.insert_arrow(table, pa.table(dict(columns)))


# -- metric history ---------------------------------------------------------------


@dataclass
class TouchedSteps:
    """Per (team, project) and run: the metrics and the step range a write touched."""

    runs: dict[tuple[str, str], dict[str, tuple[set[str], int, int]]] = field(default_factory=dict)

    def add(self, team: str, project: str, run_id: str, metrics: Iterable[str], lo: int, hi: int) -> None:
        runs = self.runs.setdefault((team, project), {})
        names, old_lo, old_hi = runs.get(run_id, (set(), lo, hi))
        names.update(metrics)
        runs[run_id] = (names, min(lo, old_lo), max(hi, old_hi))


@dataclass
class MetricColumns:
    points: pa.Table
    steps: pa.Table
    touched: TouchedSteps
    metric_names: dict[tuple[str, str], set[str]]


def metric_columns(events: Iterable[Event]) -> MetricColumns:
    """Flatten metric batches into ``metric_points`` rows (one per logged value) and ``metric_steps`` rows."""
    team, project, run, metric = _Dictionary(), _Dictionary(), _Dictionary(), _Dictionary()
    step_col: list[int] = []
    value_col: list[float] = []
    seq_col: list[int] = []
    s_team, s_project, s_run = _Dictionary(), _Dictionary(), _Dictionary()
    s_step: list[int] = []
    s_time: list[int] = []
    s_seq: list[int] = []
    touched = TouchedSteps()
    names: dict[tuple[str, str], set[str]] = {}
    for event in events:
        if event.type != METRICS:
            raise ValueError(f"expected {METRICS!r} events, got {event.type!r}")
        steps, times, values = event.data["step"], event.data["time"], event.data["values"]
        rows = len(steps)
        s_team.extend(event.team, rows)
        s_project.extend(event.project, rows)
        s_run.extend(event.run_id, rows)
        s_step.extend(steps)
        s_time.extend([round(t * 1000) for t in times])
        s_seq.extend([event.seq] * rows)
        for name, column in values.items():
            if None in column:  # a sparse column: only some rows logged this metric
                kept = [i for i, v in enumerate(column) if v is not None]
                step_col.extend([steps[i] for i in kept])
                column = [column[i] for i in kept]
            else:
                step_col.extend(steps)
            if str in map(type, column) or int in map(type, column):  # "NaN"/"Infinity" strings; big ints
                column = [float(decode_value(v)) for v in column]  # points are Float64, ints too
            count = len(column)
            value_col.extend(column)
            team.extend(event.team, count)
            project.extend(event.project, count)
            metric.extend(name, count)
            run.extend(event.run_id, count)
            seq_col.extend([event.seq] * count)
        touched.add(event.team, event.project, event.run_id, values, min(steps), max(steps))
        names.setdefault((event.team, event.project), set()).update(values)
    points = pa.table(
        {
            "team": team.array(),
            "project": project.array(),
            "metric": metric.array(),
            "run_id": run.array(),
            "step": pa.array(step_col, pa.uint64()),
            "value": pa.array(value_col, pa.float64()),
            "seq": pa.array(seq_col, pa.uint64()),
        }
    )
    steps_table = pa.table(
        {
            "team": s_team.array(),
            "project": s_project.array(),
            "run_id": s_run.array(),
            "step": pa.array(s_step, pa.uint64()),
            "time": pa.array(s_time, pa.int64()).cast(_TIME),
            "seq": pa.array(s_seq, pa.uint64()),
        }
    )
    return MetricColumns(points, steps_table, touched, names)


def insert_metric_points(client: Client, events: Iterable[Event]) -> int:
    """Store many metric batches: points, step times, the key catalog and every
    downsampling level they touch. Returns the number of points."""
    cols = metric_columns(events)
    if cols.points.num_rows:
        client.insert_arrow("metric_points", cols.points)
    if cols.steps.num_rows:
        client.insert_arrow("metric_steps", cols.steps)
    record_keys(client, [(t, p, "metric", m, "number") for (t, p), ms in cols.metric_names.items() for m in ms])
    refresh_buckets(client, cols.touched)
    return cols.points.num_rows


# -- system samples and console lines -----------------------------------------------


def insert_system_points(client: Client, events: Iterable[Event]) -> int:
    """Store system sample batches, one row per (metric, time); return the row count."""
    cols: dict[str, Any] = {k: _Dictionary() for k in ("team", "project", "metric", "run_id")}
    time_col: list[int] = []
    value_col: list[float | None] = []
    seq_col: list[int] = []
    names: set[tuple[str, str, str]] = set()
    for event in events:
        if event.type != SYSTEM:
            raise ValueError(f"expected {SYSTEM!r} events, got {event.type!r}")
        times = [round(t * 1000) for t in event.data["time"]]
        for name, column in event.data["values"].items():
            kept = [i for i, v in enumerate(column) if v is not None]
            for key, value in (
                ("team", event.team),
                ("project", event.project),
                ("metric", name),
                ("run_id", event.run_id),
            ):
                cols[key].extend(value, len(kept))
            time_col.extend(times[i] for i in kept)
            value_col.extend(float(decode_value(column[i])) for i in kept)
            seq_col.extend([event.seq] * len(kept))
            names.add((event.team, event.project, name))
    if not time_col:
        return 0
    _insert(
        client,
        "system_points",
        {
            **{key: builder.array() for key, builder in cols.items()},
            "time": pa.array(time_col, pa.int64()).cast(_TIME),
            "value": pa.array(value_col, pa.float64()),
            "seq": pa.array(seq_col, pa.uint64()),
        },
    )
    record_keys(client, [(t, p, "system", m, "number") for t, p, m in names])
    return len(time_col)


def insert_console_lines(client: Client, events: Iterable[Event]) -> int:
    """Store console batches, one row per line; return the line count."""
    cols: dict[str, list] = {k: [] for k in ("team", "project", "run_id", "seq", "row", "time", "stream", "line")}
    for event in events:
        if event.type != CONSOLE:
            raise ValueError(f"expected {CONSOLE!r} events, got {event.type!r}")
        n = len(event.data["line"])
        cols["team"].extend([event.team] * n)
        cols["project"].extend([event.project] * n)
        cols["run_id"].extend([event.run_id] * n)
        cols["seq"].extend([event.seq] * n)
        cols["row"].extend(range(n))
        cols["time"].extend(round(t * 1000) for t in event.data["time"])
        cols["stream"].extend(event.data["stream"])
        cols["line"].extend(event.data["line"])
    if not cols["line"]:
        return 0
    cols["time"] = pa.array(cols["time"], pa.int64()).cast(_TIME)
    _insert(client, "console_lines", cols)
    return len(cols["line"])


# -- files, alerts -------------------------------------------------------------------


def insert_files(client: Client, events: Sequence[Event]) -> int:
    """Store file and media metadata from ``file`` events."""
    rows = [
        {
            "team": e.team,
            "project": e.project,
            "run_id": e.run_id,
            "path": e.data["path"],
            "kind": e.data["kind"],
            "media_type": e.data.get("media_type") or "",
            "step": e.data.get("step"),
            "size": e.data["size"],
            "sha256": e.data["sha256"],
            "store_key": e.data["store_key"],
            "meta": orjson.dumps(e.data.get("meta") or {}).decode(),
            "time": _ms(e.ts),
            "seq": e.seq,
        }
        for e in events
    ]
    insert_rows(client, "run_files", rows)
    return len(rows)


def insert_alerts(client: Client, alerts: Sequence[Mapping[str, Any]]) -> int:
    """Store alerts: dicts with team, project, run_id, alert_id, rule_id, source, level, title, text, time (Unix s)."""
    insert_rows(client, "alerts", [{**a, "rule_id": a.get("rule_id") or "", "time": _ms(a["time"])} for a in alerts])
    return len(alerts)


# -- runs, summaries, catalog -------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON type name of a config or summary value, as the key catalog lists it."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "array"
    return "object"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys: {"opt": {"lr": 1}} -> {"opt.lr": 1}. Lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def value_maps(flat: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, float]]:
    """The two map columns of a flattened config or summary: every value as JSON (non-finite
    floats as the contract's strings), numbers and bools as Float64."""
    as_json = {
        k: orjson.dumps(encode_value(v) if isinstance(v, float) else v, option=orjson.OPT_NON_STR_KEYS).decode()
        for k, v in flat.items()
    }
    as_num = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float))}
    return as_json, as_num


RUN_DEFAULTS: dict[str, Any] = {
    "state": "running",
    "finished_at": None,
    "exit_code": None,
    "group": "",
    "job_type": "",
    "tags": [],
    "notes": "",
    "user": "",
    "host": "",
    "program": "",
    "args": [],
    "python": "",
    "git": {},
    "config": {},
    "error": None,
    "metrics": [],
}


def upsert_runs(client: Client, runs: Sequence[Mapping[str, Any]]) -> None:
    """Write whole run records (the run processor's state); the largest ``version`` wins.

    A record has team, project, run_id, name, created_at, updated_at, heartbeat_at
    (Unix seconds), version, and optionally seen_at (the server's clock when the run
    last sent anything; default heartbeat_at) and the keys of ``RUN_DEFAULTS``
    (``config`` nested, ``git`` a dict, ``error`` a traceback or None, ``metrics`` the
    define_metric specs, stored as the ``metric_defs`` JSON).
    """
    rows = []
    catalog = []
    for run in runs:
        run = {**RUN_DEFAULTS, **run}
        flat = flatten(run["config"])
        config, config_num = value_maps(flat)
        catalog += [(run["team"], run["project"], "config", k, json_type(v)) for k, v in flat.items()]
        rows.append(
            {
                "team": run["team"],
                "project": run["project"],
                "run_id": run["run_id"],
                "name": run["name"],
                "state": run["state"],
                "created_at": _ms(run["created_at"]),
                "updated_at": _ms(run["updated_at"]),
                "heartbeat_at": _ms(run["heartbeat_at"]),
                "last_seen_at": _ms(run.get("seen_at") or run["heartbeat_at"]),
                "finished_at": _ms(run["finished_at"]),
                "exit_code": run["exit_code"],
                "run_group": run["group"] or "",
                "job_type": run["job_type"] or "",
                "tags": list(run["tags"]),
                "notes": run["notes"] or "",
                "user": run["user"] or "",
                "host": run["host"] or "",
                "program": run["program"] or "",
                "args": list(run["args"]),
                "python": run["python"] or "",
                "git": orjson.dumps(run["git"] or {}).decode(),
                "config": config,
                "config_num": config_num,
                "error": run["error"] or "",
                "metric_defs": orjson.dumps(run["metrics"]).decode(),
                "version": run["version"],
            }
        )
    insert_rows(client, "runs", rows)
    record_keys(client, catalog)


def upsert_run_summaries(client: Client, summaries: Sequence[Mapping[str, Any]]) -> None:
    """Write whole run summaries: dicts with team, project, run_id, summary (dict), version."""
    rows = []
    catalog = []
    for s in summaries:
        flat = flatten(s["summary"])
        summary, summary_num = value_maps(flat)
        catalog += [(s["team"], s["project"], "summary", k, json_type(v)) for k, v in flat.items()]
        rows.append(
            {
                "team": s["team"],
                "project": s["project"],
                "run_id": s["run_id"],
                "summary": summary,
                "summary_num": summary_num,
                "version": s["version"],
            }
        )
    insert_rows(client, "run_summaries", rows)
    record_keys(client, catalog)


METRIC_SUMMARY_FIELDS = (
    "team",
    "project",
    "run_id",
    "metric",
    "last",
    "min",
    "max",
    "mean",
    "count",
    "nan_count",
    "inf_count",
    "first_step",
    "last_step",
    "first_time",
    "last_time",
    "integer",
    "version",
)


def upsert_metric_summaries(client: Client, summaries: Sequence[Mapping[str, Any]]) -> None:
    """Write whole per-(run, metric) statistics (``METRIC_SUMMARY_FIELDS``; times in Unix seconds)."""
    rows = [{k: s[k] for k in METRIC_SUMMARY_FIELDS} for s in summaries]
    for row in rows:
        row["first_time"], row["last_time"] = _ms(row["first_time"]), _ms(row["last_time"])
    insert_rows(client, "metric_summaries", rows)


def record_keys(client: Client, keys: Iterable[tuple[str, str, str, str, str]]) -> None:
    """Add (team, project, kind, key, type) rows to the key catalog."""
    rows = sorted(set(keys))
    if rows:
        client.insert("key_catalog", rows, column_names=["team", "project", "kind", "key", "type"])


def insert_rows(client: Client, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert row dicts (DateTime64 values as integer ms since the epoch) in one columnar insert."""
    if not rows:
        return
    names = list(rows[0])
    client.insert(table, [[row[name] for row in rows] for name in names], column_names=names, column_oriented=True)


def insert_row(client: Client, table: str, row: Mapping[str, Any]) -> None:
    """One row dict: the small tables' writes (accounts, reports, rules)."""
    insert_rows(client, table, [row])


# -- processor state -------------------------------------------------------------------


def upsert_run_states(client: Client, states: Mapping[tuple[str, str, str], tuple[bytes, int]]) -> None:
    """Write processor states: (team, project, run_id) -> (JSON bytes, version)."""
    rows = [
        {"team": t, "project": p, "run_id": r, "state": raw.decode(), "version": version}
        for (t, p, r), (raw, version) in states.items()
    ]
    insert_rows(client, "run_states", rows)


def load_run_states(client: Client, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], bytes]:
    """The stored processor states of these runs (those that have one)."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    rows = client.query(
        "SELECT team, project, run_id, state FROM run_states FINAL "
        "WHERE (team, project, run_id) IN {keys:Array(Tuple(String, String, String))}",
        parameters={"keys": keys},
    ).result_rows
    return {(t, p, r): s.encode() if isinstance(s, str) else s for t, p, r, s in rows}
