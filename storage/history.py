"""One run's unsampled metric history, page by page, in W&B's row shape but columnar.

A page is ``page_size`` history rows: the distinct steps at which at least one
of the selected metrics was logged, ascending, each with its wall time and one
value per metric (``None`` where that step did not log the metric; NaN and
infinities stay floats). Pages are cut by step, so a caller walks them with
``after_step = page["next_after_step"]`` and sees every step exactly once.

Finding where a page ends is cheap: ``metric_steps`` (one row per logged step,
ordered by run and step) gives the (``page_size`` + 1)-th step after the cursor
by reading in order, and since every step with a point has a row there, the
page's last step and the next page's first lie at or before it unless the
selected metrics are sparser; only then does the search read further.

The page's points and its steps' times are read in one query as Arrow,
without ``FINAL`` but with their seq; numpy keeps the row with the largest seq
per (metric, step) and pivots. That was measured fastest: ``FINAL`` merges every part whose key range straddles
the run (in a table of 5 parts, a 10k-point page took 37 ms with ``FINAL``,
9.5 ms with ``argMax(value, seq)`` and 7 ms read plain), and a page is small
enough for numpy to deduplicate in a millisecond or two.

Unlike W&B's sampled history, which keeps only rows having every requested
key, a row here is kept when it has any of them: sparse metrics (a validation
loss every N steps) read naturally next to dense ones.

``sampled_history`` reads those pages and keeps at most ``samples`` rows of
them, each key's extremes among them, with numpy.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from runstream.storage.buckets import pending_ranges
from runstream.storage.errors import QueryError, require_text
from runstream.storage.lineage import SEGMENT_FILTER, SEGMENT_MARK, Segment, is_plain, resolve, segment_params
from runstream.storage.series import composed_extents

MAX_PAGE_SIZE = 100_000
#: A page holds at most this many values (rows x keys); page_size shrinks to fit.
MAX_CELLS = 4_000_000
MAX_STEP = 2**64 - 1
#: Rows per page that ``sampled_history`` reads.
SAMPLED_PAGE = 50_000


class Rows(TypedDict):
    """History rows, columnar: each row's step and wall time (Unix seconds, None where unknown), and per key
    its value in each row (None where the row did not log it; NaN and infinities stay floats)."""

    step: list[int]
    time: list[float | None]
    columns: dict[str, list[float | None]]


class Page(Rows):
    """A page of history rows, with the cursor of the next page (None on the last)."""

    next_after_step: int | None


# A run's composed history: the stored runs of its segments, each within its steps (storage/lineage.py).
_RUN = "team = {team:String} AND project = {project:String} AND " + SEGMENT_FILTER
# The run's own rows (statistics): its segments' stored runs, a rewind's segments having none.
_RUN_ROWS = "team = {team:String} AND project = {project:String} AND run_id IN {seg_ids:Array(String)}"
_METRICS = "AND metric IN {keys:Array(String)}"

_NTH_LOGGED_STEP = f"""
SELECT step FROM metric_steps FINAL WHERE {_RUN} AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}}
ORDER BY step LIMIT 1 OFFSET {{offset:UInt64}}
"""

# The page's last step and, when there is one, the step after it.
_PAGE_END = f"""
SELECT step FROM (SELECT DISTINCT step FROM metric_points
                  WHERE {_RUN} {_METRICS} AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}})
ORDER BY step LIMIT 2 OFFSET {{offset:UInt64}}
"""

# The page's points (k = the key's position in keys, from 1) and its steps' times (k = 0),
# every copy with its seq: the largest seq per (k, step) is kept in numpy. When the keys
# are sparse, the page spans many more logged steps than it has rows: %(sparse)s then
# restricts the times to the page's rows.
_PAGE_DATA = f"""
SELECT toUInt32(indexOf({{keys:Array(String)}}, metric)) AS k, step, value, seq FROM metric_points
WHERE {_RUN} {_METRICS} AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}}
UNION ALL
SELECT toUInt32(0) AS k, step, toFloat64(toUnixTimestamp64Milli(time)) AS value, seq FROM metric_steps
WHERE {_RUN} AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}} %(sparse)s
SETTINGS output_format_arrow_compression_method = 'none'
"""
_SPARSE = f"""AND step IN (SELECT step FROM metric_points
                         WHERE {_RUN} {_METRICS} AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}})"""

_RUN_METRICS = f"SELECT DISTINCT metric FROM metric_points WHERE {_RUN} ORDER BY metric"
# Of a fork, every run of its history must have logged the metric as ints (a float of the fork's own would
# otherwise read as an int).
_INTEGER_METRICS = (
    f"SELECT metric FROM metric_summaries FINAL WHERE {_RUN_ROWS} {_METRICS} GROUP BY metric HAVING min(integer) = 1"
)
# A run without lineage reads as it always did: its own rows, no segment filter (cheaper; see ``_sql``).
_PLAIN_RUN = "run_id = {run:String}"
_PLAIN_INTEGER_METRICS = (
    f"SELECT metric FROM metric_summaries FINAL WHERE team = {{team:String}} AND project = {{project:String}} "
    f"AND {_PLAIN_RUN} {_METRICS} AND integer"
)


def segments_of(client: Client, team: str, project: str, run_id: str, rewinds: int | None = None) -> list[Segment]:
    """A run's segments (``storage.lineage.resolve``): resolve them once per request and pass them on."""
    return resolve(client, team, project, [run_id], rewinds)[run_id]


def _sql(sql: str, params: Mapping[str, Any]) -> str:
    """``sql`` for the run of ``params``: a plain run's rows are read by its id alone, as before lineage."""
    if not is_plain(_segments_of(params), params["run"]):
        return sql
    if sql == _INTEGER_METRICS:
        return _PLAIN_INTEGER_METRICS
    return sql.replace(SEGMENT_FILTER, _PLAIN_RUN)


def _run_params(
    client: Client, team: str, project: str, run_id: str, segments: Sequence[Segment] | None, rewinds: int | None
) -> dict[str, Any]:
    """The parameters of ``_RUN``: the run's segments (resolved unless given)."""
    if segments is None:
        segments = segments_of(client, team, project, run_id, rewinds)
    return {"team": team, "project": project, "run": run_id, **segment_params(segments)}


def run_metrics(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    rewinds: int | None = None,
    segments: Sequence[Segment] | None = None,
) -> list[str]:
    """The names of the metrics a run's (composed) history has, sorted."""
    require_text("run_id", run_id)
    params = _run_params(client, team, project, run_id, segments, rewinds)
    rows = client.query(_sql(_RUN_METRICS, params), parameters=params).result_rows
    return [str(name) for (name,) in rows]


def integer_metrics(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    keys: Sequence[str],
    segments: Sequence[Segment] | None = None,
) -> set[str]:
    """Those of ``keys`` whose every finite value the run logged as an int (the stream processor's
    ``metric_summaries.integer``; of a fork, its parent's too): history stores Float64, callers show these as ints."""
    if not keys:
        return set()
    params = {**_run_params(client, team, project, run_id, segments, None), "keys": list(keys)}
    return {str(name) for (name,) in client.query(_sql(_INTEGER_METRICS, params), parameters=params).result_rows}


def history_page(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    keys: Sequence[str] | None = None,
    min_step: int | None = None,
    max_step: int | None = None,
    after_step: int | None = None,
    page_size: int = 10_000,
    rewinds: int | None = None,
    segments: Sequence[Segment] | None = None,
) -> Page:
    """A page of a run's history: ``{"step": [...], "time": [...], "columns": {metric:
    [...]}, "next_after_step": int | None}``.

    Rows are the first ``page_size`` steps in ``[min_step, max_step]`` after
    ``after_step`` at which any of ``keys`` (all the run's metrics when None) was
    logged; ``time`` is the step's wall time in Unix seconds; ``columns`` has one
    list per key, ``None`` where the row did not log it. ``next_after_step`` is the
    cursor of the next page, None on the last one. With many keys the page has
    fewer rows, so that it holds at most ``MAX_CELLS`` values.

    The history is composed (``storage.lineage``): a fork's parent up to the fork step, then
    its own; a rewound run's kept history, then what it logged since. ``rewinds``: read the run
    as it stood after that many of its rewinds (0: before the first), None: as it is. ``segments``: the
    run's, resolved already (``segments_of``), else resolved here.
    """
    require_text("run_id", run_id)
    if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise QueryError(f"page_size must be an integer from 1 to {MAX_PAGE_SIZE}, got {page_size!r}")
    lo = max(_check_step("min_step", min_step, 0), _check_step("after_step", after_step, -1) + 1)
    hi = _check_step("max_step", max_step, MAX_STEP)
    run = _run_params(client, team, project, run_id, segments, rewinds)
    if keys is None:
        names = run_metrics(client, team, project, run_id, segments=_segments_of(run))
    elif isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
        raise QueryError("keys must be a list of metric names")
    else:
        names = list(dict.fromkeys(keys))
    page_size = max(1, min(page_size, MAX_CELLS // max(len(names), 1)))
    if not names or lo > hi:
        return {"step": [], "time": [], "columns": {name: [] for name in names}, "next_after_step": None}

    params = {**run, "keys": names, "lo": lo}
    end, more, sparse = _page_end(client, params, hi, page_size)
    sql = _sql(_PAGE_DATA % {"sparse": _SPARSE if sparse else ""}, params)
    data = pa.ipc.open_stream(client.raw_query(sql, parameters={**params, "hi": end}, fmt="ArrowStream"))
    rows = _pivot(data.read_all(), names)
    return {**rows, "next_after_step": end if more else None}


def _segments_of(params: Mapping[str, Any]) -> list[Segment]:
    return [Segment(*s) for s in zip(params["seg_ids"], params["seg_first"], params["seg_last"])]


def _page_end(client: Client, params: dict[str, Any], hi: int, page_size: int) -> tuple[int, bool, bool]:
    """The page's last step (the ``page_size``-th from ``lo`` with a selected point, else
    ``hi``), whether any step with a selected point follows it, and whether the page
    may span many more logged steps than it has rows."""
    offset = page_size - 1
    # The (page_size + 1)-th logged step bounds the search unless the selected metrics are sparse.
    bound = _first(client, _sql(_NTH_LOGGED_STEP, params), {**params, "hi": hi, "offset": page_size})
    page_end = _sql(_PAGE_END, params)
    if bound is not None:
        rows = client.query(page_end, parameters={**params, "hi": bound, "offset": offset}).result_rows
        if len(rows) == 2:
            return rows[0][0], True, False
    rows = client.query(page_end, parameters={**params, "hi": hi, "offset": offset}).result_rows
    return (rows[0][0], len(rows) == 2, True) if rows else (hi, False, True)


def _first(client: Client, sql: str, params: dict[str, Any]) -> int | None:
    rows = client.query(sql, parameters=params).result_rows
    return int(rows[0][0]) if rows else None


def _pivot(data: pa.Table, names: list[str]) -> Rows:
    """Long (k, step, value, seq) rows into rows by step and one column per name, with numpy."""
    if data.num_rows:
        k, step, value, seq = (data.column(c).to_numpy() for c in ("k", "step", "value", "seq"))
    else:
        k, step, value, seq = np.empty(0, np.uint32), np.empty(0, np.uint64), np.empty(0), np.empty(0, np.uint64)
    # The current row per (k, step): the last one once sorted by k, step and seq.
    order = np.lexsort((seq, step, k))
    k, step, value = k[order].astype(np.int64), step[order], value[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (k[1:] != k[:-1]) | (step[1:] != step[:-1])
    k, step, value = k[last], step[last], value[last]

    is_time = k == 0  # sorted first, by step
    time_step, time_ms = step[is_time], value[is_time]
    k, step, value = k[~is_time], step[~is_time], value[~is_time]
    steps, row = np.unique(step, return_inverse=True)
    grid = np.full((len(names), len(steps)), np.nan)
    logged = np.zeros((len(names), len(steps)), dtype=bool)
    grid[k - 1, row] = value
    logged[k - 1, row] = True

    if len(time_step):
        at = np.minimum(np.searchsorted(time_step, steps), len(time_step) - 1)
        has_time = time_step[at] == steps
        seconds = time_ms[at] / 1000.0
    else:
        has_time, seconds = np.zeros(len(steps), dtype=bool), np.zeros(len(steps))
    return {
        "step": steps.tolist(),
        "time": _with_gaps(seconds, has_time),
        "columns": {name: _with_gaps(grid[i], logged[i]) for i, name in enumerate(names)},
    }


def _with_gaps(values: np.ndarray, present: np.ndarray) -> list[float | None]:
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(~present).tolist():
        out[i] = None
    return out


def _check_step(what: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEP:
        raise QueryError(f"{what} must be a step (an integer from 0 to 2**64 - 1), got {value!r}")
    return value


# -- sampled history ----------------------------------------------------------------------------


def sampled_history(
    client: Client,
    team: str,
    project: str,
    run_id: str,
    keys: Sequence[str] | None,
    samples: int,
    rewinds: int | None = None,
    segments: Sequence[Segment] | None = None,
) -> Rows:
    """At most ``samples`` rows of a run's history (rows as ``history_page`` gives them), keeping every key's
    extremes; ``keys`` None: every metric the run logged.

    A run with at most ``samples`` rows comes whole. Otherwise its steps are cut
    into buckets (as many as leave room for each key's min and max row in each),
    and the rows kept are the first, the last, and those holding a key's finite
    min or max in a bucket: a one-step spike stays visible. Pages are reduced as
    they are read (extremes of extremes are the extremes), so memory stays at a
    page whatever the run's length.
    """
    own = list(segments) if segments is not None else segments_of(client, team, project, run_id, rewinds)
    names = list(dict.fromkeys(keys if keys is not None else run_metrics(client, team, project, run_id, segments=own)))
    behind = pending_ranges(client, team, project, [g.run_id for g in own])
    composed = composed_extents(client, team, project, {run_id: own}, names, behind)[0] if names else {}
    spans = list(composed.get(run_id, {}).values())
    if not spans:
        return {"step": [], "time": [], "columns": {name: [] for name in names}}
    first = min(e.first_step for e in spans)
    last = max(e.last_step for e in spans)
    buckets = max(1, (samples - 2) // (2 * len(names)))
    width = (last - first) // buckets + 1
    kept: _Grid | None = None
    after: int | None = None
    while True:
        page = history_page(
            client, team, project, run_id, names, after_step=after, page_size=SAMPLED_PAGE, segments=own
        )
        grid = _Grid.of(page, names)
        kept = grid if kept is None else kept.concat(grid)
        if len(kept) > samples:
            kept = kept.take(_extremes(kept, first, width))
        after = page["next_after_step"]
        if after is None:
            break
    if len(kept) > samples:  # more keys than samples has room for: evenly spaced rows
        kept = kept.take(np.unique(np.linspace(0, len(kept) - 1, samples).round().astype(np.int64)))
    return kept.rows(names)


@dataclass(frozen=True)
class _Grid:
    """History rows as arrays: a row's step and time, and per key its value and whether it was logged."""

    step: np.ndarray  # (n,) uint64
    time: np.ndarray  # (n,) seconds, NaN where unknown
    has_time: np.ndarray  # (n,) bool
    values: np.ndarray  # (k, n) float
    logged: np.ndarray  # (k, n) bool

    @classmethod
    def of(cls, rows: Rows, names: list[str]) -> _Grid:
        n = len(rows["step"])

        def present(column: list[Any]) -> np.ndarray:
            return np.fromiter((v is not None for v in column), dtype=bool, count=n)

        columns = [rows["columns"][name] for name in names]
        return cls(
            np.asarray(rows["step"], dtype=np.uint64),
            np.array(rows["time"], dtype=float),
            present(rows["time"]),
            np.array(columns, dtype=float).reshape(len(names), n),
            np.array([present(c) for c in columns], dtype=bool).reshape(len(names), n),
        )

    def __len__(self) -> int:
        return len(self.step)

    def take(self, index: np.ndarray) -> _Grid:
        return _Grid(
            self.step[index], self.time[index], self.has_time[index], self.values[:, index], self.logged[:, index]
        )

    def concat(self, other: _Grid) -> _Grid:
        return _Grid(
            np.concatenate([self.step, other.step]),
            np.concatenate([self.time, other.time]),
            np.concatenate([self.has_time, other.has_time]),
            np.concatenate([self.values, other.values], 1),
            np.concatenate([self.logged, other.logged], 1),
        )

    def rows(self, names: list[str]) -> Rows:
        return {
            "step": self.step.tolist(),
            "time": _with_gaps(self.time, self.has_time),
            "columns": {name: _with_gaps(self.values[i], self.logged[i]) for i, name in enumerate(names)},
        }


def _extremes(grid: _Grid, first_step: int, width: int) -> np.ndarray:
    """The first and last row, and in every bucket of ``width`` steps the rows of each key's finite min and max."""
    bucket = (grid.step - np.uint64(first_step)) // np.uint64(width)
    picks = [np.array([0, len(grid) - 1])]
    for values, logged in zip(grid.values, grid.logged):
        rows_ok = np.flatnonzero(logged & np.isfinite(values))
        if not len(rows_ok):
            continue
        order = np.lexsort((values[rows_ok], bucket[rows_ok]))  # by bucket, then value
        sorted_buckets = bucket[rows_ok][order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        ends = np.r_[starts[1:] - 1, len(order) - 1]
        picks += [rows_ok[order[starts]], rows_ok[order[ends]]]
    return np.unique(np.concatenate(picks))


# -- whole-history statistics -------------------------------------------------------------------

# Per (run, metric), over the kept history (the latest value of each step, by seq, among seqs up
# to the run's limit): what streams/summaries.py folds from values. Kahan summation, so a
# redelivered batch rewrites the same mean whatever order the engine reads the points in.
_STATISTICS = """
SELECT run_id, metric, countIf(isFinite(value)), sumKahanIf(value, isFinite(value)), minIf(value, isFinite(value)),
       maxIf(value, isFinite(value)), countIf(isNaN(value)), countIf(isInfinite(value)),
       argMax(value, step), max(step), min(step)
FROM (%s)
GROUP BY run_id, metric
"""
_PLAIN_POINTS = """
    SELECT run_id, metric, step, argMax(value, seq) AS value FROM metric_points
    WHERE team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)}
        AND metric IN {metrics:Array(String)} AND seq <= {limits:Array(UInt64)}[indexOf({runs:Array(String)}, run_id)]
    GROUP BY run_id, metric, step
"""
# Runs composed of segments (storage/lineage.py: a fork's parent up to the fork step, a rewound run's kept
# history and what it logged since): a stored point counts for every run whose segment holds it (a parent and
# its fork may both be restated in one batch), under that segment's seq limit (the run's own: its limit; a
# parent's: none).
_COMPOSED_POINTS = """
    SELECT {seg_runs:Array(String)}[i] AS run_id, metric, step, argMax(value, seq) AS value
    FROM (
        SELECT metric, step, value, seq, arrayJoin(arrayFilter(
            j -> {seg_ids:Array(String)}[j] = toString(run_id) AND {seg_first:Array(UInt64)}[j] <= step
                 AND step <= {seg_last:Array(UInt64)}[j] AND seq <= {seg_limits:Array(UInt64)}[j],
            range(1, length({seg_ids:Array(String)}) + 1))) AS i
        FROM metric_points
        WHERE team = {team:String} AND project = {project:String} AND run_id IN {seg_ids:Array(String)}
            AND metric IN {metrics:Array(String)}
    )
    GROUP BY run_id, metric, step
"""


def metric_statistics(
    client: Client,
    team: str,
    project: str,
    wanted: Mapping[str, tuple[int, Collection[str]]],
    segments: Mapping[str, Sequence[Segment]] | None = None,
    with_last: bool = False,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Statistics of whole metric histories: ``wanted`` maps a run id to (its largest seq to count, its metrics).

    Per (run, metric) with points: ``count``, ``sum``, ``min``, ``max`` (of the finite values; min
    and max None without any), ``nan`` and ``inf`` (how many of each). The seq limit keeps out
    points of events not counted yet (a batch written before a crash and redelivered in
    smaller pieces). ``with_last``: also ``last`` (the value at the largest step), ``last_step``
    and ``first_step``.

    ``segments``: per run, the segments of its composed history (``lineage.compose``), the seq limit
    applying to the run's own; a run left out covers its own points, every step.
    """
    if not wanted:
        return {}
    segments = {run: segs for run, segs in (segments or {}).items() if run in wanted and not is_plain(segs, run)}
    params: dict[str, Any] = {
        "team": team,
        "project": project,
        "metrics": sorted({m for _, metrics in wanted.values() for m in metrics}),
    }
    points = _PLAIN_POINTS
    if not segments:
        params |= {"runs": list(wanted), "limits": [limit for limit, _ in wanted.values()]}
    else:
        own = [
            (run, seg)
            for run in wanted
            for seg in segments.get(run, [Segment(run, 0, MAX_STEP)])
            if wanted[run][0] >= 0 or not _own(run, seg)  # a run that has folded none of its points yet
        ]
        points = _COMPOSED_POINTS
        params |= segment_params([seg for _, seg in own])
        params["seg_runs"] = [run for run, _ in own]
        params["seg_limits"] = [wanted[run][0] if _own(run, seg) else MAX_STEP for run, seg in own]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    rows = client.query(_STATISTICS % points, parameters=params).result_rows
    for run, metric, count, total, low, high, nan, inf, last, last_step, first_step in rows:
        if metric in wanted[run][1]:  # not another run's metric
            out[(run, metric)] = {
                "count": count,
                "sum": total,
                "min": low if count else None,
                "max": high if count else None,
                "nan": nan,
                "inf": inf,
            }
            if with_last:
                out[(run, metric)] |= {"last": last, "last_step": int(last_step), "first_step": int(first_step)}
    return out


def _own(run_id: str, segment: Segment) -> bool:
    """Whether a segment holds points the run logged itself (its fork parent's are not)."""
    return segment.run_id == run_id or segment.run_id.startswith(run_id + SEGMENT_MARK)


_RUN_STATISTICS = """
SELECT metric, last, min, max, mean, count - nan_count - inf_count AS finite, first_step, last_step, integer
FROM metric_summaries FINAL
WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String} AND count > 0 ORDER BY metric"""


def run_statistics(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
    """What a resumed run needs to go on where it stopped, from the processor's ``metric_summaries``:
    ``{"last_step": largest step logged (None without metrics), "metrics": {name: {"count" (finite values),
    "min", "max", "mean" (None without finite values), "last" (may be NaN or infinite), "first_step",
    "last_step"}}}``. A metric logged as ints has its last value, min and max as ints."""
    require_text("run_id", run_id)
    rows = client.query(_RUN_STATISTICS, parameters={"team": team, "project": project, "run": run_id}).result_rows
    metrics = {}
    for metric, last, low, high, mean, finite, first_step, last_step, integer in rows:
        if integer:
            last, low, high = (int(v) if math.isfinite(v) else v for v in (last, low, high))
        metrics[str(metric)] = {
            "count": int(finite),
            "min": low if finite else None,
            "max": high if finite else None,
            "mean": mean if finite else None,
            "last": last,
            "first_step": int(first_step),
            "last_step": int(last_step),
        }
    return {"last_step": max((m["last_step"] for m in metrics.values()), default=None), "metrics": metrics}
