"""History pages and bulk exports against the real ClickHouse engine, checked against
ground truth kept in plain Python while the test data is generated."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runstream.events import Event, encode_value
from runstream.storage import history
from runstream.storage.errors import QueryError
from runstream.storage.export import HISTORY_COLUMNS, RUN_COLUMNS, export_history, export_runs
from runstream.storage.history import history_page, run_metrics
from runstream.storage.writer import insert_metric_points, upsert_run_summaries, upsert_runs

TEAM, PROJECT = "acme", "mnist"
T0 = 1_700_000_000.0


class Truth:
    """What queries must return: per run, step -> (time, {metric: value}), the latest seq winning."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[int, tuple[float, dict[str, float]]]] = {}
        self.events: list[Event] = []

    def log(self, run_id: str, seq: int, steps: list[int], times: list[float], values: dict[str, list[float | None]]):
        self.events.append(
            Event(
                "metrics",
                TEAM,
                PROJECT,
                run_id,
                seq,
                times[0],
                {
                    "step": steps,
                    "time": times,
                    "values": {k: [None if v is None else encode_value(v) for v in col] for k, col in values.items()},
                },
            )
        )
        run = self.runs.setdefault(run_id, {})
        for i, step in enumerate(steps):
            _, row = run.get(step, (0.0, {}))
            row = dict(row)
            row.update({k: v for k, col in values.items() if (v := col[i]) is not None})
            run[step] = (times[i], row)

    def points(self, run_ids=None, metrics=None) -> set[tuple]:
        return {
            (run_id, metric, step, _key(value))
            for run_id, steps in self.runs.items()
            if run_ids is None or run_id in run_ids
            for step, (_, row) in steps.items()
            for metric, value in row.items()
            if metrics is None or metric in metrics
        }


def _key(value: float) -> float | str:
    return "nan" if math.isnan(value) else value


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or a == b


def _history(rng: np.random.Generator, run_id: str, n_steps: int, seq0: int = 1) -> Truth:
    """A run with gaps between steps, a dense metric with NaN/±Inf, a sparse one and a
    rarely logged one; every batch inserted twice, and some steps re-logged later."""
    truth = Truth()
    steps = np.sort(rng.choice(np.arange(n_steps * 2), n_steps, replace=False)).tolist()
    seq = seq0
    for b in range(0, n_steps, 250):
        chunk = steps[b : b + 250]
        times = [T0 + s * 0.5 for s in chunk]
        loss = rng.standard_normal(len(chunk))
        loss[rng.random(len(chunk)) < 0.05] = np.nan
        loss[rng.random(len(chunk)) < 0.03] = np.inf
        loss[rng.random(len(chunk)) < 0.03] = -np.inf
        values = {
            "loss": loss.tolist(),
            "acc": [float(s) / 7 if s % 7 == 0 else None for s in chunk],
            "val/rare": [float(s) if i == 0 else None for i, s in enumerate(chunk)],
        }
        truth.log(run_id, seq, chunk, times, values)
        seq += 1
    # A correction: some steps logged again, later, with other values (and a new time).
    again = steps[10:40:3]
    truth.log(
        run_id,
        seq + 100,
        again,
        [T0 + 10_000 + i for i in range(len(again))],
        {"loss": [1000.0 + i for i in range(len(again))], "acc": [None] * len(again)},
    )
    return truth


def _insert_twice(clickhouse, events: list[Event]) -> None:
    insert_metric_points(clickhouse, events)
    insert_metric_points(clickhouse, events[::-1])  # a redelivery, in another order


# -- history pages ---------------------------------------------------------------------


def test_history_pages_walk_every_step_once_with_current_values(clickhouse):
    truth = _history(np.random.default_rng(1), "run1", 2000)
    _insert_twice(clickhouse, truth.events)
    expected = truth.runs["run1"]

    pages, after = [], None
    while True:
        page = history_page(clickhouse, TEAM, PROJECT, "run1", after_step=after, page_size=300)
        pages.append(page)
        after = page["next_after_step"]
        if after is None:
            break
    assert [len(p["step"]) for p in pages] == [300] * 6 + [200]
    steps = [s for p in pages for s in p["step"]]
    assert steps == sorted(expected)
    assert all(p["next_after_step"] == p["step"][-1] for p in pages[:-1])

    for page in pages:
        assert set(page["columns"]) == {"acc", "loss", "val/rare"}
        for i, step in enumerate(page["step"]):
            time, row = expected[step]
            assert page["time"][i] == pytest.approx(time, abs=1e-3)
            for metric, column in page["columns"].items():
                assert _same(column[i], row.get(metric)), (step, metric, column[i], row.get(metric))
    values = [v for p in pages for v in p["columns"]["loss"]]
    assert any(v is not None and math.isnan(v) for v in values)
    assert math.inf in values and -math.inf in values
    assert 1000.0 in values  # the re-logged value, not the first one


def test_history_keys_select_rows_that_logged_them(clickhouse):
    truth = _history(np.random.default_rng(2), "run1", 1500)
    _insert_twice(clickhouse, truth.events)
    expected = truth.runs["run1"]

    acc_steps = sorted(s for s, (_, row) in expected.items() if "acc" in row)
    page = history_page(clickhouse, TEAM, PROJECT, "run1", keys=["acc"], page_size=100)
    assert page["step"] == acc_steps[:100]
    assert page["columns"]["acc"] == [expected[s][1]["acc"] for s in acc_steps[:100]]
    assert page["next_after_step"] == acc_steps[99]
    rest = history_page(clickhouse, TEAM, PROJECT, "run1", keys=["acc"], after_step=acc_steps[99], page_size=100_000)
    assert rest["step"] == acc_steps[100:] and rest["next_after_step"] is None

    # Two sparse keys: rows where either was logged, None where the other was not.
    sparse = history_page(clickhouse, TEAM, PROJECT, "run1", keys=["val/rare", "acc", "nope"], page_size=50)
    want = sorted(s for s, (_, row) in expected.items() if "acc" in row or "val/rare" in row)[:50]
    assert sparse["step"] == want
    assert sparse["columns"]["nope"] == [None] * 50
    assert sparse["columns"]["val/rare"] == [expected[s][1].get("val/rare") for s in want]
    assert list(sparse["columns"]) == ["val/rare", "acc", "nope"]

    lo, hi = sorted(expected)[100], sorted(expected)[400]
    bounded = history_page(clickhouse, TEAM, PROJECT, "run1", keys=["loss"], min_step=lo, max_step=hi, page_size=1000)
    assert bounded["step"] == [s for s in sorted(expected) if lo <= s <= hi and "loss" in expected[s][1]]
    assert bounded["next_after_step"] is None


def test_history_page_shrinks_to_a_bounded_number_of_values(clickhouse, monkeypatch):
    truth = _history(np.random.default_rng(4), "run1", 500)
    _insert_twice(clickhouse, truth.events)
    monkeypatch.setattr(history, "MAX_CELLS", 600)
    page = history_page(clickhouse, TEAM, PROJECT, "run1", keys=["loss", "acc", "x"], page_size=1000)
    assert page["step"] == sorted(truth.runs["run1"])[:200]
    assert page["next_after_step"] == page["step"][-1]


def test_history_page_of_an_unknown_run_and_bad_arguments(clickhouse):
    truth = _history(np.random.default_rng(3), "run1", 300)
    _insert_twice(clickhouse, truth.events)
    assert run_metrics(clickhouse, TEAM, PROJECT, "run1") == ["acc", "loss", "val/rare"]
    assert run_metrics(clickhouse, TEAM, PROJECT, "ghost") == []
    empty = history_page(clickhouse, TEAM, PROJECT, "ghost")
    assert empty == {"step": [], "time": [], "columns": {}, "next_after_step": None}
    last = max(truth.runs["run1"])
    assert history_page(clickhouse, TEAM, PROJECT, "run1", keys=["loss"], after_step=last)["step"] == []
    for bad in ({"page_size": 0}, {"page_size": 10**6}, {"after_step": -1}, {"min_step": "1"}, {"keys": "loss"}):
        with pytest.raises(QueryError):
            history_page(clickhouse, TEAM, PROJECT, "run1", **bad)


# -- exports ---------------------------------------------------------------------------


@pytest.fixture
def exported_runs(clickhouse):
    rng = np.random.default_rng(7)
    truth = Truth()
    for i, n in enumerate((900, 400, 50, 300)):  # run0 alone has more points than a chunk
        run = _history(rng, f"run{i}", n, seq0=1 + i * 1000)
        truth.runs.update(run.runs)
        truth.events += run.events
    _insert_twice(clickhouse, truth.events)
    return clickhouse, truth


def _read(data: bytes, format: str) -> list[dict]:
    if format == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if format == "arrow":
        return pa.ipc.open_stream(data).read_all().to_pylist()
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    for row in rows:
        row["step"], row["value"] = int(row["step"]), float(row["value"])
        row["time"] = datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
    return rows


@pytest.mark.parametrize("format", ["parquet", "arrow", "csv"])
def test_export_history_round_trip(exported_runs, format):
    clickhouse, truth = exported_runs
    wanted = ["run0", "run1", "run2"]
    chunks = list(export_history(clickhouse, TEAM, PROJECT, [*wanted, "ghost"], None, format, chunk_points=700))
    assert len(chunks) > 3  # streamed: several chunks
    rows = _read(b"".join(chunks), format)

    got = [(r["run_id"], r["metric"], r["step"], _key(r["value"])) for r in rows]
    assert len(got) == len(set(got))  # deduplicated
    assert set(got) == truth.points(wanted)
    assert [g[:3] for g in got] == sorted(g[:3] for g in got)  # sorted by run, metric, step
    for r in rows[::97]:
        assert r["time"].timestamp() == pytest.approx(truth.runs[r["run_id"]][r["step"]][0], abs=1e-3)
    if format != "csv":
        assert list(rows[0]) == list(HISTORY_COLUMNS)


@pytest.mark.parametrize("format", ["parquet", "arrow", "csv"])
def test_export_history_of_some_metrics_and_of_nothing(exported_runs, format):
    clickhouse, truth = exported_runs
    data = b"".join(export_history(clickhouse, TEAM, PROJECT, ["run1", "run3"], ["acc", "val/rare"], format))
    rows = _read(data, format)
    assert {(r["run_id"], r["metric"], r["step"], _key(r["value"])) for r in rows} == truth.points(
        {"run1", "run3"}, {"acc", "val/rare"}
    )

    for run_ids, metrics in ((["ghost"], None), (["run1"], []), ([], None)):
        data = b"".join(export_history(clickhouse, TEAM, PROJECT, run_ids, metrics, format))
        if format == "csv":
            assert data.decode() == ",".join(HISTORY_COLUMNS) + "\n"
        else:
            table = pq.read_table(io.BytesIO(data)) if format == "parquet" else pa.ipc.open_stream(data).read_all()
            assert table.num_rows == 0 and table.column_names == list(HISTORY_COLUMNS)


def test_an_export_abandoned_midway_frees_the_client(exported_runs):
    clickhouse, truth = exported_runs
    stream = export_history(clickhouse, TEAM, PROJECT, ["run0", "run1", "run2"], None, "arrow", chunk_points=100)
    next(stream)
    stream.close()  # the prefetching thread stops; the client is free for the next request
    page = history_page(clickhouse, TEAM, PROJECT, "run2", keys=["loss"])
    assert page["step"] == sorted(truth.runs["run2"])


def test_export_rejects_bad_arguments(clickhouse):
    with pytest.raises(QueryError, match="format"):
        export_history(clickhouse, TEAM, PROJECT, ["run1"], None, "xlsx")
    with pytest.raises(QueryError, match="at most"):
        export_history(clickhouse, TEAM, PROJECT, [f"r{i}" for i in range(100_001)], None, "csv")
    with pytest.raises(QueryError):
        export_runs(clickhouse, TEAM, PROJECT, "run1", "csv")


def test_export_history_accepts_a_hundred_thousand_run_ids(exported_runs):
    clickhouse, truth = exported_runs
    run_ids = [f"other{i}" for i in range(99_999)] + ["run2"]
    rows = _read(b"".join(export_history(clickhouse, TEAM, PROJECT, run_ids, ["loss"], "arrow")), "arrow")
    assert {(r["run_id"], r["metric"], r["step"], _key(r["value"])) for r in rows} == truth.points({"run2"}, {"loss"})


@pytest.mark.parametrize("format", ["parquet", "arrow", "csv"])
def test_export_runs(clickhouse, format):
    base = {"team": TEAM, "project": PROJECT, "created_at": T0, "updated_at": T0, "heartbeat_at": T0}
    upsert_runs(
        clickhouse,
        [
            {**base, "run_id": "run1", "name": "first", "version": 1, "config": {"lr": 0.1}},
            {
                **base,
                "run_id": "run1",
                "name": "first, renamed",
                "version": 5,
                "state": "finished",
                "finished_at": T0 + 60,
                "exit_code": 0,
                "tags": ["baseline", 'x"y'],
                "group": "sweep-1",
                "job_type": "train",
                "config": {"lr": 0.01, "optimizer": {"name": "adam", "betas": [0.9, 0.99]}},
            },
            {**base, "run_id": "run2", "name": "second", "version": 1},
            {**base, "run_id": "run3", "name": "not exported", "version": 1},
        ],
    )
    upsert_run_summaries(
        clickhouse,
        [
            {"team": TEAM, "project": PROJECT, "run_id": "run1", "summary": {"loss": 0.5}, "version": 1},
            {
                "team": TEAM,
                "project": PROJECT,
                "run_id": "run1",
                "summary": {"loss": 0.25, "acc": math.nan},
                "version": 2,
            },
        ],
    )
    data = b"".join(export_runs(clickhouse, TEAM, PROJECT, ["run2", "run1", "ghost"], format))
    if format == "csv":
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        for row in rows:
            row["tags"] = orjson.loads(row["tags"])
    else:
        table = pq.read_table(io.BytesIO(data)) if format == "parquet" else pa.ipc.open_stream(data).read_all()
        assert table.column_names == list(RUN_COLUMNS)
        rows = table.to_pylist()
    assert [r["run_id"] for r in rows] == ["run1", "run2"]
    run1, run2 = rows
    assert run1["name"] == "first, renamed" and run1["state"] == "finished"
    assert run1["group"] == "sweep-1" and run1["job_type"] == "train"
    assert run1["tags"] == ["baseline", 'x"y']
    assert orjson.loads(run1["config"]) == {"lr": 0.01, "optimizer.name": "adam", "optimizer.betas": [0.9, 0.99]}
    assert orjson.loads(run1["summary"]) == {"loss": 0.25, "acc": "NaN"}
    assert orjson.loads(run2["summary"]) == {} and orjson.loads(run2["config"]) == {}
    if format != "csv":
        assert run1["finished_at"] == datetime.fromtimestamp(T0 + 60, UTC)
        assert run2["finished_at"] is None and run2["exit_code"] is None

    empty = b"".join(export_runs(clickhouse, TEAM, PROJECT, [], format))
    if format == "csv":
        assert empty.decode() == ",".join(RUN_COLUMNS) + "\n"
    else:
        table = pq.read_table(io.BytesIO(empty)) if format == "parquet" else pa.ipc.open_stream(empty).read_all()
        assert table.num_rows == 0 and table.column_names == list(RUN_COLUMNS)
