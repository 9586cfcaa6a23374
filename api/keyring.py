"""Members, API keys and project visibility in memory: access checks that cost microseconds.

ClickHouse stays the source of truth (``storage.accounts``); each API replica keeps a
copy of what access checks read, and only ever holds what ClickHouse says (or what this
process itself just wrote there):

- every write of a member, key or project through the backend's client is announced
  (``accounts.listen``) and held here at once, and the row's name is published to the feed;
- cluster mode: the feed is the compacted Kafka topic ``runstream.accounts``
  (``streams.topics.TOPIC_ACCOUNTS``). A record on it is only a hint that a row changed
  (its table and id): the replica reads that row from ClickHouse and holds what is stored.
  Record contents are never trusted: training hosts can produce to Kafka, so a forged
  record can at most cost a read of one row. A malformed record is logged and skipped;
- embedded mode: the feed is in-process (``LocalFeed``). On the embedded engine (chdb) this
  process is the only writer.

What holds: on a ClickHouse server (cluster mode, or embedded mode without Kafka) a check
never relies on a copy whose last look for changed rows (``accounts.access_records(since)``)
began more than ``TAIL_S`` ago; the look is awaited by the check when it is due, and a
check fails (error, not a stale answer) when storage cannot be read. So a key revoked or
a member removed anywhere fails on every replica within ``TAIL_S`` plus one read of
ClickHouse (about 1-2 s), whether or not Kafka works; the topic only makes it faster
(milliseconds). Each look reads rows changed after ``min(newest version held, now)`` less
``TAIL_WINDOW_US``: a writer whose clock is up to that far behind is still seen at once, one
further behind at the next full reload, every ``RESYNC_S``. A key id the copy does not know
(made moments ago elsewhere) costs one ClickHouse read (at most ``MAX_LOOKUPS`` at once per
replica, one per key id); one that is not there either is remembered as unknown for
``NEGATIVE_S``. Until the Kafka feed has caught up after (re)connecting, keys are checked
in ClickHouse directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson

from runstream.storage import accounts
from runstream.storage.accounts import ROW_IDS, Change, KeyOwner
from runstream.streams.topics import TOPIC_ACCOUNTS, create_topics

log = logging.getLogger("runstream.api")

RESYNC_S = 60.0
NEGATIVE_S = 1.0
MAX_NEGATIVE = 10_000
RETRY_S = 1.0
TAIL_S = 1.0
#: How far back each look for changed rows reaches behind the newest version held (capped at now):
#: a writer's version is its clock when it wrote, and its row may become visible after a later one's.
TAIL_WINDOW_US = 60_000_000
#: Rows named by one batch of records that are read one by one; more (a flood) cost one look instead.
MAX_ROW_READS = 16
#: Reads of key ids the copy does not know, at once per replica (a flood of random ids waits).
MAX_LOOKUPS = 4
#: The longest id column a record may name (names and key ids are far shorter).
MAX_ID_CHARS = 256

Row = tuple[str, tuple[str, ...]]  # (table, the values of its ROW_IDS columns)
#: Read the rows named (None: every row changed lately) from storage and hold what it says.
Refresh = Callable[[set[Row] | None], Awaitable[None]]


def row_of(change: Change) -> Row:
    table = change["table"]
    return table, tuple(change[column] for column in ROW_IDS[table])


def parse_record(value: bytes | None) -> Row | None:
    """The row a topic record names, or None when it names none (malformed, or a later server's table)."""
    try:
        record = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("table") not in ROW_IDS:
        return None
    ids = tuple(record.get(column) for column in ROW_IDS[record["table"]])
    if not all(isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS for value in ids):
        return None
    return record["table"], ids  # type: ignore[return-value]  # checked just above


async def send_rows(producer: Any, rows: Iterable[Row]) -> None:
    """Tell every replica these rows changed: one record per row, keyed by the row so compaction keeps one."""
    for table, ids in rows:
        record = {"table": table, **dict(zip(ROW_IDS[table], ids))}
        await producer.send_and_wait(TOPIC_ACCOUNTS.name, orjson.dumps(record), key="/".join((table, *ids)).encode())


class Feed(Protocol):
    """Where each replica tells the others which rows it changed, and hears of theirs."""

    async def start(self, refresh: Refresh) -> None: ...

    def publish(self, change: Change) -> None:
        """Tell every replica ``change``'s row changed (called from any thread; never blocks)."""

    @property
    def current(self) -> bool:
        """Whether what arrives here is current (a feed that cannot read is not)."""

    async def stop(self) -> None: ...


class LocalFeed:
    """The embedded server's feed: the process is the only replica, and applying a write here is the notice.

    ``tail_s``: look for rows other processes changed this often (None: none can).
    """

    current = True

    def __init__(self, tail_s: float | None = None) -> None:
        self.tail_s = tail_s

    async def start(self, refresh: Refresh) -> None:
        return None

    def publish(self, change: Change) -> None:
        return None

    async def stop(self) -> None:
        return None


class KafkaFeed:
    """Cluster mode: changed rows are named on the compacted topic, and a consumer follows its end."""

    tail_s = TAIL_S  # the backstop: a consumer cut from the broker hears nothing and says nothing

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: asyncio.Queue[Row] | None = None
        self._tasks: list[asyncio.Task] = []
        self._reading = False
        self._warned = False

    @property
    def current(self) -> bool:
        return self._reading

    async def start(self, refresh: Refresh) -> None:
        self._loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue()
        self._tasks = [asyncio.ensure_future(self._follow(refresh)), asyncio.ensure_future(self._send())]

    def publish(self, change: Change) -> None:
        if self._loop is None or self._outbox is None or self._loop.is_closed():
            return
        outbox = self._outbox
        self._loop.call_soon_threadsafe(outbox.put_nowait, row_of(change))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._reading = False

    async def _follow(self, refresh: Refresh) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None)
            try:
                await create_topics(self.bootstrap, [TOPIC_ACCOUNTS], timeout=10)
                await consumer.start()
                partitions = consumer.partitions_for_topic(TOPIC_ACCOUNTS.name) or {0}
                assigned = [TopicPartition(TOPIC_ACCOUNTS.name, p) for p in sorted(partitions)]
                consumer.assign(assigned)
                # Records are hints, so only those after now matter: pin the end offsets, then read
                # what changed while nobody listened here; only then is the feed current.
                await consumer.seek_to_end(*assigned)
                for partition in assigned:
                    await consumer.position(partition)
                await refresh(None)
                self._reading = True
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    rows = {row for records in batches.values() for record in records if (row := self._row(record))}
                    if rows:
                        await refresh(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker or storage is away: check keys in ClickHouse, retry
                if self._reading:
                    log.warning("following %s failed (%s: %s); retrying", TOPIC_ACCOUNTS.name, type(exc).__name__, exc)
                self._reading = False
                await asyncio.sleep(RETRY_S)
            finally:
                self._reading = False
                with contextlib.suppress(Exception):
                    await consumer.stop()

    def _row(self, record: Any) -> Row | None:
        """The row a record names; a malformed one is skipped (logged once), never stopping the feed."""
        if record.value is None:
            return None  # a compaction tombstone
        row = parse_record(record.value)
        if row is None and not self._warned:
            self._warned = True
            log.warning("skipping a malformed record on %s (offset %s)", TOPIC_ACCOUNTS.name, record.offset)
        return row

    async def _send(self) -> None:
        from runstream.kafka import start_producer

        assert self._outbox is not None
        producer = None
        try:
            while True:
                row = await self._outbox.get()
                while True:
                    try:
                        if producer is None:
                            producer = await start_producer(self.bootstrap, linger_ms=0)
                        await send_rows(producer, [row])
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - keep the record and retry; others tail storage
                        log.warning("publishing an accounts change failed (%s: %s)", type(exc).__name__, exc)
                        with contextlib.suppress(Exception):
                            if producer is not None:
                                await producer.stop()
                        producer = None
                        await asyncio.sleep(RETRY_S)
        finally:
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()


async def publish_changes(bootstrap: str, changes: list[Change]) -> None:
    """Name the rows written outside the API (``runstream keys``) to every replica."""
    from runstream.kafka import start_producer

    await create_topics(bootstrap, [TOPIC_ACCOUNTS], timeout=10)
    producer = await start_producer(bootstrap, linger_ms=0)
    try:
        await send_rows(producer, dict.fromkeys(row_of(change) for change in changes))
    finally:
        await producer.stop()


class Keyring:
    """One replica's copy of members, keys and project visibility (see the module's docstring)."""

    def __init__(self, backend: Any, feed: Feed | None = None) -> None:
        self.backend = backend
        if feed is None and backend.settings.kafka:
            feed = KafkaFeed(backend.settings.kafka)
        elif feed is None:
            shared = not str(backend.settings.clickhouse_dsn).startswith("chdb:")
            feed = LocalFeed(TAIL_S if shared else None)
        self.feed: Feed = feed
        self._tail_s: float | None = getattr(feed, "tail_s", None)
        self._tailed_at = 0.0
        self._tailing: asyncio.Future[None] | None = None
        self._newest = 0  # the newest version held
        self._keys: dict[str, Change] = {}
        self._members: dict[tuple[str, str], Change] = {}
        self._projects: dict[tuple[str, str], Change] = {}
        self._unknown: dict[str, float] = {}  # key id -> until when (monotonic) it is known not to exist
        self._lock = threading.Lock()  # changes arrive from the thread pool (writes) and the event loop (the feed)
        self._started: asyncio.Future[None] | None = None
        self._synced_at = 0.0
        self._resyncing = False
        self._stop_listening: Callable[[], None] | None = None
        self._lookups: dict[str, asyncio.Future[None]] = {}  # key id -> its read in flight
        self._lookup_slots: asyncio.Semaphore | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen to this replica's writes, load the copy from storage, and follow the feed. Once per
        event loop (an app started again on a new loop starts afresh); a start that failed is retried."""
        loop = asyncio.get_running_loop()
        started = self._started
        if started is not None and started.get_loop() is loop and started.done():
            if not started.cancelled() and started.exception() is None:
                return  # the fast path: every request after the first
        elif started is not None and started.get_loop() is loop:
            await asyncio.shield(started)  # starting: wait for it
            return
        if started is not None:
            await self._stop_here()
        started = self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(started)

    async def _start(self) -> None:
        ring = weakref.ref(self)  # a keyring nobody stops (an app never shut down) is not kept alive by this

        def written(change: Change) -> None:
            held = ring()
            if held is not None:
                held._written(change)

        # Listen and follow first, then load: no write slips between (records apply in any order).
        self._stop_listening = accounts.listen(self.backend.client, written)
        self._lookup_slots = asyncio.Semaphore(MAX_LOOKUPS)  # of this event loop
        await self.feed.start(self.refresh)
        await self.resync()

    async def stop(self) -> None:
        await self._stop_here()
        self._started = None

    async def _stop_here(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        with contextlib.suppress(Exception):
            await self.feed.stop()

    async def resync(self) -> None:
        """Load every row from storage (the source of truth); newer records already held stay."""
        started = time.monotonic()
        for change in await self.backend.run(accounts.access_records):
            self.apply(change)
        self._synced_at = self._tailed_at = started

    def _resync_soon(self) -> None:
        """A resync in the background when the last one is ``RESYNC_S`` old."""
        if self._resyncing or time.monotonic() - self._synced_at < RESYNC_S:
            return
        self._resyncing = True

        async def resync() -> None:
            try:
                await self.resync()
            except Exception as exc:  # noqa: BLE001 - storage is away: try again on a later request
                log.warning("reloading keys failed (%s: %s)", type(exc).__name__, exc)
                self._synced_at = time.monotonic()
            finally:
                self._resyncing = False

        task = asyncio.ensure_future(resync())
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    # -- changes ----------------------------------------------------------------------------------

    def apply(self, change: Change) -> bool:
        """Hold ``change`` unless a newer record of the row is held; whether it was newer."""
        table = change.get("table")
        if table == "api_keys":
            rows: dict[Any, Change] = self._keys
            row: Any = change["key_id"]
        elif table == "members":
            rows, row = self._members, (change["team"], change["user"])
        elif table == "projects":
            rows, row = self._projects, (change["team"], change["project"])
        else:
            return False  # a record of a later version of the server: not ours to read
        with self._lock:
            self._newest = max(self._newest, change["version"])
            held = rows.get(row)
            if held is not None and held["version"] >= change["version"]:
                return False
            rows[row] = change
            if table == "api_keys":
                self._unknown.pop(row, None)
        return True

    def _written(self, change: Change) -> None:
        """A write through this replica's client (in the writing thread): held now, then named to the others."""
        self.apply(change)
        self.feed.publish(change)

    async def refresh(self, rows: set[Row] | None) -> None:
        """The feed named ``rows`` as changed (None: anything may have): hold what storage says of them.
        A batch naming many rows (a flood of forged records, say) costs one look for changed rows."""
        if rows is None or len(rows) > MAX_ROW_READS:
            await self._tail()
            return
        for table, ids in rows:
            for change in await self.backend.run(accounts.row_records, table, ids):
                self.apply(change)

    # -- checks -----------------------------------------------------------------------------------

    async def _current(self) -> None:
        """Started, and with a tailing feed, the rows changed elsewhere read at most ``TAIL_S`` ago."""
        await self.start()
        if self._tail_s is None or time.monotonic() - self._tailed_at < self._tail_s:
            return
        if self._tailing is None or self._tailing.done() or self._tailing.get_loop() is not asyncio.get_running_loop():
            self._tailing = asyncio.ensure_future(self._tail())
        await asyncio.shield(self._tailing)

    async def _tail(self) -> None:
        started = time.monotonic()
        for change in await self.backend.run(accounts.access_records, self._tail_since()):
            self.apply(change)
        self._tailed_at = started

    def _tail_since(self) -> int:
        """The version after which to look: behind the newest held, never ahead of now (a writer whose
        clock runs ahead must not hide everyone else's rows)."""
        return min(self._newest, time.time_ns() // 1000) - TAIL_WINDOW_US

    async def resolve(self, raw: str) -> KeyOwner | None:
        """The owner of a valid key (as ``accounts.resolve_key``), from memory."""
        await self._current()
        if not self.feed.current:
            return await self.backend.run(accounts.resolve_key, raw)
        self._resync_soon()
        parsed = accounts.parse_key(raw)
        if parsed is None:
            return None
        key_id, secret = parsed
        key = self._keys.get(key_id)
        if key is None:
            if self._unknown.get(key_id, 0.0) > time.monotonic():
                return None
            await self._look_up(key_id)
            key = self._keys.get(key_id)
            if key is None:
                self._remember_unknown(key_id)
                return None
        return self._owner(key, secret)

    async def _look_up(self, key_id: str) -> None:
        """Read a key id the copy does not know: one read per id at a time, ``MAX_LOOKUPS`` at once."""
        pending = self._lookups.get(key_id)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = self._lookups[key_id] = asyncio.ensure_future(self._read_key(key_id))
            pending.add_done_callback(
                lambda done: self._lookups.pop(key_id) if self._lookups.get(key_id) is done else None
            )
        await asyncio.shield(pending)

    async def _read_key(self, key_id: str) -> None:
        assert self._lookup_slots is not None  # made by start
        async with self._lookup_slots:
            for change in await self.backend.run(accounts.key_records, key_id):
                self.apply(change)

    def held_owner(self, raw: str) -> KeyOwner | None:
        """The owner of a valid key from what is held, without looking further (None also for a key
        id not held): the per-request work, e.g. for ``bench.api`` to time."""
        parsed = accounts.parse_key(raw)
        key = self._keys.get(parsed[0]) if parsed else None
        return None if key is None or parsed is None else self._owner(key, parsed[1])

    def _owner(self, key: Change, secret: str) -> KeyOwner | None:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if key["revoked"] or not hmac.compare_digest(key["secret_sha256"], digest):
            return None
        member = self._members.get((key["team"], key["user"]))
        if member is None or member["role"] is None:
            return None
        return KeyOwner(key["key_id"], key["team"], key["user"], member["role"], key["scope"])

    def _remember_unknown(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._unknown) >= MAX_NEGATIVE:
                self._unknown = {k: until for k, until in self._unknown.items() if until > now}
                if len(self._unknown) >= MAX_NEGATIVE:
                    self._unknown.clear()
            self._unknown[key_id] = now + NEGATIVE_S

    async def visibility(self, team: str, project: str) -> str:
        """'public' or 'private' (also for a project without a row), as ``accounts.project_visibility``."""
        await self._current()
        if not self.feed.current:
            return await self.backend.run(accounts.project_visibility, team, project)
        row = self._projects.get((team, project))
        return "private" if row is None or row["visibility"] is None else row["visibility"]


def keyring_of(backend: Any) -> Keyring:
    """The backend's keyring, made on first use (started by the backend, or by the first check)."""
    ring = getattr(backend, "keyring", None)
    if ring is None:
        ring = backend.keyring = Keyring(backend)
    return ring
