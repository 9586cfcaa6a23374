"""Quotas as pure logic: token buckets on a fake clock, who is charged, live-stream slots."""

from __future__ import annotations

import orjson
import pytest

from runstream.api.auth import Principal
from runstream.api.quotas import Limit, QuotaExceeded, Quotas, Rate, admit, count_points
from runstream.events import decode
from runstream.settings import Settings
from tests.helpers import metrics_event


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def quotas(clock: Clock, **limits: object) -> Quotas:
    return Quotas(Settings(**limits), clock=clock)  # type: ignore[arg-type]


KEY_A = Principal(user="ann", team="acme", role="member", key_id="k1")
KEY_B = Principal(user="bob", team="acme", role="member", key_id="k2")
OTHER_TEAM = Principal(user="cy", team="globex", role="member", key_id="k3")


def test_a_bucket_lets_a_burst_pass_then_refills_at_its_rate():
    clock = Clock()
    rate = Rate(Limit("quota_key_queries_per_s", 10, "requests/s"), burst_s=2)
    for _ in range(20):  # 2 s of 10/s at once
        admit([(rate, "key:k1", 1)], clock)
    with pytest.raises(QuotaExceeded) as refused:
        admit([(rate, "key:k1", 1)], clock)
    assert refused.value.retry_after == 1  # 0.1 s, rounded up to whole seconds
    clock.now += 0.1
    admit([(rate, "key:k1", 1)], clock)
    admit([(rate, "key:k2", 1)], clock)  # another subject has its own bucket


def test_retry_after_is_the_time_until_the_cost_fits_rounded_up():
    clock = Clock()
    rate = Rate(Limit("quota_key_points_per_s", 100, "points/s"), burst_s=1)
    admit([(rate, "key:k1", 100)], clock)
    with pytest.raises(QuotaExceeded) as refused:
        admit([(rate, "key:k1", 250)], clock)  # larger than the bucket: it waits for a full one (1 s)
    assert refused.value.retry_after == 1
    clock.now += 1
    admit([(rate, "key:k1", 250)], clock)  # passes when full, and leaves the bucket in debt
    with pytest.raises(QuotaExceeded) as refused:
        admit([(rate, "key:k1", 1)], clock)
    assert refused.value.retry_after == 2  # 150 in debt + 1 at 100/s: 1.51 s


def test_a_refused_request_takes_nothing_from_any_bucket():
    clock = Clock()
    key = Rate(Limit("quota_key_points_per_s", 100, "points/s"), burst_s=1)
    team = Rate(Limit("quota_team_points_per_s", 50, "points/s"), burst_s=1)
    admit([(team, "team:acme", 30)], clock)  # another key of the team
    with pytest.raises(QuotaExceeded) as refused:
        admit([(key, "key:k1", 40), (team, "team:acme", 40)], clock)
    assert refused.value.limit.setting == "quota_team_points_per_s"
    assert key.buckets["key:k1"].tokens == 100  # the key's own bucket was not charged for the refused batch


def test_a_subject_told_to_wait_is_refused_before_any_work_until_the_time_is_up():
    clock = Clock()
    q = quotas(clock, quota_key_points_per_s=10, quota_burst_s=1)
    subjects = q.subjects(KEY_A, "10.0.0.1")
    q.check_ingest(subjects)  # nothing owed yet
    q.charge_points(subjects, 10)
    with pytest.raises(QuotaExceeded):
        q.charge_points(subjects, 10)
    clock.now += 0.5  # half the bucket is back, but the caller was told to wait a whole second
    with pytest.raises(QuotaExceeded):
        q.check_ingest(subjects)
    clock.now += 0.5
    q.check_ingest(subjects)
    q.charge_points(subjects, 10)


def test_a_key_is_held_to_its_own_and_its_teams_quota_and_other_teams_are_not():
    clock = Clock()
    q = quotas(clock, quota_key_queries_per_s=5, quota_team_queries_per_s=8, quota_burst_s=1)
    a, b, other = (q.subjects(p, "10.0.0.1") for p in (KEY_A, KEY_B, OTHER_TEAM))
    assert a == [("key", "k1"), ("team", "acme")]
    for _ in range(5):
        q.charge_query(a)
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_query(a)
    assert refused.value.limit.setting == "quota_key_queries_per_s"
    for _ in range(3):
        q.charge_query(b)
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_query(b)  # b's own bucket has room; its team's does not
    assert refused.value.limit.setting == "quota_team_queries_per_s"
    for _ in range(5):
        q.charge_query(other)


def test_keyless_callers_are_keyed_by_address_and_the_local_admin_is_exempt_unless_set():
    clock = Clock()
    q = quotas(clock, quota_anonymous_queries_per_s=1, quota_burst_s=1)
    anonymous = Principal()
    q.charge_query(q.subjects(anonymous, "10.0.0.1"))
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_query(q.subjects(anonymous, "10.0.0.1"))
    assert "client 10.0.0.1" in refused.value.message
    q.charge_query(q.subjects(anonymous, "10.0.0.2"))
    local = Principal(local_admin=True)
    assert q.subjects(local, "127.0.0.1") == []
    for _ in range(1000):
        q.charge_query(q.subjects(local, "127.0.0.1"))
    held = quotas(clock, quota_key_queries_per_s=1, quota_burst_s=1, quota_local_admin=True)
    held.charge_query(held.subjects(local, "127.0.0.1"))
    with pytest.raises(QuotaExceeded):
        held.charge_query(held.subjects(local, "127.0.0.1"))


def test_zero_means_unlimited():
    clock = Clock()
    q = quotas(
        clock, quota_key_points_per_s=0, quota_team_points_per_s=0, quota_key_bytes_per_s=0, quota_team_bytes_per_s=0
    )
    subjects = q.subjects(KEY_A, "10.0.0.1")
    for _ in range(100):
        q.charge_points(subjects, 10**9)
        q.charge_bytes(subjects, 10**9)
    q = quotas(clock, quota_key_streams=0, quota_team_streams=0)
    slots = [q.open_stream(subjects) for _ in range(1000)]
    assert slots[0].held == ()


def test_the_error_names_the_limit_and_the_setting_that_raises_it():
    clock = Clock()
    q = quotas(clock, quota_team_bytes_per_s=1000, quota_burst_s=1)
    subjects = q.subjects(KEY_A, "10.0.0.1")
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_bytes(subjects, 1000)
        q.charge_bytes(subjects, 1000)
    error = refused.value
    assert error.status == 429 and error.code == "quota_exceeded"
    assert "team acme" in error.message and "1,000 bytes/s" in error.message
    assert "RUNSTREAM_QUOTA_TEAM_BYTES_PER_S" in error.message and "0 = unlimited" in error.message
    assert error.details["setting"] == "RUNSTREAM_QUOTA_TEAM_BYTES_PER_S" and error.details["retry_after"] == 1


def test_live_streams_are_counted_per_key_and_team_and_given_back():
    clock = Clock()
    q = quotas(clock, quota_key_streams=2, quota_team_streams=3)
    a, b = q.subjects(KEY_A, "h"), q.subjects(KEY_B, "h")
    first, _ = q.open_stream(a), q.open_stream(a)
    with pytest.raises(QuotaExceeded) as refused:
        q.open_stream(a)
    assert refused.value.limit.setting == "quota_key_streams" and refused.value.retry_after >= 1
    q.open_stream(b)
    with pytest.raises(QuotaExceeded) as refused:
        q.open_stream(b)  # the team holds 3
    assert refused.value.limit.setting == "quota_team_streams"
    first.release()
    q.open_stream(b)
    assert q.streams["team"] is not None and q.streams["team"].open["team:acme"] == 3


def test_points_are_counted_per_value_per_step():
    batch = [decode(orjson.dumps(metrics_event(seq=i, steps=range(5)))) for i in range(3)]  # 2 metrics x 5 steps each
    assert count_points(batch) == 30


def test_quota_settings_come_from_the_environment(tmp_path):
    none = tmp_path / "none.toml"
    environ = {"RUNSTREAM_QUOTA_KEY_POINTS_PER_S": "5000", "RUNSTREAM_QUOTA_LOCAL_ADMIN": "true"}
    settings = Settings.from_env(environ, config=none)
    assert settings.quota_key_points_per_s == 5000 and settings.quota_local_admin is True
    with pytest.raises(ValueError, match="RUNSTREAM_QUOTA_LOCAL_ADMIN must be true or false"):
        Settings.from_env({"RUNSTREAM_QUOTA_LOCAL_ADMIN": "maybe"}, config=none)


def test_full_buckets_are_forgotten_when_there_are_too_many(monkeypatch):
    import runstream.api.quotas as module

    monkeypatch.setattr(module, "MAX_SUBJECTS", 4)
    clock = Clock()
    rate = Rate(Limit("quota_anonymous_queries_per_s", 1, "requests/s"), burst_s=1)
    for n in range(4):
        admit([(rate, f"client:{n}", 1)], clock)
    clock.now += 10  # all full again
    admit([(rate, "client:new", 1)], clock)
    assert list(rate.buckets) == ["client:new"]


def test_bytes_already_received_are_taken_into_debt_and_the_next_charge_waits():
    clock = Clock()
    q = quotas(clock, quota_key_bytes_per_s=1000, quota_burst_s=1)
    subjects = q.subjects(KEY_A, "10.0.0.1")
    q.debit_bytes(subjects, 3000)  # an upload streamed past what it declared: never refused midway
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_bytes(subjects, 1)
    assert refused.value.retry_after == 3  # 2000 bytes of debt and one more, at 1000 bytes/s


def test_failed_authentication_is_charged_to_the_client_address():
    clock = Clock()
    q = quotas(clock, quota_anonymous_queries_per_s=2, quota_burst_s=1)
    q.charge_failed_auth("10.0.0.1")
    q.charge_failed_auth("10.0.0.1")
    with pytest.raises(QuotaExceeded) as refused:
        q.charge_failed_auth("10.0.0.1")
    assert refused.value.details["setting"] == "RUNSTREAM_QUOTA_ANONYMOUS_QUERIES_PER_S"
    q.charge_failed_auth("10.0.0.2")  # another address has its own bucket


def test_a_held_stream_response_shows_the_wrapped_responses_headers():
    from starlette.responses import StreamingResponse

    q = quotas(Clock(), quota_key_streams=1)
    slot = q.open_stream(q.subjects(KEY_A, "10.0.0.1"))

    async def nothing():
        yield b""

    held = slot.hold(StreamingResponse(nothing(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}))
    assert held.headers["x-accel-buffering"] == "no" and held.headers["content-type"].startswith("text/event-stream")
