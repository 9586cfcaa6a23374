"""Columnar metric inserts into the real ClickHouse engine."""

import math

from runstream import events
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.storage.writer import insert_metric_points
from tests.helpers import metrics_event


def test_metric_batches_become_points_with_non_finite_values_kept(any_clickhouse_dsn):
    clickhouse = connect(any_clickhouse_dsn)
    migrate(clickhouse)
    batch = metrics_event(seq=4, steps=range(10, 13))
    batch["data"]["values"]["loss"] = [0.5, "NaN", "-Infinity"]
    batch["data"]["values"]["acc"] = [None, 0.25, None]  # sparse: only row 1 logged acc
    other = metrics_event(seq=5, run_id="run2", steps=range(3))
    count = insert_metric_points(clickhouse, [events.validate(batch), events.validate(other)])
    assert count == 4 + 6

    rows = clickhouse.query(
        "SELECT metric, step, value, seq FROM metric_points WHERE run_id = {run:String} ORDER BY metric, step",
        parameters={"run": "run1"},
    ).result_rows
    assert [r[:2] for r in rows] == [("acc", 11), ("loss", 10), ("loss", 11), ("loss", 12)]
    assert rows[0][2] == 0.25 and rows[1][2] == 0.5
    assert math.isnan(rows[2][2]) and rows[3][2] == -math.inf
    assert {r[3] for r in rows} == {4}
    times = clickhouse.query(
        "SELECT step, toUnixTimestamp64Milli(time) FROM metric_steps WHERE run_id = 'run1' ORDER BY step"
    ).result_rows
    assert times == [(s, round(t * 1000)) for s, t in zip(batch["data"]["step"], batch["data"]["time"])]
    catalog = clickhouse.query("SELECT DISTINCT key FROM key_catalog WHERE kind = 'metric' ORDER BY key").result_rows
    assert catalog == [("acc",), ("loss",)]


def test_a_redelivered_batch_collapses_to_one_copy(clickhouse):
    event = events.validate(metrics_event(seq=9, steps=range(100)))
    insert_metric_points(clickhouse, [event])
    insert_metric_points(clickhouse, [event])
    assert clickhouse.command("SELECT count() FROM metric_points FINAL") == 200
    assert clickhouse.command("SELECT count() FROM metric_steps FINAL") == 100


def test_a_step_logged_again_later_keeps_the_later_value(clickhouse):
    first = metrics_event(seq=1, steps=range(5))
    again = metrics_event(seq=2, steps=range(3, 4))
    again["data"]["values"] = {"loss": [42.0]}
    insert_metric_points(clickhouse, [events.validate(first), events.validate(again)])
    value = clickhouse.command("SELECT value FROM metric_points FINAL WHERE metric = 'loss' AND step = 3")
    assert float(value) == 42.0
