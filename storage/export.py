"""Bulk export of metric history and run metadata, streamed as Parquet, Arrow IPC or CSV.

An export is cut into chunks of about ``CHUNK_POINTS`` points that follow each
other in (run_id, metric, step) order: whole runs, or for a bigger run groups
of whole metrics, or for a bigger metric step ranges. Each chunk is one
ClickHouse query that deduplicates (``FINAL``: the current row per (run,
metric, step)), joins each step's wall time from ``metric_steps`` and sorts.
So the export is sorted, memory stays bounded by a chunk whatever its size,
and a thread runs the next chunk's query while the caller handles this one.

Why not one ``raw_stream`` query: the embedded engine (chdb) cannot stream
formats with a header or footer (Arrow, Parquet, ``CSVWithNames``) and
materializes them whole, and a long list of run ids must not ride in one URL
to a server. ClickHouse writes each chunk as uncompressed ArrowStream (its
fastest output, measured) or CSV; Arrow chunks are spliced into one IPC
stream without decoding, Parquet is written by pyarrow (a row group per
chunk), CSV chunks follow one header line. The caller gets one valid file.

``FINAL`` rather than ``argMax``/``LIMIT 1 BY``: measured on 2M points, it reads
merged data 2x faster (0.22 s against 0.42 s); only when every point has an
unmerged duplicate is ``LIMIT 1 BY`` faster (0.66 s against 1.46 s), and merges
end that state.

Run selection by filter is the caller's (the filter module resolves a filter
to run ids); these functions take up to ``MAX_RUNS`` run ids.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from queue import Full, Queue
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

from runstream.storage import deletion
from runstream.storage.errors import QueryError
from runstream.storage.lineage import SEGMENT_FILTER, Segment, is_plain, resolve, segment_params

T = TypeVar("T")
Format = Literal["parquet", "arrow", "csv"]
FORMATS: tuple[str, ...] = ("parquet", "arrow", "csv")
MAX_RUNS = 100_000
#: Points per chunk query: about 32 MB of Arrow, a tenth of a second of work (1M to 4M measured alike).
CHUNK_POINTS = 1_000_000
#: Run ids per query parameter, so a query stays small for a server's URL.
IDS_PER_QUERY = 5_000
MAX_STEP = 2**64 - 1

_DICT = pa.dictionary(pa.int32(), pa.string())
HISTORY_SCHEMA = pa.schema(
    [
        pa.field("run_id", _DICT, nullable=False),
        pa.field("metric", _DICT, nullable=False),
        pa.field("step", pa.uint64(), nullable=False),
        pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)
HISTORY_COLUMNS = tuple(HISTORY_SCHEMA.names)

# Output settings ride in the query itself (valid on both engines and for every client call).
_ARROW_SETTINGS = (
    "output_format_arrow_low_cardinality_as_dictionary = 1, output_format_arrow_string_as_string = 1, "
    "output_format_arrow_compression_method = 'none'"
)
_CSV_SETTINGS = "date_time_output_format = 'iso'"
_CH_FORMAT = {"arrow": "ArrowStream", "parquet": "ArrowStream", "csv": "CSV"}

# A (run, step) as one UInt128 join key: the run's position in the chunk, then the step.
# Hashing it is several times faster than hashing (run_id String, step).
_STEP_KEY = "bitOr(bitShiftLeft(toUInt128(transform(run_id, {runs:Array(String)}, {idx:Array(UInt32)}, toUInt32(0))), 64), step)"
_CHUNK_WHERE = """team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)}
          AND step >= {lo:UInt64} AND step <= {hi:UInt64}"""

_HISTORY_SQL = f"""
SELECT p.run_id AS run_id, p.metric AS metric, p.step AS step, s.time AS time, p.value AS value
FROM (SELECT run_id, metric, step, value, {_STEP_KEY} AS k FROM metric_points FINAL
      WHERE {_CHUNK_WHERE} %(metric_filter)s) AS p
ANY LEFT JOIN (SELECT {_STEP_KEY} AS k, time FROM metric_steps FINAL WHERE {_CHUNK_WHERE}) AS s ON p.k = s.k
ORDER BY run_id, metric, step
SETTINGS %(settings)s
"""

# One run whose history is composed (a fork, a rewound run: storage/lineage.py), its segments' points under its id;
# planned into chunks like a plain run (``_plan_run``), over its composed history.
_SEGMENTS_WHERE = f"""team = {{team:String}} AND project = {{project:String}} AND {SEGMENT_FILTER}
          AND step >= {{lo:UInt64}} AND step <= {{hi:UInt64}}"""
_COMPOSED_SQL = f"""
SELECT toLowCardinality({{run:String}}) AS run_id, p.metric AS metric, p.step AS step, s.time AS time, p.value AS value
FROM (SELECT metric, step, value, {_STEP_KEY} AS k FROM metric_points FINAL
      WHERE {_SEGMENTS_WHERE} %(metric_filter)s) AS p
ANY LEFT JOIN (SELECT {_STEP_KEY} AS k, time FROM metric_steps FINAL WHERE {_SEGMENTS_WHERE}) AS s ON p.k = s.k
ORDER BY metric, step
SETTINGS %(settings)s
"""

_RUN_COUNTS = """
SELECT run_id, count() FROM metric_points
WHERE team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)} %(metric_filter)s
GROUP BY run_id ORDER BY run_id
"""

_METRIC_COUNTS = """
SELECT metric, count(), min(step), max(step) FROM metric_points
WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String} %(metric_filter)s
GROUP BY metric ORDER BY metric
"""

_COMPOSED_METRIC_COUNTS = f"""
SELECT metric, count(), min(step), max(step) FROM metric_points
WHERE team = {{team:String}} AND project = {{project:String}} AND {SEGMENT_FILTER} %(metric_filter)s
GROUP BY metric ORDER BY metric
"""

_METRIC_FILTER = "AND metric IN {metrics:Array(String)}"


# -- metric history ------------------------------------------------------------------


def export_history(
    client: Client,
    team: str,
    project: str,
    run_ids: Sequence[str],
    metrics: Sequence[str] | None = None,
    format: Format = "parquet",
    chunk_points: int = CHUNK_POINTS,
) -> Iterator[bytes]:
    """The current value of every (run, metric, step) of the runs, in long format
    (``HISTORY_COLUMNS``: run_id, metric, step, time, value), sorted by run_id,
    metric, step. ``metrics`` None exports every metric; deleted and moved runs are left out.

    Yields the bytes of one Parquet file (zstd, a row group per chunk), one Arrow
    IPC stream (``HISTORY_SCHEMA``) or one CSV text with a header line (time as
    ISO 8601 UTC; NaN and infinities as ``nan``, ``inf``, ``-inf``), chunk by chunk.
    Arguments are checked before the first byte is produced.
    """
    _check_format(format)
    runs = _check_ids("run_ids", run_ids, MAX_RUNS)
    names = None if metrics is None else _check_ids("metrics", metrics, None)
    if chunk_points < 1:
        raise QueryError("chunk_points must be at least 1", chunk_points=chunk_points)
    runs = deletion.live_run_ids(client, team, project, runs)  # a deleted or moved run's points may linger
    return _export_history(client, team, project, runs, names, format, chunk_points)


def _export_history(
    client: Client, team: str, project: str, runs: list[str], metrics: list[str] | None, format: str, chunk_points: int
) -> Iterator[bytes]:
    settings = _CSV_SETTINGS if format == "csv" else _ARROW_SETTINGS
    chunks = _plan_chunks(client, team, project, runs, metrics, chunk_points) if metrics != [] else iter(())

    def raw_chunks() -> Iterator[bytes]:
        for chunk in chunks:
            if chunk.segments is not None:
                sql = _COMPOSED_SQL % {
                    "metric_filter": "" if chunk.metrics is None else _METRIC_FILTER,
                    "settings": settings,
                }
                ids = segment_params(chunk.segments)
                params = {
                    "team": team,
                    "project": project,
                    "run": chunk.runs[0],
                    **ids,
                    "runs": ids["seg_ids"],
                    "idx": list(range(1, len(chunk.segments) + 1)),
                    "lo": chunk.lo,
                    "hi": chunk.hi,
                    "metrics": chunk.metrics or [],
                }
                yield client.raw_query(sql, parameters=params, fmt=_CH_FORMAT[format])
                continue
            sql = _HISTORY_SQL % {
                "metric_filter": "" if chunk.metrics is None else _METRIC_FILTER,
                "settings": settings,
            }
            params = {
                "team": team,
                "project": project,
                "runs": chunk.runs,
                "idx": list(range(1, len(chunk.runs) + 1)),
                "lo": chunk.lo,
                "hi": chunk.hi,
                "metrics": chunk.metrics or [],
            }
            yield client.raw_query(sql, parameters=params, fmt=_CH_FORMAT[format])

    yield from _encode(format, _prefetched(raw_chunks()), HISTORY_COLUMNS, HISTORY_SCHEMA)


@dataclass(frozen=True, slots=True)
class _Chunk:
    runs: list[str]
    metrics: list[str] | None  # None: all
    lo: int = 0
    hi: int = MAX_STEP
    segments: list[Segment] | None = None  # a composed run (one): its segments


def _composed(client: Client, team: str, project: str, runs: list[str]) -> dict[str, list[Segment]]:
    """The runs among ``runs`` whose history is composed (a fork, a rewind), with their segments."""
    out = {}
    for ids in _batches(runs, IDS_PER_QUERY):
        for run_id, segments in resolve(client, team, project, ids).items():
            if not is_plain(segments, run_id):
                out[run_id] = segments
    return out


def _plan_chunks(
    client: Client, team: str, project: str, runs: list[str], metrics: list[str] | None, chunk_points: int
) -> Iterator[_Chunk]:
    """Cut the export into chunks of about ``chunk_points`` points that follow each
    other in (run_id, metric, step) order: runs grouped whole, a larger run cut into
    groups of whole metrics, a larger metric cut into step ranges."""
    params: dict[str, Any] = {"team": team, "project": project, "metrics": metrics or []}
    # A composed run is one chunk of its own, in its place in run_id order.
    composed = _composed(client, team, project, runs)
    waiting = sorted(composed)
    group: list[str] = []
    points = 0
    for ids in _batches([r for r in runs if r not in composed], IDS_PER_QUERY):
        sql = _RUN_COUNTS % {"metric_filter": "" if metrics is None else _METRIC_FILTER}
        for run_id, count in client.query(sql, parameters={**params, "runs": ids}).result_rows:
            if waiting and waiting[0] < run_id:
                if group:
                    yield _Chunk(group, metrics)
                    group, points = [], 0
                while waiting and waiting[0] < run_id:
                    name = waiting.pop(0)
                    yield from _plan_composed(client, params, name, composed[name], metrics is None, chunk_points)
            if group and (points + count > chunk_points or len(group) >= IDS_PER_QUERY):
                yield _Chunk(group, metrics)
                group, points = [], 0
            if count <= chunk_points:
                group.append(run_id)
                points += count
            else:
                yield from _plan_run(client, {**params, "run": run_id}, metrics is None, chunk_points)
    if group:
        yield _Chunk(group, metrics)
    for name in waiting:
        yield from _plan_composed(client, params, name, composed[name], metrics is None, chunk_points)


def _plan_composed(
    client: Client,
    params: dict[str, Any],
    run_id: str,
    segments: list[Segment],
    all_metrics: bool,
    chunk_points: int,
) -> Iterator[_Chunk]:
    """A composed run's chunks: ``_plan_run``'s, counted over its segments."""
    found = {**params, "run": run_id, **segment_params(segments)}
    yield from _plan_run(client, found, all_metrics, chunk_points, segments)


def _plan_run(
    client: Client,
    params: dict[str, Any],
    all_metrics: bool,
    chunk_points: int,
    segments: list[Segment] | None = None,
) -> Iterator[_Chunk]:
    counts = _METRIC_COUNTS if segments is None else _COMPOSED_METRIC_COUNTS
    sql = counts % {"metric_filter": "" if all_metrics else _METRIC_FILTER}
    run = [params["run"]]
    group: list[str] = []
    points = 0
    for metric, count, lo, hi in client.query(sql, parameters=params).result_rows:
        if group and points + count > chunk_points:
            yield _Chunk(run, group, segments=segments)
            group, points = [], 0
        if count <= chunk_points:
            group.append(metric)
            points += count
            continue
        width = (hi - lo) // math.ceil(count / chunk_points) + 1
        for start in range(lo, hi + 1, width):
            yield _Chunk(run, [metric], start, min(hi, start + width - 1), segments)
    if group:
        yield _Chunk(run, group, segments=segments)


# -- run metadata ---------------------------------------------------------------------

# A Map(String, String) of JSON texts (config, summary) as the text of one flat JSON object.
_JSON_OBJECT = "concat('{{', arrayStringConcat(arrayMap((k, v) -> concat(toJSONString(k), ':', v), mapKeys({m}), mapValues({m})), ','), '}}')"

_RUNS_SQL = f"""
SELECT r.run_id AS run_id, r.name AS name, r.state AS state,
    r.created_at AS created_at, r.updated_at AS updated_at, r.heartbeat_at AS heartbeat_at,
    r.finished_at AS finished_at, r.exit_code AS exit_code,
    r.run_group AS `group`, r.job_type AS job_type, %(tags)s AS tags, r.notes AS notes,
    r.user AS user, r.host AS host, r.program AS program, %(args)s AS args, r.python AS python, r.git AS git,
    {_JSON_OBJECT.format(m="r.config")} AS config,
    if(s.run_id = '', '{{}}', {_JSON_OBJECT.format(m="s.summary")}) AS summary
FROM (SELECT * FROM runs FINAL
      WHERE team = {{team:String}} AND project = {{project:String}} AND run_id IN {{runs:Array(String)}}
        AND run_id NOT IN (SELECT run_id FROM run_tombstones
                           WHERE team = {{team:String}} AND project = {{project:String}})) AS r
LEFT JOIN (SELECT run_id, summary FROM run_summaries FINAL
           WHERE team = {{team:String}} AND project = {{project:String}} AND run_id IN {{runs:Array(String)}}) AS s
    ON r.run_id = s.run_id
ORDER BY run_id
SETTINGS %(settings)s
"""

RUN_COLUMNS = (
    "run_id",
    "name",
    "state",
    "created_at",
    "updated_at",
    "heartbeat_at",
    "finished_at",
    "exit_code",
    "group",
    "job_type",
    "tags",
    "notes",
    "user",
    "host",
    "program",
    "args",
    "python",
    "git",
    "config",
    "summary",
)


def export_runs(
    client: Client, team: str, project: str, run_ids: Sequence[str], format: Format = "parquet"
) -> Iterator[bytes]:
    """The runs' metadata, one row per run sorted by run_id (``RUN_COLUMNS``):
    times as UTC timestamps, ``config``, ``summary`` and ``git`` as JSON object
    text (config and summary keys flattened to dotted paths, as stored), ``tags``
    and ``args`` as lists (JSON arrays in CSV). Unknown run ids, and deleted or moved runs, are skipped."""
    _check_format(format)
    runs = _check_ids("run_ids", run_ids, MAX_RUNS)
    return _export_runs(client, team, project, runs, format)


def _export_runs(client: Client, team: str, project: str, runs: list[str], format: str) -> Iterator[bytes]:
    csv = format == "csv"
    sql = _RUNS_SQL % {
        "tags": "toJSONString(r.tags)" if csv else "r.tags",
        "args": "toJSONString(r.args)" if csv else "r.args",
        "settings": _CSV_SETTINGS if csv else _ARROW_SETTINGS,
    }
    batches = _batches(runs, IDS_PER_QUERY) or [[]]  # an empty export still has its columns

    def raw_chunks() -> Iterator[bytes]:
        for ids in batches:
            yield client.raw_query(
                sql, parameters={"team": team, "project": project, "runs": ids}, fmt=_CH_FORMAT[format]
            )

    yield from _encode(format, raw_chunks(), RUN_COLUMNS, None)


# -- encoding ------------------------------------------------------------------------------

_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # the end-of-stream marker of Arrow IPC


def _encode(format: str, chunks: Iterator[bytes], columns: Sequence[str], schema: pa.Schema | None) -> Iterator[bytes]:
    """One file from ClickHouse's per-chunk output (CSV, or ArrowStream for arrow and parquet).
    ``schema`` is the Arrow schema of an export with no chunk at all."""
    if format == "csv":
        yield (",".join(columns) + "\n").encode()
        yield from (data for data in chunks if data)
    elif format == "arrow":
        yield from _splice_arrow(chunks, schema)
    else:
        yield from _write_parquet((pa.ipc.open_stream(data).read_all() for data in chunks if data), schema)


def _splice_arrow(chunks: Iterator[bytes], schema: pa.Schema | None) -> Iterator[bytes]:
    """ArrowStream outputs of the same query, spliced into one IPC stream without decoding:
    the first keeps its schema message, the others lose theirs, none keeps its end marker.
    Their dictionary batches then replace the ones before, which the stream format allows."""
    first = True
    for data in chunks:
        if not data:
            continue
        if not data.endswith(_ARROW_EOS) or data[:4] != b"\xff\xff\xff\xff":
            raise ValueError("ClickHouse returned an Arrow stream in an unexpected framing")
        start = 0 if first else 8 + int.from_bytes(data[4:8], "little")  # skip the schema message (no body)
        first = False
        yield data[start:-8]
    if first:
        yield _empty_arrow(schema)
    else:
        yield _ARROW_EOS


def _empty_arrow(schema: pa.Schema | None) -> bytes:
    sink = _Drain()
    with pa.ipc.new_stream(sink, schema or pa.schema([])):
        pass
    return sink.take()


def _write_parquet(tables: Iterator[pa.Table], schema: pa.Schema | None) -> Iterator[bytes]:
    """One Parquet file with a row group per table, yielded as each is written."""
    sink = _Drain()
    writer: pq.ParquetWriter | None = None
    try:
        for table in tables:
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(sink, schema, **_parquet_options(schema))
            if table.num_rows:
                writer.write_table(table if table.schema == schema else table.cast(schema))
                yield sink.take()
        if writer is None:
            writer = pq.ParquetWriter(sink, schema or pa.schema([]), **_parquet_options(schema or pa.schema([])))
    finally:
        if writer is not None:
            writer.close()
    yield sink.take()


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """zstd; dictionaries only for the repeated names; delta encoding for steps and
    times and byte-stream-split for values (measured on 2M points: twice as fast as
    pyarrow's defaults and 30% smaller)."""
    if not {"step", "time", "value"} <= set(schema.names):
        return {"compression": "zstd"}
    return {
        "compression": "zstd",
        "use_dictionary": ["run_id", "metric"],
        "column_encoding": {"step": "DELTA_BINARY_PACKED", "time": "DELTA_BINARY_PACKED", "value": "BYTE_STREAM_SPLIT"},
    }


class _Drain:
    """A write-only file for pyarrow writers that hands over what was written since the last ``take``."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes | pa.Buffer] = []
        self._size = 0

    def write(self, data: bytes | pa.Buffer) -> int:
        self._parts.append(data)  # pyarrow hands over immutable buffers: no copy until take()
        self._size += len(data)
        return len(data)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _prefetched(items: Iterator[T]) -> Iterator[T]:
    """Produce ``items`` one ahead in a thread: the next chunk's query runs (without
    the GIL) while the caller encodes or sends this one. At most one item waits."""
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=1)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((False, exc))

    thread = threading.Thread(target=produce, name="runstream-export", daemon=True)
    thread.start()
    try:
        while True:
            more, item = queue.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


# -- arguments ---------------------------------------------------------------------------


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise QueryError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}", format=format)


def _check_ids(what: str, values: Sequence[str], limit: int | None) -> list[str]:
    if not isinstance(values, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in values):
        raise QueryError(f"{what} must be a list of strings")
    if limit is not None and len(values) > limit:
        raise QueryError(f"at most {limit} {what} per export, got {len(values)}", limit=limit)
    return sorted(set(values))
