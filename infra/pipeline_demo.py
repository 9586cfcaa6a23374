"""The pipeline end to end on this machine: a sweep of simulated runs logged
through the runstream SDK into a real Kafka broker, a Faust worker writing them
into the embedded ClickHouse engine, then a look at what landed.

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
from typing import cast

from infra.kafka_broker import KafkaBroker
from runstream.settings import DEFAULT_DATA_DIR, Settings
from runstream.storage.client import connect
from runstream.storage.migrations import migrate_once
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


def log_runs(url: str, project: str, configs: list[dict], steps: int, rng: random.Random, runs_dir: Path) -> None:
    """Each simulated run through the real SDK, as a training script would log it."""
    import runstream

    for i, config in enumerate(configs):
        loss, acc = simulate_run(rng, config["lr"], steps)
        run = runstream.init(
            project=project, entity="demo", id=f"run{i:02d}", config=config, dir=runs_dir,
            settings={"url": url, "console": False, "git": False, "system_interval": 1.0},
        )  # fmt: skip
        for step in range(steps):
            run.log({"train/loss": loss[step], "train/acc": acc[step]})
        result = run.finish()
        print(f"\r    run {i + 1}/{len(configs)}: {result.acked_events} events acknowledged", end="", flush=True)


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
    migrate_once(client)
    project = f"sweep-{uuid.uuid4().hex[:6]}"
    print(f"2/4 starting a Faust worker writing to the embedded ClickHouse engine ({dsn}) ...", flush=True)
    app = create_app(
        Settings(kafka=broker.bootstrap, clickhouse_dsn=dsn, data_dir=str(data_dir), app_id="runstream-demo")
    )
    await app.start()
    try:
        rng = random.Random(7)
        configs = [
            {"lr": rng.choice([0.001, 0.003, 0.01, 0.05]), "batch_size": rng.choice([32, 64, 128])} for _ in range(runs)
        ]
        print(
            f"3/4 logging {runs} runs x {steps} steps x 2 metrics through the SDK into Kafka (project {project}) ...",
            flush=True,
        )
        # The SDK blocks in finish(): off the event loop, so the worker keeps consuming meanwhile.
        await asyncio.to_thread(
            log_runs, f"kafka://{broker.bootstrap}", project, configs, steps, rng, data_dir / "runs"
        )
        print()

        expected = runs * steps * 2
        count = 0
        deadline = time.monotonic() + 120
        while count < expected and time.monotonic() < deadline:
            # command() is typed for every kind of answer; a SELECT of one count answers an int.
            count = cast(
                int,
                client.command(
                    "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": project}
                ),
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
        print(
            f"{run_id:6} {config['lr']:6g} {config['batch_size']:5} {n:6} {last:9.4f} {best:9.4f}  {sparkline(curve)}"
        )
    print(f"\n{count:,} points went SDK -> Kafka -> Faust -> ClickHouse in {time.monotonic() - t0:.1f} s.")
    print(f"The data stays in {data_dir / 'clickhouse'} (table metric_points, project {project}).")
    print("Next: `make test` runs the test suite. The embedded server and web UI are not built yet.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.pipeline_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "pipeline-demo")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(
        logging.CRITICAL
    )  # its start-up chatter (coordinator not ready yet) is noise here
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
