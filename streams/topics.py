"""Create the pipeline's Kafka topics: the contract's partition counts, replicated so no acknowledged event is lost.

Replication defaults to what the cluster can hold: a factor of min(3, brokers), and
``min.insync.replicas`` (how many replicas must have a record before an ``acks=all``
producer, which every runstream producer is, gets its acknowledgement) of a majority
of the replicas from a factor of 3 on (3 -> 2, 5 -> 3), else 1. With factor 3 and
min ISR 2 an acknowledged record is on two brokers, and producing goes on while any
one broker is down. ``plan_replication`` refuses what cannot work or would lose
acknowledged records, and warns about what trades durability or availability away.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from runstream.events import RUN_PARTITIONS, TOPICS, Topic

#: The largest replication factor chosen by default (more copies cost disk and network, not safety that matters).
DEFAULT_MAX_REPLICATION = 3

#: Changes of members, API keys and project visibility, keyed by record, compacted: the latest
#: record of each stays, so an API replica that reads it from the beginning holds the current
#: state (``api/keyring.py``). One partition keeps every replica's view in one order.
TOPIC_ACCOUNTS = Topic("runstream.accounts", 1, "changes of members, API keys and project visibility (compacted)")
#: Topic configs beyond replication, by name.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {TOPIC_ACCOUNTS.name: {"cleanup.policy": "compact"}}
#: Every topic a cluster needs: the event contract's and the API's own.
ALL_TOPICS: tuple[Topic, ...] = (*TOPICS, TOPIC_ACCOUNTS)


@dataclasses.dataclass(frozen=True)
class Replication:
    """How every topic is replicated; ``warnings`` say what these settings give up."""

    factor: int
    min_insync: int
    warnings: tuple[str, ...] = ()


def default_min_insync(factor: int) -> int:
    """A majority of the replicas from 3 on; 1 below (a factor of 2 with 2 would stop producing when a broker is down)."""
    return factor // 2 + 1 if factor >= 3 else 1


def plan_replication(brokers: int, factor: int | None = None, min_insync: int | None = None) -> Replication:
    """The replication for a cluster of ``brokers``; ValueError for settings that cannot work.

    ``factor`` defaults to min(3, brokers) and ``min_insync`` to ``default_min_insync(factor)``.
    """
    if brokers < 1:
        raise ValueError("the Kafka cluster reports no brokers")
    factor = min(DEFAULT_MAX_REPLICATION, brokers) if factor is None else factor
    if factor < 1:
        raise ValueError(f"the replication factor must be at least 1, got {factor}")
    if factor > brokers:
        raise ValueError(
            f"replication factor {factor} needs {factor} brokers, and the cluster has {brokers}: "
            f"pass --replication-factor {brokers} or fewer, or add brokers (nothing was created)"
        )
    min_insync = default_min_insync(factor) if min_insync is None else min_insync
    if min_insync < 1:
        raise ValueError(f"min.insync.replicas must be at least 1, got {min_insync}")
    if min_insync > factor:
        raise ValueError(
            f"min.insync.replicas {min_insync} is more than the replication factor {factor}: "
            "no record could ever be acknowledged (nothing was created)"
        )
    warnings = []
    if factor >= 3 and min_insync == 1:
        warnings.append(
            f"replication factor {factor} with min.insync.replicas 1: while replicas lag, a record is acknowledged "
            f"with one copy only, and losing that broker loses it; --min-insync-replicas "
            f"{default_min_insync(factor)} keeps every acknowledged record on {default_min_insync(factor)} brokers"
        )
    if factor > 1 and min_insync == factor:
        warnings.append(
            f"min.insync.replicas {min_insync} equals the replication factor: while any one broker holding a "
            "partition is down, nothing can be produced to it (the SDK spools, the API refuses ingest)"
        )
    return Replication(factor, min_insync, tuple(warnings))


def with_partitions(topics: Iterable[Topic], partitions: int | None) -> list[Topic]:
    """``topics`` with the run-keyed ones (those of ``RUN_PARTITIONS``) at ``partitions`` instead.

    They all change together: a run's events share one partition number in every topic only
    while the topics have the same count.
    """
    if partitions is None:
        return list(topics)
    if partitions < 1:
        raise ValueError(f"a topic needs at least 1 partition, got {partitions}")
    return [dataclasses.replace(t, partitions=partitions) if t.partitions == RUN_PARTITIONS else t for t in topics]


async def count_brokers(bootstrap: str, timeout: float = 30.0) -> int:
    """How many brokers the cluster at ``bootstrap`` has up (fenced and stopped ones do not count)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def create_topics(
    bootstrap: str,
    topics: Iterable[Topic] = ALL_TOPICS,
    replication: Replication | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Create each topic that does not exist yet; return the names it created.

    ``replication``: default ``plan_replication`` for the brokers up now. Existing topics
    are left alone (their partition count is not changed: that would move runs between
    partitions and break per-run ordering).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    await admin.start()
    try:
        if replication is None:
            replication = plan_replication(len((await admin.describe_cluster())["brokers"]))
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t.name not in existing]
        if not wanted:
            return []
        configs = {"min.insync.replicas": str(replication.min_insync)}
        response = await admin.create_topics(
            [
                NewTopic(
                    t.name, t.partitions, replication.factor, topic_configs={**configs, **TOPIC_CONFIGS.get(t.name, {})}
                )
                for t in wanted
            ],
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


def create_topics_sync(
    bootstrap: str, topics: Iterable[Topic] = ALL_TOPICS, replication: Replication | None = None
) -> list[str]:
    return asyncio.run(create_topics(bootstrap, topics, replication))
