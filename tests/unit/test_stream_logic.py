"""The framework-free processing logic: rule checks and evaluation, summaries, run state."""

from __future__ import annotations

import math

import pytest

from runstream.events import (
    HEARTBEAT,
    METRICS,
    RUN_EDIT,
    RUN_FINISH,
    RUN_START,
    RUN_STATE,
    RUN_UPDATE,
    SYSTEM,
    Event,
    InvalidEvent,
    validate,
)
from runstream.streams import runstate, summaries
from runstream.streams.alerting import Evaluator, Rule, RuleError, check_rule


def _ev(type_: str, seq: int, ts: float, data: dict, run_id: str = "r1") -> Event:
    return Event(type_, "acme", "p", run_id, seq, ts, data)


@pytest.mark.parametrize(
    "kind, spec, message",
    [
        ("loudness", {}, "unknown rule kind"),
        ("threshold", {"metric": "loss", "op": "~", "value": 1}, "'op'"),
        ("threshold", {"metric": "loss", "op": ">", "value": "ten"}, "'value'"),
        ("threshold", {"metric": "loss", "op": ">", "value": 1, "level": "LOUD"}, "level"),
        ("threshold", {"metric": "loss", "op": ["<"], "value": 1}, "'op'"),  # not hashable: still a RuleError
        ("threshold", {"metric": "loss", "op": ">", "value": 1, "level": ["WARN"]}, "level"),
        ("system", {"metric": "gpu", "op": "<", "value": 10}, "'for_seconds'"),
        ("divergence", {"metric": "loss", "percent": -5, "within_steps": 10}, "'percent'"),
        ("stall", {"metric": "loss"}, "'patience'"),
        ("stall", {"seconds": 0}, "'seconds'"),
        ("run_state", {"states": []}, "'states'"),
    ],
)
def test_incomplete_rules_are_refused_with_what_to_fix(kind, spec, message):
    with pytest.raises(RuleError, match=message):
        check_rule(kind, spec)


def test_complete_rules_pass():
    check_rule("threshold", {"metric": "loss", "op": ">=", "value": 10, "level": "ERROR"})
    check_rule("stall", {"seconds": 600})
    check_rule("system", {"metric": "gpu.0.gpu", "op": "<", "value": 10, "for_seconds": 300})


def test_system_rule_fires_once_the_condition_held_long_enough():
    rule = Rule(
        "acme", "p", "idle", "GPU idle", "system", {"metric": "gpu", "op": "<", "value": 10, "for_seconds": 300}, 0
    )
    memory: dict = {}
    samples = [(0, 5.0), (200, 5.0), (299, 4.0), (301, 3.0), (400, 2.0), (500, 50.0), (600, 1.0), (950, 1.0)]
    fired = []
    for t, value in samples:
        evaluator = Evaluator([rule], memory)
        evaluator.system(_ev(SYSTEM, int(t), float(t), {"time": [float(t)], "values": {"gpu": [value]}}))
        fired += [(t, f.title) for f in evaluator.fired]
    assert [t for t, _ in fired] == [301, 950]  # held 300 s from 0; reset at 500; held again 600..950


def test_a_replayed_update_leaves_the_summary_alone_and_definitions_replace_by_name():
    summary = summaries.new_summary()
    summaries.fold_update(summary, _ev(RUN_UPDATE, 1, 0.0, {"define_metric": [{"name": "loss", "summary": "min"}]}))
    summaries.fold_update(summary, _ev(RUN_UPDATE, 2, 0.0, {"define_metric": [{"name": "loss", "summary": "max"}]}))
    assert summary["define"] == [{"name": "loss", "summary": "max"}]


def test_run_summary_is_shaped_as_wandb_shapes_define_metric_choices():
    summary = summaries.new_summary()
    batch = _ev(
        METRICS,
        1,
        0.0,
        {
            "step": [0, 1, 2],
            "time": [1.0, 2.0, 3.0],
            "values": {"loss": [3.0, 1.0, 2.0], "acc": [0.1, 0.9, 0.5], "lr": [0.3, 0.2, 0.1]},
        },
    )
    summaries.fold_metrics(summary, batch)
    assert summaries.run_summary(summary) == {"loss": 2.0, "acc": 0.5, "lr": 0.1}  # no choice: the last value
    specs = [
        {"name": "loss", "summary": "min,max,mean,last"},
        {"name": "acc", "summary": "best", "goal": "maximize"},
        {"name": "lr", "summary": "none"},
    ]
    summaries.fold_update(summary, _ev(RUN_UPDATE, 2, 0.0, {"define_metric": specs}))
    assert summaries.run_summary(summary) == {
        "loss": {"min": 1.0, "max": 3.0, "mean": 2.0, "last": 2.0},
        "acc": {"best": 0.9},
    }
    summaries.fold_update(
        summary,
        _ev(
            RUN_UPDATE,
            3,
            0.0,
            {"define_metric": [{"name": "acc", "summary": "best", "goal": "minimize"}], "summary": {"lr": 7}},
        ),
    )
    assert summaries.run_summary(summary) == {
        "loss": {"min": 1.0, "max": 3.0, "mean": 2.0, "last": 2.0},
        "acc": {"best": 0.1},
        "lr": 7,
    }  # a value the user set wins


def test_stored_rules_are_checked_when_loaded():
    from runstream.streams.alerting import rule_from_row

    row = {"team": "t", "project": "p", "rule_id": "r", "name": "n", "cooldown_s": 0}
    with pytest.raises(RuleError, match="'op'"):
        rule_from_row({**row, "kind": "threshold", "spec": '{"metric": "loss"}'})
    with pytest.raises(RuleError, match="not JSON"):
        rule_from_row({**row, "kind": "threshold", "spec": "{"})
    with pytest.raises(RuleError, match="webhooks"):
        rule_from_row({**row, "kind": "nonfinite", "spec": '{"metric": "*", "webhooks": "http://x"}'})


def test_summary_stats_fold_each_batch_once_and_honour_summary_choices():
    summary = summaries.new_summary()
    batch = _ev(METRICS, 5, 0.0, {"step": [0, 1, 2], "time": [1.0, 2.0, 3.0], "values": {"loss": [3.0, "NaN", 1.0]}})
    assert summaries.fold_metrics(summary, batch) == {"loss"}
    assert summaries.fold_metrics(summary, batch) == set()  # a replay
    summaries.fold_update(summary, _ev(RUN_UPDATE, 6, 0.0, {"define_metric": [{"name": "l*", "summary": "max"}]}))
    assert summaries.run_summary(summary) == {"loss": {"max": 3.0}}  # wandb's shape for a summary choice
    row = summaries.metric_summary_rows(summary, "acme", "p", "r1", 1)[0]
    assert (row["last"], row["min"], row["max"], row["count"], row["nan_count"]) == (1.0, 1.0, 3.0, 3, 1)
    assert row["mean"] == 2.0 and (row["first_step"], row["last_step"]) == (0, 2)


def test_run_state_lifecycle_and_resends():
    changes: list = []
    start = _ev(RUN_START, 10, 100.0, {"name": "n", "config": {"a": {"b": 1}}})
    state = runstate.new_state(start)
    # The SDK's clock (ts) is an hour behind the server's (now): liveness follows the server's.
    assert runstate.apply(state, start, changes, now=3700.0)
    assert runstate.apply(
        state, _ev(RUN_UPDATE, 11, 101.0, {"config": {"a": {"c": 2}}, "tags": ["x"]}), changes, 3701.0
    )
    assert not runstate.apply(state, _ev(RUN_UPDATE, 11, 101.0, {"tags": ["resent, ignored"]}), changes, 3702.0)
    runstate.apply(state, _ev(HEARTBEAT, 12, 130.0, {}), changes, now=3730.0)
    runstate.apply(
        state, _ev(RUN_STATE, 0, 3800.0, {"state": "crashed", "since": 3720.0}), changes, 3800.0
    )  # spoke at 3730
    assert state["record"]["state"] == "running"
    runstate.apply(state, _ev(RUN_STATE, 0, 3900.0, {"state": "crashed", "since": 3730.0}), changes, 3900.0)
    runstate.apply(state, _ev(RUN_FINISH, 13, 310.0, {"state": "failed", "exit_code": 1}), changes, 3910.0)
    record = state["record"]
    assert record["config"] == {"a": {"b": 1, "c": 2}} and record["tags"] == ["x"]
    assert [(c.old, c.new) for c in changes] == [
        (None, "running"),
        ("running", "crashed"),
        ("crashed", "running"),
        ("running", "failed"),
    ]
    assert record["finished_at"] == 310.0 and record["exit_code"] == 1 and record["seen_at"] == 3910.0


def test_a_step_logged_again_counts_once():
    summary = summaries.new_summary()
    first = _ev(
        METRICS,
        5,
        0.0,
        {"step": [0, 1, 2], "time": [1.0, 2.0, 3.0], "values": {"loss": [3.0, 2.0, 1.0], "acc": [None, 0.5, None]}},
    )
    assert summaries.relogged(summary, first) == set()
    summaries.fold_metrics(summary, first)
    assert summaries.relogged(summary, first) == set()  # a replay is skipped, not restated
    later = {"step": [3, 4], "time": [4.0, 5.0], "values": {"loss": [0.9, 0.8], "acc": [0.6, None]}}
    assert summaries.relogged(summary, _ev(METRICS, 6, 0.0, later)) == set()
    resumed = {"step": [2, 3], "time": [4.0, 5.0], "values": {"loss": [1.5, 0.7], "acc": [None, 0.7]}}
    assert summaries.relogged(summary, _ev(METRICS, 6, 0.0, resumed)) == {"loss"}  # acc's step 1 is not logged again
    # A step twice within a batch is folding's own business: its last row counts.
    twice = _ev(
        METRICS,
        6,
        0.0,
        {
            "step": [7, 7, 8, 7],
            "time": [4.0, 5.0, 6.0, 7.0],
            "values": {"loss": [99.0, 2.0, "NaN", 0.5], "acc": [0.1, None, None, None]},
        },
    )
    assert summaries.relogged(summary, twice) == set()
    summaries.fold_metrics(summary, twice)
    row = summaries.metric_summary_rows(summary, "acme", "p", "r1", 1, {"loss", "acc"})
    assert [(r["metric"], r["count"], r["nan_count"], r["min"], r["max"], r["last_step"]) for r in row] == [
        ("acc", 2, 0, 0.1, 0.5, 7),
        ("loss", 5, 1, 0.5, 3.0, 8),
    ]  # loss: 3, 2, 1, 0.5 and a NaN
    assert row[0]["last"] == 0.1 and math.isnan(row[1]["last"])
    assert row[1]["last_time"] == 6.0
    # restate replaces the counts, sum and extremes only: steps, times and the last value stay.
    summaries.restate(summary, "loss", {"count": 2, "sum": 3.0, "min": 1.0, "max": 2.0, "nan": 0, "inf": 1})
    row = summaries.metric_summary_rows(summary, "acme", "p", "r1", 1, {"loss"})[0]
    assert (row["count"], row["mean"], row["min"], row["max"], row["inf_count"], row["last_step"]) == (
        3,
        1.5,
        1.0,
        2.0,
        1,
        8,
    )
    assert summary["metrics"]["loss"]["last"] == "NaN"  # the state stays JSON


def _edit(ts: float, data: dict) -> Event:
    return _ev(RUN_EDIT, 0, ts, data)


def _fold(state: runstate.RunState, event: Event) -> bool:
    """What the processor does with one runs-topic event: the run state, then its summary part."""
    applied = runstate.apply(state, event, [], now=event.ts)
    if applied and event.type in (RUN_UPDATE, RUN_EDIT):
        summaries.fold_update(state["summary"], event)
    return applied


def test_edits_delete_config_keys_and_set_group_and_job_type_and_a_replay_changes_nothing():
    start = _ev(RUN_START, 1, 100.0, {"name": "n", "group": "g", "config": {"opt": {"lr": 0.1, "m": 0.9}, "x": 1}})
    state = runstate.new_state(start)
    _fold(state, start)
    edit = _edit(200.0, {"group": "g2", "job_type": "eval", "config_delete": ["opt.lr", "x"], "config": {"y": 2}})
    assert _fold(state, edit)
    record = state["record"]
    assert (record["group"], record["job_type"], record["config"]) == ("g2", "eval", {"opt": {"m": 0.9}, "y": 2})
    # The SDK sets x again after the edit: a replay of the edit (or an older edit) removes nothing.
    assert _fold(state, _ev(RUN_UPDATE, 2, 150.0, {"config": {"x": 3}, "group": "from-sdk"}))
    assert not _fold(state, edit)
    assert not _fold(state, _edit(199.0, {"config_delete": ["x"], "group": "older"}))
    assert (record["config"], record["group"]) == ({"opt": {"m": 0.9}, "y": 2, "x": 3}, "from-sdk")
    # A key names its subtree, and dotted keys match as storage flattens them; an emptied object goes too.
    record["config"] = {"a": {"b": {"c": 1}}, "a.b": {"d": 2}, "keep": {"k": 1}}
    assert _fold(state, _edit(300.0, {"config_delete": ["a.b.c", "keep.k"]}))
    assert record["config"] == {"a.b": {"d": 2}}
    assert _fold(state, _edit(301.0, {"config_delete": ["a"]}))
    assert record["config"] == {}


def test_a_deleted_summary_key_goes_and_a_computed_one_comes_back_when_its_metric_is_logged_again():
    start = _ev(RUN_START, 1, 100.0, {"name": "n"})
    state = runstate.new_state(start)
    _fold(state, start)
    summary = state["summary"]
    values = {"loss": [2.0, 1.0], "acc": [0.1, 0.2], "lr": [0.1, 0.1], "train.f1": [0.3, 0.4]}
    summaries.fold_metrics(summary, _ev(METRICS, 1, 0.0, {"step": [0, 1], "time": [1.0, 2.0], "values": values}))
    spec = {"name": "acc", "summary": "min,max"}
    _fold(state, _ev(RUN_UPDATE, 2, 101.0, {"summary": {"old": 1, "loss": 0.5, "keep": 2}, "define_metric": [spec]}))
    assert summaries.run_summary(summary) == {
        "loss": 0.5,
        "acc": {"min": 0.1, "max": 0.2},
        "lr": 0.1,
        "train.f1": 0.4,
        "old": 1,
        "keep": 2,
    }
    edit = _edit(200.0, {"summary_delete": ["old", "loss", "acc.max", "train"], "summary": {"new": 1}})
    assert _fold(state, edit)
    # loss goes whole (its explicit value and the computed one), acc keeps its min.
    assert summaries.run_summary(summary) == {"acc": {"min": 0.1}, "lr": 0.1, "keep": 2, "new": 1}
    assert not _fold(state, edit)  # a replay
    # A metrics replay shows nothing again; loss and acc logged again show again, train.f1 stays hidden.
    summaries.fold_metrics(summary, _ev(METRICS, 1, 0.0, {"step": [0, 1], "time": [1.0, 2.0], "values": values}))
    assert "loss" not in summaries.run_summary(summary)
    later = {"step": [2], "time": [3.0], "values": {"loss": [0.7], "acc": [0.05]}}
    summaries.fold_metrics(summary, _ev(METRICS, 2, 0.0, later))
    assert summaries.run_summary(summary) == {
        "loss": 0.7,
        "acc": {"min": 0.05, "max": 0.2},
        "lr": 0.1,
        "keep": 2,
        "new": 1,
    }
    # The SDK sets a deleted key after the edit: a replayed or older edit does not remove it.
    _fold(state, _ev(RUN_UPDATE, 3, 150.0, {"summary": {"old": 3}}))
    assert not _fold(state, edit)
    assert summaries.run_summary(summary)["old"] == 3


@pytest.mark.parametrize(
    "data, message",
    [
        ({"config_delete": []}, "config_delete"),
        ({"summary_delete": ["x"] * 1001}, "summary_delete"),
        ({"config_delete": [""]}, "config_delete"),
        ({"config_delete": "opt.lr"}, "config_delete"),
        ({"config_delete": ["opt"], "config": {"opt": {"lr": 1}}}, "config sets"),
        ({"config_delete": ["opt.lr"], "config": {"opt": {"lr": 1}}}, "config sets"),
        ({"summary_delete": ["a.b"], "summary": {"a.b": 1}}, "summary sets"),
        ({"group": 3}, "group"),
        ({"job_type": "x" * 64_001}, "job_type"),
    ],
)
def test_bad_edit_deletions_and_texts_are_refused(data, message):
    with pytest.raises(InvalidEvent, match=message):
        validate(
            {
                "v": 1,
                "type": RUN_EDIT,
                "team": "acme",
                "project": "p",
                "run_id": "r1",
                "seq": 0,
                "ts": 1.0,
                "data": data,
            }
        )
    # Keys beside the ones set are fine.
    validate(
        {
            "v": 1,
            "type": RUN_EDIT,
            "team": "acme",
            "project": "p",
            "run_id": "r1",
            "seq": 0,
            "ts": 1.0,
            "data": {"config_delete": ["opt.m"], "config": {"opt": {"lr": 1}}, "group": None, "job_type": ""},
        }
    )
