"""Run state: fold a run's lifecycle events into the record the runs table shows.

Plain Python, no framework. A state (``RunState``) is a JSON-able dict, stored
by the processor in ClickHouse (``run_states``) between batches: the run's
record, the summary statistics (``summaries``) and the alert rules' memory
(``alerting``). Its keys are typed below; states stored by older versions lack
the ones marked ``NotRequired``.

States: running, finished, failed, killed (from the SDK's ``run_finish``),
crashed, decided when a running run has sent nothing for longer than the
timeout, and stopped: a run of a sweep (its run_start's ``sweep``) that the
sweep told to stop (``record_stop``: hyperband, a cancelled sweep) ends stopped
however it exits, with the reason ``stopped by sweep: <why>``, unless it ran to
its end (exit 0) before the stop reached it: then it is finished. Liveness is
measured on the processor's clock (``seen_at``), not the SDK's timestamps, so
a late sync or a skewed client clock does not make a run flap. A new event from a crashed run brings it back to running. Every change of state is returned as a ``StateChange`` so the caller
can publish it as a ``run_state`` event and evaluate alert rules on it.

Replays: SDK events carry the run's sequence numbers; an event at or below the
highest one already folded changes nothing. ``run_state`` events (written by
this processor) carry no SDK sequence and are applied only while they still
hold (a crash only if the run is still silent), so a replay is harmless too.
``run_edit`` events (name, tags, notes, group, job type, and config keys set or
deleted, a user edited through the API; its summary part is
``summaries.fold_update``'s) are ordered by their timestamp, the API's clock: a
replayed or older edit changes nothing, so a replayed deletion cannot remove a
value the SDK set after it. An edit and the SDK's own updates meet field by
field, the later wins: the SDK's next ``run.name = ...``, ``run.tags = ...`` or
config key (a deleted one too) replaces an edited one, and leaves the rest of the
edit alone.

A failed run's traceback (``run_finish``) is kept as the record's ``error``
until the run starts again (a resume).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

from runstream.events import HEARTBEAT, MAX_REWINDS, RUN_EDIT, RUN_FINISH, RUN_START, RUN_STATE, RUN_UPDATE, Event
from runstream.streams.summaries import Summary, new_summary, without_keys

log = logging.getLogger(__name__)

#: The SDK's lifecycle events, deduplicated by the runs topic's seq.
RUN_EVENTS = (RUN_START, RUN_UPDATE, RUN_FINISH, HEARTBEAT)
#: What a run_start replaces whole when it carries them, and what a run_update sets.
START_LISTS: tuple[Literal["tags", "args", "git"], ...] = ("tags", "args", "git")
UpdateField = Literal["name", "group", "job_type", "notes", "tags"]
UPDATE_FIELDS: tuple[UpdateField, ...] = ("name", "group", "job_type", "notes", "tags")
#: The states of a run that has ended for good (a crashed run may come back); each sets ``finished_at``.
FINISHED_STATES = ("finished", "failed", "killed", "stopped")


class RunRecord(TypedDict):
    """The run as the ``runs`` table shows it (``storage.writer.upsert_runs`` takes it, plus ``metrics``)."""

    team: str
    project: str
    run_id: str
    name: str
    state: str | None  # None only before the first event is folded
    created_at: float
    updated_at: float
    heartbeat_at: float  # the SDK's clock: the newest event's ts
    seen_at: NotRequired[float]  # the processor's clock when the run last sent anything
    version: int
    finished_at: NotRequired[float | None]
    edited_at: NotRequired[float]  # the API's clock at the latest user edit folded
    exit_code: NotRequired[int | None]
    error: NotRequired[str | None]  # a failed run's traceback
    group: NotRequired[str]
    job_type: NotRequired[str]
    notes: NotRequired[str]
    host: NotRequired[str]
    user: NotRequired[str]
    program: NotRequired[str]
    python: NotRequired[str]
    tags: NotRequired[list[str]]
    args: NotRequired[list[str]]
    git: NotRequired[dict[str, Any]]
    config: NotRequired[dict[str, Any]]
    fork: NotRequired[dict[str, Any]]  # {"run_id", "step"}: the run it was forked from (init(fork_from=...))
    rewinds: NotRequired[list[dict[str, Any]]]  # [{"step", "seq", "at"}], oldest first (init(resume_from=...))
    sweep: NotRequired[str]  # the sweep the run belongs to (its run_start's "sweep")
    stop: NotRequired[dict[str, str]]  # {"by": "sweep", "reason"}: the sweep told it to stop (``record_stop``)


class RunState(TypedDict):
    """Everything the processor remembers about one run between batches (one ``run_states`` row)."""

    record: RunRecord
    runs_seq: int  # highest SDK seq folded from the runs topic
    system_seq: NotRequired[int]  # highest SDK seq folded from the system topic
    summary: Summary
    alerts: dict[str, dict[str, Any]]  # each rule's memory of the run, by rule id (``alerting.Evaluator``)
    folded: NotRequired[int]  # SDK events and edits folded: the version of every row written from the state
    # Values of its sweep's metric folded (hyperband's iteration; docs/sweeps.md): counted from the metrics
    # events folded, so a replay (deduplicated by seq) leaves it exact.
    sweep_count: NotRequired[int]
    sweep_best: NotRequired[float | None]  # its best finite value of that metric so far (hyperband's strict: false)


@dataclass(frozen=True)
class StateChange:
    team: str
    project: str
    run_id: str
    old: str | None
    new: str
    at: float
    reason: str | None = None


def new_state(event: Event) -> RunState:
    """The state of a run first seen with ``event``, before folding it."""
    return {
        "record": {
            "team": event.team,
            "project": event.project,
            "run_id": event.run_id,
            "name": event.run_id,
            "state": None,  # set by the first event folded: a new run is a state change too
            "created_at": event.ts,
            "updated_at": event.ts,
            "heartbeat_at": event.ts,
            "seen_at": 0.0,
            "version": 0,
        },
        "runs_seq": -1,
        "summary": new_summary(),
        "alerts": {},
    }


def _set_state(state: RunState, new: str, at: float, reason: str | None, changes: list[StateChange]) -> None:
    record = state["record"]
    old = record.get("state")
    if old == new:
        return
    record["state"] = new
    if new in FINISHED_STATES:
        record["finished_at"] = at
    elif new == "running":
        record["finished_at"] = None
    changes.append(StateChange(record["team"], record["project"], record["run_id"], old, new, at, reason))


def _touch(state: RunState, ts: float, now: float) -> None:
    record = state["record"]
    if ts > record["heartbeat_at"]:
        record["heartbeat_at"] = ts
    record["updated_at"] = max(record["updated_at"], ts)
    record["seen_at"] = max(record.get("seen_at", 0.0), now)


def merge_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update, the way ``run.config.update`` sends partial changes."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def apply(state: RunState, event: Event, changes: list[StateChange], now: float) -> bool:
    """Fold one event of any type into the run's state (``now``: the processor's clock);
    state changes go to ``changes``. False when the event was already folded."""
    record = state["record"]
    if event.type == RUN_STATE:
        _apply_run_state(state, event, changes)
        return True
    if event.type == RUN_EDIT:
        return _apply_edit(state, event)
    # A fork's parent is set by the run's first start only: nothing folded from the runs topic before it, and
    # nothing logged before it (a fork's own metrics, read from their topic first, have larger seqs).
    first_start = event.type == RUN_START and _first_start(state, event.seq)
    if event.type in RUN_EVENTS:
        if event.seq <= state["runs_seq"]:
            return False  # a replay or a resend
        state["runs_seq"] = event.seq
    fresh = event.ts > record["heartbeat_at"]  # not a replay of something older
    _touch(state, event.ts, now)
    if record["state"] == "crashed" and fresh:  # it was only silent
        _set_state(state, "running", event.ts, "the run sent events again", changes)
    data = event.data
    if event.type == RUN_START:
        if not data.get("resumed"):
            record["created_at"] = min(record["created_at"], event.ts)
        for key in ("name", "group", "job_type", "notes", "host", "user", "program", "python"):
            if data.get(key) is not None:
                record[key] = data[key]
        for key in START_LISTS:
            if key in data:
                record[key] = data[key]
        record["config"] = merge_config(record.get("config", {}), data.get("config") or {})
        record["error"] = None  # a resumed run has not failed (yet)
        if data.get("sweep"):  # a resume outside the agent, without it, stays the sweep's
            record["sweep"] = data["sweep"]
        fork = data.get("fork")
        if fork and first_start and "fork" not in record and fork["run_id"] != record["run_id"]:
            record["fork"] = {"run_id": fork["run_id"], "step": fork["step"]}
        elif fork and record.get("fork") != fork:  # the run keeps the history it has
            log.warning(
                "run %s/%s/%s: a fork of %s ignored: only a run's first start may make it a fork",
                record["team"],
                record["project"],
                record["run_id"],
                fork["run_id"],
            )
        if data.get("rewind"):  # its seq names the segment the session's metric events are stored under
            record_rewind(state, data["rewind"]["step"], event.seq, event.ts)
        _set_state(state, "running", event.ts, "started", changes)
    elif event.type == RUN_UPDATE:
        for key in UPDATE_FIELDS:
            if key in data:
                record[key] = data[key]
        if "config" in data:
            record["config"] = merge_config(record.get("config", {}), data["config"])
    elif event.type == RUN_FINISH:
        record["exit_code"] = data.get("exit_code")
        record["error"] = data.get("traceback") or None
        stop = record.get("stop")
        # Its end is the sweep's doing unless it ran to its end (exit 0) before the stop reached it.
        if stop and data["state"] != "finished":
            _set_state(state, "stopped", event.ts, f"stopped by sweep: {stop['reason']}", changes)
        else:
            _set_state(state, data["state"], event.ts, data.get("traceback"), changes)
    if record["state"] is None:  # its first event was not run_start (lost, or not sent yet)
        _set_state(state, "running", event.ts, None, changes)
    return True


def record_stop(state: RunState, reason: str) -> bool:
    """The run's sweep told it to stop: it ends ``stopped`` when it next finishes. False when it was told already."""
    record = state["record"]
    if record.get("stop"):
        return False
    record["stop"] = {"by": "sweep", "reason": reason}
    return True


def _first_start(state: RunState, seq: int) -> bool:
    folded = (state["summary"]["metrics_seq"], state.get("system_seq", -1))
    return state["runs_seq"] < 0 and all(s < 0 or s > seq for s in folded)


def record_rewind(state: RunState, step: int, seq: int, at: float) -> bool:
    """Record the rewind whose run_start had ``seq`` (from that run_start, or from the marker of a metrics
    event of its session read first); False when it is recorded already, or the run has ``MAX_REWINDS``."""
    record = state["record"]
    rewinds = record.get("rewinds", [])
    if any(r["seq"] == seq for r in rewinds):
        return False
    if len(rewinds) >= MAX_REWINDS:
        log.warning(
            "run %s/%s/%s: a rewind to step %d ignored: a run has at most %d rewinds",
            record["team"],
            record["project"],
            record["run_id"],
            step,
            MAX_REWINDS,
        )
        return False
    record["rewinds"] = sorted([*rewinds, {"step": step, "seq": seq, "at": at}], key=lambda r: r["seq"])
    return True


def _apply_edit(state: RunState, event: Event) -> bool:
    """A user's edit (through the API): the latest edit wins; it says nothing about liveness.
    Its summary part is folded by ``summaries.fold_update``."""
    record = state["record"]
    if record["state"] is None or event.ts <= record.get("edited_at", 0.0):
        return False  # an edit of a run this processor never saw, or a replay of an older edit
    record["edited_at"] = event.ts
    for key in ("name", "tags", "notes", "group", "job_type"):
        if key in event.data:
            record[key] = event.data[key]
    if "config_delete" in event.data:  # never a key the edit sets (the event contract refuses that)
        record["config"] = without_keys(record.get("config", {}), event.data["config_delete"])
    if "config" in event.data:
        record["config"] = merge_config(record.get("config", {}), event.data["config"])
    return True


def _apply_run_state(state: RunState, event: Event, changes: list[StateChange]) -> None:
    """Only a crash is decided outside the SDK; other ``run_state`` events report changes made here."""
    if event.data["state"] != "crashed":
        return
    # It holds only while the run is running and has stayed silent since the sweep saw it.
    since = event.data.get("since", event.ts)
    record = state["record"]
    if record["state"] != "running" or record.get("seen_at", 0.0) > since + 0.001:  # `since` was read at ms precision
        return
    _set_state(state, "crashed", event.ts, event.data.get("reason"), changes)


def record_for_write(state: RunState, version: int) -> RunRecord:
    """The run record to write, under ``version``."""
    record = state["record"]
    record["version"] = version
    return record.copy()
