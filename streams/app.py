"""The Faust application: topics, retries and timers around ``streams.batch.BatchHandler``.

    run topics (runs, metrics, system, console, files)
        -> process: BatchHandler.decode (bad bytes -> dead letters), then BatchHandler.process:
           rows -> ClickHouse, state changes -> runs, rule alerts -> alerts, run states -> ClickHouse
    every SWEEP_EVERY_S -> sweep: silent runs -> crashed (runs), stalls -> alerts; pending bucket levels
    every UPPER_LEVELS_EVERY_S (after a batch, or at the sweep) -> the upper bucket levels of its runs
    alerts (the SDK's and the rules') -> alerts: BatchHandler.alerts: ClickHouse, then webhooks

The logic lives in ``runstream.streams.processor`` (plain Python, also driven
in-process by the embedded server) and the order of a batch's steps in
``runstream.streams.batch``; here are only topics, batching, retries and the
timer. All of a run's events share one partition number in every topic (same
key, same partition count), so one worker at a time folds a run's state; the
state lives in ClickHouse (``run_states``), so after a rebalance the new owner
reads where the old one stopped. No state cache: after a rebalance another
worker may have advanced a run's state.

Offsets: a batch's offsets are acknowledged only after the agent's loop body
returns, which is after ClickHouse accepted its rows, the produced events were
acknowledged by the broker and the states were stored. A ClickHouse outage
blocks the batch (each step is retried with backoff) instead of skipping it; an
event that storage can never take (a non-transient failure, ``batch.is_transient``)
is found by splitting its batch and goes to the dead letters with the reason.

Run a worker with ``runstream worker``; workers with the same ``RUNSTREAM_APP_ID``
share the partitions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import faust
from clickhouse_connect.driver.client import Client

from runstream import events
from runstream.settings import Settings
from runstream.storage.client import connect
from runstream.storage.migrations import migrate_once
from runstream.streams.batch import UPPER_LEVELS_EVERY_S, BatchHandler, Reject, Unstorable
from runstream.streams.notifier import Notifier
from runstream.streams.processor import Processor, RuleBook

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most messages one batch takes, and the longest a message waits for its batch.
SINK_BATCH = 1000
SINK_WITHIN_S = 0.5
SWEEP_EVERY_S = 5.0
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 30.0

#: What the processing agent consumes; alerts have their own agent, so an alert never waits
#: behind a backlog of metrics.
RUN_TOPICS = (events.TOPIC_RUNS, events.TOPIC_METRICS, events.TOPIC_SYSTEM, events.TOPIC_CONSOLE, events.TOPIC_FILES)


async def retrying(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Await ``call()`` until it succeeds, backing off: the batch waits, it is never skipped.

    (Faust acknowledges a batch when its loop body ends, even by an exception; retrying
    here is what keeps a ClickHouse or Kafka outage from skipping messages.)
    """
    delay = RETRY_FIRST_S
    while True:
        try:
            return await call()
        except Unstorable:
            raise  # the events are at fault, not the service: the handler dead-letters them
        except Exception as exc:  # noqa: BLE001 - any storage or broker failure: keep the offsets, try again
            log.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


def create_app(
    settings: Settings,
    storage: Callable[[], Client] | None = None,
    sweep_every_s: float = SWEEP_EVERY_S,
    **faust_options: Any,
) -> faust.App:
    """Build the worker app for these settings.

    ``storage`` opens the ClickHouse client (default: the DSN); ``faust_options``
    override Faust settings (tests shorten ``broker_session_timeout``).
    """
    faust_dir = Path(settings.data_dir) / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka}",
        store="memory://",  # no tables: run states live in ClickHouse
        datadir=str(faust_dir / "{conf.name}"),
        topic_partitions=events.RUN_PARTITIONS,
        producer_acks=-1,
        web_enabled=False,
        # No leader election is used (every worker sweeps); without this Faust creates a leader topic
        # with one replica, which goes offline with its broker.
        topic_disable_leader=True,
        **faust_options,
    )

    def raw_topic(*names: str) -> faust.TopicT:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    run_topics = raw_topic(*(t.name for t in RUN_TOPICS))
    alerts_topic = raw_topic(events.TOPIC_ALERTS.name)
    dead_letters = raw_topic(events.TOPIC_DEAD_LETTERS.name)
    out_topics = {t.name: raw_topic(t.name) for t in (*RUN_TOPICS, events.TOPIC_ALERTS)}
    client: Client | None = None

    def clickhouse() -> Client:
        nonlocal client
        if client is None:
            opened = storage() if storage else connect(settings.clickhouse_dsn)
            migrate_once(opened)  # kept only once migrated: a failed migration is tried again
            client = opened
        return client

    async def publish(produced: list[events.Event]) -> None:
        """Send and wait for the broker's acknowledgements (before the states are stored)."""
        pending = [await out_topics[e.topic.name].send(key=e.key, value=e.to_bytes()) for e in produced]
        await asyncio.gather(*pending)

    async def dead_letter(bad: list[Reject]) -> None:
        """Send rejects to the dead-letter topic and wait for the broker (before the offsets move on)."""
        pending = [
            await dead_letters.send(value=raw, headers=events.dead_letter_headers(reason, topic))
            for raw, topic, reason in bad
        ]
        await asyncio.gather(*pending)

    deliveries: set[asyncio.Task] = set()

    def spawn(delivery: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(delivery)
        deliveries.add(task)
        task.add_done_callback(deliveries.discard)

    handler = BatchHandler(
        Processor(clickhouse, RuleBook(clickhouse)),
        publish,
        attempt=retrying,
        in_thread=True,
        notifier=Notifier.from_settings(settings),
        spawn=spawn,
        upper_levels_every_s=UPPER_LEVELS_EVERY_S,
        dead_letter=dead_letter,  # an event storage can never take, found by splitting its batch
    )

    def messages(batch: list[faust.EventT]) -> list[tuple[bytes, str]]:
        return [(e.value, e.message.topic) for e in batch]

    @app.agent(run_topics)
    async def process(stream: faust.StreamT) -> None:
        await retrying("connecting to ClickHouse", lambda: asyncio.to_thread(clickhouse))
        async for batch in stream.take_events(SINK_BATCH, within=SINK_WITHIN_S):  # type: ignore[attr-defined]  # faust's StreamT lacks take_events (its Stream has it)
            await handler.process(await handler.decode(messages(batch), dead_letter))

    @app.timer(interval=sweep_every_s)
    async def sweep() -> None:
        if client is None:
            return  # not connected yet
        try:
            await handler.refresh_levels()  # a quiet stream's last batches
        except Exception as exc:  # noqa: BLE001 - pending still: the next batch or sweep tries again
            log.warning("refreshing bucket levels failed (%s: %s)", type(exc).__name__, exc)
        try:
            await handler.sweep(float(settings.crash_timeout))
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("sweep failed (%s: %s)", type(exc).__name__, exc)

    @app.agent(alerts_topic)
    async def alerts(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(SINK_BATCH, within=0.05):  # type: ignore[attr-defined]  # faust's StreamT lacks take_events (its Stream has it)
            await handler.alerts(await handler.decode(messages(batch), dead_letter))

    return app


def _app_from_env() -> faust.App:
    return create_app(Settings.from_env())


#: For ``faust -A runstream.streams.app worker``; built on first access.
def __getattr__(name: str) -> faust.App:
    if name == "app":
        globals()["app"] = _app_from_env()
        return globals()["app"]
    raise AttributeError(name)
