"""The processing logic on the real engine, driven in-process (the Faust worker drives the same code)."""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import numpy as np
import orjson

from runstream.events import (
    ALERT,
    CONSOLE,
    FILE,
    HEARTBEAT,
    METRICS,
    RUN_FINISH,
    RUN_START,
    RUN_UPDATE,
    SYSTEM,
    Event,
    validate,
)
from runstream.storage.client import connect
from runstream.storage.migrations import migrate
from runstream.streams.pipeline import Pipeline
from runstream.streams.processor import Processor

TEAM, PROJECT = "acme", "proc"
T0 = 1_760_000_000.0


def _event(type_: str, run_id: str, seq: int, ts: float, data: dict) -> Event:
    raw = {
        "v": 1,
        "type": type_,
        "team": TEAM,
        "project": PROJECT,
        "run_id": run_id,
        "seq": seq,
        "ts": ts,
        "data": data,
    }
    return validate(raw)


def run_events(run_id: str, seed: int, steps: int = 600, rows: int = 100) -> tuple[list[Event], np.ndarray]:
    """A whole run as the SDK sends it, and its loss curve."""
    rng = np.random.default_rng(seed)
    loss = 2 * np.exp(-np.arange(steps) / 200) + rng.normal(0, 0.05, steps)
    seq = (int(T0) << 32) + 1
    out = [
        _event(
            RUN_START,
            run_id,
            seq,
            T0,
            {
                "name": run_id,
                "config": {"lr": 0.01 * (seed + 1), "opt": {"name": "adam"}},
                "tags": ["base"],
                "group": "g1",
                "git": {"commit": "abc"},
            },
        )
    ]
    out.append(_event(RUN_UPDATE, run_id, seq + 1, T0 + 0.1, {"define_metric": [{"name": "loss", "summary": "min"}]}))
    seq += 2
    for start in range(0, steps, rows):
        s = list(range(start, start + rows))
        values: dict[str, list[Any]] = {
            "loss": [float(v) for v in loss[start : start + rows]],
            "acc": [None if i % 2 else i / steps for i in s],
        }
        if start == 200:
            values["loss"][5] = "NaN"
        out.append(_event(METRICS, run_id, seq, T0 + start, {"step": s, "time": [T0 + i for i in s], "values": values}))
        out.append(
            _event(SYSTEM, run_id, seq + 1, T0 + start, {"time": [T0 + start], "values": {"cpu": [50.0 + start]}})
        )
        out.append(_event(HEARTBEAT, run_id, seq + 2, T0 + start, {"step": start}))
        seq += 3
    out.append(
        _event(
            CONSOLE,
            run_id,
            seq,
            T0 + 1,
            {"time": [T0 + 1, T0 + 2], "stream": ["stdout", "stderr"], "line": ["hi", "oops"]},
        )
    )
    out.append(
        _event(
            FILE,
            run_id,
            seq + 1,
            T0 + 2,
            {"path": "model.pt", "kind": "file", "size": 3, "sha256": "a" * 64, "store_key": "k1"},
        )
    )
    out.append(
        _event(
            ALERT, run_id, seq + 2, T0 + 3, {"title": "hello", "text": "from the sdk", "level": "INFO", "source": "sdk"}
        )
    )
    out.append(_event(RUN_UPDATE, run_id, seq + 3, T0 + 4, {"summary": {"best": 7}, "tags": ["base", "edited"]}))
    out.append(_event(RUN_FINISH, run_id, seq + 4, T0 + steps, {"state": "finished", "exit_code": 0}))
    return out, loss


def _client(dsn_base: str, suffix: str):
    client = connect(f"{dsn_base.split('?')[0]}?database=proc_{suffix}_{uuid.uuid4().hex[:8]}")
    migrate(client)
    return client


SNAPSHOTS = {
    "metric_points": "SELECT run_id, metric, step, value FROM metric_points FINAL ORDER BY ALL",
    "metric_buckets": "SELECT run_id, metric, level, bucket, count, nonfinite, min, max, sum, first, last FROM metric_buckets FINAL ORDER BY ALL",
    "metric_steps": "SELECT run_id, step, time FROM metric_steps FINAL ORDER BY ALL",
    "runs": "SELECT run_id, name, state, created_at, heartbeat_at, finished_at, exit_code, run_group, tags, config, config_num, git FROM runs FINAL ORDER BY ALL",
    "run_summaries": "SELECT run_id, summary, summary_num FROM run_summaries FINAL ORDER BY ALL",
    "metric_summaries": "SELECT * EXCEPT version FROM metric_summaries FINAL ORDER BY ALL",
    "system_points": "SELECT run_id, metric, time, value FROM system_points FINAL ORDER BY ALL",
    "console_lines": "SELECT * FROM console_lines FINAL ORDER BY ALL",
    "run_files": "SELECT * FROM run_files FINAL ORDER BY ALL",
    "alerts": "SELECT * FROM alerts FINAL ORDER BY ALL",
}


def snapshot(client) -> dict[str, list]:
    return {
        name: [tuple(repr(v) for v in row) for row in client.query(sql).result_rows] for name, sql in SNAPSHOTS.items()
    }


def test_every_event_twice_and_replays_give_the_same_tables(clickhouse_dsn):
    stream = [e for i in range(3) for e in run_events(f"run{i}", i)[0]]

    once = _client(clickhouse_dsn, "once")
    Pipeline(lambda: once).handle(stream)
    expected = snapshot(once)
    assert len(expected["metric_points"]) == 3 * (600 + 300)
    assert {r[2] for r in expected["runs"]} == {"'finished'"}

    twice = _client(clickhouse_dsn, "twice")
    Pipeline(lambda: twice).handle([e for event in stream for e in (event, event)])
    assert snapshot(twice) == expected

    # A worker that crashed after writing but before storing its states replays onto the old states ...
    replay_old = _client(clickhouse_dsn, "replay_old")
    pipeline = Pipeline(lambda: replay_old)
    for start in range(0, len(stream), 7):
        batch = stream[start : start + 7]
        pipeline.processor.process(batch, pipeline.states)  # rows written, states never stored
        pipeline.handle(batch)  # redelivered
    assert snapshot(replay_old) == expected

    # ... and one that stored its states but not its offsets replays onto the new ones,
    # in the same process or after a restart (states read back from ClickHouse).
    replay_new = _client(clickhouse_dsn, "replay_new")
    pipeline = Pipeline(lambda: replay_new)
    pipeline.handle(stream)
    pipeline.handle(stream)
    Pipeline(lambda: replay_new).handle(stream)
    assert snapshot(replay_new) == expected


def test_summaries_follow_define_metric_and_explicit_values(clickhouse):
    stream, loss = run_events("s1", 5)
    Pipeline(lambda: clickhouse).handle(stream)
    summary = clickhouse.query("SELECT summary FROM run_summaries FINAL WHERE run_id = 's1'").result_rows[0][0]
    finite = loss.copy()
    finite[205] = np.nan
    assert orjson.loads(summary["loss.min"]) == np.nanmin(
        finite
    )  # define_metric summary="min": {"loss": {"min": ...}}, as in wandb
    assert orjson.loads(summary["best"]) == 7 and orjson.loads(summary["acc"]) == 598 / 600  # last by step
    row = clickhouse.query(
        "SELECT last, min, max, mean, count, nan_count, first_step, last_step FROM metric_summaries FINAL "
        "WHERE run_id = 's1' AND metric = 'loss'"
    ).result_rows[0]
    assert row[0] == loss[-1] and row[1] == np.nanmin(finite) and row[2] == np.nanmax(finite)
    assert math.isclose(row[3], np.nanmean(finite)) and row[4:] == (600, 1, 0, 599)
    run = clickhouse.query("SELECT tags, config, state, exit_code FROM runs FINAL WHERE run_id = 's1'").result_rows[0]
    assert run[0] == ["base", "edited"] and run[1]["opt.name"] == '"adam"' and run[2:] == ("finished", 0)


def _rule(client, rule_id: str, kind: str, spec: dict, cooldown_s: int = 300) -> None:
    client.insert(
        "alert_rules",
        [[TEAM, PROJECT, rule_id, rule_id, kind, orjson.dumps(spec).decode(), True, cooldown_s, 0, 0, 1, 0]],
        column_names=[
            "team",
            "project",
            "rule_id",
            "name",
            "kind",
            "spec",
            "enabled",
            "cooldown_s",
            "created_at",
            "updated_at",
            "version",
            "is_deleted",
        ],
    )


def _metrics(run_id: str, seq: int, steps: list[int], values: dict, t0: float = T0) -> Event:
    return _event(
        METRICS, run_id, seq, t0 + steps[-1], {"step": steps, "time": [t0 + s for s in steps], "values": values}
    )


def _alerts(client) -> list[tuple]:
    return client.query(
        "SELECT rule_id, run_id, title FROM alerts FINAL WHERE source = 'rule' ORDER BY time, rule_id"
    ).result_rows


def test_rules_fire_once_per_condition(clickhouse):
    _rule(clickhouse, "big-loss", "threshold", {"metric": "loss", "op": ">", "value": 10}, cooldown_s=0)
    _rule(clickhouse, "nan", "nonfinite", {"metric": "*"})
    _rule(clickhouse, "diverge", "divergence", {"metric": "val", "percent": 50, "within_steps": 10})
    _rule(clickhouse, "plateau", "stall", {"metric": "acc", "patience": 5, "goal": "maximize"})
    pipeline = Pipeline(lambda: clickhouse, rules_ttl_s=0)
    pipeline.handle([_event(RUN_START, "a1", 1, T0, {"name": "a1"})])
    pipeline.handle([_metrics("a1", 2, [0, 1, 2, 3], {"loss": [1.0, 11.0, 12.0, 13.0]})])  # one crossing, one alert
    assert [r[0] for r in _alerts(clickhouse)] == ["big-loss"]
    pipeline.handle([_metrics("a1", 2, [0, 1, 2, 3], {"loss": [1.0, 11.0, 12.0, 13.0]})])  # redelivered: nothing new
    pipeline.handle([_metrics("a1", 3, [4, 5], {"loss": [2.0, 20.0]})])  # falls, then crosses again
    pipeline.handle([_metrics("a1", 4, [6, 7], {"loss": ["NaN", 1.0], "val": [1.0, 1.1]})])
    pipeline.handle([_metrics("a1", 5, [8, 9, 10], {"val": [1.2, 1.6, 1.7]})])  # 60% over its best within 10 steps
    pipeline.handle([_metrics("a1", 6, list(range(11, 20)), {"acc": [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]})])
    assert [r[0] for r in _alerts(clickhouse)] == ["big-loss", "big-loss", "nan", "diverge", "plateau"]


def test_crash_after_silence_fires_a_state_rule_and_a_heartbeat_revives_the_run(clickhouse):
    _rule(clickhouse, "crashed", "run_state", {"states": ["crashed"], "level": "ERROR"})
    _rule(clickhouse, "stalled", "stall", {"seconds": 30})
    pipeline = Pipeline(lambda: clickhouse, rules_ttl_s=0)
    now = time.time()
    pipeline.handle(
        [
            _event(RUN_START, "c1", 1, now - 100, {"name": "c1"}),
            _metrics("c1", 2, [0, 1], {"loss": [1.0, 0.9]}, t0=now - 100),
        ]
    )
    later = time.time() + 100  # the server's clock: the run has been silent for 100 s
    pipeline.sweep(timeout_s=300, now=later)  # not crashed yet, but stalled (no new step for 199 s)
    state = lambda: clickhouse.query("SELECT state FROM runs FINAL WHERE run_id = 'c1'").result_rows[0][0]  # noqa: E731
    assert state() == "running"
    assert [r[0] for r in _alerts(clickhouse)] == ["stalled"]
    pipeline.sweep(timeout_s=60, now=later)
    assert state() == "crashed"
    assert sorted(r[0] for r in _alerts(clickhouse)) == ["crashed", "stalled"]
    pipeline.sweep(timeout_s=60, now=later + 1)  # still crashed, still stalled: the same two alerts
    assert len(_alerts(clickhouse)) == 2
    pipeline.handle([_event(HEARTBEAT, "c1", 3, now + 2, {})])
    assert state() == "running"


def test_a_replayed_crash_decision_does_not_override_a_live_run(clickhouse):
    pipeline = Pipeline(lambda: clickhouse)
    pipeline.handle([_event(RUN_START, "l1", 1, T0, {"name": "l1"})])
    late = pipeline.processor.sweep(timeout_s=10, now=time.time() + 60)
    assert [e.data["state"] for e in late] == ["crashed"]
    pipeline.handle([_event(HEARTBEAT, "l1", 2, T0 + 61, {})])  # the run spoke after the sweep looked
    pipeline.handle(late)
    assert clickhouse.query("SELECT state FROM runs FINAL WHERE run_id = 'l1'").result_rows[0][0] == "running"


def test_processor_alone_returns_what_to_publish(clickhouse):
    processor = Processor(lambda: clickhouse)
    out = processor.process(
        [
            _event(RUN_START, "p1", 1, T0, {"name": "p1"}),
            _event(RUN_FINISH, "p1", 2, T0 + 1, {"state": "failed", "exit_code": 3}),
        ],
        {},
    )
    assert [(e.type, e.data["state"]) for e in out.publish] == [("run_state", "running"), ("run_state", "failed")]
    assert out.states[("acme", "proc", "p1")]["record"]["state"] == "failed"


def test_steps_logged_again_are_counted_once_with_their_newer_values(clickhouse_dsn):
    """A run resumed from a checkpoint logs its last steps again: history keeps the newer values,
    and the summaries count each step once, with those values."""
    client = _client(clickhouse_dsn, "relog")
    seq = (int(T0) << 32) + 1
    first = [10.0 - 0.1 * s for s in range(100)]
    again = [5.0 + 0.01 * s for s in range(50, 150)]
    stream = [
        _event(RUN_START, "r", seq, T0, {"name": "r"}),
        _event(RUN_UPDATE, "r", seq + 1, T0, {"define_metric": [{"name": "loss", "summary": "mean"}]}),
        _metrics("r", seq + 2, list(range(0, 60)), {"loss": first[:60]}),
        _metrics("r", seq + 3, list(range(60, 100)), {"loss": first[60:]}),
        # The resumed process: steps 50..149, the first 50 of them logged before.
        _metrics("r", seq + 4, list(range(50, 100)), {"loss": again[:50]}, t0=T0 + 1000),
        _metrics("r", seq + 5, list(range(100, 150)), {"loss": again[50:]}, t0=T0 + 1000),
        # One step twice in a batch: the later row is the one kept.
        _metrics("r", seq + 6, [150, 150], {"loss": [99.0, 7.0]}, t0=T0 + 1000),
    ]
    pipeline = Pipeline(lambda: client)
    pipeline.handle(stream[:4])  # the first process
    pipeline.handle(stream[4:])  # the resumed one
    kept = client.query("SELECT value FROM metric_points FINAL WHERE run_id = 'r' ORDER BY step").result_rows
    history = [v for (v,) in kept]
    assert history == first[:50] + again + [7.0]
    row = client.query(
        "SELECT last, min, max, mean, count, first_step, last_step, first_time, last_time "
        "FROM metric_summaries FINAL WHERE run_id = 'r' AND metric = 'loss'"
    ).result_rows[0]
    assert row[4] == 151 and row[:3] == (7.0, min(history), max(history))
    assert math.isclose(row[3], sum(history) / len(history))
    assert row[5:7] == (0, 150) and row[7].timestamp() == T0 and row[8].timestamp() == T0 + 1150
    summary = client.query("SELECT summary FROM run_summaries FINAL WHERE run_id = 'r'").result_rows[0][0]
    assert math.isclose(
        orjson.loads(summary["loss.mean"]), sum(history) / len(history)
    )  # define_metric mean: {"loss": {"mean": ...}}
    # Redelivered, the same batches change nothing.
    before = snapshot(client)
    pipeline.handle(stream)
    Pipeline(lambda: client).handle(stream[4:])
    assert snapshot(client) == before


def test_a_restated_metric_keeps_its_own_steps_times_and_last_value(clickhouse_dsn):
    client = _client(clickhouse_dsn, "relog_times")
    seq = (int(T0) << 32) + 1
    pipeline = Pipeline(lambda: client)
    pipeline.handle(
        [
            _event(RUN_START, "r", seq, T0, {"name": "r"}),
            _metrics("r", seq + 1, [0, 10], {"loss": [0.5, 2.0]}),
            # Another metric at step 10, later: step 10's time in metric_steps moves, loss's must not.
            _metrics("r", seq + 2, [10], {"val": [1.0]}, t0=T0 + 490),
        ]
    )
    # Step 0 again, replacing the minimum: the statistics are recomputed from history.
    pipeline.handle([_metrics("r", seq + 3, [0], {"loss": [1.5]}, t0=T0 + 600)])
    row = client.query(
        "SELECT min, max, mean, count, first_step, last_step, first_time, last_time, last "
        "FROM metric_summaries FINAL WHERE run_id = 'r' AND metric = 'loss'"
    ).result_rows[0]
    assert row[:6] == (1.5, 2.0, 1.75, 2, 0, 10)
    assert row[6].timestamp() == T0 and row[7].timestamp() == T0 + 10 and row[8] == 2.0


def test_history_statistics_count_only_events_up_to_the_limit(clickhouse_dsn):
    """Points of events a state has not folded yet (written before a crash) stay out of a rescan."""
    from runstream.storage.history import metric_statistics
    from runstream.storage.writer import insert_metric_points

    client = _client(clickhouse_dsn, "relog_limit")
    # Separate inserts, as separate batches write them (one insert keeps only the newest row of a step).
    insert_metric_points(client, [_metrics("r", 10, [0, 1, 2], {"loss": [3.0, 2.0, 1.0]})])
    insert_metric_points(
        client, [_metrics("r", 11, [1, 2], {"loss": [5.0, "NaN"]}), _metrics("q", 12, [0], {"loss": [9.0]})]
    )
    assert metric_statistics(client, TEAM, PROJECT, {"r": (10, ["loss"])})[("r", "loss")] == {
        "count": 3,
        "sum": 6.0,
        "min": 1.0,
        "max": 3.0,
        "nan": 0,
        "inf": 0,
    }
    got = metric_statistics(client, TEAM, PROJECT, {"r": (11, ["loss"]), "q": (11, ["loss"])})
    assert got == {("r", "loss"): {"count": 2, "sum": 8.0, "min": 3.0, "max": 5.0, "nan": 1, "inf": 0}}


def test_a_rule_alert_that_could_not_be_stored_fires_when_the_batch_is_sent_again(clickhouse_dsn, monkeypatch):
    """Embedded: the run state remembers a rule fired, so the rule's alert is stored before that state is;
    a batch that fails on the way is sent again by the SDK and fires it then (it is never lost)."""
    client = connect(clickhouse_dsn)
    migrate(client)
    _rule(client, "big-loss", "threshold", {"metric": "loss", "op": ">", "value": 10}, cooldown_s=0)
    pipeline = Pipeline(lambda: client, rules_ttl_s=0)
    pipeline.handle([_event(RUN_START, "b1", 1, T0, {"name": "b1"})])
    store_alerts = pipeline.processor.store_alerts
    failures = []

    def fails_once(alerts: list[Event]) -> None:
        if alerts and not failures:
            failures.append(alerts)
            raise ConnectionError("ClickHouse went away")
        store_alerts(alerts)

    monkeypatch.setattr(pipeline.processor, "store_alerts", fails_once)
    batch = [_metrics("b1", 2, [0, 1], {"loss": [1.0, 11.0]})]
    try:
        pipeline.handle(batch)
    except ConnectionError:
        pass  # the server answers 503 and the SDK sends the batch again
    assert failures and [a.data["rule_id"] for a in failures[0]] == ["big-loss"]
    pipeline.handle(batch)
    assert [r[0] for r in _alerts(client)] == ["big-loss"]
