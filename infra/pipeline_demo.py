"""The pipeline end to end on this machine: a sweep of simulated runs through
a real Kafka broker and a Faust worker into the embedded ClickHouse engine,
then a look at what landed.

    make demo      (or: python -m infra.pipeline_demo)

This is what runs end to end today. The embedded server (`runstream server`,
no Java needed) and the web UI replace it as the README's first command once
they exist; until then this needs Java 17 and Maven for the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import sys
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from infra.kafka_broker import KafkaBroker
from runstream import events
from runstream.settings import DEFAULT_DATA_DIR, Settings
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.app import create_app
from runstream.streams.topics import create_topics

SPARK = "▁▂▃▄▅▆▇█"


def simulate_run(rng: random.Random, lr: float, steps: int) -> tuple[list[float], list[float]]:
    """A plausible training curve: noisy exponential decay whose speed depends on the learning rate."""
    rate = 3 * lr / 0.01 if lr <= 0.03 else 0.5  # too large a learning rate learns slowly, then diverges
    loss, acc = [], []
    for s in range(steps):
        x = s / steps
        value = 2.3 * math.exp(-rate * x * 3) + 0.05 + rng.gauss(0, 0.02)
        if lr > 0.03 and x > 0.6:
            value *= 1 + (x - 0.6) * 8
        loss.append(max(value, 0.001))
        acc.append(min(1.0, max(0.0, 1 - value / 2.4 + rng.gauss(0, 0.01))))
    return loss, acc


def metric_events(team: str, project: str, run_id: str, loss: list[float], acc: list[float], batch: int = 100):
    start = time.time()
    for seq, first in enumerate(range(0, len(loss), batch)):
        steps = list(range(first, min(first + batch, len(loss))))
        yield events.validate(
            {
                "v": events.SCHEMA_VERSION,
                "type": events.METRICS,
                "team": team,
                "project": project,
                "run_id": run_id,
                "seq": seq,
                "ts": time.time(),
                "data": {
                    "step": steps,
                    "time": [start + s * 0.05 for s in steps],
                    "values": {"train/loss": [loss[s] for s in steps], "train/acc": [acc[s] for s in steps]},
                },
            }
        )


def sparkline(values: list[float], width: int = 32) -> str:
    if not values:
        return ""
    chunk = max(1, len(values) // width)
    points = [max(values[i : i + chunk]) for i in range(0, len(values), chunk)]
    lo, hi = min(points), max(points)
    return "".join(SPARK[int((v - lo) / (hi - lo + 1e-12) * (len(SPARK) - 1))] for v in points)


async def run_demo(broker: KafkaBroker, runs: int, steps: int, data_dir: Path, t0: float) -> None:
    await create_topics(broker.bootstrap)
    print(f"    Kafka {broker.version} ready at {broker.bootstrap} in {broker.startup_seconds:.1f} s", flush=True)

    dsn = f"chdb://{data_dir / 'clickhouse'}"
    client = connect(dsn)
    migrate(client)
    project = f"sweep-{uuid.uuid4().hex[:6]}"
    print(f"2/4 starting a Faust worker writing to the embedded ClickHouse engine ({dsn}) ...", flush=True)
    app = create_app(Settings(kafka=broker.bootstrap, clickhouse_dsn=dsn, data_dir=str(data_dir), app_id="runstream-demo"))
    await app.start()
    try:
        rng = random.Random(7)
        configs = [{"lr": rng.choice([0.001, 0.003, 0.01, 0.05]), "batch_size": rng.choice([32, 64, 128])} for _ in range(runs)]
        print(f"3/4 logging {runs} runs x {steps} steps x 2 metrics to Kafka (project {project}) ...", flush=True)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=10)
        await producer.start()
        try:
            for i, config in enumerate(configs):
                loss, acc = simulate_run(rng, config["lr"], steps)
                for event in metric_events("demo", project, f"run{i:02d}", loss, acc):
                    await producer.send(event.topic.name, event.to_bytes(), key=event.key)
                print(f"\r    sent run {i + 1}/{runs}", end="", flush=True)
            await producer.flush()
        finally:
            await producer.stop()
        print()

        expected = runs * steps * 2
        count = 0
        deadline = time.monotonic() + 120
        while count < expected and time.monotonic() < deadline:
            count = client.command(
                "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": project}
            )
            print(f"\r4/4 waiting for the worker: {count:,}/{expected:,} points in ClickHouse", end="", flush=True)
            await asyncio.sleep(0.3)
        print()
    finally:
        await app.stop()

    rows = client.query(
        """
        SELECT run_id, count(), argMax(value, step), min(value), groupArray(value)
        FROM (SELECT run_id, step, value FROM metric_points FINAL
              WHERE project = {p:String} AND metric = 'train/loss' ORDER BY run_id, step)
        GROUP BY run_id ORDER BY argMax(value, step)
        """,
        parameters={"p": project},
    ).result_rows
    print(f"\n{'run':6} {'lr':>6} {'batch':>5} {'steps':>6} {'last loss':>9} {'min loss':>9}  train/loss")
    for run_id, n, last, best, curve in rows:
        config = configs[int(run_id[3:])]
        print(f"{run_id:6} {config['lr']:6g} {config['batch_size']:5} {n:6} {last:9.4f} {best:9.4f}  {sparkline(curve)}")
    print(f"\n{count:,} points went SDK-shaped events -> Kafka -> Faust -> ClickHouse in {time.monotonic() - t0:.1f} s.")
    print(f"The data stays in {data_dir / 'clickhouse'} (table metric_points, project {project}).")
    print("Next: `make test` runs the test suite. The embedded server and web UI are not built yet.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.pipeline_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "pipeline-demo")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its start-up chatter (coordinator not ready yet) is noise here
    t0 = time.monotonic()
    print("1/4 starting a real Apache Kafka broker (KRaft, 127.0.0.1) ...", flush=True)
    broker = KafkaBroker(args.data_dir / "kafka")
    try:
        broker.start()  # from the main thread: the broker lives as long as this thread (PR_SET_PDEATHSIG)
        asyncio.run(run_demo(broker, args.runs, args.steps, args.data_dir, t0))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
