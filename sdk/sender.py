"""The background sender: turns what the runs collected into events, spools and sends them.

The training thread only appends to lists (``rows``, ``media``) and a deque
(``put``); everything else happens on the process's one sender thread
(``runstream-sender``), which runs an asyncio loop shared by every live run of
the process (``init(reinit="create_new")`` runs several). Each run's ``Sender``
keeps its own queues, spool and sequence numbers and has two tasks on that loop:

- **drain**, every ``flush_interval``: logged rows become columnar ``metrics``
  events (many steps each), queued items become their events; each gets the next
  sequence number and is appended to the spool (one write per drain);
- **pump**: reads the spool from the acknowledged cursor, sends through the
  transport, and moves the cursor once the transport acknowledged. A failed send
  is retried with backoff while drain keeps spooling, so memory stays bounded
  by one drain's worth of rows and the training loop never waits.

The tasks of different runs interleave on the loop: a run whose server or broker is
slow or gone waits in its own pump (sends are awaited, blocking calls run off the loop)
and holds up no other run. The thread starts with the first run and ends after the last.

An error inside the sender is logged once and never reaches the training loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runstream import events
from runstream.events import encode_value
from runstream.media import MediaFile
from runstream.resume import PROGRESS_FILE, write_json
from runstream.spool import Spool
from runstream.summary import MetricStats
from runstream.transport import HttpTransport, KafkaTransport, Records, Transport

log = logging.getLogger("runstream")

#: Upper bounds for one metrics event: keeps it well under Kafka's 1 MB message limit.
MAX_POINTS_PER_EVENT = 20_000
MAX_ROWS_PER_EVENT = 5_000
MAX_CONSOLE_BYTES_PER_EVENT = 256_000
#: The name of the process's one sender thread.
THREAD_NAME = "runstream-sender"
#: How much longer than its bound ``finish()`` waits for the sender to stop (closing a transport).
CLOSE_GRACE = 5.0
#: Bounds of one request that carries several runs' batches (the API takes 16 MiB and 10,000 events).
MAX_SHARED_BYTES = 8 << 20
MAX_SHARED_EVENTS = 5_000

Row = tuple[int, float, dict[str, Any]]


@dataclass(frozen=True)
class RunIdentity:
    team: str
    project: str
    run_id: str

    @property
    def key(self) -> bytes:
        return events.run_key(self.team, self.project, self.run_id)


@dataclass(frozen=True)
class FinishResult:
    """What ``finish()`` could deliver within its bound; the rest stays in the spool for ``runstream sync``."""

    acked_events: int
    unacked_events: int
    points: int
    spool_dir: str

    def __getitem__(self, key: str) -> Any:  # dict-like access, e.g. result["unacked_events"]
        return getattr(self, key)


class ExitSafeExecutor(concurrent.futures.ThreadPoolExecutor):
    """The sender loop's default executor (``asyncio.to_thread``, DNS look-ups): a thread per call.

    A script that never calls ``finish()`` is finished from ``atexit``, after the interpreter
    has told every ``ThreadPoolExecutor`` to refuse work ("cannot schedule new futures after
    interpreter shutdown"). The last sends happen exactly then, so they must not need a pool.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)  # asyncio takes only a ThreadPoolExecutor; its pool is never used

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                    future.set_exception(exc)

        threading.Thread(target=call, name="runstream-io", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None  # no pool to stop; a call still running is a daemon thread


def metric_batches(rows: list[Row], stats: MetricStats | None = None) -> Iterator[tuple[dict[str, Any], int]]:
    """Columnar ``metrics`` payloads for logged rows, each with its point count; also feeds ``stats``.

    NaN and ±Inf are encoded for JSON here (see ``events.encode_value``).
    """
    n = len(rows)
    i = 0
    while i < n:
        j, points = i, 0
        while j < n and j - i < MAX_ROWS_PER_EVENT and points < MAX_POINTS_PER_EVENT:
            points += len(rows[j][2])
            j += 1
        chunk = rows[i:j]
        columns = _columns(chunk)
        points = 0
        for key, column in columns.items():
            present = [v for v in column if v is not None] if None in column else column
            points += len(present)
            total = sum(present)
            if total - total == 0:  # all finite (a NaN or ±Inf makes the sum non-finite)
                if stats is not None:
                    stats.add_finite_column(key, present, total)
            else:
                column = columns[key] = list(column)
                for index, value in enumerate(column):
                    if value is not None:
                        if stats is not None:
                            stats.add(key, value)
                        column[index] = encode_value(value)
        yield {"step": [r[0] for r in chunk], "time": [r[1] for r in chunk], "values": columns}, points
        i = j


def _columns(chunk: list[Row]) -> dict[str, Any]:
    """Rows to columns; ``None`` where a row did not log a key."""
    keys = tuple(chunk[0][2])
    if all(tuple(values) == keys for _, _, values in chunk):
        # The usual case, every row logging the same keys: transpose in C (zip), no per-point Python.
        return dict(zip(keys, zip(*(values.values() for _, _, values in chunk))))
    m = len(chunk)
    columns: dict[str, list] = {}
    for index, (_, _, values) in enumerate(chunk):
        for key, value in values.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = [None] * m
            column[index] = value
    return columns


def _take(items: list) -> list:
    """Everything in a list other threads append to, taken in place: an append that races
    this lands after the taken prefix instead of in a list nobody reads any more."""
    count = len(items)
    taken = items[:count]
    del items[:count]
    return taken


def console_batches(lines: list[tuple[float, str, str]]) -> Iterator[dict[str, Any]]:
    batch: list[tuple[float, str, str]] = []
    size = 0
    for line in lines:
        batch.append(line)
        size += len(line[2]) + 32
        if size >= MAX_CONSOLE_BYTES_PER_EVENT or len(batch) >= MAX_ROWS_PER_EVENT:
            yield _console_payload(batch)
            batch, size = [], 0
    if batch:
        yield _console_payload(batch)


def _console_payload(batch: list[tuple[float, str, str]]) -> dict[str, Any]:
    return {"time": [b[0] for b in batch], "stream": [b[1] for b in batch], "line": [b[2] for b in batch]}


class SharedIngest:
    """The HTTP sends of every run of the process to one server, with one key, on the sender's loop.

    While a request is out, the batches runs hand in wait, and go together in the next one:
    the server pays per request more than per event (an embedded server handles one at a
    time), so 50 runs finishing at once make two requests, not 50. A request of several runs'
    batches that fails is sent again run by run, so a batch the server refuses (say, a project
    the key may not write to) fails only its own run's send.
    """

    def __init__(self, transport: HttpTransport) -> None:
        self.transport = transport
        self._waiting: list[tuple[Records, asyncio.Future[None]]] = []
        self._busy = False
        self._task: asyncio.Future[None] | None = None  # the requests going out now (a reference keeps it alive)

    async def send(self, records: Records, key: bytes) -> None:
        """Returns once the server acknowledged ``records``; raises as ``HttpTransport.send``."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, done))
        if not self._busy:
            self._busy = True
            self._task = asyncio.ensure_future(self._send_waiting())
        await done  # cancelled (a finish bound ran out): the request may still go; a resend is harmless

    async def _send_waiting(self) -> None:
        try:
            while self._waiting:
                await self._send_together(self._take())
        finally:
            self._busy = False

    def _take(self) -> list[tuple[Records, asyncio.Future[None]]]:
        """The waiting batches for one request, oldest first, within its bounds (the first always)."""
        self._waiting = [w for w in self._waiting if not w[1].done()]
        taken: list[tuple[Records, asyncio.Future[None]]] = []
        size = count = 0
        while self._waiting:
            records = self._waiting[0][0]
            size += sum(len(raw) for _, raw in records)
            count += len(records)
            if taken and (size > MAX_SHARED_BYTES or count > MAX_SHARED_EVENTS):
                break
            taken.append(self._waiting.pop(0))
        return taken

    async def _send_together(self, parts: list[tuple[Records, asyncio.Future[None]]]) -> None:
        if not parts:
            return
        try:
            await self.transport.send([r for records, _ in parts for r in records], b"")
        except Exception as exc:  # noqa: BLE001 - handed to the runs' pumps
            if len(parts) == 1:
                _settle(parts[0][1], exc)
            else:
                await asyncio.gather(*(self._send_together([part]) for part in parts))
            return
        for _, done in parts:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its run stopped waiting
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class _Hub:
    """The process's one sender thread and its event loop, shared by every live run's sender."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(ExitSafeExecutor())
        self.senders: set[Sender] = set()
        self._ingests: dict[tuple[str, str], SharedIngest] = {}  # used on the loop only
        self._producers: dict[str, KafkaTransport] = {}  # by brokers; used on the loop only
        self.thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def send_for(self, transport: Transport) -> Callable[[Records, bytes], Awaitable[None]]:
        """How a run sends through ``transport``: HTTP sends to one server share requests; Kafka sends to
        the same brokers share one producer, which batches by itself (1,000 runs, one set of connections)."""
        if isinstance(transport, KafkaTransport):
            if transport.bootstrap not in self._producers:
                self._producers[transport.bootstrap] = KafkaTransport(f"kafka://{transport.bootstrap}")
            return self._producers[transport.bootstrap].send
        if not isinstance(transport, HttpTransport):
            return transport.send
        key = (transport.base, transport.api_key)
        if key not in self._ingests:
            self._ingests[key] = SharedIngest(transport)
        return self._ingests[key].send

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            # Stopped after the last run: the shared producers go (every send was awaited), and what is left
            # (a request to a server that never answers) is cancelled.
            closing = [producer.close() for producer in self._producers.values()]
            self.loop.run_until_complete(asyncio.gather(*closing, return_exceptions=True))
            left = asyncio.all_tasks(self.loop)
            for task in left:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        finally:
            self.loop.close()


_hub: _Hub | None = None
_hub_lock = threading.Lock()


def _join_hub(sender: Sender) -> None:
    """Hand ``sender`` to the running hub (one is started when there is none): its task joins the loop."""
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = _Hub()
        _hub.senders.add(sender)
        sender._hub = _hub  # before its task runs, which uses it
        _hub.loop.call_soon_threadsafe(_hub.loop.create_task, sender._drive())


def _leave_hub(hub: _Hub, sender: Sender) -> None:
    """On the hub's thread, once ``sender`` has stopped: the last one out stops the thread.

    Decided under the lock ``_join_hub`` takes, so a run started meanwhile gets a new hub."""
    global _hub
    with _hub_lock:
        hub.senders.discard(sender)
        if hub.senders:
            return
        if _hub is hub:
            _hub = None
    hub.loop.stop()


def _after_fork_in_child() -> None:
    """A forked child has no sender thread (and maybe a lock held by one of the parent's threads)."""
    global _hub, _hub_lock
    _hub, _hub_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Sender:
    def __init__(
        self,
        identity: RunIdentity,
        spool: Spool,
        transport: Transport | None,
        *,
        uploader: HttpTransport | None = None,
        seq_start: int,
        stats: MetricStats,
        files_dir: Path,
        flush_interval: float = 0.25,
        heartbeat_interval: float = 15.0,
        last_step: int = -1,
        next_step: Callable[[], int] | None = None,
    ) -> None:
        self.identity = identity
        self.spool = spool
        self.transport = transport
        self.uploader = uploader
        self.stats = stats
        self.files_dir = files_dir
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        #: (step, time, {key: value}) appended by ``log()`` on the training thread.
        self.rows: list[Row] = []
        #: (step, time, key, Media) appended by ``log()``; encoded to files here.
        self.media: list[tuple[int, float, str, Any]] = []
        self._queue: deque[tuple[str, dict[str, Any], float]] = deque()
        self._console: deque[tuple[float, str, str]] = deque()
        self._seq = seq_start
        self._lock = threading.Lock()  # drain may also run on the training thread (summary reads)
        self._hub: _Hub | None = None  # the sender thread serving this run, from start() on
        self._wake = asyncio.Event()  # set on the hub's loop only (wake())
        self._done = threading.Event()  # this run's tasks on the hub have ended
        self._stopping = False
        self._deadline = 0.0
        self._last_heartbeat = 0.0
        self._periodic: list[list[Any]] = []  # [interval, callable, when last called]
        #: The largest step spooled (a resumed run starts above the one it had).
        self.last_step = last_step
        #: The run's next step (steps that logged only media or text count too), for the progress file.
        self._next_step = next_step or (lambda: 0)
        self._final: tuple[str, dict[str, Any], float] | None = None  # run_finish: spooled after everything else
        self._closed = False  # finished: nothing more is spooled
        self._accepting = True  # False from finish() on (or for a disabled run): put() drops
        self._progress = (last_step, seq_start - 1)  # what the spool's progress file says
        self.points = 0
        self.acked_events = 0
        self._reported: set[str] = set()

    # -- called from any thread --------------------------------------------------------
    def put(self, etype: str, data: dict[str, Any], ts: float | None = None) -> bool:
        """Queue an event; False (and nothing queued) once the run has finished."""
        if not self._accepting:
            return False
        self._queue.append((etype, data, ts if ts is not None else time.time()))
        return True

    def put_console(self, lines: list[tuple[float, str, str]]) -> None:
        if self._accepting:
            self._console.extend(lines)

    def discard(self) -> None:
        """A sender that will never run (a disabled run): whatever is put is dropped."""
        self._accepting = False
        self._closed = True

    def every(self, interval: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the sender's thread about every ``interval`` s while the run lives."""
        self._periodic.append([interval, fn, time.monotonic()])

    def start(self) -> None:
        """Hand the run to the process's sender thread (started for the first run)."""
        _join_hub(self)

    def wake(self) -> None:
        hub = self._hub
        if hub is not None:
            try:
                hub.loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop has closed
                pass

    def finish(self, timeout: float, etype: str, data: dict[str, Any]) -> FinishResult:
        """Drain everything, then the final event (``run_finish``: nothing is spooled after it),
        wait up to ``timeout`` s for acknowledgements, stop. Never hangs."""
        self.begin_finish(timeout, etype, data)
        return self.end_finish()

    def begin_finish(self, timeout: float, etype: str, data: dict[str, Any]) -> None:
        """Stop taking events and let the sender thread send the rest, then ``etype``, for up to
        ``timeout`` s from now. Returns at once: runs that end together wait out one bound, not one each."""
        self._deadline = time.monotonic() + timeout
        self._final = (etype, data, time.time())
        self._accepting = False
        self._stopping = True
        self.wake()

    def end_finish(self) -> FinishResult:
        """Wait (until ``begin_finish``'s bound, and the time closing the transport takes) for the
        sender to stop; close the spool. Never hangs."""
        if self._hub is not None:
            self._done.wait(max(0.0, self._deadline - time.monotonic()) + CLOSE_GRACE)
        else:
            self.drain()
        pending = self._count_unacked()
        with self._lock:
            self._closed = True
            self.spool.close()  # releases the spool's lock: `runstream sync` may take it from here
        return FinishResult(self.acked_events, pending, self.points, str(self.spool.dir))

    # -- on the sender thread ---------------------------------------------------------
    async def _drive(self) -> None:
        """This run's life on the shared loop; when it ends, the run is done with the thread."""
        try:
            await self._main()
        except BaseException as exc:  # noqa: BLE001 - nothing may escape into the user's process, nor stop other runs
            self._report("sender", exc)
        finally:
            self._done.set()
            if self._hub is not None:
                _leave_hub(self._hub, self)

    async def _main(self) -> None:
        data_ready, idle = asyncio.Event(), asyncio.Event()
        pump = asyncio.create_task(self._pump(self.transport, data_ready, idle)) if self.transport else None
        self._last_heartbeat = time.monotonic()  # run_start says the run is alive
        periodic: dict[int, asyncio.Future] = {}  # what each periodic call is doing now
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._stopping:  # nothing may follow run_finish
                self._heartbeat()
                self._call_periodic(periodic)
            self._safe_drain()
            data_ready.set()
        await asyncio.gather(*periodic.values(), return_exceptions=True)  # e.g. a file being copied
        self._safe_drain()
        if pump is not None:
            idle.clear()
            data_ready.set()
            try:
                await asyncio.wait_for(idle.wait(), max(0.0, self._deadline - time.monotonic()))
            except TimeoutError:
                pass
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self.transport.close()  # type: ignore[union-attr]  # there is a pump only with a transport

    async def _pump(self, transport: Transport, data_ready: asyncio.Event, idle: asyncio.Event) -> None:
        send = self._hub.send_for(transport) if self._hub is not None else transport.send
        cursor = self.spool.acked_cursor()
        backoff = 0.2
        while True:
            with self._lock:
                records, after = self.spool.read(cursor)
            if not records:
                idle.set()
                await data_ready.wait()
                data_ready.clear()
                continue
            idle.clear()
            try:
                await upload_files(self.uploader, self.identity, self.files_dir, records)
                await send(records, self.identity.key)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the events stay spooled and the pump lives on
                self._report("send", exc, "events stay in the spool and are retried")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            with self._lock:
                self.spool.ack(after)
            cursor = after
            self.acked_events += len(records)

    def _call_periodic(self, running: dict[int, asyncio.Future]) -> None:
        """Start each periodic call that is due, on a thread of its own (copying a large saved file
        must not hold up draining, sending and heartbeats), one at a time per call."""
        now = time.monotonic()
        for index, entry in enumerate(self._periodic):
            interval, fn, last = entry
            if now - last >= interval and (index not in running or running[index].done()):
                entry[2] = now
                running[index] = asyncio.ensure_future(asyncio.to_thread(self._guarded, fn))

    def _guarded(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - e.g. a saved file that vanished mid-copy
            self._report("periodic", exc)

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= self.heartbeat_interval:
            self._last_heartbeat = now
            # Before the first log() there is no step to report (the contract's step is >= 0).
            self.put(events.HEARTBEAT, {"step": self.last_step} if self.last_step >= 0 else {})

    # -- building events ------------------------------------------------------------------
    def _safe_drain(self) -> None:
        try:
            self.drain()
        except Exception as exc:  # noqa: BLE001
            self._report("drain", exc)

    def drain(self) -> None:
        """Turn everything collected so far into spooled events (any thread); after them, once
        finishing, the final event."""
        with self._lock:
            if self._closed:
                return
            # Decided before taking the rows: whatever was logged before finish() is taken below.
            last = self._stopping and self._final is not None
            self._drain_queue()  # before the rows: run_start precedes the first metrics
            rows = _take(self.rows)
            for payload, points in metric_batches(rows, self.stats):
                self.points += points
                self._spool(events.METRICS, payload, time.time())
            if rows:
                self.last_step = max(self.last_step, max(row[0] for row in rows))
            self._drain_media()
            if self._console:
                lines = [self._console.popleft() for _ in range(len(self._console))]
                for payload in console_batches(lines):
                    self._spool(events.CONSOLE, payload, time.time())
            self._drain_queue()  # what the media produced
            if last:
                self._spool(*self._final)  # type: ignore[misc]
                self._closed = True
            self._record_progress()
            self.spool.flush()

    def _record_progress(self) -> None:
        """The spool's ``progress`` file: the last step and seq spooled, where a resume continues.

        Written before the records themselves: a process killed in between then makes a
        resume skip a few steps, never log over ones it had stored.
        """
        progress = (max(self.last_step, self._next_step() - 1), self._seq - 1)
        if progress == self._progress:
            return
        try:
            write_json(self.spool.dir / PROGRESS_FILE, {"last_step": progress[0], "last_seq": progress[1]})
        except OSError as exc:
            self._report("progress", exc)
            return
        self._progress = progress

    def _drain_queue(self) -> None:
        while self._queue:
            etype, data, ts = self._queue.popleft()
            self._spool(etype, data, ts)

    def _drain_media(self) -> None:
        for step, ts, key, item in _take(self.media):
            try:
                stored = item.to_file(self.files_dir, key, step)
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the run
                self._report(f"media:{key}", exc)
                continue
            self._queue.append((events.FILE, media_event_data(stored, step, key), ts))

    def _spool(self, etype: str, data: dict[str, Any], ts: float) -> None:
        envelope = {
            "v": events.SCHEMA_VERSION,
            "type": etype,
            "team": self.identity.team,
            "project": self.identity.project,
            "run_id": self.identity.run_id,
            "seq": self._seq,
            "ts": ts,
            "data": data,
        }
        self._seq += 1
        self.spool.append(events.TOPIC_OF_TYPE[etype].name, orjson.dumps(envelope))

    def _count_unacked(self) -> int:
        with self._lock:
            return self.spool.count()

    def _report(self, where: str, exc: BaseException, consequence: str = "") -> None:
        if where not in self._reported:  # once per kind: a dead broker must not flood stderr
            self._reported.add(where)
            log.warning("runstream: %s failed: %s%s", where, exc, f" ({consequence})" if consequence else "")


async def upload_files(
    uploader: HttpTransport | None, identity: RunIdentity, files_dir: Path, records: list[tuple[str, bytes]]
) -> None:
    """Upload the blobs that ``file`` events among ``records`` announce, before the events go out.

    Without an uploader (a Kafka run with no ``files_url``) the blobs stay in the run's files directory.
    """
    if uploader is None:
        return
    upload = uploader.upload
    run_path = f"{identity.team}/{identity.project}/{identity.run_id}"
    for topic, raw in records:
        if topic != events.TOPIC_FILES.name:
            continue
        data = orjson.loads(raw)["data"]
        try:
            blob = (files_dir / data["path"]).read_bytes()
        except FileNotFoundError:
            log.warning("runstream: %s was deleted before upload; its metadata is sent without it", data["path"])
            continue
        await upload(run_path, data["store_key"], blob, data["sha256"])


def media_event_data(stored: MediaFile, step: int, key: str) -> dict[str, Any]:
    """The ``file`` event of a logged media value."""
    data = file_event_data(stored.path, "media", stored.size, stored.sha256)
    data.update(step=step, media_type=stored.media_type, meta={**stored.meta, "key": key})
    return data


def file_event_data(path: str, kind: str, size: int, sha256: str) -> dict[str, Any]:
    """The ``file`` event of a blob in the run's files directory (``path`` is relative to it)."""
    return {"path": path, "kind": kind, "size": size, "sha256": sha256, "store_key": path}
