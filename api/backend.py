"""What the API's handlers reach: storage, the event sink and the file store, held on ``app.state.backend``.

Storage calls are blocking (clickhouse-connect), so handlers run them in the
thread pool through ``Backend.run``. With the embedded engine each thread of the
pool has a chdb client of its own: a chdb client runs one call at a time (a lock
per connection handle), so one shared client would make a heavy query hold up
every other request, health checks and ingest included. The engine itself runs
the handles' queries side by side, outside the GIL. Events go to one sink:

- cluster mode (``RUNSTREAM_KAFKA`` set): Kafka, answering once every record is
  acknowledged by the brokers (``runstream.kafka``'s producer, the SDK's too: acks=all, idempotent);
- embedded mode: the in-process pipeline (``streams.pipeline``), answering once
  the batch is applied to storage.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from clickhouse_connect.driver.client import Client
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from runstream.api.filestore import FileStore, LocalFileStore
from runstream.api.keyring import Keyring
from runstream.events import Event
from runstream.kafka import start_producer
from runstream.settings import Settings
from runstream.storage import accounts
from runstream.storage.client import connect
from runstream.storage.migrations import migrate_once
from runstream.streams.batch import UPPER_LEVELS_EVERY_S
from runstream.streams.notifier import Notifier, WebhookPolicy

log = logging.getLogger("runstream.api")
T = TypeVar("T")

SHARE_SECRET_NAME = "share_links"


class EventSink(Protocol):
    #: Whether a sent event is already applied to storage when ``send`` returns (the embedded pipeline).
    applied_on_send: bool

    async def start(self) -> None: ...

    async def send(self, events: Sequence[Event], encoded: Sequence[bytes] | None = None) -> None:
        """Hold ``events`` (applied, or acknowledged); ``encoded``: each one's bytes as received and validated."""

    async def reset(self) -> None:
        """After a failed send: drop what may be broken, so the next send starts afresh."""

    async def stop(self) -> None: ...


class KafkaSink:
    """Produces each event to its topic, keyed by run, and returns when the brokers acknowledged all of them.

    Events that arrive encoded are forwarded as they came: a worker decodes and validates the
    same bytes the API validated, with the same function, so encoding them again would only cost.
    """

    applied_on_send = False  # a worker applies them shortly after

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: Any = None

    async def start(self) -> None:
        self._producer = await start_producer(self.bootstrap, linger_ms=2)

    async def send(self, events: Sequence[Event], encoded: Sequence[bytes] | None = None) -> None:
        if self._producer is None:
            await self.start()
        values = encoded if encoded is not None else [e.to_bytes() for e in events]
        pairs = zip(events, values, strict=True)
        futures = [await self._producer.send(e.topic.name, value, key=e.key) for e, value in pairs]
        await asyncio.gather(*futures)

    async def reset(self) -> None:
        """A fresh producer next time: an idempotent producer's sequence state may be broken."""
        try:
            await self.stop()
        except Exception:  # noqa: BLE001 - stopping a producer whose broker is gone
            pass

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()


class PipelineSink:
    """Embedded mode: the in-process pipeline, plus what a worker does on its own clock.

    ``send`` returns once the batch is applied to storage. A timer sweeps for
    crashed and stalled runs, and alerts are posted to webhooks in the background
    on the server's event loop, as the Faust worker's timer and alerts agent do in
    cluster mode.
    """

    applied_on_send = True

    def __init__(self, client: Callable[[], Client], settings: Settings, sweep_every_s: float = 5.0) -> None:
        from runstream.streams.pipeline import Pipeline

        self.settings = settings
        self.sweep_every_s = sweep_every_s
        self.pipeline = Pipeline(
            client,
            notifier=Notifier.from_settings(settings),
            spawn=self._spawn_from_pipeline,
            upper_levels_every_s=UPPER_LEVELS_EVERY_S,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._sweep_forever())

    async def send(self, events: Sequence[Event], encoded: Sequence[bytes] | None = None) -> None:
        await run_in_threadpool(self.pipeline.handle, list(events))

    async def reset(self) -> None:
        return None  # nothing to rebuild: the next batch goes through the same pipeline, the sweep keeps running

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            task.cancel()
        # Only this loop's tasks can be awaited here (an app started twice, on two loops, has both).
        await asyncio.gather(*(t for t in self._tasks if t.get_loop() is loop), return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_from_pipeline(self, delivery: Coroutine[Any, Any, None]) -> None:
        """An alert's delivery, handed over in the pipeline's thread: it runs on the server's event loop."""
        if self._loop is None:
            delivery.close()  # not started: no loop to post from
            return
        self._loop.call_soon_threadsafe(self._spawn, delivery)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every_s)
            try:
                await run_in_threadpool(self.pipeline.sweep, float(self.settings.crash_timeout))
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                log.warning("sweep failed (%s: %s)", type(exc).__name__, exc)


class Backend:
    def __init__(
        self,
        settings: Settings,
        *,
        sink: EventSink | None = None,
        files: FileStore | None = None,
        local_admin: bool = False,
        client: Client | None = None,
    ) -> None:
        self.settings = settings
        self.local_admin = local_admin
        self._client = client
        # Embedded engine: a client per thread for ``run`` (see the module's doc); the pipeline keeps ``client``.
        self._per_thread = client is None and settings.clickhouse_dsn.startswith("chdb:")
        self._local = threading.local()
        self.files = files or LocalFileStore(f"{settings.data_dir}/files")
        self.sink = sink or self._default_sink()
        self._share_secrets: list[bytes] | None = None
        #: Members, keys and project visibility in memory, for access checks (``api/keyring.py``).
        self.keyring = Keyring(self)
        #: What rule webhooks may reach (checked when a rule is saved; the notifier checks again when posting).
        self.webhook_policy = WebhookPolicy(settings.webhook_allow)

    def _default_sink(self) -> EventSink:
        if self.settings.kafka:
            return KafkaSink(self.settings.kafka)
        return PipelineSink(lambda: self.client, self.settings)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = connect(self.settings.clickhouse_dsn)
        return self._client

    async def start(self) -> None:
        await run_in_threadpool(migrate_once, self.client)
        await self.sink.start()
        await self.keyring.start()  # after the migrations: it loads the tables (retried on first use if it fails)

    async def stop(self) -> None:
        await self.keyring.stop()
        await self.sink.stop()

    def thread_client(self) -> Client:
        """The client for the calling thread: its own with the embedded engine, else the shared one
        (clickhouse-connect's HTTP client runs concurrent queries on a connection pool)."""
        if not self._per_thread:
            return self.client
        client = getattr(self._local, "client", None)
        if client is None:
            self.client  # noqa: B018 - the shared client first: it creates the database
            client = self._local.client = connect(self.settings.clickhouse_dsn)
        return client

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(client, *args, **kwargs)`` in the thread pool, on that thread's client."""

        def call() -> T:
            return fn(self.thread_client(), *args, **kwargs)

        return await run_in_threadpool(call)

    async def share_secrets(self, refresh: bool = False) -> list[bytes]:
        """The keys of share links: sign with the first, accept any (``refresh`` re-reads them)."""
        if self._share_secrets is None or refresh:
            self._share_secrets = await self.run(accounts.server_secrets, SHARE_SECRET_NAME)
        return self._share_secrets


def backend_of(request: Request) -> Backend:
    """The app's backend, as handlers reach it."""
    return request.app.state.backend
