"""A project's alerts: listed, and streamed live as Server-Sent Events.

The live stream polls storage (about every second), so it behaves the same in
embedded and cluster mode and on any replica. Alert times are the run's clock
and a worker may store an alert late, so the stream looks back ``LOOKBACK_MS``
behind the newest alert it sent and remembers what it sent there: a late alert
still arrives, once.

The rules that fire alerts are ``api.alert_rules``'s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal, TypedDict

import msgspec
import orjson
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from runstream.api import quotas
from runstream.api.auth import PROJECT_READ, still_allowed
from runstream.api.backend import backend_of
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.events import ALERT_LEVELS
from runstream.names import MAX_TIME_S, RUN_ID_PATTERN, RUN_ID_RULE, is_time_ms
from runstream.storage import logs

log = logging.getLogger("runstream.api")

ALERTS_PATH = PROJECT_PATH + "/alerts"
STREAM_PATH = ALERTS_PATH + "/stream"

POLL_S = 1.0
KEEPALIVE_S = 15.0
LOOKBACK_MS = 60_000
MAX_SEEN = 10_000
MAX_STREAM_S = 24 * 3600
#: The longest any stream lasts, whatever it asked for: the client reconnects (EventSource does by
#: itself) with Last-Event-ID, and its credential is checked again from scratch.
MAX_LIFETIME_S = 3600.0
MAX_STREAM_EVENTS = 100_000
RETRY_MS = 3000
DEFAULT_LIMIT = 100
_EVENT_ID = re.compile(r"(\d{1,14})-([0-9A-Za-z]{1,64})\Z")


# -- declarations ---------------------------------------------------------------------------------

RunId = Annotated[
    str,
    Meta(
        pattern=RUN_ID_PATTERN,
        description="only this run's alerts",
        extra={"error": f"run_id must be a run id: {RUN_ID_RULE}"},
    ),
]
_SINCE_ERROR = f"since must be a Unix time in seconds, from 0 to {MAX_TIME_S}"


class Alert(TypedDict):
    run_id: str
    alert_id: str
    rule_id: Annotated[str | None, Meta(description="the rule that fired it; null for the SDK's run.alert")]
    source: Literal["sdk", "rule"]
    level: Literal[ALERT_LEVELS]  # type: ignore[valid-type]
    title: str
    text: str
    time: Annotated[Time, Meta(description="Unix seconds, the run's clock")]


class Alerts(TypedDict):
    alerts: list[Alert]


class AlertsQuery(msgspec.Struct, forbid_unknown_fields=True):
    run_id: RunId | None = None
    since: (
        Annotated[
            float, Meta(ge=0, le=MAX_TIME_S, description="Unix seconds (inclusive)", extra={"error": _SINCE_ERROR})
        ]
        | None
    ) = None
    limit: Annotated[int, Meta(ge=1, le=logs.MAX_ALERTS)] = DEFAULT_LIMIT


class StreamQuery(msgspec.Struct, forbid_unknown_fields=True):
    run_id: RunId | None = None
    since: (
        Annotated[
            float,
            Meta(
                ge=0,
                le=MAX_TIME_S,
                description="Unix seconds (inclusive); without it, what is stored after connecting",
                extra={"error": _SINCE_ERROR},
            ),
        ]
        | None
    ) = None
    max_events: Annotated[int, Meta(ge=1, le=MAX_STREAM_EVENTS, description="end after this many alerts")] | None = None
    timeout_s: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_STREAM_S,
                description="end after this many seconds; every stream ends after an hour at most whatever this "
                "says (reconnect with Last-Event-ID)",
            ),
        ]
        | None
    ) = None


# -- alerts -------------------------------------------------------------------------------------


@endpoint(summary="List alerts", tags=["alerts"], ok=Answer(Alerts, "the alerts, newest first"), access=PROJECT_READ)
async def list_alerts(request: Request, query: AlertsQuery) -> Response:
    """A project's alerts (or one run's), newest first, optionally from ``since`` on."""
    team, project = project_path(request)
    found = await backend_of(request).run(logs.list_alerts, team, project, query.run_id, query.since, query.limit)
    return json_response({"alerts": found})


class _Cursor:
    """What one stream has sent: alerts past ``start``, at or after ``floor_ms()``, and not in ``seen``.

    ``seen`` holds the ids (with their times) sent within the lookback window, so a late alert
    with an earlier time is sent once and one already sent is never sent again.
    """

    def __init__(self, start: tuple[int, str], newest_ms: int, seen: dict[str, int] | None = None) -> None:
        self.start = start
        self.newest_ms = newest_ms
        self.seen = seen or {}
        self.min_floor_ms = 0

    def floor_ms(self) -> int:
        return max(self.start[0], self.min_floor_ms, min(self.newest_ms, int(time.time() * 1000)) - LOOKBACK_MS)

    def exclude(self) -> list[str]:
        floor = self.floor_ms()
        self.seen = {aid: ms for aid, ms in self.seen.items() if ms >= floor}
        if len(self.seen) > MAX_SEEN:  # an alert storm: forget the oldest half and look back less
            ordered = sorted(self.seen.items(), key=lambda item: item[1])
            dropped = ordered[: len(ordered) // 2]
            self.min_floor_ms = dropped[-1][1] + 1
            self.seen = {aid: ms for aid, ms in ordered[len(dropped) :] if ms >= self.min_floor_ms}
        return list(self.seen)

    def sent(self, alert: dict[str, Any]) -> None:
        self.seen[alert["alert_id"]] = alert["time_ms"]
        self.newest_ms = max(self.newest_ms, alert["time_ms"])


async def _start_cursor(request: Request, team: str, project: str, query: StreamQuery) -> _Cursor:
    """Resume after Last-Event-ID, else start at ``since``, else send what is stored from now on."""
    match = _EVENT_ID.match(request.headers.get("last-event-id", ""))
    if match and is_time_ms(int(match[1])):
        return _Cursor((int(match[1]), match[2]), int(match[1]))
    if query.since is not None:
        return _Cursor((round(query.since * 1000), ""), round(query.since * 1000))
    # From connect time: what the lookback window holds now counts as sent, so only what is
    # stored after connecting goes out, even an alert stamped a little earlier by the run's clock.
    now_ms = int(time.time() * 1000)
    cursor = _Cursor((now_ms - LOOKBACK_MS, ""), now_ms)
    present = await backend_of(request).run(
        logs.alerts_after, team, project, cursor.floor_ms(), cursor.start, (), query.run_id, logs.MAX_STREAM_BATCH
    )
    for alert in present:
        cursor.seen[alert["alert_id"]] = alert["time_ms"]
    if len(present) == logs.MAX_STREAM_BATCH:  # more than a batch in the window: start after the last of them
        cursor.start = (present[-1]["time_ms"], present[-1]["alert_id"])
    return cursor


def _event(alert: dict[str, Any]) -> bytes:
    data = {k: v for k, v in alert.items() if k != "time_ms"}
    return f"id: {alert['time_ms']}-{alert['alert_id']}\nevent: alert\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def _alert_events(
    request: Request, team: str, project: str, query: StreamQuery, cursor: _Cursor
) -> AsyncIterator[bytes]:
    backend = backend_of(request)
    started = last_write = time.monotonic()
    deadline = started + min(query.timeout_s or MAX_LIFETIME_S, MAX_LIFETIME_S)
    sent = 0
    yield f"retry: {RETRY_MS}\n\n".encode()  # also sends the headers at once
    while not await request.is_disconnected():
        try:
            # The credential may be gone since (key revoked, member removed, share link revoked): in
            # memory for keys (api/keyring.py), so checked on every poll.
            if not await still_allowed(request, team, project):
                yield b": access ended: the credential no longer reads this project\n\n"
                return
            batch = await backend.run(
                logs.alerts_after,
                team,
                project,
                cursor.floor_ms(),
                cursor.start,
                cursor.exclude(),
                query.run_id,
                logs.MAX_STREAM_BATCH,
            )
        except Exception as exc:  # noqa: BLE001 - storage is away: end the stream; the client resumes by Last-Event-ID
            log.warning("alert stream of %s/%s ends: %s: %s", team, project, type(exc).__name__, exc)
            return
        for alert in batch:
            cursor.sent(alert)
            yield _event(alert)
            sent += 1
            last_write = time.monotonic()
            if query.max_events and sent >= query.max_events:
                return
        now = time.monotonic()
        if now >= deadline:
            return
        if len(batch) == logs.MAX_STREAM_BATCH:
            continue  # more are waiting: no pause
        if now - last_write >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_write = now
        await asyncio.sleep(max(0.0, min(POLL_S, deadline - now)))


def _alert_schema() -> dict[str, Any]:
    """An alert's JSON Schema, inline: what an event's ``data`` holds."""
    _, components = msgspec.json.schema_components([Alert])
    return components["Alert"]


# One Server-Sent Event as schemathesis and OpenAPI 3.2 read a stream: its fields, data as JSON text.
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["alert"]},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _alert_schema()},
    },
}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "the id of the last event received: the stream resumes after it",
}


@endpoint(
    summary="Stream alerts (Server-Sent Events)",
    tags=["alerts"],
    ok=Answer(
        None,
        "an event stream: each event is an alert (event, id, and the alert as JSON data)",
        content={"text/event-stream": {"schema": _SSE_EVENT}},
    ),
    access=PROJECT_READ,
    parameters=[_LAST_EVENT_ID],
)
async def stream_alerts(request: Request, query: StreamQuery) -> Response:
    """New alerts as Server-Sent Events (``event: alert``, ``data``: one alert as JSON, ``id``: its cursor).

    From ``since``, else from connect time; a reconnect with ``Last-Event-ID`` resumes after that event.
    A ``: keepalive`` comment goes out every 15 s without alerts. ``max_events`` and ``timeout_s``
    end the stream (for scripts and tests); otherwise it lasts until the client disconnects, for an
    hour at most (then reconnect with ``Last-Event-ID``). It also ends, within a second, when its
    credential stops reading the project: a revoked key, a removed member, a revoked share link.
    Browsers' EventSource cannot send headers: use ``?share=`` for a share link.
    """
    team, project = project_path(request)
    cursor = await _start_cursor(request, team, project, query)
    slot = await quotas.open_stream(request)  # 429 past the caller's live streams; given back when this one ends
    return slot.hold(
        StreamingResponse(
            _alert_events(request, team, project, query, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # proxies must not buffer it
        )
    )


routes = [
    Route(ALERTS_PATH, list_alerts, methods=["GET"]),
    Route(STREAM_PATH, stream_alerts, methods=["GET"]),
]
