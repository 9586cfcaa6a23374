"""The Faust application: agents that wire the event topics to the processing logic.

Agents stay thin: decoding and validation live in ``runstream.events``, writing
in ``runstream.storage``; an agent only moves batches between them, so the
embedded server can drive the same logic without Kafka.

Run a worker with ``runstream worker`` (or ``faust -A runstream.streams.app worker``);
workers started with the same ``RUNSTREAM_APP_ID`` share the partitions.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from collections.abc import Callable

import faust
from clickhouse_connect.driver.client import Client

from runstream import events
from runstream.settings import Settings
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.storage.writer import insert_metric_points

log = logging.getLogger(__name__)

#: Most messages one insert takes, and the longest a message waits for its batch.
SINK_BATCH = 2000
SINK_WITHIN_S = 0.5


def decode_batch(raws: list[bytes]) -> tuple[list[events.Event], list[tuple[bytes, str]]]:
    """Split raw messages into valid events and (raw, reason) rejects."""
    good, bad = [], []
    for raw in raws:
        try:
            good.append(events.decode(raw))
        except events.InvalidEvent as exc:
            bad.append((raw, exc.reason))
    return good, bad


def create_app(settings: Settings, storage: Callable[[], Client] | None = None) -> faust.App:
    """Build the worker app for these settings; ``storage`` opens the ClickHouse client (default: the DSN)."""
    faust_dir = Path(settings.data_dir) / "faust"
    faust_dir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka}",
        store="memory://",  # tables recover from their changelog topics on start
        datadir=str(faust_dir / "{conf.name}"),
        topic_partitions=events.RUN_PARTITIONS,
        producer_acks=-1,
        web_enabled=False,
    )

    def raw_topic(topic: events.Topic) -> faust.TopicT:
        return app.topic(topic.name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    metrics_topic = raw_topic(events.TOPIC_METRICS)
    dead_letters = raw_topic(events.TOPIC_DEAD_LETTERS)
    client: Client | None = None

    def clickhouse() -> Client:
        nonlocal client
        if client is None:
            client = storage() if storage else connect(settings.clickhouse_dsn)
            migrate(client)
        return client

    @app.agent(metrics_topic)
    async def metric_sink(stream: faust.StreamT) -> None:
        await asyncio.to_thread(clickhouse)  # connect and migrate when the worker starts, not at the first event
        async for raws in stream.take(SINK_BATCH, within=SINK_WITHIN_S):
            good, bad = decode_batch(raws)
            for raw, reason in bad:
                log.warning("dead letter from %s: %s", events.TOPIC_METRICS.name, reason)
                await dead_letters.send(value=raw, headers=events.dead_letter_headers(reason, events.TOPIC_METRICS.name))
            if good:
                # clickhouse-connect is blocking: keep the event loop (heartbeats, fetches) running meanwhile.
                await asyncio.to_thread(insert_metric_points, clickhouse(), good)

    return app


def _app_from_env() -> faust.App:
    return create_app(Settings.from_env())


#: For ``faust -A runstream.streams.app worker``; built on first access.
def __getattr__(name: str) -> faust.App:
    if name == "app":
        globals()["app"] = _app_from_env()
        return globals()["app"]
    raise AttributeError(name)
