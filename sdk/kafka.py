"""The one Kafka producer runstream makes: the SDK's transport, the API's sink and the test broker's probe use it.

Every record is acknowledged by all in-sync replicas (``acks=all``) and written once
even when the client retries it (idempotence); batches are lz4-compressed when the codec
is installed (it comes with ``aiokafka[lz4]``). Faust's workers produce through Faust's
own producer, configured by Faust.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

#: The largest batch and request a producer sends: an event is at most 1 MB (``events.MAX_EVENT_BYTES``).
MAX_BATCH_BYTES = 1 << 20
MAX_REQUEST_BYTES = 4 << 20


def compression() -> str | None:
    from aiokafka.codec import has_lz4

    return "lz4" if has_lz4() else None


async def start_producer(bootstrap: str, *, linger_ms: int = 5, request_timeout_ms: int = 10_000) -> AIOKafkaProducer:
    """A started producer for the brokers in ``bootstrap`` (``host:port[,host:port]``).

    ``linger_ms``: how long a record waits for others to share its batch. A producer
    that fails to start is stopped again, so it leaves no connection behind.
    """
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=compression(),
        linger_ms=linger_ms,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=MAX_REQUEST_BYTES,
        request_timeout_ms=request_timeout_ms,
    )
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer
