"""Chart series for many runs: bounded points per run, min/max envelopes kept.

For each run the reader picks the cheapest source that still gives a faithful
chart of at most ``points`` points over the requested step range:

- the raw points, when the range holds at most ``points`` steps;
- raw points bucketed on the fly, when the range is a little larger (fewer
  than ``4 * points`` steps, where even the finest stored level is too coarse);
- otherwise the finest stored level of ``metric_buckets`` with at most
  ``points`` buckets in the range (between points/4 and points of them).

Every point carries the bucket's last value (an actual logged value, plotted at
the bucket's last step), its mean over finite values, and the min/max of the
finite values, so a one-step spike among 100,000 steps still shows as a max.
Results are columnar numpy arrays, which orjson serializes directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np
from clickhouse_connect.driver.client import Client

from runstream.events import MAX_STEP
from runstream.storage.buckets import FANOUT, TOP_LEVEL, WIDTHS, Pending, level_for, pending_ranges
from runstream.storage.errors import QueryError
from runstream.storage.lineage import Segment, resolve

X_AXES = ("step", "time", "relative", "metric")
MAX_POINTS = 10_000
MAX_RUNS = 10_000
MAX_METRICS = 100
_NAME_LIMIT = 256


@dataclass(frozen=True)
class Source:
    """Where one run's points come from: a stored level, or raw points bucketed ``width`` steps wide."""

    level: int  # 0: raw points
    width: int  # steps per point

    @classmethod
    def for_range(cls, first_step: int, last_step: int, points: int) -> Source:
        span = last_step - first_step + 1
        if span <= points:
            return cls(0, 1)
        if span <= FANOUT * points:  # even level 1 would be too coarse: bucket the raw points
            # Buckets are aligned at multiples of the width, so the range can touch one more.
            return cls(0, math.ceil(span / (points - 1)))
        level = max(level_for(first_step, last_step, points), 1)
        return cls(level, WIDTHS[level])


# Per (metric, run, bucket): the plotted step and time, finite count, min, max, sum and last value.
_STORED = """
SELECT metric, run_id, bucket, step_last AS step, toUnixTimestamp64Milli(time_last) AS time_ms,
       count - nonfinite AS n, min, max, sum, last
FROM metric_buckets FINAL
WHERE team = {team:String} AND project = {project:String} AND metric IN {metrics:Array(String)}
  AND level = {level:UInt8} AND run_id IN {runs:Array(String)}
  AND bucket BETWEEN {first:UInt64} AND {last:UInt64}
"""

# A stored level that is behind for some runs (``buckets.pending_ranges``): their buckets from the
# first pending one on are aggregated from level 1, which is always current, the rest read as stored.
_BEHIND = """ AND bucket < transform(toString(run_id), {behind:Array(String)}, {behind_from:Array(UInt64)}, {last:UInt64} + 1)
UNION ALL
SELECT metric, run_id, intDiv(bucket, {fanout:UInt64}) AS parent, max(step_last) AS step,
       toUnixTimestamp64Milli(argMax(time_last, step_last)) AS time_ms, sum(count - nonfinite) AS n,
       ifNull(minIfOrNull(min, isFinite(min)), nan) AS min, ifNull(maxIfOrNull(max, isFinite(max)), nan) AS max,
       sum(sum) AS sum, argMax(last, step_last) AS last
FROM metric_buckets FINAL
WHERE team = {team:String} AND project = {project:String} AND metric IN {metrics:Array(String)}
  AND level = 1 AND run_id IN {behind:Array(String)}
  AND bucket BETWEEN {first:UInt64} * {fanout:UInt64} AND ({last:UInt64} + 1) * {fanout:UInt64} - 1
  AND intDiv(bucket, {fanout:UInt64}) >= transform(toString(run_id), {behind:Array(String)}, {behind_from:Array(UInt64)}, toUInt64(0))
GROUP BY metric, run_id, parent
"""

_RAW = """
SELECT p.metric AS metric, p.run_id AS run_id, intDiv(p.step, {width:UInt64}) AS bucket, max(p.step) AS step,
       %(time)s AS time_ms, toUInt32(countIf(isFinite(p.value))) AS n,
       ifNull(minIfOrNull(p.value, isFinite(p.value)), nan) AS min,
       ifNull(maxIfOrNull(p.value, isFinite(p.value)), nan) AS max,
       sumIf(p.value, isFinite(p.value)) AS sum, argMax(p.value, p.step) AS last
FROM (SELECT metric, run_id, step, value FROM metric_points FINAL
      WHERE team = {team:String} AND project = {project:String} AND metric IN {metrics:Array(String)}
        AND run_id IN {runs:Array(String)} AND step BETWEEN {first:UInt64} AND {last:UInt64}) AS p
%(join)s
GROUP BY metric, run_id, bucket
"""

_STEP_TIMES = """
LEFT JOIN (SELECT run_id, step, time FROM metric_steps FINAL
           WHERE team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)}
             AND step BETWEEN {first:UInt64} AND {last:UInt64}) AS s
    ON p.run_id = s.run_id AND p.step = s.step
"""

#: One row per (metric, run) with its points as a sorted array: a few thousand rows to
#: decode instead of one per point.
_PER_SERIES = """
SELECT toString(metric) AS metric, toString(run_id) AS run_id,
       arraySort(groupArray((bucket, step, time_ms, n, min, max, sum, last))) AS points
FROM (%s)
GROUP BY metric, run_id
"""
_POINT_FIELDS = ("bucket", "step", "time_ms", "n", "min", "max", "sum", "last")

_EXTENTS = """
SELECT toString(run_id), toString(metric), min(step_first), max(step_last)
FROM metric_buckets
WHERE team = {team:String} AND project = {project:String} AND metric IN {metrics:Array(String)}
  AND level = {level:UInt8} AND run_id IN {runs:Array(String)} %(since)s
GROUP BY run_id, metric
"""

_STARTS = """
SELECT toString(run_id), toUnixTimestamp64Milli(min(time_first))
FROM metric_buckets
WHERE team = {team:String} AND project = {project:String} AND level = {level:UInt8} AND run_id IN {runs:Array(String)}
  %(since)s
GROUP BY run_id
"""

# For runs whose upper levels are behind: level 1 from their first pending bucket on (the top level is
# current below it, and steps never leave a run).
_SINCE_PENDING = "AND bucket >= transform(toString(run_id), {runs:Array(String)}, {since:Array(UInt64)}, toUInt64(0))"


def _top_level_rows(client: Client, sql: str, params: dict[str, Any], behind: Mapping[str, Pending]) -> list[Any]:
    """``sql``'s rows from the top level, and from level 1 for the runs whose upper levels are ``behind``."""
    rows = list(client.query(sql % {"since": ""}, parameters=params).result_rows)
    if behind:
        late = sorted(behind)
        since = [behind[r].first_step // WIDTHS[1] for r in late]
        rows += client.query(
            sql % {"since": _SINCE_PENDING}, parameters={**params, "level": 1, "runs": late, "since": since}
        ).result_rows
    return rows


def _check_names(what: str, names: Sequence[str], limit: int) -> list[str]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise QueryError(f"{what} must be a list of names", got=type(names).__name__)
    if not 0 < len(names) <= limit:
        raise QueryError(f"give between 1 and {limit} {what}", got=len(names))
    for name in names:
        if not isinstance(name, str) or not 0 < len(name) <= _NAME_LIMIT:
            raise QueryError(f"each of {what} must be a string of 1-{_NAME_LIMIT} characters", got=repr(name)[:80])
    return list(dict.fromkeys(names))


def _check_points(points: Any) -> int:
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= MAX_POINTS:
        raise QueryError(f"points must be an integer between 2 and {MAX_POINTS}", got=points)
    return points


def _check_range(step_range: tuple[int | None, int | None] | None) -> tuple[int, int]:
    if step_range is not None and (not isinstance(step_range, (list, tuple)) or len(step_range) != 2):
        raise QueryError("step_range must be [first, last] (null for an open end)", got=repr(step_range)[:80])
    lo, hi = step_range or (None, None)
    lo = 0 if lo is None else lo
    hi = MAX_STEP if hi is None else hi
    if not (isinstance(lo, int) and isinstance(hi, int)) or isinstance(lo, bool) or isinstance(hi, bool):
        raise QueryError("step_range must be two integers (or null for open ends)")
    if lo < 0 or hi < lo:
        raise QueryError("step_range must satisfy 0 <= first <= last", got=[lo, hi])
    return lo, hi


@dataclass(frozen=True)
class Extent:
    first_step: int
    last_step: int


def extents(
    client: Client,
    team: str,
    project: str,
    run_ids: Sequence[str],
    metrics: Sequence[str],
    behind: Mapping[str, Pending] | None = None,
) -> dict[str, dict[str, Extent]]:
    """run -> metric -> the steps it logged, from the top level (one or two rows per run and metric),
    widened by the steps the top level does not reflect yet (``behind``; read when not given)."""
    if behind is None:
        behind = pending_ranges(client, team, project, run_ids)
    params = {"team": team, "project": project, "level": TOP_LEVEL, "runs": list(run_ids), "metrics": list(metrics)}
    out: dict[str, dict[str, Extent]] = {}
    for run_id, metric, first, last in _top_level_rows(client, _EXTENTS, params, behind):
        known = out.setdefault(run_id, {}).get(metric)
        if known is not None:
            first, last = min(first, known.first_step), max(last, known.last_step)
        out[run_id][metric] = Extent(first, last)
    return out


def composed_extents(
    client: Client,
    team: str,
    project: str,
    segments: Mapping[str, Sequence[Segment]],
    metrics: Sequence[str],
    behind: Mapping[str, Pending],
) -> tuple[dict[str, dict[str, Extent]], dict[str, dict[str, Extent]]]:
    """run -> metric -> the steps its composed history logged (each segment's stored extent within the
    segment's steps), and the extents of the stored runs themselves (``extents``)."""
    stored_ids = list(dict.fromkeys(seg.run_id for segs in segments.values() for seg in segs))
    stored = extents(client, team, project, stored_ids, metrics, behind)
    out: dict[str, dict[str, Extent]] = {}
    for run_id, segs in segments.items():
        for seg in segs:
            for metric, e in stored.get(seg.run_id, {}).items():
                first, last = max(e.first_step, seg.first), min(e.last_step, seg.last)
                if first > last:
                    continue
                known = out.setdefault(run_id, {}).get(metric)
                if known is not None:
                    first, last = min(first, known.first_step), max(last, known.last_step)
                out[run_id][metric] = Extent(first, last)
    return out, stored


def run_starts(
    client: Client, team: str, project: str, run_ids: Sequence[str], behind: Mapping[str, Pending] | None = None
) -> dict[str, int]:
    """run -> the time (ms) of its first logged step, across all its metrics."""
    if behind is None:
        behind = pending_ranges(client, team, project, run_ids)
    params = {"team": team, "project": project, "level": TOP_LEVEL, "runs": list(run_ids)}
    starts: dict[str, int] = {}
    for run_id, ms in _top_level_rows(client, _STARTS, params, behind):
        starts[run_id] = min(int(ms), starts.get(run_id, int(ms)))
    return starts


Part = dict[str, np.ndarray]


class Series(TypedDict):
    """One (run, metric) of a chart: per point its x, last step, last value (``y``), and the mean, min, max
    and count of the bucket's finite values."""

    run_id: str
    metric: str
    level: int  # the stored level read (0: raw points)
    bucket_steps: int
    x: np.ndarray
    step: np.ndarray
    y: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    count: np.ndarray


class Chart(TypedDict):
    x: str
    x_metric: str | None
    points: int
    series: list[Series]


class Band(TypedDict):
    """One group's band at aligned buckets: ``x`` the bucket's last step, the mean and std across runs of each
    run's bucket mean, the min and max over all runs' points, and how many runs have a finite mean there."""

    group: str
    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    runs: np.ndarray


class Bands(TypedDict):
    metric: str
    points: int
    level: NotRequired[int]
    bucket_steps: NotRequired[int]
    groups: list[Band]


def _read(
    client: Client, source: Source, params: dict[str, Any], with_time: bool, behind: Mapping[str, Pending]
) -> list[tuple[str, str, Part]]:
    """(metric, run, points) for every series the source has in the range, points sorted by bucket.

    ``behind``: the runs whose stored upper levels are behind, from which step."""
    if source.level:
        width = WIDTHS[source.level]
        sql = _STORED
        params = {**params, "level": source.level, "first": params["first"] // width, "last": params["last"] // width}
        late = sorted(r for r in params["runs"] if r in behind) if source.level > 1 else []
        if late:
            sql += _BEHIND
            params["behind"] = late
            params["behind_from"] = [behind[r].first_step // width for r in late]
            params["fanout"] = width // WIDTHS[1]
    else:
        sql = _RAW % {
            "time": "toUnixTimestamp64Milli(argMax(s.time, p.step))" if with_time else "toInt64(0)",
            "join": _STEP_TIMES if with_time else "",
        }
        params = {**params, "width": source.width}
    table = client.query_arrow(_PER_SERIES % sql, parameters=params)
    if not table.num_rows:
        return []
    points = table.column("points").combine_chunks()
    offsets = points.offsets.to_numpy()
    structs = points.values
    fields = {name: structs.field(i).to_numpy() for i, name in enumerate(_POINT_FIELDS)}
    return [
        (metric, run_id, {name: column[a:b] for name, column in fields.items()})
        for metric, run_id, a, b in zip(
            table.column("metric").to_pylist(), table.column("run_id").to_pylist(), offsets[:-1], offsets[1:]
        )
    ]


def _read_composed(
    client: Client,
    base: Mapping[str, Any],
    sources: Mapping[str, Source],
    segments: Mapping[str, Sequence[Segment]],
    stored: Mapping[str, Mapping[str, Extent]],
    lo: int,
    hi: int,
    with_time: bool,
    behind: Mapping[str, Pending],
) -> list[tuple[str, str, Part]]:
    """(metric, run, points) of each run's composed history in [lo, hi], read at the run's source.

    Each segment is read as its stored run within its steps; runs without forks or rewinds (one segment,
    every step) share one read per source, as before. A stored bucket that a segment's bound cuts through
    would bring in points of the stored run outside the segment (the parent's steps after the fork step,
    the history a rewind replaced), so such edge buckets are bucketed from the raw points instead."""
    tasks: dict[tuple[Source, int, int, int, int], dict[str, list[str]]] = {}
    for run_id, source in sources.items():
        for seg in segments[run_id]:
            a, b = max(lo, seg.first), min(hi, seg.last)
            if a <= b and seg.run_id in stored:
                tasks.setdefault((source, a, b, seg.first, seg.last), {}).setdefault(seg.run_id, []).append(run_id)
    pieces: dict[tuple[str, str], list[tuple[int, Part]]] = {}
    for (source, a, b, first, last), owners in tasks.items():
        params = {**base, "runs": sorted(owners)}
        for span_source, span_lo, span_hi in _spans(source, a, b, first, last):
            for metric, stored_id, part in _read(
                client, span_source, {**params, "first": span_lo, "last": span_hi}, with_time, behind
            ):
                for run_id in owners[stored_id]:
                    pieces.setdefault((metric, run_id), []).append((span_lo, part))
    return [
        (metric, run_id, _concat([p for _, p in sorted(ps, key=lambda x: x[0])]))
        for (metric, run_id), ps in pieces.items()
    ]


def _spans(source: Source, a: int, b: int, first: int, last: int) -> list[tuple[Source, int, int]]:
    """Steps ``a`` to ``b`` of a segment holding steps ``first`` to ``last`` of its stored run: the stored
    buckets inside the segment at ``source``, its cut edge buckets from raw points at the same width."""
    if source.level == 0:
        return [(source, a, b)]
    width = source.width
    raw = Source(0, width)
    cut_left = first > (a // width) * width
    cut_right = last < (b // width + 1) * width - 1
    if not (cut_left or cut_right):
        return [(source, a, b)]
    if a // width == b // width:
        return [(raw, a, b)]
    spans = []
    mid_a, mid_b = a, b
    if cut_left:
        mid_a = (a // width + 1) * width
        spans.append((raw, a, mid_a - 1))
    if cut_right:
        mid_b = (b // width) * width - 1
    if mid_a <= mid_b:
        spans.append((source, mid_a, mid_b))
    if cut_right:
        spans.append((raw, mid_b + 1, b))
    return spans


def _concat(parts: list[Part]) -> Part:
    """Consecutive pieces of one series (in step order) as one; a bucket split between two pieces (a segment
    bound inside it) is joined: counts and sums added, min and max of both, the last value the later's."""
    if len(parts) == 1:
        return parts[0]
    out = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    bucket = out["bucket"]
    if len(bucket) < 2 or not (bucket[1:] == bucket[:-1]).any():
        return out
    dup = np.flatnonzero(bucket[1:] == bucket[:-1])  # dup[i] and dup[i] + 1 are one bucket
    earlier, later = dup, dup + 1
    out["n"][later] += out["n"][earlier]
    out["sum"][later] += out["sum"][earlier]
    out["min"][later] = np.fmin(out["min"][later], out["min"][earlier])
    out["max"][later] = np.fmax(out["max"][later], out["max"][earlier])
    keep = np.ones(len(bucket), dtype=bool)
    keep[earlier] = False
    return {name: column[keep] for name, column in out.items()}


def _composed_starts(
    client: Client, team: str, project: str, segments: Mapping[str, Sequence[Segment]], behind: Mapping[str, Pending]
) -> dict[str, int]:
    """run -> the time (ms) of the first logged step of its composed history's first stored run."""
    stored_ids = list(dict.fromkeys(seg.run_id for segs in segments.values() for seg in segs))
    starts = run_starts(client, team, project, stored_ids, behind)
    out = {}
    for run_id, segs in segments.items():
        first = next((starts[seg.run_id] for seg in segs if seg.run_id in starts), None)
        if first is not None:
            out[run_id] = first
    return out


def _mean(part: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each bucket's mean over its finite values (NaN where it has none)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(part["n"] > 0, part["sum"] / np.maximum(part["n"], 1), np.nan)


def series(
    client: Client,
    team: str,
    project: str,
    run_ids: Sequence[str],
    metrics: Sequence[str],
    points: int = 500,
    x: str = "step",
    x_metric: str | None = None,
    step_range: tuple[int | None, int | None] | None = None,
) -> Chart:
    """At most ``points`` points per (run, metric), as columnar arrays.

    ``x``: "step", "time" (Unix seconds), "relative" (seconds since the run's
    first logged step) or "metric" (the value of ``x_metric`` at the same
    bucket, for a define_metric step_metric such as epoch or tokens seen).
    ``step_range``: (first, last) steps to zoom into; finer data is read for it.
    """
    run_ids = _check_names("run ids", run_ids, MAX_RUNS)
    metrics = _check_names("metrics", metrics, MAX_METRICS)
    _check_points(points)
    if x not in X_AXES:
        raise QueryError(f"x must be one of {', '.join(X_AXES)}", got=x)
    x_metrics: list[str] = []
    if x == "metric":
        if not isinstance(x_metric, str):
            raise QueryError('x "metric" needs x_metric: the metric to plot against', got=repr(x_metric)[:80])
        x_metrics = _check_names("x_metric", [x_metric], 1)
    lo, hi = _check_range(step_range)
    read_metrics = list(dict.fromkeys([*metrics, *x_metrics]))

    # Forks and rewinds: each run's history is a chain of stored segments (storage/lineage.py).
    segments = resolve(client, team, project, run_ids)
    behind = pending_ranges(client, team, project, list({g.run_id for segs in segments.values() for g in segs}))
    known, stored = composed_extents(client, team, project, segments, read_metrics, behind)
    starts = _composed_starts(client, team, project, segments, behind) if x == "relative" else {}
    sources: dict[str, Source] = {}
    for run_id in run_ids:
        spans = [e for m in read_metrics if (e := known.get(run_id, {}).get(m)) is not None]
        if not spans:
            continue
        first = max(lo, min(e.first_step for e in spans))
        last = min(hi, max(e.last_step for e in spans))
        if first <= last:
            sources[run_id] = Source.for_range(first, last, points)

    base = {"team": team, "project": project, "metrics": read_metrics}
    out: list[Series] = []
    parts = _read_composed(client, base, sources, segments, stored, lo, hi, x in ("time", "relative"), behind)
    x_values = {run: part for metric, run, part in parts if metric == x_metric} if x == "metric" else {}
    for metric, run_id, part in parts:
        source = sources[run_id]
        if metric not in metrics:
            continue
        if x == "metric":
            part = _align(part, x_values.get(run_id))
        out.append(
            {
                "run_id": run_id,
                "metric": metric,
                "level": source.level,
                "bucket_steps": source.width,
                "x": _x(x, part, starts.get(run_id, 0)),
                "step": part["step"],
                "y": part["last"],
                "mean": _mean(part),
                "min": part["min"],
                "max": part["max"],
                "count": part["n"],
            }
        )
    order = {r: i for i, r in enumerate(run_ids)}
    out.sort(key=lambda s: (metrics.index(s["metric"]), order[s["run_id"]]))
    return {"x": x, "x_metric": x_metric if x == "metric" else None, "points": points, "series": out}


def _x(axis: str, part: Mapping[str, np.ndarray], start_ms: int) -> np.ndarray:
    if axis == "step":
        return part["step"]
    if axis == "time":
        return part["time_ms"] / 1000.0
    if axis == "relative":
        return (part["time_ms"] - start_ms) / 1000.0
    return part["x"]


def _align(part: dict[str, np.ndarray], x_part: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Keep the buckets where the x metric was logged too, with its last value there as x."""
    if x_part is None:
        return {**{k: v[:0] for k, v in part.items()}, "x": np.empty(0)}
    _, mine, theirs = np.intersect1d(part["bucket"], x_part["bucket"], assume_unique=True, return_indices=True)
    aligned = {k: v[mine] for k, v in part.items()}
    aligned["x"] = x_part["last"][theirs]
    return aligned


def group_bands(
    client: Client,
    team: str,
    project: str,
    groups: Mapping[str, Sequence[str]],
    metric: str,
    points: int = 500,
    step_range: tuple[int | None, int | None] | None = None,
) -> Bands:
    """Per group of runs: at aligned steps, the mean across runs of each run's bucket mean,
    with the std across runs and the min/max over all runs' points (the band).

    All runs are read at one resolution chosen from the widest run, so bucket
    ``b`` covers the same steps in every run; ``x`` is the bucket's last step.
    """
    metric = _check_names("metric", [metric], 1)[0]
    if not isinstance(groups, Mapping) or not groups:
        raise QueryError("groups must map a group label to a list of run ids")
    label_of: dict[str, str] = {}
    for label, members in groups.items():
        if not isinstance(label, str):
            raise QueryError("group labels must be strings", got=repr(label)[:80])
        for run_id in _check_names(f"run ids of group {label!r}", members, MAX_RUNS):
            if run_id in label_of:
                raise QueryError("a run can be in one group only", run_id=run_id, groups=[label_of[run_id], label])
            label_of[run_id] = label
    if len(label_of) > MAX_RUNS:
        raise QueryError(f"at most {MAX_RUNS} runs in all groups", got=len(label_of))
    _check_points(points)
    lo, hi = _check_range(step_range)

    segments = resolve(client, team, project, list(label_of))
    behind = pending_ranges(client, team, project, list({g.run_id for segs in segments.values() for g in segs}))
    known, stored = composed_extents(client, team, project, segments, [metric], behind)
    spans = [e for r in label_of for e in known.get(r, {}).values()]
    result: Bands = {"metric": metric, "points": points, "groups": []}
    first = max(lo, min((e.first_step for e in spans), default=0))
    last = min(hi, max((e.last_step for e in spans), default=-1))
    if not spans or first > last:
        return result
    source = Source.for_range(first, last, points)
    runs = sorted(label_of)
    base = {"team": team, "project": project, "metrics": [metric]}
    parts = _read_composed(client, base, dict.fromkeys(runs, source), segments, stored, lo, hi, False, behind)
    by_label: dict[str, list[Part]] = {}
    for _, run_id, part in parts:
        by_label.setdefault(label_of[run_id], []).append(part)
    for label in groups:
        if label not in by_label:
            continue
        cols = {
            name: np.concatenate([p[name] for p in by_label[label]])
            for name in ("bucket", "step", "n", "min", "max", "sum")
        }
        keys, inverse = np.unique(cols["bucket"], return_inverse=True)
        result["groups"].append(_band(label, len(keys), inverse, _mean(cols), cols["min"], cols["max"], cols["step"]))
    result["level"], result["bucket_steps"] = source.level, source.width
    return result


def _band(
    label: str, k: int, inverse: np.ndarray, means: np.ndarray, mins: np.ndarray, maxs: np.ndarray, steps: np.ndarray
) -> Band:
    """Aggregate per-run bucket values across the runs of one group into ``k`` aligned buckets."""
    finite = np.isfinite(means)
    runs = np.bincount(inverse, weights=finite, minlength=k)
    total = np.bincount(inverse, weights=np.where(finite, means, 0.0), minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(runs > 0, total / np.maximum(runs, 1), np.nan)
        deviation = np.where(finite, means - mean[inverse], 0.0)
        std = np.sqrt(np.bincount(inverse, weights=deviation * deviation, minlength=k) / runs)
    band_min = np.full(k, np.inf)
    band_max = np.full(k, -np.inf)
    np.fmin.at(band_min, inverse, mins)
    np.fmax.at(band_max, inverse, maxs)
    band_min[np.isinf(band_min)] = np.nan
    band_max[np.isinf(band_max)] = np.nan
    x = np.zeros(k, dtype=np.uint64)
    np.maximum.at(x, inverse, steps)
    return {
        "group": label,
        "x": x,
        "mean": mean,
        "std": std,
        "min": band_min,
        "max": band_max,
        "runs": runs.astype(np.int64),
    }
