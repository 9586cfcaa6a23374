"""Ingest through the API: whole batches or nothing, durable before 200, into the pipeline or Kafka; file blobs."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys

import orjson
import pytest
from starlette.testclient import TestClient

from infra.net import free_port
from runstream import events
from runstream.api.app import create_app
from runstream.api.backend import Backend
from runstream.api.ingest import MAX_BATCH_EVENTS
from runstream.settings import Settings
from tests.helpers import ServedApp, consume_events, make_event, metrics_event, training_script, unique


def _count(api, sql: str, **params) -> int:
    return int(api.storage.query(sql, parameters=params).result_rows[0][0])


def _points(api, project: str) -> int:
    return _count(api, "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", p=project)


def _start(project: str, run_id: str = "run1", team: str = "acme") -> dict:
    return make_event(
        events.RUN_START, {"name": run_id, "config": {"lr": 0.1}}, seq=0, run_id=run_id, team=team, project=project
    )


def test_a_batch_is_applied_and_queryable_when_the_answer_comes(api):
    headers = api.key("acme", "alice", "member")
    project = unique("p")
    batch = [_start(project), metrics_event(seq=1, steps=range(10), project=project)]
    response = api.ingest(batch, headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2}
    assert response.headers["x-request-id"]
    assert _points(api, project) == 20  # two metrics x ten steps
    assert (
        _count(api, "SELECT count() FROM runs FINAL WHERE project = {p:String} AND state = 'running'", p=project) == 1
    )


def test_a_resent_batch_changes_nothing(api):
    headers = api.key("acme", "alice")
    project = unique("p")
    batch = [_start(project), metrics_event(seq=1, steps=range(5), project=project)]
    assert api.ingest(batch, headers).status_code == 200
    assert api.ingest(batch, headers).status_code == 200
    assert _points(api, project) == 10
    assert (
        _count(api, "SELECT count() FROM metric_summaries FINAL WHERE project = {p:String} AND count = 5", p=project)
        == 2
    )


def test_one_invalid_event_rejects_the_whole_batch_with_reasons(api):
    headers = api.key("acme", "alice")
    project = unique("p")
    bad = metrics_event(seq=2, project=project)
    bad["data"]["step"] = [-1, 0, 1]
    body = b"\n".join([orjson.dumps(_start(project)), b"{not json", orjson.dumps(bad)])
    response = api.http.post("/api/v1/events", content=body, headers=headers)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_events"
    assert "nothing in the batch was applied" in error["message"]
    assert [e["line"] for e in error["details"]["errors"]] == [2, 3]
    assert "not valid JSON" in error["details"]["errors"][0]["reason"]
    assert "step" in error["details"]["errors"][1]["reason"]
    assert _count(api, "SELECT count() FROM runs WHERE project = {p:String}", p=project) == 0


def test_server_written_events_are_refused_from_clients(api):
    headers = api.key("acme", "alice")
    project = unique("p")
    forged = make_event(events.RUN_STATE, {"state": "crashed"}, project=project)
    response = api.ingest([_start(project), forged], headers)
    assert response.status_code == 422
    assert "written by the server" in response.json()["error"]["details"]["errors"][0]["reason"]
    # A rule's alert comes from the processor: a client's would be posted to the rule's webhooks.
    rule_alert = make_event(
        events.ALERT,
        {"title": "loss diverged", "text": "x", "level": "ERROR", "source": "rule", "rule_id": "r1", "alert_id": "a1"},
        project=project,
    )
    response = api.ingest([_start(project), rule_alert], headers)
    assert response.status_code == 422 and "source 'sdk'" in response.json()["error"]["details"]["errors"][0]["reason"]
    sdk_alert = make_event(
        events.ALERT, {"title": "done", "text": "x", "level": "INFO", "source": "sdk"}, project=project
    )
    assert api.ingest([_start(project), sdk_alert], headers).status_code == 200


def test_size_limits_are_413_and_an_empty_batch_is_422(api):
    headers = api.key("acme", "alice")
    project = unique("p")
    too_many = [metrics_event(seq=i, steps=range(1), project=project) for i in range(MAX_BATCH_EVENTS + 1)]
    response = api.ingest(too_many, headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    response = api.http.post("/api/v1/events", content=b"x" * 100, headers={**headers, "Content-Length": str(64 << 20)})
    assert response.status_code == 413
    assert api.http.post("/api/v1/events", content=b"\n\n", headers=headers).status_code == 422
    assert _points(api, project) == 0


def test_ingest_needs_a_key_that_may_write_to_the_project(api):
    project = unique("p")
    batch = [_start(project)]
    assert api.ingest(batch, {}).status_code == 401
    assert api.ingest(batch, {"Authorization": "Bearer rs_000000000000_" + "x" * 43}).status_code == 401
    assert api.ingest(batch, {"Authorization": "Basic abc"}).status_code == 401
    # Without a key the answer is 401 even for a batch that is also invalid.
    response = api.http.post("/api/v1/events", content=b"not json\n")
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    assert api.ingest(batch, api.key("acme", "vera", "viewer")).status_code == 403
    # Another team's key: the private project is not even confirmed to exist.
    assert api.ingest(batch, api.key("globex", "gus", "admin")).status_code == 404
    assert api.ingest(batch, api.key("acme", "ada", "admin")).status_code == 200


def test_cluster_mode_answers_after_kafka_acknowledged(kafka_bootstrap, clickhouse_dsn, tmp_path):
    settings = Settings(kafka=kafka_bootstrap, clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path))
    app = create_app(settings)
    project = unique("p")
    with TestClient(app) as http:
        from runstream.storage import accounts

        client = app.state.backend.client
        accounts.ensure_team(client, "acme")
        accounts.set_member(client, "acme", "alice", "member")
        _, key = accounts.create_key(client, "acme", "alice")
        batch = [_start(project), metrics_event(seq=1, project=project), metrics_event(seq=2, project=project)]
        body = b"\n".join(orjson.dumps(e) for e in batch)
        response = http.post("/api/v1/events", content=body, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
    found = asyncio.run(
        consume_events(
            kafka_bootstrap, [events.TOPIC_RUNS.name, events.TOPIC_METRICS.name], project, lambda got: len(got) >= 3
        )
    )
    assert sorted((e.type, e.seq) for e in found) == [("metrics", 1), ("metrics", 2), ("run_start", 0)]
    assert {e.key for e in found} == {f"acme/{project}/run1".encode()}


def test_an_unreachable_kafka_is_503_and_nothing_is_claimed(clickhouse_dsn, tmp_path):
    settings = Settings(kafka=f"127.0.0.1:{free_port()}", clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path))
    app = create_app(settings, Backend(settings, local_admin=True))
    with TestClient(app, client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080") as http:
        response = http.post("/api/v1/events", content=orjson.dumps(_start(unique("p"))))
    assert response.status_code == 503
    assert "retry" in response.json()["error"]["message"]


# -- files ----------------------------------------------------------------------------------


def test_files_round_trip_with_checksums(api):
    writer = api.key("acme", "alice")
    blob = bytes(range(256)) * 1000
    digest = hashlib.sha256(blob).hexdigest()
    path = "/api/v1/files/acme/mnist/run1/media/images/sample_1.png"
    assert api.http.put(f"{path}?sha256={digest}", content=blob, headers=writer).json()["size"] == len(blob)
    got = api.http.get(path, headers=writer)
    assert got.status_code == 200 and got.content == blob
    # A changed blob is refused and the stored one is kept.
    refused = api.http.put(f"{path}?sha256={digest}", content=blob[:-1] + b"x", headers=writer)
    assert refused.status_code == 400 and "SHA-256" in refused.json()["error"]["message"]
    assert api.http.get(path, headers=writer).content == blob
    assert api.http.put(path, content=blob, headers=writer).status_code == 400  # no checksum
    assert api.http.get("/api/v1/files/acme/mnist/run1/nothing.txt", headers=writer).status_code == 404


def test_file_access_follows_the_project(api):
    blob = b"weights"
    digest = hashlib.sha256(blob).hexdigest()
    path = "/api/v1/files/acme/secret/run1/model.bin"
    assert (
        api.http.put(f"{path}?sha256={digest}", content=blob, headers=api.key("acme", "vera", "viewer")).status_code
        == 403
    )
    assert api.http.put(f"{path}?sha256={digest}", content=blob).status_code == 401
    assert api.http.put(f"{path}?sha256={digest}", content=blob, headers=api.key("acme", "alice")).status_code == 200
    assert api.http.get(path).status_code == 404
    assert api.http.get(path, headers=api.key("globex", "gus", "admin")).status_code == 404
    assert api.http.get(path, headers=api.key("acme", "vic", "viewer")).content == blob


# Encoded, so the HTTP client sends the dot segments as they are and the server sees them decoded.
@pytest.mark.parametrize("key", ["..%2F..%2Fetc%2Fpasswd", "a%2F..%2F..%2Fb", "%2E%2E%2Fx", "a%2F%2Fb", "%2E"])
def test_file_keys_cannot_leave_the_store(api, key):
    blob = b"x"
    response = api.http.put(
        f"/api/v1/files/acme/mnist/run1/{key}?sha256={hashlib.sha256(blob).hexdigest()}",
        content=blob,
        headers=api.key("acme", "alice"),
    )
    assert response.status_code in (400, 404)
    assert not list((api.app.state.backend.files.root.parent).glob("**/passwd"))


# -- the SDK against the real server -------------------------------------------------------


def test_the_sdk_logs_through_the_http_server(api, tmp_path):
    key = api.key("acme", "alice")["Authorization"].removeprefix("Bearer ")
    project = unique("p")
    with ServedApp(api.app) as url:
        script = training_script(str(tmp_path), url, project, "sdkrun", steps=300)
        script = script.replace("runstream.init(", "runstream.init(entity='acme', ")
        env = {"RUNSTREAM_API_KEY": key, "PATH": "/usr/bin:/bin"}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout.splitlines()[-1])
    assert result["unacked"] == 0
    assert _points(api, project) == 600
    assert (
        _count(api, "SELECT count() FROM runs FINAL WHERE project = {p:String} AND state = 'finished'", p=project) == 1
    )
