"""Reading runs: search, count, group and the key catalog of a project; one run, its edits, and its logs.

A RUN, as every endpoint here answers it (docs/api.md, "Read"), is storage's run
with ``id`` for ``run_id`` and its ``team`` and ``project``; times are Unix
seconds, as everywhere in the API (``runstream.Api`` shows them as ISO 8601 text,
as wandb's client does). Config and summary values that are not finite are the
event contract's strings ("NaN", "Infinity", "-Infinity"), so nothing a run set
turns into ``null`` on the way.

Sub-resources of a run (its logs here, its history in ``api.history``) answer 404
for a run that does not exist, not an empty list, so a typo is not mistaken for
a run that logged nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict
from urllib.parse import quote

import msgspec
import orjson
from clickhouse_connect.driver.client import Client
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ, PROJECT_WRITE, read_run
from runstream.api.backend import Backend, backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.ingest import publish_edit
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import API, PROJECT_PATH, RUN_PATH, project_path, run_path
from runstream.api.responses import contract_numbers, json_response
from runstream.api.schemas import (
    RUN_FIELDS,
    FileEntry,
    Filters,
    Names,
    NonEmptyNames,
    Run,
    RunFields,
    SystemSeries,
    Time,
)
from runstream.events import FILE_KINDS, MAX_EDIT_DELETES, MAX_NAME_LEN, MAX_TEXT_LEN, RUN_EDIT_FIELDS
from runstream.storage import history, lineage, logs, runs
from runstream.storage.writer import load_run_states
from runstream.streams.processor import last_seq
from runstream.streams.runstate import merge_config
from runstream.streams.summaries import without_keys

DEFAULT_PAGE = 50
FileKind = Literal[FILE_KINDS]  # type: ignore[valid-type]


def public_run(team: str, project: str, run: dict[str, Any]) -> dict[str, Any]:
    """Storage's run as the API's Run."""
    out: dict[str, Any] = {"team": team, "project": project, "id": run["run_id"]}
    for key, value in run.items():
        if key == "run_id":
            continue
        if key in ("config", "summary"):
            value = contract_numbers(value)
        out[key] = value
    return out


# -- project endpoints ---------------------------------------------------------------------------


class RunsQuery(msgspec.Struct, forbid_unknown_fields=True):
    filters: Filters | None = None
    order: Annotated[str, Meta(description="a run column, config.<key> or summary.<key>; - first for descending")] = (
        "-created_at"
    )
    limit: Annotated[int, Meta(ge=1, le=runs.MAX_LIMIT)] = DEFAULT_PAGE
    cursor: Annotated[str, Meta(description="next_cursor of the previous page")] | None = None
    fields: (
        Annotated[
            list[str],
            Meta(
                description="run fields to answer besides team, project and id (absent: all; empty: none); a chart legend "
                "needs name only, and leaving out config and summary makes a page several times cheaper"
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if self.fields is not None and (unknown := sorted(set(self.fields) - {*RUN_FIELDS, "team", "project", "id"})):
            raise ValueError(
                f"unknown run fields {', '.join(unknown)[:200]}; fields are some of {', '.join(RUN_FIELDS)}"
            )


class RunsPage(TypedDict):
    runs: list[RunFields]
    next_cursor: Annotated[str | None, Meta(description="null on the last page")]


@endpoint(
    summary="Search runs",
    tags=["runs"],
    ok=Answer(RunsPage, "a page; next_cursor is null on the last"),
    access=PROJECT_READ,
    refusals={400: "a bad filter, order, limit, cursor or field"},
)
async def list_runs(request: Request, query: RunsQuery) -> Response:
    """A page of the project's runs matching a filter, in an order."""
    team, project = project_path(request)
    fields = query.fields

    maps = runs.MAPS if fields is None else [m for m in runs.MAPS if m in fields]

    def search(client: Client) -> dict[str, Any]:
        order, cursor = query.order or "-created_at", query.cursor or None
        return runs.search_runs(client, team, project, query.filters, order, query.limit, cursor, maps)

    page = await backend_of(request).run(search)
    found = [public_run(team, project, r) for r in page["runs"]]
    if fields is not None:
        kept = {"team", "project", "id", *fields}
        found = [{k: v for k, v in run.items() if k in kept} for run in found]
    return json_response({"runs": found, "next_cursor": page["next_cursor"]})


class CountQuery(msgspec.Struct, forbid_unknown_fields=True):
    filters: Filters | None = None


class Count(TypedDict):
    count: int


@endpoint(
    summary="Count runs",
    tags=["runs"],
    ok=Answer(Count, "the count"),
    access=PROJECT_READ,
    refusals={400: "a bad filter"},
)
async def count_runs(request: Request, query: CountQuery) -> Response:
    """How many of the project's runs match a filter."""
    team, project = project_path(request)
    count = await request.app.state.backend.run(runs.count_runs, team, project, query.filters)
    return json_response({"count": count})


class GroupBody(msgspec.Struct, forbid_unknown_fields=True):
    by: Annotated[
        NonEmptyNames, Meta(max_length=runs.MAX_GROUP_KEYS, extra={"error": "by must be a non-empty list of names"})
    ]
    filters: Filters | None = None
    aggregates: (
        Annotated[
            list[Annotated[str, Meta(min_length=1)]],
            Meta(max_length=runs.MAX_AGGREGATES, extra={"error": "aggregates must be a non-empty list of names"}),
        ]
        | None
    ) = None
    run_ids: (
        Annotated[bool, Meta(description="add each group's run ids", extra={"error": "run_ids must be true or false"})]
        | None
    ) = None


class Group(TypedDict):
    group: Annotated[dict[str, Any], Meta(description="the group's value of each by field")]
    count: int
    summary: dict[str, dict[str, Any]]
    run_ids: NotRequired[Annotated[Names, Meta(description="with run_ids: true")]]


class Groups(TypedDict):
    groups: list[Group]


@endpoint(
    summary="Group runs",
    tags=["runs"],
    ok=Answer(Groups, "the groups, ordered by their values"),
    access=PROJECT_READ,
    refusals={400: "bad fields or filter"},
)
async def group_runs(request: Request, body: GroupBody) -> Response:
    """Matching runs grouped by fields, with each group's count and summary statistics.

    ``by`` names text columns (group, job_type, state, ...), ``tags`` or
    ``config.<key>``/``summary.<key>``; ``aggregates`` names summary (or config)
    keys, each giving mean, min, max and count over the group's numeric values.
    """
    team, project = project_path(request)
    groups = await request.app.state.backend.run(
        runs.group_runs, team, project, body.by, body.filters, body.aggregates or [], run_ids=bool(body.run_ids)
    )
    # Group values and statistics are values runs set: non-finite ones as the contract's strings.
    return json_response({"groups": [contract_numbers(g) for g in groups]})


class CatalogKey(TypedDict):
    key: str
    types: Names


@endpoint(
    summary="Key catalog",
    tags=["runs"],
    ok=Answer(dict[str, list[CatalogKey]], "keys by kind: config, summary, metric, system"),
    access=PROJECT_READ,
)
async def key_catalog(request: Request) -> Response:
    """The config, summary, metric and system keys the project has seen, with their JSON types."""
    team, project = project_path(request)
    return json_response(await request.app.state.backend.run(runs.key_catalog, team, project))


# -- one run -------------------------------------------------------------------------------------


class ForkOf(TypedDict):
    run_id: str
    step: Annotated[int, Meta(description="the parent's last step in this run's history")]


class RewindEntry(TypedDict):
    step: Annotated[int, Meta(description="the last step kept; what followed was replaced")]
    at: Time


class RunDetail(Run):
    """A run, with its lineage."""

    fork: Annotated[
        ForkOf | None, Meta(description="the run it was forked from and at which step (init(fork_from=...))")
    ]
    rewinds: Annotated[
        list[RewindEntry],
        Meta(
            description="its rewinds, oldest first (init(resume_from=...)); the history a rewind replaced is read "
            "with history?rewinds=K (the run as it stood after its first K rewinds)"
        ),
    ]


def _run_detail(client: Client, team: str, project: str, run_id: str) -> dict[str, Any] | None:
    run = runs.get_run(client, team, project, run_id)
    if run is None:
        return None
    found = lineage.lineages(client, team, project, [run_id]).get(run_id, lineage.Lineage())
    fork = {"run_id": found.fork_run_id, "step": found.fork_step} if found.fork_run_id else None
    return {**run, "fork": fork, "rewinds": [{"step": r.step, "at": r.at} for r in found.rewinds]}


@endpoint(summary="Get a run", tags=["runs"], ok=Answer(RunDetail, "the run"), access=PROJECT_READ)
async def get_run(request: Request) -> Response:
    """One run, with the run it was forked from (``fork``) and its rewinds."""
    team, project, run_id = run_path(request)
    run = await request.app.state.backend.run(_run_detail, team, project, run_id)
    if run is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    return json_response(public_run(team, project, run))


_DELETE_ERROR = (
    f"must be a list of 1 to {MAX_EDIT_DELETES:,} dotted keys (non-empty strings), as the run's keys are stored, "
    'e.g. ["opt.lr"]'
)
DeletedKeys = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=MAX_TEXT_LEN)]],
    Meta(min_length=1, max_length=MAX_EDIT_DELETES),
]


class RunEdit(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are; notes, group and job_type sent as null are cleared."""

    name: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=MAX_NAME_LEN,
                extra={"error": f"name must be a non-empty string of at most {MAX_NAME_LEN} characters"},
            ),
        ]
        | UnsetType
    ) = UNSET
    tags: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LEN)]],
            Meta(extra={"error": "tags must be a list of non-empty strings"}),
        ]
        | UnsetType
    ) = UNSET
    notes: Annotated[str | None, Meta(extra={"error": "notes must be a string"})] | UnsetType = UNSET
    group: (
        Annotated[
            str,
            Meta(
                max_length=MAX_TEXT_LEN,
                description="as in init(group=...); null clears it",
                extra={"error": f"group must be a string of at most {MAX_TEXT_LEN:,} characters, or null"},
            ),
        ]
        | UnsetType
        | None
    ) = UNSET
    job_type: (
        Annotated[
            str,
            Meta(
                max_length=MAX_TEXT_LEN,
                description="as in init(job_type=...); null clears it",
                extra={"error": f"job_type must be a string of at most {MAX_TEXT_LEN:,} characters, or null"},
            ),
        ]
        | UnsetType
        | None
    ) = UNSET
    config: (
        Annotated[
            dict[str, Any],
            Meta(
                description="keys merged into the config, nested objects merged key by key (as run.config.update)",
                extra={"error": 'config must be an object of the keys to set, e.g. {"lr": 0.01}'},
            ),
        ]
        | UnsetType
    ) = UNSET
    summary: (
        Annotated[
            dict[str, Any],
            Meta(
                description="keys set as explicit summary values, which win over the ones computed from metrics",
                extra={"error": 'summary must be an object of the keys to set, e.g. {"lr": 0.01}'},
            ),
        ]
        | UnsetType
    ) = UNSET
    config_delete: (
        Annotated[
            DeletedKeys,
            Meta(
                description="dotted config keys to delete (opt.lr: the key lr of opt), each with what it holds; "
                "none of them a key config sets in the same edit",
                extra={"error": "config_delete " + _DELETE_ERROR},
            ),
        ]
        | UnsetType
    ) = UNSET
    summary_delete: (
        Annotated[
            DeletedKeys,
            Meta(
                description="dotted summary keys to delete: an explicit value goes, and a value computed from a "
                "metric is hidden until the metric is logged again; none of them a key summary sets in the same edit",
                extra={"error": "summary_delete " + _DELETE_ERROR},
            ),
        ]
        | UnsetType
    ) = UNSET


@endpoint(
    summary="Edit a run",
    tags=["runs"],
    ok=Answer(Run, "the run with the edit"),
    body_bytes=1 << 20,
    access=PROJECT_WRITE,
    refusals={
        400: "a bad edit",
        413: "the body is too large, or the edit is larger than one event",
        503: "the edit could not be stored; retry",
    },
)
async def edit_run(request: Request, body: RunEdit) -> Response:
    """Edit a run's name, tags, notes, group, job type, config and summary; answers the updated run.

    The edit travels through the pipeline like the SDK's events, so every
    replica and the run's later events see it; a later edit wins, and so does,
    field by field, a later value the run's SDK sends (a tag list, a config or
    summary key, its name). A field left out stays as it is; notes, group and job_type
    sent as null are cleared, and null for any other field is refused. ``config_delete``
    and ``summary_delete`` remove dotted keys (a summary value computed from a metric is
    hidden until the metric is logged again).
    """
    team, project, run_id = run_path(request)
    changes: dict[str, Any] = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}
    if "tags" in changes:
        changes["tags"] = list(dict.fromkeys(changes["tags"]))
    for text in ("notes", "group", "job_type"):
        if text in changes:
            changes[text] = changes[text] or ""  # cleared text is "", as the runs table keeps it
    for deleted in ("config_delete", "summary_delete"):
        if deleted in changes:
            changes[deleted] = list(dict.fromkeys(changes[deleted]))
    if not changes:
        raise ApiError(400, f'send some of {", ".join(RUN_EDIT_FIELDS)} to set, e.g. {{"tags": ["baseline"]}}')
    backend: Backend = request.app.state.backend
    if await backend.run(runs.get_run, team, project, run_id) is None:
        raise not_found(f"run {team}/{project}/{run_id}")  # the pipeline would drop an edit of an unknown run
    await publish_edit(request, team, project, run_id, changes)
    run = await backend.run(runs.get_run, team, project, run_id)
    if run is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    if not backend.sink.applied_on_send:  # cluster mode: a worker applies the edit shortly; answer what it will store
        run.update({k: v for k, v in changes.items() if k not in ("config", "summary") and "_delete" not in k})
        run["config"] = merge_config(
            without_keys(run["config"], changes.get("config_delete", [])), changes.get("config", {})
        )
        run["summary"] = {
            **without_keys(run["summary"], changes.get("summary_delete", [])),
            **changes.get("summary", {}),
        }
    return json_response(public_run(team, project, run))


# -- a run's logs ----------------------------------------------------------------------------------


class Metrics(TypedDict):
    metrics: Names


@endpoint(summary="A run's metric names", tags=["runs"], ok=Answer(Metrics, "the names"), access=PROJECT_READ)
async def run_metrics(request: Request) -> Response:
    """The names of the metrics a run logged, sorted."""
    return json_response({"metrics": await read_run(request, history.run_metrics)})


OptionalNumber = float | None


class MetricStatistics(TypedDict):
    count: Annotated[int, Meta(description="finite values, which min, max and mean are over")]
    min: OptionalNumber
    max: OptionalNumber
    mean: OptionalNumber
    last: Annotated[Any, Meta(description='the value at the last step: a number, or "NaN"/"Infinity"/"-Infinity"')]
    first_step: int
    last_step: int


class Statistics(TypedDict):
    last_step: Annotated[int | None, Meta(description="the largest step any metric logged")]
    last_seq: Annotated[int | None, Meta(description="the largest event seq of the run folded so far")]
    metrics: dict[str, MetricStatistics]


@endpoint(
    summary="A run's metric statistics",
    tags=["runs"],
    ok=Answer(Statistics, "the largest step any metric logged (null when none), and per metric its statistics"),
    access=PROJECT_READ,
)
async def run_statistics(request: Request) -> Response:
    """What a run resumed elsewhere needs to go on: its last step and sequence number, and each
    metric's statistics.

    ``count`` is the number of finite values, which ``min``, ``max`` and ``mean``
    are over (null without any); ``last`` is the value logged at the metric's
    last step (non-finite ones as the contract's strings).
    """
    return json_response(contract_numbers(await read_run(request, _statistics)))


def _statistics(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
    stats = history.run_statistics(client, team, project, run_id)
    state = load_run_states(client, [(team, project, run_id)]).get((team, project, run_id))
    stats["last_seq"] = last_seq(orjson.loads(state)) if state else None
    return stats


class SystemQuery(msgspec.Struct, forbid_unknown_fields=True):
    names: Annotated[list[str], Meta(description="metric names (all when omitted)")] | None = None
    points: Annotated[int, Meta(ge=1, le=logs.MAX_POINTS)] = 500


class RunSystem(TypedDict):
    series: list[SystemSeries]


@endpoint(
    summary="A run's system metrics",
    tags=["runs"],
    ok=Answer(RunSystem, "one series per metric; time in Unix seconds, null where a bucket has no finite value"),
    access=PROJECT_READ,
    refusals={400: "bad arguments"},
)
async def run_system(request: Request, query: SystemQuery) -> Response:
    """A run's system metrics (CPU, memory, GPU, ...) in time buckets: mean, min and max of each."""

    def system(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
        return logs.system_series(client, team, project, [run_id], query.names, max_points=query.points)

    result = await read_run(request, system)
    return json_response({"series": [{k: v for k, v in s.items() if k != "run_id"} for s in result["runs"]]})


class ConsoleQuery(msgspec.Struct, forbid_unknown_fields=True):
    tail: Annotated[int, Meta(ge=1, le=logs.MAX_LINES)] = 1000
    q: (
        Annotated[
            str,
            Meta(min_length=1, max_length=1000, description="text to find, ignoring case (a RE2 pattern with regex=1)"),
        ]
        | None
    ) = None
    regex: Literal["0", "1"] = "0"
    cursor: Annotated[str, Meta(description="next_cursor of the previous answer")] | None = None


class ConsoleLine(TypedDict):
    time: float
    stream: str
    line: str


class Console(TypedDict):
    lines: list[ConsoleLine]
    next_cursor: str | None


@endpoint(
    summary="A run's console output",
    tags=["runs"],
    ok=Answer(Console, "the lines"),
    access=PROJECT_READ,
    refusals={400: "bad arguments or a bad pattern"},
)
async def run_console(request: Request, query: ConsoleQuery) -> Response:
    """A run's console output: the last ``tail`` lines, or with ``q`` the last lines that contain it (or match it).

    Lines come oldest first; ``next_cursor`` pages to older lines.
    """
    cursor = query.cursor or None

    def console(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
        if query.q is None:
            return logs.console_tail(client, team, project, run_id, limit=query.tail, before=cursor)
        return logs.console_search(
            client, team, project, run_id, query.q, regex=query.regex == "1", limit=query.tail, before=cursor
        )

    result = await read_run(request, console)
    return json_response({"lines": result["lines"], "next_cursor": result["next_before"]})


def _with_urls(team: str, project: str, run_id: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each file with the URL its blob downloads from (``GET /api/v1/files/...``)."""
    base = f"{API}/files/{quote(team, safe='')}/{quote(project, safe='')}/{quote(run_id, safe='')}/"
    return [{**f, "url": base + quote(f["store_key"])} for f in files]


class FilesQuery(msgspec.Struct, forbid_unknown_fields=True):
    kind: FileKind | None = None
    prefix: str | None = None


class Files(TypedDict):
    files: list[FileEntry]


@endpoint(
    summary="A run's files",
    tags=["runs"],
    ok=Answer(Files, "the files"),
    access=PROJECT_READ,
    refusals={400: "an unknown kind"},
)
async def run_files(request: Request, query: FilesQuery) -> Response:
    """A run's files (the current entry per path, sorted by path), each with the URL of its blob."""
    files = await read_run(request, logs.run_files, query.kind, query.prefix or None)
    return json_response({"files": _with_urls(*run_path(request), files)})


class MediaQuery(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[str, Meta(min_length=1, extra={"error": "name the media key: ?key=<the key passed to run.log>"})]


class Media(TypedDict):
    key: str
    media: list[FileEntry]


@endpoint(
    summary="A run's media under a key",
    tags=["runs"],
    ok=Answer(Media, "the media files by step"),
    access=PROJECT_READ,
    refusals={400: "no key given"},
)
async def run_media(request: Request, query: MediaQuery) -> Response:
    """The media a run logged under one key, by step: what a media panel's step slider walks."""
    media = await read_run(request, logs.media_steps, query.key)
    return json_response({"key": query.key, "media": _with_urls(*run_path(request), media)})


routes = [
    Route(PROJECT_PATH + "/runs", list_runs, methods=["GET"]),
    Route(PROJECT_PATH + "/runs/count", count_runs, methods=["GET"]),
    Route(PROJECT_PATH + "/runs/groups", group_runs, methods=["POST"]),
    Route(PROJECT_PATH + "/keys", key_catalog, methods=["GET"]),
    Route(RUN_PATH, get_run, methods=["GET"]),
    Route(RUN_PATH, edit_run, methods=["PATCH"]),
    Route(RUN_PATH + "/metrics", run_metrics, methods=["GET"]),
    Route(RUN_PATH + "/statistics", run_statistics, methods=["GET"]),
    Route(RUN_PATH + "/system", run_system, methods=["GET"]),
    Route(RUN_PATH + "/console", run_console, methods=["GET"]),
    Route(RUN_PATH + "/files", run_files, methods=["GET"]),
    Route(RUN_PATH + "/media", run_media, methods=["GET"]),
]
