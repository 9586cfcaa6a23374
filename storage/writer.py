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
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from runstream.events import CONSOLE, METRICS, SYSTEM, Event, decode_value, encode_value
from runstream.storage.buckets import (
    LEVEL_ONE,
    Layout,
    LevelOneEdges,
    TouchedSteps,
    local_level_one,
    mark_pending,
    refresh_level_one,
    refresh_upper,
)

_TIME = pa.timestamp("ms", tz="UTC")
RunKey = tuple[str, str, str]  # (team, project, run_id)


class _Dictionary:
    """Builds a dictionary-encoded string column from runs of one repeated value."""

    def __init__(self) -> None:
        self._codes: list[int] = []
        self._counts: list[int] = []
        self._index: dict[str, int] = {}

    def extend(self, value: str, count: int) -> None:
        self._codes.append(self._index.setdefault(value, len(self._index)))
        self._counts.append(count)

    def array(self) -> pa.DictionaryArray:
        codes = np.repeat(np.array(self._codes, np.int32), np.array(self._counts, np.int64))
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(self._index), pa.string()))


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1000)


def _insert(client: Client, table: str, columns: Mapping[str, pa.Array | list]) -> None:
    client.insert_arrow(table, pa.table(dict(columns)))


# -- metric history ---------------------------------------------------------------


@dataclass
class MetricColumns:
    points: pa.Table
    steps: pa.Table
    level_one: pa.Table | None  # the level-1 buckets computed here (``buckets.local_level_one``)
    edges: LevelOneEdges  # the level-1 buckets ClickHouse recomputes from the stored points
    touched: TouchedSteps
    metric_names: dict[tuple[str, str], set[str]]


def metric_columns(events: Iterable[Event], stored_seqs: Mapping[RunKey, int] | None = None) -> MetricColumns:
    """Flatten metric batches into ``metric_points`` rows (one per logged value), ``metric_steps`` rows and
    the level-1 buckets the batch logged whole.

    ``stored_seqs``: per run, the largest seq of the metric events stored before (the processor's
    run states know it). A bucket is computed from an event only when the event is newer than
    everything stored and everything earlier in the batch: an older event arriving late may
    share the bucket with a newer one whose bucket row, stored first, has the larger version,
    so it is recomputed from the stored points instead. Without ``stored_seqs`` every bucket
    is recomputed in ClickHouse.

    Columns are converted a list at a time (numpy reads the floats, ints and the contract's "NaN" and
    "Infinity" strings of a validated column in C); only sparse columns are looked at value by value.
    """
    parts: list[tuple[str, str, str, str, int, int, np.ndarray, np.ndarray]] = []
    s_team, s_project, s_run = _Dictionary(), _Dictionary(), _Dictionary()
    s_step: list[np.ndarray] = []
    s_time: list[np.ndarray] = []
    s_seq: list[np.ndarray] = []
    level_one: list[tuple[str, str, str, str, dict[str, np.ndarray]]] = []  # identity, then columns
    edges = LevelOneEdges()
    touched = TouchedSteps()
    names: dict[tuple[str, str], set[str]] = {}
    newest = dict(stored_seqs) if stored_seqs is not None else None
    for event in events:
        if event.type != METRICS:
            raise ValueError(f"expected {METRICS!r} events, got {event.type!r}")
        values = event.data["values"]
        key = (event.team, event.project, event.run_id)
        is_newest = newest is not None and event.seq > newest.get(key, -1)
        if newest is not None:
            newest[key] = max(event.seq, newest.get(key, -1))
        steps = np.array(event.data["step"], np.int64)
        times = np.rint(np.array(event.data["time"], np.float64) * 1000).astype(np.int64)
        rows = len(steps)
        ordered = rows == 1 or bool((np.diff(steps) > 0).all())
        layout = Layout.of(steps) if ordered else None
        s_team.extend(event.team, rows)
        s_project.extend(event.project, rows)
        s_run.extend(event.run_id, rows)
        s_step.append(steps)
        s_time.append(times)
        s_seq.append(np.full(rows, event.seq, np.uint64))
        for name, column in values.items():
            if None in column:  # a sparse column: only some rows logged this metric
                kept = np.array([i for i, v in enumerate(column) if v is not None], np.int64)
                logged = np.array([column[i] for i in kept], np.float64)
                at = steps[kept]
            else:
                logged = np.array(column, np.float64)
                at = steps
            partial: list[int]
            if layout is not None and at is steps and is_newest and np.isfinite(logged).all():
                buckets = local_level_one(layout, steps, times, logged, event.seq)
                if buckets is not None:
                    level_one.append((event.team, event.project, name, event.run_id, buckets))
                partial = layout.partial
            elif layout is not None and at is steps:
                partial = layout.touched
            else:
                partial = np.unique(at // LEVEL_ONE).tolist()
            if partial:
                edges.add(event.team, event.project, event.run_id, name, partial)
            if len(logged):
                parts.append((event.team, event.project, name, event.run_id, int(at[0]), event.seq, at, logged))
        touched.add(event.team, event.project, event.run_id, values, int(steps.min()), int(steps.max()))
        names.setdefault((event.team, event.project), set()).update(values)
    # In the table's order (a run's events usually log ascending steps): ClickHouse then finds the
    # block sorted and skips sorting it.
    parts.sort(key=lambda part: part[:5])
    team, project, metric, run = _Dictionary(), _Dictionary(), _Dictionary(), _Dictionary()
    for part in parts:
        count = len(part[7])
        for builder, value in zip((team, project, metric, run), part[:4]):
            builder.extend(value, count)
    points = pa.table(
        {
            "team": team.array(),
            "project": project.array(),
            "metric": metric.array(),
            "run_id": run.array(),
            "step": pa.array(_concat([p[6] for p in parts], np.int64).astype(np.uint64)),
            "value": pa.array(_concat([p[7] for p in parts], np.float64)),
            "seq": pa.array(_concat([np.full(len(p[7]), p[5], np.uint64) for p in parts], np.uint64)),
        }
    )
    steps_table = pa.table(
        {
            "team": s_team.array(),
            "project": s_project.array(),
            "run_id": s_run.array(),
            "step": pa.array(_concat(s_step, np.int64).astype(np.uint64)),
            "time": pa.array(_concat(s_time, np.int64)).cast(_TIME),
            "seq": pa.array(_concat(s_seq, np.uint64)),
        }
    )
    return MetricColumns(points, steps_table, _level_one_table(level_one), edges, touched, names)


def _level_one_table(parts: list[tuple[str, str, str, str, dict[str, np.ndarray]]]) -> pa.Table | None:
    """``metric_buckets`` rows (level 1) from the columns ``buckets.local_level_one`` computed per (event, metric)."""
    if not parts:
        return None
    identity = {name: _Dictionary() for name in ("team", "project", "metric", "run_id")}
    for *names, columns in parts:
        for builder, value in zip(identity.values(), names):
            builder.extend(value, len(columns["bucket"]))
    table: dict[str, pa.Array] = {name: builder.array() for name, builder in identity.items()}
    for name in parts[0][4]:
        column = pa.array(np.concatenate([columns[name] for *_, columns in parts]))
        table[name] = column.cast(_TIME) if name.startswith("time_") else column
    table["level"] = pa.array(np.ones(len(table["bucket"]), np.uint8))
    return pa.table(table)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def insert_metric_points(
    client: Client,
    events: Iterable[Event],
    *,
    defer_upper: bool = False,
    stored_seqs: Mapping[RunKey, int] | None = None,
) -> int:
    """Store many metric batches: points, step times, the key catalog and every downsampling level they
    touch. Returns the number of points.

    ``defer_upper``: levels 2 and up are left for ``buckets.refresh_pending`` (a driver's cadence) and
    recorded as pending; level 1 is always written here. ``stored_seqs``: see ``metric_columns``.
    """
    cols = metric_columns(events, stored_seqs)
    if cols.points.num_rows:
        client.insert_arrow("metric_points", cols.points)
    if cols.steps.num_rows:
        client.insert_arrow("metric_steps", cols.steps)
    if cols.level_one is not None:
        client.insert_arrow("metric_buckets", cols.level_one)
    record_keys(client, [(t, p, "metric", m, "number") for (t, p), ms in cols.metric_names.items() for m in ms])
    refresh_level_one(client, cols.edges)
    if defer_upper:
        mark_pending(client, cols.touched)
    else:
        refresh_upper(client, cols.touched)
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
    "sweep": "",
}


def upsert_runs(client: Client, runs: Sequence[Mapping[str, Any]]) -> None:
    """Write whole run records (the run processor's state); the largest ``version`` wins.

    A record has team, project, run_id, name, created_at, updated_at, heartbeat_at
    (Unix seconds), version, and optionally seen_at (the server's clock when the run
    last sent anything; default heartbeat_at) and the keys of ``RUN_DEFAULTS``
    (``config`` nested, ``git`` a dict, ``error`` a traceback or None, ``metrics`` the
    define_metric specs, stored as the ``metric_defs`` JSON; ``sweep`` the sweep's id, stored as ``sweep_id``).
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
                "sweep_id": run["sweep"] or "",
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
