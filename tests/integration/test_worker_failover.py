"""Two worker processes share the partitions; one is SIGKILLed mid-stream and nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from runstream import events
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from tests.helpers import make_event, unique

RUNS = 24
BATCHES = 40
ROWS = 100
WORKER = Path(__file__).resolve().parents[1] / "scripts" / "worker.py"


def _run_events(project: str, run: int) -> list[events.Event]:
    run_id = f"r{run:02d}"
    now = time.time()
    out = [events.validate(make_event("run_start", {"name": run_id}, seq=1, run_id=run_id, project=project, ts=now))]
    for b in range(BATCHES):
        steps = list(range(b * ROWS, (b + 1) * ROWS))
        data = {
            "step": steps,
            "time": [now + s / 1000 for s in steps],
            "values": {"loss": [1.0 / (s + 1) for s in steps], "acc": [s / 10_000 for s in steps]},
        }
        out.append(events.validate(make_event("metrics", data, seq=2 + b, run_id=run_id, project=project, ts=now)))
    out.append(
        events.validate(
            make_event(
                "run_finish",
                {"state": "finished", "exit_code": 0},
                seq=2 + BATCHES,
                run_id=run_id,
                project=project,
                ts=now + 1,
            )
        )
    )
    return out


async def _produce(bootstrap: str, batches: list[list[events.Event]], pause: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for batch in batches:
            futures = [await producer.send(e.topic.name, e.to_bytes(), key=e.key) for e in batch]
            await asyncio.gather(*futures)
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_a_killed_worker_loses_nothing_and_duplicates_collapse(kafka_bootstrap, clickhouse_server, tmp_path):
    project = unique("failover")
    dsn = f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/{unique('db').replace('-', '_')}"
    client = connect(dsn)
    migrate(client)
    env = {
        **os.environ,
        "RUNSTREAM_KAFKA": kafka_bootstrap,
        "RUNSTREAM_CLICKHOUSE_DSN": dsn,
        "RUNSTREAM_APP_ID": unique("group"),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    workers = [
        _worker({**env, "RUNSTREAM_DATA_DIR": str(tmp_path / f"w{i}")}, tmp_path / f"w{i}.log") for i in range(2)
    ]
    try:
        per_run = [_run_events(project, r) for r in range(RUNS)]
        # Interleave the runs, a few batches at a time, so both workers are busy when one dies.
        slices = [[e for run in per_run for e in run[i : i + 4]] for i in range(0, BATCHES + 2, 4)]

        def points() -> int:
            return int(
                client.command(
                    "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": project}
                )
            )

        expected = RUNS * BATCHES * ROWS * 2
        asyncio.run(_produce(kafka_bootstrap, slices[: len(slices) // 2], pause=0.3))
        deadline = time.monotonic() + 90
        while points() < expected // 8 and time.monotonic() < deadline:
            assert all(w.poll() is None for w in workers), f"a worker exited: see the logs in {tmp_path}"
            time.sleep(0.2)
        assert points() > 0, "the workers did not start processing: see " + str(tmp_path)
        workers[0].send_signal(signal.SIGKILL)  # mid-stream, mid-batch
        workers[0].wait()
        asyncio.run(_produce(kafka_bootstrap, slices[len(slices) // 2 :], pause=0.1))

        def summarised() -> int:
            return int(
                client.command(
                    "SELECT sum(count) FROM metric_summaries FINAL WHERE project = {p:String}",
                    parameters={"p": project},
                )
                or 0
            )

        def done() -> bool:
            finished = client.command(
                "SELECT count() FROM runs FINAL WHERE project = {p:String} AND state = 'finished'",
                parameters={"p": project},
            )
            # The summaries are written after the points and the runs rows: wait for them too.
            return points() == expected and int(finished) == RUNS and summarised() >= expected

        deadline = time.monotonic() + 120
        while not done() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert points() == expected
        # Every point was folded into the summaries exactly once, across the kill and the takeover.
        counts = client.query(
            "SELECT metric, count(), min(count), max(count) FROM metric_summaries FINAL WHERE project = {p:String} GROUP BY metric",
            parameters={"p": project},
        ).result_rows
        assert sorted(counts) == [
            ("acc", RUNS, BATCHES * ROWS, BATCHES * ROWS),
            ("loss", RUNS, BATCHES * ROWS, BATCHES * ROWS),
        ]

        assert done()
        buckets = client.command(
            "SELECT sum(count) FROM metric_buckets FINAL WHERE project = {p:String} AND level = 1",
            parameters={"p": project},
        )
        assert int(buckets) == expected
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                try:
                    w.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    w.kill()
