"""examples/alerts_consumer.py, run as written, prints every alert exactly once: rule alerts of a
real worker and the SDK's run.alert, across a broker SIGKILL, redelivered duplicates and a restart
of the consumer in its group.

The test has a broker of its own (killed and restarted on the same data). On a 3-broker cluster
fixture it would kill one broker instead (the partition leaders move, nothing waits for a restart);
the assertions stay the same.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.kafka_broker import KafkaBroker
from runstream import events
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.topics import create_topics_sync
from tests.helpers import unique

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "alerts_consumer.py"
WORKER = ROOT / "tests" / "scripts" / "worker.py"
RUNS = ("ra", "rb")
TEAM = "acme"

#: One SDK run: each phase logs a loss that crosses the rule's threshold once (one rule alert) and
#: sends one run.alert; between the phases it waits for the test (which kills the broker meanwhile).
SDK_SCRIPT = """
import json, sys, runstream
run = runstream.init(entity={team!r}, project={project!r}, id={run_id!r}, dir={dir!r},
                     settings={{"url": {url!r}, "console": False, "system_metrics": False, "git": False,
                               "finish_timeout": 90}})
for phase in (1, 2):
    for i in range(20):
        run.log({{"loss": 50.0 if i == 10 else 1.0}})
    run.alert(f"{run_id} phase {{phase}}", "sent by run.alert", level="WARN")
    print(f"phase {{phase}}", flush=True)
    sys.stdin.readline()
result = run.finish()
print(json.dumps({{"unacked": result.unacked_events}}), flush=True)
"""


def _until(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return result


def _printed(path: Path) -> list[dict]:
    """The alerts a consumer printed so far (complete lines only)."""
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _consumer(bootstrap: str, group: str, project: str, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(EXAMPLE), "--bootstrap", bootstrap, "--group", group]
    cmd += ["--team", TEAM, "--project", project, "--from-beginning"]
    with out.open("w") as stdout, out.with_suffix(".err").open("w") as stderr:  # the child keeps its copies
        return subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr)


def _sdk_run(url: str, project: str, run_id: str, run_dir: Path) -> subprocess.Popen:
    script = SDK_SCRIPT.format(team=TEAM, project=project, run_id=run_id, dir=str(run_dir), url=url)
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _tell(proc: subprocess.Popen, expect: str) -> None:
    """Wait for the SDK script's next line, which must start with ``expect``."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith(expect), f"the SDK script said {line!r} (exit code {proc.poll()})"


def _go(proc: subprocess.Popen) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _sentinel(project: str, run_id: str, seq: int) -> events.Event:
    data = {"title": f"sentinel {seq}", "text": "sent by the test", "level": "INFO", "source": "sdk"}
    return events.Event(events.ALERT, TEAM, project, run_id, seq, time.time(), data)


async def _alert_messages(bootstrap: str) -> list[tuple[bytes, bytes, list]]:
    """(key, value, headers) of every message on the alerts topic, read to its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(events.TOPIC_ALERTS.name, p) for p in range(events.TOPIC_ALERTS.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[tuple[bytes, bytes, list]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                found += [(m.key, m.value, list(m.headers)) for m in messages]
        return found
    finally:
        await consumer.stop()


async def _produce(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(events.TOPIC_ALERTS.name, value, key=key) for key, value in messages]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM, as a service manager stops the consumer; its exit code."""
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_the_example_consumer_prints_each_alert_once_across_a_broker_kill(clickhouse_server, tmp_path):
    project = unique("alerts")
    dsn = f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/{unique('db').replace('-', '_')}"
    client = connect(dsn)
    migrate(client)
    rule = ["big-loss", "loss too big", "threshold", orjson.dumps({"metric": "loss", "op": ">", "value": 10}).decode()]
    columns = ["team", "project", "rule_id", "name", "kind", "spec", "enabled", "cooldown_s", "version"]
    client.insert("alert_rules", [[TEAM, project, *rule, True, 0, 1]], column_names=columns)

    def stored() -> dict[str, str]:
        """alert_id -> title of the project's alerts in ClickHouse."""
        rows = client.query(
            "SELECT alert_id, title FROM alerts FINAL WHERE project = {p:String}", parameters={"p": project}
        ).result_rows
        return dict(rows)

    broker = KafkaBroker(tmp_path / "kafka")
    procs: list[subprocess.Popen] = []
    try:
        broker.start()
        create_topics_sync(broker.bootstrap)
        env = {
            **os.environ,
            "RUNSTREAM_KAFKA": broker.bootstrap,
            "RUNSTREAM_CLICKHOUSE_DSN": dsn,
            "RUNSTREAM_APP_ID": unique("workers"),
            "RUNSTREAM_DATA_DIR": str(tmp_path / "worker"),
            "PYTHONPATH": str(ROOT),
        }
        worker_log = tmp_path / "worker.log"
        with worker_log.open("w") as log:
            worker = subprocess.Popen([sys.executable, str(WORKER)], cwd=ROOT, env=env, stdout=log, stderr=log)
        group = unique("pager")
        out = tmp_path / "consumer-1.out"
        consumer = _consumer(broker.bootstrap, group, project, out)
        sdk = [_sdk_run(f"kafka://{broker.bootstrap}", project, r, tmp_path / r) for r in RUNS]
        procs += [worker, consumer, *sdk]

        for proc in sdk:
            _tell(proc, "phase 1")
        # Kill the broker as soon as the worker's first rule alert came through: the rest of phase 1
        # may be in flight (produced, not yet processed, printed or committed).
        _until(lambda: any(a["source"] == "rule" for a in _printed(out)), 90, f"a rule alert; see {worker_log}")
        broker.kill()
        for proc in sdk:  # phase 2 goes to the runs' spools while the broker is down
            _go(proc)
            _tell(proc, "phase 2")
        broker.start()
        for proc in sdk:
            _go(proc)
            _tell(proc, '{"unacked": 0}')

        expected = 2 * 2 * len(RUNS)  # per run and phase: one rule alert and one run.alert
        _until(lambda: len(stored()) >= expected, 90, f"{expected} alerts in ClickHouse; see {worker_log}")
        _until(lambda: len(_printed(out)) >= expected, 60, f"{expected} alerts printed; see {out}")

        # Deliver every alert again (as a replaying worker or a resending SDK would), then one new
        # alert per run behind them in the same partition: once those are printed, so were the repeats.
        on_topic = asyncio.run(_alert_messages(broker.bootstrap))
        assert [h for _, _, h in on_topic if h] == [], "docs/alerts.md says alert messages have no headers"
        for key, value, _ in on_topic:  # the key docs/alerts.md names
            event = json.loads(value)
            assert key == f"{event['team']}/{event['project']}/{event['run_id']}".encode()
        repeats = [(key, value) for key, value, _ in on_topic]
        sentinels = [_sentinel(project, r, 2**40 + i) for i, r in enumerate(RUNS)]
        asyncio.run(_produce(broker.bootstrap, [*repeats, *((e.key, e.to_bytes()) for e in sentinels)]))
        _until(lambda: len(_printed(out)) >= expected + len(sentinels), 60, "the sentinels")

        printed = _printed(out)
        ids = [a["alert_id"] for a in printed]
        assert len(ids) == len(set(ids)), "an alert was printed twice"
        _until(lambda: len(stored()) >= len(ids), 30, "the sentinels in ClickHouse")
        assert {a["alert_id"]: a["title"] for a in printed} == stored()
        rule_alerts = [a for a in printed if a["source"] == "rule"]
        assert len(rule_alerts) == 2 * len(RUNS) and {a["rule_id"] for a in rule_alerts} == {"big-loss"}
        assert sorted(a["title"] for a in printed if a["source"] == "sdk" and a["level"] == "WARN") == sorted(
            f"{r} phase {p}" for r in RUNS for p in (1, 2)
        )
        assert {(a["team"], a["project"]) for a in printed} == {(TEAM, project)}

        # A clean stop commits what was printed: the restarted consumer goes on after it.
        assert _stop(consumer) == 0
        out2 = tmp_path / "consumer-2.out"
        consumer = _consumer(broker.bootstrap, group, project, out2)
        procs.append(consumer)
        last = _sentinel(project, RUNS[0], 2**41)  # the partition of run ra's earlier alerts
        asyncio.run(_produce(broker.bootstrap, [(last.key, last.to_bytes())]))
        restarted = _until(lambda: _printed(out2), 60, "the alert after the restart")
        assert [a["title"] for a in restarted] == [last.data["title"]]
        assert _stop(consumer) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.cleanup()
