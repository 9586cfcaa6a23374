"""Throughput and freshness of the whole pipeline: SDK -> Kafka -> worker -> ClickHouse.

    .venv/bin/python -m bench.ingest [--runs 4] [--steps 100000] [--rate 0] [--kafka HOST:PORT]

Starts a real Kafka broker (or uses ``--kafka``), one worker (the real Faust app,
in this process, on the embedded ClickHouse engine) and ``--runs`` producer
processes, each a training loop that logs 10 metrics per step through the SDK
(``runstream.init(url="kafka://...")``) as fast as it can, or at ``--rate``
steps per second; one of the metrics is the wall time of the ``log()`` call.
Flat out, the producers offer more than the worker takes on this machine (they
share its cores), so the figures are throughput at saturation and freshness
behind a backlog; ``--rate`` measures freshness at a load the pipeline keeps up with.

While the producers run, it polls ClickHouse every 0.25 s for the points
stored and, per run, the newest logged wall time that is visible: freshness is
``now - newest visible log() time``. It prints:

- sustained points/s: points counted in ClickHouse / (last visible - first visible);
- freshness p50 and p99 over the samples taken while the producers were logging;
- the worker process's peak RSS (this process: worker, engine and poller);
- lost: points the SDK acknowledged that are not in ``metric_points``; duplicates: points
  folded twice into the run summaries (``metric_summaries.count`` above the logged count);
- alert latency: a threshold rule (``m5 > 5``, crossed once per run at step 50,000) fires;
  the latency is from the ``log()`` that crossed it to the alert being visible in ClickHouse.

The last line is JSON with ``points_per_s``, ``freshness_p50_s``, ``freshness_p99_s``,
``lost`` and ``duplicates``. Nothing is asserted; the target is printed beside the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = 10
PROJECT = "ingest"


def producer(bootstrap: str, run_id: str, steps: int, rate: float) -> None:
    """One training process: ``steps`` log() calls of 10 metrics (``rate`` per second, 0: flat out), then finish()."""
    import runstream

    settings = {
        "url": f"kafka://{bootstrap}",
        "system_metrics": False,
        "console": False,
        "git": False,
        "finish_timeout": 300.0,
    }
    run = runstream.init(
        project=PROJECT, id=run_id, name=run_id, dir=tempfile.mkdtemp(prefix="ingest-"), settings=settings
    )
    start = time.monotonic()
    for step in range(steps):
        if rate and step % 100 == 0 and (ahead := step / rate - (time.monotonic() - start)) > 0:
            time.sleep(ahead)
        x = step * 1e-4
        run.log(
            {
                "wall": time.time(),
                "loss": 1 / (1 + x),
                "acc": x / (1 + x),
                "lr": 1e-3,
                "grad": 0.5 + x % 1,
                "m5": x,
                "m6": -x,
                "m7": x * 2,
                "m8": x * 3,
                "m9": x * 4,
            }
        )
    result = run.finish()
    print(
        json.dumps(
            {
                "run_id": run_id,
                "acked_events": result["acked_events"],
                "unacked": result["unacked_events"],
                "points": result["points"],
            }
        ),
        flush=True,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def measure(args: argparse.Namespace, bootstrap: str) -> dict:
    from runstream.settings import Settings
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate
    from runstream.storage.rules import create_rule
    from runstream.streams.app import create_app

    data_dir = Path(tempfile.mkdtemp(prefix="runstream-bench-ingest-"))
    dsn = f"chdb://{data_dir / 'clickhouse'}?database=ingest"
    client = connect(dsn)
    migrate(client)
    app = create_app(
        Settings(kafka=bootstrap, clickhouse_dsn=dsn, data_dir=str(data_dir), app_id=f"ingest-{os.getpid()}"),
        storage=lambda: client,
    )
    create_rule(client, "default", PROJECT, "m5 high", "threshold", {"metric": "m5", "op": ">", "value": 5})
    await app.start()
    expected = args.runs * args.steps * METRICS
    print(
        f"worker started; {args.runs} producers x {args.steps:,} steps x {METRICS} metrics = {expected:,} points",
        flush=True,
    )
    run_ids = [f"ingest-{os.getpid()}-{i}" for i in range(args.runs)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    producers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.ingest",
                "--producer",
                run_id,
                "--kafka",
                bootstrap,
                "--steps",
                str(args.steps),
                "--rate",
                str(args.rate),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for run_id in run_ids
    ]
    freshness: list[float] = []
    first_seen = last_change = None
    count = 0

    alert_latency: dict[str, float] = {}

    def poll() -> tuple[int, list[float]]:
        stored = int(
            client.command("SELECT count() FROM metric_points WHERE project = {p:String}", parameters={"p": PROJECT})  # type: ignore[arg-type]  # a one-value command() returns that value
        )
        newest = client.query(
            "SELECT max(value) FROM metric_points WHERE project = {p:String} AND metric = 'wall' GROUP BY run_id",
            parameters={"p": PROJECT},
        ).result_rows
        alerts = client.query(
            "SELECT run_id, toUnixTimestamp64Milli(time) FROM alerts WHERE project = {p:String}",
            parameters={"p": PROJECT},
        ).result_rows
        for run_id, fired_ms in alerts:
            alert_latency.setdefault(run_id, time.time() - fired_ms / 1000)
        return stored, [row[0] for row in newest]

    started = time.monotonic()
    while True:
        stored, newest = await asyncio.to_thread(poll)
        now = time.monotonic()
        producing = any(p.poll() is None for p in producers)
        if stored and first_seen is None:
            first_seen = now
        if stored != count:
            count, last_change = stored, now
            print(f"\r  {count:,}/{expected:,} points stored", end="", flush=True)
        if producing and newest:
            wall = time.time()
            freshness += [wall - t for t in newest]
        alerts_due = args.runs if args.steps > 50_000 else 0
        if not producing and count >= expected and len(alert_latency) >= alerts_due:
            break
        if not producing and last_change and now - last_change > 20:
            break
        if now - started > args.timeout:
            print("\n  timed out waiting for the pipeline", flush=True)
            break
        await asyncio.sleep(0.25)
    print(flush=True)
    reports = [json.loads(p.stdout.read().strip().splitlines()[-1]) for p in producers if p.wait() == 0 and p.stdout]
    acked_points = sum(r["points"] for r in reports if r["unacked"] == 0)
    stored_points = int(
        client.command("SELECT count() FROM metric_points FINAL WHERE project = {p:String}", parameters={"p": PROJECT})  # type: ignore[arg-type]  # a one-value command() returns that value
    )
    folded = int(
        client.command(  # type: ignore[arg-type]  # a one-value command() returns that value
            "SELECT sum(count) FROM metric_summaries FINAL WHERE project = {p:String}", parameters={"p": PROJECT}
        )
        or 0
    )
    await app.stop()
    elapsed = (last_change - first_seen) if first_seen and last_change else float("nan")
    return {
        "points": stored_points,
        "points_per_s": round(count / elapsed) if elapsed and elapsed == elapsed else None,
        "freshness_p50_s": round(statistics.median(freshness), 3) if freshness else None,
        "freshness_p99_s": round(percentile(freshness, 0.99), 3) if freshness else None,
        "worker_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "lost": max(acked_points - stored_points, 0),
        "duplicates": max(folded - stored_points, 0),
        "producers_ok": len(reports) == args.runs and all(r["unacked"] == 0 for r in reports),
        "alerts": len(alert_latency),
        "alert_latency_max_s": round(max(alert_latency.values()), 3) if alert_latency else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="producer processes (one run each)")
    parser.add_argument("--steps", type=int, default=100_000, help="log() calls per run")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="log() calls per second per run (default 0: as fast as possible, the throughput figure); "
        "below saturation, freshness measures the pipeline rather than its backlog",
    )
    parser.add_argument("--kafka", help="use this broker instead of starting one")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--producer", metavar="RUN_ID", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.producer:
        producer(args.kafka, args.producer, args.steps, args.rate)
        return
    sys.path.insert(0, str(REPO))
    from runstream.streams.topics import create_topics_sync

    broker = None
    bootstrap = args.kafka
    if not bootstrap:
        from infra.kafka_broker import KafkaBroker

        print("starting a Kafka broker ...", flush=True)
        broker = KafkaBroker()
        broker.start()
        bootstrap = broker.bootstrap
    try:
        create_topics_sync(bootstrap)
        result = asyncio.run(measure(args, bootstrap))
    finally:
        if broker is not None:
            broker.stop()
    print(f"""
pipeline ingest benchmark (SDK -> Kafka -> 1 worker -> embedded ClickHouse, {os.cpu_count()} cores shared by all)
  sustained:          {result["points_per_s"] or 0:>12,} points/s   (target >= 1,000,000)
  freshness p50/p99:  {result["freshness_p50_s"]} s / {result["freshness_p99_s"]} s   (target p99 <= 2 s)
  worker peak RSS:    {result["worker_rss_mib"]} MiB
  lost / duplicates:  {result["lost"]} / {result["duplicates"]}   ({result["points"]:,} points stored; producers all acked: {result["producers_ok"]})
  rule alerts:        {result["alerts"]} of {args.runs if args.steps > 50_000 else 0} expected, slowest visible {result["alert_latency_max_s"]} s after its log()  (target <= 2 s)""")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
