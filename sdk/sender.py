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
  by one drain's worth of rows and the training loop never waits: as a 429's
  Retry-After says, slowly for a refused key (said once), and never for records
  the server refuses for good (422, 413...): ``deliver`` narrows a refused batch
  down to them, they go to the run's quarantine (``spool.write_quarantine``) and
  the cursor moves past them (docs/sdk.md has the table).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from runstream import events
from runstream.events import encode_value
from runstream.media import MediaFile
from runstream.resume import PROGRESS_FILE, write_json
from runstream.spool import MAX_HELD_BYTES, QUARANTINE_DIR, Cursor, Spool, write_quarantine
from runstream.summary import MetricStats
from runstream.transport import HttpTransport, KafkaTransport, Records, Transport, TransportError, key_hint

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
#: Backoff (s) after a failed send: from the first, doubling to the last. A refused key is retried slowly.
BACKOFF = (0.2, 5.0)
REFUSED_BACKOFF = (5.0, 60.0)

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
    """What ``finish()`` could deliver within its bound; the rest stays in the spool, and the next run
    on this machine that logs to the same server sends it (or ``runstream sync --all``).

    ``unacked_events`` = ``in_flight_events`` (handed to the transport, no answer yet when the bound ran
    out: they may or may not have arrived; ``answered`` says whether this server answered a request of
    this process before) + ``unsent_events`` (never sent: the server was unreachable, slow to take
    them, asked to wait, or refused the key, as ``refused``/``last_error`` say)."""

    acked_events: int
    unacked_events: int
    points: int
    spool_dir: str
    in_flight_events: int = 0
    unsent_events: int = 0
    #: Events the server refused for good this session, moved to ``quarantine_dir`` (``runstream sync --quarantined``).
    quarantined_events: int = 0
    quarantine_dir: str = ""
    #: Events the SDK could not keep (the disk was full): lost.
    dropped_events: int = 0
    #: Non-empty when the server refused the key (401/403) or the address: which server, which key, why.
    refused: str = ""
    #: ``refused`` blames the key (401/403/407), not the address.
    refused_key: bool = False
    #: The last send failure, when the last send failed ("" when it succeeded).
    last_error: str = ""
    #: A request to this server succeeded earlier in this process (so in-flight events have most likely arrived).
    answered: bool = False

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


Waiting = tuple[Records, "asyncio.Future[None]", "Callable[[], None] | None"]


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
        self._waiting: list[Waiting] = []
        self._busy = False
        self._task: asyncio.Future[None] | None = None  # the requests going out now (a reference keeps it alive)
        #: A 429's Retry-After: no request to this server before this (loop time).
        self.not_before = 0.0

    async def send(self, records: Records, key: bytes, on_wire: Callable[[], None] | None = None) -> None:
        """Returns once the server acknowledged ``records``; raises as ``HttpTransport.send``.
        ``on_wire`` is called when the records go out in a request (until then they only wait)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((records, done, on_wire))
        if not self._busy:
            self._busy = True
            self._task = asyncio.ensure_future(self._send_waiting())
        await done  # cancelled (a finish bound ran out): the request may still go; a resend is harmless

    async def _send_waiting(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                if self.not_before > loop.time():  # the server asked to wait (429 Retry-After)
                    await asyncio.sleep(self.not_before - loop.time())
                await self._send_together(self._take())
        finally:
            self._busy = False

    def _take(self) -> list[Waiting]:
        """The waiting batches for one request, oldest first, within its bounds (the first always)."""
        self._waiting = [w for w in self._waiting if not w[1].done()]
        taken: list[Waiting] = []
        size = count = 0
        while self._waiting:
            records = self._waiting[0][0]
            size += sum(len(raw) for _, raw in records)
            count += len(records)
            if taken and (size > MAX_SHARED_BYTES or count > MAX_SHARED_EVENTS):
                break
            taken.append(self._waiting.pop(0))
        return taken

    async def _send_together(self, parts: list[Waiting]) -> None:
        if not parts:
            return
        for _, _, on_wire in parts:
            if on_wire is not None:
                on_wire()
        try:
            await self.transport.send([r for records, _, _ in parts for r in records], b"")
        except Exception as exc:  # noqa: BLE001 - handed to the runs' pumps
            if isinstance(exc, TransportError) and exc.retry_after is not None and exc.status in (429, 503):
                # (retry_after is clamped by the transport: never a tight loop, never parked for hours)
                self.not_before = max(self.not_before, asyncio.get_running_loop().time() + exc.retry_after)
                for _, done, _ in parts:  # every run waits as asked, each told so
                    _settle(done, exc)
                return
            if len(parts) == 1:
                _settle(parts[0][1], exc)
            else:
                await asyncio.gather(*(self._send_together([part]) for part in parts))
            return
        for _, done, _ in parts:
            _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():  # its run stopped waiting
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


#: A run's send: (records, key, on_wire) where ``on_wire()`` is called as the records go out.
Send = Callable[..., Awaitable[None]]


def announced(send: Callable[[Records, bytes], Awaitable[None]]) -> Send:
    """``send`` with an ``on_wire`` callback, called as it starts (it sends at once)."""

    async def send_announced(records: Records, key: bytes, on_wire: Callable[[], None] | None = None) -> None:
        if on_wire is not None:
            on_wire()
        await send(records, key)

    return send_announced


#: What this process has said about a server or key (said once, whichever run met it first; never reset:
#: a long process that meets the same refusal again later says nothing new).
_said: set[tuple[str, ...]] = set()
#: Servers (URLs) that acknowledged a request of this process: events in flight to them have most likely arrived.
_answered: set[str] = set()
_said_lock = threading.Lock()


def say_once(key: tuple[str, ...], message: str) -> None:
    with _said_lock:
        if key in _said:
            return
        _said.add(key)
    log.warning("%s", message)


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

    def send_for(self, transport: Transport) -> Send:
        """How a run sends through ``transport``: HTTP sends to one server share requests; Kafka sends to
        the same brokers share one producer, which batches by itself (1,000 runs, one set of connections)."""
        if isinstance(transport, KafkaTransport):
            if transport.bootstrap not in self._producers:
                self._producers[transport.bootstrap] = KafkaTransport(f"kafka://{transport.bootstrap}")
            return self._producers[transport.bootstrap].send  # calls on_wire once its producer is up
        if not isinstance(transport, HttpTransport):
            return announced(transport.send)
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
        #: After init(resume_from=...): the rewind's run_start seq and step, put into every metrics event
        #: (the processor stores each under its rewind's segment by it, in whatever order it reads the topics).
        self._rewind: dict[str, int] | None = None
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
        self._in_flight = 0  # records of the batch in a request now (sent, not yet answered)
        self._retry_now = asyncio.Event()  # finishing: a transient failure's backoff ends early (on the hub's loop)
        self._retried_at_finish = False
        self._damage_reported = 0
        self.quarantined_events = 0
        self.refused = ""  # the server refused the key (or the address): why, for finish()
        self.refused_key = False  # ... and it blamed the key (401/403/407)
        self.last_error = ""  # the last send failure ("" once a send succeeded)
        self._url = _url_of(transport)
        self._set_aside: set[bytes] = set()  # quarantined records not yet behind the acked cursor
        self._pump_task: asyncio.Task | None = None
        self._pump_stopped = threading.Event()  # no pump, or it has ended: the spool may close
        self._pump_stopped.set()

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
            self._stop_pump()
        else:
            self.drain()
        with self._lock:
            self._closed = True
            self.spool.flush()  # what a full disk held back, if it has room now
            dropped_before = self.spool.dropped_events
            pending = self.spool.count()
            self.spool.close()  # releases the spool's lock: `runstream sync` may take it from here
            dropped = self.spool.dropped_events
        if dropped > dropped_before or (dropped and "disk" not in self._reported):
            self._report_disk()
        in_flight = min(self._in_flight, pending)
        quarantine = self.spool.dir.parent / QUARANTINE_DIR
        return FinishResult(
            self.acked_events,
            pending,
            self.points,
            str(self.spool.dir),
            in_flight_events=in_flight,
            unsent_events=pending - in_flight,
            quarantined_events=self.quarantined_events,
            quarantine_dir=str(quarantine) if self.quarantined_events else "",
            dropped_events=dropped,
            refused=self.refused,
            refused_key=self.refused_key,
            last_error=self.last_error,
            answered=self._url in _answered,
        )

    def _stop_pump(self) -> None:
        """The sender did not stop in time (a slow periodic call, a slow close): cancel the pump before the
        spool closes, so nothing reads or acknowledges a spool another process (a sync) may hold next."""
        hub, task = self._hub, self._pump_task
        if self._pump_stopped.is_set() or hub is None or task is None:
            return
        try:
            hub.loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop has closed: the pump is gone with it
            return
        self._pump_stopped.wait(1.0)

    @property
    def dropped_events(self) -> int:
        """Events the SDK could not keep (the disk was full)."""
        return self.spool.dropped_events

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
        pump = None
        if self.transport is not None:
            self._pump_stopped.clear()
            pump = self._pump_task = asyncio.create_task(self._pump(self.transport, data_ready, idle))
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
        self._retry_now.set()  # a pump waiting out a transient failure tries once more now
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
        try:
            await self._pump_spool(transport, data_ready, idle)
        finally:
            self._pump_stopped.set()

    async def _pump_spool(self, transport: Transport, data_ready: asyncio.Event, idle: asyncio.Event) -> None:
        send = self._hub.send_for(transport) if self._hub is not None else announced(transport.send)
        cursor = self.spool.acked_cursor()
        failures = 0
        while True:
            ends: list[Cursor] = []
            with self._lock:
                if self.spool.closed:  # finish() gave up waiting for this pump
                    return
                records, after = self.spool.read(cursor, ends=ends)
            self._report_damage()
            if not records:
                if after != cursor:  # only damaged bytes: skipped for good
                    with self._lock:
                        self.spool.ack(after)
                    cursor = after
                    continue
                idle.set()
                await data_ready.wait()
                data_ready.clear()
                continue
            idle.clear()
            # Records quarantined by an earlier try of this batch are not sent again.
            progress = Delivery({i for i, (_, raw) in enumerate(records) if raw in self._set_aside})
            error: Exception | None = None
            try:
                await deliver(self._attempt(send), records, progress)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the events stay spooled and the pump lives on
                error = exc
            try:  # what was found so far is kept even when a later request failed
                cursor = self._keep_progress(records, ends, after, cursor, progress)
            except QuarantineUnwritable as exc:
                error = error or exc
            if error is not None:
                failures += 1
                await self._wait_after(error, failures)
                continue
            failures = 0
            self.last_error = self.refused = ""
            _answered.add(self._url)

    def _keep_progress(
        self, records: Records, ends: list[Cursor], after: Cursor, cursor: Cursor, progress: Delivery
    ) -> Cursor:
        """Quarantine the refusals ``progress`` found, acknowledge the records settled from the start on; the new cursor.
        Raises ``QuarantineUnwritable`` (after acknowledging what it could) when the quarantine cannot be written."""
        new = [(i, e) for i, e in progress.refused if records[i][1] not in self._set_aside]
        unwritable: OSError | None = None
        if new:
            try:
                self._quarantine(records, new)
                self._set_aside.update(records[i][1] for i, _ in new)
            except OSError as exc:  # a full disk: these stay in the spool and are tried again
                unwritable = exc
                progress.settled.difference_update(i for i, _ in new)
        done = progress.prefix()
        end = after if done == len(records) else ends[done - 1] if done else cursor
        if end != cursor:
            passed = [raw for _, raw in records[:done]]
            with self._lock:
                if self.spool.closed:  # finish() gave up waiting: the spool may be another process's now
                    raise asyncio.CancelledError
                self.spool.ack(end)
            self.acked_events += sum(raw not in self._set_aside for raw in passed)
            self._set_aside.difference_update(passed)
        if unwritable is not None:
            raise QuarantineUnwritable(unwritable) from unwritable
        return end

    def _attempt(self, send: Send) -> Callable[[Records], Awaitable[None]]:
        """One try at some of the records: their blobs, then the events."""

        def on_wire(count: int) -> Callable[[], None]:
            def wired() -> None:
                self._in_flight = count

            return wired

        async def attempt(records: Records) -> None:
            await upload_files(self.uploader, self.identity, self.files_dir, records, self._upload_stop)
            try:
                await send(records, self.identity.key, on_wire=on_wire(len(records)))
            except asyncio.CancelledError:
                raise  # the bound ran out: what is out stays counted as in flight (finish() says so)
            except BaseException:
                self._in_flight = 0
                raise
            self._in_flight = 0

        return attempt

    def _upload_stop(self) -> bool:
        """An artifact upload (on a thread of its own) stops once finish()'s bound ran out or the spool is closed."""
        return self.spool.closed or (self._stopping and time.monotonic() > self._deadline)

    async def _wait_after(self, exc: BaseException, failures: int) -> None:
        """Say what failed (once), then wait before the next try: as a 429 asks, slowly for a refused
        key, with a growing backoff otherwise (ended early when the run finishes)."""
        self.last_error = str(exc)
        transport = self.transport
        url = self._url
        where = self.spool.dir.parent
        if isinstance(exc, TransportError) and exc.refused:
            hint = key_hint(getattr(transport, "api_key", ""))
            self.refused_key = exc.blames_key
            if exc.blames_key:
                self.refused = f"{url} refused {hint} ({exc.reason})"
                what = "fix the key (RUNSTREAM_API_KEY, init(settings={'api_key': ...}) or `runstream login`)"
                later = f"runstream sync --api-key KEY {where}"
            else:  # a wrong address, or a 4xx that is not the API's refusal of the events (a proxy in between)
                self.refused = f"{url} answered {exc.reason}, which is not the runstream API taking or refusing events"
                what = "check the URL and any proxy in between"
                later = f"runstream sync --url URL {where}"
            say_once(
                ("refused", url, hint, str(exc.status)),
                f"runstream: {self.refused}. The events are kept (nothing is lost) and retried every minute; "
                f"{what}, or send them later with `{later}`",
            )
            low, high = REFUSED_BACKOFF
            await asyncio.sleep(min(low * 2 ** (failures - 1), high))
            return
        low, high = BACKOFF
        delay = min(low * 2 ** (failures - 1), high)
        if isinstance(exc, TransportError) and exc.retry_after is not None and exc.status in (429, 503):
            say_once(
                ("slow down", url),
                f"runstream: {url} asked to wait {exc.retry_after:g} s (HTTP {exc.status}); the run keeps spooling "
                "and sends again after that",
            )
            await asyncio.sleep(max(exc.retry_after, delay))  # the backoff still grows if it keeps asking
            return
        if isinstance(exc, QuarantineUnwritable):  # a full disk, say: tried again later
            self._report("quarantine", exc, "the refused events stay in the spool")
        else:
            self._report("send", exc, "events stay in the spool and are retried")
        if self._retried_at_finish:
            await asyncio.sleep(delay)
            return
        try:  # the run finishing (``_retry_now``) ends the wait once: one more try, then the backoff again
            await asyncio.wait_for(self._retry_now.wait(), delay)
            self._retried_at_finish = True
        except TimeoutError:
            pass

    def _quarantine(self, records: Records, refused: list[tuple[int, TransportError]]) -> None:
        """Move the records the server refused for good beside the spool, with its reasons; say so once per run."""
        url = self._url
        path = write_quarantine(
            self.spool.dir.parent / QUARANTINE_DIR, [records[i] for i, _ in refused], [e for _, e in refused], url
        )
        self.quarantined_events += len(refused)
        if "quarantine-said" not in self._reported:
            self._reported.add("quarantine-said")
            log.warning(
                "runstream: %s refused %d event(s) of run %s for good (%s); they are kept in %s and the rest of the "
                "run goes on. To send them again (say, after a server upgrade): runstream sync --quarantined %s",
                url,
                len(refused),
                "/".join((self.identity.team, self.identity.project, self.identity.run_id)),
                refused[0][1].reason,
                path,
                self.spool.dir.parent,
            )

    def _report_damage(self) -> None:
        damaged = self.spool.damaged_bytes
        if damaged > self._damage_reported:
            if not self._damage_reported:
                log.warning(
                    "runstream: %d bytes of %s were not whole records (a write torn by a crash, a power loss or a "
                    "full disk) and are skipped; every whole record before and after them is sent",
                    damaged,
                    self.spool.dir,
                )
            self._damage_reported = damaged

    def _report_disk(self) -> None:
        error = self.spool.write_error
        if "disk" in self._reported:
            return
        self._reported.add("disk")
        log.warning(
            "runstream: cannot write the spool %s (%s); training goes on, events are held in memory (up to %d MiB) "
            "until there is room again, beyond that they are dropped and counted (FinishResult.dropped_events, "
            "%d so far)",
            self.spool.dir,
            error.strerror if error is not None and error.strerror else error,
            MAX_HELD_BYTES >> 20,
            self.spool.dropped_events,
        )

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
            if self.spool.write_error is not None and self.spool.held_events + self.spool.dropped_events:
                self._report_disk()

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
        if etype == events.RUN_START and data.get("rewind"):
            self._rewind = {"seq": self._seq, "step": data["rewind"]["step"]}
        elif etype == events.METRICS and self._rewind is not None:
            data = {**data, "rewind": self._rewind}
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

    def _report(self, where: str, exc: BaseException, consequence: str = "") -> None:
        if where not in self._reported:  # once per kind: a dead broker must not flood stderr
            self._reported.add(where)
            log.warning("runstream: %s failed: %s%s", where, exc, f" ({consequence})" if consequence else "")


async def upload_files(
    uploader: HttpTransport | None,
    identity: RunIdentity,
    files_dir: Path,
    records: list[tuple[str, bytes]],
    stop: Callable[[], bool] | None = None,
) -> None:
    """Upload the blobs that ``file`` events among ``records`` announce, and those of logged artifact versions
    (from the run's staging folder, ``runstream.artifacts``), before the events go out.

    Without an uploader (a Kafka run with no ``files_url``) the blobs stay in the run's files directory.
    A blob the server refuses for good (too large, say) fails as its event would: ``TransportError``
    naming that record in ``bad_lines``, so ``deliver`` sets the event aside and sends the rest.
    ``stop()`` true cuts an artifact's upload short (``TransportError``: its events stay spooled).
    """
    if uploader is None:
        return
    upload = uploader.upload
    run_path = f"{identity.team}/{identity.project}/{identity.run_id}"
    for line, (topic, raw) in enumerate(records, start=1):
        if topic != events.TOPIC_FILES.name:
            continue
        try:
            envelope = orjson.loads(raw)
            data = envelope["data"]
            if envelope.get("type") == events.ARTIFACT:  # a logged version: its blobs, from the staging folder
                version = str(data["digest"]) if data.get("action") == "log" else ""
            else:
                path, store_key, sha256 = data["path"], data["store_key"], data["sha256"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            continue  # not a file event the server would take: the ingest says why
        if envelope.get("type") == events.ARTIFACT:
            if version:
                await _upload_artifact(uploader, identity, files_dir.parent, line, version, stop)
            continue
        try:
            blob = (files_dir / path).read_bytes()
        except OSError as exc:  # deleted, unreadable (permissions)...: it must not hold up the run
            why = "was deleted before upload" if isinstance(exc, FileNotFoundError) else f"could not be read ({exc})"
            log.warning("runstream: %s %s; its metadata is sent without it", path, why)
            continue
        try:
            await upload(run_path, store_key, blob, sha256)
        except TransportError as exc:
            if not exc.rejected:
                raise
            reason = f"the upload of {path} was refused: {exc.reason}"
            raise TransportError(
                reason, status=exc.status, bad_lines={line: reason}, reason=reason, rejected=True
            ) from exc


async def _upload_artifact(
    uploader: HttpTransport,
    identity: RunIdentity,
    run_dir: Path,
    line: int,
    digest: str,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Upload what the server lacks of an artifact version from the run's staging folder (``artifacts.upload_artifact``,
    on a thread: it streams large files); a version that cannot be uploaded for good (a file over the server's
    max_blob_bytes, a server without artifacts, staged files gone) is refused as its event would be (``bad_lines``),
    and ``artifact.wait()`` in this process raises the reason."""
    from runstream.artifacts import (  # (artifacts imports the run)
        STAGING_DIR,
        ArtifactRefused,
        StagedFilesGone,
        note_refusal,
        upload_artifact,
    )

    staging = run_dir / STAGING_DIR
    try:
        await asyncio.to_thread(upload_artifact, uploader, identity.team, identity.project, staging, digest, stop)
    except (TransportError, StagedFilesGone, ArtifactRefused) as exc:
        if isinstance(exc, TransportError) and not exc.rejected:
            raise
        why = exc.reason if isinstance(exc, TransportError) else str(exc)
        note_refusal(digest, why)
        reason = f"the upload of artifact version {digest} was refused: {why}"
        status = exc.status if isinstance(exc, TransportError) else None
        raise TransportError(reason, status=status, bad_lines={line: reason}, reason=reason, rejected=True) from exc


@dataclass
class Delivery:
    """How far a ``deliver`` got: the records settled (delivered, or refused for good) and the refusals found."""

    settled: set[int] = field(default_factory=set)
    refused: list[tuple[int, TransportError]] = field(default_factory=list)

    def prefix(self) -> int:
        """How many records from the first on are settled: the cursor may move past them."""
        n = 0
        while n in self.settled:
            n += 1
        return n


async def deliver(
    attempt: Callable[[Records], Awaitable[None]], records: Records, progress: Delivery | None = None
) -> list[tuple[int, TransportError]]:
    """Send ``records`` through ``attempt``; the ones the server refuses for good are found and returned
    (index, why), everything else is delivered. Raises as ``attempt`` for any other failure; ``progress``
    then says what was settled and refused before it (records it already holds as settled are not sent).

    The server applies nothing of a refused batch, so a refused batch is narrowed down: all of it when its
    answer says every record is invalid, else to the lines it names (a 422 lists them), else by halves,
    until each refused part is one record. Earlier records go first, so the settled prefix grows.
    """
    progress = progress if progress is not None else Delivery()

    def refuse(index: int, exc: TransportError) -> None:
        progress.settled.add(index)
        progress.refused.append((index, exc))

    async def go(indices: list[int]) -> None:
        if not indices:
            return
        try:
            await attempt([records[i] for i in indices])
            progress.settled.update(indices)
            return
        except TransportError as exc:
            if not exc.rejected:
                raise
            if len(indices) == 1 or exc.all_invalid:
                for index in indices:
                    refuse(index, exc)
                return
            named = {indices[n - 1]: why for n, why in exc.bad_lines.items() if 1 <= n <= len(indices)}
            if named:
                for index, why in named.items():
                    refuse(index, _one_line(exc, why))
                await go([i for i in indices if i not in named])
                return
        half = len(indices) // 2
        await go(indices[:half])
        await go(indices[half:])

    await go([i for i in range(len(records)) if i not in progress.settled])
    return sorted(progress.refused, key=lambda r: r[0])


def _one_line(exc: TransportError, why: str) -> TransportError:
    """The refusal of one record that a batch's answer named."""
    reason = f"HTTP {exc.status}: {why}" if exc.status and why else exc.reason
    return TransportError(reason, status=exc.status, reason=reason, rejected=True)


class QuarantineUnwritable(OSError):
    """Records the server refused for good could not be set aside (a full disk): they stay in the spool."""


def _url_of(transport: Transport | None) -> str:
    """The server or brokers a transport sends to, as said to the user."""
    if isinstance(transport, KafkaTransport):
        return f"kafka://{transport.bootstrap}"
    return str(getattr(transport, "base", ""))


def media_event_data(stored: MediaFile, step: int, key: str) -> dict[str, Any]:
    """The ``file`` event of a logged media value."""
    data = file_event_data(stored.path, "media", stored.size, stored.sha256)
    data.update(step=step, media_type=stored.media_type, meta={**stored.meta, "key": key})
    return data


def file_event_data(path: str, kind: str, size: int, sha256: str) -> dict[str, Any]:
    """The ``file`` event of a blob in the run's files directory (``path`` is relative to it)."""
    return {"path": path, "kind": kind, "size": size, "sha256": sha256, "store_key": path}
