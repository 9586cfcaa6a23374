"""The processing logic, framework-free: one batch of events in, tables and new events out.

Both drivers call ``Processor.process`` with a batch of valid events (any mix
of types, in arrival order) and a mapping of run states:

- the Faust worker (``streams/app.py``), with a changelog-backed table and the
  events of its partitions; it publishes what comes back to Kafka;
- the embedded server, with a dict, without Kafka; it feeds what comes back
  into the next batch itself.

A batch is handled in this order, so that a crash anywhere is repaired by
redelivering the batch:

1. raw rows (metric points and their buckets, system samples, console lines,
   files, alerts) are written: identity-keyed, so writing twice is harmless;
2. run states are folded on copies: lifecycle, summaries, alert rule memory;
   events already folded (by seq) are skipped;
3. derived rows (runs, run summaries, metric summaries) are written whole;
4. only then does the caller store the new states and commit the offsets.

A crash before 4 replays the batch onto the old states and rewrites the same
rows; a crash after it skips what was folded.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream import events
from runstream.events import ALERT, CONSOLE, FILE, HEARTBEAT, METRICS, RUN_FINISH, RUN_START, RUN_STATE, RUN_UPDATE, SYSTEM, Event
from runstream.storage.writer import (
    insert_alerts,
    insert_console_lines,
    insert_files,
    insert_metric_points,
    insert_system_points,
    upsert_metric_summaries,
    upsert_run_summaries,
    upsert_runs,
)
from runstream.streams import runstate, summaries
from runstream.streams.alerting import Evaluator, Fired, Rule, rule_from_row
from runstream.streams.runstate import StateChange

RunKey = str
_RUN_EVENTS = (RUN_START, RUN_UPDATE, RUN_FINISH, HEARTBEAT, RUN_STATE)


def run_key(team: str, project: str, run_id: str) -> RunKey:
    return f"{team}/{project}/{run_id}"


class RuleBook:
    """The enabled alert rules of each project, read from ClickHouse and cached for ``ttl_s``."""

    def __init__(self, client: Callable[[], Client], ttl_s: float = 1.0) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, list[Rule]]] = {}
        self._lock = threading.Lock()

    def rules(self, team: str, project: str) -> list[Rule]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get((team, project))
            if hit and now - hit[0] < self._ttl_s:
                return hit[1]
        rows = self._client().query(
            "SELECT team, project, rule_id, name, kind, spec, cooldown_s FROM alert_rules FINAL "
            "WHERE team = {t:String} AND project = {p:String} AND enabled",
            parameters={"t": team, "p": project},
        ).named_results()
        rules = []
        for row in rows:
            try:
                rules.append(rule_from_row(row))
            except ValueError:
                continue  # the API validates specs; a row it did not write is skipped, not fatal
        with self._lock:
            self._cache[(team, project)] = (now, rules)
        return rules


def sdk_alert_id(event: Event) -> str:
    """An SDK alert's id: its run and seq, so a resent alert is the same alert."""
    if event.data.get("alert_id"):
        return event.data["alert_id"]
    return hashlib.sha256(f"{event.team}/{event.project}/{event.run_id}\0{event.seq}".encode()).hexdigest()[:32]


@dataclass
class Output:
    """What a batch produced: states to store and events to publish."""

    states: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    publish: list[Event] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _new_run_state(event: Event) -> dict[str, Any]:
    state = runstate.new_state(event)
    state["summary"] = summaries.new_summary()
    state["alerts"] = {}
    return state


class Processor:
    def __init__(self, client: Callable[[], Client], rules: RuleBook | None = None, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self.rules = rules or RuleBook(client)
        self.clock = clock

    def process(self, batch: Sequence[Event], states: Mapping[RunKey, dict[str, Any]]) -> Output:
        client = self._client()
        out = Output()
        by_type: dict[str, list[Event]] = {}
        for event in batch:
            by_type.setdefault(event.type, []).append(event)

        # 1. raw rows
        out.counts["points"] = insert_metric_points(client, by_type.get(METRICS, []))
        out.counts["system"] = insert_system_points(client, by_type.get(SYSTEM, []))
        out.counts["console"] = insert_console_lines(client, by_type.get(CONSOLE, []))
        out.counts["files"] = insert_files(client, by_type.get(FILE, []))
        alert_rows = [_alert_row(e) for e in by_type.get(ALERT, [])]
        out.counts["alerts"] = insert_alerts(client, alert_rows)

        # 2. fold states, on copies
        changed_runs: set[RunKey] = set()
        changed_summaries: dict[RunKey, set[str]] = {}
        summary_touched: set[RunKey] = set()
        for event in batch:
            if event.type == ALERT:
                continue  # alerts do not prove the run alive: rule alerts come from this processor
            key = run_key(event.team, event.project, event.run_id)
            state = out.states.get(key)
            if state is None:
                known = states.get(key)
                state = copy.deepcopy(known) if known is not None else _new_run_state(event)
                out.states[key] = state
            changes: list[StateChange] = []
            runstate.apply(state, event, changes)
            if event.type != RUN_STATE or changes:  # a reported state change alters nothing
                changed_runs.add(key)
            evaluator = Evaluator(self.rules.rules(event.team, event.project), state["alerts"])
            if event.type == METRICS:
                names = summaries.fold_metrics(state["summary"], event)
                if names:
                    changed_summaries.setdefault(key, set()).update(names)
                    summary_touched.add(key)
                    evaluator.metrics(event)
            elif event.type == SYSTEM:
                evaluator.system(event)
            elif event.type == RUN_UPDATE and summaries.fold_update(state["summary"], event):
                summary_touched.add(key)
            for change in changes:
                evaluator.state_change(change.run_id, change.new, change.at, change.reason)
                out.publish.append(_state_event(change))
            out.changes += changes
            out.fired += evaluator.fired

        # 3. derived rows, written whole
        upsert_runs(client, [runstate.record_for_write(out.states[k]) for k in sorted(changed_runs)])
        run_summaries, metric_rows = [], []
        for key in sorted(summary_touched):
            state = out.states[key]
            record = state["record"]
            version = runstate.next_version(state.get("summary_version", 0))
            state["summary_version"] = version
            run_summaries.append({"team": record["team"], "project": record["project"], "run_id": record["run_id"],
                                  "summary": summaries.run_summary(state["summary"]), "version": version})
            metric_rows += summaries.metric_summary_rows(state["summary"], record["team"], record["project"],
                                                         record["run_id"], version, changed_summaries.get(key, set()))
        upsert_run_summaries(client, run_summaries)
        upsert_metric_summaries(client, metric_rows)
        out.publish += [_alert_event(f, self.clock()) for f in out.fired]
        return out

    def sweep(self, states: Mapping[RunKey, dict[str, Any]], timeout_s: float, now: float | None = None) -> list[Event]:
        """Time-based checks, run periodically: silent runs become crashed (as ``run_state`` events),
        and stall rules on wall time fire. Reads states only; what it finds comes back as events."""
        now = self.clock() if now is None else now
        out: list[Event] = []
        for state in runstate.silent_runs(states, now, timeout_s):
            record = state["record"]
            out.append(Event(RUN_STATE, record["team"], record["project"], record["run_id"], 0, now,
                             runstate.crash_event_data(state, now)))
        for state in states.values():
            record = state["record"]
            if record["state"] != "running":
                continue
            rules = [r for r in self.rules.rules(record["team"], record["project"]) if r.kind == "stall"]
            if not rules:
                continue
            times = [s["last_time"] for s in state["summary"]["metrics"].values() if s["last_time"] is not None]
            evaluator = Evaluator(rules, copy.deepcopy(state["alerts"]))
            evaluator.sweep(record["run_id"], now, max(times) if times else None)
            out += [_alert_event(f, now) for f in evaluator.fired]
        return out


def _alert_row(event: Event) -> dict[str, Any]:
    return {
        "team": event.team, "project": event.project, "run_id": event.run_id, "alert_id": sdk_alert_id(event),
        "rule_id": event.data.get("rule_id"), "source": event.data["source"], "level": event.data["level"],
        "title": event.data["title"], "text": event.data["text"], "time": event.ts,
    }


def _alert_event(fired: Fired, now: float) -> Event:
    rule = fired.rule
    return Event(ALERT, rule.team, rule.project, fired.run_id, 0, fired.at or now, fired.event_data())


def _state_event(change: StateChange) -> Event:
    data = {"state": change.new, "reason": (change.reason or "")[: events.MAX_TEXT_LEN] or None}
    return Event(RUN_STATE, change.team, change.project, change.run_id, 0, change.at, data)


def encode_state(state: dict[str, Any]) -> bytes:
    return orjson.dumps(state)


def decode_state(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)
