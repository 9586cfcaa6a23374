"""The embedded driver of the processing logic, without Kafka (the embedded server and tests).

An adapter around ``streams.batch.BatchHandler``, as the Faust worker is: the
state changes a batch publishes are queued here and handled as the next round, as
if consumed back from their topic. Alerts take the handler's alert path (stored,
then handed to the notifier): a rule's alert as it is published, so it is stored
before the run state that remembers it fired (a batch that fails after that and is
sent again cannot fire it a second time, so it must not be lost); the SDK's alerts
after the rest of their batch. An event storage can never take is dropped, logged and kept
in ``dead_letters`` (the batch's other events are stored). Being the only writer, it keeps the run states it
stored in a dict, and a lock keeps batches in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client

from runstream.events import ALERT, Event
from runstream.streams.batch import BatchHandler, Reject, Spawn
from runstream.streams.notifier import Notifier
from runstream.streams.processor import Output, Processor, RuleBook, RunKey
from runstream.streams.runstate import RunState

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Dead letters kept for a look (``Pipeline.dead_letters``): embedded mode has no dead-letter topic.
MAX_DEAD_LETTERS = 100

#: Rounds of feeding produced events back (state change -> rule alert -> stored) before stopping.
_MAX_ROUNDS = 4


class Pipeline:
    """``notifier`` and ``spawn``: where alerts are posted and how in the background (else they are only stored)."""

    def __init__(
        self,
        client: Callable[[], Client],
        notifier: Notifier | None = None,
        spawn: Spawn | None = None,
        rules_ttl_s: float = 1.0,
        upper_levels_every_s: float | None = None,
    ) -> None:
        self.processor = Processor(client, RuleBook(client, ttl_s=rules_ttl_s))
        self.states: dict[RunKey, RunState] = {}
        self.handler = BatchHandler(
            self.processor,
            self._publish,
            cache=self.states,
            notifier=notifier,
            spawn=spawn,
            upper_levels_every_s=upper_levels_every_s,
            dead_letter=self._dead_letter,
        )
        #: The latest events storage could never take (their bytes, topic and why), also logged.
        self.dead_letters: deque[Reject] = deque(maxlen=MAX_DEAD_LETTERS)
        self._published: list[Event] = []
        self._lock = threading.Lock()  # one batch at a time: states are folded in order

    def handle(self, batch: Sequence[Event]) -> list[Output]:
        """Process a batch and everything it produces; return each round's output (blocks: call it in a thread)."""
        with self._lock:
            self._published = []
            return _blocking(self._rounds(list(batch)))

    def sweep(self, timeout_s: float, now: float | None = None) -> list[Output]:
        """The periodic checks (crashed runs, stalls); what they find is processed at once (blocks, as handle)."""
        with self._lock:
            self._published = []
            return _blocking(self._sweep(timeout_s, now))

    async def _publish(self, produced: list[Event]) -> None:
        """Durable before the states are stored: rule alerts stored (and notified) now, state changes queued."""
        await self.handler.alerts([e for e in produced if e.type == ALERT])
        self._published += [e for e in produced if e.type != ALERT]

    async def _dead_letter(self, rejects: list[Reject]) -> None:
        """Embedded mode has no dead-letter topic: the handler logged them; the latest are kept here."""
        self.dead_letters.extend(rejects)

    async def _sweep(self, timeout_s: float, now: float | None) -> list[Output]:
        try:
            await self.handler.refresh_levels()  # a quiet server's last batches
        except Exception as exc:  # noqa: BLE001 - pending still: the next batch or sweep tries again
            log.warning("refreshing bucket levels failed (%s: %s)", type(exc).__name__, exc)
        await self.handler.sweep(timeout_s, now)
        found, self._published = self._published, []
        return await self._rounds(found)

    async def _rounds(self, pending: list[Event]) -> list[Output]:
        outputs = []
        for _ in range(_MAX_ROUNDS):
            if not pending:
                break
            outputs += await self.handler.process([e for e in pending if e.type != ALERT])
            await self.handler.alerts([e for e in pending if e.type == ALERT])  # the SDK's, after their batch
            pending, self._published = self._published, []
        return outputs


def _blocking(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end on a loop of its own: the embedded server calls the pipeline from a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    work.close()
    raise RuntimeError("Pipeline.handle and sweep block: call them in a thread, not on a running event loop")
