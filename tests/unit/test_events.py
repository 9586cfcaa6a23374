import json
import math
import time

import orjson
import pytest

from runstream import events
from runstream.events import InvalidEvent, decode, decode_value, encode_value, validate
from tests.helpers import make_event, metrics_event

VALID = [
    make_event(events.RUN_START, {"name": "fluent-sun-1", "config": {"lr": 0.1}, "tags": ["baseline"], "git": {}}),
    make_event(events.RUN_UPDATE, {"summary": {"best": 0.1}, "define_metric": [{"name": "val/*", "summary": "max"}]}),
    make_event(events.RUN_FINISH, {"state": "failed", "exit_code": 1, "traceback": "Traceback ..."}),
    make_event(events.HEARTBEAT, {"step": 10}),
    make_event(events.RUN_STATE, {"state": "crashed", "reason": "no heartbeat for 300 s"}),
    metrics_event(),
    make_event(events.SYSTEM, {"time": [1.0, 2.0], "values": {"cpu.percent": [3.5, 7.0], "gpu.0.util": [None, 9]}}),
    make_event(events.CONSOLE, {"time": [1.0], "stream": ["stderr"], "line": ["epoch 1/10"]}),
    make_event(
        events.FILE,
        {"path": "media/images/sample_3.png", "kind": "media", "size": 10, "sha256": "a" * 64, "store_key": "k/1"},
    ),
    make_event(events.ALERT, {"title": "loss diverged", "text": "loss > 10", "level": "WARN", "source": "sdk"}),
]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: o["type"])
def test_valid_events_round_trip(obj):
    event = decode(orjson.dumps(obj))
    assert event.to_dict() == {**obj, "ts": float(obj["ts"])}
    assert decode(event.to_bytes()) == event
    assert event.key == b"acme/mnist/run1"
    assert event.topic is events.TOPIC_OF_TYPE[obj["type"]]


def test_every_type_has_a_topic_in_the_contract():
    assert set(events.TOPIC_OF_TYPE.values()) <= set(events.TOPICS)
    run_keyed = [t for t in events.TOPICS if t is not events.TOPIC_DEAD_LETTERS]
    # co-partitioning: a run maps to the same partition number in every run-keyed topic
    assert {t.partitions for t in run_keyed} == {events.RUN_PARTITIONS}


def test_non_finite_values_travel_as_strings_and_come_back():
    for x in (1.5, math.inf, -math.inf):
        assert decode_value(encode_value(x)) == x
    assert math.isnan(decode_value(encode_value(math.nan)))
    assert decode_value(None) is None
    assert decode_value(3) == 3.0
    obj = metrics_event()
    obj["data"]["values"]["loss"] = [encode_value(math.nan), encode_value(math.inf), None]
    event = decode(orjson.dumps(obj))
    assert event.data["values"]["loss"] == ["NaN", "Infinity", None]


def _with(obj, path, value):
    obj = orjson.loads(orjson.dumps(obj))
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return obj


_DELETE = object()
BASE = metrics_event()

MALFORMED = [
    (b"not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, got an array"),
    (_with(BASE, ["v"], 2), "unsupported schema version 2"),
    (_with(BASE, ["type"], "metric"), "unknown event type 'metric'"),
    (_with(BASE, ["extra"], 1), "unknown envelope field(s) ['extra']"),
    (_with(BASE, ["team"], ""), "team must be"),
    (_with(BASE, ["project"], "a/b"), "project must be"),
    (_with(BASE, ["run_id"], "x" * 65), "run_id must be"),
    (_with(BASE, ["seq"], -1), "seq must be a non-negative integer"),
    (_with(BASE, ["seq"], 1.5), "seq must be a non-negative integer"),
    (_with(BASE, ["seq"], True), "seq must be a non-negative integer"),
    (_with(BASE, ["ts"], "yesterday"), "ts must be a Unix time"),
    (_with(BASE, ["data"], []), "data must be a JSON object"),
    (_with(BASE, ["data", "step"], _DELETE), "metrics: field 'step' must be an array"),
    (_with(BASE, ["data", "step"], []), "metrics: a batch holds 1 to"),
    (_with(BASE, ["data", "time"], [1.0]), "metrics: field 'time' has 1 entries, expected 3"),
    (_with(BASE, ["data", "step"], [0, -1, 2]), "every step must be an integer from 0 to"),
    (_with(BASE, ["data", "step"], [0, 2**63, 2]), "every step must be an integer from 0 to"),
    (_with(BASE, ["data", "time"], [1e300] * 3), "every time must be a Unix time"),
    (_with(BASE, ["ts"], 1e17), "ts must be a Unix time"),
    (_with(BASE, ["data", "values"], {}), "field 'values' must be a non-empty object"),
    (_with(BASE, ["data", "values", "loss"], [1, 2]), "values['loss'] must be an array of 3 entries"),
    (_with(BASE, ["data", "values", "loss"], [1, "high", 2]), "values['loss'] holds 'high'"),
    (_with(BASE, ["data", "values", ""], [1, 2, 3]), "metric name must be"),
    (make_event(events.RUN_FINISH, {"state": "exploded"}), "run_finish: field 'state' must be one of"),
    (make_event(events.RUN_START, {}), "run_start: missing field 'name'"),
    (make_event(events.RUN_UPDATE, {"colour": "red"}), "run_update: unknown field(s) ['colour']"),
    (make_event(events.RUN_UPDATE, {}), "an update must set at least one field"),
    (make_event(events.CONSOLE, {"time": [1.0], "stream": ["stdin"], "line": ["x"]}), "every stream must be one of"),
    (
        make_event(
            events.FILE, {"path": "../etc/passwd", "kind": "file", "size": 1, "sha256": "a" * 64, "store_key": "k"}
        ),
        "path must be relative and stay inside the run",
    ),
    (make_event(events.ALERT, {"title": "t", "text": "x", "level": "PANIC", "source": "sdk"}), "field 'level'"),
]


@pytest.mark.parametrize("raw,reason", MALFORMED, ids=[r for _, r in MALFORMED])
def test_malformed_events_are_rejected_with_a_reason(raw, reason):
    if not isinstance(raw, bytes):
        raw = orjson.dumps(raw)
    with pytest.raises(InvalidEvent) as info:
        decode(raw)
    assert reason in info.value.reason


def test_oversized_event_is_rejected_before_parsing():
    with pytest.raises(InvalidEvent, match="more than the limit"):
        decode(b" " * (events.MAX_EVENT_BYTES + 1))


def test_validate_takes_decoded_objects_too():
    assert validate(metrics_event(seq=7)).seq == 7
    with pytest.raises(InvalidEvent):
        validate("metrics")


def test_dead_letter_headers_carry_reason_and_source():
    headers = dict(events.dead_letter_headers("bad seq", "runstream.metrics"))
    assert headers[events.DEAD_LETTER_REASON_HEADER] == b"bad seq"
    assert headers[events.DEAD_LETTER_SOURCE_HEADER] == b"runstream.metrics"


def test_metric_ints_must_fit_64_signed_bits():
    ok = metrics_event(steps=range(1))
    ok["data"]["values"] = {"big": [2**63 - 1]}
    assert validate(ok).data["values"]["big"] == [2**63 - 1]
    for value in (2**63, -(2**63) - 1, 2**64 - 1):
        bad = metrics_event(steps=range(1))
        bad["data"]["values"] = {"big": [value]}
        with pytest.raises(InvalidEvent, match="values"):
            validate(bad)


def test_config_and_summary_nest_at_most_32_levels_dotted_keys_counted():
    assert validate(make_event(events.RUN_START, {"name": "n", "config": {"a." * 31 + "b": 1}}))
    for data in ({"name": "n", "config": {"a." * 32 + "b": 1}}, {"name": "n", "config": {"": 1}}):
        with pytest.raises(InvalidEvent, match="nested at most 32 levels"):
            validate(make_event(events.RUN_START, data))
    deep: dict = {}
    node = deep
    for _ in range(33):
        node["k"] = {}
        node = node["k"]
    for etype in (events.RUN_UPDATE, events.RUN_EDIT):
        with pytest.raises(InvalidEvent, match="nested at most 32 levels"):
            validate(make_event(etype, {"summary": deep}))


def _deep(levels: int) -> dict:
    value: dict | list | int = 1
    for i in range(levels):
        value = {"a": value} if i % 2 else [value]
    return {"x": value}


@pytest.mark.parametrize(
    ("etype", "field", "base"),
    [
        (events.RUN_START, "git", {"name": "n"}),
        (events.FILE, "meta", {"path": "a.png", "kind": "media", "size": 1, "sha256": "0" * 64, "store_key": "k"}),
        (events.METRICS, "extra", {"step": [0], "time": [1.0], "values": {"loss": [1.0]}}),
    ],
)
def test_data_nested_deeper_than_storage_takes_is_refused_whatever_the_field(etype, field, base):
    """Storage and JSON encoders recurse: an event nested a few hundred levels passed validation, then
    failed on every attempt to store it. Now it is refused where it arrives (422, or a dead letter)."""
    assert validate(make_event(etype, {**base, field: _deep(events.MAX_DATA_DEPTH - 2)}))
    for levels in (events.MAX_DATA_DEPTH, 250, 900):
        with pytest.raises(InvalidEvent, match=f"nests more than {events.MAX_DATA_DEPTH} levels"):
            decode(json.dumps(make_event(etype, {**base, field: _deep(levels)})))  # orjson stops at 255


def test_a_seq_from_the_far_future_is_refused():
    """A seq past what the SDK could have made (its session start time << 32) would make every later event
    of its run look like a replay; the SDK's seqs, small test seqs and a resumed run's pass."""
    now = int(time.time())
    for seq in (0, 1, 2**40, (now << 32) + 12345, ((now + 86400) << 32)):
        assert validate(make_event(events.HEARTBEAT, {}, seq)).seq == seq
    for seq in (2**64 - 1, 2**63, (now + events.MAX_SEQ_AHEAD_S + 86400) << 32):
        with pytest.raises(InvalidEvent, match=r"seq \d+ is too large"):
            validate(make_event(events.HEARTBEAT, {}, seq))
    assert events.max_seq(now) < 2**63  # fits the signed 64 bits readers use, until 2038
