"""Forks and rewinds without a database: segments, the argument's spelling, the event contract's fields."""

from __future__ import annotations

import numpy as np
import pytest

from runstream import events
from runstream.resume import run_at_step
from runstream.storage.lineage import MAX_STEP, Lineage, Rewind, Segment, compose, resolve, segment_id, segment_of
from runstream.storage.series import Source, _concat, _spans


def test_segments_of_a_fork_of_a_rewound_run_rewound_again():
    parent = compose("p", Lineage(rewinds=[Rewind(50, 10, 0.0)]))
    assert parent == [Segment("p", 0, 50), Segment("p~r10", 51, MAX_STEP)]
    # Rewinds apply in seq order, whatever order they were recorded in (a marker may record a later one first).
    fork = Lineage("p", 80, [Rewind(60, 9, 0.0), Rewind(120, 7, 0.0)])
    assert compose("f", fork, parent) == [
        Segment("p", 0, 50),
        Segment("p~r10", 51, 60),
        Segment("f~r9", 61, MAX_STEP),
    ]
    assert compose("f", fork, parent, rewinds=1) == [
        Segment("p", 0, 50),
        Segment("p~r10", 51, 80),
        Segment("f", 81, 120),
        Segment("f~r7", 121, MAX_STEP),
    ]
    assert compose("f", fork, parent, rewinds=0)[-1] == Segment("f", 81, MAX_STEP)
    assert compose("plain", None) == [Segment("plain", 0, MAX_STEP)]


def test_an_event_is_stored_under_the_segment_its_seq_falls_in():
    assert segment_of("r", [], 5) == "r"
    assert [segment_of("r", [10, 20], seq) for seq in (9, 10, 19, 20, 99)] == ["r", "r~r10", "r~r10", "r~r20", "r~r20"]
    assert segment_id("r", None) == "r" and segment_id("r", 0) == "r~r0"


def test_fork_from_and_resume_from_are_spelt_as_wandb_does():
    assert run_at_step("a1b2?_step=200", "fork_from") == ("a1b2", 200)
    for bad in ("a1b2", "a1b2?_step=", "a1b2?_step=1.5", "a1b2?step=3", "?_step=3", "a/b?_step=3", "a?_step=٣", 7):
        with pytest.raises(ValueError, match="fork_from"):
            run_at_step(bad, "fork_from")


def test_the_contract_checks_fork_and_rewind_fields():
    def start(**data):
        return {"v": 1, "type": "run_start", "team": "t", "project": "p", "run_id": "r", "seq": 1, "ts": 1.0,
                "data": {"name": "n", **data}}  # fmt: skip

    assert events.validate(start(fork={"run_id": "q", "step": 3}, rewind={"step": 0})).data["fork"]["step"] == 3
    for bad in ({"fork": {"run_id": "q"}}, {"fork": {"run_id": "q~r1", "step": 1}}, {"rewind": {"step": -1}}):
        with pytest.raises(events.InvalidEvent):
            events.validate(start(**bad))
    with pytest.raises(events.InvalidEvent, match="cannot be a fork of itself"):
        events.validate(start(fork={"run_id": "r", "step": 3}))


def test_the_contract_checks_the_rewind_marker_of_metrics():
    def metrics(seq=5, **data):
        return {"v": 1, "type": "metrics", "team": "t", "project": "p", "run_id": "r", "seq": seq, "ts": 1.0,
                "data": {"step": [10], "time": [1.0], "values": {"loss": [1.0]}, **data}}  # fmt: skip

    assert events.validate(metrics(rewind={"seq": 4, "step": 9})).data["rewind"] == {"seq": 4, "step": 9}
    assert "rewind" not in events.validate(metrics()).data  # older SDKs: none
    for bad in ({"seq": 4}, {"seq": -1, "step": 9}, {"seq": 4, "step": 9, "x": 1}, {"seq": "4", "step": 9}, 3):
        with pytest.raises(events.InvalidEvent, match="rewind"):
            events.validate(metrics(rewind=bad))
    with pytest.raises(events.InvalidEvent, match="sent before this event"):
        events.validate(metrics(seq=4, rewind={"seq": 4, "step": 9}))


def test_a_cycle_of_forks_ends_the_chain():
    class Rows:
        def __init__(self, rows):
            self.result_rows = rows

    class Client:  # run_lineage as rows written by hand: a forked by b, b by a (the processor writes no cycle)
        def query(self, sql, parameters):
            rows = {"a": ("a", "b", 6, [], [], []), "b": ("b", "a", 3, [], [], []), "s": ("s", "s", 5, [], [], [])}
            return Rows([rows[r] for r in parameters["runs"] if r in rows])

    found = resolve(Client(), "t", "p", ["a", "b", "s"])
    assert found["a"] == [Segment("b", 4, 6), Segment("a", 7, MAX_STEP)]  # b's parent, a, is on the path: none
    assert found["b"] == [Segment("b", 4, MAX_STEP)]
    assert found["s"] == [Segment("s", 6, MAX_STEP)]  # a self-fork: no parent to read


def test_a_segment_bound_inside_a_stored_bucket_is_read_from_raw_points():
    level = Source(1, 16)
    raw = Source(0, 16)
    assert _spans(level, 0, 100, 0, MAX_STEP) == [(level, 0, 100)]  # a plain run: as before
    assert _spans(level, 0, 40, 0, 40) == [(level, 0, 31), (raw, 32, 40)]
    assert _spans(level, 41, 200, 41, MAX_STEP) == [(raw, 41, 47), (level, 48, 200)]
    assert _spans(level, 41, 45, 41, 45) == [(raw, 41, 45)]
    assert _spans(raw, 41, 45, 41, 45) == [(raw, 41, 45)]


def test_a_bucket_split_between_two_segments_is_joined():
    def part(bucket, step, n, low, high, total, last):
        return {k: np.array(v, dtype=float) for k, v in
                dict(bucket=bucket, step=step, time_ms=step, n=n, min=low, max=high, sum=total, last=last).items()}  # fmt: skip

    joined = _concat([part([1, 2], [31, 40], [16, 9], [0, 1], [5, 6], [20, 30], [3, 4]),
                      part([2, 3], [47, 63], [7, 16], [-1, 2], [2, 9], [5, 50], [7, 8])])  # fmt: skip
    assert joined["bucket"].tolist() == [1, 2, 3]
    assert joined["n"].tolist() == [16, 16, 16] and joined["sum"].tolist() == [20, 35, 50]
    assert joined["min"].tolist() == [0, -1, 2] and joined["max"].tolist() == [5, 6, 9]
    assert joined["last"].tolist() == [3, 7, 8] and joined["step"].tolist() == [31, 47, 63]
