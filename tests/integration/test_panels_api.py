"""Panel data through the API on the real engine: runs' values as columns, and parameter importance.

A project of 30 runs is ingested once (configs with a learning rate that drives the metric, a
categorical optimizer, a noise key, nested keys; summaries with a NaN and a missing metric), and
every column answer is checked against run search's answer for the same filter and order.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runstream import events
from runstream.storage import panels
from tests.conftest import ApiHarness
from tests.helpers import fresh_chdb_dsn, make_event

TEAM, PROJECT = "acme", "panels"
BASE = f"/api/v1/projects/{TEAM}/{PROJECT}"
COLUMNS, IMPORTANCE = f"{BASE}/runs/columns", f"{BASE}/importance"
N = 30
METRIC = "summary.val/loss"


def _runs() -> list[dict[str, Any]]:
    rng = random.Random(5)
    runs = []
    for i in range(N):
        lr = 10 ** rng.uniform(-4, -1)
        opt = rng.choice(["adam", "sgd"])
        config = {"lr": lr, "opt": opt, "batch": rng.choice([16, 32, 64]), "model": {"depth": rng.randint(1, 6)}}
        summary: dict[str, Any] = {"val/loss": -math.log10(lr) + (0.05 if opt == "sgd" else 0) + rng.gauss(0, 0.01)}
        if i == 0:
            summary = {"acc": 0.5}  # no metric: left out of importance
        elif i == 1:
            summary["val/loss"] = math.nan
        runs.append({"id": f"r{i:02d}", "config": config, "summary": summary, "state": ["finished", "failed"][i % 2]})
    return runs


def _events(run: dict[str, Any], t: float) -> list[dict[str, Any]]:
    def event(type: str, data: dict[str, Any], seq: int) -> dict[str, Any]:
        return make_event(type, data, seq=seq, run_id=run["id"], team=TEAM, project=PROJECT, ts=t + seq)

    summary = {k: events.encode_value(v) if isinstance(v, float) else v for k, v in run["summary"].items()}
    return [
        event(events.RUN_START, {"name": f"name-{run['id']}", "config": run["config"], "group": "g"}, 1),
        event(events.RUN_UPDATE, {"summary": summary}, 2),
        event(events.RUN_FINISH, {"state": run["state"], "exit_code": 0}, 3),
    ]


class Project:
    def __init__(self, api: ApiHarness) -> None:
        self.api = api
        self.member = api.key(TEAM, "mia", "member")
        self.rival = api.key("rivals", "otto", "admin")
        self.runs = _runs()
        t0 = time.time() - 3600
        batch = [e for i, run in enumerate(self.runs) for e in _events(run, t0 + 10 * i)]
        assert api.ingest(batch, self.member).status_code == 200

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None):
        return self.api.http.post(path, json=body, headers=self.member if headers is None else headers)

    def search(self, filters: dict[str, Any] | None, order: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"order": order, "limit": 1000}
        if filters is not None:
            params["filters"] = json.dumps(filters)
        response = self.api.http.get(f"{BASE}/runs", params=params, headers=self.member)
        assert response.status_code == 200, response.text
        return response.json()["runs"]


@pytest.fixture(scope="module")
def project(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    harness = ApiHarness(fresh_chdb_dsn(chdb_dir), tmp_path_factory.mktemp("panels"))
    try:
        yield Project(harness)
    finally:
        harness.close()


def _value(run: dict[str, Any], field: str) -> Any:
    """A field's value in run search's answer, as a column holds it."""
    if field.startswith(("config.", "summary.")):
        prefix, key = field.split(".", 1)
        node: Any = run[prefix]
        for part in key.split(".") if prefix == "config" else [key]:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node
    return run[field]


FIELDS = [
    "config.lr",
    "config.opt",
    "config.model.depth",
    "config.model",
    METRIC,
    "summary.acc",
    "state",
    "group",
    "created_at",
    "sweep",
]


@pytest.mark.parametrize(
    ("filters", "order"),
    [
        (None, "-created_at"),
        ({"config.opt": "adam"}, "-created_at"),
        ({"$and": [{"state": "finished"}, {METRIC: {"$lt": 3}}]}, METRIC),
        (None, "-config.lr"),
    ],
)
def test_columns_are_the_runs_values_in_order(project: Project, filters: dict[str, Any] | None, order: str) -> None:
    body: dict[str, Any] = {"fields": FIELDS, "order": order}
    if filters is not None:
        body["filters"] = filters
    response = project.post(COLUMNS, body)
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = project.search(filters, order)
    assert 0 < len(expected) < N or filters is None
    assert answer["run_ids"] == [run["id"] for run in expected]
    assert answer["names"] == [run["name"] for run in expected]
    assert answer["total"] == len(expected)
    assert set(answer["columns"]) == set(FIELDS)
    for field in FIELDS:
        assert answer["columns"][field] == [_value(run, field) for run in expected], field


def test_columns_keep_non_finite_values_and_missing_keys(project: Project) -> None:
    answer = project.post(COLUMNS, {"fields": [METRIC, "summary.acc", "config.nope"], "order": "created_at"}).json()
    assert answer["run_ids"][:2] == ["r00", "r01"]
    assert answer["columns"][METRIC][:2] == [None, "NaN"]
    assert answer["columns"]["summary.acc"][:2] == [0.5, None]
    assert answer["columns"]["config.nope"] == [None] * N


def test_columns_limit_and_duplicates(project: Project) -> None:
    answer = project.post(COLUMNS, {"fields": ["config.lr", "config.lr"], "limit": 5}).json()
    assert len(answer["run_ids"]) == 5 and answer["total"] == N
    assert answer["run_ids"] == [f"r{i:02d}" for i in range(N - 1, N - 6, -1)]  # newest first
    assert list(answer["columns"]) == ["config.lr"]


@pytest.mark.parametrize(
    "body",
    [
        {"fields": ["config.lr"], "limit": 0},
        {"fields": ["config.lr"], "limit": 50_001},
        {"fields": []},
        {"fields": [f"config.k{i}" for i in range(33)]},
        {"fields": ["bogus"]},
        {"fields": ["config.lr"], "order": "bogus"},
        {"fields": ["config.lr"], "filters": {"config.lr": {"$bad": 1}}},
        {"fields": ["config.lr"], "colour": "red"},
        {},
    ],
)
def test_bad_column_requests_are_400(project: Project, body: dict[str, Any]) -> None:
    response = project.post(COLUMNS, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


def test_panels_need_read_access(project: Project) -> None:
    for path, body in ((COLUMNS, {"fields": ["config.lr"]}), (IMPORTANCE, {"metric": METRIC})):
        assert project.post(path, body, headers={}).status_code == 404  # a private project
        assert project.post(path, body, headers=project.rival).status_code == 404
    viewer = project.api.key(TEAM, "vic", "viewer")
    assert project.post(COLUMNS, {"fields": ["config.lr"]}, headers=viewer).status_code == 200


def test_importance_ranks_the_driving_param_first(project: Project) -> None:
    response = project.post(IMPORTANCE, {"metric": METRIC})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["metric"] == METRIC and answer["runs"] == N - 2  # one without the metric, one NaN
    ranked = [p["param"] for p in answer["params"]]
    assert ranked[0] == "config.lr"
    assert set(ranked) == {"config.lr", "config.opt", "config.batch", "config.model.depth"}
    assert math.isclose(sum(p["importance"] for p in answer["params"]), 1.0)
    lr = answer["params"][0]
    assert lr["correlation"] < -0.8  # the loss falls as the learning rate grows
    assert answer["model"]["kind"] == "random_forest" and answer["model"]["n_estimators"] == 100
    again = project.post(IMPORTANCE, {"metric": METRIC}).json()
    assert again == answer  # seeded


def test_importance_of_named_params_and_filters(project: Project) -> None:
    body = {"metric": METRIC, "params": ["config.opt", "config.lr"], "filters": {"state": "finished"}}
    answer = project.post(IMPORTANCE, body).json()
    assert [p["param"] for p in answer["params"]] == ["config.lr", "config.opt"]
    assert answer["runs"] == len([r for r in project.runs[2:] if r["state"] == "finished"])
    opt = answer["params"][1]
    assert opt["correlation"] is not None and -1 <= opt["correlation"] <= 1


def test_importance_needs_three_runs_with_the_metric(project: Project) -> None:
    response = project.post(
        IMPORTANCE, {"metric": METRIC, "filters": {"run_id": {"$in": ["r00", "r01", "r02", "r03"]}}}
    )
    assert response.status_code == 422, response.text
    assert "2 of the runs" in response.json()["error"]["message"]
    for body in (
        {"metric": "config.lr"},
        {"metric": METRIC, "params": ["summary.acc"]},
        {"metric": METRIC, "limit": 0},
    ):
        assert project.post(IMPORTANCE, body).status_code == 400, body


def test_long_values_are_cut_and_large_answers_refused(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"big": "é" * 3000, "quoted": "x" + 'ab"' * 300, "list": list(range(500)), "short": "s"}
    t0 = time.time() - 600
    batch = [
        make_event(
            events.RUN_START,
            {"name": f"l{i}", "notes": "n" * 2000, "config": config},
            seq=1,
            run_id=f"l{i}",
            project="long",
            ts=t0 + i,
        )
        for i in range(3)
    ]
    ingested = project.api.ingest(batch, project.member)
    assert ingested.status_code == 200, ingested.text
    columns = f"/api/v1/projects/{TEAM}/long/runs/columns"
    fields = ["config.big", "config.quoted", "config.list", "config.short", "notes"]
    response = project.post(columns, {"fields": fields})
    assert response.status_code == 200, response.text
    found = {field: values[0] for field, values in response.json()["columns"].items()}
    cut = panels.MAX_CHARS
    assert found["config.big"] == "é" * cut + "…"
    # The JSON text's 1,024 characters end inside an escape (\"): the string is decoded up to it.
    assert found["config.quoted"] == "x" + 'ab"' * 255 + "ab…"
    assert found["config.list"] == json.dumps(list(range(500)), separators=(",", ":"))[:cut] + "…"
    assert found["config.short"] == "s" and found["notes"] == "n" * cut + "…"

    monkeypatch.setattr(panels, "MAX_ANSWER_BYTES", 2 * cut)
    refused = project.post(columns, {"fields": ["config.big"]})
    assert refused.status_code == 413, refused.text
    assert "ask for fewer runs (limit) or fields" in refused.json()["error"]["message"]
    assert project.post(columns, {"fields": ["config.big"], "limit": 1}).status_code == 200


def test_importance_past_the_fits_at_once_is_429(project: Project) -> None:
    held = [panels._FITS.acquire(blocking=False) for _ in range(panels.MAX_FITS)]
    try:
        assert all(held)
        response = project.post(IMPORTANCE, {"metric": METRIC})
    finally:
        for _ in held:
            panels._FITS.release()
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(panels.BUSY_RETRY_S)
    assert response.json()["error"]["code"] == "too_many_requests"
    assert "retry after" in response.json()["error"]["message"]
    assert project.post(IMPORTANCE, {"metric": METRIC}).status_code == 200
