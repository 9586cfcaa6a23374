"""Upper bucket levels refreshed on a cadence: charts stay exact while they are behind, and every
pending level is refreshed in the end (by its driver, or by any driver's sweep), on the real engine."""

from __future__ import annotations

import random

import numpy as np
import pytest

from runstream.events import METRICS, Event
from runstream.storage import buckets
from runstream.storage.buckets import pending_ranges, refresh_pending
from runstream.storage.series import extents, group_bands, run_starts, series
from runstream.storage.writer import insert_metric_points
from runstream.streams.pipeline import Pipeline
from tests.integration.test_series import T0, TEAM, Run, check_every_bucket

BUCKETS = (
    "SELECT run_id, metric, level, bucket, step_first, step_last, time_first, time_last, count, nonfinite, "
    "min, max, sum, first, last FROM metric_buckets FINAL WHERE project = {p:String} ORDER BY ALL"
)


def _write(clickhouse, project: str, generated: dict[str, Run], defer: bool) -> None:
    """Batches of 7 events, out of order across and within runs, then a redelivery, each call told the
    largest seq stored per run (as the processor tells it from its run states)."""
    batches = [
        Event(METRICS, TEAM, project, e.run_id, e.seq, e.ts, e.data) for run in generated.values() for e in run.events()
    ]
    random.Random(3).shuffle(batches)
    stored: dict[tuple[str, str, str], int] = {}
    for batch in [*(batches[i : i + 7] for i in range(0, len(batches), 7)), batches[:5]]:
        insert_metric_points(clickhouse, batch, defer_upper=defer, stored_seqs=dict(stored))
        for e in batch:
            key = (e.team, e.project, e.run_id)
            stored[key] = max(stored.get(key, -1), e.seq)


def _same_chart(a: dict, b: dict) -> None:
    assert [(s["run_id"], s["metric"], s["level"]) for s in a["series"]] == [
        (s["run_id"], s["metric"], s["level"]) for s in b["series"]
    ]
    for sa, sb in zip(a["series"], b["series"]):
        for key in ("x", "step", "y", "min", "max", "count"):
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{sa['run_id']} {sa['metric']} {key}")
        np.testing.assert_allclose(sa["mean"], sb["mean"], rtol=1e-12)


@pytest.fixture
def generated() -> dict[str, Run]:
    return {f"r{i}": Run(f"r{i}", steps, seed=i) for i, steps in enumerate([40_000, 9_000, 1_500])}


def test_charts_are_exact_while_upper_levels_are_behind_and_the_refresh_catches_up(clickhouse, generated):
    _write(clickhouse, "deferred", generated, defer=True)
    _write(clickhouse, "current", generated, defer=False)
    runs = list(generated)
    behind = pending_ranges(clickhouse, TEAM, "deferred", runs)
    assert set(behind) == set(runs) and not pending_ranges(clickhouse, TEAM, "current", runs)

    metrics = ["loss", "val", "epoch"]
    assert extents(clickhouse, TEAM, "deferred", runs, metrics) == extents(clickhouse, TEAM, "current", runs, metrics)
    assert run_starts(clickhouse, TEAM, "deferred", runs) == run_starts(clickhouse, TEAM, "current", runs)
    for points, step_range in [(500, None), (100, None), (40, None), (300, (1_000, 30_000)), (60, (5_000, 39_999))]:
        for x in ("step", "relative"):
            charts = [
                series(clickhouse, TEAM, p, runs, metrics, points=points, x=x, step_range=step_range)
                for p in ("deferred", "current")
            ]
            assert {s["level"] for s in charts[0]["series"]} - {0, 1}, "the case needs an upper level"
            _same_chart(*charts)
    groups = {"a": ["r0", "r1"], "b": ["r2"]}
    deferred, current = (group_bands(clickhouse, TEAM, p, groups, "loss", points=50) for p in ("deferred", "current"))
    assert deferred["level"] == current["level"] > 1
    for ga, gb in zip(deferred["groups"], current["groups"]):
        np.testing.assert_array_equal(ga["x"], gb["x"])
        np.testing.assert_allclose(ga["mean"], gb["mean"], rtol=1e-12)

    assert refresh_pending(clickhouse, [(TEAM, "deferred", r) for r in runs]) == len(runs)
    assert not pending_ranges(clickhouse, TEAM, "deferred", runs)
    stored = [clickhouse.query(BUCKETS, parameters={"p": p}).result_rows for p in ("deferred", "current")]
    assert stored[0] == stored[1]


def test_steps_written_after_a_refresh_are_pending_again(clickhouse, generated):
    run = generated["r2"]
    events = [Event(METRICS, TEAM, "again", e.run_id, e.seq, e.ts, e.data) for e in run.events()]
    insert_metric_points(clickhouse, events[:2], defer_upper=True)
    assert refresh_pending(clickhouse, [(TEAM, "again", "r2")]) == 1
    assert not pending_ranges(clickhouse, TEAM, "again", ["r2"])
    insert_metric_points(clickhouse, events[2:], defer_upper=True)
    behind = pending_ranges(clickhouse, TEAM, "again", ["r2"])
    assert behind["r2"].first_step == events[2].data["step"][0]
    assert behind["r2"].last_step == run.steps - 1


def test_levels_a_driver_left_behind_are_refreshed_by_any_sweep_once_old(clickhouse, generated):
    run = generated["r1"]
    events = [Event(METRICS, TEAM, "orphans", e.run_id, e.seq, e.ts, e.data) for e in run.events()]
    Pipeline(lambda: clickhouse, upper_levels_every_s=3600.0).handle(events)  # then the driver is gone
    assert pending_ranges(clickhouse, TEAM, "orphans", ["r1"])
    assert refresh_pending(clickhouse, older_than_s=3600.0) == 0  # recent: still its driver's business
    assert refresh_pending(clickhouse, older_than_s=0.0) == 1
    assert not pending_ranges(clickhouse, TEAM, "orphans", ["r1"])


def test_a_driver_refreshes_its_own_levels_when_due_and_at_its_sweep(clickhouse, generated):
    run = generated["r1"]
    events = [Event(METRICS, TEAM, "cadence", e.run_id, e.seq, e.ts, e.data) for e in run.events()]
    every_batch = Pipeline(lambda: clickhouse, upper_levels_every_s=0.0)
    every_batch.handle(events[:3])
    assert not pending_ranges(clickhouse, TEAM, "cadence", ["r1"])
    quiet = Pipeline(lambda: clickhouse, upper_levels_every_s=3600.0)
    quiet.handle(events[3:])
    assert pending_ranges(clickhouse, TEAM, "cadence", ["r1"])
    quiet.sweep(timeout_s=3600.0)
    assert not pending_ranges(clickhouse, TEAM, "cadence", ["r1"])


def _level_one(clickhouse, project: str) -> list[tuple]:
    return clickhouse.query(
        "SELECT bucket, step_first, step_last, count, min, max, sum, first, last, version FROM metric_buckets FINAL "
        "WHERE project = {p:String} AND level = 1 ORDER BY bucket",
        parameters={"p": project},
    ).result_rows


def _metric_event(project: str, seq: int, steps: range, value) -> Event:
    data = {"step": list(steps), "time": [T0 + s for s in steps], "values": {"m": [value(s) for s in steps]}}
    return Event(METRICS, TEAM, project, "late", seq, T0, data)


def test_an_older_event_arriving_after_a_newer_one_still_fills_their_bucket(clickhouse):
    """seq 20 logs steps 0..7, then seq 10 (sent late, e.g. by `runstream sync`) logs steps 0..15: the
    bucket holds all 16 steps, 0..7 with seq 20's values."""
    insert_metric_points(clickhouse, [_metric_event("late", 20, range(0, 8), lambda s: 100.0 + s)], stored_seqs={})
    key = (TEAM, "late", "late")
    insert_metric_points(clickhouse, [_metric_event("late", 10, range(0, 16), float)], stored_seqs={key: 20})
    [(bucket, first, last, count, low, high, total, v_first, v_last, version)] = _level_one(clickhouse, "late")
    assert (bucket, first, last, count) == (0, 0, 15, 16)
    assert (low, high, v_first, v_last, version) == (8.0, 107.0, 100.0, 15.0, 20)
    assert total == sum(100.0 + s for s in range(8)) + sum(float(s) for s in range(8, 16))


def test_a_newer_event_logging_a_bucket_whole_replaces_it_in_the_writer(clickhouse):
    insert_metric_points(clickhouse, [_metric_event("newer", 1, range(0, 40), float)], stored_seqs={})
    key = (TEAM, "newer", "late")
    insert_metric_points(clickhouse, [_metric_event("newer", 2, range(16, 32), lambda s: -1.0)], stored_seqs={key: 1})
    rows = _level_one(clickhouse, "newer")
    assert [(b, n, version) for b, _, _, n, *_, version in rows] == [(0, 16, 1), (1, 16, 2), (2, 8, 1)]
    assert rows[1][4:9] == (-1.0, -1.0, -16.0, -1.0, -1.0)


def test_many_partial_buckets_are_recomputed_in_several_queries(clickhouse, monkeypatch):
    monkeypatch.setattr(buckets, "PAIRS_PER_QUERY", 3)
    strided = range(0, 400, 10)  # a run that logs every 10 steps: no bucket is ever whole
    insert_metric_points(clickhouse, [_metric_event("strided", 1, strided, float)], stored_seqs={})
    rows = _level_one(clickhouse, "strided")
    assert [(b, n) for b, _, _, n, *_ in rows] == [(b, len([s for s in strided if s // 16 == b])) for b in range(25)]


@pytest.mark.parametrize(
    ("shape", "steps", "rows", "per_batch"),
    [
        ("small", [1_200, 333], 7, 40),  # a live run: a few steps per event, every bucket an edge
        ("large", [5_000, 1_999], 333, 1_000),  # a backlog: whole buckets computed in the writer
    ],
)
def test_events_in_order_through_a_driver_give_every_bucket_right(clickhouse, shape, steps, rows, per_batch):
    """Every bucket at every level against numpy, with NaN, infinities and a sparse metric."""
    generated = {f"{shape}{i}": Run(f"{shape}{i}", n, seed=10 + i) for i, n in enumerate(steps)}
    pipeline = Pipeline(lambda: clickhouse, upper_levels_every_s=0.0)
    events = [
        Event(METRICS, TEAM, shape, e.run_id, e.seq, e.ts, e.data)
        for run in generated.values()
        for e in run.events(rows)
    ]
    for start in range(0, len(events), per_batch):
        pipeline.handle(events[start : start + per_batch])
    assert not pending_ranges(clickhouse, TEAM, shape, list(generated))
    check_every_bucket(clickhouse, generated, shape)
