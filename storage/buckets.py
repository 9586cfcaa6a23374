"""Multi-resolution downsampling of metric history into ``metric_buckets``.

Level L groups a run's steps into buckets of ``WIDTHS[L]`` steps (16 at level
1, then 4x per level up to about 4M at level 10). Each bucket keeps count,
non-finite count, min/max/sum of the finite values, and the first and last
step, time and value, so a chart of any number of runs reads at most a few
hundred buckets per run and a one-step spike survives as a bucket's max.

Every bucket is a recomputation from what is stored, never a delta folded into
running state: a replayed batch rewrites identical rows, a late or out-of-order
step makes its buckets be recomputed, and a bucket's ``version`` is the largest
seq inside it, so the latest recomputation wins. Sums add their terms in step
order, so a recomputation gives the same bits however it was computed.

Level 1 is written with the points, in the same batch:

- a bucket whose 16 steps one event logged, in order and all finite (nearly
  every bucket of a training run), is computed from that event in the writer
  (``local_level_one``): the event's rows are what is stored for those steps,
  or a later seq replaced them and wrote a bucket with a larger version;
- the others (a batch's edges, sparse columns, non-finite values, relogged
  steps) are recomputed inside ClickHouse from the stored points
  (``refresh_level_one``).

Levels 2 and up are recomputed from the level below inside ClickHouse
(``refresh_upper``), one query per level. A driver that processes many batches a
second defers them (``mark_pending`` in the batch, ``refresh_pending`` on a
cadence): the batch records which of its runs' steps the upper levels do not
reflect yet (``bucket_pending``), and a refresh records, per run, the seq they
reflect (``bucket_refreshed``). Readers stay exact: ``pending_ranges`` tells
them, per run, from which step a stored upper level is behind, and they read
that part from level 1 (``storage.series``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from clickhouse_connect.driver.client import Client

FANOUT = 4
TOP_LEVEL = 10
#: Steps per bucket at each level; level 0 is the raw points.
WIDTHS: dict[int, int] = {level: 16 * FANOUT ** (level - 1) for level in range(1, TOP_LEVEL + 1)}
WIDTHS[0] = 1
LEVEL_ONE = WIDTHS[1]


def level_for(first_step: int, last_step: int, max_points: int) -> int:
    """The finest level at which [first_step, last_step] spans at most ``max_points`` buckets (0: raw)."""
    if last_step - first_step + 1 <= max_points:
        return 0
    for level in range(1, TOP_LEVEL + 1):
        width = WIDTHS[level]
        if last_step // width - first_step // width + 1 <= max_points:
            return level
    return TOP_LEVEL


# -- what a write touched ------------------------------------------------------------


@dataclass
class TouchedSteps:
    """Per (team, project) and run: the metrics and the step range a write touched."""

    runs: dict[tuple[str, str], dict[str, tuple[set[str], int, int]]] = field(default_factory=dict)

    def add(self, team: str, project: str, run_id: str, metrics: Iterable[str], lo: int, hi: int) -> None:
        runs = self.runs.setdefault((team, project), {})
        names, old_lo, old_hi = runs.get(run_id, (set(), lo, hi))
        names.update(metrics)
        runs[run_id] = (names, min(lo, old_lo), max(hi, old_hi))

    def __bool__(self) -> bool:
        return bool(self.runs)


@dataclass
class LevelOneEdges:
    """Per (team, project): the level-1 buckets to recompute inside ClickHouse, as (run, bucket) pairs, and
    the metrics they hold."""

    buckets: dict[tuple[str, str], tuple[set[str], set[tuple[str, int]]]] = field(default_factory=dict)

    def add(self, team: str, project: str, run_id: str, metric: str, buckets: Iterable[int]) -> None:
        metrics, pairs = self.buckets.setdefault((team, project), (set(), set()))
        metrics.add(metric)
        pairs.update((run_id, int(b)) for b in buckets)


# -- level 1 computed from an event -------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How one event's steps (strictly increasing) fall into level-1 buckets; the same for all its dense
    columns, so computed once per event."""

    whole: np.ndarray  # the index of the first step of each bucket the event logged whole
    partial: list[int]  # the buckets it logged only partly
    touched: list[int]  # every bucket it logged in

    @classmethod
    def of(cls, steps: np.ndarray) -> Layout:
        if len(steps) < LEVEL_ONE:  # no bucket can be whole: skip numpy's per-call cost (small events are common)
            touched = sorted({int(s) // LEVEL_ONE for s in steps.tolist()})
            return cls(np.empty(0, np.int64), touched, touched)
        bucket = steps // LEVEL_ONE
        starts = np.flatnonzero(np.diff(bucket, prepend=-1))  # where each touched bucket begins
        whole = np.diff(starts, append=len(steps)) == LEVEL_ONE  # strictly increasing: 16 steps fill it
        return cls(starts[whole], bucket[starts[~whole]].tolist(), bucket[starts].tolist())


def local_level_one(
    layout: Layout, steps: np.ndarray, times_ms: np.ndarray, values: np.ndarray, seq: int
) -> dict[str, np.ndarray] | None:
    """Columns for the level-1 buckets one event logged whole (None if none).

    ``steps`` strictly increasing (int64), ``values`` finite, all three of one length: the caller checks.
    """
    first = layout.whole
    if not len(first):
        return None
    grid = first[:, None] + np.arange(LEVEL_ONE)
    v = values[grid]
    total = v[:, 0].copy()
    for column in range(1, LEVEL_ONE):  # in step order, as ClickHouse's arraySum adds
        total += v[:, column]
    k = len(first)
    last = first + LEVEL_ONE - 1
    return {
        "bucket": (steps[first] // LEVEL_ONE).astype(np.uint64),
        "step_first": steps[first].astype(np.uint64),
        "step_last": steps[last].astype(np.uint64),
        "time_first": times_ms[first],
        "time_last": times_ms[last],
        "count": np.full(k, LEVEL_ONE, np.uint32),
        "nonfinite": np.zeros(k, np.uint32),
        "min": v.min(axis=1),
        "max": v.max(axis=1),
        "sum": total,
        "first": v[:, 0],
        "last": v[:, -1],
        "version": np.full(k, seq, np.uint64),
    }


# -- recomputation inside ClickHouse -------------------------------------------------------

# The constant bounds (over all runs) let the primary key skip a run's older history;
# the per-run bounds then keep exactly the touched buckets.
_RANGE_FILTER = """
    team = {team:String} AND project = {project:String}
    AND run_id IN {runs:Array(String)} AND metric IN {metrics:Array(String)}
    AND %(col)s BETWEEN {lowest:UInt64} AND {highest:UInt64}
    AND %(col)s >= transform(toString(run_id), {runs:Array(String)}, {lo:Array(UInt64)}, toUInt64(0))
    AND %(col)s <= transform(toString(run_id), {runs:Array(String)}, {hi:Array(UInt64)}, toUInt64(0))
"""

_LEVEL_1 = f"""
INSERT INTO metric_buckets
SELECT team, project, metric, toUInt8(1), run_id, intDiv(p.step, {LEVEL_ONE}) AS bucket,
    min(p.step), max(p.step), argMin(s.time, p.step), argMax(s.time, p.step),
    count(), countIf(NOT isFinite(value)),
    ifNull(minIfOrNull(value, isFinite(value)), nan), ifNull(maxIfOrNull(value, isFinite(value)), nan),
    arraySum(arrayMap(t -> t.2, arraySort(groupArrayIf((p.step, value), isFinite(value))))),
    argMin(value, p.step), argMax(value, p.step), max(p.seq)
FROM (SELECT team, project, metric, run_id, step, value, seq FROM metric_points FINAL
      WHERE team = {{team:String}} AND project = {{project:String}}
        AND run_id IN {{runs:Array(String)}} AND metric IN {{metrics:Array(String)}}
        AND step BETWEEN {{lowest:UInt64}} AND {{highest:UInt64}}
        AND (toString(run_id), intDiv(step, {LEVEL_ONE})) IN {{pairs:Array(Tuple(String, UInt64))}}) AS p
LEFT JOIN (SELECT run_id, step, time FROM metric_steps FINAL
           WHERE team = {{team:String}} AND project = {{project:String}} AND run_id IN {{runs:Array(String)}}
             AND step BETWEEN {{lowest:UInt64}} AND {{highest:UInt64}}
             AND (toString(run_id), intDiv(step, {LEVEL_ONE})) IN {{pairs:Array(Tuple(String, UInt64))}}) AS s
    ON p.run_id = s.run_id AND p.step = s.step
GROUP BY team, project, metric, run_id, bucket
"""

_LEVEL_UP = f"""
INSERT INTO metric_buckets
SELECT team, project, metric, toUInt8(%(level)d), run_id, intDiv(bucket, {FANOUT}) AS parent,
    min(step_first), max(step_last), argMin(time_first, step_first), argMax(time_last, step_last),
    sum(count), sum(nonfinite),
    ifNull(minIfOrNull(min, isFinite(min)), nan), ifNull(maxIfOrNull(max, isFinite(max)), nan),
    arraySum(arrayMap(t -> t.2, arraySort(groupArray((bucket, sum))))),
    argMin(first, step_first), argMax(last, step_last), max(version)
FROM metric_buckets FINAL
WHERE level = %(below)d AND {_RANGE_FILTER % {"col": "bucket"}}
GROUP BY team, project, metric, run_id, parent
"""


#: (run, bucket) pairs per level-1 query: parameters travel in the URL, which servers cap (1 MiB by default).
PAIRS_PER_QUERY = 4000


def refresh_level_one(client: Client, edges: LevelOneEdges) -> None:
    """Recompute the listed level-1 buckets from the stored points, a query per project and few thousand."""
    for (team, project), (metrics, pairs) in edges.buckets.items():
        everything = sorted(pairs)
        for start in range(0, len(everything), PAIRS_PER_QUERY):
            _refresh_pairs(client, team, project, metrics, everything[start : start + PAIRS_PER_QUERY])


def _refresh_pairs(client: Client, team: str, project: str, metrics: set[str], ordered: list[tuple[str, int]]) -> None:
    client.command(
        _LEVEL_1,
        parameters={
            "team": team,
            "project": project,
            "runs": sorted({r for r, _ in ordered}),
            "metrics": sorted(metrics),
            "pairs": ordered,
            "lowest": min(b for _, b in ordered) * LEVEL_ONE,
            "highest": max(b for _, b in ordered) * LEVEL_ONE + LEVEL_ONE - 1,
        },
    )


def refresh_upper(client: Client, touched: TouchedSteps) -> None:
    """Recompute, at levels 2 and up, the buckets containing the touched steps (level 1 must be current)."""
    for (team, project), runs in touched.runs.items():
        run_ids = sorted(runs)
        metrics = sorted({m for names, *_ in runs.values() for m in names})
        lo = [runs[r][1] for r in run_ids]
        hi = [runs[r][2] for r in run_ids]
        params = {"team": team, "project": project, "runs": run_ids, "metrics": metrics}
        for level in range(2, TOP_LEVEL + 1):
            width = WIDTHS[level]
            # the level-below buckets inside the touched buckets
            first, last = [s // width * FANOUT for s in lo], [s // width * FANOUT + FANOUT - 1 for s in hi]
            client.command(
                _LEVEL_UP % {"level": level, "below": level - 1},
                parameters={**params, "lo": first, "hi": last, "lowest": min(first), "highest": max(last)},
            )


# -- deferred upper levels ----------------------------------------------------------------------
#
# ``bucket_pending`` holds one row per run (ReplacingMergeTree on ``version``): the metrics and step
# range whose upper levels are behind. A batch writes the union of the stored row and its own
# range at the next even version above the stored one; a refresh writes the row emptied at the
# version it read + 1 (odd). So a refresh wins over the batch it read, and a batch written after
# the read (whether before or after the refresh's write) wins over the refresh: its union still
# holds what the refresh did, which costs a second refresh of it, never a level left behind.

_PENDING_COLUMNS = ["team", "project", "run_id", "metrics", "first_step", "last_step", "version"]

_READ_PENDING = """
SELECT toString(team), toString(project), toString(run_id), metrics, first_step, last_step, version
FROM bucket_pending FINAL
WHERE %s
"""
_BY_KEYS = "(team, project, run_id) IN {keys:Array(Tuple(String, String, String))}"


def _read_pending(client: Client, where: str, params: Mapping[str, object]) -> Sequence[Sequence[Any]]:
    return client.query(_READ_PENDING % where, parameters=dict(params)).result_rows


def mark_pending(client: Client, touched: TouchedSteps) -> None:
    """Record, with a batch's level-1 rows, the runs' steps whose upper levels that batch leaves behind."""
    keys = sorted((t, p, r) for (t, p), runs in touched.runs.items() for r in runs)
    if not keys:
        return
    stored = {
        (t, p, r): (set(m), lo, hi, v) for t, p, r, m, lo, hi, v in _read_pending(client, _BY_KEYS, {"keys": keys})
    }
    rows = []
    for team, project, run_id in keys:
        names, lo, hi = touched.runs[(team, project)][run_id]
        old_names, old_lo, old_hi, old_version = stored.get((team, project, run_id), (set(), lo, hi, -1))
        version = old_version + 2 - old_version % 2
        if old_names:
            names, lo, hi = names | old_names, min(lo, old_lo), max(hi, old_hi)
        rows.append((team, project, run_id, sorted(names), lo, hi, version))
    if rows:
        client.insert("bucket_pending", rows, column_names=_PENDING_COLUMNS)


@dataclass(frozen=True)
class Pending:
    """Steps of a run whose upper levels are behind: from ``first_step`` on (up to ``last_step``)."""

    first_step: int
    last_step: int


def pending_ranges(client: Client, team: str, project: str, run_ids: Sequence[str]) -> dict[str, Pending]:
    """run -> the steps its upper levels do not reflect yet (runs whose upper levels are current are absent)."""
    if not run_ids:
        return {}
    rows = _read_pending(
        client,
        "team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)} AND notEmpty(metrics)",
        {"team": team, "project": project, "runs": list(run_ids)},
    )
    return {run_id: Pending(lo, hi) for _, _, run_id, _, lo, hi, _ in rows}


def refresh_pending(
    client: Client, runs: Iterable[tuple[str, str, str]] | None = None, older_than_s: float = 0.0
) -> int:
    """Bring the upper levels of runs with pending steps up to date and record it; return how many runs.

    ``runs``: only these (team, project, run_id) (a driver's own runs, on its cadence); None: every run
    whose pending steps were last written more than ``older_than_s`` ago (the sweep: runs a driver
    touched and then lost, by a crash or a rebalance, before its cadence came round).
    """
    if runs is None:  # by the server's clock, which wrote written_at
        where = "notEmpty(metrics) AND written_at <= now64(3) - toIntervalMillisecond({older_ms:UInt64})"
        rows = _read_pending(client, where, {"older_ms": round(older_than_s * 1000)})
    else:
        keys = sorted(set(runs))
        if not keys:
            return 0
        rows = _read_pending(client, _BY_KEYS + " AND notEmpty(metrics)", {"keys": keys})
    touched = TouchedSteps()
    cleared: list[tuple[str, str, str, list[str], int, int, int]] = []
    for team, project, run_id, metrics, lo, hi, version in rows:
        touched.add(team, project, run_id, metrics, lo, hi)
        cleared.append((team, project, run_id, [], 0, 0, version + 1))
    if not cleared:
        return 0
    refresh_upper(client, touched)
    client.insert("bucket_pending", cleared, column_names=_PENDING_COLUMNS)
    return len(cleared)
