"""A fleet of concurrent runs against the cluster (3 brokers, 2 workers) and then the embedded server.

    .venv/bin/python -m bench.fleet [--runs 1000] [--processes 5] [--duration 60] [--embedded-runs 200]

Small version while developing: ``--runs 100 --duration 20 --embedded-runs 20``.

**Cluster phase.** A 3-broker KRaft cluster (``infra.kafka_broker.KafkaCluster``), topics with
replication factor 3 and min ISR 2, a served ClickHouse (``infra.clickhouse_server``), two
``runstream worker`` processes (one consumer group) and the alerts consumer of
``examples/alerts_consumer.py`` (its own process group and consumer group). ``--runs`` runs
are spread over ``--processes`` producer processes (``init(reinit="create_new")``: one
sender thread and one Kafka producer per process), each run logging 10 metrics at
``--rate`` steps/s for ``--duration`` s through ``kafka://`` (all three brokers), with its
heartbeats, system samples every ``--system-interval`` s and a console line every
``--console-every`` s. One metric, ``wall``, is the time of the ``log()`` call; another,
``fire``, is 1.0 for one step every ``--fire-every`` steps (after ``--warmup`` s) in runs
whose index is a multiple of 10, and a threshold rule ``fire > 0.5`` (no cooldown) turns
each such step into an alert.

Console lines: ``print()`` capture is per process, not per run (each run's capture tees
``sys.stdout`` on top of the previous run's, so every run of the process records every line:
200 runs in a process would store each line 200 times). A fleet of one-run processes is
simulated instead by handing each run its own lines the way its capture would
(``run._sender.put_console``: the capture's own hand-off, a private call).

While the runs log, this process measures:

- freshness: every ``--poll`` s, ``runstream.storage.series.series()`` (the chart query of
  the API's series endpoint) of ``wall`` for ``--sample`` runs; freshness is now - the
  newest ``wall`` the chart shows, per run with data, over the polls made while every
  producer was still logging;
- alert latency: the consumer's receive time (its JSON lines, read as they come) - the
  alert's ``time`` (the time of the metric row that crossed, i.e. its ``log()``); and the
  same to the alert being in the ``alerts`` table (what the API's alerts endpoint reads),
  polled every ``--poll`` s (so up to that much is the poll's resolution);
- dashboards: a reader process issues the workspace's queries back to back: the runs table
  (``storage.runs.search_runs``, the runs endpoint's query, 50 rows by ``-summary.acc``)
  and a compare chart of every run (``series()`` of ``loss``, points=500). After the fleet,
  the brokers and workers stop, the big tables get ``OPTIMIZE TABLE ... FINAL``, and the
  same queries run again on a quiet pipeline (``--quiet-repeats`` times) for their p50.
  Both are the storage calls without the HTTP layer (JSON rendering excluded);
- points stored per second while the runs log (``metric_points``, polled), and how fast and
  how long the backlog left when they stop takes to drain;
- lost and duplicates: the points each run's ``finish()`` reports acknowledged (runs with
  nothing unacknowledged) against ``metric_points FINAL``; duplicates are points folded
  twice into ``metric_summaries`` (its count above the stored points);
- CPU over the logging window, per component (psutil), and the machine's total, so what
  other programs on the machine took shows; the workers' committed lag on the metrics
  topic every 5 s (Faust commits every few seconds, so it overstates the lag by that much).

**Embedded phase.** ``--embedded-runs`` runs the same way against ``runstream server`` over
HTTP (``url=http://127.0.0.1:PORT``; loopback needs no key). Freshness is polled through the
server's own ``POST /api/v1/projects/default/PROJECT/series``; points stored are the sum of
the chart's per-bucket ``count`` of ``loss`` over every run (times 10 metrics, as every row
logs all 10), polled every 2 s.

Logs (workers, producers, the server, the alerts consumer, the reader) stay in the temporary
directory printed first; the data (ClickHouse, spools) is removed unless ``--keep``.

Everything shares this machine's cores (brokers, ClickHouse, workers, producers, the
readers, and whatever else runs there); nothing is asserted: targets are printed beside the
figures. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from bench.drain import cpu_s
from bench.ingest import percentile

REPO = Path(__file__).resolve().parents[1]
TEAM = "default"
PROJECT = "fleet"
EMBEDDED_PROJECT = "fleet-embedded"
METRICS = 10  # per log() row: wall, fire and 8 others
#: The tables the dashboards read, compacted before the quiet measurements.
BIG_TABLES = ("metric_points", "metric_steps", "metric_buckets", "metric_summaries", "runs", "run_summaries")
RUNSTREAM = str(Path(sys.executable).with_name("runstream"))


# -- the producer process: many runs, one sender thread ---------------------------------------------


def run_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


def fires(index: int, step: int, warmup_steps: int, every: int) -> bool:
    """One run in ten fires once every ``every`` steps after the warm-up, the runs' pulses spread apart."""
    return index % 10 == 0 and step >= warmup_steps and (step + index) % every == 0


def row(index: int, step: int, fire: bool) -> dict[str, float]:
    x = step * 1e-3 + index * 1e-4
    return {
        "wall": time.time(),
        "fire": 1.0 if fire else 0.0,
        "loss": 1 / (1 + x),
        "acc": x / (1 + x),
        "lr": 1e-3,
        "grad": 0.5 + x % 1,
        "m6": -x,
        "m7": x * 2,
        "m8": x * 3,
        "m9": index + x,
    }


def producer(args: argparse.Namespace) -> None:
    """Start ``--count`` runs, say READY, wait for a line on stdin, log for ``--duration`` s, finish them all."""
    import runstream

    settings = {
        "url": args.url,
        "system_metrics": args.system_interval > 0,
        "system_interval": args.system_interval or 10.0,
        "console": False,  # per process, not per run: see the module docstring
        "git": False,
        "finish_timeout": 180.0,
        "flush_interval": args.flush_interval,
    }
    began = time.monotonic()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    runs = [
        (
            i,
            runstream.init(
                project=args.project,
                id=run_id(args.prefix, i),
                name=run_id(args.prefix, i),
                config={"index": i, "lr": 1e-3 * (1 + i % 7), "batch": 32 << (i % 4)},
                dir=args.dir,
                reinit="create_new",
                settings=settings,
            ),
        )
        for i in range(args.first, args.first + args.count)
    ]
    print(f"READY {time.monotonic() - began:.2f}", flush=True)
    sys.stdin.readline()

    steps = round(args.duration * args.rate)
    warmup_steps = round(args.warmup * args.rate)
    console_steps = max(1, round(args.console_every * args.rate))
    behind = 0.0
    pulses = lines = 0
    start = time.monotonic()
    for step in range(steps):
        late = time.monotonic() - (start + step / args.rate)
        if late < 0:
            time.sleep(-late)
        behind = max(behind, late)
        for index, run in runs:
            fire = fires(index, step, warmup_steps, args.fire_every)
            pulses += fire
            run.log(row(index, step, fire))
            if (step + index) % console_steps == 0:
                run._sender.put_console([(time.time(), "stdout", f"step {step}: loss {1 / (1 + step * 1e-3):.5f}")])
                lines += 1
    logged = time.monotonic() - start
    print(f"LOGGED {logged:.2f}", flush=True)
    for _, run in runs:
        result = run.finish(quiet=True)
        report = {"run_id": run.id, "acked": result.acked_events, "unacked": result.unacked_events}
        print("RUN " + json.dumps(report | {"points": result.points}), flush=True)
    summary = {"steps": steps, "pulses": pulses, "console_lines": lines, "behind_max_s": round(behind, 3)}
    summary |= {"logged_s": round(logged, 2), "finish_s": round(time.monotonic() - start - logged, 2)}
    print("SUMMARY " + json.dumps(summary), flush=True)


# -- the dashboards ------------------------------------------------------------------------------------


def dashboard_queries(client: Any, project: str, run_ids: Sequence[str]) -> tuple[float, float]:
    """The runs table (50 rows by a summary metric) and the compare chart of every run: milliseconds each."""
    from runstream.storage.runs import search_runs
    from runstream.storage.series import series

    began = time.perf_counter()
    search_runs(client, TEAM, project, None, "-summary.acc", 50)
    table = time.perf_counter()
    series(client, TEAM, project, run_ids, ["loss"], points=500)
    done = time.perf_counter()
    return (table - began) * 1000, (done - table) * 1000


def reader(args: argparse.Namespace) -> None:
    """A dashboard user who never stops refreshing, for ``--seconds``; prints one JSON line of latencies."""
    from runstream.storage.client import connect

    client = connect(args.dsn)
    ids = [run_id(args.prefix, i) for i in range(args.count)]
    out: dict[str, list[float]] = {"runs_ms": [], "chart_ms": []}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        table, chart = dashboard_queries(client, args.project, ids)
        out["runs_ms"].append(round(table, 2))
        out["chart_ms"].append(round(chart, 2))
    print(json.dumps(out), flush=True)


# -- child processes -----------------------------------------------------------------------------------


def _own_group() -> None:
    """In a child before exec: its own process group, and SIGTERM when this process dies."""
    from infra.kafka_broker import _die_with_parent

    _die_with_parent()


def spawn(cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None, **kw: Any) -> subprocess.Popen:
    err = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child writes it until it ends
    try:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stderr=err, preexec_fn=_own_group, **kw)
    finally:
        if log:
            err.close()  # type: ignore[union-attr]  # a file when log is given


def stop(procs: Sequence[subprocess.Popen], timeout: float = 20.0) -> None:
    """SIGTERM each child's group, then SIGKILL what is left after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


class Lines:
    """A child's stdout read on a thread, each line with the time it arrived."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def first(self, tag: str) -> tuple[float, str] | None:
        return next(((t, line[len(tag) + 1 :]) for t, line in self.lines if line.startswith(tag + " ")), None)

    def tagged(self, tag: str) -> list[str]:
        return [line[len(tag) + 1 :] for _, line in self.lines if line.startswith(tag + " ")]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def start_producers(
    args: argparse.Namespace, url: str, project: str, prefix: str, runs: int, processes: int, logs: Path
) -> list[Lines]:
    share = -(-runs // processes)
    producers = []
    for k, first in enumerate(range(0, runs, share)):
        cmd = [sys.executable, "-m", "bench.fleet", "--producer", "--url", url, "--project", project]
        cmd += ["--prefix", prefix, "--first", str(first), "--count", str(min(share, runs - first))]
        cmd += ["--duration", str(args.duration), "--rate", str(args.rate), "--warmup", str(args.warmup)]
        cmd += ["--fire-every", str(args.fire_every), "--system-interval", str(args.system_interval)]
        cmd += ["--console-every", str(args.console_every), "--flush-interval", str(args.flush_interval)]
        cmd += ["--dir", str(logs / "runs" / f"{prefix}-{k}")]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = spawn(cmd, env, logs / f"producer-{k}.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        producers.append(Lines(proc))
    return producers


def wait_ready(producers: list[Lines], timeout: float) -> float:
    """Wait until every producer has started its runs; the slowest one's seconds."""
    deadline = time.monotonic() + timeout
    while not all(p.first("READY") for p in producers):
        if any(p.proc.poll() is not None for p in producers):
            raise SystemExit("a producer exited while starting its runs: see its log")
        if time.monotonic() > deadline:
            raise SystemExit("the producers did not start their runs in time")
        time.sleep(0.2)
    return max(float(p.first("READY")[1]) for p in producers)  # type: ignore[index]  # all READY above


def go(producers: list[Lines]) -> float:
    now = time.time()
    for p in producers:
        assert p.proc.stdin is not None
        p.proc.stdin.write("go\n")
        p.proc.stdin.flush()
    return now


def reports(producers: list[Lines]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per run: acked events, unacked, points; per producer: its SUMMARY."""
    runs = [json.loads(line) for p in producers for line in p.tagged("RUN")]
    summaries = [json.loads(line) for p in producers for line in p.tagged("SUMMARY")]
    return runs, summaries


# -- measuring -----------------------------------------------------------------------------------------


class Cpu:
    """CPU seconds of named groups of processes, and of the whole machine, between two marks."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self._marks: list[tuple[float, dict[str, float], float]] = []

    def _busy(self) -> float:
        t = psutil.cpu_times()
        return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def mark(self) -> None:
        used = {}
        for name, procs in self.groups.items():
            try:
                used[name] = cpu_s(procs)
            except psutil.Error:  # a process that ended: this group cannot be measured over the window
                used[name] = float("nan")
        self._marks.append((time.monotonic(), used, self._busy()))

    def cores(self) -> dict[str, float]:
        """Cores used by each group between the first and the last mark; ``other`` is the rest of the machine."""
        (t0, a, busy0), (t1, b, busy1) = self._marks[0], self._marks[-1]
        window = t1 - t0
        cores = {name: round((b[name] - a[name]) / window, 2) for name in self.groups}
        cores["machine"] = round((busy1 - busy0) / window, 2)
        ours = sum(cores[name] for name in self.groups if cores[name] == cores[name])  # NaN: not measured
        cores["other"] = round(cores["machine"] - ours, 2)
        return cores


async def _committed_lag(bootstrap: str, group: str) -> int:
    """Metrics events in the topic beyond the workers' committed offsets."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from runstream.events import RUN_PARTITIONS

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        parts = [TopicPartition("runstream.metrics", p) for p in range(RUN_PARTITIONS)]
        ends = await consumer.end_offsets(parts)
        return sum(end - max(0, committed[tp].offset if tp in committed else 0) for tp, end in ends.items())
    finally:
        await consumer.stop()
        await admin.close()


def watch_lag(bootstrap: str, group: str, stop_at: threading.Event, out: list[tuple[float, int]]) -> None:
    while not stop_at.wait(5.0):
        try:
            out.append((time.time(), asyncio.run(_committed_lag(bootstrap, group))))
        except Exception:  # noqa: BLE001 - a sample missed while the group rebalances
            continue


def newest_walls(chart: Any) -> list[float]:
    """Per run in the chart: the newest ``wall`` value it shows (its last point's last value)."""
    return [float(s["y"][-1]) for s in chart["series"] if len(s["y"])]


def summarize(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    return {
        "p50": round(statistics.median(values) * scale, digits),
        "p99": round(percentile(values, 0.99) * scale, digits),
        "max": round(max(values) * scale, digits),
        "n": len(values),
    }


class Stored:
    """Points stored over time: the rate between two changes, and how often new points appear."""

    def __init__(self) -> None:
        self.count = 0
        self.changes: list[tuple[float, int]] = []  # (when a poll found more, how many)

    def see(self, count: int, now: float) -> None:
        if count != self.count:
            self.count = count
            self.changes.append((now, count))

    def per_s(self, until: float = float("inf")) -> int | None:
        """Points per second from the first change to the last one before ``until`` (the first one's
        points came before it, so they do not count)."""
        seen = [c for c in self.changes if c[0] <= until]
        if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
            return None
        return round((seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0]))

    def after(self, start: float) -> Stored:
        """The changes from ``start`` on (the drain after the runs stopped logging)."""
        later = Stored()
        later.changes = [c for c in self.changes if c[0] >= start]
        later.count = later.changes[-1][1] if later.changes else self.count
        return later

    def cadence_s(self, until: float) -> float | None:
        """The median time between two polls that found new points, before ``until``."""
        gaps = [b - a for (a, _), (b, _) in pairwise(c for c in self.changes if c[0] <= until)]
        return round(statistics.median(gaps), 2) if gaps else None


class Progress:
    """A line every ``every`` s, so a log of the run stays readable."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._next = 0.0

    def show(self, line: str) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.every
            print("  " + line, flush=True)


def insert_rule(client: Any) -> None:
    """``fire > 0.5`` on the fleet's project, without cooldown: each pulse of ``fire`` is an alert."""
    from runstream.storage.rules import create_rule

    create_rule(client, TEAM, PROJECT, "fire", "threshold", {"metric": "fire", "op": ">", "value": 0.5}, cooldown_s=0)


def start_workers(bootstrap: str, dsn: str, app_id: str, work: Path, count: int) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RUNSTREAM_KAFKA": bootstrap, "RUNSTREAM_CLICKHOUSE_DSN": dsn}
    env["RUNSTREAM_APP_ID"] = app_id
    return [
        spawn(
            [RUNSTREAM, "worker", "--loglevel", "warn"],
            {**env, "RUNSTREAM_DATA_DIR": str(work / f"worker-{i}")},
            work / f"worker-{i}.log",
            stdout=subprocess.DEVNULL,
        )
        for i in range(count)
    ]


def count_points(client: Any, final: bool = False) -> int:
    sql = f"SELECT count() FROM metric_points {'FINAL' if final else ''} WHERE project = {{p:String}}"
    return int(client.command(sql, parameters={"p": PROJECT}))


def wait_drained(
    stored: Callable[[], int], seen: Stored, expected: int, also: Callable[[], None], quiet_for: float = 30.0
) -> int:
    """Poll ``stored()`` (into ``seen``) until it reaches ``expected`` or stops changing for ``quiet_for`` s;
    ``also`` runs at each poll (the alerts keep being watched meanwhile)."""
    seen.see(stored(), time.time())
    changed, progress = time.monotonic(), Progress()
    while seen.count < expected and time.monotonic() - changed < quiet_for:
        time.sleep(1.0)
        before = seen.count
        seen.see(stored(), time.time())
        also()
        if seen.count != before:
            changed = time.monotonic()
        progress.show(f"draining: {seen.count:,}/{expected:,} points stored")
    print(f"  drained: {seen.count:,}/{expected:,} points stored", flush=True)
    return seen.count


# -- the cluster phase ---------------------------------------------------------------------------------


def cluster_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from infra.clickhouse_server import ClickHouseServer
    from infra.kafka_broker import KafkaCluster
    from runstream.storage.client import connect
    from runstream.storage.migrations import migrate
    from runstream.storage.series import series
    from runstream.streams.topics import create_topics_sync, plan_replication

    cluster = KafkaCluster(brokers=3, heap=args.broker_heap)
    server = ClickHouseServer(work / "clickhouse")
    children: list[subprocess.Popen] = []
    stop_lag = threading.Event()
    try:
        print("starting 3 Kafka brokers and ClickHouse ...", flush=True)
        cluster.start()
        bootstrap = cluster.bootstrap
        create_topics_sync(bootstrap, replication=plan_replication(3, 3, 2))
        server.start()
        dsn = f"{server.dsn.rsplit('/', 1)[0]}/fleet"
        client = connect(dsn)
        migrate(client)
        insert_rule(client)
        app_id = f"fleet-{os.getpid()}"
        workers = start_workers(bootstrap, dsn, app_id, work, 2)
        children += workers
        consumer_cmd = [sys.executable, str(REPO / "examples" / "alerts_consumer.py"), "--bootstrap", bootstrap]
        consumer_cmd += ["--group", f"fleet-alerts-{os.getpid()}", "--project", PROJECT, "--from-beginning"]
        consumer = Lines(spawn(consumer_cmd, None, work / "alerts-consumer.log", stdout=subprocess.PIPE, text=True))
        children.append(consumer.proc)
        print(
            f"cluster up ({bootstrap}); 2 workers; starting {args.runs} runs in {args.processes} processes ...",
            flush=True,
        )
        producers = start_producers(args, f"kafka://{bootstrap}", PROJECT, "fleet", args.runs, args.processes, work)
        children += [p.proc for p in producers]
        init_s = wait_ready(producers, args.timeout)
        ids = [run_id("fleet", i) for i in range(args.runs)]
        sample = ids[:: max(1, args.runs // args.sample)][: args.sample]
        reader_cmd = [sys.executable, "-m", "bench.fleet", "--reader", "--dsn", dsn, "--project", PROJECT]
        reader_cmd += ["--prefix", "fleet", "--count", str(args.runs), "--seconds", str(args.duration)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        cpu = Cpu(
            {
                "brokers": [n.proc.pid for n in cluster.nodes.values() if n.proc],
                "clickhouse": [server._proc.pid] if server._proc else [],
                "workers": [w.pid for w in workers],
                "producers": [p.proc.pid for p in producers],
            }
        )
        cpu.mark()
        t_go = go(producers)
        reader_proc = Lines(spawn(reader_cmd, env, work / "reader.log", stdout=subprocess.PIPE, text=True))
        children.append(reader_proc.proc)
        lags: list[tuple[float, int]] = []
        threading.Thread(target=watch_lag, args=(bootstrap, app_id, stop_lag, lags), daemon=True).start()
        print(f"all runs started in {init_s:.1f} s; logging for {args.duration:.0f} s ...", flush=True)

        freshness: list[float] = []
        table_seen: dict[str, tuple[float, float]] = {}  # alert_id -> (first seen, alert time)
        stored_at, progress = Stored(), Progress()
        logged_at = None
        while any(p.proc.poll() is None for p in producers):
            if time.time() > t_go + args.timeout:
                raise SystemExit("the producers did not finish in time")
            if any(w.poll() is not None for w in workers):
                print(f"  a worker exited ({[w.poll() for w in workers]}): see {work}/worker-*.log", flush=True)
            chart = series(client, TEAM, PROJECT, sample, ["wall"], points=500)
            now = time.time()
            if logged_at is None and any(p.first("LOGGED") for p in producers):
                logged_at = now
                cpu.mark()  # the end of the logging window, before producers finish and exit
            if logged_at is None:
                freshness += [now - wall for wall in newest_walls(chart)]
            poll_alerts(client, table_seen)
            stored_at.see(count_points(client), time.time())
            fresh = f"{now - max(newest_walls(chart)):.2f} s" if chart["series"] else "-"
            progress.show(
                f"{now - t_go:5.0f} s: {stored_at.count:,} points stored, freshness {fresh}, alerts "
                f"{len(consumer.lines)} (consumer) / {len(table_seen)} (table)"
            )
            time.sleep(args.poll)
        if logged_at is None:
            logged_at = time.time()
            cpu.mark()
        runs, summaries = reports(producers)
        acked_points = sum(r["points"] for r in runs if r["unacked"] == 0)
        pulses = sum(s["pulses"] for s in summaries)
        stored = wait_drained(
            lambda: count_points(client), stored_at, acked_points, lambda: poll_alerts(client, table_seen)
        )
        drained_at = stored_at.changes[-1][0] if stored_at.changes else logged_at
        deadline = time.monotonic() + 30
        while (len(consumer.lines) < pulses or len(table_seen) < pulses) and time.monotonic() < deadline:
            poll_alerts(client, table_seen)
            time.sleep(args.poll)
        stop_lag.set()
        reader_proc.proc.wait(timeout=args.duration + 120)
        reader_proc.join(10)
        during = json.loads(reader_proc.lines[-1][1]) if reader_proc.lines else {"runs_ms": [], "chart_ms": []}

        stored_final = count_points(client, final=True)
        folded = int(
            client.command(  # type: ignore[arg-type]  # a one-value command() returns that value
                "SELECT sum(count) FROM metric_summaries FINAL WHERE project = {p:String}", parameters={"p": PROJECT}
            )
            or 0
        )
        consumer_latency = [t - json.loads(line)["time"] for t, line in consumer.lines if line.startswith("{")]
        table_latency = [seen - at for seen, at in table_seen.values()]

        print("stopping the producers' brokers and workers; OPTIMIZE ... FINAL; quiet dashboards ...", flush=True)
        stop(children)
        children.clear()
        cluster.stop()
        for table in BIG_TABLES:
            client.command(f"OPTIMIZE TABLE {table} FINAL")
        quiet: dict[str, list[float]] = {"runs_ms": [], "chart_ms": []}
        for _ in range(args.quiet_repeats):
            table_ms, chart_ms = dashboard_queries(client, PROJECT, ids)
            quiet["runs_ms"].append(table_ms)
            quiet["chart_ms"].append(chart_ms)
        return {
            "runs": args.runs,
            "runs_reported": len(runs),
            "runs_all_acked": sum(r["unacked"] == 0 for r in runs),
            "init_s": init_s,
            "acked_points": acked_points,
            "stored_points": stored_final,
            "stored_raw": stored,
            "lost": max(acked_points - stored_final, 0),
            "duplicates": max(folded - stored_final, 0),
            "freshness": summarize(freshness),
            "pulses": pulses,
            "alerts_consumer": len(consumer_latency),
            "alerts_table": len(table_latency),
            "alert_consumer": summarize(consumer_latency),
            "alert_table": summarize(table_latency),
            "during": {k: summarize(v, digits=1) for k, v in during.items()},
            "quiet": {k: summarize(v, digits=1) for k, v in quiet.items()},
            "cpu": cpu.cores(),
            "lag_max_events": max((n for _, n in lags), default=None),
            "producers": summaries,
            "stored_per_s": achieved(summaries, acked_points),
            "store_cadence_s": stored_at.cadence_s(logged_at),
            "stored_per_s_logging": stored_at.per_s(logged_at),
            "drained_s": round(drained_at - logged_at, 1),
            "drain_per_s": stored_at.after(logged_at).per_s(),
        }
    finally:
        stop_lag.set()
        stop(children)
        server.stop()
        cluster.cleanup()


def achieved(summaries: list[dict[str, Any]], points: int) -> float | None:
    """Points acknowledged per second of logging: what the producers actually offered."""
    logged = max((s["logged_s"] for s in summaries), default=0)
    return round(points / logged) if logged else None


def poll_alerts(client: Any, seen: dict[str, tuple[float, float]]) -> None:
    """Note when each alert first shows in the alerts table (the API's alerts endpoint reads it)."""
    rows = client.query(
        "SELECT alert_id, toUnixTimestamp64Milli(time) FROM alerts WHERE team = {t:String} AND project = {p:String}",
        parameters={"t": TEAM, "p": PROJECT},
    ).result_rows
    now = time.time()
    for alert_id, at_ms in rows:
        seen.setdefault(alert_id, (now, at_ms / 1000))


# -- the embedded phase --------------------------------------------------------------------------------


def api(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {text[:300]!r}")
        return json.loads(text)
    finally:
        conn.close()


def embedded_chart(port: int, ids: list[str], metric: str, field: str) -> dict[str, Any]:
    body = {"run_ids": ids, "metrics": [metric], "points": 500, "fields": [field]}
    return api(port, "POST", f"/api/v1/projects/{TEAM}/{EMBEDDED_PROJECT}/series", body)


def embedded_stored(port: int, ids: list[str]) -> int:
    """Points stored: every row logs all 10 metrics, so 10 x the points of ``loss``."""
    chart = embedded_chart(port, ids, "loss", "count")
    return METRICS * int(sum(sum(s["count"]) for s in chart["series"]))


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"runstream server exited with {proc.returncode}")
        try:
            api(port, "GET", "/api/v1/health")
            return
        except (OSError, RuntimeError):
            time.sleep(0.3)
    raise SystemExit("runstream server did not answer /api/v1/health in time")


def embedded_phase(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from infra.net import free_port

    port = free_port()
    server = spawn(
        [RUNSTREAM, "server", "--port", str(port), "--data-dir", str(work / "embedded")],
        {**os.environ, "PYTHONPATH": str(REPO)},
        work / "server.log",
        stdout=subprocess.DEVNULL,
    )
    children = [server]
    try:
        wait_healthy(port, server, 120)
        n = args.embedded_runs
        print(f"embedded server on port {port}; starting {n} runs in {args.embedded_processes} processes ...")
        url = f"http://127.0.0.1:{port}"
        producers = start_producers(args, url, EMBEDDED_PROJECT, "emb", n, args.embedded_processes, work)
        children += [p.proc for p in producers]
        init_s = wait_ready(producers, args.timeout)
        ids = [run_id("emb", i) for i in range(n)]
        sample = ids[:: max(1, n // args.sample)][: args.sample]
        cpu = Cpu({"server": [server.pid], "producers": [p.proc.pid for p in producers]})
        cpu.mark()
        t_go = go(producers)
        print(f"all runs started in {init_s:.1f} s; logging for {args.duration:.0f} s ...", flush=True)
        freshness: list[float] = []
        stored_at, progress = Stored(), Progress()
        next_count = time.monotonic()
        logged_at = None
        while any(p.proc.poll() is None for p in producers):
            if time.time() > t_go + args.timeout:
                raise SystemExit("the producers did not finish in time")
            chart = embedded_chart(port, sample, "wall", "y")
            now = time.time()
            if logged_at is None and any(p.first("LOGGED") for p in producers):
                logged_at = now
                cpu.mark()
            if logged_at is None:
                freshness += [now - wall for wall in newest_walls(chart)]
            if time.monotonic() >= next_count:  # a chart of every run: not at every poll
                next_count = time.monotonic() + 2.0
                stored_at.see(embedded_stored(port, ids), time.time())
            fresh = f"{now - max(newest_walls(chart)):.2f} s" if chart["series"] else "-"
            progress.show(f"{now - t_go:5.0f} s: {stored_at.count:,} points stored, freshness {fresh}")
            time.sleep(args.poll)
        if logged_at is None:
            cpu.mark()
        runs, summaries = reports(producers)
        acked_points = sum(r["points"] for r in runs if r["unacked"] == 0)
        deadline = time.monotonic() + 30
        while stored_at.count < acked_points and time.monotonic() < deadline:
            time.sleep(1.0)
            stored_at.see(embedded_stored(port, ids), time.time())
        return {
            "runs": n,
            "runs_all_acked": sum(r["unacked"] == 0 for r in runs),
            "init_s": init_s,
            "acked_points": acked_points,
            "stored_points": stored_at.count,
            "lost": max(acked_points - stored_at.count, 0),
            "points_per_s": stored_at.per_s(),
            "points_per_s_logging": stored_at.per_s(logged_at or float("inf")),
            "freshness": summarize(freshness),
            "cpu": cpu.cores(),
            "producers": summaries,
            "offered_per_s": achieved(summaries, acked_points),
        }
    finally:
        stop(children)


# -- main ----------------------------------------------------------------------------------------------


def show(args: argparse.Namespace, c: dict[str, Any] | None, e: dict[str, Any] | None) -> dict[str, Any]:
    offered = args.runs * args.rate * METRICS
    out: dict[str, Any] = {"runs": args.runs, "offered_points_per_s": round(offered)}
    print(f"\nfleet benchmark ({os.cpu_count()} cores shared by the brokers, ClickHouse, workers, producers, readers")
    print("and whatever else runs on this machine; nothing is asserted, targets beside the figures)")
    if c:
        behind = max((s["behind_max_s"] for s in c["producers"]), default=0)
        lines = sum(s["console_lines"] for s in c["producers"])
        dur, q = c["during"], c["quiet"]
        print(f"""
cluster: 3 brokers (RF 3, min ISR 2), 2 workers, served ClickHouse; {args.runs} runs in {args.processes} processes
  offered:             {offered:,.0f} points/s ({args.runs} runs x {METRICS} metrics x {args.rate:g} steps/s), \
the runs logged {c["stored_per_s"] or 0:,} acked points/s; log loop at most {behind:.2f} s late
  stored:              {c["stored_per_s_logging"] or 0:,} points/s while the runs logged (metric_points, polled \
every {args.poll:g} s); the rest stored {c["drained_s"]} s after logging ended, at {c["drain_per_s"] or 0:,} points/s
  also:                system samples every {args.system_interval:g} s, heartbeats, {lines:,} console lines, \
runs started in {c["init_s"]:.1f} s
  freshness p50/p99:   {c["freshness"]["p50"]} s / {c["freshness"]["p99"]} s (max {c["freshness"]["max"]}, \
{c["freshness"]["n"]} samples)   (target p99 <= 2 s)
  alert latency:       consumer p50/p99 {c["alert_consumer"]["p50"]} / {c["alert_consumer"]["p99"]} s \
({c["alerts_consumer"]} of {c["pulses"]}), alerts table p50/p99 {c["alert_table"]["p50"]} / \
{c["alert_table"]["p99"]} s ({c["alerts_table"]}; polled every {args.poll:g} s)   (target p99 <= 2 s)
  runs table:          p50/p99 during ingest {dur["runs_ms"]["p50"]} / {dur["runs_ms"]["p99"]} ms \
({dur["runs_ms"]["n"]} queries), quiet p50 {q["runs_ms"]["p50"]} ms   (target p99 <= 2x quiet p50)
  1,000-run chart:     p50/p99 during ingest {dur["chart_ms"]["p50"]} / {dur["chart_ms"]["p99"]} ms \
({dur["chart_ms"]["n"]} queries), quiet p50 {q["chart_ms"]["p50"]} ms   (target p99 <= 150 ms and <= 2x quiet p50)
  lost / duplicates:   {c["lost"]} / {c["duplicates"]}   ({c["stored_points"]:,} points stored of \
{c["acked_points"]:,} acked; {c["runs_all_acked"]}/{c["runs"]} runs fully acked)   (target 0 / 0)
  CPU (cores):         {c["cpu"]}
  worker lag (max):    {c["lag_max_events"]} metrics events past the committed offsets; new points showed \
every {c["store_cadence_s"]} s (median gap between polls that found some)""")
        out |= {
            "freshness_p50_s": c["freshness"]["p50"],
            "freshness_p99_s": c["freshness"]["p99"],
            "alert_latency_p99_s": c["alert_consumer"]["p99"],
            "alert_latency_p99_table_s": c["alert_table"]["p99"],
            "alerts": c["alerts_consumer"],
            "alerts_expected": c["pulses"],
            "lost": c["lost"],
            "duplicates": c["duplicates"],
            "chart_p99_during_ingest_ms": dur["chart_ms"]["p99"],
            "runs_table_p99_during_ingest_ms": dur["runs_ms"]["p99"],
            "chart_p50_quiet_ms": q["chart_ms"]["p50"],
            "runs_table_p50_quiet_ms": q["runs_ms"]["p50"],
            "achieved_points_per_s": c["stored_per_s"],
            "stored_points_per_s_while_logging": c["stored_per_s_logging"],
            "drain_points_per_s": c["drain_per_s"],
            "drained_s_after_logging": c["drained_s"],
            "cpu_cores": c["cpu"],
            "store_cadence_s": c["store_cadence_s"],
        }
    if e:
        print(f"""
embedded: runstream server over HTTP, {e["runs"]} runs in {args.embedded_processes} processes
  offered:             {e["runs"] * args.rate * METRICS:,.0f} points/s, achieved {e["offered_per_s"] or 0:,} acked/s
  stored:              {e["points_per_s_logging"] or 0:,} points/s while the runs logged, {e["points_per_s"] or 0:,} \
to the last point ({e["stored_points"]:,} of {e["acked_points"]:,} acked; lost {e["lost"]}; polled every 2 s)   \
(target: keeps up with what is offered)
  freshness p50/p99:   {e["freshness"]["p50"]} s / {e["freshness"]["p99"]} s ({e["freshness"]["n"]} samples, \
through the server's series endpoint)   (target p99 <= 2 s)
  CPU (cores):         {e["cpu"]}""")
        out |= {
            "embedded_points_per_s": e["points_per_s_logging"],
            "embedded_points_per_s_to_last": e["points_per_s"],
            "embedded_freshness_p99_s": e["freshness"]["p99"],
            "embedded_freshness_p50_s": e["freshness"]["p50"],
            "embedded_lost": e["lost"],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="concurrent runs against the cluster")
    parser.add_argument("--processes", type=int, default=5, help="producer processes the runs are spread over")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each run logs")
    parser.add_argument("--rate", type=float, default=10.0, help="log() calls per second per run")
    parser.add_argument("--embedded-runs", type=int, default=200, help="runs against `runstream server` (0: skip)")
    parser.add_argument("--embedded-processes", type=int, help="producer processes there (default: --processes)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the cluster phase")
    parser.add_argument("--system-interval", type=float, default=15.0, help="seconds between system samples (0: off)")
    parser.add_argument("--console-every", type=float, default=5.0, help="seconds between a run's console lines")
    parser.add_argument("--flush-interval", type=float, default=0.25, help="the SDK's flush interval (its default)")
    parser.add_argument("--fire-every", type=int, default=100, help="steps between a firing run's alerts")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the first alert")
    parser.add_argument("--sample", type=int, default=20, help="runs whose freshness is polled")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between freshness and alert polls")
    parser.add_argument("--quiet-repeats", type=int, default=20, help="dashboard queries after the fleet")
    parser.add_argument("--broker-heap", default="512m", help="each broker's JVM heap")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest a phase may take")
    parser.add_argument("--keep", action="store_true", help="keep the data (ClickHouse, spools), not only the logs")
    # The child processes' modes.
    for flag in ("--producer", "--reader"):
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--url", "--project", "--prefix", "--dsn", "--dir"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ("--first", "--count"):
        parser.add_argument(flag, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.producer:
        producer(args)
        return
    if args.reader:
        reader(args)
        return
    sys.path.insert(0, str(REPO))
    args.embedded_processes = args.embedded_processes or args.processes
    work = Path(tempfile.mkdtemp(prefix="runstream-bench-fleet-"))
    print(f"logs and data in {work}", flush=True)
    try:
        c = None if args.no_cluster else cluster_phase(args, work)
        e = embedded_phase(args, work) if args.embedded_runs else None
    finally:
        if not args.keep:  # hundreds of MB a run; the logs stay
            for data in ("clickhouse", "embedded", "runs", "worker-0", "worker-1"):
                shutil.rmtree(work / data, ignore_errors=True)
    print(json.dumps(show(args, c, e)))


if __name__ == "__main__":
    main()
