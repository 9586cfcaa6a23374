"""A sweep's runs in the run state: the sweep they belong to, and a stop that makes them end ``stopped``."""

from __future__ import annotations

import pytest

from runstream.events import HEARTBEAT, RUN_FINISH, RUN_START, RUN_STATE, Event, InvalidEvent, validate
from runstream.streams import runstate


def _ev(type_: str, seq: int, ts: float, data: dict) -> Event:
    return Event(type_, "acme", "p", "r1", seq, ts, data)


def _fold(state: runstate.RunState, event: Event) -> list[runstate.StateChange]:
    changes: list[runstate.StateChange] = []
    runstate.apply(state, event, changes, now=event.ts)
    return changes


def _started(sweep: str | None = "ab12cd34") -> runstate.RunState:
    start = _ev(RUN_START, 1, 10.0, {"name": "r1", **({"sweep": sweep} if sweep else {})})
    state = runstate.new_state(start)
    _fold(state, start)
    return state


def test_run_start_carries_a_sweep_id_of_eight_lowercase_letters_or_digits():
    envelope = {"v": 1, "type": RUN_START, "team": "acme", "project": "p", "run_id": "r1", "seq": 1, "ts": 1.0}
    assert validate({**envelope, "data": {"name": "r1", "sweep": "ab12cd34"}}).data["sweep"] == "ab12cd34"
    for bad in ("AB12CD34", "ab12cd3", "ab12cd345", "ab-2cd34", 12345678, None):
        with pytest.raises(InvalidEvent, match="sweep"):
            validate({**envelope, "data": {"name": "r1", "sweep": bad}})


def test_the_record_keeps_its_sweep_and_a_resume_without_it_stays_the_sweeps():
    state = _started()
    assert state["record"]["sweep"] == "ab12cd34"
    _fold(state, _ev(RUN_START, 5, 20.0, {"name": "r1", "resumed": True}))
    assert state["record"]["sweep"] == "ab12cd34"
    assert "sweep" not in _started(sweep=None)["record"]


@pytest.mark.parametrize("exit_state", ["killed", "failed"])
def test_a_run_told_to_stop_ends_stopped_with_the_reason_whatever_its_exit(exit_state):
    state = _started()
    assert runstate.record_stop(state, "val/loss 0.9 at iteration 3 is worse than the bracket's cut 0.2")
    assert state["record"]["state"] == "running"  # told, not yet ended
    changes = _fold(state, _ev(RUN_FINISH, 2, 30.0, {"state": exit_state, "exit_code": 143}))
    record = state["record"]
    assert record["state"] == "stopped" and record["finished_at"] == 30.0 and record["exit_code"] == 143
    assert record["stop"] == {
        "by": "sweep",
        "reason": "val/loss 0.9 at iteration 3 is worse than the bracket's cut 0.2",
    }
    assert [(c.old, c.new, c.reason) for c in changes] == [
        ("running", "stopped", "stopped by sweep: val/loss 0.9 at iteration 3 is worse than the bracket's cut 0.2")
    ]


def test_a_run_that_ran_to_its_end_before_the_stop_reached_it_stays_finished():
    state = _started()
    runstate.record_stop(state, "worse than the cut")
    _fold(state, _ev(RUN_FINISH, 2, 30.0, {"state": "finished", "exit_code": 0}))
    assert state["record"]["state"] == "finished" and state["record"]["stop"]["reason"] == "worse than the cut"


def test_a_stop_is_recorded_once_and_replays_change_nothing():
    state = _started()
    assert runstate.record_stop(state, "first")
    assert not runstate.record_stop(state, "second")  # the first reason stays
    finish = _ev(RUN_FINISH, 2, 30.0, {"state": "killed", "exit_code": 143})
    assert len(_fold(state, finish)) == 1
    assert _fold(state, finish) == []  # the same seq again: a replay
    assert _fold(state, _ev(RUN_START, 1, 10.0, {"name": "r1", "sweep": "ab12cd34"})) == []
    assert state["record"]["state"] == "stopped" and state["record"]["stop"]["reason"] == "first"


def test_a_stopped_run_is_not_crashed_by_silence_and_a_run_of_no_stop_finishes_as_it_says():
    state = _started()
    runstate.record_stop(state, "worse")
    _fold(state, _ev(RUN_FINISH, 2, 30.0, {"state": "killed"}))
    assert _fold(state, _ev(RUN_STATE, 0, 99.0, {"state": "crashed", "since": 31.0})) == []
    _fold(state, _ev(HEARTBEAT, 3, 40.0, {}))
    assert state["record"]["state"] == "stopped"

    plain = _started()
    _fold(plain, _ev(RUN_FINISH, 2, 30.0, {"state": "killed"}))
    assert plain["record"]["state"] == "killed" and "stop" not in plain["record"]
