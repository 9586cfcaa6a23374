"""The pipeline on a replicated Kafka cluster (3 brokers, replication 3, min ISR 2) while brokers die.

Training scripts log through the SDK, a cluster-mode API forwards ingest, and Faust worker
processes consume, all against three brokers; a broker is SIGKILLed and restarted under them.
Nothing acknowledged may be lost or counted twice, log() must not wait for the failover, and
every process must ride through it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner

from infra.kafka_broker import KafkaCluster
from infra.net import free_port
from runstream import events
from runstream.storage import accounts
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.topics import create_topics, plan_replication
from tests.helpers import make_event, unique
from tests.integration.test_cluster_commands import _wait_healthy
from tests.integration.test_worker_failover import _produce, _worker

ROOT = Path(__file__).resolve().parents[2]
RUNSTREAM = Path(sys.executable).parent / "runstream"
METRICS = events.TOPIC_METRICS.name


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUNSTREAM, *args], capture_output=True, text=True, timeout=120)


async def _describe(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, tuple[int, set[int], int]]:
    """Topic -> (partitions, replica counts, min.insync.replicas) for the topics every broker knows already."""
    described = await admin.describe_topics(topics)
    configs = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, {"min.insync.replicas": None}) for name in topics]
    )
    min_isr = {
        name: int(value)
        for response in configs
        for error, _, _, name, entries in response.resources
        if error == 0
        for key, value, *_ in entries
        if key == "min.insync.replicas"
    }
    return {
        t["topic"]: (len(t["partitions"]), {len(p["replicas"]) for p in t["partitions"]}, min_isr[t["topic"]])
        for t in described
        if t["error_code"] == 0 and t["partitions"] and t["topic"] in min_isr
    }


async def _layout(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, int, int]]:
    """Topic -> (partitions, replicas of each partition, min.insync.replicas), as the brokers describe them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + 30
        # A new topic reaches the metadata of every broker shortly after it is made.
        while len(found := await _describe(admin, topics)) < len(topics) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
    out = {}
    for topic, (partitions, replicas, min_isr) in found.items():
        assert len(replicas) == 1, f"{topic}: partitions with different replica counts {replicas}"
        out[topic] = (partitions, replicas.pop(), min_isr)
    return out


async def _topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_topics_create_refuses_more_replicas_than_brokers_before_creating_anything(kafka_cluster):
    before = asyncio.run(_topic_names(kafka_cluster.bootstrap))
    refused = _cli("topics", "create", "--bootstrap", kafka_cluster.bootstrap, "--replication-factor", "4")
    assert refused.returncode == 2
    assert "replication factor 4 needs 4 brokers, and the cluster has 3" in refused.stderr
    assert refused.stdout == "" and "Traceback" not in refused.stderr
    too_strict = _cli("topics", "create", "--bootstrap", kafka_cluster.bootstrap, "--min-insync-replicas", "4")
    assert too_strict.returncode == 2
    assert "min.insync.replicas 4 is more than the replication factor 3" in too_strict.stderr
    assert asyncio.run(_topic_names(kafka_cluster.bootstrap)) == before


@pytest.fixture(scope="module")
def topics_created(kafka_cluster: KafkaCluster) -> subprocess.CompletedProcess:
    """The pipeline's topics on the session's cluster, made as an operator makes them: ``runstream topics create``."""
    created = _cli("topics", "create", "--bootstrap", kafka_cluster.bootstrap)
    assert created.returncode == 0, created.stderr
    return created


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster, topics_created: subprocess.CompletedProcess) -> KafkaCluster:
    return kafka_cluster


def test_topics_create_replicates_three_times_with_min_isr_two_by_default(cluster, topics_created):
    for topic in events.TOPICS:
        line = f"{topic.name:28} created: {topic.partitions} partitions, replication factor 3, min.insync.replicas 2"
        assert line in topics_created.stdout.splitlines()
    layout = asyncio.run(_layout(cluster.bootstrap, [t.name for t in events.TOPICS]))
    assert layout == {t.name: (t.partitions, 3, 2) for t in events.TOPICS}

    again = _cli("topics", "create", "--bootstrap", cluster.bootstrap, "--min-insync-replicas", "1")
    assert again.returncode == 0, again.stderr
    assert "warning: replication factor 3 with min.insync.replicas 1" in again.stderr
    assert f"{METRICS:28} exists: kept as it is" in again.stdout.splitlines()


def test_a_risky_min_isr_is_only_a_warning_and_still_creates(cluster):
    replication = plan_replication(3, 3, 1)
    assert replication.warnings
    name = unique("risky")
    assert asyncio.run(create_topics(cluster.bootstrap, [events.Topic(name, 2, "test")], replication)) == [name]
    assert asyncio.run(_layout(cluster.bootstrap, [name])) == {name: (2, 3, 1)}


def _database(clickhouse_server) -> tuple[str, object]:
    dsn = f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/{unique('db').replace('-', '_')}"
    client = connect(dsn)
    migrate(client)
    return dsn, client


def _env(bootstrap: str, dsn: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "RUNSTREAM_KAFKA": bootstrap,
        "RUNSTREAM_CLICKHOUSE_DSN": dsn,
        "RUNSTREAM_APP_ID": unique("group"),
        "RUNSTREAM_CONFIG": "/nonexistent/runstream.toml",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _wait_for(what: str, done: Callable[[], bool], alive: list[subprocess.Popen], timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        for process in alive:
            assert process.poll() is None, f"{process.args!r} exited while waiting for {what}: see {logs}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: see {logs}"
        time.sleep(0.3)


def _count(client, sql: str, project: str) -> int:
    return int(client.command(sql, parameters={"p": project}) or 0)


def _points(client, project: str) -> int:
    return _count(client, "SELECT count() FROM metric_points FINAL WHERE project = {p:String}", project)


def _summary_counts(client, project: str) -> dict[tuple[str, str], int]:
    rows = client.query(
        "SELECT run_id, metric, count FROM metric_summaries FINAL WHERE project = {p:String}",
        parameters={"p": project},
    ).result_rows
    return {(run_id, metric): int(count) for run_id, metric, count in rows}


def _busiest_leader(cluster: KafkaCluster, topic: str) -> int:
    """The node that leads the most partitions of ``topic``."""
    return collections.Counter(cluster.leaders(topic).values()).most_common(1)[0][0]


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _post(url: str, key: str, evs: list[dict]) -> int:
    request = urllib.request.Request(
        f"{url}/api/v1/events",
        data=b"\n".join(orjson.dumps(e) for e in evs),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


#: A training script that logs until the test creates its flag file, then AFTER steps more, then finishes;
#: it prints its FinishResult, the steps it logged and its slowest log() as JSON.
LOG_UNTIL_FLAG = """
import json, os, sys, time, runstream
url, project, run_id, runs_dir, flag = sys.argv[1:]
run = runstream.init(entity="acme", project=project, id=run_id, dir=runs_dir,
                     settings={"url": url, "console": False, "system_metrics": False, "git": False,
                               "finish_timeout": 60})
print("started", flush=True)
slowest, step, after = 0.0, 0, 0
while after < AFTER:
    t = time.perf_counter()
    run.log({"loss": 1.0 / (step + 1), "acc": step / 1000})
    slowest = max(slowest, time.perf_counter() - t)
    step += 1
    if os.path.exists(flag):
        after += 1
    time.sleep(0.005)
result = run.finish()
print(json.dumps({"unacked": result.unacked_events, "points": result.points, "steps": step,
                  "slowest_log_s": slowest}), flush=True)
""".replace("AFTER", "300")


def _log_until_flag(
    bootstrap: str, project: str, run_id: str, runs_dir: Path, flag: Path, env: dict
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOG_UNTIL_FLAG, f"kafka://{bootstrap}", project, run_id, str(runs_dir), str(flag)],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _api_run(project: str, run_id: str, steps: int) -> list[dict]:
    """A run as a client of the API sends it: run_start, then one metrics event per step."""
    run = [make_event("run_start", {"name": run_id}, seq=1, run_id=run_id, team="acme", project=project)]
    for s in range(steps):
        data = {"step": [s], "time": [time.time()], "values": {"loss": [1.0 / (s + 1)]}}
        run.append(make_event("metrics", data, seq=2 + s, run_id=run_id, team="acme", project=project))
    return run


def _run_ids_on_one_partition(project: str, count: int) -> tuple[int, list[str]]:
    """A partition, and ``count`` run ids of team acme whose events all go to it (the producers' partitioner)."""
    partitions = list(range(events.TOPIC_METRICS.partitions))
    ids: dict[int, list[str]] = collections.defaultdict(list)
    for i in itertools.count():
        run_id = f"r{i}"
        partition = DefaultPartitioner()(events.run_key("acme", project, run_id), partitions, partitions)
        ids[partition].append(run_id)
        if len(ids[partition]) == count:
            return partition, ids[partition]
    raise AssertionError("unreachable")


def test_runs_a_worker_and_the_api_ride_through_a_killed_broker(cluster, clickhouse_server, tmp_path):
    project = unique("chaos")
    # Every run, the API's too, on one partition: the broker killed is the one that leads it.
    partition, (api_run_id, *run_ids) = _run_ids_on_one_partition(project, 4)
    dsn, client = _database(clickhouse_server)
    accounts.ensure_team(client, "acme")
    accounts.set_member(client, "acme", "ci", "member")
    _, key = accounts.create_key(client, "acme", "ci")
    port = free_port()
    env = _env(cluster.bootstrap, dsn, RUNSTREAM_DATA_DIR=str(tmp_path / "server"), RUNSTREAM_PORT=str(port))
    worker = _worker({**env, "RUNSTREAM_DATA_DIR": str(tmp_path / "worker")}, tmp_path / "worker.log")
    api_log = tmp_path / "api.log"
    api = subprocess.Popen([RUNSTREAM, "api"], env=env, stdout=api_log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    flag = tmp_path / "broker-is-back"
    scripts = [_log_until_flag(cluster.bootstrap, project, r, tmp_path / "runs", flag, env) for r in run_ids]
    try:
        for script in scripts:
            assert script.stdout is not None and script.stdout.readline().strip() == "started"
        _wait_healthy(url, api, api_log)
        _wait_for("the worker to store points", lambda: _points(client, project) > 0, [worker, api], 60, tmp_path)

        victim = cluster.leader(METRICS, partition)
        cluster.kill(victim)
        # Ingest through the API while the broker is down: acks=all needs 2 of 3 replicas, and 2 are up.
        api_run = _api_run(project, api_run_id, 20)
        assert _post(url, key, api_run) == 200
        _wait_for(
            "the partitions to move off the killed broker",
            lambda: victim not in cluster.leaders(METRICS).values(),
            [worker, api, *scripts],
            60,
            tmp_path,
        )
        cluster.start()  # the killed broker comes back on its data
        flag.touch()  # the runs log a little more, then finish

        acked, steps = 0, {}
        for run_id, script in zip(run_ids, scripts, strict=True):
            out, err = script.communicate(timeout=180)
            assert script.returncode == 0, err
            result = json.loads(out.splitlines()[-1])
            assert result["unacked"] == 0 and result["points"] == result["steps"] * 2
            # log() only enqueues: the failover (seconds) must not show in it.
            assert result["slowest_log_s"] < 1.0
            acked += result["points"]
            steps[run_id] = result["steps"]
        expected = acked + len(api_run) - 1

        def stored() -> bool:
            return _points(client, project) >= expected and sum(_summary_counts(client, project).values()) >= expected

        _wait_for("every acknowledged point to be stored", stored, [worker, api], 120, tmp_path)
        assert _points(client, project) == expected
        want = {(run_id, metric): n for run_id, n in steps.items() for metric in ("loss", "acc")}
        assert _summary_counts(client, project) == {**want, (api_run_id, "loss"): len(api_run) - 1}
        assert worker.poll() is None and api.poll() is None, "the worker and the API ride through in the same process"
    finally:
        _stop([*scripts, worker, api])
        cluster.start()


def _backlog(project: str, runs: int, batches: int, rows: int) -> list[events.Event]:
    """Runs of ``batches`` small metrics events each (many messages: more than a worker takes in one batch)."""
    now = time.time()
    out = []
    for r in range(runs):
        run_id = f"r{r:02d}"
        out.append(events.validate(make_event("run_start", {"name": run_id}, 1, run_id, project=project, ts=now)))
    for b in range(batches):
        steps = list(range(b * rows, (b + 1) * rows))
        data = {"step": steps, "time": [now + s for s in steps], "values": {"loss": [1.0 / (s + 1) for s in steps]}}
        for r in range(runs):
            out.append(events.validate(make_event("metrics", data, 2 + b, f"r{r:02d}", project=project, ts=now)))
    finish = {"state": "finished", "exit_code": 0}
    for r in range(runs):
        out.append(events.validate(make_event("run_finish", finish, 2 + batches, f"r{r:02d}", project=project, ts=now)))
    return out


def test_two_workers_lose_nothing_when_a_broker_dies_mid_batch(cluster, clickhouse_server, tmp_path):
    project, runs, batches, rows = unique("midbatch"), 20, 400, 5
    dsn, client = _database(clickhouse_server)
    env = _env(cluster.bootstrap, dsn)
    # The whole backlog is acknowledged (acks=all) before the workers start.
    asyncio.run(_produce(cluster.bootstrap, [_backlog(project, runs, batches, rows)], pause=0))
    workers = [
        _worker({**env, "RUNSTREAM_DATA_DIR": str(tmp_path / f"w{i}")}, tmp_path / f"w{i}.log") for i in range(2)
    ]
    try:
        expected = runs * batches * rows
        _wait_for("the workers to start on the backlog", lambda: _points(client, project) > 0, workers, 90, tmp_path)
        killed_at = _points(client, project)
        victim = _busiest_leader(cluster, METRICS)
        cluster.kill(victim)
        assert killed_at < expected, "the broker must die while the backlog is being processed"
        _wait_for(
            "the partitions to move off the killed broker",
            lambda: victim not in cluster.leaders(METRICS).values(),
            workers,
            60,
            tmp_path,
        )
        cluster.start()

        def finished() -> bool:
            done = _count(
                client, "SELECT count() FROM runs FINAL WHERE project = {p:String} AND state = 'finished'", project
            )
            return done == runs and sum(_summary_counts(client, project).values()) >= expected

        _wait_for("the backlog to be processed", finished, workers, 120, tmp_path)
        print(f"points when the broker died: {killed_at} of {expected}")
        assert _points(client, project) == expected
        assert _summary_counts(client, project) == {(f"r{r:02d}", "loss"): batches * rows for r in range(runs)}
        buckets = _count(
            client, "SELECT sum(count) FROM metric_buckets FINAL WHERE project = {p:String} AND level = 1", project
        )
        assert buckets == expected
        assert all(w.poll() is None for w in workers), "both workers ride through in the same process"
        assert asyncio.run(_group_members(cluster.bootstrap, env["RUNSTREAM_APP_ID"])) == 2
    finally:
        _stop(workers)
        cluster.start()


async def _group_members(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    return len(described.groups[0][5])
