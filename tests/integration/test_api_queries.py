"""The read endpoints (runs, history, charts, logs, exports) on the real engine, through the ingest endpoint.

A small project of six runs is ingested once per module (configs, tags, groups,
metrics with NaN, infinities, a sparse key and a spike; system samples of four
runs, one with a NaN; console lines and files for one run), and every answer is
compared with ground truth computed from what was sent. Tests that edit runs use
a project of their own.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from runstream import events
from runstream.storage import accounts
from runstream.storage import series as charts
from tests.conftest import ApiHarness
from tests.helpers import ServedApp, fresh_chdb_dsn, make_event

TEAM, PROJECT = "acme", "mnist"
T0 = time.time() - 3600
LRS = [0.1, 0.01, 0.001, 0.01, 0.1, 0.03]
OPTS = ["sgd", "adam", "adam", "sgd", "adam", "sgd"]
SPIKE = ("r2", 33, 50.0)


@dataclass
class Run:
    run_id: str
    created: float
    config: dict[str, Any]
    tags: list[str]
    group: str
    state: str
    points: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> step -> value
    times: dict[int, float] = field(default_factory=dict)  # step -> time
    summary_extra: dict[str, Any] = field(default_factory=dict)
    system: dict[str, dict[float, float]] = field(default_factory=dict)  # system metric -> time -> value


class Events:
    """Event dicts of one run, with its seq counting up."""

    def __init__(self, run_id: str, project: str = PROJECT) -> None:
        self.run_id, self.project, self.seq = run_id, project, 0

    def __call__(self, type: str, data: dict[str, Any], ts: float) -> dict[str, Any]:
        self.seq += 1
        return make_event(type, data, seq=self.seq, run_id=self.run_id, team=TEAM, project=self.project, ts=ts)


def _wire(value: float | None) -> Any:
    return None if value is None else events.encode_value(value)


def metrics_events(run: Run, send: Events, batch: int = 25) -> list[dict[str, Any]]:
    steps = sorted(run.times)
    names = sorted(run.points)
    out = []
    for i in range(0, len(steps), batch):
        chunk = steps[i : i + batch]
        values = {m: [_wire(run.points[m].get(s)) for s in chunk] for m in names}
        out.append(
            send(
                events.METRICS,
                {"step": chunk, "time": [run.times[s] for s in chunk], "values": values},
                run.times[chunk[-1]],
            )
        )
    return out


def build_run(i: int) -> Run:
    created = T0 + 10 * i
    state = {0: "finished", 1: "finished", 2: "failed", 3: "finished"}.get(i, "running")
    tags = ["baseline"] if i % 2 == 0 else (["sweep", "big"] if i == 3 else [])
    run = Run(f"r{i}", created, {"lr": LRS[i], "opt": {"name": OPTS[i]}, "layers": i}, tags, f"g{i % 2}", state)
    n = 40 + 15 * i
    run.times = {s: created + 1 + s * 0.5 for s in range(n)}
    run.points["loss"] = {s: 1 / (s + 1) + i * 0.01 for s in range(n)}
    run.points["acc"] = {s: s / n for s in range(n)}
    run.points["val_loss"] = {s: 2 / (s + 1) for s in range(0, n, 10)}  # sparse
    if i == 1:
        run.points["loss"][5] = math.nan
        run.points["loss"][6] = math.inf
        run.points["acc"][7] = -math.inf
    if i == 3:
        del run.points["acc"][7]  # a row with loss but not acc
    if run.run_id == SPIKE[0]:
        run.points["loss"][SPIKE[1]] = SPIKE[2]
    run.summary_extra = {"best_acc": max(run.points["acc"].values())}
    if i == 0:
        run.system = {"cpu": {created + s: 2.0 * s for s in range(30)}, "mem": {created + s: 1e9 for s in range(30)}}
    elif i <= 3:  # r1-r3: more runs with system samples, of different lengths; r2 and r3 have a GPU
        times = [created + 2 + 1.5 * s for s in range(20 + 10 * i)]
        run.system["cpu"] = {t: 10.0 * i + s for s, t in enumerate(times)}
        if i >= 2:
            run.system["gpu.0.util"] = {
                t: math.nan if (i, s) == (2, 3) else 40.0 + i + s % 7 for s, t in enumerate(times)
            }
    return run


def run_events(run: Run, project: str = PROJECT) -> list[dict[str, Any]]:
    send = Events(run.run_id, project)
    out = [
        send(
            events.RUN_START,
            {
                "name": f"name-{run.run_id}",
                "config": run.config,
                "tags": run.tags,
                "group": run.group,
                "job_type": "train",
                "host": "gpu-1",
            },
            run.created,
        )
    ]
    out += metrics_events(run, send)
    end = max(run.times.values()) + 1
    out.append(send(events.RUN_UPDATE, {"summary": run.summary_extra}, end))
    if run.state != "running":
        out.append(
            send(events.RUN_FINISH, {"state": run.state, "exit_code": 1 if run.state == "failed" else 0}, end + 1)
        )
    return out


def system_event(run: Run, send: Events) -> dict[str, Any]:
    times = sorted({t for samples in run.system.values() for t in samples})
    values = {m: [_wire(samples.get(t)) for t in times] for m, samples in sorted(run.system.items())}
    return send(events.SYSTEM, {"time": times, "values": values}, times[-1])


def logs_events(run: Run) -> list[dict[str, Any]]:
    send = Events(run.run_id)
    send.seq = 1000
    t = run.created
    sha = "ab" * 32
    return [
        system_event(run, send),
        send(
            events.CONSOLE,
            {
                "time": [t + k for k in range(12)],
                "stream": ["stdout"] * 11 + ["stderr"],
                "line": [f"epoch {k} done" if k % 4 else f"ERROR at {k}" for k in range(12)],
            },
            t + 12,
        ),
        send(events.FILE, {"path": "model.pt", "kind": "file", "size": 10, "sha256": sha, "store_key": "model.pt"}, t),
        *[
            send(
                events.FILE,
                {
                    "path": f"media/images/samples_{s}.png",
                    "kind": "media",
                    "size": 3,
                    "sha256": sha,
                    "store_key": f"media/images/samples_{s}.png",
                    "step": s,
                    "media_type": "image/png",
                    "meta": {"key": "samples"},
                },
                t,
            )
            for s in (2, 1)
        ],
    ]


@dataclass
class Project:
    api: ApiHarness
    member: dict[str, str]
    viewer: dict[str, str]
    rival: dict[str, str]
    runs: dict[str, Run]

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any):
        return self.api.http.get(f"/api/v1{path}", params=params, headers=self.member if headers is None else headers)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None):
        return self.api.http.post(f"/api/v1{path}", json=body, headers=self.member if headers is None else headers)

    def ok(self, response) -> Any:
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def project(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    harness = ApiHarness(fresh_chdb_dsn(chdb_dir), tmp_path_factory.mktemp("api"))
    try:
        member = harness.key(TEAM, "alice", "member")
        viewer = harness.key(TEAM, "vic", "viewer")
        rival = harness.key("rival", "mallory", "admin")
        runs = {r.run_id: r for r in map(build_run, range(6))}
        batch = [e for run in runs.values() for e in run_events(run)] + logs_events(runs["r0"])
        for run in (runs["r1"], runs["r2"], runs["r3"]):
            send = Events(run.run_id)
            send.seq = 1000
            batch.append(system_event(run, send))
        response = harness.ingest(batch, member)
        assert response.status_code == 200, response.text
        yield Project(harness, member, viewer, rival, runs)
    finally:
        harness.close()


def expect_error(response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"} and error["message"]
    if code:
        assert error["code"] == code
    return error


# -- runs ---------------------------------------------------------------------------------------


RUN_KEYS = {
    "team",
    "project",
    "id",
    "name",
    "state",
    "config",
    "summary",
    "tags",
    "group",
    "job_type",
    "notes",
    "created_at",
    "updated_at",
    "heartbeat_at",
    "finished_at",
    "exit_code",
    "user",
    "host",
    "program",
    "args",
    "python",
    "git",
    "error",
    "metrics",
    "sweep",
}
#: The run detail adds the run's lineage: the run it was forked from (or null) and its rewinds.
DETAIL_KEYS = RUN_KEYS | {"fork", "rewinds"}


def test_run_has_the_documented_shape(project):
    r1 = project.runs["r1"]
    run = project.ok(project.get(f"/runs/{TEAM}/{PROJECT}/r1"))
    assert set(run) == DETAIL_KEYS and (run["fork"], run["rewinds"]) == (None, [])
    assert (run["team"], run["project"], run["id"], run["name"]) == (TEAM, PROJECT, "r1", "name-r1")
    assert run["config"] == r1.config and run["tags"] == r1.tags and run["group"] == "g1"
    assert run["state"] == "finished" and run["exit_code"] == 0 and run["job_type"] == "train"
    assert run["created_at"] == pytest.approx(r1.created, abs=1e-3)
    last = max(r1.points["loss"])
    assert run["summary"]["loss"] == pytest.approx(r1.points["loss"][last])
    assert run["summary"]["best_acc"] == pytest.approx(r1.summary_extra["best_acc"])


def test_search_filters_orders_and_walks_pages(project):
    path = f"/projects/{TEAM}/{PROJECT}/runs"
    default = project.ok(project.get(path))
    assert [r["id"] for r in default["runs"]] == [f"r{i}" for i in reversed(range(6))]  # -created_at
    assert default["next_cursor"] is None

    filters = orjson.dumps({"$or": [{"config.lr": {"$gte": 0.03}}, {"tags": "sweep"}]}).decode()
    expected = sorted(
        (r for r in project.runs.values() if r.config["lr"] >= 0.03 or "sweep" in r.tags),
        key=lambda r: (r.config["lr"], r.run_id),
    )
    seen, cursor, pages = [], None, 0
    while True:
        page = project.ok(
            project.get(path, filters=filters, order="+config.lr", limit=2, **({"cursor": cursor} if cursor else {}))
        )
        assert len(page["runs"]) <= 2
        seen += [r["id"] for r in page["runs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [r.run_id for r in expected] and pages == 2

    finished = project.ok(project.get(path, filters='{"state": "finished"}', order="-summary.best_acc"))
    truth = sorted(
        (r for r in project.runs.values() if r.state == "finished"),
        key=lambda r: (-r.summary_extra["best_acc"], r.run_id),
    )
    assert [r["id"] for r in finished["runs"]] == [r.run_id for r in truth]


def test_count_groups_and_keys(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    assert project.ok(project.get(base + "/runs/count")) == {"count": 6}
    assert project.ok(project.get(base + "/runs/count", filters='{"config.opt.name": "adam"}')) == {"count": 3}

    groups = project.ok(
        project.post(base + "/runs/groups", {"by": ["config.opt.name"], "aggregates": ["best_acc"], "run_ids": True})
    )["groups"]
    for group in groups:
        members = sorted(
            r.run_id for r in project.runs.values() if r.config["opt"]["name"] == group["group"]["config.opt.name"]
        )
        assert group["run_ids"] == members and group["count"] == len(members)
        best = [project.runs[m].summary_extra["best_acc"] for m in members]
        assert group["summary"]["best_acc"]["mean"] == pytest.approx(np.mean(best))
        assert group["summary"]["best_acc"]["max"] == pytest.approx(max(best))
    assert [g["group"]["config.opt.name"] for g in groups] == ["adam", "sgd"]

    catalog = project.ok(project.get(base + "/keys"))
    assert {k["key"] for k in catalog["metric"]} == {"loss", "acc", "val_loss"}
    assert {"lr", "opt.name", "layers"} <= {k["key"] for k in catalog["config"]}
    assert next(k for k in catalog["config"] if k["key"] == "lr")["types"] == ["number"]
    assert {"cpu", "mem"} <= {k["key"] for k in catalog["system"]}


@pytest.mark.parametrize(
    "params, what",
    [
        ({"filters": "{not json"}, "JSON"),
        ({"filters": "[1]"}, "object"),
        ({"filters": '{"nope.x": 1}'}, "field"),
        ({"filters": '{"config.x": {"$regex": "("}}'}, "regular expression"),
        ({"order": "+tags"}, "tags"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
    ],
)
def test_bad_search_arguments_are_400(project, params, what):
    error = expect_error(project.get(f"/projects/{TEAM}/{PROJECT}/runs", **params), 400)
    assert what.lower() in error["message"].lower()


def test_bad_chart_history_and_export_arguments_are_400(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    for body in (
        {"metrics": ["loss"], "points": 1},
        {"metrics": ["loss"], "x": "sideways"},
        {"metrics": []},
        {"metrics": ["loss"], "run_ids": ["r1"], "filters": {}},
        {"metrics": ["loss"], "filters": {"bad.x": 1}},
        {"metrics": ["loss"], "step_range": [5, 1]},
        {"metrics": ["loss"], "colour": "red"},
        {"metrics": ["loss"], "x": "metric"},
        {"metrics": ["loss"], "fields": ["colour"]},
    ):
        expect_error(project.post(base + "/series", body), 400)
    expect_error(project.api.http.post(f"/api/v1{base}/series", content=b"{nope", headers=project.member), 400)
    expect_error(project.post(base + "/bands", {"metric": "loss", "by": ["tags"]}), 400)
    expect_error(project.post(base + "/bands", {"metric": "loss"}), 400)
    expect_error(project.post(base + "/runs/groups", {"by": ["config.lr"], "aggregates": [3]}), 400)
    expect_error(project.get(base + "/export", format="xlsx"), 400)
    expect_error(project.get(base + "/export", filters='{"bad.x": 1}'), 400, "invalid_query")
    expect_error(project.get(base + "/export", table="runs", metrics="loss"), 400)
    run = f"/runs/{TEAM}/{PROJECT}/r1"
    expect_error(project.get(run + "/history", samples="0"), 400)
    expect_error(project.get(run + "/history/scan", cursor="-1"), 400)
    expect_error(project.get(run + "/history/scan", page_size="100001"), 400)
    expect_error(project.get(run + "/export", format="xml"), 400)
    expect_error(project.get(run + "/console", q="(", regex="1"), 400)
    expect_error(project.get(run + "/media"), 400)


# -- access ----------------------------------------------------------------------------------------


def test_missing_runs_and_other_teams_projects_are_404(project):
    run = f"/runs/{TEAM}/{PROJECT}"
    for suffix in ("", "/history", "/history/scan", "/metrics", "/system", "/console", "/files", "/export"):
        expect_error(project.get(f"{run}/ghost{suffix}"), 404, "not_found")
    expect_error(project.get(f"{run}/ghost/media", key="samples"), 404)
    expect_error(project.api.http.patch(f"/api/v1{run}/ghost", json={"tags": ["x"]}, headers=project.member), 404)

    rival = project.rival
    base = f"/projects/{TEAM}/{PROJECT}"
    for response in (
        project.get(base + "/runs", rival),
        project.get(base + "/runs/count", rival),
        project.get(base + "/keys", rival),
        project.get(base + "/export", rival),
        project.post(base + "/series", {"metrics": ["loss"]}, rival),
        project.post(base + "/bands", {"metric": "loss", "by": ["group"]}, rival),
        project.post(base + "/system", {"metrics": ["cpu"]}, rival),
        project.post(base + "/runs/groups", {"by": ["group"]}, rival),
        project.get(f"{run}/r1", rival),
        project.get(f"{run}/r1/history", rival),
        project.get(f"{run}/r1/export", rival),
        project.get(f"{run}/r1", {}),
    ):
        expect_error(response, 404, "not_found")
    expect_error(project.get(f"{run}/r1", {"Authorization": "Bearer rs_nope_nope"}), 401)


def test_viewers_read_but_do_not_edit_and_public_projects_read_only(project):
    path = f"/api/v1/runs/{TEAM}/{PROJECT}/r1"
    assert project.ok(project.get(f"/runs/{TEAM}/{PROJECT}/r1", project.viewer))["id"] == "r1"
    expect_error(project.api.http.patch(path, json={"tags": ["x"]}, headers=project.viewer), 403, "forbidden")

    accounts.upsert_project(project.api.storage, TEAM, "open", "public")
    open_run = build_run(0)
    assert project.api.ingest(run_events(open_run, "open"), project.member).status_code == 200
    assert project.ok(project.get(f"/runs/{TEAM}/open/r0", project.rival))["id"] == "r0"
    assert project.ok(project.get(f"/runs/{TEAM}/open/r0", {}))["id"] == "r0"  # anonymous reads public
    expect_error(
        project.api.http.patch(f"/api/v1/runs/{TEAM}/open/r0", json={"tags": ["x"]}, headers=project.rival), 403
    )
    expect_error(project.api.http.patch(f"/api/v1/runs/{TEAM}/open/r0", json={"tags": ["x"]}), 401)


# -- edits -------------------------------------------------------------------------------------------


def test_edit_round_trips_and_later_sdk_updates_still_apply(api):
    member = api.key(TEAM, "alice", "member")
    run = build_run(0)
    sent = run_events(run, "edits")
    assert api.ingest(sent, member).status_code == 200
    path = f"/api/v1/runs/{TEAM}/edits/r0"

    edited = api.http.patch(path, json={"tags": ["keep", "best", "keep"], "notes": "lr too high"}, headers=member)
    assert edited.status_code == 200, edited.text
    assert edited.json()["tags"] == ["keep", "best"] and edited.json()["notes"] == "lr too high"
    again = api.http.get(path, headers=member).json()
    assert (again["tags"], again["notes"]) == (["keep", "best"], "lr too high")
    assert set(again) == DETAIL_KEYS

    notes_only = api.http.patch(path, json={"notes": None}, headers=member).json()
    assert (notes_only["tags"], notes_only["notes"]) == (["keep", "best"], "")

    # The SDK goes on: its next update (a later seq) still applies, and leaves the edited tags alone.
    seq = max(e["seq"] for e in sent)
    later = make_event(
        events.RUN_UPDATE,
        {"name": "renamed", "summary": {"final": 1.5}},
        seq=seq + 1,
        run_id="r0",
        team=TEAM,
        project="edits",
        ts=time.time(),
    )
    assert api.ingest([later], member).status_code == 200
    after = api.http.get(path, headers=member).json()
    assert (after["name"], after["summary"]["final"], after["tags"]) == ("renamed", 1.5, ["keep", "best"])
    tags = make_event(
        events.RUN_UPDATE, {"tags": ["from-sdk"]}, seq=seq + 2, run_id="r0", team=TEAM, project="edits", ts=time.time()
    )
    assert api.ingest([tags], member).status_code == 200
    assert api.http.get(path, headers=member).json()["tags"] == ["from-sdk"]

    for body in ({}, {"tags": "x"}, {"tags": [""]}, {"notes": 3}, {"name": ""}, {"colour": "red"}):
        expect_error(api.http.patch(path, json=body, headers=member), 400)


# -- history ---------------------------------------------------------------------------------------


def truth_columns(run: Run, keys: list[str], steps: list[int] | None = None) -> dict[str, list[Any]]:
    """The columns history answers for ``keys``: rows where any key was logged, contract strings for non-finite."""
    if steps is None:
        steps = sorted({s for k in keys for s in run.points.get(k, {})})
    columns: dict[str, list[Any]] = {"_step": steps, "_timestamp": [run.times[s] for s in steps]}
    for k in keys:
        columns[k] = [_wire(run.points.get(k, {}).get(s)) for s in steps]
    return columns


def assert_columns(actual: dict[str, list[Any]], expected: dict[str, list[Any]]) -> None:
    assert list(actual) == list(expected)
    for name, values in expected.items():
        assert len(actual[name]) == len(values), name
        for a, e in zip(actual[name], values):
            if isinstance(e, float):
                assert a == pytest.approx(e, rel=1e-12, abs=1e-9), name
            else:
                assert a == e, name


def test_history_whole_when_it_fits(project):
    r1 = project.runs["r1"]
    body = project.ok(project.get("/runs/acme/mnist/r1/history", keys="loss,acc,val_loss", samples=10_000))
    assert_columns(body["columns"], truth_columns(r1, ["loss", "acc", "val_loss"]))
    assert body["columns"]["loss"][5:7] == ["NaN", "Infinity"] and body["columns"]["acc"][7] == "-Infinity"

    everything = project.ok(project.get("/runs/acme/mnist/r1/history"))["columns"]  # every metric, sorted
    assert list(everything) == ["_step", "_timestamp", "acc", "loss", "val_loss"]
    sparse = project.ok(project.get("/runs/acme/mnist/r3/history", keys="val_loss"))["columns"]
    assert_columns(sparse, truth_columns(project.runs["r3"], ["val_loss"]))


def test_sampled_history_keeps_extremes_and_first_and_last(project):
    r2 = project.runs["r2"]  # 70 steps, a spike of 50 at step 33
    body = project.ok(project.get("/runs/acme/mnist/r2/history", keys="loss", samples=12))["columns"]
    steps = body["_step"]
    assert len(steps) <= 12 and steps == sorted(steps)
    assert steps[0] == 0 and steps[-1] == max(r2.times)
    assert SPIKE[1] in steps and SPIKE[2] in body["loss"]
    assert min(r2.points["loss"].values()) in body["loss"]
    assert_columns(body, truth_columns(r2, ["loss"], steps))  # every kept row is a real row

    two = project.ok(project.get("/runs/acme/mnist/r2/history", keys="loss,acc", samples=30))["columns"]
    assert len(two["_step"]) <= 30
    assert_columns(two, truth_columns(r2, ["loss", "acc"], two["_step"]))
    assert max(r2.points["acc"].values()) in two["acc"] and SPIKE[2] in two["loss"]
    tiny = project.ok(project.get("/runs/acme/mnist/r2/history", keys="loss,acc", samples=1))["columns"]
    assert len(tiny["_step"]) == 1


def test_scan_history_walks_pages_in_a_step_range(project):
    r3 = project.runs["r3"]
    keys = ["loss", "acc"]
    for bounds, expected_steps in (({}, sorted(r3.times)), ({"min_step": 5, "max_step": 23}, list(range(5, 23)))):
        columns: dict[str, list[Any]] = {}
        cursor, pages = None, 0
        while True:
            page = project.ok(
                project.get(
                    "/runs/acme/mnist/r3/history/scan",
                    keys="loss,acc",
                    page_size=7,
                    **bounds,
                    **({"cursor": cursor} if cursor else {}),
                )
            )
            assert len(page["columns"]["_step"]) <= 7
            for name, values in page["columns"].items():
                columns.setdefault(name, []).extend(values)
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == math.ceil(len(expected_steps) / 7)
        assert_columns(columns, truth_columns(r3, keys, expected_steps))
    assert project.ok(project.get("/runs/acme/mnist/r3/history/scan", max_step=0))["columns"]["_step"] == []


# -- charts ----------------------------------------------------------------------------------------


def test_series_by_ids_and_by_filter_match_the_points(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    body = project.ok(
        project.post(base + "/series", {"run_ids": ["r1", "r0", "ghost"], "metrics": ["loss"], "points": 500})
    )
    assert [s["run_id"] for s in body["series"]] == ["r1", "r0"]  # in the order asked; no data, no entry
    for series in body["series"]:
        run = project.runs[series["run_id"]]
        steps = sorted(run.points["loss"])
        assert series["x"] == steps and series["step"] == steps
        expected = [v if math.isfinite(v) else None for v in (run.points["loss"][s] for s in steps)]
        assert [None if e is None else pytest.approx(e) for e in expected] == series["y"]  # NaN, inf: null
        assert series["count"] == [0 if e is None else 1 for e in expected]
    assert body["series"][0]["y"][5:7] == [None, None]

    adam = project.ok(
        project.post(
            base + "/series",
            {"filters": {"config.opt.name": "adam"}, "metrics": ["loss", "acc"], "points": 10, "x": "time"},
        )
    )
    assert {s["run_id"] for s in adam["series"]} == {"r1", "r2", "r4"}
    assert [s["metric"] for s in adam["series"]] == ["loss"] * 3 + ["acc"] * 3
    for series in adam["series"]:
        run = project.runs[series["run_id"]]
        assert 0 < len(series["x"]) <= 10
        finite = [v for v in run.points[series["metric"]].values() if math.isfinite(v)]
        assert max(v for v in series["max"] if v is not None) == pytest.approx(max(finite))  # spikes survive
        assert min(v for v in series["min"] if v is not None) == pytest.approx(min(finite))
        assert series["x"][-1] == pytest.approx(max(run.times.values()), abs=1e-3)
    lean = project.ok(project.post(base + "/series", {"run_ids": ["r0"], "metrics": ["loss"], "fields": ["x", "max"]}))
    assert set(lean["series"][0]) == {"run_id", "metric", "level", "bucket_steps", "x", "max"}
    empty = project.ok(project.post(base + "/series", {"filters": {"state": "crashed"}, "metrics": ["loss"]}))
    assert empty["series"] == []


def test_bands_by_groups_and_by_fields(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    given = project.ok(
        project.post(
            base + "/bands", {"groups": {"even": ["r0", "r2"], "odd": ["r3", "r5"]}, "metric": "acc", "points": 500}
        )
    )
    assert [g["group"] for g in given["groups"]] == ["even", "odd"]
    for band, members in zip(given["groups"], (["r0", "r2"], ["r3", "r5"])):
        steps = sorted({s for m in members for s in project.runs[m].points["acc"]})
        assert band["x"] == steps
        for k, step in enumerate(steps):
            values = [project.runs[m].points["acc"][step] for m in members if step in project.runs[m].points["acc"]]
            assert band["mean"][k] == pytest.approx(np.mean(values))
            assert band["std"][k] == pytest.approx(np.std(values), abs=1e-12)
            assert band["runs"][k] == len(values)

    by = project.ok(
        project.post(
            base + "/bands", {"by": ["group"], "filters": {"state": {"$ne": "failed"}}, "metric": "loss", "points": 20}
        )
    )
    assert [(g["group"], g["values"], g["run_count"]) for g in by["groups"]] == [
        ("g0", {"group": "g0"}, 2),
        ("g1", {"group": "g1"}, 3),
    ]
    assert all(len(g["x"]) <= 20 for g in by["groups"])


# -- system metrics of many runs -----------------------------------------------------------------------


def assert_system_entry(entry: dict[str, Any], run: Run) -> None:
    """An entry of few samples (fewer than points): one bucket per sample, its start at most a bucket before it."""
    samples = sorted(run.system[entry["metric"]].items())
    values = [None if math.isnan(v) else pytest.approx(v) for _, v in samples]
    assert entry["mean"] == values and entry["min"] == values and entry["max"] == values  # NaN: null
    width = entry["bucket_seconds"]
    assert len(entry["time"]) == len(samples)
    for start, (sample, _) in zip(entry["time"], samples):
        assert start - 1e-3 <= sample < start + width + 1e-3


def test_system_of_many_runs_matches_the_samples_and_each_runs_own_answer(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    body = project.ok(project.post(base + "/system", {"run_ids": ["r3", "r0", "r1", "ghost", "r5"], "points": 500}))
    assert body["points"] == 500
    # By metric, then in the order asked; no samples (ghost, r5), no entry.
    assert [(s["metric"], s["run_id"]) for s in body["series"]] == [
        ("cpu", "r3"),
        ("cpu", "r0"),
        ("cpu", "r1"),
        ("gpu.0.util", "r3"),
        ("mem", "r0"),
    ]
    for entry in body["series"]:
        assert set(entry) == {"run_id", "metric", "bucket_seconds", "time", "mean", "min", "max"}
        assert_system_entry(entry, project.runs[entry["run_id"]])
    # The same numbers as each run's own endpoint: the same query answers both.
    for run_id in ("r0", "r1", "r3"):
        own = project.ok(project.get(f"/runs/{TEAM}/{PROJECT}/{run_id}/system", points=500))["series"]
        assert own == [
            {k: v for k, v in s.items() if k != "run_id"}
            for s in sorted((s for s in body["series"] if s["run_id"] == run_id), key=lambda s: s["metric"])
        ]


def test_system_selects_runs_by_filter_or_all_and_a_subset_of_metrics(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    adam = project.ok(
        project.post(
            base + "/system", {"filters": {"config.opt.name": "adam"}, "metrics": ["gpu.0.util", "cpu", "disk"]}
        )
    )
    # r1, r2, r4 use adam, oldest first; r4 has no samples; r2's GPU sample 3 is NaN: null in every array.
    assert [(s["metric"], s["run_id"]) for s in adam["series"]] == [("cpu", "r1"), ("cpu", "r2"), ("gpu.0.util", "r2")]
    for entry in adam["series"]:
        assert_system_entry(entry, project.runs[entry["run_id"]])
    gpu = adam["series"][2]
    assert (gpu["mean"][3], gpu["min"][3], gpu["max"][3]) == (None, None, None)

    everything = project.ok(project.post(base + "/system", {"metrics": ["cpu"]}))
    assert [s["run_id"] for s in everything["series"]] == ["r0", "r1", "r2", "r3"]  # every run, oldest first
    every_metric = project.ok(project.post(base + "/system", {}))
    assert sorted({s["metric"] for s in every_metric["series"]}) == ["cpu", "gpu.0.util", "mem"]
    none = project.ok(project.post(base + "/system", {"filters": {"state": "crashed"}}))
    assert none == {"points": 500, "series": []}


def test_system_points_bound_each_run_and_keep_its_extremes(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    body = project.ok(
        project.post(base + "/system", {"run_ids": ["r1", "r3"], "metrics": ["cpu", "gpu.0.util"], "points": 5})
    )
    assert len(body["series"]) == 3
    for entry in body["series"]:
        samples = [v for v in project.runs[entry["run_id"]].system[entry["metric"]].values()]
        assert 0 < len(entry["time"]) <= 5 and entry["time"] == sorted(entry["time"])
        assert max(entry["max"]) == pytest.approx(max(samples)) and min(entry["min"]) == pytest.approx(min(samples))
    one = project.ok(project.post(base + "/system", {"run_ids": ["r1"], "metrics": ["cpu"], "points": 1}))["series"][0]
    cpu = list(project.runs["r1"].system["cpu"].values())
    assert len(one["time"]) == 1 and one["mean"] == [pytest.approx(np.mean(cpu))]

    # start and end (inclusive) keep samples 5 to 10 of r1; buckets start at the first sample in the range.
    times = sorted(project.runs["r1"].system["cpu"])
    window = project.ok(
        project.post(
            base + "/system", {"run_ids": ["r1"], "metrics": ["cpu"], "start": times[5] - 0.1, "end": times[10] + 0.1}
        )
    )
    assert window["series"][0]["max"] == [pytest.approx(project.runs["r1"].system["cpu"][t]) for t in times[5:11]]
    later = project.ok(project.post(base + "/system", {"run_ids": ["r1"], "start": times[-1] + 1}))
    assert later["series"] == []


@pytest.mark.parametrize(
    "body, what",
    [
        ({"points": 0}, "points must be an integer from 1 to 10000"),
        ({"points": 10_001}, "points must be an integer from 1 to 10000"),
        ({"points": "many"}, "points must be an integer"),
        ({"points": True}, "points must be an integer"),
        ({"metrics": []}, "metrics must be a non-empty list"),
        ({"metrics": ["cpu", ""]}, "metrics must be a non-empty list"),
        ({"metrics": "cpu"}, "metrics must be a non-empty list"),
        ({"metrics": [f"m{k}" for k in range(1001)]}, "at most 1000 metrics"),
        ({"run_ids": []}, "run_ids must be a non-empty list"),
        ({"run_ids": ["r1"], "filters": {}}, "run_ids or filters, not both"),
        ({"filters": [1]}, "filters must be a filter object"),
        ({"filters": {"nope.x": 1}}, "field"),
        ({"colour": "red"}, "unknown field(s) 'colour'"),
        ({"start": -1}, "start must be a unix time in seconds"),
        ({"end": 1e11}, "end must be a unix time in seconds"),
        ({"start": "yesterday"}, "start must be a unix time in seconds"),
        ({"start": 20, "end": 10}, "start (20) is after end (10)"),
    ],
)
def test_bad_system_arguments_are_400(project, body, what):
    error = expect_error(project.post(f"/projects/{TEAM}/{PROJECT}/system", body), 400)
    assert what.lower() in error["message"].lower()


def test_bad_system_bodies_are_400(project):
    url = f"/api/v1/projects/{TEAM}/{PROJECT}/system"
    assert (
        "not valid JSON"
        in expect_error(project.api.http.post(url, content=b"{nope", headers=project.member), 400)["message"]
    )
    assert "JSON object" in expect_error(project.post(f"/projects/{TEAM}/{PROJECT}/system", ["r1"]), 400)["message"]


def test_system_of_a_private_project_is_read_by_its_team_only(project):
    path = f"/projects/{TEAM}/{PROJECT}/system"
    body = {"run_ids": ["r0"], "metrics": ["cpu"]}
    assert project.ok(project.post(path, body, project.viewer))["series"][0]["run_id"] == "r0"
    # Another team's key and no key learn nothing, not even what is wrong with the request.
    for headers in (project.rival, {}):
        expect_error(project.post(path, body, headers), 404, "not_found")
        expect_error(project.post(path, {"points": 0}, headers), 404, "not_found")
    expect_error(project.post(path, body, {"Authorization": "Bearer rs_nope_nope"}), 401)


# -- a run's logs ------------------------------------------------------------------------------------


def test_metrics_system_console_files_and_media(project):
    run = f"/runs/{TEAM}/{PROJECT}/r0"
    assert project.ok(project.get(run + "/metrics")) == {"metrics": ["acc", "loss", "val_loss"]}

    system = project.ok(project.get(run + "/system", names="cpu", points=100))["series"]
    assert [s["metric"] for s in system] == ["cpu"]
    assert system[0]["max"] == [2.0 * s for s in range(30)]  # fewer samples than points: as they are
    width = system[0]["bucket_seconds"]
    for start, sample in zip(system[0]["time"], (project.runs["r0"].created + s for s in range(30))):
        assert start - 1e-3 <= sample < start + width + 1e-3  # each bucket's start
    assert len(project.ok(project.get(run + "/system", points=5))["series"][0]["time"]) <= 5

    lines = [f"epoch {k} done" if k % 4 else f"ERROR at {k}" for k in range(12)]
    tail = project.ok(project.get(run + "/console", tail=5))
    assert [line["line"] for line in tail["lines"]] == lines[-5:] and tail["lines"][-1]["stream"] == "stderr"
    older = project.ok(project.get(run + "/console", tail=5, cursor=tail["next_cursor"]))
    assert [line["line"] for line in older["lines"]] == lines[-10:-5]
    found = project.ok(project.get(run + "/console", q="error"))
    assert [line["line"] for line in found["lines"]] == [x for x in lines if "ERROR" in x]
    pattern = project.ok(project.get(run + "/console", q=r"^epoch (1|2) ", regex="1"))
    assert [line["line"] for line in pattern["lines"]] == ["epoch 1 done", "epoch 2 done"]

    files = project.ok(project.get(run + "/files"))["files"]
    assert [f["path"] for f in files] == ["media/images/samples_1.png", "media/images/samples_2.png", "model.pt"]
    assert files[2]["url"] == f"/api/v1/files/{TEAM}/{PROJECT}/r0/model.pt"
    assert [f["path"] for f in project.ok(project.get(run + "/files", kind="file"))["files"]] == ["model.pt"]
    media = project.ok(project.get(run + "/media", key="samples"))
    assert media["key"] == "samples" and [m["step"] for m in media["media"]] == [1, 2]
    assert project.ok(project.get(run + "/media", key="other"))["media"] == []


# -- exports ------------------------------------------------------------------------------------------


def truth_points(runs: list[Run], metrics: list[str] | None = None) -> list[tuple[str, str, int, float]]:
    return sorted(
        (r.run_id, m, s, v)
        for r in runs
        for m, points in r.points.items()
        if metrics is None or m in metrics
        for s, v in points.items()
    )


def table_points(table: pa.Table) -> list[tuple[str, str, int, float]]:
    columns = table.to_pydict()
    return list(zip(columns["run_id"], columns["metric"], columns["step"], columns["value"]))


def same_points(actual: list[tuple], expected: list[tuple]) -> bool:
    assert [a[:3] for a in actual] == [e[:3] for e in expected]
    return all((math.isnan(a[3]) and math.isnan(e[3])) or a[3] == pytest.approx(e[3]) for a, e in zip(actual, expected))


def test_project_export_round_trips_in_every_format(project):
    base = f"/projects/{TEAM}/{PROJECT}"
    adam = [project.runs[r] for r in ("r1", "r2", "r4")]

    parquet = project.get(base + "/export", filters='{"config.opt.name": "adam"}', metrics="loss,val_loss")
    assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/vnd.apache.parquet"
    assert parquet.headers["content-disposition"] == 'attachment; filename="acme-mnist-history.parquet"'
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.column_names == ["run_id", "metric", "step", "time", "value"]
    assert same_points(table_points(table), truth_points(adam, ["loss", "val_loss"]))
    times = table.to_pydict()
    r1_times = [t.timestamp() for rid, t in zip(times["run_id"], times["time"]) if rid == "r1"]
    assert r1_times[:3] == pytest.approx([adam[0].times[s] for s in range(3)], abs=1e-3)

    arrow = project.get(base + "/export", format="arrow", run_ids="r0,r3")
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert arrow.headers["content-disposition"].endswith('.arrows"')
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert same_points(table_points(table), truth_points([project.runs["r0"], project.runs["r3"]]))

    csv = project.get(base + "/export", format="csv", run_ids="r1", metrics="loss")
    assert csv.headers["content-type"].startswith("text/csv")
    table = pacsv.read_csv(io.BytesIO(csv.content))
    assert table.num_rows == len(project.runs["r1"].points["loss"])

    meta = project.get(base + "/export", table="runs")
    runs_table = pq.read_table(io.BytesIO(meta.content)).to_pydict()
    assert runs_table["run_id"] == sorted(project.runs)
    assert [orjson.loads(c)["lr"] for c in runs_table["config"]] == [
        project.runs[r].config["lr"] for r in sorted(project.runs)
    ]

    none = project.get(base + "/export", filters='{"state": "crashed"}')
    assert none.status_code == 200 and pq.read_table(io.BytesIO(none.content)).num_rows == 0


def test_run_export(project):
    response = project.get(f"/runs/{TEAM}/{PROJECT}/r2/export", format="parquet")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == 'attachment; filename="acme-mnist-r2-history.parquet"'
    assert same_points(table_points(pq.read_table(io.BytesIO(response.content))), truth_points([project.runs["r2"]]))


# -- the public client against a real server ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(project) -> Iterator[str]:
    """The same app served by uvicorn on a free port, in a thread."""
    with ServedApp(project.api.app, lifespan="off") as url:
        yield url


def test_public_client_end_to_end(project, server, tmp_path):
    import runstream
    from runstream.public_api import ApiError

    key = project.member["Authorization"].removeprefix("Bearer ")
    client = runstream.Api(server, key)
    runs = client.runs(f"{TEAM}/{PROJECT}", filters={"config.lr": {"$lte": 0.01}}, order="+config.lr", per_page=2)
    assert [r.id for r in runs] == ["r2", "r1", "r3"]
    r1 = runs[1]
    assert r1.config == project.runs["r1"].config and r1.state == "finished"
    assert r1.created_at.endswith("Z") and r1.created_at.startswith(time.strftime("%Y-%m-%d", time.gmtime(T0 + 10)))

    frame = r1.history(keys=["loss", "val_loss"], samples=10_000)
    truth = project.runs["r1"]
    assert list(frame.columns) == ["_step", "_timestamp", "loss", "val_loss"]
    assert frame["_step"].tolist() == sorted(truth.times)
    loss = frame["loss"].tolist()
    assert math.isnan(loss[5]) and loss[6] == math.inf and loss[0] == pytest.approx(truth.points["loss"][0])
    val = frame["val_loss"].tolist()
    assert val[10] == pytest.approx(truth.points["val_loss"][10]) and math.isnan(val[11])
    assert len(r1.history(keys=["loss"], samples=8)) <= 8

    rows = list(r1.scan_history(keys=["acc"], page_size=9, min_step=3, max_step=30))
    assert [row["_step"] for row in rows] == list(range(3, 30))
    assert rows[4]["acc"] == -math.inf and rows[0]["acc"] == pytest.approx(truth.points["acc"][3])

    target = tmp_path / "adam.parquet"
    assert (
        client.export(f"{TEAM}/{PROJECT}", target, filters={"config.opt.name": "adam"}, metrics=["acc"], progress=False)
        == target
    )
    adam = [project.runs[r] for r in ("r1", "r2", "r4")]
    assert same_points(table_points(pq.read_table(target)), truth_points(adam, ["acc"]))
    assert [p.name for p in tmp_path.iterdir()] == ["adam.parquet"]  # the temporary file is gone

    csv = r1.export(tmp_path / "r1.csv", format="csv", metrics=["loss"], progress=False)
    assert pacsv.read_csv(csv).num_rows == len(truth.points["loss"])
    by_ids = client.export(
        f"{TEAM}/{PROJECT}", tmp_path / "two.arrows", runs=["r0", r1], format="arrow", progress=False
    )
    assert sorted(set(pa.ipc.open_stream(by_ids.read_bytes()).read_all().column("run_id").to_pylist())) == ["r0", "r1"]

    with pytest.raises(ApiError) as bad:
        client.export(f"{TEAM}/{PROJECT}", tmp_path / "bad.parquet", format="xlsx", progress=False)
    assert bad.value.status == 400 and not (tmp_path / "bad.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adam.parquet", "r1.csv", "two.arrows"]
    with pytest.raises(ApiError) as missing:
        client.run(f"{TEAM}/{PROJECT}/ghost")
    assert missing.value.status == 404


def test_a_key_that_worked_before_is_still_checked_before_every_read(project, monkeypatch):
    """Chart and runs reads start beside the check of a key that already read the project; the check decides."""
    from runstream.storage import accounts

    accounts.set_member(project.api.storage, TEAM, "kim", "member")
    key_id, key = accounts.create_key(project.api.storage, TEAM, "kim")
    kim = {"Authorization": f"Bearer {key}"}
    where = f"/projects/{TEAM}/{PROJECT}"
    series, bands = {"metrics": ["loss"], "points": 10}, {"metric": "loss", "groups": {"a": ["r0", "r1"]}}
    assert project.ok(project.post(f"{where}/series", series, kim))["series"]
    assert project.ok(project.post(f"{where}/bands", bands, kim))["groups"]
    assert project.ok(project.get(f"{where}/runs", kim))["runs"]
    # Another team's key, however well it works elsewhere, learns nothing here, not even what is wrong
    # with its request, and never gets the server to read the project.
    project.ok(project.get("/whoami", project.rival))
    project.ok(project.get("/projects/rival/elsewhere/runs", project.rival))
    reads = []
    monkeypatch.setattr(charts, "series", lambda *args, **kwargs: reads.append(args) or {"series": []})
    for _ in range(2):
        expect_error(project.post(f"{where}/series", series, project.rival), 404)
        expect_error(project.post(f"{where}/series", {"metrics": []}, project.rival), 404)
        expect_error(project.get(f"{where}/runs", project.rival, limit=0), 404)
    assert reads == []
    monkeypatch.undo()
    accounts.revoke_key(project.api.storage, key_id)
    for response in (
        project.post(f"{where}/series", series, kim),
        project.post(f"{where}/bands", bands, kim),
        project.get(f"{where}/runs", kim),
        project.post(f"{where}/series", {"metrics": []}, kim),
    ):
        expect_error(response, 401, "invalid_api_key")


def test_runs_search_answers_only_the_fields_asked_for(project):
    where = f"/projects/{TEAM}/{PROJECT}/runs"
    full = project.ok(project.get(where, order="name"))
    named = project.ok(project.get(where, order="name", fields=" name,"))
    assert named["runs"] == [{"team": TEAM, "project": PROJECT, "id": r["id"], "name": r["name"]} for r in full["runs"]]
    both = project.ok(project.get(where, order="-summary.acc", fields="state,summary", limit=2))
    assert both == {
        "runs": [
            {k: r[k] for k in ("team", "project", "id", "state", "summary")}
            for r in project.ok(project.get(where, order="-summary.acc", limit=2))["runs"]
        ],
        "next_cursor": both["next_cursor"],
    }
    filtered = project.ok(project.get(where, fields="name", filters=orjson.dumps({"summary.acc": {"$gt": 0}}).decode()))
    assert filtered["runs"] and all(set(r) == {"team", "project", "id", "name"} for r in filtered["runs"])
    error = expect_error(project.get(where, fields="name,secrets"), 400)
    assert "secrets" in error["message"] and "config" in error["message"]
    expect_error(project.get(where, project.rival, fields="secrets"), 404)  # who asks comes first
