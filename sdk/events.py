"""The event contract between the SDK, the stream processors and the API.

Every event is one JSON object (encoded with orjson) with the same envelope:

    {"v": 1, "type": "metrics", "team": "acme", "project": "mnist",
     "run_id": "3f9a1c2b", "seq": 17, "ts": 1764100000.25, "data": {...}}

``(team, project, run_id, seq)`` identifies an event: the SDK gives each of a
run's events, across all topics, a larger number than the one before (an
unsigned 64-bit integer: the session's start time in the high 32 bits, a counter
below, so a resumed run keeps increasing), so a resend, a replay or a duplicate
delivery can be recognised and changes nothing downstream. A seq whose session
start lies more than ``MAX_SEQ_AHEAD_S`` past the clock is refused: it would make
every later event of its run look old. ``data`` nests at most ``MAX_DATA_DEPTH``
levels, so whatever passes here can be stored.

``data`` is specific to the type (see ``_PAYLOAD_CHECKS``). High-volume payloads
(metrics, system samples, console lines) are columnar: parallel arrays, many
rows per event. JSON has no NaN or infinity, so metric values are numbers,
``null`` (the key was not logged in that row) or one of the strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``; ``encode_value``/``decode_value`` convert.

This module is the only place that defines an event shape; the SDK, the
processors and the API all import it. It depends on orjson and ``runstream.names``
only, so training environments can import it without the server extras.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard, overload

import orjson

from runstream import names

SCHEMA_VERSION = 1

# -- topics -------------------------------------------------------------------

#: Every run-keyed topic has the same partition count, so that one run's events
#: land on the same partition number in every topic (Faust co-partitioning: the
#: worker that owns a run's metrics also owns its lifecycle and its table state).
RUN_PARTITIONS = 12


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int
    what: str


TOPIC_RUNS = Topic("runstream.runs", RUN_PARTITIONS, "run lifecycle, config, summary, heartbeats, state changes")
TOPIC_METRICS = Topic("runstream.metrics", RUN_PARTITIONS, "metric history batches")
TOPIC_SYSTEM = Topic("runstream.system", RUN_PARTITIONS, "system metric samples")
TOPIC_CONSOLE = Topic("runstream.console", RUN_PARTITIONS, "console lines")
TOPIC_FILES = Topic("runstream.files", RUN_PARTITIONS, "file and media metadata (blobs live in the file store)")
TOPIC_ALERTS = Topic("runstream.alerts", RUN_PARTITIONS, "alerts from the SDK and from alert rules")
TOPIC_DEAD_LETTERS = Topic("runstream.dead-letters", 1, "events that failed validation, with the reason")

TOPICS: tuple[Topic, ...] = (
    TOPIC_RUNS,
    TOPIC_METRICS,
    TOPIC_SYSTEM,
    TOPIC_CONSOLE,
    TOPIC_FILES,
    TOPIC_ALERTS,
    TOPIC_DEAD_LETTERS,
)

# -- event types --------------------------------------------------------------

RUN_START = "run_start"
RUN_UPDATE = "run_update"
RUN_FINISH = "run_finish"
HEARTBEAT = "heartbeat"
RUN_STATE = "run_state"
RUN_EDIT = "run_edit"
METRICS = "metrics"
SYSTEM = "system"
CONSOLE = "console"
FILE = "file"
ALERT = "alert"
ARTIFACT = "artifact"

#: Which topic carries each event type.
TOPIC_OF_TYPE: dict[str, Topic] = {
    RUN_START: TOPIC_RUNS,
    RUN_UPDATE: TOPIC_RUNS,
    RUN_FINISH: TOPIC_RUNS,
    HEARTBEAT: TOPIC_RUNS,
    RUN_STATE: TOPIC_RUNS,
    RUN_EDIT: TOPIC_RUNS,
    METRICS: TOPIC_METRICS,
    SYSTEM: TOPIC_SYSTEM,
    CONSOLE: TOPIC_CONSOLE,
    FILE: TOPIC_FILES,
    ALERT: TOPIC_ALERTS,
    ARTIFACT: TOPIC_FILES,
}

#: Every state a run may be in: the SDK's ``run_finish`` states, ``crashed`` (decided by the processor) and
#: ``stopped`` (a run a sweep told to stop that then ended: docs/sweeps.md). ``FINAL_STATES``: the SDK's.
RUN_STATES = ("running", "finished", "failed", "killed", "crashed", "stopped")
FINAL_STATES = ("finished", "failed", "killed")
ALERT_LEVELS = ("INFO", "WARN", "ERROR")
CONSOLE_STREAMS = ("stdout", "stderr")
FILE_KINDS = ("file", "media", "code", "git_patch", "requirements")
ARTIFACT_ACTIONS = ("log", "use")
#: A user alias of an artifact version (docs/artifacts.md); ``latest`` and ``v<digits>`` are the server's.
ALIAS_PATTERN = r"[A-Za-z0-9_.\-]{1,64}"
_ALIAS = re.compile(ALIAS_PATTERN + r"\Z")
_VERSION_NAME = re.compile(r"v\d+\Z")
#: A sweep's id (docs/sweeps.md), which a sweep's runs carry in their run_start.
SWEEP_ID_PATTERN = r"[a-z0-9]{8}"
_SWEEP_ID = re.compile(SWEEP_ID_PATTERN + r"\Z")

#: How many times one run may be rewound (init(resume_from=...)): each rewind is a segment every read of the
#: run's history goes through. The SDK refuses more at init; the processor ignores a rewind over it.
MAX_REWINDS = 100

# Limits that keep one event small enough for Kafka's default 1 MiB message size.
MAX_EVENT_BYTES = 1_000_000
MAX_ROWS = 100_000
MAX_NAME_LEN = 256
MAX_TEXT_LEN = 64_000

NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class InvalidEvent(ValueError):
    """An event that breaks the contract; ``reason`` says what is wrong with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    team: str
    project: str
    run_id: str
    seq: int
    ts: float
    data: dict[str, Any]
    v: int = SCHEMA_VERSION

    @property
    def key(self) -> bytes:
        """The Kafka message key: all of a run's events go to one partition per topic."""
        return run_key(self.team, self.project, self.run_id)

    @property
    def topic(self) -> Topic:
        return TOPIC_OF_TYPE[self.type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "type": self.type,
            "team": self.team,
            "project": self.project,
            "run_id": self.run_id,
            "seq": self.seq,
            "ts": self.ts,
            "data": self.data,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


def run_key(team: str, project: str, run_id: str) -> bytes:
    return f"{team}/{project}/{run_id}".encode()


# -- metric values --------------------------------------------------------------


def encode_value(x: float | int) -> float | int | str:
    """A number as it travels in JSON: finite numbers as they are (ints stay ints), NaN/±Inf as strings."""
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


@overload
def decode_value(x: None) -> None: ...
@overload
def decode_value(x: float | int | str) -> float | int: ...
@overload
def decode_value(x: float | int | str | None) -> float | int | None: ...
def decode_value(x: float | int | str | None) -> float | int | None:
    """The inverse of ``encode_value``: ints stay ints (a metric logged as whole numbers reads back
    as ints), ``None`` stays ``None`` (not logged in that row)."""
    if x is None or type(x) is float or type(x) is int:
        return x
    if not isinstance(x, str):  # a bool, a subclass of a number: no value of the contract
        raise KeyError(x)
    return NON_FINITE[x]


# -- decoding and validation ----------------------------------------------------


def decode(raw: bytes | str) -> Event:
    """Parse and validate one encoded event; raises ``InvalidEvent`` with the reason."""
    if not isinstance(raw, (bytes, str)):
        raise InvalidEvent(f"an event is JSON bytes, got {type(raw).__name__}")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"event is {len(raw)} bytes, more than the limit of {MAX_EVENT_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    return validate(obj)


def validate(obj: Any) -> Event:
    """Check a decoded JSON object against the contract and return it as an ``Event``."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {_json_type(obj)}")
    v = obj.get("v")
    if v != SCHEMA_VERSION:
        raise InvalidEvent(f"unsupported schema version {v!r}; this build reads version {SCHEMA_VERSION}")
    etype = obj.get("type")
    check = _PAYLOAD_CHECKS.get(etype) if isinstance(etype, str) else None
    if check is None:
        raise InvalidEvent(f"unknown event type {etype!r}; expected one of {sorted(_PAYLOAD_CHECKS)}")
    assert isinstance(etype, str)  # a check is found for a str only
    unknown = obj.keys() - _ENVELOPE_KEYS
    if unknown:
        raise InvalidEvent(f"unknown envelope field(s) {sorted(unknown)}")
    team, project, run_id = obj.get("team"), obj.get("project"), obj.get("run_id")
    if not names.is_name(team):
        raise InvalidEvent(f"team must be {names.NAME_RULE}, got {team!r}")
    if not names.is_name(project):
        raise InvalidEvent(f"project must be {names.NAME_RULE}, got {project!r}")
    if not names.is_run_id(run_id):
        raise InvalidEvent(f"run_id must be {names.RUN_ID_RULE}, got {run_id!r}")
    seq = obj.get("seq")
    if type(seq) is not int or seq < 0:
        raise InvalidEvent(f"seq must be a non-negative integer, got {seq!r}")
    if seq > max_seq():
        # A later event must get a larger seq: one from the far future would make every later event
        # of the run look like a replay, so it is refused here rather than freezing the run.
        raise InvalidEvent(
            f"seq {seq} is too large: the SDK's seqs are the session's start time (Unix seconds) shifted left "
            f"32 bits plus a counter, and this one starts more than {MAX_SEQ_AHEAD_S // 3600} hours after "
            "this machine's clock; check the sender's clock, or number events from 0"
        )
    ts = obj.get("ts")
    if not _is_time(ts):
        raise InvalidEvent(f"ts must be a Unix time in seconds (a finite number >= 0), got {ts!r}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(f"data must be a JSON object, got {_json_type(data)}")
    try:
        check(data)
    except InvalidEvent as exc:
        raise InvalidEvent(f"{etype}: {exc.reason}") from None
    if etype == RUN_START and isinstance(data.get("fork"), dict) and data["fork"]["run_id"] == run_id:
        raise InvalidEvent("run_start: a run cannot be a fork of itself (fork.run_id is the event's run_id)")
    if etype == METRICS and isinstance(data.get("rewind"), dict) and data["rewind"]["seq"] >= seq:
        raise InvalidEvent("metrics: rewind.seq must be that of the rewind's run_start, sent before this event")
    # After the type's check: the columns it passed hold only numbers and strings, so they need no look.
    columns = _COLUMNS_OF.get(etype, ())
    rest = {k: v for k, v in data.items() if k not in columns} if columns else data
    if not within_depth(rest, MAX_DATA_DEPTH):
        raise InvalidEvent(f"{etype}: data nests more than {MAX_DATA_DEPTH} levels of objects and arrays")
    return Event(type=etype, team=team, project=project, run_id=run_id, seq=seq, ts=float(ts), data=data)


#: How deep ``data`` may nest (objects and arrays), whatever the event type: storage and JSON encoders
#: recurse and stop at a few hundred levels, so deeper data could never be stored.
MAX_DATA_DEPTH = 64
#: How far ahead of this machine's clock a seq's session start (its high 32 bits) may be: room for clock
#: skew, while a seq from further ahead could hold its run's later events off for no longer than this.
MAX_SEQ_AHEAD_S = 86400


def max_seq(now: float | None = None) -> int:
    """The largest seq an event may have now (``sdk/run.py`` starts a session's seqs at ``time << 32``)."""
    return (int(time.time() if now is None else now) + MAX_SEQ_AHEAD_S) << 32 | 0xFFFFFFFF


def within_depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` levels of dicts and lists (a loop: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


#: The columns of the columnar types: their checks pass only numbers and strings (``values``: name -> column).
_COLUMNS_OF = {
    METRICS: ("step", "time", "values"),
    SYSTEM: ("time", "values"),
    CONSOLE: ("time", "stream", "line"),
}


_ENVELOPE_KEYS = frozenset({"v", "type", "team", "project", "run_id", "seq", "ts", "data"})


def _json_type(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(x), "a number"
    )


def _is_number(x: Any) -> bool:
    """A finite float, or an int that fits 64 signed bits (what readers and storage hold)."""
    if type(x) is int:
        return -(2**63) <= x < 2**63
    return type(x) is float and math.isfinite(x)


#: Times and steps must fit ClickHouse's DateTime64(3) and the readers' signed 64-bit ranges.
MAX_TIME = 9_000_000_000.0  # 2255
MAX_STEP = 2**63 - 1


def _is_time(x: Any) -> TypeGuard[float]:
    return _is_number(x) and 0 <= x <= MAX_TIME


def _require(data: dict[str, Any], field: str, ok: Callable[[Any], bool], what: str, optional: bool = False) -> None:
    if field not in data:
        if optional:
            return
        raise InvalidEvent(f"missing field {field!r} ({what})")
    if not ok(data[field]):
        raise InvalidEvent(f"field {field!r} must be {what}, got {data[field]!r:.80}")


def _is_str(x: Any) -> bool:
    return isinstance(x, str) and len(x) <= MAX_TEXT_LEN


def _is_opt_str(x: Any) -> bool:
    return x is None or _is_str(x)


def _is_name(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_NAME_LEN


def _is_obj(x: Any) -> bool:
    return isinstance(x, dict)


#: How deep a config or summary may nest, dotted keys counted as levels ("a.b" is two): storage
#: keeps them flattened to dotted keys and nests them again when read, and JSON encoders stop at
#: a few hundred levels.
MAX_TREE_DEPTH = 32


def is_tree(x: Any, depth: int = 0) -> bool:
    """A config or summary: an object whose keys are non-empty and which nests at most ``MAX_TREE_DEPTH`` levels."""
    if isinstance(x, dict):
        return all(
            isinstance(k, str) and k and (level := depth + k.count(".") + 1) <= MAX_TREE_DEPTH and is_tree(v, level)
            for k, v in x.items()
        )
    if isinstance(x, list):
        return depth < MAX_TREE_DEPTH and all(is_tree(v, depth + 1) for v in x)
    return True


def _is_config(x: Any) -> bool:
    return isinstance(x, dict) and is_tree(x)


_TREE = f"an object nested at most {MAX_TREE_DEPTH} levels deep (dotted keys count), with non-empty keys"


def _is_str_list(x: Any) -> bool:
    return isinstance(x, list) and all(_is_name(t) for t in x)


def _is_metric_value(x: Any) -> bool:
    return x is None or _is_number(x) or (type(x) is str and x in NON_FINITE)


def _check_columns(data: dict[str, Any], index_fields: tuple[str, ...]) -> int:
    """Check the parallel index arrays of a columnar payload; return the row count."""
    rows = None
    for field in index_fields:
        col = data.get(field)
        if not isinstance(col, list):
            raise InvalidEvent(f"field {field!r} must be an array")
        if rows is None:
            rows = len(col)
            if rows == 0 or rows > MAX_ROWS:
                raise InvalidEvent(f"a batch holds 1 to {MAX_ROWS} rows, got {rows}")
        elif len(col) != rows:
            raise InvalidEvent(f"field {field!r} has {len(col)} entries, expected {rows} like {index_fields[0]!r}")
    assert rows is not None
    return rows


def _check_value_columns(data: dict[str, Any], rows: int) -> None:
    values = data.get("values")
    if not isinstance(values, dict) or not values:
        raise InvalidEvent("field 'values' must be a non-empty object of name -> array")
    for name, col in values.items():
        if not _is_name(name):
            raise InvalidEvent(f"metric name must be 1-{MAX_NAME_LEN} characters, got {name!r:.80}")
        if not isinstance(col, list) or len(col) != rows:
            raise InvalidEvent(f"values[{name!r}] must be an array of {rows} entries")
        if _all_numbers(col):
            continue  # the common case, checked in C
        for x in col:
            if not _is_metric_value(x):
                raise InvalidEvent(
                    f'values[{name!r}] holds {x!r:.40}; a value is a number, null, "NaN", "Infinity" or "-Infinity"'
                )


# The columns of metrics and system batches are checked a whole list at a time: the set of
# element types (a C loop) and the extremes, instead of a Python call per value (a worker
# checks a million values a second). A list of only floats and ints whose sum is finite needs
# no per-value look (their sum is NaN or infinite if one of them is; floats parsed from JSON
# never are, orjson refuses the overflows); anything else (None, the contract's "NaN" strings,
# a bool, an out-of-range int) goes value by value.
_NUMBER_TYPES = frozenset({float, int})


def _all_numbers(col: list[Any]) -> bool:
    """Every entry a finite float or an int that fits 64 signed bits (False: look value by value)."""
    kinds = set(map(type, col))
    if not kinds <= _NUMBER_TYPES or (float in kinds and not math.isfinite(sum(col))):
        return False  # (a sum that overflows only sends the column the slow way)
    return kinds == {float} or (min(col) >= -(2**63) and max(col) < 2**63)


def _all_in_range(col: list[Any], kinds: frozenset[type], low: float, high: float) -> bool:
    kinds_found = set(map(type, col))
    if not kinds_found <= kinds or (float in kinds_found and not math.isfinite(sum(col))):
        return False  # NaN compares false with everything: min and max would not see it
    return low <= min(col) and max(col) <= high


def _check_times(col: list[Any]) -> None:
    if not _all_in_range(col, _NUMBER_TYPES, 0, MAX_TIME):
        raise InvalidEvent("every time must be a Unix time in seconds")


def _check_metrics(data: dict[str, Any]) -> None:
    rows = _check_columns(data, ("step", "time"))
    if not _all_in_range(data["step"], frozenset({int}), 0, MAX_STEP):
        raise InvalidEvent(f"every step must be an integer from 0 to {MAX_STEP}")
    _check_times(data["time"])
    _check_value_columns(data, rows)
    # Logged after init(resume_from=...): the rewind's run_start (its seq) and step, so that the event alone
    # names the history segment it belongs to (storage/lineage.py), whatever order the topics are read in.
    _require(data, "rewind", _is_rewind_marker, '{"seq": a non-negative integer, "step": a non-negative integer}', True)


def _check_system(data: dict[str, Any]) -> None:
    rows = _check_columns(data, ("time",))
    _check_times(data["time"])
    _check_value_columns(data, rows)


def _check_console(data: dict[str, Any]) -> None:
    _check_columns(data, ("time", "stream", "line"))
    _check_times(data["time"])
    if not all(s in CONSOLE_STREAMS for s in data["stream"]):
        raise InvalidEvent(f"every stream must be one of {CONSOLE_STREAMS}")
    if not all(_is_str(line) for line in data["line"]):
        raise InvalidEvent(f"every line must be a string of at most {MAX_TEXT_LEN} characters")


def _check_run_start(data: dict[str, Any]) -> None:
    _require(data, "name", _is_name, "a non-empty string")
    _require(data, "config", _is_config, _TREE, optional=True)
    _require(data, "tags", _is_str_list, "an array of non-empty strings", optional=True)
    for field in ("group", "job_type", "notes", "host", "user", "program", "python"):
        _require(data, field, _is_opt_str, "a string or null", optional=True)
    _require(data, "args", lambda x: isinstance(x, list) and all(_is_str(a) for a in x), "an array of strings", True)
    _require(data, "git", _is_obj, "an object", optional=True)
    _require(data, "resumed", lambda x: type(x) is bool, "true or false", optional=True)
    # init(fork_from=...): the parent's history up to step N, then this run's; init(resume_from=...): a rewind.
    _require(data, "fork", _is_fork, '{"run_id": a run id, "step": a non-negative integer}', optional=True)
    _require(data, "rewind", _is_rewind, '{"step": a non-negative integer}', optional=True)
    _require(data, "sweep", is_sweep_id, "a sweep id: 8 characters of [a-z0-9]", optional=True)


def is_sweep_id(x: Any) -> TypeGuard[str]:
    return isinstance(x, str) and _SWEEP_ID.match(x) is not None


def _is_step(x: Any) -> bool:
    return type(x) is int and 0 <= x <= MAX_STEP


def _is_fork(x: Any) -> bool:
    return (
        isinstance(x, dict) and x.keys() == {"run_id", "step"} and names.is_run_id(x["run_id"]) and _is_step(x["step"])
    )


def _is_rewind(x: Any) -> bool:
    return isinstance(x, dict) and x.keys() == {"step"} and _is_step(x["step"])


def _is_rewind_marker(x: Any) -> bool:
    return (
        isinstance(x, dict)
        and x.keys() == {"seq", "step"}
        and type(x["seq"]) is int
        and x["seq"] >= 0
        and _is_step(x["step"])
    )


def _check_run_update(data: dict[str, Any]) -> None:
    allowed = {"name", "config", "summary", "tags", "notes", "group", "job_type", "define_metric"}
    unknown = data.keys() - allowed
    if unknown:
        raise InvalidEvent(f"unknown field(s) {sorted(unknown)}; an update may set {sorted(allowed)}")
    if not data:
        raise InvalidEvent("an update must set at least one field")
    _require(data, "name", _is_name, "a non-empty string", optional=True)
    for field in ("config", "summary"):
        _require(data, field, _is_config, _TREE, optional=True)
    _require(data, "tags", _is_str_list, "an array of non-empty strings", optional=True)
    for field in ("notes", "group", "job_type"):
        _require(data, field, _is_opt_str, "a string or null", optional=True)
    _require(data, "define_metric", lambda x: isinstance(x, list) and all(_is_obj(d) for d in x), "an array", True)
    for spec in data.get("define_metric", ()):
        _require(spec, "name", _is_name, "a metric name or glob")
        _require(
            spec, "summary", _is_summary_choice, f"one or more of {'|'.join(SUMMARY_OPS)}, separated by commas", True
        )
        _require(spec, "goal", lambda x: x in ("minimize", "maximize"), "minimize|maximize", optional=True)
        _require(spec, "step_metric", _is_name, "a metric name", optional=True)


#: What ``define_metric(summary=...)`` may ask for ("min,max": both), as in wandb.
SUMMARY_OPS = ("min", "max", "mean", "last", "best", "copy", "none")


def _is_summary_choice(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_NAME_LEN and all(op.strip() in SUMMARY_OPS for op in x.split(","))


def _check_run_finish(data: dict[str, Any]) -> None:
    _require(data, "state", lambda x: x in FINAL_STATES, f"one of {FINAL_STATES}")
    _require(
        data,
        "exit_code",
        lambda x: x is None or (type(x) is int and -(2**31) <= x < 2**31),
        "a 32-bit integer or null",
        optional=True,
    )
    _require(data, "traceback", _is_opt_str, "a string or null", optional=True)


def _check_heartbeat(data: dict[str, Any]) -> None:
    _require(data, "step", lambda x: type(x) is int and 0 <= x <= MAX_STEP, "a non-negative integer", optional=True)


def _check_run_state(data: dict[str, Any]) -> None:
    _require(data, "state", lambda x: x in RUN_STATES, f"one of {RUN_STATES}")
    _require(data, "reason", _is_opt_str, "a string or null", optional=True)
    # A crash decided by the processor holds only if the run has stayed silent since this time.
    _require(data, "since", _is_time, "a Unix time in seconds", optional=True)


RUN_EDIT_FIELDS = (
    "name",
    "tags",
    "notes",
    "group",
    "job_type",
    "config",
    "summary",
    "config_delete",
    "summary_delete",
)
#: How many keys one edit may delete from the config, and from the summary.
MAX_EDIT_DELETES = 1000


def _is_key_list(x: Any) -> bool:
    """Dotted keys (as storage keeps them: ``opt.lr``) to delete."""
    return (
        isinstance(x, list)
        and 0 < len(x) <= MAX_EDIT_DELETES
        and all(isinstance(k, str) and 0 < len(k) <= MAX_TEXT_LEN for k in x)
    )


def _check_run_edit(data: dict[str, Any]) -> None:
    # A user's edit through the API; the edit's ts (the server's clock) orders edits. config keys
    # merge into the run's config, summary keys become explicit summary values; *_delete name the
    # dotted keys removed (a key names its whole subtree), and may not touch a key the edit sets.
    if data.keys() - set(RUN_EDIT_FIELDS) or not data:
        raise InvalidEvent(f"an edit sets some of {', '.join(RUN_EDIT_FIELDS)}")
    _require(data, "name", _is_name, f"a non-empty string of at most {MAX_NAME_LEN} characters", optional=True)
    _require(data, "tags", _is_str_list, f"an array of non-empty strings of at most {MAX_NAME_LEN} characters", True)
    for field in ("notes", "group", "job_type"):  # group and job_type: as at init
        _require(data, field, _is_opt_str, f"a string of at most {MAX_TEXT_LEN:,} characters, or null", optional=True)
    for field in ("config", "summary"):
        _require(data, field, _is_config, _TREE, optional=True)
        what = f'an array of 1-{MAX_EDIT_DELETES:,} dotted keys (non-empty strings), e.g. ["opt.lr"]'
        _require(data, f"{field}_delete", _is_key_list, what, optional=True)
        if clash := _overlap(data.get(field) or {}, data.get(f"{field}_delete") or ()):
            raise InvalidEvent(f"{field}_delete names {clash!r:.80}, which {field} sets in the same edit")


def _overlap(tree: dict[str, Any], keys: Any) -> str | None:
    """A dotted key of ``keys`` that names a key ``tree`` sets (flattened) or one holding it: applied before or
    after the set, it would leave a different config."""
    taken: set[str] = set()  # every key the edit sets, and every dotted prefix of one

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = prefix + key
            taken.add(path)
            taken.update(path[:i] for i, c in enumerate(path) if c == ".")
            if isinstance(value, dict):
                walk(value, path + ".")

    walk(tree, "")
    return next((key for key in keys if key in taken), None)


def _check_file(data: dict[str, Any]) -> None:
    _require(data, "path", _is_name, "a relative path")
    if data["path"].startswith("/") or ".." in data["path"].split("/"):
        raise InvalidEvent(f"path must be relative and stay inside the run, got {data['path']!r}")
    _require(data, "kind", lambda x: x in FILE_KINDS, f"one of {FILE_KINDS}")
    _require(data, "size", lambda x: type(x) is int and x >= 0, "a size in bytes")
    _require(
        data, "sha256", lambda x: isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) is not None, "a hex SHA-256"
    )
    _require(data, "store_key", _is_name, "the blob's key in the file store")
    _require(data, "step", lambda x: type(x) is int and x >= 0, "a non-negative integer", optional=True)
    _require(data, "media_type", _is_opt_str, "a string or null", optional=True)
    _require(data, "meta", _is_obj, "an object", optional=True)


def _check_alert(data: dict[str, Any]) -> None:
    _require(data, "title", _is_name, "a non-empty string")
    _require(data, "text", _is_str, "a string")
    _require(data, "level", lambda x: x in ALERT_LEVELS, f"one of {ALERT_LEVELS}")
    _require(data, "source", lambda x: x in ("sdk", "rule"), "'sdk' or 'rule'")
    _require(data, "rule_id", _is_opt_str, "a string or null", optional=True)
    _require(data, "wait_duration", lambda x: _is_number(x) and x >= 0, "seconds", optional=True)
    # Rule alerts carry an id derived from their trigger, so a replayed evaluation stores the same alert.
    _require(data, "alert_id", _is_name, "an alert id", optional=True)


#: Not aliases: ``latest`` is always the newest version, and the API's paths use the others.
RESERVED_ALIASES = ("latest", "versions", "aliases")


def is_alias(x: Any) -> bool:
    """A user alias an artifact version can be given (``best``, ``prod``): not ``v<digits>``, not reserved, and
    not 64 hex digits (a ref like that names a version by digest, so such an alias could never be read)."""
    return (
        isinstance(x, str)
        and _ALIAS.match(x) is not None
        and x not in RESERVED_ALIASES
        and not _VERSION_NAME.match(x)
        and not _is_sha256(x)
    )


def _is_sha256(x: Any) -> bool:
    return isinstance(x, str) and re.fullmatch(r"[0-9a-f]{64}", x) is not None


def _check_artifact(data: dict[str, Any]) -> None:
    # docs/artifacts.md: a log names a version by its manifest blob's SHA-256; a use names one the run read.
    _require(data, "action", lambda x: x in ARTIFACT_ACTIONS, f"one of {ARTIFACT_ACTIONS}")
    _require(data, "name", names.is_name, f"an artifact name: {names.NAME_RULE}")
    _require(data, "digest", _is_sha256, "the manifest blob's hex SHA-256")
    if data["action"] == "use":
        _require(data, "project", names.is_name, f"the artifact's project: {names.NAME_RULE}")
        return
    _require(data, "type", names.is_name, f"an artifact type: {names.NAME_RULE}")
    _require(data, "description", _is_opt_str, f"a string of at most {MAX_TEXT_LEN:,} characters", optional=True)
    _require(data, "metadata", _is_config, _TREE, optional=True)
    # "latest" is accepted (wandb's SDKs send it) and means nothing: it is always the newest version.
    _require(
        data,
        "aliases",
        lambda x: isinstance(x, list) and len(x) <= 100 and all(a == "latest" or is_alias(a) for a in x),
        f"an array of aliases ({ALIAS_PATTERN}, not v<digits>, versions or aliases)",
        optional=True,
    )
    for field in ("size", "file_count"):
        _require(data, field, lambda x: type(x) is int and 0 <= x < 2**63, "a non-negative integer")


_PAYLOAD_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    RUN_START: _check_run_start,
    RUN_UPDATE: _check_run_update,
    RUN_FINISH: _check_run_finish,
    HEARTBEAT: _check_heartbeat,
    RUN_STATE: _check_run_state,
    RUN_EDIT: _check_run_edit,
    METRICS: _check_metrics,
    SYSTEM: _check_system,
    CONSOLE: _check_console,
    FILE: _check_file,
    ALERT: _check_alert,
    ARTIFACT: _check_artifact,
}
assert _PAYLOAD_CHECKS.keys() == TOPIC_OF_TYPE.keys()


# -- dead letters ----------------------------------------------------------------

#: Kafka headers of a dead-letter message; its value is the original bytes, unchanged.
DEAD_LETTER_REASON_HEADER = "runstream-reason"
DEAD_LETTER_SOURCE_HEADER = "runstream-source-topic"


def dead_letter_headers(reason: str, source_topic: str) -> list[tuple[str, bytes]]:
    return [
        (DEAD_LETTER_REASON_HEADER, reason.encode()),
        (DEAD_LETTER_SOURCE_HEADER, source_topic.encode()),
    ]
