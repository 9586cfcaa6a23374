"""Forks and rewinds (issue 17 §2): ``init(fork_from="RUN?_step=N")`` and ``init(resume_from="RUN?_step=N")``.

A fork's history reads as its parent's up to step N, then its own; a rewound run's history after N is
replaced by what it logs from then on, the replaced part kept and readable (``rewinds=K``). Reads compose
stored segments (``storage/lineage.py``): no point is copied. Every read is checked: the API's run detail,
``history()``/``scan_history()``, chart series (raw, and stored levels whose buckets a segment bound cuts)
and exports, against a plain run that logged the composed history itself.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from runstream import events
from runstream.storage import export, history, lineage, series
from tests.conftest import ApiHarness
from tests.helpers import ServedApp, make_event, unique

TEAM = "acme"
QUIET = {"system_metrics": False, "console": False, "git": False, "finish_timeout": 60}


@pytest.fixture
def server(api: ApiHarness) -> Iterator[str]:
    with ServedApp(api.app, lifespan="off") as url:
        yield url


def _sdk(api: ApiHarness, server: str, tmp_path) -> dict[str, Any]:
    key = api.key(TEAM, "alice")["Authorization"].removeprefix("Bearer ")
    return {"entity": TEAM, "dir": tmp_path, "settings": {**QUIET, "url": server, "api_key": key}}


def _client(api: ApiHarness, server: str):
    import runstream

    return runstream.Api(server, api.key(TEAM, "bob")["Authorization"].removeprefix("Bearer "))


def _scan(client, path: str) -> dict[int, float]:
    return {row["_step"]: row["loss"] for row in client.run(path).scan_history(keys=["loss"])}


def _stored_points(api: ApiHarness, project: str, run_id: str) -> int:
    sql = "SELECT count() FROM metric_points FINAL WHERE team = {t:String} AND project = {p:String} AND run_id = {r:String}"
    return api.storage.query(sql, parameters={"t": TEAM, "p": project, "r": run_id}).result_rows[0][0]


def test_a_fork_reads_its_parent_up_to_the_fork_step_then_its_own(api, server, tmp_path):
    import runstream

    project = unique("fork")
    sdk = _sdk(api, server, tmp_path)
    parent = runstream.init(project=project, id="parent", **sdk)
    for step in range(30):
        parent.log({"loss": float(step), "acc": step / 100})
    parent.finish()

    fork = runstream.init(project=project, id="child", fork_from="parent?_step=10", **sdk)
    assert fork.step == 11  # it goes on after the fork step
    for step in range(11, 26):
        fork.log({"loss": 100.0 + step})
    fork.finish()

    client = _client(api, server)
    composed = {s: float(s) for s in range(11)} | {s: 100.0 + s for s in range(11, 26)}
    assert _scan(client, f"{TEAM}/{project}/child") == composed
    assert _scan(client, f"{TEAM}/{project}/parent") == {s: float(s) for s in range(30)}  # the parent is untouched
    sampled = client.run(f"{TEAM}/{project}/child").history(keys=["loss", "acc"], pandas=False)
    assert [row["_step"] for row in sampled] == list(range(26))
    assert [row.get("acc") for row in sampled[:11]] == [s / 100 for s in range(11)]  # the parent's other metric
    assert all(row.get("acc") is None for row in sampled[11:])
    assert _stored_points(api, project, "child") == 15  # nothing was copied
    # Its statistics and summary are those of its composed history (the parent's metrics up to the fork step).
    stats = history.run_statistics(api.storage, TEAM, project, "child")
    loss, acc = stats["metrics"]["loss"], stats["metrics"]["acc"]
    assert (loss["count"], loss["min"], loss["max"], loss["last"], loss["first_step"]) == (26, 0.0, 125.0, 125.0, 0)
    assert (acc["count"], acc["max"], acc["last"], acc["last_step"], stats["last_step"]) == (11, 0.1, 0.1, 10, 25)
    summary = client.run(f"{TEAM}/{project}/child").summary
    assert (summary["loss"], summary["acc"]) == (125.0, 0.1)

    detail = api.http.get(f"/api/v1/runs/{TEAM}/{project}/child", headers=api.key(TEAM, "carol")).json()
    assert detail["fork"] == {"run_id": "parent", "step": 10} and detail["rewinds"] == []
    plain = api.http.get(f"/api/v1/runs/{TEAM}/{project}/parent", headers=api.key(TEAM, "carol")).json()
    assert plain["fork"] is None and plain["rewinds"] == []

    chart = series.series(api.storage, TEAM, project, ["child", "parent"], ["loss"], points=100)
    by_run = {s["run_id"]: s for s in chart["series"]}
    assert by_run["child"]["step"].tolist() == list(range(26))
    assert by_run["child"]["y"].tolist() == list(composed.values())
    assert by_run["parent"]["y"].tolist() == [float(s) for s in range(30)]

    rows = _csv(export.export_history(api.storage, TEAM, project, ["child", "parent"], ["loss"], format="csv"))
    assert [(r["run_id"], int(r["step"]), float(r["value"])) for r in rows if r["run_id"] == "child"] == [
        ("child", s, v) for s, v in composed.items()
    ]
    assert [r["run_id"] for r in rows] == ["child"] * 26 + ["parent"] * 30  # sorted by run, whole


def test_a_rewind_replaces_the_history_after_its_step_and_keeps_the_replaced_part(api, server, tmp_path):
    import runstream

    project = unique("rewind")
    sdk = _sdk(api, server, tmp_path)
    run = runstream.init(project=project, id="r1", **sdk)
    for step in range(30):
        run.log({"loss": float(step)})
    run.finish()

    again = runstream.init(project=project, resume_from="r1?_step=9", **sdk)
    assert (again.id, again.step, again.resumed) == ("r1", 10, True)
    for step in range(10, 20):
        again.log({"loss": 1000.0 + step})
    again.finish()

    client = _client(api, server)
    path = f"{TEAM}/{project}/r1"
    composed = {s: float(s) for s in range(10)} | {s: 1000.0 + s for s in range(10, 20)}
    assert _scan(client, path) == composed  # steps 20-29 of the first session are no longer the run's
    headers = api.key(TEAM, "carol")
    before = api.http.get(f"/api/v1/runs/{path}/history/scan", params={"keys": "loss", "rewinds": 0}, headers=headers)
    assert before.json()["columns"]["loss"] == [float(s) for s in range(30)]  # what the rewind replaced, kept
    sampled = api.http.get(f"/api/v1/runs/{path}/history", params={"keys": "loss", "rewinds": 0}, headers=headers)
    assert sampled.json()["columns"]["_step"] == list(range(30))

    detail = api.http.get(f"/api/v1/runs/{path}", headers=headers).json()
    assert detail["fork"] is None and [r["step"] for r in detail["rewinds"]] == [9]
    assert isinstance(detail["rewinds"][0]["at"], float)
    # The statistics and summary reflect the composed history.
    stats = history.run_statistics(api.storage, TEAM, project, "r1")["metrics"]["loss"]
    assert (stats["count"], stats["min"], stats["max"], stats["last"], stats["last_step"]) == (
        20,
        0.0,
        1019.0,
        1019.0,
        19,
    )
    assert detail["summary"]["loss"] == 1019.0

    chart = series.series(api.storage, TEAM, project, ["r1"], ["loss"], points=100)
    assert chart["series"][0]["y"].tolist() == list(composed.values())
    rows = _csv(export.export_history(api.storage, TEAM, project, ["r1"], format="csv"))
    assert [(int(r["step"]), float(r["value"])) for r in rows] == list(composed.items())


def test_fork_and_rewind_arguments_are_checked(api, server, tmp_path):
    import runstream

    project = unique("args")
    sdk = _sdk(api, server, tmp_path)
    for bad, words in [
        ("parent", "must be 'RUN_ID?_step=N'"),
        ("parent?step=3", "must be 'RUN_ID?_step=N'"),
        ("par ent?_step=3", "the run id 'par ent'"),
        ("parent?_step=-1", "the step '-1' must be a whole number"),
        ("parent?_step=x", "the step 'x'"),
    ]:
        with pytest.raises(ValueError, match=words.replace("?", r"\?")):
            runstream.init(project=project, fork_from=bad, **sdk)
    with pytest.raises(ValueError, match="not both"):
        runstream.init(project=project, fork_from="a?_step=1", resume_from="a?_step=1", **sdk)
    with pytest.raises(ValueError, match="must differ"):
        runstream.init(project=project, id="a", fork_from="a?_step=1", **sdk)
    with pytest.raises(ValueError, match="must be that run's"):
        runstream.init(project=project, id="b", resume_from="a?_step=1", **sdk)

    with pytest.raises(runstream.Error, match=r"run .*/missing was not found"):
        runstream.init(project=project, fork_from="missing?_step=1", **sdk)
    run = runstream.init(project=project, id="short", **sdk)
    for step in range(5):
        run.log({"loss": float(step)})
    run.finish()
    with pytest.raises(runstream.Error, match="logged up to step 4, so it cannot be forked at step 9"):
        runstream.init(project=project, fork_from="short?_step=9", **sdk)
    with pytest.raises(runstream.Error, match=r"starts a new run, but run .*/short exists: use another id"):
        runstream.init(project=project, id="short", fork_from="other?_step=1", **sdk)
    with pytest.raises(runstream.Error, match="cannot be rewound to step 9"):
        runstream.init(project=project, resume_from="short?_step=9", **sdk)
    with pytest.raises(runstream.Error, match="resume='must'"):
        runstream.init(project=project, resume_from="nothere?_step=1", **sdk)


# -- composition at every resolution, against a plain run that logged the composed history ----------------


def _metrics(run_id: str, project: str, seq: int, steps: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    data = {"step": steps.tolist(), "time": (1_700_000_000.0 + steps).tolist(), "values": {"loss": values.tolist()}}
    return make_event(events.METRICS, data, seq=seq, run_id=run_id, project=project)


def _start(run_id: str, project: str, seq: int, **data: Any) -> dict[str, Any]:
    return make_event(events.RUN_START, {"name": run_id, **data}, seq=seq, run_id=run_id, project=project)


def _same_series(chart: dict[str, Any], run_id: str, reference: str) -> None:
    by_run = {s["run_id"]: s for s in chart["series"]}
    got, want = by_run[run_id], by_run[reference]
    assert (got["level"], got["bucket_steps"]) == (want["level"], want["bucket_steps"])
    for field in ("step", "count", "min", "max", "y"):
        np.testing.assert_array_equal(got[field], want[field], err_msg=field)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-12)
    np.testing.assert_array_equal(got["x"], want["x"])


@pytest.mark.parametrize("points", [40, 200, 700, 5000])
def test_charts_and_exports_of_forks_and_rewinds_match_a_run_that_logged_the_composed_history(api, points):
    """Cut points inside buckets (1003, 2500) at every source a chart may read: raw points, raw points bucketed
    on the fly, and stored levels whose edge buckets a segment bound cuts through."""
    project = unique("levels")
    headers = api.key(TEAM, "alice")
    rng = np.random.default_rng(7)
    parent_steps = np.arange(0, 4000)
    parent_values = rng.normal(size=len(parent_steps))
    fork_steps = np.arange(1004, 3500)
    fork_values = rng.normal(size=len(fork_steps)) + 5
    rewound_steps = np.arange(2501, 3100)
    rewound_values = rng.normal(size=len(rewound_steps)) - 5
    sent = [
        _start("parent", project, 1),
        _metrics("parent", project, 2, parent_steps, parent_values),
        _start("fork", project, 1, fork={"run_id": "parent", "step": 1003}),
        _metrics("fork", project, 2, fork_steps, fork_values),
        _start("fork", project, 3, resumed=True, rewind={"step": 2500}),  # then the fork is rewound
        _metrics("fork", project, 4, rewound_steps, rewound_values),
    ]
    # The reference logged the composed history itself.
    cut = fork_steps <= 2500
    ref_steps = np.concatenate([parent_steps[:1004], fork_steps[cut], rewound_steps])
    ref_values = np.concatenate([parent_values[:1004], fork_values[cut], rewound_values])
    sent += [_start("reference", project, 1), _metrics("reference", project, 2, ref_steps, ref_values)]
    assert api.ingest(sent, headers).status_code == 200

    segments = lineage.resolve(api.storage, TEAM, project, ["fork"])["fork"]
    assert segments == [
        lineage.Segment("parent", 0, 1003),
        lineage.Segment("fork", 1004, 2500),
        lineage.Segment("fork~r3", 2501, lineage.MAX_STEP),  # the rewind's run_start had seq 3
    ]
    for x in ("step", "time"):
        chart = series.series(api.storage, TEAM, project, ["fork", "reference", "parent"], ["loss"], points, x=x)
        _same_series(chart, "fork", "reference")
    zoom = series.series(api.storage, TEAM, project, ["fork", "reference"], ["loss"], points, step_range=(900, 2700))
    _same_series(zoom, "fork", "reference")
    bands = series.group_bands(api.storage, TEAM, project, {"f": ["fork"], "r": ["reference"]}, "loss", points)
    f, r = bands["groups"]
    for field in ("x", "mean", "min", "max"):
        np.testing.assert_allclose(f[field], r[field], rtol=1e-12, err_msg=field)

    fork_stats = history.run_statistics(api.storage, TEAM, project, "fork")["metrics"]["loss"]
    ref_stats = history.run_statistics(api.storage, TEAM, project, "reference")["metrics"]["loss"]
    assert fork_stats.pop("mean") == pytest.approx(ref_stats.pop("mean"), rel=1e-12)
    assert fork_stats == ref_stats

    page = history.history_page(api.storage, TEAM, project, "fork", ["loss"], page_size=1000)
    assert page["step"] == ref_steps[:1000].tolist() and page["columns"]["loss"] == ref_values[:1000].tolist()
    rows = history.sampled_history(api.storage, TEAM, project, "fork", ["loss"], 10_000)
    assert rows["step"] == ref_steps.tolist()
    original = history.sampled_history(api.storage, TEAM, project, "fork", ["loss"], 10_000, rewinds=0)
    assert original["step"] == np.concatenate([parent_steps[:1004], fork_steps]).tolist()

    data = b"".join(export.export_history(api.storage, TEAM, project, ["fork", "reference"], format="arrow"))
    import pyarrow as pa

    table = pa.ipc.open_stream(data).read_all()
    for name in ("fork", "reference"):
        mine = table.filter(pa.compute.equal(table["run_id"].cast(pa.string()), name))
        assert mine["step"].to_pylist() == ref_steps.tolist()
        assert mine["value"].to_pylist() == ref_values.tolist()


def _csv(chunks: Iterator[bytes]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))


def test_a_late_event_of_the_session_before_a_rewind_stays_in_the_replaced_history(api):
    """Segments are chosen by seq: an event of the earlier session delivered after the rewind (a late sync)
    joins the history the rewind replaced, and a redelivered batch changes nothing."""
    project = unique("late")
    headers = api.key(TEAM, "alice")
    first = [_start("r", project, 1), _metrics("r", project, 2, np.arange(0, 10), np.arange(0.0, 10.0))]
    rewound = [
        _start("r", project, 10, resumed=True, rewind={"step": 4}),
        _metrics("r", project, 11, np.arange(5, 8), np.array([50.0, 60.0, 70.0])),
    ]
    late = [_metrics("r", project, 3, np.arange(10, 13), np.array([10.0, 11.0, 12.0]))]
    for batch in (first, rewound, late, rewound + late):  # the last one: a redelivery
        assert api.ingest(batch, headers).status_code == 200

    page = history.history_page(api.storage, TEAM, project, "r", ["loss"])
    assert (page["step"], page["columns"]["loss"]) == ([0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 50, 60, 70])
    before = history.history_page(api.storage, TEAM, project, "r", ["loss"], rewinds=0)
    assert before["step"] == list(range(13)) and before["columns"]["loss"][10:] == [10.0, 11.0, 12.0]
    assert [r.step for r in lineage.lineages(api.storage, TEAM, project, ["r"])["r"].rewinds] == [4]


def test_a_fork_reads_as_ints_only_what_every_run_of_its_history_logged_as_ints(api):
    project = unique("ints")
    headers = api.key(TEAM, "alice")

    def ints(run_id: str, seq: int, steps: list[int], values: list[Any]) -> dict[str, Any]:
        data = {"step": steps, "time": [1_700_000_000.0 + s for s in steps], "values": {"epoch": values}}
        return make_event(events.METRICS, data, seq=seq, run_id=run_id, project=project)

    sent = [
        _start("p", project, 1),
        ints("p", 2, [0, 1, 2], [0, 1, 2]),
        _start("f", project, 1, fork={"run_id": "p", "step": 1}),
        ints("f", 2, [2, 3], [1.5, 2.5]),
    ]
    assert api.ingest(sent, headers).status_code == 200
    assert history.integer_metrics(api.storage, TEAM, project, "p", ["epoch"]) == {"epoch"}
    assert history.integer_metrics(api.storage, TEAM, project, "f", ["epoch"]) == set()  # 1.5 stays 1.5
    page = api.http.get(f"/api/v1/runs/{TEAM}/{project}/f/history/scan", params={"keys": "epoch"}, headers=headers)
    assert page.json()["columns"]["epoch"] == [0, 1, 1.5, 2.5]


# -- review findings: plain runs untouched, routing by the rewind marker, forks on first start only ----------


def _summary(api: ApiHarness, project: str, run_id: str) -> dict[str, str]:
    sql = "SELECT summary FROM run_summaries FINAL WHERE team = {t:String} AND project = {p:String} AND run_id = {r:String}"
    rows = api.storage.query(sql, parameters={"t": TEAM, "p": project, "r": run_id}).result_rows
    return dict(rows[0][0]) if rows else {}


def _values(run_id: str, project: str, seq: int, steps: list[int], values: dict[str, list[Any]], **data: Any):
    payload = {"step": steps, "time": [1_700_000_000.0 + s for s in steps], "values": values, **data}
    return make_event(events.METRICS, payload, seq=seq, run_id=run_id, project=project)


def test_a_plain_run_that_logs_a_step_again_keeps_its_last_value(api):
    """A resumed plain run relogs a step: its statistics are restated, its last value is the one it had
    (a NaN stays NaN, an int above 2**53 stays exact), as before lineage."""
    project = unique("plain")
    headers = api.key(TEAM, "alice")
    big = 2**53 + 1
    batches = [
        [_start("r", project, 1), _values("r", project, 2, [0, 1, 2], {"loss": [1.0, 2.0, "NaN"], "n": [1, 2, big]})],
        [_values("r", project, 3, [1], {"loss": [5.0], "n": [7]})],  # step 1 again
        [_values("r", project, 4, [3], {"acc": [0.5]})],
    ]
    for batch in batches:
        assert api.ingest(batch, headers).status_code == 200
    summary = _summary(api, project, "r")
    assert (summary["loss"], summary["n"], summary["acc"]) == ('"NaN"', str(big), "0.5")
    stats = history.run_statistics(api.storage, TEAM, project, "r")["metrics"]
    assert (stats["n"]["min"], stats["n"]["max"], stats["n"]["count"]) == (1, big - 1, 3)  # restated (Float64)
    assert stats["loss"]["count"] == 2 and stats["loss"]["max"] == 5.0
    assert lineage.lineages(api.storage, TEAM, project, ["r"]) == {}


def test_a_rewound_sessions_metrics_read_before_its_run_start_land_in_its_segment(api):
    """The SDK puts the rewind's marker (its run_start's seq and step) into every metrics event of the session:
    read before the run_start (another topic), they still go to the rewind's segment and record the rewind;
    the history the rewind replaced is kept, and a redelivery cut otherwise changes nothing."""
    project = unique("marker")
    headers = api.key(TEAM, "alice")
    marker = {"rewind": {"seq": 10, "step": 9}}
    first = [
        _start("r", project, 1),
        _values("r", project, 2, list(range(20)), {"loss": [float(s) for s in range(20)]}),
    ]
    early = [_values("r", project, 11, list(range(10, 15)), {"loss": [1000.0 + s for s in range(10, 15)]}, **marker)]
    start = [_start("r", project, 10, resumed=True, rewind={"step": 9})]
    later = [_values("r", project, 12, [15, 16, 17], {"loss": [1015.0, 1016.0, 1017.0]}, **marker)]
    for batch in (first, early, start, later, early + start + later, later + early):
        assert api.ingest(batch, headers).status_code == 200

    composed = {s: float(s) for s in range(10)} | {s: 1000.0 + s for s in range(10, 18)}
    page = history.history_page(api.storage, TEAM, project, "r", ["loss"])
    assert dict(zip(page["step"], page["columns"]["loss"])) == composed
    before = history.history_page(api.storage, TEAM, project, "r", ["loss"], rewinds=0)
    assert dict(zip(before["step"], before["columns"]["loss"])) == {s: float(s) for s in range(20)}
    found = lineage.lineages(api.storage, TEAM, project, ["r"])["r"]
    assert [(r.step, r.seq) for r in found.rewinds] == [(9, 10)]
    assert _stored_points(api, project, "r") == 20 and _stored_points(api, project, "r~r10") == 8
    stats = history.run_statistics(api.storage, TEAM, project, "r")["metrics"]["loss"]
    assert (stats["count"], stats["min"], stats["max"], stats["last"], stats["last_step"]) == (
        18,
        0.0,
        1017.0,
        1017.0,
        17,
    )
    assert _summary(api, project, "r")["loss"] == "1017.0"


def test_the_sdk_marks_the_metrics_of_a_rewound_session(tmp_path):
    import orjson

    from runstream.sender import RunIdentity, Sender
    from runstream.summary import MetricStats

    class Spool:  # what the sender spools, in order
        dir = tmp_path
        write_error = None
        held_events = dropped_events = 0

        def __init__(self) -> None:
            self.sent: list[events.Event] = []

        def append(self, topic: str, raw: bytes) -> None:
            self.sent.append(events.validate(orjson.loads(raw)))

        def flush(self) -> None:
            pass

    spool = Spool()
    sender = Sender(
        RunIdentity(TEAM, "p", "r"),
        spool,
        None,
        seq_start=100,
        stats=MetricStats(),
        files_dir=tmp_path,
    )
    sender.put(events.RUN_START, {"name": "r", "resumed": True, "rewind": {"step": 9}})
    sender.rows.append((10, 1.0, {"loss": 1.0}))
    sender.drain()
    sender.rows.append((11, 2.0, {"loss": 2.0}))
    sender.drain()
    assert [(e.type, e.seq) for e in spool.sent] == [("run_start", 100), ("metrics", 101), ("metrics", 102)]
    assert [e.data["rewind"] for e in spool.sent[1:]] == [{"seq": 100, "step": 9}] * 2


def test_a_fork_is_taken_from_a_runs_first_start_only(api):
    """A later start of an existing run carrying ``fork`` changes nothing (its history stays whole, no cycle
    can be made); a fork whose metrics are read before its run_start is a fork all the same."""
    project = unique("first")
    headers = api.key(TEAM, "alice")
    ten = list(range(10))
    sent = [
        _start("a", project, 1),
        _values("a", project, 2, ten, {"loss": [float(s) for s in ten]}),
        _start("c", project, 1),
        _values("c", project, 2, ten, {"loss": [1.0] * 10}),
    ]
    assert api.ingest(sent, headers).status_code == 200
    # The fork's metrics come first (their own topic), then its first start.
    assert api.ingest([_values("b", project, 2, [4, 5, 6], {"loss": [2.0] * 3})], headers).status_code == 200
    assert api.ingest([_start("b", project, 1, fork={"run_id": "c", "step": 3})], headers).status_code == 200
    later = [
        _start("a", project, 10, resumed=True, fork={"run_id": "c", "step": 5}),
        _start("c", project, 10, resumed=True, fork={"run_id": "b", "step": 6}),  # would close a cycle
    ]
    assert api.ingest(later, headers).status_code == 200

    found = lineage.lineages(api.storage, TEAM, project, ["a", "b", "c"])
    assert list(found) == ["b"] and (found["b"].fork_run_id, found["b"].fork_step) == ("c", 3)
    assert history.history_page(api.storage, TEAM, project, "a", ["loss"])["step"] == ten
    assert history.history_page(api.storage, TEAM, project, "c", ["loss"])["step"] == ten
    b = history.history_page(api.storage, TEAM, project, "b", ["loss"])
    assert (b["step"], b["columns"]["loss"]) == (list(range(7)), [1.0] * 4 + [2.0] * 3)
    stats = history.run_statistics(api.storage, TEAM, project, "b")["metrics"]["loss"]
    assert (stats["count"], stats["first_step"], stats["last_step"]) == (7, 0, 6)
    detail = api.http.get(f"/api/v1/runs/{TEAM}/{project}/a", headers=headers).json()
    assert detail["fork"] is None


def test_a_metric_logged_only_in_the_replaced_history_leaves_the_summary(api):
    project = unique("stale")
    headers = api.key(TEAM, "alice")
    sent = [
        _start("r", project, 1),
        _values("r", project, 2, list(range(20)), {"loss": [float(s) for s in range(20)]}),
        _values("r", project, 3, [15], {"val": [0.9]}),  # after the rewind step, not logged again
    ]
    rewound = [
        _start("r", project, 10, resumed=True, rewind={"step": 9}),
        _values("r", project, 11, [10, 11, 12], {"loss": [100.0, 101.0, 102.0]}, rewind={"seq": 10, "step": 9}),
    ]
    for batch in (sent, rewound):
        assert api.ingest(batch, headers).status_code == 200
    assert _summary(api, project, "r") == {"loss": "102.0"}
    stats = history.run_statistics(api.storage, TEAM, project, "r")
    assert list(stats["metrics"]) == ["loss"] and stats["last_step"] == 12
    assert history.run_metrics(api.storage, TEAM, project, "r") == ["loss"]


def test_a_plain_runs_reads_resolve_once_and_filter_by_its_id(api, monkeypatch):
    project = unique("perf")
    headers = api.key(TEAM, "alice")
    sent = [_start("r", project, 1), _values("r", project, 2, list(range(50)), {"loss": [1.0] * 50})]
    assert api.ingest(sent, headers).status_code == 200
    seen: list[str] = []
    for name in ("query", "raw_query", "query_arrow"):
        original = getattr(api.storage, name)

        def spy(sql, *args, _original=original, **kwargs):
            seen.append(sql)
            return _original(sql, *args, **kwargs)

        monkeypatch.setattr(api.storage, name, spy)
    for call in (
        lambda: history.history_page(api.storage, TEAM, project, "r"),
        lambda: history.sampled_history(api.storage, TEAM, project, "r", None, 10),
    ):
        seen.clear()
        call()
        assert sum("run_lineage" in sql for sql in seen) == 1
        assert not any("seg_ids" in sql for sql in seen)  # the plain run's SQL, as before lineage
    monkeypatch.undo()
    resolved: list[list[str]] = []
    lineages = lineage.lineages

    def counted(client, team, project, run_ids):
        resolved.append(list(run_ids))
        return lineages(client, team, project, run_ids)

    monkeypatch.setattr(lineage, "lineages", counted)
    for path in ("history", "history/scan"):
        resolved.clear()
        assert api.http.get(f"/api/v1/runs/{TEAM}/{project}/r/{path}", headers=headers).status_code == 200
        assert resolved == [["r"]], path  # once per request


def test_a_run_is_rewound_at_most_max_rewinds_times(api, server, tmp_path):
    import runstream

    project = unique("cap")
    headers = api.key(TEAM, "alice")
    sent = [_start("r", project, 1), _values("r", project, 2, list(range(10)), {"loss": [1.0] * 10})]
    sent += [_start("r", project, 10 + k, resumed=True, rewind={"step": 5}) for k in range(lineage.MAX_REWINDS + 1)]
    assert api.ingest(sent, headers).status_code == 200
    found = lineage.lineages(api.storage, TEAM, project, ["r"])["r"]
    assert len(found.rewinds) == lineage.MAX_REWINDS  # the one over it is ignored
    with pytest.raises(runstream.Error, match=f"rewound {lineage.MAX_REWINDS} times, the most a run may be"):
        runstream.init(project=project, resume_from="r?_step=3", **_sdk(api, server, tmp_path))


def test_fork_from_with_a_key_of_scope_ingest_names_the_scope(api, server, tmp_path):
    import runstream
    from runstream.storage import accounts

    project = unique("scope")
    assert (
        api.ingest(
            [_start("p", project, 1), _values("p", project, 2, [0, 1], {"loss": [1.0, 2.0]})], api.key(TEAM, "alice")
        ).status_code
        == 200
    )
    _, key = accounts.create_key(api.storage, TEAM, "alice", "job", scope="ingest")
    sdk = {"entity": TEAM, "dir": tmp_path, "settings": {**QUIET, "url": server, "api_key": key}}
    with pytest.raises(runstream.Error, match="a key of scope ingest cannot ask the server") as raised:
        runstream.init(project=project, fork_from="p?_step=1", **sdk)
    assert "retry" not in str(raised.value)


def test_a_composed_runs_export_is_cut_into_chunks_like_a_plain_runs(api):
    project = unique("chunks")
    headers = api.key(TEAM, "alice")
    steps = list(range(40))
    sent = [
        _start("p", project, 1),
        _values("p", project, 2, steps, {"loss": [float(s) for s in steps], "acc": [s / 100 for s in steps]}),
        _start("f", project, 1, fork={"run_id": "p", "step": 19}),
        _values("f", project, 2, steps[20:], {"loss": [100.0 + s for s in steps[20:]]}),
        _start("f", project, 3, resumed=True, rewind={"step": 29}),
        _values(
            "f", project, 4, steps[30:35], {"loss": [200.0 + s for s in steps[30:35]]}, rewind={"seq": 3, "step": 29}
        ),
    ]
    assert api.ingest(sent, headers).status_code == 200
    chunks = list(export._plan_chunks(api.storage, TEAM, project, ["f", "p"], None, 8))
    composed = [c for c in chunks if c.segments is not None]
    assert len(composed) > 2 and all(c.runs == ["f"] for c in composed)  # before: one unbounded chunk
    want = (
        [("f", "acc", s, s / 100) for s in range(20)]
        + [("f", "loss", s, float(s)) for s in range(20)]
        + [("f", "loss", s, 100.0 + s) for s in range(20, 30)]
        + [("f", "loss", s, 200.0 + s) for s in range(30, 35)]
    )
    for chunk_points in (8, 1000):
        rows = _csv(export.export_history(api.storage, TEAM, project, ["f"], format="csv", chunk_points=chunk_points))
        assert [(r["run_id"], r["metric"], int(r["step"]), float(r["value"])) for r in rows] == want
