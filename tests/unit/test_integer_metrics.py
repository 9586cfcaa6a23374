"""Metrics logged as ints stay ints: the SDK's values, the contract, the processor's statistics, history columns."""

from __future__ import annotations

import enum
import math

import numpy as np
import orjson

from runstream.api.history import contract_column
from runstream.events import METRICS, Event, decode_value
from runstream.streams import summaries
from runstream.values import to_scalar


class _Level(enum.IntEnum):
    HIGH = 3


def test_to_scalar_keeps_integers_as_ints_and_floats_as_floats():
    cases = [
        (3, 3, int),
        (-7, -7, int),
        (True, 1, int),
        (False, 0, int),
        (_Level.HIGH, 3, int),
        (np.int64(5), 5, int),
        (np.uint8(200), 200, int),
        (np.int32(-2), -2, int),
        (np.bool_(True), 1, int),
        (np.array(4), 4, int),  # a 0-d array
        (1.0, 1.0, float),
        (0.5, 0.5, float),
        (np.float32(2.0), 2.0, float),
        (np.float64(0.25), 0.25, float),
        (2**63, float(2**63), float),  # beyond what a JSON event carries: a float
        (np.uint64(2**64 - 1), float(2**64 - 1), float),
    ]
    for value, expected, kind in cases:
        got = to_scalar(value)
        assert type(got) is kind and got == expected, (value, got)
    assert math.isnan(to_scalar(float("nan")))
    assert to_scalar("3") is None and to_scalar(np.array([1, 2])) is None and to_scalar(None) is None
    # The event's JSON carries 3, not 3.0, and 1.0 stays 1.0.
    assert orjson.dumps([to_scalar(3), to_scalar(np.int64(3)), to_scalar(1.0)]) == b"[3,3,1.0]"


def test_decode_value_keeps_ints():
    assert type(decode_value(3)) is int and type(decode_value(3.0)) is float
    assert math.isinf(decode_value("-Infinity")) and decode_value(None) is None


def _batch(seq: int, steps: list[int], values: dict[str, list]) -> Event:
    return Event(
        METRICS, "acme", "p", "r1", seq, 0.0, {"step": steps, "time": [float(s) for s in steps], "values": values}
    )


def test_the_processor_keeps_integer_metrics_as_ints_and_one_float_makes_a_metric_float():
    summary = summaries.new_summary()
    summaries.fold_metrics(
        summary,
        _batch(
            1,
            [0, 1, 2],
            {
                "epoch": [0, 1, 2],  # dense: min/max/last in C
                "sparse": [5, None, "NaN"],  # folded row by row; NaN leaves it integer
                "loss": [1.0, 0.5, 2.0],  # whole floats are floats
                "mixed": [4, 3, 7],
            },
        ),
    )
    summaries.fold_metrics(summary, _batch(2, [3, 4], {"epoch": [3, 4], "sparse": [None, 2], "mixed": [2, 0.5]}))
    stats = summary["metrics"]
    assert [stats[m]["integer"] for m in ("epoch", "sparse", "loss", "mixed")] == [True, True, False, False]
    out = summaries.run_summary(summary)
    assert out["epoch"] == 4 and type(out["epoch"]) is int
    assert out["sparse"] == 2 and type(out["sparse"]) is int
    assert out["loss"] == 2.0 and type(out["loss"]) is float
    assert out["mixed"] == 0.5
    # The ints folded before the float are floats now, and so is a later int of a float metric.
    assert [type(stats["mixed"][k]) for k in ("min", "max")] == [float, float]
    summaries.fold_metrics(summary, _batch(3, [5], {"mixed": [9]}))
    assert type(stats["mixed"]["last"]) is float and type(summaries.run_summary(summary)["mixed"]) is float
    assert (stats["epoch"]["min"], stats["epoch"]["max"]) == (0, 4) and type(stats["epoch"]["min"]) is int
    # The state survives JSON, ints included; rows for the Float64 table carry floats and the flag.
    assert orjson.loads(orjson.dumps(summary)) == summary
    rows = {r["metric"]: r for r in summaries.metric_summary_rows(summary, "acme", "p", "r1", 1)}
    assert rows["epoch"]["integer"] is True and rows["loss"]["integer"] is False and rows["mixed"]["integer"] is False
    assert type(rows["epoch"]["max"]) is float and rows["epoch"]["max"] == 4.0


def test_restated_statistics_of_an_integer_metric_stay_ints():
    summary = summaries.new_summary()
    summaries.fold_metrics(summary, _batch(1, [0, 1], {"epoch": [1, 2], "loss": [0.5, 0.25]}))
    for metric in ("epoch", "loss"):
        summaries.restate(summary, metric, {"count": 2, "sum": 3.0, "min": 1.0, "max": 2.0, "nan": 0, "inf": 0})
    assert [type(summary["metrics"]["epoch"][k]) for k in ("min", "max")] == [int, int]
    assert [type(summary["metrics"]["loss"][k]) for k in ("min", "max")] == [float, float]


def test_a_state_from_before_the_flag_stays_float():
    summary = summaries.new_summary()
    summaries.fold_metrics(summary, _batch(1, [0], {"epoch": [0]}))
    del summary["metrics"]["epoch"]["integer"]
    summary["metrics"]["epoch"].update({"last": 0.0, "min": 0.0, "max": 0.0})
    summaries.fold_metrics(summary, _batch(2, [1], {"epoch": [1]}))
    assert type(summaries.run_summary(summary)["epoch"]) is float


def test_history_columns_of_integer_metrics_hold_ints():
    column = contract_column([1.0, None, math.nan, 3.0, math.inf], integer=True)
    assert column == [1, None, "NaN", 3, "Infinity"] and [type(v) for v in column[::3]] == [int, int]
    assert [type(v) for v in contract_column([1.0, None, 2.0])[::2]] == [float, float]
    assert contract_column([None, None], integer=True) == [None, None]
