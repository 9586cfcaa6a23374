"""A Faust worker (the real app, in this process) consumes Kafka and writes into ClickHouse."""

import asyncio
import time

import orjson
from aiokafka import AIOKafkaProducer

from runstream import events
from runstream.settings import Settings
from runstream.storage.client import connect
from runstream.streams.app import create_app
from tests.helpers import dead_letters_with, metrics_event, unique

RUNS = 3
BATCHES = 20
STEPS_PER_BATCH = 50


async def _produce(bootstrap: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(events.TOPIC_METRICS.name, value, key=key)
    finally:
        await producer.stop()


async def _run(bootstrap: str, dsn: str, data_dir: str) -> None:
    project = unique("proj")
    app = create_app(Settings(kafka=bootstrap, clickhouse_dsn=dsn, data_dir=data_dir, app_id=unique("worker")))
    messages: list[tuple[bytes | None, bytes]] = []
    for run in range(RUNS):
        for seq in range(BATCHES):
            steps = range(seq * STEPS_PER_BATCH, (seq + 1) * STEPS_PER_BATCH)
            event = events.validate(metrics_event(seq=seq, run_id=f"r{run}", steps=steps, project=project))
            messages.append((event.key, event.to_bytes()))
    bad = [b'{"broken json ' + project.encode(), orjson.dumps(metrics_event(seq=-1, project=project))]
    messages[5:5] = [(None, raw) for raw in bad]  # malformed events among the good ones

    await app.start()
    try:
        await _produce(bootstrap, messages)
        client = connect(dsn)
        expected = RUNS * BATCHES * STEPS_PER_BATCH * 2  # two metrics per row
        deadline = time.monotonic() + 60
        count = 0
        while time.monotonic() < deadline:
            count = (
                client.command(  # type: ignore[assignment]  # a one-value command() returns that value
                    "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": project}
                )
                if "metric_points" in {r[0] for r in client.query("SHOW TABLES").result_rows}
                else 0
            )
            if count >= expected:
                break
            await asyncio.sleep(0.2)
        assert count == expected
        per_run = client.query(
            "SELECT run_id, uniqExact(step), max(step) FROM metric_points FINAL WHERE project = {p:String} "
            "GROUP BY run_id ORDER BY run_id",
            parameters={"p": project},
        ).result_rows
        last = BATCHES * STEPS_PER_BATCH
        assert per_run == [(f"r{i}", last, last - 1) for i in range(RUNS)]
    finally:
        await app.stop()

    dead = await dead_letters_with(bootstrap, project.encode(), want=2)
    assert sorted(m.value for m in dead) == sorted(bad)
    reasons = sorted(dict(m.headers)[events.DEAD_LETTER_REASON_HEADER].decode() for m in dead)
    assert reasons[0].startswith("not valid JSON") and "seq must be a non-negative integer" in reasons[1]


def test_faust_agent_writes_metric_batches_to_clickhouse(kafka_bootstrap, clickhouse_dsn, tmp_path):
    asyncio.run(_run(kafka_bootstrap, clickhouse_dsn, str(tmp_path)))
