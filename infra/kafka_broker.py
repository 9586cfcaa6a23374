"""A real Apache Kafka broker for development and tests, without Docker.

Fetches the broker (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies) from Maven Central with Maven into a cache outside the repository,
formats KRaft storage and runs one combined broker+controller bound to
127.0.0.1 on free ports. ``start()`` returns once the broker has accepted a
produce and answered a fetch; ``stop()`` shuts it down cleanly. The broker
process is tied to its parent (PR_SET_PDEATHSIG), so an interrupted test run
does not leave it behind. That tie is to the *thread* that called ``start()``:
start it from the main thread or another that lives as long as the broker.
``start()`` runs its own event loop, so call it outside async code.

By hand:  python -m infra.kafka_broker [--port 9092] [--data-dir DIR]
(or ``make kafka``): starts the broker, creates the pipeline's topics, prints
the bootstrap address and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from infra.net import accepts_connections, free_port

KAFKA_VERSION = "4.4.0"
HERE = Path(__file__).resolve().parent / "kafka-broker"
CACHE_DIR = Path(os.environ.get("RUNSTREAM_CACHE_DIR", Path.home() / ".cache" / "runstream"))


def fetch_kafka(version: str = KAFKA_VERSION, cache_dir: Path = CACHE_DIR) -> Path:
    """Return the directory of the broker's jars, resolving them with Maven on first use."""
    target = cache_dir / f"kafka-{version}"
    libs = target / "libs"
    done = target / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("Maven (mvn) is needed to fetch the Kafka broker: install it, e.g. `apt-get install maven`")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "pom.xml", target / "pom.xml")
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=target))
    print(f"Fetching Apache Kafka {version} from Maven Central into {target} ...", file=sys.stderr, flush=True)
    cmd = [
        "mvn", "-q", "-B", "-f", str(target / "pom.xml"),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"Maven could not fetch Kafka {version}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    # Publish atomically so a concurrent or interrupted fetch never leaves half a classpath.
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.touch()
    return libs


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setpgrp()  # own process group: Ctrl-C in the terminal reaches the parent, which stops us cleanly


class KafkaBroker:
    """One KRaft broker+controller on 127.0.0.1; ``start``/``stop`` may be repeated on the same data."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "1g",
    ) -> None:
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="runstream-kafka-"))
        self.port = port or free_port()
        self.controller_port = free_port()
        self.version = version
        self.heap = heap
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _write_config(self) -> Path:
        config = self.data_dir / "server.properties"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            # A single node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Consumer groups (tests, Faust workers) form at once instead of after 3 s.
            "group.initial.rebalance.delay.ms": "0",
            # Topics come from the contract (runstream.events.TOPICS); a typo must fail, not create a topic.
            "auto.create.topics.enable": "false",
        }
        config.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return config

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.data_dir}",
            f"-Dlog4j2.configurationFile={HERE / 'log4j2.xml'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format(self, libs: Path, config: Path) -> None:
        if (self.data_dir / "data" / "meta.properties").exists():
            return  # formatted before: a restart keeps the data
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        # "=" form: a random id may start with "-", which argparse would take for an option.
        cmd = self._java(
            libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(config)
        )
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"formatting KRaft storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 120.0) -> KafkaBroker:
        if self._proc is not None and self._proc.poll() is None:
            return self
        began = time.monotonic()
        libs = fetch_kafka(self.version)
        fetched = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(libs, config)
        stdout = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 - the broker process writes it until stop()
        self._proc = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        stdout.close()
        try:
            asyncio.run(self._wait_ready(deadline=began + timeout))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - fetched
        return self

    async def _wait_ready(self, deadline: float) -> None:
        """Wait until a message can be produced (acks=all) and fetched back."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from runstream.kafka import start_producer

        topic = "runstream.broker-ready"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited during start-up; see {self.log_file}:\n{self._log_tail()}")
            if not accepts_connections(self.port):  # keeps aiokafka from logging each refused connection
                await asyncio.sleep(0.1)
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            producer = None
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                if topic not in await admin.list_topics():
                    await admin.create_topics([NewTopic(topic, 1, 1)])
                # The producer runstream's clients use (idempotent): ready means ready for them.
                producer = await start_producer(self.bootstrap, request_timeout_ms=5000)
                sent = await producer.send_and_wait(topic, b"ready")
                await consumer.start()
                tp = TopicPartition(topic, sent.partition)
                consumer.assign([tp])
                consumer.seek(tp, sent.offset)
                batch = await consumer.getmany(tp, timeout_ms=5000)
                if any(m.value == b"ready" for m in batch.get(tp, [])):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet: connection refused, no leader yet, ...
                last_error = exc
            finally:
                for close in (consumer.stop, *([producer.stop] if producer else []), admin.close):
                    try:
                        await close()
                    except Exception:  # noqa: BLE001 - a client of a broker that is not up may fail to close
                        pass
            await asyncio.sleep(0.25)
        raise TimeoutError(
            f"the Kafka broker did not accept produce and fetch in time ({last_error!r}); see {self.log_file}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        for path in (self.data_dir / "stdout.log", self.log_file):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    return "\n".join(text)
        return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the broker down cleanly (SIGTERM), killing it if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop the broker abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def cleanup(self) -> None:
        """Stop, and delete the data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kafka_broker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9092, help="client port on 127.0.0.1 (default 9092)")
    parser.add_argument("--data-dir", help="keep the broker's data here (default: a temporary directory)")
    parser.add_argument("--version", default=KAFKA_VERSION, help=f"Kafka version (default {KAFKA_VERSION})")
    args = parser.parse_args(argv)

    from runstream.streams.topics import create_topics_sync

    broker = KafkaBroker(args.data_dir, port=args.port, version=args.version)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        broker.start()
        created = create_topics_sync(broker.bootstrap)
        print(f"Kafka {broker.version} is ready at {broker.bootstrap} (started in {broker.startup_seconds:.1f} s)")
        print(f"  topics created: {', '.join(created) or 'none (they existed)'}")
        print(f"  data: {broker.data_dir}   log: {broker.log_file}")
        print(f"  use it:  export RUNSTREAM_KAFKA={broker.bootstrap}   — Ctrl-C stops it", flush=True)
        while not stop and broker._proc is not None and broker._proc.poll() is None:
            time.sleep(0.5)
    finally:
        print("stopping Kafka ...", file=sys.stderr)
        broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
