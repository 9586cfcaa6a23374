"""Alert rules and alerts through the API, on the real engine; the embedded pipeline fires rules synchronously."""

from __future__ import annotations

import threading
import time

import orjson

from runstream import events
from runstream.api import alerts as alerts_api
from runstream.storage.writer import insert_alerts
from runstream.streams.processor import RuleBook
from tests.helpers import make_event

TEAM, PROJECT = "acme", "mnist"
BASE = f"/api/v1/projects/{TEAM}/{PROJECT}"
RULES, ALERTS, STREAM = f"{BASE}/alert-rules", f"{BASE}/alerts", f"{BASE}/alerts/stream"
BIG_LOSS = {
    "name": "loss too big",
    "kind": "threshold",
    "spec": {"metric": "loss", "op": ">", "value": 10},
    "cooldown_s": 0,
}
RULEBOOK_TTL_S = 1.0  # the embedded pipeline's RuleBook cache


def _losses(run_id: str, seq: int, losses: list[float], start_step: int = 0) -> list[dict]:
    """A run_start (the first time) and one metrics event of ``losses``."""
    now = time.time()
    steps = list(range(start_step, start_step + len(losses)))
    metrics = make_event(
        events.METRICS,
        {"step": steps, "time": [now + i * 0.001 for i in range(len(steps))], "values": {"loss": losses}},
        seq=seq,
        run_id=run_id,
    )
    return ([make_event(events.RUN_START, {"name": run_id}, seq=1, run_id=run_id)] if seq == 2 else []) + [metrics]


def _ingest(api, headers, run_id: str, seq: int, losses: list[float], start_step: int = 0) -> None:
    response = api.ingest(_losses(run_id, seq, losses, start_step), headers)
    assert response.status_code == 200, response.text


def _rule(api, headers, **overrides) -> dict:
    response = api.http.post(RULES, json={**BIG_LOSS, **overrides}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _alerts(api, headers, **params) -> list[dict]:
    response = api.http.get(ALERTS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["alerts"]


def _read_events(lines, count: int, on_open=None) -> list[tuple[str | None, dict]]:
    """(id, alert) of the first ``count`` SSE events; ``on_open()`` runs once the stream has started."""
    found: list[tuple[str | None, dict]] = []  # None: an event without an id
    event_id, kind = None, None
    for line in lines:
        if line.startswith("retry:") and on_open:
            on_open()
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            assert kind == "alert"
            found.append((event_id, orjson.loads(line[6:])))
            if len(found) == count:
                break
    return found


def test_threshold_rule_fires_and_its_alert_is_listed_and_streamed(api):
    member = api.key(TEAM, "mia", "member")
    rule = _rule(api, member)
    assert rule["enabled"] is True and rule["spec"] == BIG_LOSS["spec"] and rule["cooldown_s"] == 0
    assert api.http.get(RULES, headers=member).json() == {"rules": [rule]}
    assert api.http.get(f"{RULES}/{rule['id']}", headers=member).json() == rule

    _ingest(api, member, "r1", 2, [1.0, 11.0, 12.0])  # one crossing: one alert
    listed = _alerts(api, member)
    assert [(a["run_id"], a["rule_id"], a["source"], a["level"]) for a in listed] == [
        ("r1", rule["id"], "rule", "WARN")
    ]
    assert listed[0]["title"].startswith("loss too big") and "11" in listed[0]["text"]
    assert _alerts(api, member, run_id="r1") == listed
    assert _alerts(api, member, run_id="other") == []
    assert _alerts(api, member, since=time.time() + 3600) == []
    assert api.http.get(ALERTS, params={"since": "yesterday"}, headers=member).status_code == 400
    assert api.http.get(ALERTS, params={"limit": 0}, headers=member).status_code == 400

    with api.http.stream("GET", STREAM, params={"since": 0, "max_events": 1, "timeout_s": 10}, headers=member) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        [(event_id, streamed)] = _read_events(r.iter_lines(), 1)
    assert streamed == listed[0]
    assert event_id == f"{round(streamed['time'] * 1000)}-{streamed['alert_id']}"


def test_the_stream_sends_what_arrives_after_connecting(api):
    member = api.key(TEAM, "mia", "member")
    _rule(api, member)
    _ingest(api, member, "old", 2, [20.0])  # before connecting: not sent
    ingested = []

    def crossing_later():
        def ingest():
            time.sleep(0.5)
            ingested.append(api.ingest(_losses("new", 2, [1.0, 15.0]), member).status_code)

        threading.Thread(target=ingest, daemon=True).start()

    started = time.monotonic()
    with api.http.stream("GET", STREAM, params={"max_events": 1, "timeout_s": 20}, headers=member) as r:
        [(_, streamed)] = _read_events(r.iter_lines(), 1, on_open=crossing_later)
    assert ingested == [200]
    assert streamed["run_id"] == "new"
    assert time.monotonic() - started < 10  # polled about every second, not at the timeout


def test_an_alert_stored_late_with_an_earlier_time_still_arrives_once(api):
    """A worker behind its partition stores an alert dated before the newest one a stream already sent."""
    member = api.key(TEAM, "mia", "member")
    now = time.time()

    def alert(alert_id: str, at: float) -> dict:
        return {
            "team": TEAM,
            "project": PROJECT,
            "run_id": "r1",
            "alert_id": alert_id,
            "rule_id": None,
            "source": "sdk",
            "level": "WARN",
            "title": alert_id,
            "text": "",
            "time": at,
        }

    def store_later():
        def store():
            time.sleep(0.3)
            insert_alerts(api.storage, [alert("newer", now + 1)])
            time.sleep(1.5)  # the stream has sent "newer" by now
            insert_alerts(api.storage, [alert("late", now - 20), alert("newer", now + 1)])  # and a replayed copy

        threading.Thread(target=store, daemon=True).start()

    with api.http.stream("GET", STREAM, params={"timeout_s": 5}, headers=member) as r:
        sent = _read_events(r.iter_lines(), 3, on_open=store_later)
    assert [a["alert_id"] for _, a in sent] == ["newer", "late"]


def test_last_event_id_resumes_after_that_event(api):
    member = api.key(TEAM, "mia", "member")
    _rule(api, member)
    _ingest(api, member, "a", 2, [11.0])
    _ingest(api, member, "b", 2, [12.0])
    with api.http.stream("GET", STREAM, params={"since": 0, "max_events": 5, "timeout_s": 2}, headers=member) as r:
        both = _read_events(r.iter_lines(), 2)
    assert sorted(a["run_id"] for _, a in both) == ["a", "b"]

    resume = {"Last-Event-ID": both[0][0], **member}
    with api.http.stream("GET", STREAM, params={"max_events": 5, "timeout_s": 2}, headers=resume) as r:
        rest = _read_events(r.iter_lines(), 5)
    assert rest == both[1:]
    with api.http.stream("GET", STREAM, params={"timeout_s": 1}, headers={"Last-Event-ID": both[1][0], **member}) as r:
        assert _read_events(r.iter_lines(), 1) == []
    with api.http.stream("GET", STREAM, params={"since": 0, "run_id": "b", "timeout_s": 1}, headers=member) as r:
        assert [a["run_id"] for _, a in _read_events(r.iter_lines(), 5)] == ["b"]


def test_the_stream_keeps_the_connection_alive(api, monkeypatch):
    member = api.key(TEAM, "mia", "member")
    monkeypatch.setattr(alerts_api, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(alerts_api, "POLL_S", 0.1)
    started = time.monotonic()
    response = api.http.get(STREAM, params={"timeout_s": 1}, headers=member)
    assert 1 <= time.monotonic() - started < 5
    assert response.status_code == 200
    assert response.text.startswith("retry: ") and ": keepalive\n\n" in response.text and "event:" not in response.text
    assert api.http.get(STREAM, params={"timeout_s": 0}, headers=member).status_code == 400
    assert api.http.get(STREAM, params={"since": "-1"}, headers=member).status_code == 400
    assert api.http.get(STREAM, params={"since": ""}, headers=member).status_code == 400


def test_invalid_rules_are_422_with_the_reason(api):
    member = api.key(TEAM, "mia", "member")
    # Content that fits the declaration but cannot be applied: 422 with the reason.
    cases = [
        ({"spec": {"metric": "loss", "op": ">"}}, "'value'"),
        ({"spec": {"metric": "loss", "op": ["<"], "value": 1}}, "'op'"),
        ({"spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["ftp://x"]}}, "webhooks"),
        # A rule's webhook may not reach into the server's network (the operator can allow hosts).
        (
            {"spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["http://169.254.169.254/latest"]}},
            "RUNSTREAM_WEBHOOK_ALLOW",
        ),
        (
            {"spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["http://localhost:9200/x"]}},
            "internal address",
        ),
        (
            {"spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["http://\uff11\uff12\uff17.0.0.1/x"]}},
            "internal address",
        ),
        ({"spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["http://[::1"]}}, "not a valid URL"),
        ({"spec": {"metric": "loss", "op": ">", "value": 1, "level": "LOUD"}}, "level"),
    ]
    for change, reason in cases:
        response = api.http.post(RULES, json={**BIG_LOSS, **change}, headers=member)
        assert response.status_code == 422, (change, response.text)
        assert reason in response.json()["error"]["message"], (change, response.json())
    # A body that does not fit its declaration (an unknown kind, a wrong type, a value out of bounds, an unknown
    # field): 400 naming the field.
    misfits = [
        ({"kind": "telepathy"}, "unknown rule kind"),
        ({"spec": "loss > 1"}, "JSON object"),
        ({"cooldown_s": -1}, "cooldown_s"),
        ({"cooldown_s": True}, "cooldown_s"),
        ({"enabled": "yes"}, "enabled"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "unknown field(s) 'colour'"),
    ]
    for change, reason in misfits:
        response = api.http.post(RULES, json={**BIG_LOSS, **change}, headers=member)
        assert response.status_code == 400, (change, response.text)
        assert reason in response.json()["error"]["message"], (change, response.json())
    missing = api.http.post(RULES, json={"name": "x", "kind": "threshold"}, headers=member)
    assert missing.status_code == 400 and "spec" in missing.json()["error"]["message"]
    assert api.http.post(RULES, content=b"{", headers=member).status_code == 400
    assert api.http.get(RULES, headers=member).json() == {"rules": []}
    rule = _rule(api, member)
    internal = {
        "kind": "threshold",
        "spec": {"metric": "loss", "op": ">", "value": 1, "webhooks": ["http://10.0.0.7/"]},
    }
    response = api.http.patch(f"{RULES}/{rule['id']}", json=internal, headers=member)
    assert response.status_code == 422 and "internal address" in response.json()["error"]["message"]
    assert "webhooks" not in api.http.get(f"{RULES}/{rule['id']}", headers=member).json()["spec"]

    rule = _rule(api, member)
    alone = api.http.patch(f"{RULES}/{rule['id']}", json={"kind": "divergence"}, headers=member)
    assert alone.status_code == 400 and "together" in alone.json()["error"]["message"]
    bad = api.http.patch(
        f"{RULES}/{rule['id']}", json={"kind": "divergence", "spec": {"metric": "loss"}}, headers=member
    )
    assert bad.status_code == 422 and "percent" in bad.json()["error"]["message"]
    assert api.http.get(f"{RULES}/{rule['id']}", headers=member).json() == rule
    changed = api.http.patch(
        f"{RULES}/{rule['id']}",
        json={"kind": "threshold", "name": "too small", "spec": {"metric": "loss", "op": "<", "value": 0.5}},
        headers=member,
    )
    assert changed.status_code == 200
    assert changed.json()["spec"]["op"] == "<" and changed.json()["name"] == "too small"
    assert changed.json()["kind"] == "threshold" and changed.json()["created_at"] == rule["created_at"]
    assert api.http.patch(f"{RULES}/nope", json={"enabled": False}, headers=member).status_code == 404


def test_a_disabled_rule_does_not_fire_until_enabled(api):
    member = api.key(TEAM, "mia", "member")
    rule = _rule(api, member, enabled=False)
    _ingest(api, member, "r1", 2, [1.0, 11.0])
    assert _alerts(api, member) == []

    enabled = api.http.patch(f"{RULES}/{rule['id']}", json={"enabled": True}, headers=member)
    assert enabled.status_code == 200 and enabled.json()["enabled"] is True
    time.sleep(RULEBOOK_TTL_S + 0.1)  # the pipeline read the project's rules (none enabled) just now
    _ingest(api, member, "r1", 3, [2.0, 13.0], start_step=2)
    assert [a["rule_id"] for a in _alerts(api, member)] == [rule["id"]]


def test_a_deleted_rule_is_gone_and_no_longer_fires(api):
    member = api.key(TEAM, "mia", "member")
    rule = _rule(api, member)
    keep = _rule(api, member, name="any nan", kind="nonfinite", spec={"metric": "*"})
    _ingest(api, member, "r1", 2, [1.0, 11.0])
    assert len(_alerts(api, member)) == 1

    assert api.http.delete(f"{RULES}/{rule['id']}", headers=member).status_code == 204
    assert api.http.get(f"{RULES}/{rule['id']}", headers=member).status_code == 404
    assert api.http.delete(f"{RULES}/{rule['id']}", headers=member).status_code == 404
    assert api.http.get(RULES, headers=member).json() == {"rules": [keep]}
    assert [r.rule_id for r in RuleBook(lambda: api.storage, ttl_s=0).rules(TEAM, PROJECT)] == [keep["id"]]

    time.sleep(RULEBOOK_TTL_S + 0.1)  # past the pipeline's cached copy
    _ingest(api, member, "r1", 3, [1.0, 20.0], start_step=2)  # falls, then crosses again: would fire
    assert len(_alerts(api, member)) == 1


def test_role_matrix(api):
    admin = api.key(TEAM, "ann", "admin")
    member = api.key(TEAM, "mia", "member")
    viewer = api.key(TEAM, "vic", "viewer")
    outsider = api.key("rivals", "otto", "admin")
    rule = _rule(api, admin)
    one = f"{RULES}/{rule['id']}"
    reads = [(ALERTS, {}), (f"{STREAM}", {"timeout_s": 1}), (RULES, {}), (one, {})]
    for path, params in reads:
        assert api.http.get(path, params=params).status_code == 404, path
        assert api.http.get(path, params=params, headers=outsider).status_code == 404, path
        for who in (viewer, member, admin):
            assert api.http.get(path, params=params, headers=who).status_code == 200, path
    writes = [("POST", RULES, BIG_LOSS), ("PATCH", one, {"cooldown_s": 60})]
    for method, path, body in writes:
        for who, expected in (({}, 401), (outsider, 404), (viewer, 403), (member, (200, 201)), (admin, (200, 201))):
            status = api.http.request(method, path, json=body, headers=who).status_code
            assert status in (expected if isinstance(expected, tuple) else (expected,)), (method, path, status)
    for who, expected in (({}, 401), (outsider, 404), (viewer, 403), (member, 204)):
        assert api.http.delete(one, headers=who).status_code == expected


def test_webhook_urls_are_shown_whole_only_to_writers(api):
    """A webhook URL's path is its secret (a Slack token): readers see where it goes, not the URL."""
    member, viewer = api.key(TEAM, "mia", "member"), api.key(TEAM, "vic", "viewer")
    secret = "https://hooks.slack.com/services/T000/B000/SECRETTOKEN"
    rule = _rule(api, member, spec={"metric": "loss", "op": ">", "value": 1, "webhooks": [secret]})
    assert rule["spec"]["webhooks"] == [secret]
    assert api.http.get(f"{RULES}/{rule['id']}", headers=member).json()["spec"]["webhooks"] == [secret]
    assert api.http.get(RULES, headers=viewer).json()["rules"][0]["spec"]["webhooks"] == ["https://hooks.slack.com/…"]
    assert "SECRETTOKEN" not in api.http.get(f"{RULES}/{rule['id']}", headers=viewer).text
