"""Shared fixtures: the real Kafka broker and the real ClickHouse engine (chdb).

The broker starts once per test session, on first use, and stops at the end
(also on Ctrl-C: the fixture's teardown runs, and the broker dies with the
test process otherwise). Set RUNSTREAM_TEST_KAFKA=host:port to use a broker you
started yourself (``make kafka``) instead.

chdb opens one data directory per process, so the session has one directory
and each test gets a database of its own in it. Tests where several processes
share a database use ``clickhouse_server`` (ClickHouse's HTTP protocol served by
chdb in a child process).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.clickhouse_server import ClickHouseServer
from infra.kafka_broker import KafkaBroker, KafkaCluster
from tests.helpers import fresh_chdb_dsn

# Keras 3 runs on PyTorch in the tests (the integrations extra installs torch, not TensorFlow); scripts the tests start
# inherit it.
os.environ.setdefault("KERAS_BACKEND", "torch")

if TYPE_CHECKING:  # storage is imported where a test needs it
    from runstream.storage.accounts import Role


@pytest.fixture(scope="session", autouse=True)
def no_user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs made in this process read no user's config file, and record their unsent leftovers
    (``runstream.delivery``'s registry, beside the config file) here, not in the user's home."""
    saved = os.environ.get("RUNSTREAM_CONFIG")
    os.environ["RUNSTREAM_CONFIG"] = str(tmp_path_factory.mktemp("config") / "config.toml")
    yield
    if saved is None:
        os.environ.pop("RUNSTREAM_CONFIG", None)
    else:
        os.environ["RUNSTREAM_CONFIG"] = saved


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker | None]:
    """The session's broker (None when RUNSTREAM_TEST_KAFKA points at an external one)."""
    if os.environ.get("RUNSTREAM_TEST_KAFKA"):
        yield None
        return
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker | None) -> str:
    """Bootstrap address of a broker that has the pipeline's topics."""
    from runstream.streams.topics import create_topics_sync

    bootstrap = os.environ.get("RUNSTREAM_TEST_KAFKA") or kafka_broker.bootstrap  # type: ignore[union-attr]
    create_topics_sync(bootstrap)
    return bootstrap


@pytest.fixture(scope="module")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """Three brokers in one KRaft quorum (each a controller voter), started on first use, without topics;
    stopped after the module, so three idle JVMs do not slow the rest of the suite.

    For tests that kill brokers: a test that stops a node starts it again (``kafka_cluster.start()``)
    before it ends, so the next one finds the cluster whole.
    """
    cluster = KafkaCluster(brokers=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse_dsn(chdb_dir: Path) -> str:
    """A DSN for a fresh, empty database in the session's embedded ClickHouse engine."""
    return fresh_chdb_dsn(chdb_dir)


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """ClickHouse's HTTP protocol served from chdb, for tests where several processes share a database."""
    with ClickHouseServer(tmp_path_factory.mktemp("clickhouse-server")) as server:
        yield server


@pytest.fixture(params=["chdb", "server"])
def any_clickhouse_dsn(request: pytest.FixtureRequest, chdb_dir: Path) -> str:
    """A fresh database on each engine in turn: in-process chdb, then a ClickHouse server over HTTP."""
    database = f"test_{uuid.uuid4().hex[:12]}"
    if request.param == "chdb":
        return f"chdb://{chdb_dir}?database={database}"
    server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
    return f"clickhouse://default:@127.0.0.1:{server.http_port}/{database}"


@pytest.fixture
def clickhouse(clickhouse_dsn: str):
    """A client on a fresh database with the schema migrated."""
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate

    client = connect(clickhouse_dsn)
    migrate(client)
    return client


class ApiHarness:
    """The API app in embedded mode on a fresh database, with helpers to make keys and send events."""

    def __init__(self, dsn: str, data_dir: Path) -> None:
        from starlette.testclient import TestClient

        from runstream.api.app import create_app
        from runstream.settings import Settings

        self.settings = Settings(clickhouse_dsn=dsn, data_dir=str(data_dir))
        self.app = create_app(self.settings)
        self.http = TestClient(self.app, raise_server_exceptions=False)
        self.http.__enter__()  # runs the lifespan: migrations, the pipeline sink

    @property
    def storage(self):
        """The backend's ClickHouse client."""
        return self.app.state.backend.client

    def key(self, team: str, user: str, role: Role = "member") -> dict[str, str]:
        """Headers with a new key of ``user``, made ``role`` of ``team`` (created if missing)."""
        from runstream.storage import accounts

        accounts.ensure_team(self.storage, team)
        accounts.set_member(self.storage, team, user, role)
        _, key = accounts.create_key(self.storage, team, user)
        return {"Authorization": f"Bearer {key}"}

    def ingest(self, events: list[dict], headers: dict[str, str]):
        """POST events (dicts of the contract) to the ingest endpoint."""
        import orjson

        body = b"\n".join(orjson.dumps(e) for e in events)
        return self.http.post(
            "/api/v1/events", content=body, headers={**headers, "Content-Type": "application/x-ndjson"}
        )

    def close(self) -> None:
        self.http.__exit__(None, None, None)


@pytest.fixture
def api(clickhouse_dsn: str, tmp_path: Path) -> Iterator[ApiHarness]:
    """The API in embedded mode (in-process pipeline) on a fresh database; see ``ApiHarness``."""
    harness = ApiHarness(clickhouse_dsn, tmp_path / "server")
    try:
        yield harness
    finally:
        harness.close()
