"""Deleting runs and projects, and moving a run to another project: through the API and the embedded
pipeline, on the real engine. A deleted run is gone from every query and every run-keyed table, its
blobs too; a late event of it is dead-lettered, never stored; a moved run reads the same in its new
project; the team's admins may, others may not."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from runstream import events
from runstream.settings import Settings
from runstream.storage import artifacts, deletion, processing
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.app import create_app
from tests.conftest import ApiHarness
from tests.helpers import dead_letters_with, make_event, unique, wait_for

TEAM = "acme"
T0 = time.time() - 600
BLOB = b"weights\n"
SHA = hashlib.sha256(BLOB).hexdigest()


class Run:
    """Event dicts of one run, seq counting up."""

    def __init__(self, project: str, run_id: str, seq: int = 0) -> None:
        self.project, self.run_id, self.seq = project, run_id, seq
        self.path = f"/api/v1/runs/{TEAM}/{project}/{run_id}"

    def __call__(self, type: str, data: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        return make_event(
            type, data, seq=self.seq, run_id=self.run_id, team=TEAM, project=self.project, ts=T0 + self.seq
        )

    def metrics(self, steps: list[int]) -> dict[str, Any]:
        values = {"loss": [1.0 / (s + 1) for s in steps], "acc": [s / 100 for s in steps]}
        return self(events.METRICS, {"step": steps, "time": [T0 + s for s in steps], "values": values})

    def logged(self, finished: bool = True) -> list[dict[str, Any]]:
        """A whole run: config, metrics, system samples, console, a file, an alert, a summary, its finish."""
        sent = [
            self(events.RUN_START, {"name": f"{self.run_id}-name", "config": {"lr": 0.1, "opt": {"name": "adam"}}}),
            self.metrics(list(range(40))),
            self(events.SYSTEM, {"time": [T0, T0 + 1], "values": {"cpu": [10.0, 20.0]}}),
            self(events.CONSOLE, {"time": [T0], "stream": ["stdout"], "line": ["epoch 1"]}),
            self(
                events.FILE,
                {"path": "model.pt", "kind": "file", "size": len(BLOB), "sha256": SHA, "store_key": "model.pt"},
            ),
            self(events.ALERT, {"title": "loss is low", "text": "", "level": "INFO", "source": "sdk"}),
            self(events.RUN_UPDATE, {"summary": {"best": 0.9}}),
        ]
        if finished:
            sent.append(self(events.RUN_FINISH, {"state": "finished", "exit_code": 0}))
        return sent


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def log_run(api: ApiHarness, headers: dict[str, str], run: Run, finished: bool = True) -> None:
    ok(api.ingest(run.logged(finished), headers))
    url = f"/api/v1/files/{TEAM}/{run.project}/{run.run_id}/model.pt"
    ok(api.http.put(url, params={"sha256": SHA}, content=BLOB, headers=headers))


def rows_of(api: ApiHarness, project: str, run_id: str) -> dict[str, int]:
    """How many rows each run-keyed table holds for the run."""
    counts = {}
    for table in deletion.run_tables(api.storage):
        counts[table] = api.storage.query(
            f"SELECT count() FROM {table} WHERE team = {{t:String}} AND project = {{p:String}} AND run_id = {{r:String}}",
            parameters={"t": TEAM, "p": project, "r": run_id},
        ).result_rows[0][0]
    return counts


def run_ids(api: ApiHarness, project: str, headers: dict[str, str]) -> list[str]:
    page = ok(api.http.get(f"/api/v1/projects/{TEAM}/{project}/runs", headers=headers))
    return sorted(r["id"] for r in page["runs"])


def dead_letter_reasons(api: ApiHarness) -> list[str]:
    return [reason for _, _, reason in api.app.state.backend.sink.pipeline.dead_letters]


def audit_actions(api: ApiHarness, headers: dict[str, str]) -> list[tuple[str, str, Any]]:
    entries = ok(api.http.get(f"/api/v1/teams/{TEAM}/audit", headers=headers))["entries"]
    return [(e["action"], e["target"], e["details"]) for e in entries]


@pytest.fixture
def admin(api: ApiHarness) -> dict[str, str]:
    return api.key(TEAM, "ada", "admin")


# -- deleting a run ---------------------------------------------------------------------------------


def test_a_deleted_run_is_gone_from_every_query_table_and_the_file_store(
    api: ApiHarness, admin: dict[str, str]
) -> None:
    gone, kept = Run("mnist", "gone"), Run("mnist", "kept")
    log_run(api, admin, gone)
    log_run(api, admin, kept)
    assert all(rows_of(api, "mnist", "gone")[t] > 0 for t in ("runs", "metric_points", "run_files", "run_states"))
    blob = api.app.state.backend.files.root / TEAM / "mnist" / "gone" / "model.pt"
    assert blob.exists()

    answer = ok(api.http.delete(gone.path, headers=admin))
    assert answer == {"team": TEAM, "project": "mnist", "run_id": "gone", "deleted": True}

    assert run_ids(api, "mnist", admin) == ["kept"]
    assert ok(api.http.get(f"/api/v1/projects/{TEAM}/mnist/runs/count", headers=admin)) == {"count": 1}
    for sub in ("", "/history", "/history/scan", "/statistics", "/files", "/console", "/metrics", "/system"):
        assert api.http.get(gone.path + sub, headers=admin).status_code == 404, sub
    assert api.http.get(f"/api/v1/files/{TEAM}/mnist/gone/model.pt", headers=admin).status_code == 404
    chart = ok(api.http.post(f"/api/v1/projects/{TEAM}/mnist/series", json={"metrics": ["loss"]}, headers=admin))
    assert {s["run_id"] for s in chart["series"]} == {"kept"}
    explicit = {"metrics": ["loss"], "run_ids": ["gone"]}
    assert ok(api.http.post(f"/api/v1/projects/{TEAM}/mnist/series", json=explicit, headers=admin))["series"] == []
    project = ok(api.http.get(f"/api/v1/projects/{TEAM}/mnist", headers=admin))
    assert project["run_count"] == 1

    assert set(rows_of(api, "mnist", "gone").values()) == {0}, rows_of(api, "mnist", "gone")
    assert not blob.parent.exists()
    assert rows_of(api, "mnist", "kept")["metric_points"] == 80  # the other run is whole
    assert ok(api.http.get(kept.path + "/files", headers=admin))["files"][0]["path"] == "model.pt"
    assert ("run.delete", "mnist/gone", {}) in audit_actions(api, admin)

    # Deleting it again removes what may remain (a retry after a failure); a run that never was is a 404.
    assert ok(api.http.delete(gone.path, headers=admin))["deleted"] is True
    assert api.http.delete(f"/api/v1/runs/{TEAM}/mnist/never", headers=admin).status_code == 404


def test_a_late_event_of_a_deleted_run_is_dead_lettered_not_stored(api: ApiHarness, admin: dict[str, str]) -> None:
    run = Run("mnist", "late")
    log_run(api, admin, run)
    ok(api.http.delete(run.path, headers=admin))

    # A resend from the SDK's spool (the same events) and a new event after the deletion.
    ok(api.ingest(Run("mnist", "late").logged(), admin))
    ok(api.ingest([run.metrics([100, 101])], admin))

    assert api.http.get(run.path, headers=admin).status_code == 404
    assert set(rows_of(api, "mnist", "late").values()) == {0}
    reasons = dead_letter_reasons(api)
    assert reasons and set(reasons) == {f"run {TEAM}/mnist/late was deleted"}
    assert len(reasons) == len(Run("mnist", "late").logged()) + 1
    # Another id in the same project is logged as usual.
    ok(api.ingest(Run("mnist", "fresh").logged(), admin))
    assert run_ids(api, "mnist", admin) == ["fresh"]


def test_refusals(api: ApiHarness, admin: dict[str, str]) -> None:
    run, running = Run("mnist", "r1"), Run("mnist", "busy")
    log_run(api, admin, run)
    log_run(api, admin, running, finished=False)
    member, viewer = api.key(TEAM, "mia", "member"), api.key(TEAM, "vic", "viewer")
    rival = api.key("rival", "mallory", "admin")
    move = {"project": "other"}
    for who, status in ((member, 403), (viewer, 403), (rival, 404), ({}, 401)):
        assert api.http.delete(run.path, headers=who).status_code == status
        assert api.http.post(run.path + "/move", json=move, headers=who).status_code == status
        assert api.http.delete(f"/api/v1/projects/{TEAM}/mnist", headers=who).status_code == status
    assert run_ids(api, "mnist", admin) == ["busy", "r1"]  # nothing happened

    assert api.http.delete(f"/api/v1/runs/{TEAM}/mnist/nope", headers=admin).status_code == 404
    assert api.http.post(f"/api/v1/runs/{TEAM}/mnist/nope/move", json=move, headers=admin).status_code == 404
    assert api.http.delete(f"/api/v1/projects/{TEAM}/nowhere", headers=admin).status_code == 404
    for body in ({"project": "bad name"}, {"project": ""}, {"project": "../x"}, {}, {"project": 3}, {"to": "x"}):
        response = api.http.post(run.path + "/move", json=body, headers=admin)
        assert response.status_code == 400, (body, response.text)
    same = api.http.post(run.path + "/move", json={"project": "mnist"}, headers=admin)
    assert same.status_code == 400 and "already in" in same.json()["error"]["message"]

    refused = api.http.post(running.path + "/move", json=move, headers=admin)
    assert refused.status_code == 409 and "running" in refused.json()["error"]["message"]
    log_run(api, admin, Run("other", "r1"))
    taken = api.http.post(run.path + "/move", json=move, headers=admin)
    assert taken.status_code == 409 and "already has a run r1" in taken.json()["error"]["message"]
    assert run_ids(api, "mnist", admin) == ["busy", "r1"]
    assert rows_of(api, "mnist", "r1")["metric_points"] == 80


# -- moving a run ----------------------------------------------------------------------------------


def test_a_moved_run_reads_the_same_in_its_new_project(api: ApiHarness, admin: dict[str, str]) -> None:
    run = Run("mnist", "mover")
    log_run(api, admin, run)
    before = ok(api.http.get(run.path, headers=admin))
    history = ok(api.http.get(run.path + "/history/scan", headers=admin))
    statistics = ok(api.http.get(run.path + "/statistics", headers=admin))
    console = ok(api.http.get(run.path + "/console", headers=admin))

    moved = ok(api.http.post(run.path + "/move", json={"project": "other"}, headers=admin))
    assert moved == {"team": TEAM, "project": "other", "run_id": "mover"}

    there = Run("other", "mover", seq=run.seq)
    after = ok(api.http.get(there.path, headers=admin))
    assert after["project"] == "other"
    assert {k: v for k, v in after.items() if k != "project"} == {k: v for k, v in before.items() if k != "project"}
    assert after["config"] == {"lr": 0.1, "opt": {"name": "adam"}} and after["summary"]["best"] == 0.9
    assert ok(api.http.get(there.path + "/history/scan", headers=admin)) == history
    assert ok(api.http.get(there.path + "/statistics", headers=admin)) == statistics
    assert ok(api.http.get(there.path + "/console", headers=admin)) == console
    files = ok(api.http.get(there.path + "/files", headers=admin))["files"]
    assert [f["path"] for f in files] == ["model.pt"]
    assert api.http.get(files[0]["url"], headers=admin).content == BLOB
    chart = ok(api.http.post(f"/api/v1/projects/{TEAM}/other/series", json={"metrics": ["loss"]}, headers=admin))
    assert {s["run_id"] for s in chart["series"]} == {"mover"}
    keys = ok(api.http.get(f"/api/v1/projects/{TEAM}/other/keys", headers=admin))
    assert {k["key"] for k in keys["config"]} == {"lr", "opt.name"}
    assert {k["key"] for k in keys["metric"]} == {"loss", "acc"}

    # Gone from where it was, rows and blob included.
    assert api.http.get(run.path, headers=admin).status_code == 404
    assert run_ids(api, "mnist", admin) == []
    assert set(rows_of(api, "mnist", "mover").values()) == {0}
    assert not (api.app.state.backend.files.root / TEAM / "mnist" / "mover").exists()
    assert ("run.move", "mnist/mover", {"to": "other"}) in audit_actions(api, admin)

    # A late event to the old identity is dead-lettered; the run goes on in its new project.
    ok(api.ingest([run.metrics([40, 41])], admin))
    assert dead_letter_reasons(api) == [f"run {TEAM}/mnist/mover was moved to {TEAM}/other"]
    ok(api.ingest([there.metrics([40, 41])], admin))
    stats = ok(api.http.get(there.path + "/statistics", headers=admin))
    assert stats["last_step"] == 41 and stats["metrics"]["loss"]["count"] == 42
    assert rows_of(api, "mnist", "mover")["metric_points"] == 0

    # Its id cannot come back to the project it left.
    back = api.http.post(there.path + "/move", json={"project": "mnist"}, headers=admin)
    assert back.status_code == 409, back.text


# -- deleting a project ----------------------------------------------------------------------------


def test_deleting_a_project_deletes_its_runs_reports_and_rules(api: ApiHarness, admin: dict[str, str]) -> None:
    for run_id in ("a", "b"):
        log_run(api, admin, Run("doomed", run_id))
    log_run(api, admin, Run("safe", "a"))
    base = f"/api/v1/projects/{TEAM}/doomed"
    ok(api.http.post(base + "/reports", json={"title": "week 1"}, headers=admin), 201)
    rule = {"name": "nan", "kind": "nonfinite", "spec": {"metric": "loss"}}
    ok(api.http.post(base + "/alert-rules", json=rule, headers=admin), 201)
    ok(api.http.patch(base, json={"description": "to go"}, headers=admin))

    answer = ok(api.http.delete(base, headers=admin))
    assert answer == {"team": TEAM, "project": "doomed", "deleted": True, "runs": 2}

    assert api.http.get(base, headers=admin).status_code == 404
    listed = ok(api.http.get("/api/v1/projects", headers=admin))["projects"]
    assert [p["name"] for p in listed] == ["safe"]
    for run_id in ("a", "b"):
        assert set(rows_of(api, "doomed", run_id).values()) == {0}
    for table in ("key_catalog", "reports", "alert_rules", "alerts"):
        count = api.storage.query(
            f"SELECT count() FROM {table} WHERE team = {{t:String}} AND project = 'doomed'", parameters={"t": TEAM}
        ).result_rows[0][0]
        assert count == 0, table
    assert not (api.app.state.backend.files.root / TEAM / "doomed").exists()
    assert rows_of(api, "safe", "a")["metric_points"] == 80
    assert ("project.delete", "doomed", {"runs": 2}) in audit_actions(api, admin)
    assert api.http.delete(base, headers=admin).status_code == 404

    # Its runs' ids stay dead; a new run makes the project anew.
    ok(api.ingest(Run("doomed", "a").logged(), admin))
    assert api.http.get(base, headers=admin).status_code == 404
    assert set(dead_letter_reasons(api)) == {f"run {TEAM}/doomed/a was deleted with its project"}
    ok(api.ingest(Run("doomed", "c").logged(), admin))
    assert ok(api.http.get(base, headers=admin))["run_count"] == 1
    assert run_ids(api, "doomed", admin) == ["c"]


# -- artifacts -------------------------------------------------------------------------------------


def test_deleting_a_run_deletes_the_artifact_versions_only_it_had(api: ApiHarness, admin: dict[str, str]) -> None:
    producer, consumer = Run("mnist", "producer"), Run("mnist", "consumer")
    own, shared = "a" * 64, "b" * 64

    def log(digest: str, aliases: list[str]) -> dict[str, Any]:
        data = {"action": "log", "name": "ds", "type": "dataset", "digest": digest, "aliases": aliases}
        return producer(events.ARTIFACT, {**data, "size": 1, "file_count": 1})

    ok(api.ingest([*producer.logged(), log(shared, ["prod"]), log(own, ["best"])], admin))
    used = consumer(events.ARTIFACT, {"action": "use", "project": "mnist", "name": "ds", "digest": shared})
    ok(api.ingest([*consumer.logged(), used], admin))
    assert {v["digest"] for v in artifacts.versions(api.storage, TEAM, "mnist", "ds")} == {own, shared}

    ok(api.http.delete(producer.path, headers=admin))

    left = artifacts.versions(api.storage, TEAM, "mnist", "ds")
    assert [v["digest"] for v in left] == [shared]  # the consumer used it: it stays
    assert "prod" in left[0]["aliases"] and "best" not in left[0]["aliases"]
    assert artifacts.version(api.storage, TEAM, "mnist", "ds", "best") is None
    assert [v["digest"] for v in artifacts.run_artifacts(api.storage, TEAM, "mnist", "consumer")["used"]] == [shared]
    assert artifacts.run_artifacts(api.storage, TEAM, "mnist", "producer") == {"logged": [], "used": []}


def test_a_fork_and_its_parent_stay_in_their_project(api: ApiHarness, admin: dict[str, str]) -> None:
    parent, child = Run("mnist", "parent"), Run("mnist", "child")
    log_run(api, admin, parent)
    started = child(events.RUN_START, {"name": "child", "fork": {"run_id": "parent", "step": 10}})
    ok(api.ingest([started, child.metrics([11, 12]), child(events.RUN_FINISH, {"state": "finished"})], admin))
    for run, why in ((child, "was forked from parent"), (parent, "has forks (child)")):
        refused = api.http.post(run.path + "/move", json={"project": "other"}, headers=admin)
        assert refused.status_code == 409 and why in refused.json()["error"]["message"], refused.text
    assert run_ids(api, "mnist", admin) == ["child", "parent"]


# -- cluster mode: the Faust worker ----------------------------------------------------------------


def test_the_worker_dead_letters_late_events_of_a_deleted_run(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path: Path
) -> None:
    project = unique("proj")
    client = connect(clickhouse_dsn)
    migrate(client)

    def points(run_id: str) -> int:
        return client.query(
            "SELECT count() FROM metric_points WHERE project = {p:String} AND run_id = {r:String}",
            parameters={"p": project, "r": run_id},
        ).result_rows[0][0]

    def logged_whole() -> bool:  # its points and its finish: they travel on topics of their own
        return points("r1") == 80 and deletion.get_state(client, TEAM, project, "r1") == "finished"

    async def produce(sent: list[dict[str, Any]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for event in map(events.validate, sent):
                await producer.send_and_wait(event.topic.name, event.to_bytes(), key=event.key)
        finally:
            await producer.stop()

    async def scenario() -> list[Any]:
        settings = Settings(
            kafka=kafka_bootstrap, clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path), app_id=unique("w")
        )
        app = create_app(settings, sweep_every_s=60)
        await app.start()
        try:
            run = Run(project, "r1")
            await produce(run.logged())
            await asyncio.to_thread(wait_for, logged_whole, "the run logged whole")
            await asyncio.to_thread(deletion.delete_run, client, TEAM, project, "r1")
            assert points("r1") == 0
            await asyncio.sleep(deletion.ALIVE_FOR_S)  # the worker's "not deleted" answer for r1 is trusted that long
            # A late resend of the deleted run, then a run of its own: once that one is stored, the first was handled.
            await produce([run.metrics([50, 51]), *Run(project, "r2").logged()])
            await asyncio.to_thread(wait_for, lambda: points("r2") == 80, "the next run's points")
        finally:
            await app.stop()
        return await dead_letters_with(kafka_bootstrap, f'"project":"{project}"'.encode(), want=1)

    dead = asyncio.run(scenario())
    assert points("r1") == 0
    reasons = {dict(m.headers)[events.DEAD_LETTER_REASON_HEADER].decode() for m in dead}
    assert reasons == {f"run {TEAM}/{project}/r1 was deleted"}


# -- failures, retries, races -----------------------------------------------------------------------


def _fail_once(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """``deletion.<name>`` raises on its first call, then works; returns its calls (a list to count)."""
    real, calls = getattr(deletion, name), []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"{name} failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(deletion, name, flaky)
    return calls


def test_a_deletion_that_failed_half_way_is_finished_by_deleting_again(
    api: ApiHarness, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run("mnist", "half")
    log_run(api, admin, run)
    _fail_once(monkeypatch, "_purge")

    assert api.http.delete(run.path, headers=admin).status_code == 500
    assert api.http.get(run.path, headers=admin).status_code == 404  # tombstoned: hidden already
    assert rows_of(api, "mnist", "half")["metric_points"] == 80
    failed = [d for a, t, d in audit_actions(api, admin) if (a, t) == ("run.delete", "mnist/half")]
    assert failed == [{"failed": "RuntimeError: _purge failed"}]

    assert ok(api.http.delete(run.path, headers=admin))["deleted"] is True
    assert set(rows_of(api, "mnist", "half").values()) == {0}
    assert not (api.app.state.backend.files.root / TEAM / "mnist" / "half").exists()
    assert ("run.delete", "mnist/half", {}) in audit_actions(api, admin)


@pytest.mark.parametrize("step", ["_copy_state", "_purge"])
def test_a_move_that_failed_half_way_is_finished_by_moving_again(
    api: ApiHarness, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """It fails while copying (``_copy_state``: some tables copied) or while removing the source (``_purge``)."""
    run = Run("mnist", "mover")
    log_run(api, admin, run)
    expected = {t: n for t, n in rows_of(api, "mnist", "mover").items() if n} | {"run_states": 1}  # the latest one
    _fail_once(monkeypatch, step)

    assert api.http.post(run.path + "/move", json={"project": "other"}, headers=admin).status_code == 500
    assert api.http.get(run.path, headers=admin).status_code == 404  # marked as moving: hidden
    assert any(d.get("failed") for a, _, d in audit_actions(api, admin) if a == "run.move")
    elsewhere = api.http.post(run.path + "/move", json={"project": "third"}, headers=admin)
    if step == "_copy_state":  # it cannot go elsewhere, nor be deleted, until the move is finished
        assert elsewhere.status_code == 409 and "being moved to" in elsewhere.text
        assert api.http.delete(run.path, headers=admin).status_code == 409
        assert deletion.purge_reappeared(api.storage) == []  # the sweep leaves a run being moved alone
        assert rows_of(api, "mnist", "mover")["metric_points"] == 80
    else:  # copied whole: it is in its new project, what is left is removing the source
        assert elsewhere.status_code == 404 and api.http.delete(run.path, headers=admin).status_code == 404
        assert run_ids(api, "other", admin) == ["mover"]

    moved = ok(api.http.post(run.path + "/move", json={"project": "other"}, headers=admin))
    assert moved == {"team": TEAM, "project": "other", "run_id": "mover"}
    assert set(rows_of(api, "mnist", "mover").values()) == {0}
    there = {t: n for t, n in rows_of(api, "other", "mover").items() if n}
    assert there == expected  # every row once
    assert run_ids(api, "other", admin) == ["mover"] and run_ids(api, "mnist", admin) == []
    assert ok(api.http.get(f"/api/v1/projects/{TEAM}/other/runs/count", headers=admin)) == {"count": 1}
    files = ok(api.http.get(f"/api/v1/runs/{TEAM}/other/mover/files", headers=admin))["files"]
    assert api.http.get(files[0]["url"], headers=admin).content == BLOB
    # Moving it there again changes nothing.
    ok(api.http.post(run.path + "/move", json={"project": "other"}, headers=admin))
    assert {t: n for t, n in rows_of(api, "other", "mover").items() if n} == expected


def test_of_two_moves_at_once_the_later_mark_goes_on(api: ApiHarness, admin: dict[str, str]) -> None:
    run = Run("mnist", "both")
    log_run(api, admin, run)
    # Another request marked it (and is copying it) to project "first": this one is refused.
    deletion._bury(api.storage, TEAM, "mnist", ["both"], f"{deletion.MOVING}{TEAM}/first #other")
    refused = api.http.post(run.path + "/move", json={"project": "second"}, headers=admin)
    assert refused.status_code == 409 and f"being moved to {TEAM}/first" in refused.text
    assert rows_of(api, "second", "both")["runs"] == 0


def test_rows_a_batch_stores_while_its_run_is_deleted_are_removed_by_the_sweep(
    api: ApiHarness, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch that looked the run up just before its deletion began stores it after its rows were removed
    (a worker in cluster mode: the embedded server's deletion waits for the batch). The crash sweep then
    neither marks it crashed nor dead-letters anything: it removes those rows."""
    run = Run("mnist", "racer")
    log_run(api, admin, run, finished=False)
    pipeline = api.app.state.backend.sink.pipeline
    processor = pipeline.processor
    looked_up = processor.tombstoned

    def racing(keys: Any) -> dict[Any, str]:
        found = looked_up(keys)
        deletion.delete_run(api.storage, TEAM, "mnist", "racer")  # lands now, outside the pipeline's lock
        monkeypatch.setattr(processor, "tombstoned", looked_up)
        return found

    monkeypatch.setattr(processor, "tombstoned", racing)
    ok(api.ingest([run.metrics([100, 101])], admin))
    back = rows_of(api, "mnist", "racer")
    assert back["run_states"] > 0 and back["metric_points"] > 0  # the batch's rows came back
    assert api.http.get(run.path, headers=admin).status_code == 404  # yet no query shows them
    chart = {"metrics": ["loss"], "run_ids": ["racer"]}
    assert ok(api.http.post(f"/api/v1/projects/{TEAM}/mnist/series", json=chart, headers=admin))["series"] == []
    assert [r for r in processing.silent_runs(api.storage, time.time() + 10**6) if r[2] == "racer"] == []

    pipeline.sweep(timeout_s=0.0, now=time.time() + 10**6)
    assert set(rows_of(api, "mnist", "racer").values()) == {0}
    assert dead_letter_reasons(api) == []


def test_named_runs_and_uploads_of_a_deleted_run_are_refused_or_left_out(
    api: ApiHarness, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gone, kept = Run("mnist", "gone"), Run("mnist", "kept")
    log_run(api, admin, gone)
    log_run(api, admin, kept)
    _fail_once(monkeypatch, "_purge")  # its rows stay: only the tombstone hides them
    assert api.http.delete(gone.path, headers=admin).status_code == 500
    assert rows_of(api, "mnist", "gone")["metric_points"] == 80
    project = f"/api/v1/projects/{TEAM}/mnist"
    both = ["gone", "kept"]

    chart = ok(api.http.post(project + "/series", json={"metrics": ["loss"], "run_ids": both}, headers=admin))
    assert {s["run_id"] for s in chart["series"]} == {"kept"}
    system = ok(api.http.post(project + "/system", json={"run_ids": both}, headers=admin))
    assert {s["run_id"] for s in system["series"]} == {"kept"}
    for table in ("history", "runs"):
        csv = api.http.get(
            project + "/export", params={"run_ids": both, "format": "csv", "table": table}, headers=admin
        )
        assert csv.status_code == 200 and "kept" in csv.text and "gone" not in csv.text, table

    upload = api.http.put(
        f"/api/v1/files/{TEAM}/mnist/gone/late.bin", params={"sha256": SHA}, content=BLOB, headers=admin
    )
    assert upload.status_code == 409 and "was deleted" in upload.text
    assert not (api.app.state.backend.files.root / TEAM / "mnist" / "gone" / "late.bin").exists()


def test_the_processor_remembers_tombstones_and_briefly_the_runs_without(
    api: ApiHarness, admin: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log_run(api, admin, Run("mnist", "dead"))
    ok(api.http.delete(f"/api/v1/runs/{TEAM}/mnist/dead", headers=admin))
    asked: list[set[Any]] = []
    real = deletion.tombstones

    def counted(client: Any, keys: Any) -> dict[Any, str]:
        asked.append(set(keys))
        return real(client, keys)

    monkeypatch.setattr(deletion, "tombstones", counted)
    cache = deletion.TombstoneCache(alive_for_s=0.3)
    dead, live = (TEAM, "mnist", "dead"), (TEAM, "mnist", "live")
    assert cache.lookup(api.storage, [dead, live]) == {dead: "deleted"}
    assert cache.lookup(api.storage, [dead, live]) == {dead: "deleted"}
    assert asked == [{dead, live}]  # the second answer came from memory
    time.sleep(0.35)
    assert cache.lookup(api.storage, [dead, live]) == {dead: "deleted"}
    assert asked == [{dead, live}, {live}]  # "not deleted" is asked again, a tombstone never
    cache.forget([live])
    cache.lookup(api.storage, [live])
    assert len(asked) == 3


def test_deleting_on_a_cluster_without_replication_reaches_every_node(tmp_path: Path) -> None:
    """Without Keeper there is no ON CLUSTER: the local tables' rows are deleted on each node by a client
    of its own, found through the cluster (two chdb servers, one shard each)."""
    from infra.clickhouse_server import cluster_servers
    from runstream.cli import main

    nodes = cluster_servers(tmp_path, shards=2, name="runstream")
    try:
        for node in nodes:
            node.start()
        database = unique("cluster").replace("-", "_")
        dsns = [node.dsn.rsplit("/", 1)[0] + "/" + database for node in nodes]
        assert main(["migrate", "--cluster", "runstream", "--no-replication", "--dsn", dsns[0], "--dsn", dsns[1]]) == 0
        client = connect(dsns[0])
        ids = [f"r{i}" for i in range(6)]
        for run_id in ids:
            client.command(
                "INSERT INTO runs (team, project, run_id, state, version) VALUES ('acme', 'p', {r:String}, 'finished', 1)",
                parameters={"r": run_id},
            )
            client.command(
                "INSERT INTO metric_points (team, project, run_id, metric, step, value) "
                "VALUES ('acme', 'p', {r:String}, 'loss', 1, 0.5)",
                parameters={"r": run_id},
            )
        local = [connect(dsn).query("SELECT count() FROM metric_points_local").result_rows[0][0] for dsn in dsns]
        assert all(local) and sum(local) == 6  # runs on both shards

        for run_id in ids:
            deletion.delete_run(client, TEAM, "p", run_id)
        assert client.query("SELECT count() FROM metric_points").result_rows == [(0,)]
        assert client.query("SELECT count() FROM runs").result_rows == [(0,)]
        assert deletion.purge_reappeared(client) == []
        assert deletion.live_run_ids(client, TEAM, "p", [*ids, "other"]) == ["other"]
    finally:
        for node in nodes:
            node.stop()
