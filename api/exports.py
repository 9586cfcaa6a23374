"""Exports: a project's runs (their metric history or their metadata) or one run's history, streamed as a file.

An export is checked and its first chunk produced before the response starts:
a bad argument or a failing query is a JSON error with its status, never a
stream cut short.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ, read_run
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, RUN_PATH, project_path, run_path
from runstream.api.schemas import Filters, one_selection
from runstream.storage import deletion, export, runs

MEDIA_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv; charset=utf-8",
}
EXTENSIONS = {"parquet": "parquet", "arrow": "arrows", "csv": "csv"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Format = Annotated[
    export.Format, Meta(extra={"error": f"unknown export format; use one of {', '.join(export.FORMATS)}"})
]
Metrics = Annotated[list[str] | None, Meta(description="metric names (all when omitted)")]
FILE = Answer(
    None,
    "the file, streamed (Content-Disposition names it)",
    content={media: {"schema": {"type": "string", "format": "binary"}} for media in MEDIA_TYPES.values()},
    headers={
        "Content-Disposition": {"description": 'attachment; filename="..."', "schema": {"type": "string"}},
        "X-Runstream-Runs": {"description": "how many runs the file holds", "schema": {"type": "string"}},
    },
)


def _started(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The export with its first chunk already made, so a failure there is an error answer, not a cut stream."""
    first = next(chunks, None)
    return itertools.chain(() if first is None else (first,), chunks)


def _stream(chunks: Iterator[bytes], format: str, name: str, runs_count: int) -> StreamingResponse:
    filename = f"{_UNSAFE.sub('_', name)}.{EXTENSIONS[format]}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "X-Runstream-Runs": str(runs_count)}
    return StreamingResponse(chunks, media_type=MEDIA_TYPES[format], headers=headers)


class ProjectExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    format: Format = "parquet"
    table: Annotated[
        Literal["history", "runs"],
        Meta(
            description="history: one row per logged value; runs: one row per run",
            extra={"error": "table must be history (metric points) or runs (run metadata)"},
        ),
    ] = "history"
    run_ids: Annotated[list[str] | None, Meta(description="run ids")] = None
    filters: Filters | None = None
    metrics: Metrics = None

    def __post_init__(self) -> None:
        one_selection(self.run_ids, self.filters)
        if self.table == "runs" and self.metrics is not None:
            raise ValueError("metrics selects history columns; a runs export has none: leave it out")


@endpoint(
    summary="Export a project's runs",
    tags=["export"],
    ok=FILE,
    access=PROJECT_READ,
    refusals={400: "bad arguments or filter"},
)
async def export_project(request: Request, query: ProjectExportQuery) -> Response:
    """Export runs' metric history (long format: run_id, metric, step, time, value) or their metadata (``table=runs``).

    Runs are ``run_ids``, or those matching ``filters`` (every run when neither is sent).
    """
    team, project = project_path(request)

    def start(client: Client) -> tuple[Iterator[bytes], int]:
        ids = query.run_ids
        if ids is None:
            ids = runs.matching_run_ids(client, team, project, query.filters, export.MAX_RUNS)
        else:  # named: less the deleted and moved ones, which no query shows
            ids = deletion.live_run_ids(client, team, project, ids)
        if query.table == "runs":
            return _started(export.export_runs(client, team, project, ids, query.format)), len(ids)
        return _started(export.export_history(client, team, project, ids, query.metrics, query.format)), len(ids)

    chunks, count = await request.app.state.backend.run(start)
    return _stream(chunks, query.format, f"{team}-{project}-{query.table}", count)


class RunExportQuery(msgspec.Struct, forbid_unknown_fields=True):
    format: Format = "parquet"
    metrics: Metrics = None


@endpoint(summary="Export a run's history", tags=["export"], ok=FILE, access=PROJECT_READ)
async def export_run(request: Request, query: RunExportQuery) -> Response:
    """Export one run's full metric history (long format: run_id, metric, step, time, value)."""

    def start(client: Client, team: str, project: str, run_id: str) -> Iterator[bytes]:
        return _started(export.export_history(client, team, project, [run_id], query.metrics, query.format))

    chunks = await read_run(request, start)
    team, project, run_id = run_path(request)
    return _stream(chunks, query.format, f"{team}-{project}-{run_id}-history", 1)


routes = [
    Route(RUN_PATH + "/export", export_run, methods=["GET"]),
    Route(PROJECT_PATH + "/export", export_project, methods=["GET"]),
]
