"""Downsampled buckets and chart series against numpy ground truth, on the real engine."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from runstream.events import METRICS, Event
from runstream.storage.buckets import TOP_LEVEL, WIDTHS
from runstream.storage.errors import QueryError
from runstream.storage.series import group_bands, series
from runstream.storage.writer import insert_metric_points

TEAM, PROJECT = "acme", "charts"
T0 = 1.75e9


class Run:
    """One run's generated history: values by step (NaN where not logged) and which steps logged."""

    def __init__(self, run_id: str, steps: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.run_id = run_id
        self.steps = steps
        self.time = T0 + seed * 1000 + np.cumsum(rng.uniform(0.05, 0.2, steps))
        loss = 3 * np.exp(-np.arange(steps) / (steps / 4)) + rng.normal(0, 0.05, steps)
        self.spike = int(rng.integers(10, steps - 10))
        loss[self.spike] += 500.0
        loss[rng.integers(0, steps, 5)] = np.nan
        loss[int(rng.integers(0, steps))] = np.inf
        self.values = {"loss": loss, "epoch": np.arange(steps) / 100.0}
        self.logged = {"loss": np.ones(steps, bool), "epoch": np.ones(steps, bool)}
        sparse = np.full(steps, np.nan)
        sparse[::10] = rng.normal(1, 0.1, len(sparse[::10]))
        self.values["val"] = sparse
        self.logged["val"] = np.zeros(steps, bool)
        self.logged["val"][::10] = True

    def events(self, rows: int = 500) -> list[Event]:
        out = []
        for k, start in enumerate(range(0, self.steps, rows)):
            end = min(start + rows, self.steps)
            values = {}
            for name, column in self.values.items():
                logged = self.logged[name][start:end]
                values[name] = [_encode(v) if ok else None for v, ok in zip(column[start:end].tolist(), logged)]
            data = {"step": list(range(start, end)), "time": self.time[start:end].tolist(), "values": values}
            out.append(Event(METRICS, TEAM, PROJECT, self.run_id, 100 + k, T0, data))
        return out

    def window(self, metric: str, first: int, last: int) -> np.ndarray:
        """The logged values in steps [first, last]."""
        return self.values[metric][first : last + 1][self.logged[metric][first : last + 1]]


def _encode(v: float) -> float | str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


def _finite_minmax(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if len(finite) else (math.nan, math.nan)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture
def runs(clickhouse) -> dict[str, Run]:
    generated = {f"r{i}": Run(f"r{i}", steps, seed=i) for i, steps in enumerate([20_000, 7_000, 3_001, 12_345])}
    batches = [e for run in generated.values() for e in run.events()]
    random.Random(7).shuffle(batches)  # out of order across and within runs
    insert_metric_points(clickhouse, batches[: len(batches) // 2])
    insert_metric_points(clickhouse, batches)  # the first half again: redelivered
    return generated


def test_every_bucket_at_every_level_matches_numpy(clickhouse, runs):
    check_every_bucket(clickhouse, runs, PROJECT)


def check_every_bucket(clickhouse, runs: dict[str, Run], project: str) -> None:
    """Every stored bucket of the project, at every level, is what numpy computes from the runs."""
    rows = clickhouse.query(
        "SELECT run_id, metric, level, bucket, step_first, step_last, count, nonfinite, min, max, sum, first, last "
        "FROM metric_buckets FINAL WHERE project = {p:String}",
        parameters={"p": project},
    ).result_rows
    seen = set()
    for run_id, metric, level, bucket, step_first, step_last, count, nonfinite, lo, hi, total, first, last in rows:
        run, width = runs[run_id], WIDTHS[level]
        steps = np.flatnonzero(run.logged[metric][bucket * width : (bucket + 1) * width]) + bucket * width
        values = run.values[metric][steps]
        finite = values[np.isfinite(values)]
        assert (step_first, step_last, count) == (steps[0], steps[-1], len(steps))
        assert nonfinite == len(values) - len(finite)
        assert (_same(lo, _finite_minmax(values)[0]), _same(hi, _finite_minmax(values)[1])) == (True, True)
        assert math.isclose(total, finite.sum(), rel_tol=1e-9, abs_tol=1e-9)
        assert _same(first, values[0]) and _same(last, values[-1])
        seen.add((run_id, metric, level, bucket))
    for run in runs.values():  # and no bucket is missing
        for metric in run.values:
            logged = np.flatnonzero(run.logged[metric])
            for level in range(1, TOP_LEVEL + 1):
                expected = {(run.run_id, metric, level, int(b)) for b in np.unique(logged // WIDTHS[level])}
                assert expected <= seen


def _check_points(run: Run, metric: str, s: dict, first: int, last: int) -> None:
    """Each point's min/max/last are those of the logged values in its bucket.

    Raw points bucketed on the fly are cut to [first, last]; a stored bucket at
    the edge of a zoom range is whole (it shows a little context beyond it).
    """
    width = s["bucket_steps"]
    assert list(s["step"]) == sorted(s["step"])
    for step, y, lo, hi in zip(s["step"].tolist(), s["y"].tolist(), s["min"].tolist(), s["max"].tolist()):
        start = step // width * width
        if s["level"] == 0:
            start = max(first, start)
            assert first <= step <= last
        else:
            assert step >= first and start <= last
        values = run.window(metric, start, step)
        assert run.logged[metric][step]
        assert _same(y, run.values[metric][step])
        assert _same(lo, _finite_minmax(values)[0]) and _same(hi, _finite_minmax(values)[1])


def test_compare_chart_bounds_points_and_keeps_envelopes_and_spikes(clickhouse, runs):
    chart = series(clickhouse, TEAM, PROJECT, list(runs), ["loss", "val"], points=300)
    assert {(s["run_id"], s["metric"]) for s in chart["series"]} == {(r, m) for r in runs for m in ("loss", "val")}
    for s in chart["series"]:
        run = runs[s["run_id"]]
        assert 0 < len(s["x"]) <= 300
        assert len(s["x"]) > 300 / 4 or s["level"] == 0  # the finest level that fits
        _check_points(run, s["metric"], s, 0, run.steps - 1)
        if s["metric"] == "loss":
            assert np.nanmax(s["max"]) == run.values["loss"][run.spike]


def test_zoom_reads_finer_data_inside_the_range(clickhouse, runs):
    run = runs["r0"]
    wide = series(clickhouse, TEAM, PROJECT, ["r0"], ["loss"], points=200)["series"][0]
    for first, last, points in [(5000, 9000, 200), (5000, 5500, 200), (5000, 5100, 200), (123, 7000, 1000)]:
        s = series(clickhouse, TEAM, PROJECT, ["r0"], ["loss"], points=points, step_range=(first, last))["series"][0]
        assert s["bucket_steps"] < wide["bucket_steps"]
        assert len(s["x"]) <= points
        _check_points(run, "loss", s, first, last)
    exact = series(clickhouse, TEAM, PROJECT, ["r0"], ["loss"], points=200, step_range=(5000, 5100))["series"][0]
    assert exact["level"] == 0 and exact["bucket_steps"] == 1 and list(exact["step"]) == list(range(5000, 5101))


def test_x_axes_time_relative_and_another_metric(clickhouse, runs):
    run = runs["r1"]
    by_step = series(clickhouse, TEAM, PROJECT, ["r1"], ["loss"], points=100)["series"][0]
    steps = by_step["step"]
    at_time = series(clickhouse, TEAM, PROJECT, ["r1"], ["loss"], points=100, x="time")["series"][0]
    assert np.allclose(at_time["x"], np.round(run.time[steps] * 1000) / 1000, atol=1e-3)
    relative = series(clickhouse, TEAM, PROJECT, ["r1"], ["loss"], points=100, x="relative")["series"][0]
    assert np.allclose(relative["x"], at_time["x"] - round(run.time[0] * 1000) / 1000, atol=1e-3)
    by_epoch = series(clickhouse, TEAM, PROJECT, ["r1"], ["loss"], points=100, x="metric", x_metric="epoch")
    assert np.allclose(by_epoch["series"][0]["x"], steps / 100.0)


def test_group_bands_match_numpy_across_runs(clickhouse, runs):
    groups = {"long": ["r0", "r3"], "short": ["r1", "r2"]}
    bands = group_bands(clickhouse, TEAM, PROJECT, groups, "loss", points=200)
    width = bands["bucket_steps"]
    assert {g["group"] for g in bands["groups"]} == set(groups)
    for g in bands["groups"]:
        assert len(g["x"]) <= 200
        for i, x in enumerate(g["x"].tolist()):
            bucket = x // width
            means, lows, highs = [], [], []
            for run_id in groups[g["group"]]:
                run = runs[run_id]
                if bucket * width >= run.steps:
                    continue
                values = run.window("loss", bucket * width, min(run.steps - 1, bucket * width + width - 1))
                finite = values[np.isfinite(values)]
                means.append(finite.mean())
                lows.append(finite.min())
                highs.append(finite.max())
            assert g["runs"][i] == len(means)
            assert math.isclose(g["mean"][i], np.mean(means), rel_tol=1e-9)
            assert math.isclose(g["std"][i], np.std(means), rel_tol=1e-6, abs_tol=1e-9)
            assert g["min"][i] == min(lows) and g["max"][i] == max(highs)


def test_unknown_runs_and_metrics_give_no_series_and_hostile_names_are_only_data(clickhouse, runs):
    hostile = ["x'; DROP TABLE metric_points; --", "`", "ü" * 200, 'a"b']
    assert series(clickhouse, TEAM, PROJECT, hostile, hostile)["series"] == []
    assert clickhouse.command("SELECT count() > 0 FROM metric_points")
    for bad in [
        dict(run_ids="r0", metrics=["loss"]),
        dict(run_ids=[], metrics=["loss"]),
        dict(run_ids=["r0"], metrics=["x" * 300]),
        dict(run_ids=["r0"], metrics=["loss"], points=1),
        dict(run_ids=["r0"], metrics=["loss"], x="sideways"),
        dict(run_ids=["r0"], metrics=["loss"], x="metric"),
        dict(run_ids=["r0"], metrics=["loss"], step_range=(10, 5)),
        dict(run_ids=["r0"], metrics=["loss"], step_range=("0", 5)),
        dict(run_ids=[1], metrics=["loss"]),
    ]:
        with pytest.raises(QueryError):
            series(clickhouse, TEAM, PROJECT, **bad)
    with pytest.raises(QueryError):
        group_bands(clickhouse, TEAM, PROJECT, {}, "loss")
