"""Metrics logged as ints read back as ints (W&B's ``epoch == 3``), through the real pipeline and engine."""

from __future__ import annotations

import math

import numpy as np

import runstream
from runstream import events
from tests.helpers import ServedApp, make_event, unique

QUIET = {"console": False, "system_metrics": False, "git": False}


def _types(values: list) -> set[str]:
    return {type(v).__name__ for v in values if v is not None}


def test_ingested_int_metrics_come_back_as_ints_from_history_and_summaries(api):
    headers = api.key("acme", "alice")
    project = unique("p")
    base = f"/api/v1/runs/acme/{project}/r1"
    start = make_event(events.RUN_START, {"name": "r1"}, seq=0, run_id="r1", project=project)
    first = make_event(
        events.METRICS,
        {
            "step": [0, 1, 2],
            "time": [1.0, 2.0, 3.0],
            "values": {
                "epoch": [0, 1, 2],
                "loss": [2.0, 1.5, 1.0],  # whole floats stay floats
                "val": [7, None, "NaN"],  # sparse, with a NaN: still an int metric
                "mixed": [1, 2, 3],
            },
        },
        seq=1,
        run_id="r1",
        project=project,
    )
    second = make_event(
        events.METRICS,
        {
            "step": [3, 4],
            "time": [4.0, 5.0],
            "values": {
                "epoch": [3, 4],
                "loss": [0.5, 1.0],
                "val": [None, 5],
                "mixed": [0.5, 4],
            },
        },
        seq=2,
        run_id="r1",
        project=project,
    )
    assert api.ingest([start, first, second], headers).status_code == 200

    scan = api.http.get(base + "/history/scan", headers=headers).json()["columns"]
    sampled = api.http.get(base + "/history", params={"samples": 3}, headers=headers).json()["columns"]
    for columns in (scan, sampled):
        assert _types(columns["epoch"]) == {"int"} and _types(columns["loss"]) == {"float"}
        assert _types(columns["mixed"]) == {"float"}
    assert scan["epoch"] == [0, 1, 2, 3, 4] and scan["loss"] == [2.0, 1.5, 1.0, 0.5, 1.0]
    assert scan["val"] == [7, None, "NaN", None, 5] and _types(scan["val"]) == {"int", "str"}
    assert scan["mixed"] == [1.0, 2.0, 3.0, 0.5, 4.0]
    # A page of another key set asks about its own keys.
    assert api.http.get(base + "/history/scan", params={"keys": "epoch", "min_step": 3}, headers=headers).json()[
        "columns"
    ]["epoch"] == [3, 4]

    # The run summary (each metric's last value): ints for the int metrics only.
    summary = api.http.get(base, headers=headers).json()["summary"]
    listed = api.http.get(f"/api/v1/projects/acme/{project}/runs", headers=headers).json()["runs"][0]["summary"]
    for got in (summary, listed):
        assert got["epoch"] == 4 and type(got["epoch"]) is int
        assert got["val"] == 5 and type(got["val"]) is int
        assert got["loss"] == 1.0 and type(got["loss"]) is float
        assert got["mixed"] == 4.0 and type(got["mixed"]) is float
    flags = dict(
        api.storage.query(
            "SELECT metric, integer FROM metric_summaries FINAL WHERE project = {p:String}", parameters={"p": project}
        ).result_rows
    )
    assert flags == {"epoch": True, "val": True, "loss": False, "mixed": False}


def test_the_sdk_and_the_public_client_keep_int_metrics_ints(api, tmp_path):
    key = api.key("acme", "alice")["Authorization"].removeprefix("Bearer ")
    project = unique("p")
    with ServedApp(api.app) as url:
        run = runstream.init(
            entity="acme", project=project, id="r1", dir=tmp_path, settings={**QUIET, "url": url, "api_key": key}
        )
        for step in range(6):
            # Plain ints and floats (the SDK's fast path keeps them as they are) ...
            run.log({"epoch": step // 2, "loss": 1.0 if step == 5 else 1 / (step + 2)})
        # ... and numpy scalars and bools (its slow path, through values.to_scalar).
        run.log({"np_epoch": np.int64(7), "done": True, "acc": np.float32(1.0)}, step=5)
        assert run.summary["epoch"] == 2 and type(run.summary["epoch"]) is int
        assert run.finish().unacked_events == 0

        public = runstream.Api(url, key).run(f"acme/{project}/r1")
        frame = public.history(keys=["epoch", "loss", "np_epoch"])
        rows = list(public.scan_history())
    assert str(frame["epoch"].dtype) == "int64" and frame["epoch"].tolist() == [0, 0, 1, 1, 2, 2]
    assert str(frame["loss"].dtype) == "float64" and frame["loss"].iloc[-1] == 1.0
    # A column with rows that did not log it is float, NaN in those rows (as in W&B).
    assert str(frame["np_epoch"].dtype) == "float64" and math.isnan(frame["np_epoch"].iloc[0])

    assert [type(row["epoch"]) for row in rows] == [int] * 6 and [type(row["loss"]) for row in rows] == [float] * 6
    assert (rows[5]["np_epoch"], rows[5]["done"], rows[5]["acc"]) == (7, 1, 1.0)
    assert [type(rows[5][k]) for k in ("np_epoch", "done", "acc")] == [int, int, float]

    summary = public.summary
    assert (summary["epoch"], summary["np_epoch"], summary["done"], summary["loss"]) == (2, 7, 1, 1.0)
    assert [type(summary[k]) for k in ("epoch", "np_epoch", "done", "loss", "acc")] == [int, int, int, float, float]
