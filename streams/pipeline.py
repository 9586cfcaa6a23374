"""The in-process driver of the processing logic, without Kafka (embedded mode and tests).

It does what the Faust worker does with topics, with a loop: each batch goes
through ``Processor.process`` and ``commit``, and the events the batch produced
(state changes, rule alerts) are processed next, as if consumed back from their
topics. Being the only writer, it keeps the run states it stored in a dict. Alerts are handed
to ``on_alert`` (the notifier) as they are stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from clickhouse_connect.driver.client import Client

from runstream.events import ALERT, Event
from runstream.streams.processor import Output, Processor, RuleBook, RunKey, chunks

#: Rounds of feeding produced events back (state change -> rule alert -> stored) before stopping.
_MAX_ROUNDS = 4


class Pipeline:
    def __init__(self, client: Callable[[], Client], on_alert: Callable[[Event], None] | None = None,
                 rules_ttl_s: float = 1.0) -> None:
        self.processor = Processor(client, RuleBook(client, ttl_s=rules_ttl_s))
        self.states: dict[RunKey, dict[str, Any]] = {}
        self.on_alert = on_alert
        self._lock = threading.Lock()  # one batch at a time: states are folded in order

    def handle(self, batch: Sequence[Event]) -> list[Output]:
        """Process a batch and everything it produces; return each round's output."""
        outputs = []
        with self._lock:
            for chunk in chunks(batch):
                outputs += self._rounds(chunk)
        return outputs

    def _rounds(self, pending: list[Event]) -> list[Output]:
        outputs = []
        for _ in range(_MAX_ROUNDS):
            if not pending:
                break
            out = self.processor.process(pending, self.states)
            if self.on_alert:
                for event in pending:
                    if event.type == ALERT:
                        self.on_alert(event)
            self.processor.commit(out)
            self.states.update(out.states)
            outputs.append(out)
            pending = out.publish
        return outputs

    def sweep(self, timeout_s: float, now: float | None = None) -> list[Output]:
        """The periodic checks (crashed runs, stalls); what they find is processed at once."""
        found = self.processor.sweep(timeout_s, now)
        return self.handle(found) if found else []
