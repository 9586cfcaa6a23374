"""Create the pipeline's Kafka topics with the partition counts the contract names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from runstream.events import TOPICS, Topic


async def create_topics(
    bootstrap: str,
    topics: Iterable[Topic] = TOPICS,
    replication_factor: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create each topic that does not exist yet; return the names it created.

    Existing topics are left alone (their partition count is not changed: that
    would move runs between partitions and break per-run ordering).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.name not in existing]
        if not wanted:
            return []
        response = await admin.create_topics(
            [NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor) for t in wanted],
            timeout_ms=int(timeout * 1000),
        )
        created = []
        for name, code, *message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif for_code(code) is not TopicAlreadyExistsError:  # a concurrent caller made it: fine
                raise for_code(code)(f"creating topic {name!r}: {message[-1] if message else ''}")
        return created
    finally:
        await admin.close()


def create_topics_sync(bootstrap: str, topics: Iterable[Topic] = TOPICS, replication_factor: int = 1) -> list[str]:
    return asyncio.run(create_topics(bootstrap, topics, replication_factor))
