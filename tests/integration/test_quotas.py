"""Quotas through the real app on a real database: 429 with Retry-After for a flooding key, never for another.

The app's quotas are swapped for ones with small limits and, where a test counts on
a bucket not refilling between requests, a clock that only the test moves.
"""

from __future__ import annotations

import dataclasses

import orjson
import requests

import runstream
from runstream.api.quotas import Quotas
from tests.helpers import ServedApp, make_event, metrics_event, unique, wait_for

SERIES = "/api/v1/projects/{team}/{project}/series"
STREAM = "/api/v1/projects/{team}/{project}/alerts/stream"
QUIET = {"console": False, "system_metrics": False, "git": False}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limit(api, clock=None, **settings) -> None:
    """The app's quotas from now on: the harness's settings with ``settings`` changed (fake ``clock``: frozen)."""
    changed = dataclasses.replace(api.settings, **settings)
    api.app.state.quotas = Quotas(changed, clock=clock) if clock else Quotas(changed)


def points(api, team: str, project: str) -> int:
    sql = "SELECT count() FROM metric_points FINAL WHERE team = {t:String} AND project = {p:String}"
    return int(api.storage.query(sql, parameters={"t": team, "p": project}).result_rows[0][0])


def batch(team: str, project: str, steps: int, run_id: str = "run1") -> list[dict]:
    start = make_event("run_start", {"name": run_id}, seq=0, run_id=run_id, team=team, project=project)
    return [start, metrics_event(seq=1, run_id=run_id, steps=range(steps), team=team, project=project)]


def assert_quota_refusal(response, setting: str) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"]["setting"] == setting and setting in error["message"]


def test_a_flooding_key_gets_429_on_ingest_and_nothing_of_its_batch_is_stored(api):
    clock = Clock()
    limit(api, clock, quota_key_points_per_s=100, quota_burst_s=1)
    flooder, neighbour = api.key("acme", "flood"), api.key("globex", "calm")
    project = unique("p")
    assert api.ingest(batch("acme", project, 40), flooder).status_code == 200  # 80 points of 100
    refused = api.ingest(batch("acme", project, 40, run_id="run2"), flooder)
    assert_quota_refusal(refused, "RUNSTREAM_QUOTA_KEY_POINTS_PER_S")
    assert refused.headers["retry-after"] == "1"  # 60 more points at 100/s, rounded up
    assert "API key" in refused.json()["error"]["message"]
    assert points(api, "acme", project) == 80  # the refused batch applied nothing
    assert api.http.get(f"/api/v1/runs/acme/{project}/run2", headers=flooder).status_code == 404
    # Another team's key is not held back by the flood.
    assert api.ingest(batch("globex", project, 40), neighbour).status_code == 200
    assert points(api, "globex", project) == 80
    # Once the time it was told has passed, the same batch goes through.
    clock.now += int(refused.headers["retry-after"])
    assert api.ingest(batch("acme", project, 40, run_id="run2"), flooder).status_code == 200
    assert points(api, "acme", project) == 160


def test_a_team_is_held_to_its_quota_across_its_keys(api):
    clock = Clock()
    project = unique("p")
    size = len(b"\n".join(orjson.dumps(e) for e in batch("acme", project, 20)))
    limit(api, clock, quota_team_bytes_per_s=size * 3 // 2, quota_burst_s=1)  # one batch fits, not two
    first, second, other = api.key("acme", "a"), api.key("acme", "b"), api.key("globex", "c")
    assert api.ingest(batch("acme", project, 20), first).status_code == 200
    assert_quota_refusal(api.ingest(batch("acme", project, 20, "r2"), second), "RUNSTREAM_QUOTA_TEAM_BYTES_PER_S")
    assert api.ingest(batch("globex", project, 20), other).status_code == 200


def test_a_flooding_key_gets_429_on_queries_while_another_team_reads_on(api):
    clock = Clock()
    limit(api, clock, quota_key_queries_per_s=3, quota_burst_s=1)
    flooder, neighbour = api.key("acme", "flood"), api.key("globex", "calm")
    for team, headers in (("acme", flooder), ("globex", neighbour)):
        assert api.ingest(batch(team, "p", 5), headers).status_code == 200  # ingest is not a query
    chart = {"metrics": ["loss"], "run_ids": ["run1"]}
    assert api.http.post(SERIES.format(team="acme", project="p"), json=chart, headers=flooder).status_code == 200
    assert api.http.get("/api/v1/runs/acme/p/run1", headers=flooder).status_code == 200
    assert api.http.get("/api/v1/projects/acme/p/runs", headers=flooder).status_code == 200
    for refused in (
        api.http.post(SERIES.format(team="acme", project="p"), json=chart, headers=flooder),
        api.http.get("/api/v1/runs/acme/p/run1", headers=flooder),
    ):
        assert_quota_refusal(refused, "RUNSTREAM_QUOTA_KEY_QUERIES_PER_S")
    answer = api.http.post(SERIES.format(team="globex", project="p"), json=chart, headers=neighbour)
    assert answer.status_code == 200 and answer.json()["series"]
    clock.now += 1
    assert api.http.post(SERIES.format(team="acme", project="p"), json=chart, headers=flooder).status_code == 200


def test_keyless_callers_are_limited_by_address(api):
    clock = Clock()
    limit(api, clock, quota_anonymous_queries_per_s=2, quota_burst_s=1)
    public = api.key("acme", "admin", "admin")
    assert api.ingest(batch("acme", "open", 3), public).status_code == 200
    assert (
        api.http.patch("/api/v1/projects/acme/open", json={"visibility": "public"}, headers=public).status_code == 200
    )
    for _ in range(2):
        assert api.http.get("/api/v1/runs/acme/open/run1").status_code == 200
    assert_quota_refusal(api.http.get("/api/v1/runs/acme/open/run1"), "RUNSTREAM_QUOTA_ANONYMOUS_QUERIES_PER_S")
    assert api.http.get("/api/v1/runs/acme/open/run1", headers=public).status_code == 200  # a key has its own


def test_live_streams_over_the_limit_are_refused_until_one_ends(api):
    limit(api, quota_key_streams=1)
    member, neighbour = api.key("acme", "watcher"), api.key("globex", "other")
    params = {"timeout_s": 60}

    def stream(url: str, team: str, headers: dict[str, str]) -> requests.Response:
        path = url + STREAM.format(team=team, project="p")
        return requests.get(path, params=params, headers=headers, stream=True, timeout=30)

    with ServedApp(api.app, lifespan="off") as url:
        with stream(url, "acme", member) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: a line iterator dropped early closes the connection
            assert next(lines).startswith(b"retry:")  # the stream is open
            with stream(url, "acme", member) as second:
                assert_quota_refusal(second, "RUNSTREAM_QUOTA_KEY_STREAMS")
            with stream(url, "globex", neighbour) as other:
                assert other.status_code == 200
        # The first stream's client went away: its slot comes back.

        def opens() -> bool:
            with stream(url, "acme", member) as again:
                return again.status_code == 200

        wait_for(opens, "a live stream slot to be given back")


def test_a_body_over_the_request_size_limit_is_413_naming_the_setting(api):
    limit(api, quota_request_bytes=1000)
    headers = api.key("acme", "big")
    project = unique("p")
    response = api.ingest(batch("acme", project, 50), headers)
    assert response.status_code == 413, response.text
    assert "RUNSTREAM_QUOTA_REQUEST_BYTES" in response.json()["error"]["message"]
    assert points(api, "acme", project) == 0
    assert api.ingest(batch("acme", project, 3), headers).status_code == 200


def test_429_is_documented_with_retry_after(api):
    document = api.http.get("/api/v1/openapi.json").json()
    ingest = document["paths"]["/api/v1/events"]["post"]["responses"]
    series = document["paths"][SERIES]["post"]["responses"]
    for responses in (ingest, series):
        assert responses["429"]["headers"]["Retry-After"]["required"] is True
    assert "429" not in document["paths"]["/api/v1/health"]["get"]["responses"]


def test_the_sdk_delivers_everything_through_a_tiny_quota(api, tmp_path):
    """A run that logs faster than its key may send: 429s, the SDK waits and resends, nothing is lost."""
    limit(api, quota_key_points_per_s=300, quota_burst_s=1)
    key = api.key("acme", "trainer")["Authorization"].removeprefix("Bearer ")
    project, steps = unique("p"), 600
    with ServedApp(api.app, lifespan="off") as url:
        settings = {**QUIET, "url": url, "api_key": key, "finish_timeout": 120}
        run = runstream.init(project=project, entity="acme", id="tiny", dir=tmp_path, settings=settings)
        for step in range(steps):
            run.log({"loss": 1.0 / (step + 1), "acc": step / steps})
        result = run.finish()
    assert result.unacked_events == 0, result
    assert points(api, "acme", project) == 2 * steps


def test_refused_ingest_batches_pay_for_their_bytes(api):
    clock = Clock()
    limit(api, clock, quota_key_bytes_per_s=1000, quota_burst_s=1)
    key = api.key("acme", "junk")
    junk = b"x" * 600  # not an event: 422, but it was read
    post = {**key, "Content-Type": "application/x-ndjson"}
    assert api.http.post("/api/v1/events", content=junk, headers=post).status_code == 422
    assert_quota_refusal(api.http.post("/api/v1/events", content=junk, headers=post), "RUNSTREAM_QUOTA_KEY_BYTES_PER_S")
    # Another team's project (404/403) is paid for the same way.
    clock.now += 10
    other = orjson.dumps(make_event("run_start", {"name": "r"}, seq=0, team="globex", project="p")) + b" " * 600
    assert api.http.post("/api/v1/events", content=other, headers=post).status_code in (403, 404)
    assert_quota_refusal(
        api.http.post("/api/v1/events", content=other, headers=post), "RUNSTREAM_QUOTA_KEY_BYTES_PER_S"
    )


def test_failed_authentication_is_limited_by_client_address(api):
    clock = Clock()
    limit(api, clock, quota_anonymous_queries_per_s=3, quota_burst_s=1)
    for n in range(3):
        bad = {"Authorization": f"Bearer rs_{n:012x}_" + "x" * 43}
        assert api.http.get("/api/v1/whoami", headers=bad).status_code == 401
    refused = api.http.get("/api/v1/whoami", headers={"Authorization": "Bearer rs_0000000000ff_" + "x" * 43})
    assert_quota_refusal(refused, "RUNSTREAM_QUOTA_ANONYMOUS_QUERIES_PER_S")
    clock.now += 1
    assert api.http.get("/api/v1/whoami", headers=api.key("acme", "good")).status_code == 200


def test_file_uploads_are_charged_their_bytes(api):
    import hashlib

    clock = Clock()
    limit(api, clock, quota_key_bytes_per_s=1000, quota_burst_s=1)
    writer = api.key("acme", "uploader")
    blob = b"b" * 5000  # larger than the bucket: passes once it is full, and leaves it in debt
    digest = hashlib.sha256(blob).hexdigest()
    path = f"/api/v1/files/acme/mnist/run1/model.bin?sha256={digest}"
    assert api.http.put(path, content=blob, headers=writer).status_code == 200
    refused = api.http.put(path, content=blob, headers=writer)
    assert_quota_refusal(refused, "RUNSTREAM_QUOTA_KEY_BYTES_PER_S")
    assert int(refused.headers["retry-after"]) == 5  # 4000 bytes of debt, then a full bucket for 5000
    clock.now += 5
    assert api.http.put(path, content=blob, headers=writer).status_code == 200
