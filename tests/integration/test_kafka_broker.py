"""The dev/test Kafka launcher: restart keeps data, and the broker never outlives its owner."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.kafka_broker import KafkaBroker

ROOT = Path(__file__).parents[2]


async def _produce(bootstrap: str, topic: str, value: bytes, create: bool) -> None:
    if create:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, topic: str, want: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < want and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                values += [m.value for m in messages]
    finally:
        await consumer.stop()
    return values


def test_stop_and_restart_on_the_same_data_keeps_messages(tmp_path):
    broker = KafkaBroker(tmp_path / "kafka")
    try:
        broker.start()
        asyncio.run(_produce(broker.bootstrap, "keep", b"before", create=True))
        broker.stop()
        broker.stop()  # idempotent
        broker.start()
        asyncio.run(_produce(broker.bootstrap, "keep", b"after", create=False))
        assert asyncio.run(_read_all(broker.bootstrap, "keep", 2)) == [b"before", b"after"]
    finally:
        broker.cleanup()


def _pids_of_broker(data_dir: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"kafka.logs.dir={data_dir}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_broker_dies_with_an_interrupted_owner(tmp_path):
    data_dir = tmp_path / "orphan"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from infra.kafka_broker import KafkaBroker
                KafkaBroker({str(data_dir)!r}).start()
                print("started", flush=True)
                time.sleep(600)
                """
            ),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert owner.stdout.readline().strip() == "started"
        assert _pids_of_broker(data_dir), "the broker should be running"
        owner.send_signal(signal.SIGKILL)  # no cleanup code runs in the owner
        owner.wait()
        deadline = time.monotonic() + 30
        while _pids_of_broker(data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _pids_of_broker(data_dir) == []
    finally:
        owner.kill()
        for pid in _pids_of_broker(data_dir):
            os.kill(pid, signal.SIGKILL)


def test_start_failure_shows_the_broker_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: the broker cannot bind it
        broker = KafkaBroker(tmp_path / "bad", port=taken.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="exited during start-up") as info:
                broker.start(timeout=60)
            assert "Address already in use" in str(info.value) or "BindException" in str(info.value)
        finally:
            broker.cleanup()
