"""Ingest: event batches from the SDK's HTTP transport, and run file blobs.

``POST /api/v1/events`` takes newline-delimited events. The batch is validated
whole before anything is sent on: one bad event rejects it with 422 and the
reason for each bad line, so nothing is partially applied. The answer is 200
only once the sink holds every event (Kafka acknowledged, or the embedded
pipeline applied them); a sink failure is 503 and the SDK retries the batch,
which the events' (run, seq) identity makes harmless.
"""

from __future__ import annotations

import logging
import mimetypes
import time
from typing import Annotated, Any, TypedDict

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from runstream.api import quotas
from runstream.api.auth import ANYONE, PROJECT_INGEST, PROJECT_READ, Principal, require_project
from runstream.api.backend import Backend
from runstream.api.errors import ApiError, not_found
from runstream.api.filestore import BlobError
from runstream.api.middleware import INGESTED, REJECTED
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import API
from runstream.api.responses import json_response
from runstream.events import (
    ALERT,
    MAX_EVENT_BYTES,
    RUN_EDIT,
    RUN_EDIT_FIELDS,
    RUN_STATE,
    Event,
    InvalidEvent,
    decode,
    validate,
)
from runstream.storage import deletion

log = logging.getLogger("runstream.api")

MAX_BATCH_BYTES = 16 << 20
MAX_BATCH_EVENTS = 10_000
MAX_FILE_BYTES = 1 << 30
MAX_REPORTED_ERRORS = 100
#: Written by the server itself (crash decisions, user edits), never accepted from clients.
SERVER_EVENTS = (RUN_STATE, RUN_EDIT)


def parse_batch(body: bytes) -> tuple[list[Event], list[bytes]]:
    """Every line of an NDJSON body as an event, and the lines themselves (what the Kafka sink forwards:
    a worker decodes them as this did); ApiError 422 listing each bad line (1-based) and why."""
    events: list[Event] = []
    errors: list[dict[str, Any]] = []
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise ApiError(422, "the batch holds no events: send one JSON event per line")
    if len(lines) > MAX_BATCH_EVENTS:
        raise ApiError(413, f"the batch holds {len(lines):,} events, more than the limit of {MAX_BATCH_EVENTS:,}")
    for number, line in enumerate(lines, start=1):
        try:
            event = decode(line)
            if event.type in SERVER_EVENTS:
                raise InvalidEvent(f"{event.type} events are written by the server, not sent by clients")
            if event.type == ALERT and (event.data["source"] != "sdk" or event.data.keys() & {"rule_id", "alert_id"}):
                # Rule alerts come from the processor; a client's would reach the rule's webhooks.
                raise InvalidEvent("clients send alerts with source 'sdk' and no rule_id or alert_id")
            events.append(event)
        except InvalidEvent as exc:
            errors.append({"line": number, "reason": exc.reason})
    if errors:
        REJECTED.labels("invalid").inc()
        shown = errors[:MAX_REPORTED_ERRORS]
        raise ApiError(
            422,
            f"{len(errors)} of {len(lines)} events are invalid; nothing in the batch was applied",
            code="invalid_events",
            details={"errors": shown, "invalid": len(errors), "total": len(lines)},
        )
    return events, lines


class Accepted(TypedDict):
    accepted: Annotated[int, Meta(description="how many events the batch held")]


@endpoint(
    summary="Ingest events",
    tags=["ingest"],
    ok=Answer(Accepted, "every event is durable"),
    access=ANYONE,
    scope="ingest",  # checked per project below: keys of scope ingest (training jobs) or admin
    body_content={"application/x-ndjson": {"schema": {"type": "string"}}},
    refusals={
        401: "no key, or a key that does not work",
        403: "the key may not write to a project in the batch",
        404: "a project in the batch is not visible with this key",
        413: "the body or the batch is too large",
        422: "invalid events; details.errors lists each bad line and why; nothing was applied",
        429: "over the key's or team's ingest quota (points/s, bytes/s); nothing was applied: resend the batch "
        "after Retry-After seconds (the SDK does so by itself)",
        503: "the events could not be stored; retry",
    },
)
async def post_events(request: Request, principal: Principal) -> Response:
    """Ingest a batch of events: newline-delimited JSON, one event of the event contract per line."""
    backend: Backend = request.app.state.backend
    # Who is asking comes first: a caller without a key learns it needs one, not what is wrong with its batch.
    if principal.anonymous:
        raise ApiError(401, "ingest needs an API key: send 'Authorization: Bearer <key>'")
    subjects = await quotas.check_ingest(request, principal)  # told to wait: refused before the batch is read
    body = await quotas.read_body(request, MAX_BATCH_BYTES)
    quotas.charge_body(request, subjects, len(body))  # read is paid for, whatever the batch's outcome (422, 403...)
    events, lines = parse_batch(body)
    for team, project in sorted({(e.team, e.project) for e in events}):
        await require_project(request, team, project, "ingest")
    quotas.charge_points(request, subjects, events)  # over: 429, and nothing of the batch applied
    try:
        await backend.sink.send(events, lines)
    except Exception as exc:  # noqa: BLE001 - any sink failure: the client keeps the batch and retries
        REJECTED.labels("unavailable").inc()
        log.warning("ingest of %d events failed: %s: %s", len(events), type(exc).__name__, exc)
        await backend.sink.reset()
        raise ApiError(
            503,
            f"the events could not be stored ({type(exc).__name__}); nothing was acknowledged: "
            "retry (the SDK does so by itself)",
        ) from None
    INGESTED.inc(len(events))
    return json_response({"accepted": len(events)})


async def publish_edit(request: Request, team: str, project: str, run_id: str, changes: dict[str, Any]) -> None:
    """Send a user's edit of a run (``RUN_EDIT_FIELDS``) through the pipeline, like any run event."""
    data = {k: v for k, v in changes.items() if k in RUN_EDIT_FIELDS}
    try:
        event = validate(
            {
                "v": 1,
                "type": RUN_EDIT,
                "team": team,
                "project": project,
                "run_id": run_id,
                "seq": 0,
                "ts": time.time(),
                "data": data,
            }
        )
    except InvalidEvent as exc:
        raise ApiError(400, exc.reason.removeprefix(f"{RUN_EDIT}: ")) from None
    if len(event.to_bytes()) > MAX_EVENT_BYTES:  # a worker would refuse it as too large for Kafka
        raise ApiError(413, f"the edit is larger than {MAX_EVENT_BYTES:,} bytes as an event: send it in parts")
    try:
        await request.app.state.backend.sink.send([event])
    except Exception as exc:  # noqa: BLE001
        await request.app.state.backend.sink.reset()
        raise ApiError(503, f"the edit could not be stored ({type(exc).__name__}); retry") from None


# -- files ------------------------------------------------------------------------------------


def _file_key(request: Request) -> tuple[str, str, str, str]:
    p = request.path_params
    return p["team"], p["project"], p["run_id"], p["store_key"]


class FileQuery(msgspec.Struct, forbid_unknown_fields=True):
    sha256: Annotated[
        str,
        Meta(
            pattern="^[0-9a-f]{64}$",
            description="the blob's SHA-256, checked as it arrives",
            extra={"error": "send the blob's SHA-256 as ?sha256=<64 lowercase hex digits>"},
        ),
    ]


class Stored(TypedDict):
    stored: Annotated[str, Meta(description="the store key")]
    size: int
    sha256: str


@endpoint(
    summary="Upload a run file",
    tags=["files"],
    ok=Answer(Stored, "stored"),
    access=PROJECT_INGEST,
    body_content={"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    refusals={
        400: "the SHA-256 does not match, or a bad path",
        409: "the path is taken by a folder, or passes through a file or a symbolic link; or the run was deleted or moved",
        413: "larger than the limit",
    },
)
async def put_file(request: Request, query: FileQuery) -> Response:
    """Upload a run file or media blob, streamed to the file store and checked against its SHA-256."""
    team, project, run_id, store_key = _file_key(request)
    sha256 = query.sha256
    backend: Backend = request.app.state.backend
    key = (team, project, run_id)
    if reason := (await backend.run(deletion.tombstones, [key])).get(key):
        raise ApiError(409, f"run {team}/{project}/{run_id} was {reason}: it takes no files", code="conflict")
    # Its bytes count against the ingest bytes/s quota: 429 up front when Content-Length does not fit.
    chunks = quotas.metered(request, await quotas.subjects_of(request))
    try:
        size = await backend.files.put(f"{team}/{project}/{run_id}/{store_key}", chunks, sha256, MAX_FILE_BYTES)
    except BlobError as exc:
        raise ApiError(exc.status, exc.message) from None
    finally:
        await chunks.aclose()  # charges what streamed in now, however the upload ended
    return json_response({"stored": store_key, "size": size, "sha256": sha256})


_BINARY = {"schema": {"type": "string", "format": "binary"}}


@endpoint(
    summary="Download a run file",
    tags=["files"],
    access=PROJECT_READ,
    refusals={400: "a bad file path"},
    ok=Answer(
        None,
        "the bytes: images, audio and video as their type (guessed from the name), anything "
        "else as application/octet-stream",
        content={media: _BINARY for media in ("application/octet-stream", "image/*", "audio/*", "video/*")},
    ),
)
async def get_file(request: Request) -> Response:
    """Download a run file or media blob."""
    team, project, run_id, store_key = _file_key(request)
    try:
        path = request.app.state.backend.files.path(f"{team}/{project}/{run_id}/{store_key}")
    except BlobError as exc:
        raise ApiError(exc.status, exc.message) from None
    if path is None:
        raise not_found(f"file {store_key} of run {team}/{project}/{run_id}")
    # Only media play inline: a blob named .html or .svg must not run script in the API's origin.
    media_type = mimetypes.guess_type(path.name)[0] or ""
    if not media_type.startswith(("image/", "audio/", "video/")) or media_type == "image/svg+xml":
        media_type = "application/octet-stream"
    return FileResponse(
        path,
        media_type=media_type,
        filename=path.name,
        content_disposition_type="inline",
        headers={"X-Content-Type-Options": "nosniff"},
    )


FILE_PATH = API + "/files/{team}/{project}/{run_id}/{store_key:path}"
routes = [
    Route(API + "/events", post_events, methods=["POST"]),
    Route(FILE_PATH, put_file, methods=["PUT"]),
    Route(FILE_PATH, get_file, methods=["GET"]),
]
