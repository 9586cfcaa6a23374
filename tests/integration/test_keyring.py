"""Access checks from memory (``api/keyring.py``): two API replicas in cluster mode, one database, one broker.

The replicas reach the same ClickHouse server by two names (127.0.0.1 and localhost),
so a write through one is not announced to the other inside this test process: what
replica B learns of replica A's writes comes through the accounts topic in Kafka (or, for
a key id B never saw, its one read of ClickHouse), as it would between two machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from runstream.api.app import create_app
from runstream.api.keyring import KafkaFeed, Keyring, LocalFeed, keyring_of
from runstream.settings import Settings
from runstream.storage import accounts

V1 = "/api/v1"
WITHIN_S = 1.0  # a revoked key fails on every replica within this


class Replica:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.http = TestClient(self.app, raise_server_exceptions=False)
        self.http.__enter__()

    @property
    def ring(self) -> Keyring:
        return keyring_of(self.app.state.backend)

    def whoami(self, key: str) -> Any:
        return self.http.get(f"{V1}/whoami", headers={"Authorization": f"Bearer {key}"})

    def close(self) -> None:
        assert self.http.portal is not None
        self.http.portal.call(self.ring.stop)  # until the backend stops its keyring itself
        self.http.__exit__(None, None, None)


@pytest.fixture
def replicas(kafka_bootstrap: str, clickhouse_server: Any, tmp_path: Path) -> Iterator[tuple[Replica, Replica]]:
    database = f"keyring_{uuid.uuid4().hex[:12]}"
    port = clickhouse_server.http_port
    made = []
    try:
        for host in ("127.0.0.1", "localhost"):
            dsn = f"clickhouse://default:@{host}:{port}/{database}"
            made.append(Replica(Settings(kafka=kafka_bootstrap, clickhouse_dsn=dsn, data_dir=str(tmp_path / host))))
        yield made[0], made[1]
    finally:
        for replica in made:
            replica.close()


def _until(check: Any, within_s: float) -> float:
    """Seconds until ``check()`` held (polling), or fail after ``within_s``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within_s, f"not within {within_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.kafka
def test_a_key_revoked_or_a_member_removed_on_one_replica_fails_on_the_other_within_a_second(replicas) -> None:
    a, b = replicas
    assert isinstance(b.ring.feed, KafkaFeed)
    storage = a.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    admin = {"Authorization": f"Bearer {accounts.create_key(storage, 'acme', 'alice')[1]}"}
    assert b.http.get(f"{V1}/whoami", headers=admin).json()["user"] == "alice"  # made elsewhere: one read

    # Through replica A's API: a member and two keys, which replica B accepts.
    assert a.http.put(f"{V1}/teams/acme/members/bob", headers=admin, json={"role": "member"}).status_code == 201
    made = [a.http.post(f"{V1}/teams/acme/keys", headers=admin, json={"user": "bob"}).json() for _ in range(2)]
    for key in made:
        assert b.whoami(key["key"]).json()["role"] == "member"

    # A role change, a revocation, a removal: each holds on B within a second, through the topic.
    assert a.http.put(f"{V1}/teams/acme/members/bob", headers=admin, json={"role": "viewer"}).status_code == 200
    _until(lambda: b.whoami(made[0]["key"]).json()["role"] == "viewer", WITHIN_S)
    assert a.http.delete(f"{V1}/teams/acme/keys/{made[0]['key_id']}", headers=admin).status_code == 200
    _until(lambda: b.whoami(made[0]["key"]).status_code == 401, WITHIN_S)
    assert b.whoami(made[1]["key"]).status_code == 200
    assert a.http.delete(f"{V1}/teams/acme/members/bob", headers=admin).status_code == 200
    _until(lambda: b.whoami(made[1]["key"]).status_code == 401, WITHIN_S)
    assert b.whoami(made[1]["key"]).json()["error"]["code"] == "invalid_api_key"

    # Visibility too: a project made public on A reads anonymously on B.
    assert a.http.post(f"{V1}/projects/acme", headers=admin, json={"name": "open"}).status_code == 201
    assert b.http.get(f"{V1}/projects/acme/open").status_code == 404
    assert a.http.patch(f"{V1}/projects/acme/open", headers=admin, json={"visibility": "public"}).status_code == 200
    _until(lambda: b.http.get(f"{V1}/projects/acme/open").status_code == 200, WITHIN_S)


@pytest.mark.kafka
def test_a_replica_started_later_holds_the_current_state(replicas, kafka_bootstrap, tmp_path) -> None:
    a, b = replicas
    storage = a.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    kept_id, kept = accounts.create_key(storage, "acme", "alice", scope="read")
    gone_id, gone = accounts.create_key(storage, "acme", "alice")
    accounts.revoke_key(storage, gone_id)
    dsn = str(b.app.state.backend.settings.clickhouse_dsn)
    late = Replica(Settings(kafka=kafka_bootstrap, clickhouse_dsn=dsn, data_dir=str(tmp_path / "late")))
    try:
        assert late.whoami(kept).status_code == 200
        assert late.whoami(gone).status_code == 401
        assert late.ring._keys[kept_id]["scope"] == "read"  # loaded at start, not looked up on the miss
    finally:
        late.close()


@pytest.mark.kafka
def test_a_key_revoked_by_the_cli_in_cluster_mode_fails_on_a_replica_within_a_second(replicas, kafka_bootstrap) -> None:
    import os
    import subprocess
    import sys

    _, b = replicas
    dsn = str(b.app.state.backend.settings.clickhouse_dsn)
    storage = b.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    key_id, key = accounts.create_key(storage, "acme", "alice")
    assert b.whoami(key).status_code == 200
    revoked = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "revoke", key_id],
        capture_output=True,
        text=True,
        env={**os.environ, "RUNSTREAM_CLICKHOUSE_DSN": dsn, "RUNSTREAM_KAFKA": kafka_bootstrap},
        timeout=120,
    )
    assert revoked.returncode == 0 and "warning" not in revoked.stderr, revoked.stderr
    _until(lambda: b.whoami(key).status_code == 401, WITHIN_S)  # another process: heard through the topic


def _produce(bootstrap: str, records: list[tuple[bytes, bytes]]) -> None:
    """Write raw records to the accounts topic, as any host that can reach Kafka can."""
    import asyncio

    from runstream.kafka import start_producer
    from runstream.streams.topics import TOPIC_ACCOUNTS

    async def produce() -> None:
        producer = await start_producer(bootstrap, linger_ms=0)
        try:
            for key, value in records:
                await producer.send_and_wait(TOPIC_ACCOUNTS.name, value, key=key)
        finally:
            await producer.stop()

    asyncio.run(produce())


def _forged_key(key_id: str, secret: str, revoked: bool) -> tuple[bytes, bytes]:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    change = accounts.key_change(key_id, digest, "acme", "alice", "admin", revoked, 2**62)  # "newer" than anything
    return f"api_keys/{key_id}".encode(), orjson.dumps(change)


@pytest.mark.kafka
def test_forged_records_on_the_topic_change_nothing_a_replica_holds(replicas, kafka_bootstrap) -> None:
    a, b = replicas
    storage = a.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    revoked_id, revoked = accounts.create_key(storage, "acme", "alice")
    accounts.revoke_key(storage, revoked_id)
    _until(lambda: b.whoami(revoked).status_code == 401, WITHIN_S)
    _until(lambda: b.ring.feed.current, 10)

    # An admin key nobody made, with a secret of the forger's choosing, and the revoked key "un-revoked".
    forged_secret = "f" * 43
    _produce(
        kafka_bootstrap,
        [
            _forged_key("0123456789ab", forged_secret, revoked=False),
            _forged_key(revoked_id, revoked.split("_", 2)[2], revoked=False),
        ],
    )
    # Then a real change behind them: once B holds it, B has read past the forged records.
    kept_id, _ = accounts.create_key(storage, "acme", "alice")
    accounts.revoke_key(storage, kept_id)
    _until(lambda: b.ring._keys.get(kept_id, {}).get("revoked") is True, 5)
    time.sleep(0.5)
    assert b.whoami(f"rs_0123456789ab_{forged_secret}").status_code == 401
    assert b.whoami(revoked).status_code == 401
    assert b.ring._keys[revoked_id]["revoked"] and "0123456789ab" not in b.ring._keys


@pytest.mark.kafka
def test_malformed_records_are_skipped_and_the_feed_goes_on(replicas, kafka_bootstrap) -> None:
    a, b = replicas
    storage = a.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    key_id, key = accounts.create_key(storage, "acme", "alice")
    assert b.whoami(key).status_code == 200
    _until(lambda: b.ring.feed.current, 10)
    junk = [b"not json", b"[1, 2]", b'{"table": "api_keys"}', b'{"table": "members", "team": 7, "user": "x"}']
    _produce(kafka_bootstrap, [(b"api_keys/junk", value) for value in junk])
    accounts.revoke_key(a.app.state.backend.client, key_id)
    _until(lambda: b.ring._keys[key_id]["revoked"], 5)  # held from the feed (or the tail), not looked up
    assert b.ring.feed.current and b.whoami(key).status_code == 401


@pytest.mark.kafka
def test_a_replica_that_hears_nothing_from_kafka_still_sees_a_revocation_within_two_seconds(replicas) -> None:
    a, b = replicas
    storage = a.app.state.backend.client
    accounts.ensure_team(storage, "acme")
    accounts.set_member(storage, "acme", "alice", "admin")
    key_id, key = accounts.create_key(storage, "acme", "alice")
    assert b.whoami(key).status_code == 200
    _until(lambda: b.ring.feed.current, 10)
    feed = b.ring.feed
    assert isinstance(feed, KafkaFeed)

    async def go_deaf() -> None:  # as in a broker outage: the consumer hears nothing and raises nothing
        for task in feed._tasks:
            task.cancel()
        await asyncio.gather(*feed._tasks, return_exceptions=True)
        feed._reading = True

    assert b.http.portal is not None
    b.http.portal.call(go_deaf)
    accounts.revoke_key(storage, key_id)
    _until(lambda: b.whoami(key).status_code == 401, 2.0)


def test_the_look_for_changed_rows_reaches_back_from_now_when_a_writer_clock_runs_ahead(monkeypatch) -> None:
    class Backend:
        settings = Settings(clickhouse_dsn="chdb:///nowhere")

        async def run(self, fn: Any, *args: Any) -> Any:
            return fn(None, *args)

    asked: list[int] = []

    def access_records(client: Any, since: int) -> list[Any]:
        asked.append(since)
        return []

    monkeypatch.setattr(accounts, "access_records", access_records)
    ring = Keyring(Backend())
    now_us = time.time_ns() // 1000
    ring.apply(accounts.member_change("acme", "bob", "admin", now_us + 3600 * 10**6))  # a clock an hour ahead
    asyncio.run(ring._tail())
    assert asked[0] <= now_us + 10**6 - 30 * 10**6  # rows of writers up to 30 s behind are still read


def test_the_embedded_server_applies_its_writes_at_once_and_checks_from_memory(api) -> None:
    ring = keyring_of(api.app.state.backend)
    headers = api.key("acme", "alice", "admin")
    assert api.http.get(f"{V1}/whoami", headers=headers).status_code == 200
    assert isinstance(ring.feed, LocalFeed) and ring.feed.tail_s is None  # chdb: this process is the only writer
    key_id = headers["Authorization"].split("_")[1]
    accounts.revoke_key(api.storage, key_id)
    assert ring._keys[key_id]["revoked"]  # applied by the write itself
    assert api.http.get(f"{V1}/whoami", headers=headers).status_code == 401


def test_an_unknown_key_id_is_read_once_and_then_remembered_as_unknown(api, monkeypatch) -> None:
    api.key("acme", "alice", "admin")
    ring = keyring_of(api.app.state.backend)
    reads: list[str] = []
    real = accounts.key_records

    def counted(client: Any, key_id: str) -> Any:
        reads.append(key_id)
        return real(client, key_id)

    monkeypatch.setattr(accounts, "key_records", counted)
    unknown = {"Authorization": "Bearer rs_0123456789ab_" + "x" * 43}
    for _ in range(3):
        assert api.http.get(f"{V1}/whoami", headers=unknown).status_code == 401
    assert reads == ["0123456789ab"]
    assert "0123456789ab" in ring._unknown


def test_records_apply_in_any_order_and_the_newest_version_wins() -> None:
    class NoBackend:
        settings = Settings(clickhouse_dsn="chdb:///nowhere")

    ring = Keyring(NoBackend())
    newer = accounts.member_change("acme", "bob", None, 20)
    older = accounts.member_change("acme", "bob", "admin", 10)
    assert ring.apply(newer) and not ring.apply(older) and not ring.apply(newer)
    assert ring._members[("acme", "bob")]["role"] is None
    assert not ring.apply({"table": "something_new", "version": 1})  # a later server's record: ignored


# -- alert streams end with their credentials ------------------------------------------------------

STREAM = f"{V1}/projects/acme/mnist/alerts/stream"


def _stream_until_end(api: Any, params: dict[str, Any], headers: dict[str, str], on_open: Any = None) -> list[str]:
    """Every line of one alert stream, to its end; ``on_open()`` runs once it has started."""
    lines = []
    with api.http.stream("GET", STREAM, params=params, headers=headers) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("retry:") and on_open is not None:
                on_open()
    return lines


def test_an_alert_stream_ends_when_its_member_is_removed(api) -> None:
    api.key("acme", "alice", "admin")
    member = api.key("acme", "mia", "member")
    # timeout_s only keeps a failing test from hanging: the stream must end long before it.
    lines = _stream_until_end(
        api, {"timeout_s": 600}, member, on_open=lambda: accounts.remove_member(api.storage, "acme", "mia")
    )
    assert any(line.startswith(": access ended") for line in lines), lines


def test_an_alert_stream_ends_when_its_share_link_is_revoked(api) -> None:
    from runstream.storage import reports

    admin = api.key("acme", "alice", "admin")
    report = api.http.post(f"{V1}/projects/acme/mnist/reports", json={"title": "shared"}, headers=admin).json()
    token = api.http.post(f"{V1}/projects/acme/mnist/reports/{report['id']}/share", json={}, headers=admin).json()[
        "token"
    ]
    lines = _stream_until_end(
        api,
        {"timeout_s": 600, "share": token},
        {},
        on_open=lambda: reports.revoke_shares(api.storage, "acme", "mnist", report["id"]),
    )
    assert any(line.startswith(": access ended") for line in lines), lines


def test_an_alert_stream_without_timeout_ends_at_the_servers_maximum(api, monkeypatch) -> None:
    from runstream.api import alerts as alerts_api

    member = api.key("acme", "mia", "member")
    monkeypatch.setattr(alerts_api, "MAX_LIFETIME_S", 1.0)
    lines = _stream_until_end(api, {}, member)
    assert lines[0].startswith("retry: ") and not any(line.startswith(": access ended") for line in lines)


def test_an_alert_stream_kept_busy_by_full_batches_still_ends_at_its_deadline(api, monkeypatch) -> None:
    from runstream.api import alerts as alerts_api

    member = api.key("acme", "mia", "member")
    made = iter(range(10**9))

    def always_more(*args: Any) -> list[dict[str, Any]]:  # a project whose alerts never run out
        n = next(made)
        return [{"alert_id": f"a{n}", "time_ms": 1_700_000_000_000 + n}]

    monkeypatch.setattr(alerts_api.logs, "alerts_after", always_more)
    monkeypatch.setattr(alerts_api.logs, "MAX_STREAM_BATCH", 1)
    monkeypatch.setattr(alerts_api, "MAX_LIFETIME_S", 0.5)
    lines = 0
    started = time.monotonic()
    with api.http.stream("GET", STREAM, headers=member) as response:
        for _ in response.iter_lines():
            lines += 1
            assert time.monotonic() - started < 10, "the stream outlived its deadline"
    assert lines > 2
