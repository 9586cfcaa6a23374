"""Media across runs (docs/panels.md, "Media panels"): the latest file each run logged under a key, and the
keys a project's runs logged media under.

A media panel compares one key across the runs a workspace's filter selects, as the other panels read
them (run search's filter compiler and order, ``storage.runs.select_runs``): one chart per run drawn
together, or a grid of images, audio and video. Each answer is bounded: at most ``MAX_MEDIA_RUNS`` runs.
"""

from __future__ import annotations

from typing import Annotated, Required, TypedDict

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ
from runstream.api.backend import backend_of
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import json_response
from runstream.api.runs import _with_urls
from runstream.api.schemas import FileEntry, Filters, Names, one_selection
from runstream.storage import logs

DEFAULT_RUNS = 20
Selection = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1, max_length=logs.MAX_MEDIA_RUNS)]
RunIds = Annotated[
    Selection | None,
    Meta(
        description="these runs, in this order (instead of filters)",
        extra={"error": f"run_ids must be a non-empty list of at most {logs.MAX_MEDIA_RUNS} run ids"},
    ),
]
Order = Annotated[str, Meta(description="a run column, config.<key> or summary.<key>; - first for descending")]


class LatestQuery(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[
        str,
        Meta(
            min_length=1,
            description="the media key (the key passed to run.log)",
            extra={"error": "key must name a media key: the key passed to run.log"},
        ),
    ]
    run_ids: RunIds = None
    filters: Filters | None = None
    order: Order = "-created_at"
    limit: Annotated[
        int,
        Meta(
            ge=1,
            le=logs.MAX_MEDIA_RUNS,
            description="the most runs answered",
            extra={"error": f"limit must be a whole number of runs from 1 to {logs.MAX_MEDIA_RUNS}"},
        ),
    ] = DEFAULT_RUNS

    def __post_init__(self) -> None:
        one_selection(self.run_ids, self.filters)


class RunMedia(FileEntry, total=False):
    """A run's latest media file under the key: the file as a run's files are listed, and whose run it is."""

    run_id: Required[str]
    name: Required[Annotated[str, Meta(description="the run's display name")]]


class LatestMedia(TypedDict):
    key: str
    runs: Annotated[
        list[RunMedia],
        Meta(
            description="the runs that logged media under the key, in the order asked (run_ids) or sorted by "
            "order, each with its file of the highest step (of a gallery, its first item)"
        ),
    ]
    total: Annotated[int, Meta(description="how many of the runs selected have media under the key")]


@endpoint(
    summary="The latest media of a key across runs",
    tags=["panels"],
    ok=Answer(LatestMedia, "each run's latest file under the key"),
    access=PROJECT_READ,
    refusals={400: "a bad filter or order, no key, run_ids and filters both, or limit out of bounds"},
)
async def latest_media(request: Request, body: LatestQuery) -> Response:
    """For each run that ``run_ids`` name or ``filters`` select (run search's filter and order), the media file
    it logged last under ``key``: what a media panel draws side by side. Runs without media under the key are
    left out; a key no run logged answers no runs."""
    team, project = project_path(request)
    found = await backend_of(request).run(
        logs.latest_media, team, project, body.key, body.filters, body.run_ids, body.order, body.limit
    )
    found["runs"] = [_with_urls(team, project, run["run_id"], [run])[0] for run in found["runs"]]
    return json_response(found)


class MediaKey(TypedDict):
    key: str
    media_types: Annotated[Names, Meta(description="the kinds of media logged under it: image, chart, audio, ...")]
    runs: Annotated[int, Meta(description="how many runs logged media under it")]


class MediaKeys(TypedDict):
    keys: Annotated[list[MediaKey], Meta(description=f"by key, at most {logs.MAX_MEDIA_KEYS:,}")]


@endpoint(
    summary="A project's media keys",
    tags=["panels"],
    ok=Answer(MediaKeys, "the keys"),
    access=PROJECT_READ,
)
async def media_keys(request: Request) -> Response:
    """The keys the project's runs logged media under, with their media types: what a media panel may compare."""
    team, project = project_path(request)
    return json_response({"keys": await backend_of(request).run(logs.media_keys, team, project)})


routes = [
    Route(PROJECT_PATH + "/media/latest", latest_media, methods=["POST"]),
    Route(PROJECT_PATH + "/media/keys", media_keys, methods=["GET"]),
]
