"""Multi-resolution downsampling of metric history into ``metric_buckets``.

Level L groups a run's steps into buckets of ``WIDTHS[L]`` steps (16 at level
1, then 4x per level up to about 4M at level 10). Each bucket keeps count,
non-finite count, min/max/sum of the finite values, and the first and last
step, time and value, so a chart of any number of runs reads at most a few
hundred buckets per run and a one-step spike survives as a bucket's max.

``refresh_buckets`` recomputes every bucket that contains a newly written step:
level 1 from the raw points, each higher level from the four buckets below it,
inside ClickHouse. Recomputing from stored data (instead of folding deltas
into running state) makes it idempotent: a replayed batch rewrites identical
rows, and a late, out-of-order step simply makes its buckets be recomputed.
Sums add their terms in step order, so a recomputation gives the same bits
however the engine happened to read the parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clickhouse_connect.driver.client import Client

if TYPE_CHECKING:
    from runstream.storage.writer import TouchedSteps

FANOUT = 4
TOP_LEVEL = 10
#: Steps per bucket at each level; level 0 is the raw points.
WIDTHS: dict[int, int] = {level: 16 * FANOUT ** (level - 1) for level in range(1, TOP_LEVEL + 1)}
WIDTHS[0] = 1


def level_for(first_step: int, last_step: int, max_points: int) -> int:
    """The finest level at which [first_step, last_step] spans at most ``max_points`` buckets (0: raw)."""
    if last_step - first_step + 1 <= max_points:
        return 0
    for level in range(1, TOP_LEVEL + 1):
        width = WIDTHS[level]
        if last_step // width - first_step // width + 1 <= max_points:
            return level
    return TOP_LEVEL


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
SELECT team, project, metric, toUInt8(1), run_id, intDiv(p.step, {WIDTHS[1]}) AS bucket,
    min(p.step), max(p.step), argMin(s.time, p.step), argMax(s.time, p.step),
    count(), countIf(NOT isFinite(value)),
    ifNull(minIfOrNull(value, isFinite(value)), nan), ifNull(maxIfOrNull(value, isFinite(value)), nan),
    arraySum(arrayMap(t -> t.2, arraySort(groupArrayIf((p.step, value), isFinite(value))))),
    argMin(value, p.step), argMax(value, p.step), max(p.seq)
FROM (SELECT team, project, metric, run_id, step, value, seq FROM metric_points FINAL
      WHERE {_RANGE_FILTER % {"col": "step"}}) AS p
LEFT JOIN (SELECT run_id, step, time FROM metric_steps FINAL
           WHERE team = {{team:String}} AND project = {{project:String}} AND run_id IN {{runs:Array(String)}}
             AND step BETWEEN {{lowest:UInt64}} AND {{highest:UInt64}}
             AND step >= transform(toString(run_id), {{runs:Array(String)}}, {{lo:Array(UInt64)}}, toUInt64(0))
             AND step <= transform(toString(run_id), {{runs:Array(String)}}, {{hi:Array(UInt64)}}, toUInt64(0))) AS s
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


def refresh_buckets(client: Client, touched: TouchedSteps) -> None:
    """Recompute, at every level, the buckets containing the touched steps."""
    for (team, project), runs in touched.runs.items():
        run_ids = sorted(runs)
        metrics = sorted({m for names, _, _ in runs.values() for m in names})
        lo = [runs[r][1] for r in run_ids]
        hi = [runs[r][2] for r in run_ids]
        params = {"team": team, "project": project, "runs": run_ids, "metrics": metrics}
        for level in range(1, TOP_LEVEL + 1):
            width = WIDTHS[level]
            if level == 1:  # steps of the touched level-1 buckets
                first, last = [s // width * width for s in lo], [s // width * width + width - 1 for s in hi]
                sql = _LEVEL_1
            else:  # the level-below buckets inside the touched buckets
                first, last = [s // width * FANOUT for s in lo], [s // width * FANOUT + FANOUT - 1 for s in hi]
                sql = _LEVEL_UP % {"level": level, "below": level - 1}
            client.command(
                sql, parameters={**params, "lo": first, "hi": last, "lowest": min(first), "highest": max(last)}
            )
