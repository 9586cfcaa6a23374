"""The SDK against the real Kafka broker: exactly once, in order, through outages and crashes."""

import asyncio
import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import runstream
from infra.kafka_broker import KafkaBroker
from infra.net import free_port
from runstream import events
from runstream.streams.topics import create_topics_sync
from runstream.sync import sync
from tests.helpers import consume_events, metric_points, training_script, unique

ROOT = Path(__file__).parents[2]
METRICS = [events.TOPIC_METRICS.name]
QUIET = {"console": False, "system_metrics": False, "git": False}


def _python(script: str, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
    )


def _points_by_run(evs: list[events.Event]) -> dict[str, list[tuple[int, str, float]]]:
    by_run: dict[str, list[tuple[int, str, float]]] = collections.defaultdict(list)
    for event in evs:
        by_run[event.run_id] += metric_points([event])
    return by_run


def _count_points(n: int):
    return lambda evs: sum(len(metric_points([e])) for e in evs) >= n


def _distinct(evs: list[events.Event]) -> list[events.Event]:
    """What idempotent consumers keep: one event per (run, seq); a duplicate must be the same event."""
    kept: dict[tuple[str, int], events.Event] = {}
    for event in evs:
        key = (event.run_id, event.seq)
        assert kept.setdefault(key, event) == event, f"two different events share {key}"
    return list(kept.values())


def test_twenty_concurrent_runs_arrive_exactly_once_and_in_order(kafka_bootstrap, tmp_path):
    project, runs, steps = unique("p"), 20, 5000
    procs = [
        _python(training_script(str(tmp_path), f"kafka://{kafka_bootstrap}", project, f"run{i}", steps))
        for i in range(runs)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        assert result["unacked"] == 0 and result["points"] == steps * 2

    evs = asyncio.run(consume_events(kafka_bootstrap, METRICS, project, _count_points(runs * steps * 2)))
    assert len({(e.run_id, e.seq) for e in evs}) == len(evs), "no event arrived twice"
    by_run = _points_by_run(evs)
    assert sorted(by_run) == sorted(f"run{i}" for i in range(runs))
    for run_id, points in by_run.items():
        for metric in ("loss", "acc"):
            assert sorted(s for s, m, _ in points if m == metric) == list(range(steps)), f"{run_id}/{metric}"
        seqs = [e.seq for e in evs if e.run_id == run_id]
        assert seqs == sorted(seqs), f"{run_id} arrived out of order"


def test_broker_outage_loses_nothing_and_never_blocks_log(tmp_path):
    broker = KafkaBroker(tmp_path / "kafka")
    try:
        broker.start()
        create_topics_sync(broker.bootstrap)
        project, steps = unique("outage"), 5000
        proc = _python(training_script(str(tmp_path), f"kafka://{broker.bootstrap}", project, "r1", steps, pause=0.004))
        assert proc.stdout.readline().strip() == "started"
        time.sleep(3)
        broker.stop()
        time.sleep(10)  # the run keeps logging into its spool meanwhile
        broker.start()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        assert result["unacked"] == 0
        assert result["slowest_log_s"] < 1.0, "log() must not wait for the broker (the outage lasted 10 s)"

        evs = asyncio.run(consume_events(broker.bootstrap, METRICS, project, _count_points(steps * 2)))
        points = metric_points(_distinct(evs))
        for metric in ("loss", "acc"):
            assert sorted(s for s, m, _ in points if m == metric) == list(range(steps))
    finally:
        broker.cleanup()


def test_offline_run_then_sync_twice_sends_each_event_once(kafka_bootstrap, tmp_path):
    project = unique("offline")
    run = runstream.init(project=project, mode="offline", dir=tmp_path, settings=QUIET)
    for step in range(3000):
        run.log({"x": float(step)})
    run.alert("done", "offline run finished")
    run.finish()

    first = sync([tmp_path], url=f"kafka://{kafka_bootstrap}", progress=False)
    second = sync([tmp_path], url=f"kafka://{kafka_bootstrap}", progress=False)
    assert first[0].sent > 0 and not first[0].skipped
    assert second[0].sent == 0

    topics = [t.name for t in events.TOPICS if t is not events.TOPIC_DEAD_LETTERS]
    evs = asyncio.run(consume_events(kafka_bootstrap, topics, project, lambda e: len(e) >= first[0].sent, timeout=30))
    assert len(evs) == first[0].sent and len({e.seq for e in evs}) == len(evs)
    assert sorted(s for s, _, _ in metric_points(evs)) == list(range(3000))
    assert {e.type for e in evs} >= {events.RUN_START, events.METRICS, events.ALERT, events.RUN_FINISH}


def test_a_killed_process_leaves_a_spool_that_sync_completes(kafka_bootstrap, tmp_path):
    project, steps = unique("killed"), 4000
    nowhere = f"kafka://127.0.0.1:{free_port()}"  # nothing is acknowledged before the kill
    kill = (
        "run.summary.as_dict()  # everything logged is spooled\nimport os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    proc = _python(training_script(str(tmp_path), nowhere, project, "k1", steps, extra=kill))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL

    results = sync([tmp_path], url=f"kafka://{kafka_bootstrap}", progress=False)
    assert results[0].sent > 0 and not results[0].skipped
    evs = asyncio.run(consume_events(kafka_bootstrap, METRICS, project, _count_points(steps * 2)))
    for metric in ("loss", "acc"):
        assert sorted(s for s, m, _ in metric_points(evs) if m == metric) == list(range(steps))


def test_finish_with_the_broker_down_returns_within_its_bound(kafka_bootstrap, tmp_path):
    project = unique("down")
    run = runstream.init(
        project=project,
        dir=tmp_path,
        settings={**QUIET, "url": f"kafka://127.0.0.1:{free_port()}", "finish_timeout": 2},
    )
    for step in range(500):
        run.log({"x": float(step)})
    began = time.monotonic()
    result = run.finish()
    assert time.monotonic() - began < 2 + 3  # its bound, plus shutdown slack: not a hang
    assert result.acked_events == 0 and result.unacked_events > 0

    sync([tmp_path], url=f"kafka://{kafka_bootstrap}", progress=False)
    evs = asyncio.run(consume_events(kafka_bootstrap, METRICS, project, _count_points(500)))
    assert sorted(s for s, _, _ in metric_points(evs)) == list(range(500))


def test_with_the_broker_down_rows_go_to_disk_not_memory(tmp_path):
    run = runstream.init(
        project="mem", dir=tmp_path, settings={**QUIET, "url": f"kafka://127.0.0.1:{free_port()}", "finish_timeout": 1}
    )
    for step in range(100_000):
        run.log({"a": float(step), "b": 1.0})
    deadline = time.monotonic() + 10
    while run._sender.points < 200_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run._sender.points == 200_000, "the sender drains rows into the spool while nothing can be sent"
    assert run._sender.rows == [] and run._sender.acked_events == 0
    assert sum(f.stat().st_size for f in Path(run.dir, "spool").glob("seg-*.log")) > 1_000_000
    run.finish()
