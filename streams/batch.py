"""One batch through the processing logic, in the order that makes a crash harmless: what both drivers run.

The Faust worker (``streams/app.py``) and the embedded pipeline (``streams/pipeline.py``)
are adapters around ``BatchHandler``: they bring batches, a way to publish what a batch
produces and a way to attempt each step; the handler keeps the order:

    decode: bytes that are no valid event -> dead letters (the original bytes and why), acknowledged
    events of deleted or moved runs (tombstoned, ``storage.deletion``) -> dead letters, acknowledged
    for each chunk of the batch (``processor.chunks``):
        1. Processor.process: rows written, run states folded (not stored yet)
        2. publish: the state changes and rule alerts it produced, acknowledged
        3. Processor.commit: the run states stored (and kept in the driver's cache, if it has one)
    every UPPER_LEVELS_EVERY_S, if the driver asks for it: the upper bucket levels of its runs
    then the driver commits the batch's offsets (the Faust worker: when its loop body returns)

A crash anywhere before the offsets move on redelivers the batch, which the processor
makes harmless (``processor.py`` says how). Alerts (the SDK's and the rules') take their
own path: stored, then handed to the notifier and posted in the background, so a dead
webhook costs retries, not the stream. The sweep publishes the crashed runs and stalls it
finds like any produced event; the owners of those runs fold them.

The Faust worker attempts each step until it succeeds (a batch waits, it is never skipped)
and runs storage calls in threads, off its event loop; the embedded pipeline runs each
once, in its own thread, and a failure reaches the client that sent the batch.

An event that can never be stored must not hold its partition for good: a storage step that
fails with an error known to be the data's fault (``is_transient``: anything else, a connection,
a timeout, a full disk, an engine that is busy or down, is retried) splits the chunk in halves, each processed on its own, down to the
single events that fail; those go to the dead letters with the reason, and the rest is
stored. A transient error is retried (Faust) or reaches the client (embedded), as before:
nothing is dead-lettered because ClickHouse is down.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson
from clickhouse_connect.driver.exceptions import (
    DataError,
)

from runstream import events
from runstream.events import Event
from runstream.streams.notifier import Notifier, notify
from runstream.streams.processor import Output, Processor, RunKey, alert_id_of, chunks
from runstream.streams.runstate import RunState

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often a driver brings the upper bucket levels of its runs up to date (charts complete them from
#: level 1 meanwhile): once per batch, they would cost ClickHouse more than the points themselves.
UPPER_LEVELS_EVERY_S = 10.0

#: A message that is no valid event: its bytes, the topic it came from, and why.
Reject = tuple[bytes, str, str]
#: Publishes produced events; returns once they are durable (acknowledged by Kafka; in process, rule alerts
#: stored and state changes queued for the next round).
Publish = Callable[[list[Event]], Awaitable[None]]
#: Sends rejects to the dead letters; returns once they are acknowledged.
DeadLetter = Callable[[list[Reject]], Awaitable[None]]
#: Attempts one step (``what`` names it in logs): the Faust worker's retries until it succeeds.
Attempt = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]
#: Runs an alert's delivery in the background.
Spawn = Callable[[Coroutine[Any, Any, None]], None]


#: ClickHouse error codes that say "this data is wrong", not "try again later": a value the engine cannot
#: parse, convert or fit in its column, arrays of different sizes, a structure nested too deeply. Every
#: other code (a full disk, memory, timeouts, a replica or table not there) is retried: an error nobody
#: classified must cost a wait, never events.
DATA_ERROR_CODES = frozenset({6, 26, 27, 38, 41, 43, 53, 69, 70, 72, 117, 130, 131, 190, 306, 321, 467})
#: Exceptions our own encoding raises for a value it cannot take (``DataError``: clickhouse-connect's).
DATA_EXCEPTIONS = (DataError, RecursionError, ValueError, TypeError, OverflowError, KeyError, IndexError)
_CODE = re.compile(r"Code: (\d+)")


class Unstorable(Exception):
    """A storage step failed in a way retrying cannot fix: the data of some event in the chunk is at fault."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_transient(exc: BaseException) -> bool:
    """Whether a storage failure may pass by retrying (ClickHouse down, slow, busy or out of disk), rather
    than being caused by the events themselves (a value storage cannot take, a recursion or encoding error).
    Only what is known to be the data's fault is not transient."""
    code = getattr(exc, "code", None)
    if code is None and (found := _CODE.search(str(exc))):  # the embedded engine's errors carry it in the text
        code = int(found.group(1))
    if isinstance(code, int) and not isinstance(exc, DataError):
        return code not in DATA_ERROR_CODES
    return not isinstance(exc, DATA_EXCEPTIONS)


async def once(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Attempt a step once: a failure is the caller's."""
    return await call()


def decode_batch(raws: Sequence[tuple[bytes, str]]) -> tuple[list[Event], list[Reject]]:
    """Split (raw, topic) messages into valid events and rejects."""
    good, bad = [], []
    for raw, topic in raws:
        try:
            good.append(events.decode(raw))
        except events.InvalidEvent as exc:
            bad.append((raw or b"", topic, exc.reason))
        except Exception as exc:  # noqa: BLE001 - whatever the bytes do, they must not stop the worker
            bad.append((raw or b"", topic, f"undecodable: {type(exc).__name__}: {exc}"))
    return good, bad


class BatchHandler:
    """Runs batches through a ``Processor`` for one driver.

    ``publish``: where produced events go. ``attempt``: how each step is tried (``once``,
    or until it succeeds). ``in_thread``: storage calls go to a thread (a driver on an
    event loop that must keep running). ``cache``: run states kept between batches by a
    driver that is their only writer (read before ClickHouse, updated as states are
    stored). ``notifier`` and ``spawn``: where alerts are posted, and how in the
    background (without them alerts are only stored).
    """

    def __init__(
        self,
        processor: Processor,
        publish: Publish,
        *,
        attempt: Attempt = once,
        in_thread: bool = False,
        cache: dict[RunKey, RunState] | None = None,
        notifier: Notifier | None = None,
        spawn: Spawn | None = None,
        upper_levels_every_s: float | None = None,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self.processor = processor
        self.dead_letter = dead_letter
        self.publish = publish
        self.attempt = attempt
        self.in_thread = in_thread
        self.cache = cache
        self.notifier = notifier
        self.spawn = spawn
        self.upper_levels_every_s = upper_levels_every_s
        self._levels_behind: set[RunKey] = set()
        self._levels_refreshed_at = time.monotonic()

    async def _storage(self, what: str, call: Callable[..., T], *args: Any, judge: bool = False) -> T:
        """Attempt a blocking storage call (clickhouse-connect). ``judge``: a failure that is not transient
        is raised as ``Unstorable`` (which ``attempt`` does not retry) when there is a dead letter to send to."""
        run = (lambda: asyncio.to_thread(call, *args)) if self.in_thread else (lambda: _now(call, *args))
        if not (judge and self.dead_letter is not None):
            return await self.attempt(what, run)

        async def judged() -> T:
            try:
                return await run()
            except Exception as exc:
                if is_transient(exc):
                    raise
                raise Unstorable(f"{type(exc).__name__}: {str(exc)[:500]}") from exc

        return await self.attempt(what, judged)

    async def decode(self, raws: Sequence[tuple[bytes, str]], dead_letter: DeadLetter) -> list[Event]:
        """The valid events of (raw, topic) messages; the rest go to ``dead_letter`` first."""
        good, bad = decode_batch(raws)
        if bad:
            log.warning("%d dead letter(s), e.g. from %s: %s", len(bad), bad[0][1], bad[0][2])
            await self.attempt("sending dead letters", functools.partial(dead_letter, bad))
        return good

    async def process(self, batch: Sequence[Event]) -> list[Output]:
        """Process, publish, store, chunk by chunk; on return the driver may commit the batch's offsets."""
        outputs = []
        for chunk in chunks(await self._without_tombstoned(batch)):
            outputs += await self._chunk(chunk)
        await self.refresh_levels(due_only=True)
        return outputs

    async def _without_tombstoned(self, batch: Sequence[Event]) -> list[Event]:
        """The batch less the events of deleted or moved runs (``storage.deletion``), which go to the dead
        letters with the reason ("run acme/mnist/abc was deleted"): never stored, so a late resend from an
        SDK's spool or a replayed topic cannot bring a deleted run back."""
        if not batch:
            return []
        keys = {(e.team, e.project, e.run_id) for e in batch}
        buried = await self._storage("looking up deleted runs", self.processor.tombstoned, keys)
        if not buried:
            return list(batch)
        kept, rejects = [], []
        for event in batch:
            reason = buried.get((event.team, event.project, event.run_id))
            if reason is None:
                kept.append(event)
            else:
                why = f"run {event.team}/{event.project}/{event.run_id} was {reason}"
                rejects.append((_event_bytes(event), event.topic.name, why))
        log.warning("%d event(s) of deleted or moved runs dead-lettered, e.g. %s", len(rejects), rejects[0][2])
        if self.dead_letter is not None:
            await self.attempt("sending dead letters", functools.partial(self.dead_letter, rejects))
        if self.cache is not None:
            for key in buried:
                self.cache.pop(key, None)
        return kept

    async def _chunk(self, chunk: Sequence[Event]) -> list[Output]:
        """A chunk's steps; if they find it unstorable, each half on its own, down to the events at fault."""
        try:
            return [await self._steps(chunk)]
        except Unstorable as exc:
            if len(chunk) == 1:
                await self._unstorable(chunk[0], exc.reason)
                return []
            log.warning("a chunk of %d events cannot be stored (%s); splitting it to find why", len(chunk), exc)
            middle = len(chunk) // 2
            return await self._chunk(chunk[:middle]) + await self._chunk(chunk[middle:])

    async def _steps(self, chunk: Sequence[Event]) -> Output:
        defer = self.upper_levels_every_s is not None
        process = self.processor.process
        out = await self._storage("writing a batch to ClickHouse", process, chunk, self.cache, defer, judge=True)
        await self.attempt("publishing state changes and alerts", functools.partial(self.publish, out.publish))
        await self._storage("storing run states", self.processor.commit, out, judge=True)
        if self.cache is not None:
            self.cache.update(out.states)
        self._levels_behind |= out.pending_levels
        return out

    async def _unstorable(self, event: Event, reason: str) -> None:
        """An event that fails storage on its own, with an error retrying cannot fix: to the dead letters."""
        assert self.dead_letter is not None  # else nothing is judged unstorable
        log.error(
            "dead letter: %s/%s/%s seq %d cannot be stored: %s", *event.key.decode().split("/"), event.seq, reason
        )
        reject = (_event_bytes(event), event.topic.name, f"cannot be stored: {reason}")
        await self.attempt("sending dead letters", functools.partial(self.dead_letter, [reject]))

    async def refresh_levels(self, due_only: bool = False) -> None:
        """Refresh the upper bucket levels this driver left pending: after a batch, if its cadence says so
        (``due_only``, attempted as the batch's steps are); else once, for a timer (which must not hang).

        Between refreshes, readers complete them from level 1; a refresh that fails leaves them
        pending (a later one, or any driver's sweep, does them)."""
        if not self._levels_behind:
            return
        if due_only and time.monotonic() - self._levels_refreshed_at < (self.upper_levels_every_s or 0.0):
            return
        runs, self._levels_behind = self._levels_behind, set()
        self._levels_refreshed_at = time.monotonic()
        refresh = functools.partial(self.processor.refresh_upper_levels, runs)
        try:
            if due_only:
                await self._storage("refreshing upper bucket levels", refresh)
            else:
                await (asyncio.to_thread(refresh) if self.in_thread else _now(refresh))
        except Exception:
            self._levels_behind |= runs
            raise

    async def alerts(self, alerts: Sequence[Event]) -> None:
        """Store alert events, then hand each to the notifier (posted in the background)."""
        alerts = await self._without_tombstoned(alerts)
        if not alerts:
            return
        stored = await self._store_alerts(alerts)
        if self.notifier is None or self.spawn is None:
            return
        for event in stored:
            if self.notifier.webhooks or event.data.get("rule_id"):  # else there is nowhere to post it
                self.spawn(notify(self.notifier, self.processor.rules, event, alert_id_of(event)))

    async def _store_alerts(self, alerts: list[Event]) -> list[Event]:
        """The alerts stored; as with a chunk, an unstorable one is found by halves and dead-lettered."""
        try:
            await self._storage("storing alerts", self.processor.store_alerts, alerts, judge=True)
            return alerts
        except Unstorable as exc:
            if len(alerts) == 1:
                await self._unstorable(alerts[0], exc.reason)
                return []
            middle = len(alerts) // 2
            return await self._store_alerts(alerts[:middle]) + await self._store_alerts(alerts[middle:])

    async def sweep(self, timeout_s: float, now: float | None = None) -> list[Event]:
        """The periodic checks (``Processor.sweep``), tried once: what they find is published.
        A failure is the timer's to log; the next sweep looks again."""
        call = functools.partial(self.processor.sweep, timeout_s, now)
        found = await asyncio.to_thread(call) if self.in_thread else call()
        if found:
            await self.publish(found)
        return found


def _event_bytes(event: Event) -> bytes:
    """An event's bytes for its dead letter, even when orjson cannot encode it (nested past its limit)."""
    try:
        return event.to_bytes()
    except (TypeError, ValueError, RecursionError):
        try:
            return json.dumps(event.to_dict()).encode()
        except (TypeError, ValueError, RecursionError):
            return orjson.dumps({**event.to_dict(), "data": None})  # the envelope still says which event


async def _now(call: Callable[..., T], *args: Any) -> T:
    return call(*args)
