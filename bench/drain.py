"""What workers drain: a backlog already in Kafka, into a served ClickHouse, by 1 and then 2 workers.

    .venv/bin/python -m bench.drain [--points 20000000] [--runs 200] [--rows 2000] [--kafka HOST:PORT,...]

Producers and workers share this machine's cores, so a flat-out pipeline figure mixes them up.
Here the producers go first: ``--points`` metric points from ``--runs`` runs (10 metrics per
step, ``--rows`` steps per event, encoded by the SDK's own ``metric_batches``, as a training
script sends them) are written to the metrics topic before any worker starts. Then, on fresh
tables (a database of its own) and in a consumer group of its own, 1 worker (``runstream
worker``, the real Faust app, in its own process) drains the backlog; then 2 workers do it
again. Each phase times the drain from the first point stored to the last (startup and the
group's first rebalance are not the workers' throughput) and reads each worker's process CPU
time (all threads) over that window: CPU per point does not depend on how busy the machine is.

ClickHouse is ``infra/clickhouse_server.py`` (chdb serving ClickHouse's HTTP protocol in a
process of its own); its CPU per point is printed beside the workers'. The last line is JSON:
``drain_1w_points_per_s``, ``drain_2w_points_per_s``, ``worker_cpu_us_per_point``,
``worker_cpu_us_per_point_2w``, ``points``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from clickhouse_connect.driver.client import Client

REPO = Path(__file__).resolve().parents[1]
METRICS = 10
TEAM, PROJECT = "default", "drain"


async def fill(bootstrap: str, points: int, runs: int, rows: int) -> int:
    """Write ``points`` metric points (whole events) to the metrics topic; return how many were written."""
    from aiokafka import AIOKafkaProducer

    from runstream.events import METRICS as METRICS_TYPE
    from runstream.events import Event
    from runstream.sender import metric_batches

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_request_size=2 << 20, linger_ms=20
    )
    await producer.start()
    steps_per_run = points // (runs * METRICS)
    written = 0
    began = time.monotonic()
    try:
        for start in range(0, steps_per_run, rows):
            pending = []
            for r in range(runs):
                run_id = f"drain-{r:05d}"
                chunk = [
                    (
                        step,
                        1.75e9 + step * 0.01,
                        {f"m{k}": (step * 1e-4 + r) * (k + 1) + 0.123456789 for k in range(METRICS)},
                    )
                    for step in range(start, min(start + rows, steps_per_run))
                ]
                for payload, count in metric_batches(chunk):
                    event = Event(METRICS_TYPE, TEAM, PROJECT, run_id, 1 + start // rows, 1.75e9, payload)
                    pending.append(await producer.send("runstream.metrics", event.to_bytes(), key=event.key))
                    written += count
            await asyncio.gather(*pending)
            print(f"\r  {written:,} points in the backlog ({time.monotonic() - began:.0f} s)", end="", flush=True)
    finally:
        await producer.stop()
    print(flush=True)
    return written


def stored(client: Client) -> int:
    return int(client.command("SELECT count() FROM metric_points"))  # type: ignore[arg-type]  # a one-value command() returns that value


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        t = p.cpu_times()
        total += t.user + t.system
    return total


def drain(
    args: argparse.Namespace, bootstrap: str, server_dsn: str, workers: int, expected: int, server_pid: int
) -> dict[str, Any]:
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate

    database = f"drain_{workers}w_{os.getpid()}"
    dsn = f"{server_dsn.rsplit('/', 1)[0]}/{database}"
    client = connect(dsn)
    migrate(client)  # before the workers: they find the schema in place
    settle = time.monotonic() + 60
    while int(client.command("SELECT count() FROM system.merges")) and time.monotonic() < settle:  # type: ignore[arg-type]  # a one-value command() returns that value
        time.sleep(0.5)  # a quiet server to start from
    data_dir = tempfile.mkdtemp(prefix="runstream-bench-drain-")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RUNSTREAM_KAFKA": bootstrap,
        "RUNSTREAM_CLICKHOUSE_DSN": dsn,
        "RUNSTREAM_APP_ID": f"drain-{workers}w-{os.getpid()}",
        "RUNSTREAM_DATA_DIR": data_dir,
    }
    runstream = str(Path(sys.executable).with_name("runstream"))
    procs = [
        subprocess.Popen(
            [runstream, "worker", "--loglevel", "warn"],
            env={**env, "RUNSTREAM_DATA_DIR": f"{data_dir}/{i}"},
            stdout=subprocess.DEVNULL,
            stderr=open(f"{data_dir}/worker-{i}.log", "w"),  # noqa: SIM115 - the worker writes it until it ends
        )
        for i in range(workers)
    ]
    watched = [psutil.Process(p.pid) for p in procs]
    server = psutil.Process(server_pid)
    print(f"{workers} worker(s) started (logs in {data_dir})", flush=True)
    first_at = cpu0 = server0 = None
    count = base = 0
    deadline = time.monotonic() + args.timeout
    try:
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a worker exited with {[p.poll() for p in procs]}: see {data_dir}/worker-*.log")
            count = stored(client)
            if count and first_at is None:
                first_at, cpu0, server0, base = time.monotonic(), cpu_s(watched), cpu_s([server]), count
            print(f"\r  {count:,}/{expected:,} points stored", end="", flush=True)
        done_at, cpu1, server1 = time.monotonic(), cpu_s(watched), cpu_s([server])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(flush=True)
    assert first_at is not None and cpu0 is not None and server0 is not None, "no point was stored"
    # The next phase must not pay for this one's background merges: its tables go.
    client.command(f"DROP DATABASE {database} SYNC")
    window = done_at - first_at
    drained = count - base  # the points stored inside the window
    return {
        "points": count,
        "complete": count >= expected,
        "seconds": round(window, 2),
        "points_per_s": round(drained / window) if window > 0 else None,
        "worker_cpu_us_per_point": round((cpu1 - cpu0) / drained * 1e6, 3),
        "clickhouse_cpu_us_per_point": round((server1 - server0) / drained * 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=20_000_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=2000, help="steps per metrics event")
    parser.add_argument("--kafka", help="use these brokers instead of starting one")
    parser.add_argument("--workers", default="1,2", help="the phases: worker counts, in order")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest a phase may take")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from infra.clickhouse_server import ClickHouseServer
    from runstream.streams.topics import create_topics_sync

    broker = None
    bootstrap = args.kafka
    if not bootstrap:
        from infra.kafka_broker import KafkaBroker

        print("starting a Kafka broker ...", flush=True)
        broker = KafkaBroker(heap="2g")
        broker.start()
        bootstrap = broker.bootstrap
    server = ClickHouseServer(tempfile.mkdtemp(prefix="runstream-bench-drain-ch-")).start()
    try:
        create_topics_sync(bootstrap)
        print(f"filling the backlog: {args.points:,} points from {args.runs} runs ...", flush=True)
        expected = asyncio.run(fill(bootstrap, args.points, args.runs, args.rows))
        assert server._proc is not None
        phases = {
            int(n): drain(args, bootstrap, server.dsn, int(n), expected, server._proc.pid)
            for n in args.workers.split(",")
        }
    finally:
        server.stop()
        if broker is not None:
            broker.stop()
    print(
        f"\ndrain benchmark ({expected:,} points backlogged; {os.cpu_count()} cores shared by the broker, ClickHouse and the workers)"
    )
    for n, r in phases.items():
        print(
            f"  {n} worker(s): {r['points_per_s'] or 0:>12,} points/s in {r['seconds']} s; worker CPU "
            f"{r['worker_cpu_us_per_point']} µs/point, ClickHouse CPU {r['clickhouse_cpu_us_per_point']} µs/point"
            f"{'' if r['complete'] else '  (INCOMPLETE: timed out)'}"
        )
    one, two = phases.get(1, {}), phases.get(2, {})
    print(
        "  targets: >= 1,000,000 points/s by one worker; <= 1 µs worker CPU per point; 2 workers <= 1.1x the CPU per point"
    )
    print(
        json.dumps(
            {
                "drain_1w_points_per_s": one.get("points_per_s"),
                "drain_2w_points_per_s": two.get("points_per_s"),
                "worker_cpu_us_per_point": one.get("worker_cpu_us_per_point"),
                "worker_cpu_us_per_point_2w": two.get("worker_cpu_us_per_point"),
                "clickhouse_cpu_us_per_point": one.get("clickhouse_cpu_us_per_point"),
                "points": expected,
            }
        )
    )


if __name__ == "__main__":
    main()
