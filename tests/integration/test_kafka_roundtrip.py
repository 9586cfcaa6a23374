"""Events through the real broker with aiokafka: keyed by run, ordered per run across partitions."""

import asyncio
import collections

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from runstream import events
from tests.helpers import metrics_event, unique

RUNS = 24
EVENTS_PER_RUN = 200


async def _round_trip(bootstrap: str) -> None:
    topic = unique("roundtrip")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=events.RUN_PARTITIONS, replication_factor=1)])
    await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    sent = []
    try:
        # Interleave the runs' events, as many training processes logging at once would.
        for seq in range(EVENTS_PER_RUN):
            for run in range(RUNS):
                event = events.validate(metrics_event(seq=seq, run_id=f"run{run}", steps=range(seq * 3, seq * 3 + 3)))
                sent.append(await producer.send(topic, event.to_bytes(), key=event.key))
        metadata = await asyncio.gather(*sent)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=unique("g"))
    await consumer.start()
    received: dict[tuple, list[int]] = collections.defaultdict(list)
    partitions_of_run: dict[tuple, set[int]] = collections.defaultdict(set)
    try:
        total = 0
        while total < RUNS * EVENTS_PER_RUN:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), timeout=30)
            for tp, messages in batches.items():
                for message in messages:
                    event = events.decode(message.value)
                    assert message.key == event.key
                    run_key = (event.team, event.project, event.run_id)
                    received[run_key].append(event.seq)
                    partitions_of_run[run_key].add(tp.partition)
                    total += 1
    finally:
        await consumer.stop()

    assert len({m.partition for m in metadata}) > 1, "the runs should spread over several partitions"
    assert len(received) == RUNS
    for run_key, seqs in received.items():
        assert seqs == list(range(EVENTS_PER_RUN)), f"{run_key} arrived out of order or incomplete"
        assert len(partitions_of_run[run_key]) == 1, f"{run_key} was split over partitions"


def test_events_round_trip_in_order_per_run(kafka_bootstrap):
    asyncio.run(_round_trip(kafka_bootstrap))


def test_pipeline_topics_exist_with_contract_partitions(kafka_bootstrap):
    async def describe():
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            return await admin.describe_topics([t.name for t in events.TOPICS])
        finally:
            await admin.close()

    described = {d["topic"]: len(d["partitions"]) for d in asyncio.run(describe())}
    assert described == {t.name: t.partitions for t in events.TOPICS}


def test_create_topics_is_idempotent(kafka_bootstrap):
    from runstream.streams.topics import create_topics_sync

    assert create_topics_sync(kafka_bootstrap) == []
