"""Hyperband early termination in the stream processor, on the real engine (docs/sweeps.md).

Runs of a sweep log ``val/loss``; at the bracket (the 3rd finite value: min_iter 3, eta 3; the next bracket
is the 9th) each run's value is compared with those of the runs that reached it before: the ones worse than
the cut (W&B's: the best third) are told to stop, and end ``stopped`` when they then finish.
"""

from __future__ import annotations

from typing import Any

import orjson

from runstream.events import METRICS, RUN_FINISH, RUN_START, Event, encode_value, validate
from runstream.storage import runs, sweep_stops
from runstream.streams.pipeline import Pipeline

TEAM, PROJECT, SWEEP = "acme", "hb", "sw33p001"
T0 = 1_760_000_000.0
CONFIG = {
    "method": "random",
    "metric": {"name": "val/loss", "goal": "minimize"},
    "parameters": {"lr": {"min": 0.001, "max": 0.1}},
    "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3, "s": 1},  # s: not used with min_iter
}
#: Each run's 3rd val/loss, in the order the runs reach the bracket, and whether it is then worse than the cut.
#: r1..r3 each beat all before them; r4 (0.9) is worse than the cut of 4 (the 2nd best, 0.2); r5 (0.25) than
#: that of 5 (0.2); r6 (0.15) is better than that of 6 (0.2).
AT_BRACKET = {"r1": 0.3, "r2": 0.2, "r3": 0.1, "r4": 0.9, "r5": 0.25, "r6": 0.15}
STOPPED = {"r4", "r5"}


def _event(type_: str, run_id: str, seq: int, ts: float, data: dict[str, Any]) -> Event:
    return validate(
        {"v": 1, "type": type_, "team": TEAM, "project": PROJECT, "run_id": run_id, "seq": seq, "ts": ts, "data": data}
    )


def _sweep(client, sweep_id: str = SWEEP, config: dict[str, Any] = CONFIG) -> None:
    row = {
        "team": TEAM,
        "project": PROJECT,
        "sweep_id": sweep_id,
        "name": sweep_id,
        "config": orjson.dumps(config).decode(),
        "method": config["method"],
        "state": "running",
        "created_by": "tester",
        "created_at": int(T0 * 1000),
        "updated_at": int(T0 * 1000),
        "version": 1,
    }
    client.insert("sweeps", [list(row.values())], column_names=list(row))


def _start(run_id: str, sweep: str | None = SWEEP) -> Event:
    return _event(RUN_START, run_id, 1, T0, {"name": run_id, **({"sweep": sweep} if sweep else {})})


def _metrics(run_id: str, seq: int, steps: list[int], values: dict[str, list[Any]]) -> Event:
    return _event(
        METRICS, run_id, seq, T0 + steps[-1], {"step": steps, "time": [T0 + s for s in steps], "values": values}
    )


def _logged(run_id: str, third: float) -> list[Event]:
    """Two metrics events: the first holds two val/loss values among rows of train/loss only, the second the
    third value (the bracket's) and a fourth."""
    return [
        _metrics(run_id, 2, [0, 1, 2], {"train/loss": [1.0, 0.9, 0.8], "val/loss": [1.0, None, 0.95]}),
        _metrics(run_id, 3, [3, 4], {"val/loss": [third, 0.05]}),
    ]


def _finish(run_id: str, state: str) -> Event:
    return _event(RUN_FINISH, run_id, 4, T0 + 100, {"state": state, "exit_code": 143 if state == "killed" else 0})


def _stops(client) -> dict[str, str]:
    rows = client.query(
        "SELECT run_id, reason FROM sweep_stops FINAL WHERE team = {t:String} AND sweep_id = {s:String}",
        parameters={"t": TEAM, "s": SWEEP},
    ).result_rows
    return dict(rows)


def _states(client) -> dict[str, str]:
    return dict(client.query("SELECT run_id, state FROM runs FINAL WHERE team = 'acme'").result_rows)


def _sweep_alerts(client) -> list[tuple]:
    return client.query(
        "SELECT run_id, rule_id, level, title, text FROM alerts FINAL WHERE rule_id LIKE 'sweep:%' ORDER BY run_id"
    ).result_rows


def test_hyperband_stops_exactly_the_runs_worse_than_the_bracket_cut(clickhouse):
    _sweep(clickhouse)
    pipeline = Pipeline(lambda: clickhouse)
    pipeline.handle([_start("plain", sweep=None), *_logged("plain", 5.0)])  # no sweep: never compared
    for run_id, third in AT_BRACKET.items():
        pipeline.handle([_start(run_id), *_logged(run_id, third)])
        if run_id == "r4":
            pipeline.handle(_logged(run_id, third))  # redelivered: counted once, no second milestone or alert

    assert set(_stops(clickhouse)) == STOPPED
    assert (
        _stops(clickhouse)["r4"]
        == "val/loss 0.9 at iteration 3 is worse than the bracket's cut 0.2 (top 1/3 of 4 runs)"
    )
    assert sorted(sweep_stops.bracket_values(clickhouse, TEAM, PROJECT, SWEEP, 3, "none")) == sorted(
        AT_BRACKET.values()
    )
    assert len(sweep_stops.bracket_values(clickhouse, TEAM, PROJECT, SWEEP, 3, "r1")) == len(AT_BRACKET) - 1
    assert sweep_stops.bracket_values(clickhouse, TEAM, PROJECT, SWEEP, 4, "none") == []  # no bracket there
    states = pipeline.states
    assert {k[2]: s.get("sweep_count") for k, s in states.items()} == {**dict.fromkeys(AT_BRACKET, 4), "plain": None}
    assert {k[2] for k, s in states.items() if "stop" in s["record"]} == STOPPED
    assert all(_states(clickhouse)[r] == "running" for r in AT_BRACKET)  # told to stop; not ended yet

    alerts = _sweep_alerts(clickhouse)
    assert [(r[0], r[1], r[2], r[3]) for r in alerts] == [
        (run_id, f"sweep:{SWEEP}", "INFO", "stopped by sweep") for run_id in sorted(STOPPED)
    ]
    assert alerts[0][4] == _stops(clickhouse)["r4"]

    # The agent kills the stopped runs; the others finish on their own.
    pipeline.handle([_finish(r, "killed" if r in STOPPED else "finished") for r in [*AT_BRACKET, "plain"]])
    assert _states(clickhouse) == {
        **{r: "stopped" if r in STOPPED else "finished" for r in AT_BRACKET},
        "plain": "finished",
    }
    detail = runs.get_run(clickhouse, TEAM, PROJECT, "r4")
    assert detail is not None and detail["sweep"] == SWEEP and detail["finished_at"] == T0 + 100
    plain = runs.get_run(clickhouse, TEAM, PROJECT, "plain")
    assert plain is not None and plain["sweep"] is None
    assert detail["error"] is None  # a stop is not a failure
    found = runs.search_runs(clickhouse, TEAM, PROJECT, filters={"sweep": SWEEP}, limit=100)
    assert sorted(r["run_id"] for r in found["runs"]) == sorted(AT_BRACKET)
    groups = runs.group_runs(clickhouse, TEAM, PROJECT, ["sweep", "state"])
    assert {(tuple(g["group"].values()), g["count"]) for g in groups} == {
        ((SWEEP, "finished"), 4),
        ((SWEEP, "stopped"), 2),
        ((None, "finished"), 1),  # a run of no sweep groups under None
    }
    assert len(_sweep_alerts(clickhouse)) == 2  # the finish made no second alert


def test_a_replayed_stream_decides_the_same_and_stores_one_alert_per_stop(clickhouse):
    _sweep(clickhouse)
    stream = [e for run_id, third in AT_BRACKET.items() for e in (_start(run_id), *_logged(run_id, third))]
    pipeline = Pipeline(lambda: clickhouse)
    for start in range(0, len(stream), 2):
        batch = stream[start : start + 2]
        pipeline.processor.process(batch, pipeline.states)  # a worker that wrote rows but never stored its states
        pipeline.handle(batch)  # redelivered onto the old states
    Pipeline(lambda: clickhouse).handle(stream)  # a restart: states read back, everything a replay
    assert set(_stops(clickhouse)) == STOPPED
    assert len(_sweep_alerts(clickhouse)) == 2
    assert clickhouse.query("SELECT count() FROM sweep_milestones FINAL").result_rows[0][0] == len(AT_BRACKET)
    assert {k[2]: s["sweep_count"] for k, s in pipeline.states.items()} == dict.fromkeys(AT_BRACKET, 4)


def test_values_folded_before_the_runs_start_count_toward_the_bracket(clickhouse):
    """On a cluster the metrics topic may be read before the runs topic: the run's sweep is not known when its
    first values are folded, and its iteration starts from what its summary counted."""
    _sweep(clickhouse)
    pipeline = Pipeline(lambda: clickhouse)
    for run_id in ("r1", "r2"):
        pipeline.handle([_start(run_id), *_logged(run_id, AT_BRACKET[run_id])])
    early, late = _logged("late", 0.9)
    pipeline.handle([early])  # two values, no sweep yet
    pipeline.handle([_start("late")])
    pipeline.handle([late])  # the third value is at the bracket: worse than the cut of 3 (0.3)
    assert set(_stops(clickhouse)) == {"late"}
    assert pipeline.states[(TEAM, PROJECT, "late")]["sweep_count"] == 4


def test_a_run_of_a_cancelled_sweep_ends_stopped_and_failures_to_read_the_sweep_skip_hyperband(clickhouse):
    _sweep(clickhouse)
    pipeline = Pipeline(lambda: clickhouse)
    pipeline.handle([_start("c1")])
    # The API cancels the sweep: a stop row for each running run, the agent kills it.
    sweep_stops.insert_stop(clickhouse, TEAM, PROJECT, SWEEP, "c1", "the sweep was cancelled", T0 + 50)
    pipeline.handle([_finish("c1", "killed")])
    assert _states(clickhouse)["c1"] == "stopped"
    assert pipeline.states[(TEAM, PROJECT, "c1")]["record"]["stop"]["reason"] == "the sweep was cancelled"

    # A sweep whose configuration cannot be read (not valid) makes no decision and no failure.
    _sweep(clickhouse, "broken01", {"method": "random"})
    pipeline.handle([_start("b1", sweep="broken01"), *_logged("b1", 0.9), _finish("b1", "finished")])
    assert _states(clickhouse)["b1"] == "finished"
    # A sweep unknown to the server: the same.
    pipeline.handle([_start("u1", sweep="unknown1"), *_logged("u1", 0.9), _finish("u1", "finished")])
    assert _states(clickhouse)["u1"] == "finished"


def test_without_strict_a_run_is_judged_by_its_best_value_so_far_and_non_finite_values_are_no_iterations(clickhouse):
    """``strict: false``: the cut is still made of the values at the bracket, but a run goes on when its best
    value up to the bracket (kept in its state across batches) is not worse than it. NaN and infinity are no
    iterations (W&B filters them from the history)."""
    _sweep(clickhouse, config={**CONFIG, "early_terminate": {**CONFIG["early_terminate"], "strict": False}})
    pipeline = Pipeline(lambda: clickhouse)
    for run_id in ("r1", "r2"):  # 0.3 and 0.2 at the bracket
        pipeline.handle([_start(run_id), *_logged(run_id, AT_BRACKET[run_id])])
    nan, inf = encode_value(float("nan")), encode_value(float("inf"))
    for run_id, first in (("lucky", 0.01), ("poor", 0.5)):
        pipeline.handle(
            [
                _start(run_id),
                _metrics(run_id, 2, [0, 1, 2], {"val/loss": [first, nan, 0.95]}),  # iterations 1 and 2
                _metrics(run_id, 3, [3, 4, 5], {"val/loss": [inf, 0.9, 0.05]}),  # 0.9 is the 3rd: the bracket's
            ]
        )
    # Both had 0.9 at the bracket, worse than the cut (0.3 of 3 runs, then 0.3 of 4); lucky's best was 0.01.
    assert set(_stops(clickhouse)) == {"poor"}
    assert _stops(clickhouse)["poor"] == (
        "val/loss's best 0.5 up to iteration 3 is worse than the bracket's cut 0.3 (top 1/3 of 4 runs)"
    )
    milestones = dict(
        clickhouse.query(
            "SELECT run_id, value FROM sweep_milestones FINAL WHERE sweep_id = {s:String} AND iteration = 3",
            parameters={"s": SWEEP},
        ).result_rows
    )
    assert milestones == {"r1": 0.3, "r2": 0.2, "lucky": 0.9, "poor": 0.9}  # the values at the bracket
    lucky = pipeline.states[(TEAM, PROJECT, "lucky")]
    assert (lucky["sweep_count"], lucky["sweep_best"]) == (4, 0.01)


def test_strict_by_default_judges_the_value_at_the_bracket(clickhouse):
    _sweep(clickhouse)
    pipeline = Pipeline(lambda: clickhouse)
    for run_id in ("r1", "r2"):
        pipeline.handle([_start(run_id), *_logged(run_id, AT_BRACKET[run_id])])
    pipeline.handle([_start("lucky"), _metrics("lucky", 2, [0, 1, 2, 3], {"val/loss": [0.01, 0.95, 0.9, 0.05]})])
    assert _stops(clickhouse) == {
        "lucky": "val/loss 0.9 at iteration 3 is worse than the bracket's cut 0.3 (top 1/3 of 3 runs)"
    }
