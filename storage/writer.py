"""Columnar bulk inserts of validated events into ClickHouse."""

from __future__ import annotations

from collections.abc import Iterable

from clickhouse_connect.driver.client import Client

from runstream.events import METRICS, Event, decode_value

METRIC_POINT_COLUMNS = ("team", "project", "run_id", "metric", "step", "time", "value", "seq", "row")


def metric_point_columns(events: Iterable[Event]) -> dict[str, list]:
    """Flatten metric batches into the columns of ``metric_points`` (one row per logged value)."""
    cols: dict[str, list] = {name: [] for name in METRIC_POINT_COLUMNS}
    for event in events:
        if event.type != METRICS:
            raise ValueError(f"expected {METRICS!r} events, got {event.type!r}")
        steps, times = event.data["step"], event.data["time"]
        for metric, values in event.data["values"].items():
            for row, value in enumerate(values):
                if value is None:  # this row did not log the metric
                    continue
                cols["team"].append(event.team)
                cols["project"].append(event.project)
                cols["run_id"].append(event.run_id)
                cols["metric"].append(metric)
                cols["step"].append(steps[row])
                cols["time"].append(round(times[row] * 1000))  # DateTime64(3) ticks: no datetime objects
                cols["value"].append(decode_value(value))
                cols["seq"].append(event.seq)
                cols["row"].append(row)
    return cols


def insert_metric_points(client: Client, events: Iterable[Event]) -> int:
    """Insert the points of many metric batches in one columnar insert; return the point count."""
    cols = metric_point_columns(events)
    count = len(cols["run_id"])
    if count:
        client.insert(
            "metric_points",
            list(cols.values()),
            column_names=list(cols),
            column_oriented=True,
        )
    return count
