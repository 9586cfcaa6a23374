"""The processing logic, framework-free: one batch of events in, tables and new events out.

``streams/batch.py`` calls ``Processor.process`` with a batch of valid events
(any mix of types, in arrival order), publishes what it returns, then calls
``Processor.commit``, for both drivers:

- the Faust worker (``streams/app.py``) publishes to Kafka and then lets Faust
  commit the batch's offsets;
- the embedded server (``streams/pipeline.py``) feeds what comes back into its
  next batch itself.

Each run's processor state (lifecycle, summary statistics, alert rule memory)
is a JSON document in ``run_states``, loaded when a batch has events of the
run (a driver may keep a cache: the embedded server, the only writer, does).
A batch is handled in this order, so that a crash anywhere is repaired by
redelivering the batch:

1. raw rows (metric points and their buckets, system samples, console lines,
   files, artifacts, alerts) are written: identity-keyed, so writing twice is harmless;
2. run states are folded on copies: events already folded (by seq) are skipped;
   metrics that logged a step of an earlier batch again get their statistics
   recomputed from step 1's rows (``_restate``);
3. derived rows (runs, run summaries, metric summaries) are written whole;
4. the caller publishes the produced events (state changes, rule alerts);
5. ``commit`` stores the states; then the offsets may be committed.

A crash before 5 replays the batch onto the old states, rewrites the same
rows and publishes the same events again (alert ids are derived from their
trigger, so they stay one alert); a crash after it skips what was folded
(each state remembers the highest seq folded from the runs, metrics and
system topics).

Runs of a sweep get hyperband early termination as their metric is folded in
step 2 (``_hyperband``, docs/sweeps.md): a run's value at a bracket goes to
``sweep_milestones``, and a run worse than the bracket's cut is told to stop
(``sweep_stops``, the run state's ``stop``, an alert), so that it ends ``stopped``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream import events
from runstream.events import (
    ALERT,
    ARTIFACT,
    CONSOLE,
    FILE,
    METRICS,
    RUN_EDIT,
    RUN_FINISH,
    RUN_START,
    RUN_STATE,
    RUN_UPDATE,
    SYSTEM,
    Event,
)
from runstream.storage import artifacts, buckets, deletion, lineage, processing, sweep_stops
from runstream.storage.history import metric_statistics, run_metrics
from runstream.storage.writer import (
    RunKey,
    insert_alerts,
    insert_console_lines,
    insert_files,
    insert_metric_points,
    insert_system_points,
    load_run_states,
    upsert_metric_summaries,
    upsert_run_states,
    upsert_run_summaries,
    upsert_runs,
)
from runstream.streams import runstate, summaries
from runstream.streams.alerting import Evaluator, Fired, Rule, rule_from_row
from runstream.streams.runstate import RunState, StateChange
from runstream.streams.sweep_controller import Hyperband
from runstream.sweep_config import SweepConfigError, validate

log = logging.getLogger(__name__)


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
        rules = []
        for row in processing.enabled_rules(self._client(), team, project):
            try:
                rules.append(rule_from_row(row))
            except ValueError:
                continue  # the API validates specs; a row it did not write is skipped, not fatal
        with self._lock:
            self._cache[(team, project)] = (now, rules)
        return rules


@dataclass(frozen=True)
class EarlyStop:
    """A sweep's hyperband early termination: its metric, the metric's goal, and where the brackets are."""

    sweep_id: str
    metric: str
    goal: str
    hyperband: Hyperband
    brackets: frozenset[int]


class SweepBook:
    """Each sweep's hyperband (None: the sweep has none, is not known, or its configuration is not valid),
    read from ClickHouse and cached for ``ttl_s``, as ``RuleBook`` does for rules."""

    def __init__(self, client: Callable[[], Client], ttl_s: float = 1.0) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str, str], tuple[float, EarlyStop | None]] = {}
        self._lock = threading.Lock()

    def early_stop(self, team: str, project: str, sweep_id: str) -> EarlyStop | None:
        now = time.monotonic()
        key = (team, project, sweep_id)
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < self._ttl_s:
                return hit[1]
        found = None
        raw = sweep_stops.sweep_config(self._client(), team, project, sweep_id)
        try:
            cfg = validate(orjson.loads(raw)) if raw is not None else None
        except (orjson.JSONDecodeError, SweepConfigError) as exc:  # the API validates; a row it did not write
            log.warning("sweep %s/%s/%s: its configuration is not valid, so no early termination (%s)", *key, exc)
            cfg = None
        if cfg is not None and cfg.early_terminate is not None and cfg.metric is not None:
            hyperband = cfg.early_terminate
            found = EarlyStop(sweep_id, cfg.metric.name, cfg.metric.goal, hyperband, frozenset(hyperband.brackets()))
        with self._lock:
            self._cache[key] = (now, found)
        return found


#: Pending upper bucket levels written this long ago were left by a driver that stopped (a crash, a
#: rebalance): any driver's sweep refreshes them. A live driver refreshes its own within UPPER_LEVELS_EVERY_S
#: (after a batch) or its next sweep.
ORPHANED_LEVELS_AFTER_S = 30.0

#: Metric values per processed chunk: bounds a batch's memory and the time before its points show.
CHUNK_POINTS = 2_000_000


def chunks(batch: Sequence[Event], max_points: int = CHUNK_POINTS) -> list[list[Event]]:
    """Cut a batch, in order, into chunks of about ``max_points`` metric values (an SDK event can hold 100,000 rows)."""
    out: list[list[Event]] = [[]]
    size = 0
    for event in batch:
        weight = len(event.data["step"]) * len(event.data["values"]) if event.type == METRICS else 1
        if out[-1] and size + weight > max_points:
            out.append([])
            size = 0
        out[-1].append(event)
        size += weight
    return [c for c in out if c]


def alert_id_of(event: Event) -> str:
    """An alert event's id: a rule alert carries one derived from its trigger; an SDK alert's
    is its run and seq, so a resent alert is the same alert."""
    if event.data.get("alert_id"):
        return event.data["alert_id"]
    return hashlib.sha256(f"{event.team}/{event.project}/{event.run_id}\0{event.seq}".encode()).hexdigest()[:32]


@dataclass
class Output:
    """What a batch produced: states to store and events to publish."""

    states: dict[RunKey, RunState] = field(default_factory=dict)
    publish: list[Event] = field(default_factory=list)
    #: Runs whose upper bucket levels the batch left pending (``defer_upper``).
    pending_levels: set[RunKey] = field(default_factory=set)


def folded(state: RunState) -> int:
    """How many SDK events (and user edits) a state has folded: the version of every row written from it.

    A version that grows with what was folded (not with the clock) makes a worker that
    lost a run's partition in the middle of a batch harmless: its late write, from the
    same stored state plus fewer events, carries a smaller version than the new owner's.
    Writes that fold nothing (a crash decided by the sweep) keep the version and win as
    the later insert.
    """
    return state.get("folded", 0)


def last_seq(state: RunState) -> int | None:
    """The largest SDK sequence number folded into a run's state (None before any): a resumed run
    must number its events above it, or they are taken for replays."""
    seqs = [state.get("runs_seq", -1), state.get("summary", {}).get("metrics_seq", -1), state.get("system_seq", -1)]
    return max(seqs) if max(seqs) >= 0 else None


class Processor:
    def __init__(
        self,
        client: Callable[[], Client],
        rules: RuleBook | None = None,
        clock: Callable[[], float] = time.time,
        sweeps: SweepBook | None = None,
    ) -> None:
        self._client = client
        self.rules = rules or RuleBook(client)
        self.sweeps = sweeps or SweepBook(client)
        self.clock = clock
        self.tombstone_cache = deletion.TombstoneCache()

    def process(
        self, batch: Sequence[Event], cache: Mapping[RunKey, RunState] | None = None, defer_upper: bool = False
    ) -> Output:
        """Write the batch's rows and fold it into its runs' states (returned, not yet stored).

        ``defer_upper``: bucket levels 2 and up are left pending for ``refresh_upper_levels``."""
        client = self._client()
        out = Output()
        states = self._states(client, batch, cache or {})
        by_type: dict[str, list[Event]] = {}
        for event in batch:
            by_type.setdefault(event.type, []).append(event)

        # 1. raw rows
        metrics = by_type.get(METRICS, [])
        stored_seqs = {k: s["summary"]["metrics_seq"] for k, s in states.items()}  # new runs: nothing stored
        metrics, stored_seqs = _rewound(batch, metrics, states, stored_seqs)
        insert_metric_points(client, metrics, defer_upper=defer_upper, stored_seqs=stored_seqs)
        if defer_upper:
            out.pending_levels = {(e.team, e.project, e.run_id) for e in metrics}
        insert_system_points(client, by_type.get(SYSTEM, []))
        insert_console_lines(client, by_type.get(CONSOLE, []))
        insert_files(client, by_type.get(FILE, []))
        artifacts.insert_artifact_events(client, by_type.get(ARTIFACT, []), self.clock())  # versions, aliases, usage
        self.store_alerts(by_type.get(ALERT, []))

        # 2. fold states, on copies
        now = self.clock()
        fired: list[Fired] = []
        changed_runs: set[RunKey] = set()
        changed_summaries: dict[RunKey, set[str]] = {}
        relogged: dict[RunKey, set[str]] = {}
        forked: dict[RunKey, float] = {}
        summary_touched: set[RunKey] = set()
        for event in batch:
            if event.type == ALERT:
                continue  # alerts do not prove the run alive: rule alerts come from this processor
            key = (event.team, event.project, event.run_id)
            state = out.states.get(key)
            if state is None:
                known = states.get(key)
                # Folded on a copy (a failed batch leaves the driver's cache as it was); a JSON round trip
                # copies a state (plain JSON by design) several times faster than deepcopy.
                state = orjson.loads(orjson.dumps(known)) if known is not None else runstate.new_state(event)
                out.states[key] = state
            changes: list[StateChange] = []
            had_fork = "fork" in state["record"]
            rewinds_before = {r["seq"] for r in state["record"].get("rewinds", ())}
            marker = event.data.get("rewind") if event.type == METRICS else None
            if marker and runstate.record_rewind(state, marker["step"], marker["seq"], event.ts):
                changed_runs.add(key)  # a metrics event of a rewound session read before its run_start
            if event.type == RUN_FINISH and event.seq > state["runs_seq"] and state["record"].get("sweep"):
                self._told_to_stop(client, state)
            applied = runstate.apply(state, event, changes, now)
            if applied and (event.type != RUN_STATE or changes):  # a reported state change alters nothing
                changed_runs.add(key)
            if not had_fork and "fork" in state["record"]:
                forked[key] = event.ts  # its statistics start from its parent's history up to the fork step
            for rewind in state["record"].get("rewinds", ()):
                if rewind["seq"] in rewinds_before:
                    continue
                # The statistics cover the history the rewind kept (restated below), and the next step logged
                # after the rewind step is the metric's last again.
                for name, stats in state["summary"]["metrics"].items():
                    if stats["last_step"] > rewind["step"]:
                        stats["last_step"] = rewind["step"]
                        relogged.setdefault(key, set()).add(name)
                        changed_summaries.setdefault(key, set()).add(name)
                        summary_touched.add(key)
            evaluator = Evaluator(self.rules.rules(event.team, event.project), state["alerts"])
            # An SDK event or a user's edit not folded before: the written rows' version grows.
            new = applied and event.type in (*runstate.RUN_EVENTS, RUN_EDIT)
            if event.type == METRICS:
                new = event.seq > state["summary"]["metrics_seq"]
                if new and state["record"].get("sweep"):  # before folding: a late count starts from the summary
                    out.publish += self._hyperband(client, state, event)
                if again := summaries.relogged(state["summary"], event):
                    relogged.setdefault(key, set()).update(again)
                names = summaries.fold_metrics(state["summary"], event)
                if names:
                    changed_summaries.setdefault(key, set()).update(names)
                    summary_touched.add(key)
                    evaluator.metrics(event)
            elif event.type == SYSTEM:
                new = event.seq > state.get("system_seq", -1)
                if new:  # replays leave rule memory alone
                    state["system_seq"] = event.seq
                    evaluator.system(event)
            elif event.type in (RUN_UPDATE, RUN_EDIT) and applied and summaries.fold_update(state["summary"], event):
                summary_touched.add(key)
            if new:
                state["folded"] = state.get("folded", 0) + 1
            for change in changes:
                evaluator.state_change(change.run_id, change.new, change.at, change.reason)
                out.publish.append(_state_event(change))
            fired += evaluator.fired

        restated, dropped = self._restate(client, relogged, out.states, forked)
        for key, metric in restated:
            changed_summaries.setdefault(key, set()).add(metric)
            summary_touched.add(key)
        for key, metric in dropped:  # no point left in the composed history: its row says so (count 0)
            changed_summaries.get(key, set()).discard(metric)
            summary_touched.add(key)

        # 3. derived rows, written whole
        upsert_runs(client, [_run_row(out.states[k]) for k in sorted(changed_runs)])
        lineage.upsert_lineage(
            client, [_lineage_row(out.states[k]) for k in sorted(changed_runs) if _has_lineage(k, out)]
        )
        run_summaries, metric_rows = [], []
        for key in sorted(summary_touched):
            state = out.states[key]
            record = state["record"]
            version = folded(state)
            run_summaries.append(
                {
                    "team": record["team"],
                    "project": record["project"],
                    "run_id": record["run_id"],
                    "summary": summaries.run_summary(state["summary"]),
                    "version": version,
                }
            )
            metric_rows += summaries.metric_summary_rows(
                state["summary"],
                record["team"],
                record["project"],
                record["run_id"],
                version,
                changed_summaries.get(key, set()),
            )
            metric_rows += [_no_points_row(key, metric, version) for k, metric in sorted(dropped) if k == key]
        upsert_run_summaries(client, run_summaries)
        upsert_metric_summaries(client, metric_rows)
        out.publish += [_alert_event(f, self.clock()) for f in fired]
        return out

    def _hyperband(self, client: Client, state: RunState, event: Event) -> list[Event]:
        """Hyperband early termination (docs/sweeps.md) as a run of a sweep logs its metric: the run's
        iteration is its count of finite values (W&B's filtered history); at each bracket its value is recorded
        (the others' cut is made of these) and the run is told to stop when the value hyperband judges (that
        value, or with ``strict: false`` its best so far) is worse than the cut. The count and the best so far
        are kept in the run state, so they carry over batches and a replay onto the old state repeats the
        decision. Returns the alert of a stop. A failed lookup is logged and skipped: the batch goes on."""
        record = state["record"]
        team, project, run_id = record["team"], record["project"], record["run_id"]
        try:
            found = self.sweeps.early_stop(team, project, record["sweep"])
            if found is None:
                return []
            column = event.data["values"].get(found.metric)
            if column is None:
                return []
            minimize = found.goal == "minimize"
            if "sweep_count" not in state:  # the run's values folded before its sweep was known (or read)
                stats = state["summary"]["metrics"].get(found.metric)
                state["sweep_count"] = stats["count"] if stats else 0  # finite values only
                state["sweep_best"] = (stats["min"] if minimize else stats["max"]) if stats else None
            reached = []
            count, best = state["sweep_count"], state.get("sweep_best")
            for raw, at in zip(column, event.data["time"]):
                value = None if raw is None else float(events.decode_value(raw))
                if value is None or not math.isfinite(value):
                    continue
                count += 1
                best = value if best is None else min(best, value) if minimize else max(best, value)
                if count in found.brackets:
                    reached.append((count, value, best, float(at)))
            state["sweep_count"], state["sweep_best"] = count, best
            alerts = []
            for iteration, value, best_then, at in reached:
                # The value at the bracket, as W&B's cut is made of them whether or not the run is judged by it.
                sweep_stops.insert_milestone(client, team, project, found.sweep_id, iteration, run_id, value, at)
                if record.get("stop") or record["state"] in runstate.FINISHED_STATES:
                    continue  # its value still counts for the runs that reach the bracket later
                others = sweep_stops.bracket_values(client, team, project, found.sweep_id, iteration, run_id)
                reason = found.hyperband.should_stop(value, others, found.goal, best=best_then, iteration=iteration)
                if reason is None:
                    continue
                sweep_stops.insert_stop(client, team, project, found.sweep_id, run_id, reason, at)  # the agent's word
                runstate.record_stop(state, reason)
                alerts.append(_stop_alert(state, iteration, at))
            return alerts
        except Exception as exc:  # noqa: BLE001 - like a rule check, a sweep's lookup must not stop the stream
            state.pop("sweep_count", None)  # counted again from the summary next time
            state.pop("sweep_best", None)
            log.warning("hyperband of run %s/%s/%s skipped (%s: %s)", team, project, run_id, type(exc).__name__, exc)
        return []

    def _told_to_stop(self, client: Client, state: RunState) -> None:
        """A finishing run of a sweep that was told to stop outside this processor's hyperband (a cancelled
        sweep: the API's ``sweep_stops`` row) ends stopped too. A failed lookup is logged and skipped."""
        record = state["record"]
        if record.get("stop"):
            return
        try:
            reason = sweep_stops.stop_reason(
                client, record["team"], record["project"], record["sweep"], record["run_id"]
            )
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "reading whether run %s was told to stop failed (%s: %s)", record["run_id"], type(exc).__name__, exc
            )
            return
        if reason is not None:
            runstate.record_stop(state, reason)

    def _restate(
        self,
        client: Client,
        relogged: dict[RunKey, set[str]],
        states: dict[RunKey, RunState],
        forked: Mapping[RunKey, float],
    ) -> tuple[set[tuple[RunKey, str]], set[tuple[RunKey, str]]]:
        """Statistics of metrics that logged a step of an earlier batch again, recomputed from the history
        written in step 1: one query per project and batch (a run that logs each step once never gets here).

        A plain run gets its counts, sum, minimum and maximum restated (``summaries.restate``), its last
        value kept: replacing a value keeps the set of steps. A run with lineage gets them over its composed
        history (``lineage.compose``): a rewound run's kept history and what it logged since; a fork's parent
        up to the fork step, whose metrics a fork that just started (``forked``: its start time) takes as its
        own. Its last value, first and last steps are the composed history's too, and a metric without a point
        left in it (logged only after a rewind's step, not since) is dropped. Returns the (run, metric) pairs
        restated, and those dropped."""
        by_project: dict[tuple[str, str], dict[str, tuple[int, set[str]]]] = {}
        segments: dict[tuple[str, str], dict[str, list[lineage.Segment]]] = {}
        composed_runs: set[RunKey] = set()
        for key in relogged.keys() | forked.keys():
            team, project, run_id = key
            state = states[key]
            found = _lineage_of(state)
            parent = lineage.resolve(client, team, project, [found.fork_run_id]) if found.fork_run_id else {}
            composed = lineage.compose(run_id, found, parent.get(found.fork_run_id or "", []))
            names = set(relogged.get(key, ()))
            if key in forked:
                names |= set(run_metrics(client, team, project, run_id, segments=composed))
            if not lineage.is_plain(composed, run_id):
                composed_runs.add(key)
            by_project.setdefault((team, project), {})[run_id] = (state["summary"]["metrics_seq"], names)
            segments.setdefault((team, project), {})[run_id] = composed
        restated: set[tuple[RunKey, str]] = set()
        dropped: set[tuple[RunKey, str]] = set()
        for (team, project), wanted in by_project.items():
            stats_of = metric_statistics(client, team, project, wanted, segments[(team, project)], with_last=True)
            for run_id, (_, names) in wanted.items():
                key = (team, project, run_id)
                summary = states[key]["summary"]
                for metric in sorted(names):
                    stats = stats_of.get((run_id, metric))
                    if key not in composed_runs:
                        if stats is not None:
                            summaries.restate(summary, metric, stats)  # as it always was
                        continue
                    if stats is None:
                        if summary["metrics"].pop(metric, None) is not None:
                            dropped.add((key, metric))
                        continue
                    if metric not in summary["metrics"]:  # logged by the fork's parent only: its values are floats
                        at = forked.get(key)
                        summary["metrics"][metric] = {
                            **summaries._stats(),
                            "integer": False,
                            "first_time": at,
                            "last_time": at,
                        }
                    kept = summary["metrics"][metric]
                    summaries.restate(summary, metric, stats)
                    restated.add((key, metric))
                    # After a rewind the last value may lie in the kept history (the replaced one is gone from it).
                    kept["first_step"], kept["last_step"] = stats["first_step"], stats["last_step"]
                    last = stats["last"]
                    kept["last"] = events.encode_value(int(last) if kept.get("integer") and _finite(last) else last)
        return restated, dropped

    def _states(
        self, client: Client, batch: Sequence[Event], cache: Mapping[RunKey, RunState]
    ) -> dict[RunKey, RunState]:
        keys = {(e.team, e.project, e.run_id) for e in batch}
        states = {k: cache[k] for k in keys if k in cache}
        for key, raw in load_run_states(client, keys - states.keys()).items():
            states[key] = orjson.loads(raw)
        return states

    def tombstoned(self, keys: Iterable[RunKey]) -> dict[RunKey, str]:
        """The runs among ``keys`` that were deleted or moved, with why (``storage.deletion``): the batch
        handler dead-letters their events, so a late resend or a replay cannot bring them back. Cached
        (``deletion.TombstoneCache``): a tombstone for good, "not tombstoned" for a second."""
        return self.tombstone_cache.lookup(self._client(), keys)

    def store_alerts(self, alerts: Sequence[Event]) -> int:
        """Store ``alert`` events (the SDK's and the rules'); their ids make a replay harmless."""
        return insert_alerts(self._client(), [_alert_row(e) for e in alerts])

    def refresh_upper_levels(self, runs: Iterable[RunKey]) -> int:
        """Bring the upper bucket levels of these runs up to date (``buckets.refresh_pending``)."""
        return buckets.refresh_pending(self._client(), runs)

    def commit(self, out: Output) -> None:
        """Store the states a processed batch produced (after its events were published)."""
        rows = {}
        for key, state in out.states.items():
            rows[key] = (orjson.dumps(state), folded(state))
        upsert_run_states(self._client(), rows)

    def sweep(self, timeout_s: float, now: float | None = None) -> list[Event]:
        """Time-based checks, run periodically: running runs silent for longer than ``timeout_s``
        become crashed, and stall rules on wall time fire. What it finds comes back as events,
        processed like any other by the owner of the run's partition."""
        now = self.clock() if now is None else now
        client = self._client()
        out: list[Event] = []
        try:  # upper bucket levels a driver left pending when it stopped; a failure must not stop the checks
            buckets.refresh_pending(client, older_than_s=ORPHANED_LEVELS_AFTER_S)
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("refreshing orphaned bucket levels failed (%s: %s)", type(exc).__name__, exc)
        try:  # rows a batch stored for a run while its deletion was under way
            if purged := deletion.purge_reappeared(client):
                log.warning("removed the rows %d deleted or moved run(s) got back, e.g. %s", len(purged), purged[0])
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning("removing rows of deleted runs failed (%s: %s)", type(exc).__name__, exc)
        for team, project, run_id, since in processing.silent_runs(client, now - timeout_s):
            out.append(
                Event(
                    RUN_STATE,
                    team,
                    project,
                    run_id,
                    0,
                    now,
                    {"state": "crashed", "reason": f"nothing received for {now - since:.0f} s", "since": since},
                )
            )
        for team, project in processing.projects_with_stall_rules(client):
            rules = [r for r in self.rules.rules(team, project) if r.kind == "stall" and "seconds" in r.spec]
            if not rules:
                continue
            for run_id, last_step_time in processing.last_step_times(client, team, project):
                evaluator = Evaluator(rules, {})
                evaluator.sweep(run_id, now, last_step_time)
                out += [_alert_event(f, now) for f in evaluator.fired]
        return out


def _lineage_of(state: RunState) -> lineage.Lineage:
    record = state["record"]
    fork = record.get("fork")
    return lineage.Lineage(
        fork["run_id"] if fork else None,
        fork["step"] if fork else None,
        [lineage.Rewind(r["step"], r["seq"], r["at"]) for r in record.get("rewinds", [])],
    )


def _has_lineage(key: RunKey, out: Output) -> bool:
    record = out.states[key]["record"]
    return bool(record.get("fork") or record.get("rewinds"))


def _lineage_row(state: RunState) -> dict[str, Any]:
    record = state["record"]
    return {
        "team": record["team"],
        "project": record["project"],
        "run_id": record["run_id"],
        "fork": record.get("fork"),
        "rewinds": record.get("rewinds", []),
        "version": folded(state),
    }


def _rewound(
    batch: Sequence[Event], metrics: list[Event], states: Mapping[RunKey, RunState], stored_seqs: dict[RunKey, int]
) -> tuple[list[Event], dict[RunKey, int]]:
    """The metric events of rewound runs under their segment's id: a rewound session's events name their
    rewind (the SDK's marker: ``lineage.segment_id`` of its run_start's seq), whatever was read before them;
    those of older SDKs are placed by seq among the rewinds folded before and those the batch brings
    (``lineage.segment_of``)."""
    seqs: dict[RunKey, set[int]] = {}
    for key, state in states.items():
        if state["record"].get("rewinds"):
            seqs[key] = {r["seq"] for r in state["record"]["rewinds"]}
    for event in batch:
        if event.type == RUN_START and event.data.get("rewind"):
            seqs.setdefault((event.team, event.project, event.run_id), set()).add(event.seq)
        elif event.type == METRICS and event.data.get("rewind"):
            seqs.setdefault((event.team, event.project, event.run_id), set()).add(event.data["rewind"]["seq"])
    if not seqs:
        return metrics, stored_seqs
    routed = []
    stored = dict(stored_seqs)
    for event in metrics:
        key = (event.team, event.project, event.run_id)
        if key in seqs:
            marker = event.data.get("rewind")
            if marker:
                run_id = lineage.segment_id(event.run_id, marker["seq"])
            else:
                run_id = lineage.segment_of(event.run_id, sorted(seqs[key]), event.seq)
            if run_id != event.run_id:
                event = replace(event, run_id=run_id)
                # What the run stored bounds what its segment stored.
                stored[(event.team, event.project, run_id)] = stored_seqs.get(key, -1)
        routed.append(event)
    return routed, stored


def _no_points_row(key: RunKey, metric: str, version: int) -> dict[str, Any]:
    """The ``metric_summaries`` row of a metric the run's composed history no longer has (count 0: readers
    skip it)."""
    team, project, run_id = key
    nan = math.nan
    return {
        "team": team,
        "project": project,
        "run_id": run_id,
        "metric": metric,
        **dict.fromkeys(("last", "min", "max", "mean"), nan),
        **dict.fromkeys(("count", "nan_count", "inf_count", "first_step", "last_step"), 0),
        **dict.fromkeys(("first_time", "last_time"), 0.0),
        "integer": False,
        "version": version,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _run_row(state: RunState) -> dict[str, Any]:
    """The runs row of a state: its record, with the run's define_metric specs."""
    return {
        **runstate.record_for_write(state, folded(state)),
        "metrics": summaries.metric_definitions(state["summary"]),
    }


def _alert_row(event: Event) -> dict[str, Any]:
    return {
        "team": event.team,
        "project": event.project,
        "run_id": event.run_id,
        "alert_id": alert_id_of(event),
        "rule_id": event.data.get("rule_id"),
        "source": event.data["source"],
        "level": event.data["level"],
        "title": event.data["title"],
        "text": event.data["text"],
        "time": event.ts,
    }


def _alert_event(fired: Fired, now: float) -> Event:
    rule = fired.rule
    return Event(ALERT, rule.team, rule.project, fired.run_id, 0, fired.at or now, fired.event_data())


def _stop_alert(state: RunState, iteration: int, at: float) -> Event:
    """The alert of a run hyperband stopped: its id is derived from the decision, so a replay stores one alert."""
    record = state["record"]
    rule_id = f"sweep:{record['sweep']}"
    alert_id = hashlib.sha256(f"{rule_id}\0{record['run_id']}\0{iteration}".encode()).hexdigest()[:32]
    data = {
        "title": "stopped by sweep",
        "text": record["stop"]["reason"][:4000],
        "level": "INFO",
        "source": "rule",
        "rule_id": rule_id,
        "alert_id": alert_id,
    }
    return Event(ALERT, record["team"], record["project"], record["run_id"], 0, at, data)


def _state_event(change: StateChange) -> Event:
    data = {"state": change.new, "reason": (change.reason or "")[: events.MAX_TEXT_LEN] or None}
    return Event(RUN_STATE, change.team, change.project, change.run_id, 0, change.at, data)
