"""Media compared across runs (``POST .../media/latest``, ``GET .../media/keys``) on the real engine.

Four runs are logged once by the real SDK into the API (embedded mode, served by uvicorn): three log a PR
curve (``runstream.plot.pr_curve``) under "pr" at two steps, one only at one step; one logs a gallery of
images under "samples" instead. The endpoint must answer each run's latest file under the key, for the runs
chosen by ids or by run search's filters, bounded by ``limit``, and refuse bad input with a clear 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import runstream
from runstream.storage import logs
from runstream.storage.errors import QueryError
from runstream.storage.filters import compile_filters
from tests.conftest import ApiHarness
from tests.helpers import ServedApp, fresh_chdb_dsn

TEAM, PROJECT = "acme", "compare"
LATEST = f"/api/v1/projects/{TEAM}/{PROJECT}/media/latest"
KEYS = f"/api/v1/projects/{TEAM}/{PROJECT}/media/keys"
QUIET = {"console": False, "system_metrics": False, "git": False}
#: run id -> (learning rate, the steps it logs "pr" at); "d" logs a gallery under "samples" instead.
RUNS: dict[str, tuple[float, list[int]]] = {"a": (0.1, [1, 3]), "b": (0.01, [1, 3]), "c": (0.001, [2]), "d": (0.5, [])}


def _pr(seed: int, flip: float) -> Any:
    """A PR curve of two classes whose labels are ``flip`` noisy: each run and step draws its own."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 200)
    noisy = np.where(rng.random(200) < flip, 1 - y_true, y_true)
    p1 = np.clip(0.5 + (noisy - 0.5) * rng.random(200), 0, 1)
    return runstream.plot.pr_curve(y_true, np.stack([1 - p1, p1], axis=1), labels=["cat", "dog"], title=f"s{seed}")


class Project:
    def __init__(self, api: ApiHarness, files: Path) -> None:
        self.api = api
        self.member = api.key(TEAM, "mia", "member")
        key = self.member["Authorization"].removeprefix("Bearer ")
        with ServedApp(api.app, lifespan="off") as url:
            for i, (run_id, (lr, steps)) in enumerate(RUNS.items()):
                run = runstream.init(
                    entity=TEAM,
                    project=PROJECT,
                    id=run_id,
                    name=f"run-{run_id}",
                    config={"lr": lr},
                    dir=files / run_id,
                    settings={**QUIET, "url": url, "api_key": key},
                )
                for step in steps:
                    run.log({"pr": _pr(10 * i + step, 0.1 * (i + 1)), "loss": 1.0 / step}, step=step)
                if not steps:
                    gray = np.full((4, 6), 90, dtype=np.uint8)
                    for step in (1, 2):
                        images = [runstream.Image(gray + k, caption=f"{step}.{k}") for k in range(3)]
                        run.log({"samples": images}, step=step)
                assert run.finish().unacked_events == 0

    def latest(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return self.api.http.post(LATEST, json=body, headers=self.member if headers is None else headers)

    def ok(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.latest(body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture(scope="module")
def project(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    harness = ApiHarness(fresh_chdb_dsn(chdb_dir), tmp_path_factory.mktemp("compare"))
    try:
        yield Project(harness, tmp_path_factory.mktemp("runs"))
    finally:
        harness.close()


def test_each_run_answers_its_latest_chart(project: Project) -> None:
    answer = project.ok({"key": "pr", "order": "created_at"})
    assert answer["key"] == "pr" and answer["total"] == 3
    runs = answer["runs"]
    assert [(r["run_id"], r["name"], r["step"]) for r in runs] == [
        ("a", "run-a", 3),
        ("b", "run-b", 3),
        ("c", "run-c", 2),
    ]
    for run in runs:
        assert run["media_type"] == "chart" and run["kind"] == "media"
        assert run["meta"]["key"] == "pr" and run["meta"]["chart"] == "pr_curve"
        blob = project.api.http.get(run["url"], headers=project.member)
        assert blob.status_code == 200, blob.text
        chart = blob.json()
        # The latest step's own chart: its title names the seed it was drawn with.
        seed = 10 * list(RUNS).index(run["run_id"]) + run["step"]
        assert chart["spec"]["kind"] == "pr_curve" and chart["spec"]["title"] == f"s{seed}"
        assert chart["columns"] == ["class", "precision", "recall"]
    # What the answer says per run is what the run's own media listing says of its highest step.
    for run in runs:
        media = project.api.http.get(
            f"/api/v1/runs/{TEAM}/{PROJECT}/{run['run_id']}/media", params={"key": "pr"}, headers=project.member
        ).json()["media"]
        assert {k: v for k, v in run.items() if k not in ("run_id", "name")} == media[-1]


def test_a_gallery_answers_the_first_item_of_its_latest_step(project: Project) -> None:
    runs = project.ok({"key": "samples"})["runs"]
    assert [(r["run_id"], r["step"], r["media_type"]) for r in runs] == [("d", 2, "image")]
    assert (runs[0]["meta"]["index"], runs[0]["meta"]["count"], runs[0]["meta"]["caption"]) == (0, 3, "2.0")


def test_filters_order_and_run_ids_choose_the_runs(project: Project) -> None:
    by_lr = project.ok({"key": "pr", "filters": {"config.lr": {"$lt": 0.05}}, "order": "config.lr"})
    assert [r["run_id"] for r in by_lr["runs"]] == ["c", "b"] and by_lr["total"] == 2
    newest_first = project.ok({"key": "pr"})  # run search's default order: newest first
    assert [r["run_id"] for r in newest_first["runs"]] == ["c", "b", "a"]
    # run_ids: in the order given; a run without media under the key (d) or unknown (zz) is left out.
    chosen = project.ok({"key": "pr", "run_ids": ["b", "zz", "d", "a"]})
    assert [r["run_id"] for r in chosen["runs"]] == ["b", "a"] and chosen["total"] == 2
    # A filter matching runs but none with the key: no runs.
    assert project.ok({"key": "pr", "filters": {"config.lr": 0.5}}) == {"key": "pr", "runs": [], "total": 0}


def test_limit_bounds_the_answer(project: Project) -> None:
    answer = project.ok({"key": "pr", "limit": 2, "order": "-config.lr"})
    assert [r["run_id"] for r in answer["runs"]] == ["a", "b"] and answer["total"] == 3
    for limit in (0, logs.MAX_MEDIA_RUNS + 1, "5"):
        response = project.latest({"key": "pr", "limit": limit})
        assert response.status_code == 400, response.text
        assert f"limit must be a whole number of runs from 1 to {logs.MAX_MEDIA_RUNS}" in response.text
    too_many = project.latest({"key": "pr", "run_ids": [f"r{i}" for i in range(logs.MAX_MEDIA_RUNS + 1)]})
    assert too_many.status_code == 400 and "at most 100 run ids" in too_many.json()["error"]["message"]


def test_bad_input_is_refused_clearly(project: Project) -> None:
    assert project.ok({"key": "never-logged"}) == {"key": "never-logged", "runs": [], "total": 0}
    bad_filter = {"config.lr": {"$near": 1}}
    with pytest.raises(QueryError) as compiler:
        compile_filters(bad_filter)
    response = project.latest({"key": "pr", "filters": bad_filter})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == compiler.value.message
    bad_order = project.latest({"key": "pr", "order": "config."})
    assert bad_order.status_code == 400, bad_order.text
    both = project.latest({"key": "pr", "run_ids": ["a"], "filters": {"state": "finished"}})
    assert both.status_code == 400 and "run_ids or filters, not both" in both.text
    for body in ({}, {"key": ""}, {"key": "pr", "extra": 1}):
        assert project.latest(body).status_code == 400, body
    # Another team's key learns nothing of the project.
    outsider = project.api.key("rivals", "otto", "admin")
    assert project.latest({"key": "pr"}, outsider).status_code == 404


def test_media_keys_list_what_runs_logged(project: Project) -> None:
    response = project.api.http.get(KEYS, headers=project.member)
    assert response.status_code == 200, response.text
    assert response.json()["keys"] == [
        {"key": "pr", "media_types": ["chart"], "runs": 3},
        {"key": "samples", "media_types": ["image"], "runs": 1},
    ]


def test_many_runs_with_the_key_are_chosen_the_same_way(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``_MAX_IN_IDS`` runs with media under the key, the matching runs are read in order and intersected
    instead of sent as an id list: the answers must not change."""
    bodies: list[dict[str, Any]] = [
        {"key": "pr", "order": "config.lr"},
        {"key": "pr", "filters": {"config.lr": {"$lt": 0.05}}, "limit": 1},
        {"key": "pr", "run_ids": ["c", "a"]},
    ]
    expected = [project.ok(body) for body in bodies]
    monkeypatch.setattr(logs, "_MAX_IN_IDS", 1)
    assert [project.ok(body) for body in bodies] == expected
    assert [r["run_id"] for r in expected[0]["runs"]] == ["c", "b", "a"] and expected[1]["total"] == 2
