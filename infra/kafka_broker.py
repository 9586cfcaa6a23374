"""A real Apache Kafka broker, or a cluster of them, for development and tests, without Docker.

Fetches the broker (``org.apache.kafka:kafka_2.13`` and its runtime
dependencies) from Maven Central with Maven into a cache outside the repository,
formats KRaft storage and runs combined broker+controller nodes bound to
127.0.0.1 on free ports: ``KafkaBroker`` is one, ``KafkaCluster(brokers=3)`` three
that share one controller quorum (each node votes), with Kafka's internal topics
replicated three times. ``start()`` returns once the brokers have accepted a
produce and answered a fetch; ``stop()`` shuts them down cleanly. Each broker
process is tied to its parent (PR_SET_PDEATHSIG), so an interrupted test run
does not leave it behind. That tie is to the *thread* that called ``start()``:
start it from the main thread or another that lives as long as the brokers.
``start()`` runs its own event loop, so call it outside async code.

By hand:  python -m infra.kafka_broker [--port 9092] [--brokers N] [--data-dir DIR]
(or ``make kafka``): starts the broker(s), creates the pipeline's topics, prints
the bootstrap addresses and runs until Ctrl-C.
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from infra.net import HOST, accepts_connections, free_port
from runstream.streams.topics import create_topics_sync, plan_replication

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


def _settings(node: KafkaNode, voters: str, brokers: int) -> dict[str, str]:
    """server.properties of one node of a cluster of ``brokers``."""
    internal = plan_replication(brokers)  # the replication runstream's own topics get, for Kafka's own
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.bootstrap}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir / "data"),
        "default.replication.factor": str(internal.factor),
        "min.insync.replicas": str(internal.min_insync),  # what the consumer offsets topic gets
        "offsets.topic.replication.factor": str(internal.factor),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(internal.factor),
        "transaction.state.log.min.isr": str(internal.min_insync),
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": str(internal.factor),
        "share.coordinator.state.topic.min.isr": str(internal.min_insync),
        # Consumer groups (tests, Faust workers) form at once instead of after 3 s.
        "group.initial.rebalance.delay.ms": "0",
        # Topics come from the contract (runstream.events.TOPICS); a typo must fail, not create a topic.
        "auto.create.topics.enable": "false",
    }
    if brokers > 1:
        # A killed broker is fenced, and its partitions get new leaders, after 4 s instead of 9 s
        # (tests wait for that; production keeps Kafka's default).
        settings |= {"broker.session.timeout.ms": "4000", "broker.heartbeat.interval.ms": "1000"}
    return settings


class KafkaNode:
    """One KRaft process on 127.0.0.1: a broker, and a controller that votes in the quorum."""

    def __init__(self, data_dir: Path, node_id: int, port: int | None, heap: str) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def voter(self) -> str:
        return f"{self.node_id}@{HOST}:{self.controller_port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def config(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def java(self, libs: Path, main: str, *args: str) -> list[str]:
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

    def configure(self, voters: str, brokers: int) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("".join(f"{k}={v}\n" for k, v in _settings(self, voters, brokers).items()))

    def format(self, libs: Path, cluster_id: str) -> subprocess.Popen[str] | None:
        """Start formatting the node's KRaft storage; None when it was formatted before (a restart keeps the data)."""
        if (self.data_dir / "data" / "meta.properties").exists():
            return None
        # "=" form: a random id may start with "-", which argparse would take for an option.
        cmd = self.java(
            libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "--config", str(self.config)
        )
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def launch(self, libs: Path) -> None:
        stdout = open(self.data_dir / "stdout.log", "ab")  # noqa: SIM115 - the broker process writes it until it stops
        self.proc = subprocess.Popen(
            self.java(libs, "kafka.Kafka", str(self.config)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        stdout.close()

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout: float) -> None:
        """Wait for the process to exit after ``terminate``, killing it when it takes longer than ``timeout``."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        for path in (self.data_dir / "stdout.log", self.log_file):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    return "\n".join(text)
        return "(no log)"


class KafkaCluster:
    """KRaft nodes on 127.0.0.1, each a broker and a controller voter; ``start``/``stop`` may be repeated on the data.

    Kafka's own topics (consumer offsets, transaction state) are replicated like runstream's
    (``streams.topics.plan_replication``: 3 copies, min ISR 2 from three brokers on). Nodes are
    numbered from 1; ``kill``, ``stop`` and ``restart`` take one node's id, ``leader`` tells
    which node leads a partition. Methods that talk to the brokers run their own event loop:
    call them outside async code.
    """

    def __init__(
        self,
        brokers: int = 3,
        data_dir: str | Path | None = None,
        ports: Sequence[int | None] | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
    ) -> None:
        if brokers < 1:
            raise ValueError(f"a Kafka cluster needs at least one broker, got {brokers}")
        ports = list(ports) if ports is not None else [None] * brokers
        if len(ports) != brokers:
            raise ValueError(f"{len(ports)} ports for {brokers} brokers")
        self._owns_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="runstream-kafka-"))
        self.version = version
        self.startup_seconds: float | None = None
        # One broker keeps its files right in data_dir (the layout from before clusters).
        self.nodes = {
            i: KafkaNode(self.data_dir if brokers == 1 else self.data_dir / f"node-{i}", i, port, heap)
            for i, port in enumerate(ports, start=1)
        }

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes.values())

    @property
    def live_bootstrap(self) -> str:
        """The running nodes' addresses: a client that starts with a stopped one first logs each refused connection."""
        return ",".join(node.bootstrap for node in self.nodes.values() if node.running) or self.bootstrap

    def node(self, node_id: int) -> KafkaNode:
        if node_id not in self.nodes:
            raise ValueError(f"no Kafka node {node_id}: the nodes are {sorted(self.nodes)}")
        return self.nodes[node_id]

    def _cluster_id(self) -> str:
        """The id every node is formatted with, kept so a node formatted later joins the same cluster."""
        path = self.data_dir / "cluster.id"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())
        return path.read_text().strip()

    def start(self, timeout: float = 120.0) -> Self:
        """Start every node that is not running, at once, and return when the cluster takes produce and fetch."""
        stopped = [node for node in self.nodes.values() if not node.running]
        if not stopped:
            return self
        began = time.monotonic()
        libs = fetch_kafka(self.version)
        fetched = time.monotonic()
        voters = ",".join(node.voter for node in self.nodes.values())
        for node in stopped:
            node.configure(voters, len(self.nodes))
        formats = [(node, node.format(libs, self._cluster_id())) for node in stopped]
        for node, formatting in formats:
            if formatting is not None and formatting.wait() != 0:
                assert formatting.stdout is not None  # PIPE
                raise RuntimeError(
                    f"formatting KRaft storage of node {node.node_id} failed:\n{formatting.stdout.read()}"
                )
        for node in stopped:
            node.launch(libs)
        try:
            asyncio.run(self._wait_ready(deadline=began + timeout))
        except BaseException:
            self._stop(stopped, timeout=30.0)
            raise
        self.startup_seconds = time.monotonic() - fetched
        return self

    async def _wait_ready(self, deadline: float) -> None:
        """Wait until every node is in the cluster and a record is produced (acks=all) to all of them and fetched."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from runstream.kafka import start_producer

        topic = "runstream.broker-ready"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if not node.running:
                    raise RuntimeError(
                        f"the Kafka broker {node.node_id} exited during start-up; see {node.log_file}:\n{node.log_tail()}"
                    )
            if not all(accepts_connections(node.port) for node in self.nodes.values()):
                await asyncio.sleep(0.1)  # keeps aiokafka from logging each refused connection
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            producer = None
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                brokers = {b["node_id"] for b in (await admin.describe_cluster())["brokers"]}
                if brokers != set(self.nodes):
                    raise RuntimeError(f"brokers {sorted(brokers)} of {sorted(self.nodes)} have joined")
                if topic not in await admin.list_topics():
                    await admin.create_topics([NewTopic(topic, 1, len(self.nodes))])
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
            f"the Kafka cluster did not accept produce and fetch in time ({last_error!r}); "
            f"see {', '.join(str(node.log_file) for node in self.nodes.values())}"
        )

    @staticmethod
    def _stop(nodes: Iterable[KafkaNode], timeout: float) -> None:
        nodes = list(nodes)
        for node in nodes:  # all at once: a node stopping alone waits for the others' quorum
            node.terminate()
        for node in nodes:
            node.wait(timeout)

    def stop(self, node_id: int | None = None, timeout: float = 30.0) -> None:
        """Shut one node (or all) down cleanly (SIGTERM), killing what does not exit in time."""
        self._stop([self.node(node_id)] if node_id is not None else self.nodes.values(), timeout)

    def kill(self, node_id: int | None = None) -> None:
        """Stop one node (or all) abruptly (SIGKILL), as a crash would."""
        for node in [self.node(node_id)] if node_id is not None else self.nodes.values():
            node.kill()

    def restart(self, node_id: int, timeout: float = 120.0) -> Self:
        """Stop one node cleanly if it runs, start it again on its data, and wait until the cluster is whole."""
        self.stop(node_id)
        return self.start(timeout)

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition -> the node that leads it (-1: none), as the cluster's metadata says now."""
        return asyncio.run(self._leaders(topic))

    def leader(self, topic: str, partition: int) -> int:
        leaders = self.leaders(topic)
        if partition not in leaders:
            raise ValueError(f"{topic} has no partition {partition} (it has {len(leaders)})")
        return leaders[partition]

    async def _leaders(self, topic: str) -> dict[int, int]:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.live_bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    (described,) = await admin.describe_topics([topic])
                    break
                except (NodeNotReadyError, KafkaConnectionError):
                    # The admin client asks a random broker of the metadata, and that lists a killed one
                    # until the controller fences it: ask again.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()
        if described["error_code"] != 0:
            raise ValueError(f"cannot describe topic {topic!r}: Kafka error {described['error_code']}")
        return {p["partition"]: p["leader"] for p in described["partitions"]}

    def cleanup(self) -> None:
        """Stop, and delete the data directory if this object created it (then there is nothing to stop cleanly for)."""
        if self._owns_dir:
            self.kill()
            shutil.rmtree(self.data_dir, ignore_errors=True)
        else:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class KafkaBroker(KafkaCluster):
    """One KRaft broker+controller on 127.0.0.1, its files in ``data_dir``: what the test suite and ``make kafka`` use."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "1g",
    ) -> None:
        super().__init__(1, data_dir, [port], version, heap)

    @property
    def port(self) -> int:
        return self.nodes[1].port

    @property
    def log_file(self) -> Path:
        return self.nodes[1].log_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kafka_broker", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, default=9092, help="client port on 127.0.0.1 (default 9092; broker N gets port+N-1)"
    )
    parser.add_argument("--brokers", type=int, default=1, help="brokers in the cluster (default 1)")
    parser.add_argument("--data-dir", help="keep the brokers' data here (default: a temporary directory)")
    parser.add_argument("--version", default=KAFKA_VERSION, help=f"Kafka version (default {KAFKA_VERSION})")
    args = parser.parse_args(argv)
    if args.brokers < 1:
        parser.error("--brokers must be at least 1")

    cluster = (
        KafkaBroker(args.data_dir, port=args.port, version=args.version)
        if args.brokers == 1
        else KafkaCluster(args.brokers, args.data_dir, range(args.port, args.port + args.brokers), args.version)
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.start()
        created = create_topics_sync(cluster.bootstrap)
        what = "Kafka" if args.brokers == 1 else f"a cluster of {args.brokers} Kafka brokers"
        print(f"{what} {cluster.version} is ready at {cluster.bootstrap} (started in {cluster.startup_seconds:.1f} s)")
        print(f"  topics created: {', '.join(created) or 'none (they existed)'}")
        print(f"  data: {cluster.data_dir}   logs: server.log in each broker's directory")
        print(f"  use it:  export RUNSTREAM_KAFKA={cluster.bootstrap}   — Ctrl-C stops it", flush=True)
        down: set[int] = set()
        # A cluster outlives a broker that dies (that is what it is for): say so, and go on while any runs.
        while not stop and any(node.running for node in cluster.nodes.values()):
            for node in cluster.nodes.values():
                if not node.running and node.node_id not in down:
                    down.add(node.node_id)
                    print(f"  broker {node.node_id} ({node.bootstrap}) exited; the others go on", flush=True)
            time.sleep(0.5)
    finally:
        print("stopping Kafka ...", file=sys.stderr)
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
