"""Alerts (listed, and streamed live as Server-Sent Events) and the alert rules that fire them.

Rules are checked with the processor's own ``check_rule`` before they are
stored (``storage.rules``), so a rule the API accepts is a rule the processor
evaluates; the processor re-reads a project's rules at most ``RuleBook.ttl_s``
(1 s) after a change.

The live stream polls storage (about every second), so it behaves the same in
embedded and cluster mode and on any replica. Alert times are the run's clock
and a worker may store an alert late, so the stream looks back ``LOOKBACK_MS``
behind the newest alert it sent and remembers what it sent there: a late alert
still arrives, once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from runstream.api.auth import Principal, allows
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.reports import SCHEMAS as REPORT_SCHEMAS
from runstream.api.openapi import with_schemas
from runstream.api.reports import authorize
from runstream.api.requests import json_body, query_int
from runstream.api.responses import json_response
from runstream.storage import logs, rules
from runstream.storage.errors import QueryError
from runstream.events import ALERT_LEVELS
from runstream.streams.alerting import OPS, RULE_KINDS, RuleError

log = logging.getLogger("runstream.api")

API = "/api/v1"
ALERTS_PATH = f"{API}/projects/{{team}}/{{project}}/alerts"
STREAM_PATH = f"{ALERTS_PATH}/stream"
RULES_PATH = f"{API}/projects/{{team}}/{{project}}/alert-rules"
RULE_PATH = f"{RULES_PATH}/{{rule_id}}"

POLL_S = 1.0
KEEPALIVE_S = 15.0
LOOKBACK_MS = 60_000
MAX_SEEN = 10_000
MAX_STREAM_S = 24 * 3600
RETRY_MS = 3000
_MAX_MS = 10**13
_EVENT_ID = re.compile(r"(\d{1,14})-([0-9A-Za-z]{1,64})\Z")
_RULE_FIELDS = ("name", "kind", "spec", "enabled", "cooldown_s")

# -- OpenAPI schemas ------------------------------------------------------------------------

_ALERT = {"type": "object", "required": ["run_id", "alert_id", "rule_id", "source", "level", "title", "text", "time"],
          "properties": {"run_id": {"type": "string"}, "alert_id": {"type": "string"},
                         "rule_id": {"type": "string", "nullable": True}, "source": {"type": "string"},
                         "level": {"type": "string"}, "title": {"type": "string"}, "text": {"type": "string"},
                         "time": {"type": "number"}}}
_SPEC = {"type": "object", "description": "the kind's spec, see streams/alerting.py; checked by its check_rule"}


def _spec_schemas() -> list[dict[str, Any]]:
    """Each kind's spec as JSON Schema: what ``streams.alerting.check_rule`` accepts, for clients and fuzzers."""
    name = {"type": "string", "minLength": 1, "maxLength": 256}
    positive = {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    goal = {"type": "string", "enum": ["minimize", "maximize"]}
    common = {"level": {"type": "string", "enum": list(ALERT_LEVELS)},
              "webhooks": {"type": "array", "items": {"type": "string", "pattern": "^https?://"}}}
    compare = {"metric": name, "op": {"type": "string", "enum": list(OPS)}, "value": {"type": "number"}}
    specs: dict[str, dict[str, Any]] = {
        "threshold": {"required": ["metric", "op", "value"], "properties": compare},
        "system": {"required": ["metric", "op", "value", "for_seconds"],
                   "properties": {**compare, "for_seconds": {"type": "number", "minimum": 0}}},
        "nonfinite": {"required": ["metric"], "properties": {"metric": name}},
        "divergence": {"required": ["metric", "percent", "within_steps"],
                       "properties": {"metric": name, "percent": positive, "goal": goal,
                                      "within_steps": {"type": "integer", "minimum": 1}}},
        "stall": {"properties": {"seconds": positive, "goal": goal},
                  "anyOf": [{"required": ["seconds"]},
                            {"not": {"required": ["seconds"]}, "required": ["metric", "patience"],
                             "properties": {"metric": name, "patience": {"type": "integer", "minimum": 1}}}]},
        "run_state": {"required": ["states"],
                      "properties": {"states": {"type": "array", "minItems": 1, "items": {"type": "string"}}}},
    }
    assert set(specs) == set(RULE_KINDS), "a new rule kind needs its spec schema here"
    out = []
    for kind, spec in specs.items():
        spec = {"type": "object", **spec, "properties": {**common, **spec.get("properties", {})}}
        out.append({"properties": {"kind": {"enum": [kind]}, "spec": spec}})
    return out


_KIND_SPECS = _spec_schemas()
_RULE_PROPS = {"name": {"type": "string", "minLength": 1, "maxLength": rules.MAX_NAME, "pattern": "\\S"},
               "kind": {"type": "string", "enum": list(RULE_KINDS)}, "spec": _SPEC,
               "enabled": {"type": "boolean", "default": True},
               "cooldown_s": {"type": "integer", "minimum": 0, "maximum": rules.MAX_COOLDOWN_S,
                              "default": rules.DEFAULT_COOLDOWN_S}}
_RULE = {"type": "object", "required": ["id", "team", "project", "name", "kind", "spec", "enabled", "cooldown_s",
                                        "created_at", "updated_at"],
         "properties": {"id": {"type": "string"}, "team": {"type": "string"}, "project": {"type": "string"},
                        "name": {"type": "string"}, "kind": {"type": "string"}, "spec": {"type": "object"},
                        "enabled": {"type": "boolean"}, "cooldown_s": {"type": "integer"},
                        "created_at": {"type": "number"}, "updated_at": {"type": "number"}}}
doc = with_schemas({
    "ERROR": REPORT_SCHEMAS["ERROR"], "TEAM": REPORT_SCHEMAS["TEAM"], "PROJECT": REPORT_SCHEMAS["PROJECT"],
    "ALERT_LIST": {"type": "object", "required": ["alerts"],
                   "properties": {"alerts": {"type": "array", "items": _ALERT}}},
    "RULE_LIST": {"type": "object", "required": ["rules"], "properties": {"rules": {"type": "array", "items": _RULE}}},
    "RULE": _RULE,
    # One Server-Sent Event as schemathesis and OpenAPI 3.2 read a stream: its fields, data as JSON text.
    "SSE_EVENT": {"type": "object", "required": ["event", "id", "data"], "properties": {
        "event": {"type": "string", "enum": ["alert"]}, "id": {"type": "string"}, "retry": {"type": "integer"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": _ALERT}}},
    "NEW_RULE": {"type": "object", "required": ["name", "kind", "spec"], "additionalProperties": False,
                 "properties": _RULE_PROPS, "anyOf": _KIND_SPECS},
    "RULE_CHANGES": {"type": "object", "additionalProperties": False, "properties": _RULE_PROPS, "anyOf": [
        {"not": {"anyOf": [{"required": ["kind"]}, {"required": ["spec"]}]}},
        {"required": ["kind", "spec"], "anyOf": _KIND_SPECS}]},
    "SINCE": {"type": "number", "minimum": 0, "maximum": _MAX_MS / 1000},
})


# -- helpers ----------------------------------------------------------------------------------


def _no_empty(request: Request, *names: str) -> None:
    """``?since=`` is a mistake, not "no value": say so instead of guessing."""
    for name in names:
        if request.query_params.get(name) == "":
            raise ApiError(400, f"query parameter {name} is empty; give it a value or leave it out")


def _query_since(request: Request) -> float | None:
    raw = request.query_params.get("since")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= _MAX_MS / 1000:
        raise ApiError(400, f"query parameter since must be a Unix time in seconds, got {raw[:100]!r}")
    return value


def _query_run(request: Request) -> str | None:
    run_id = request.query_params.get("run_id")
    return run_id or None


# -- alerts -------------------------------------------------------------------------------------


@doc
async def list_alerts(request: Request) -> Response:
    """A project's alerts (or one run's), newest first, optionally from ``since`` on.

    ---
    summary: List alerts
    tags: [alerts]
    parameters:
      - $TEAM
      - $PROJECT
      - {name: run_id, in: query, required: false, schema: {type: string, minLength: 1}}
      - {name: since, in: query, required: false, description: Unix seconds, schema: $SINCE}
      - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 10000, default: 100}}
    responses:
      200: {description: the alerts, content: {application/json: {schema: $ALERT_LIST}}}
      400: {description: "a bad query parameter, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "read")
    _no_empty(request, "run_id", "since", "limit")
    limit = query_int(request, "limit", 100, 1, logs.MAX_ALERTS)
    found = await backend_of(request).run(logs.list_alerts, team, project, _query_run(request), _query_since(request),
                                        limit)
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
            self.seen = {aid: ms for aid, ms in ordered[len(dropped):] if ms >= self.min_floor_ms}
        return list(self.seen)

    def sent(self, alert: dict[str, Any]) -> None:
        self.seen[alert["alert_id"]] = alert["time_ms"]
        self.newest_ms = max(self.newest_ms, alert["time_ms"])


async def _start_cursor(request: Request, team: str, project: str, run_id: str | None) -> _Cursor:
    """Resume after Last-Event-ID, else start at ``since``, else send what is stored from now on."""
    last = request.headers.get("last-event-id", "")
    match = _EVENT_ID.match(last)
    if match and int(match[1]) <= _MAX_MS:
        return _Cursor((int(match[1]), match[2]), int(match[1]))
    since = _query_since(request)
    if since is not None:
        return _Cursor((round(since * 1000), ""), round(since * 1000))
    # From connect time: what the lookback window holds now counts as sent, so only what is
    # stored after connecting goes out, even an alert stamped a little earlier by the run's clock.
    now_ms = int(time.time() * 1000)
    cursor = _Cursor((now_ms - LOOKBACK_MS, ""), now_ms)
    present = await backend_of(request).run(logs.alerts_after, team, project, cursor.floor_ms(), cursor.start, (),
                                          run_id, logs.MAX_STREAM_BATCH)
    for alert in present:
        cursor.seen[alert["alert_id"]] = alert["time_ms"]
    if len(present) == logs.MAX_STREAM_BATCH:  # more than a batch in the window: start after the last of them
        cursor.start = (present[-1]["time_ms"], present[-1]["alert_id"])
    return cursor


def _event(alert: dict[str, Any]) -> bytes:
    data = {k: v for k, v in alert.items() if k != "time_ms"}
    return (f"id: {alert['time_ms']}-{alert['alert_id']}\nevent: alert\ndata: ".encode()
            + orjson.dumps(data) + b"\n\n")


async def _alert_events(request: Request, team: str, project: str, run_id: str | None, cursor: _Cursor,
                        max_events: int | None, timeout_s: int | None) -> AsyncIterator[bytes]:
    backend = backend_of(request)
    started = last_write = time.monotonic()
    deadline = started + timeout_s if timeout_s else None
    sent = 0
    yield f"retry: {RETRY_MS}\n\n".encode()  # also sends the headers at once
    while not await request.is_disconnected():
        try:
            batch = await backend.run(logs.alerts_after, team, project, cursor.floor_ms(), cursor.start,
                                      cursor.exclude(), run_id, logs.MAX_STREAM_BATCH)
        except Exception as exc:  # noqa: BLE001 - storage is away: end the stream; the client resumes by Last-Event-ID
            log.warning("alert stream of %s/%s ends: %s: %s", team, project, type(exc).__name__, exc)
            return
        for alert in batch:
            cursor.sent(alert)
            yield _event(alert)
            sent += 1
            last_write = time.monotonic()
            if max_events and sent >= max_events:
                return
        if len(batch) == logs.MAX_STREAM_BATCH:
            continue  # more are waiting: no pause
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if now - last_write >= KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_write = now
        await asyncio.sleep(POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - now)))


@doc
async def stream_alerts(request: Request) -> Response:
    """New alerts as Server-Sent Events (``event: alert``, ``data``: one alert as JSON, ``id``: its cursor).

    From ``since``, else from connect time; a reconnect with ``Last-Event-ID`` resumes after that event.
    A ``: keepalive`` comment goes out every 15 s without alerts. ``max_events`` and ``timeout_s``
    end the stream (for scripts and tests); otherwise it lasts until the client disconnects.
    Browsers' EventSource cannot send headers: use ``?share=`` for a share link.

    ---
    summary: Stream alerts (Server-Sent Events)
    tags: [alerts]
    parameters:
      - $TEAM
      - $PROJECT
      - {name: run_id, in: query, required: false, schema: {type: string, minLength: 1}}
      - {name: since, in: query, required: false, description: Unix seconds, schema: $SINCE}
      - {name: max_events, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 100000}}
      - {name: timeout_s, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 86400}}
      - {name: Last-Event-ID, in: header, required: false, schema: {type: string}}
    responses:
      200: {description: "an event stream: each event is an alert (event, id, and the alert as JSON data)", content: {text/event-stream: {schema: $SSE_EVENT}}}
      400: {description: "a bad query parameter, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "read")
    _no_empty(request, "run_id", "since", "max_events", "timeout_s")
    max_events = query_int(request, "max_events", None, 1, 100_000)
    timeout_s = query_int(request, "timeout_s", None, 1, MAX_STREAM_S)
    run_id = _query_run(request)
    cursor = await _start_cursor(request, team, project, run_id)
    return StreamingResponse(
        _alert_events(request, team, project, run_id, cursor, max_events, timeout_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # proxies must not buffer it
    )


# -- alert rules ---------------------------------------------------------------------------------


async def _rule_fields(request: Request, required: tuple[str, ...] = ()) -> dict[str, Any]:
    body = await json_body(request, 64 << 10)
    unknown = sorted(set(body) - set(_RULE_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown alert rule fields {unknown}; a rule has {', '.join(_RULE_FIELDS)}")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(422, f"an alert rule needs {', '.join(missing)}")
    return body


def _check_webhooks(request: Request, spec: Any) -> None:
    """Refuse a rule webhook aimed at an internal address now, rather than silently at its first alert."""
    hooks = spec.get("webhooks") if isinstance(spec, dict) else None
    if not isinstance(hooks, list):
        return  # check_rule explains what is wrong with it
    policy = backend_of(request).webhook_policy
    for url in hooks:
        # Not http(s) at all: check_rule says what webhooks must be.
        refused = policy.refusal(url) if isinstance(url, str) and url.startswith(("http://", "https://")) else None
        if refused:
            raise ApiError(422, refused)


def _invalid(exc: QueryError | RuleError) -> ApiError:
    details = exc.details or None if isinstance(exc, QueryError) else None
    return ApiError(422, exc.message if isinstance(exc, QueryError) else str(exc), details=details)


@doc
async def list_rules(request: Request) -> Response:
    """A project's alert rules, enabled or not.

    ---
    summary: List alert rules
    tags: [alerts]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the rules, content: {application/json: {schema: $RULE_LIST}}}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
    """
    team, project, principal = await authorize(request, "read")
    found = await backend_of(request).run(rules.list_rules, team, project)
    return json_response({"rules": [_shown(rule, principal, team) for rule in found]})


@doc
async def create_rule(request: Request) -> Response:
    """Create an alert rule; the processor applies it to the project's runs within a second.

    ---
    summary: Create an alert rule
    tags: [alerts]
    requestBody:
      required: true
      content: {application/json: {schema: $NEW_RULE}}
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      201: {description: the new rule, content: {application/json: {schema: $RULE}}}
      400: {description: "not a JSON object, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      422: {description: "a field, the kind or the spec does not fit; the message says what to fix", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    body = await _rule_fields(request, required=("name", "kind", "spec"))
    _check_webhooks(request, body["spec"])
    try:
        rule = await backend_of(request).run(
            rules.create_rule, team, project, body["name"], body["kind"], body["spec"], body.get("enabled", True),
            body.get("cooldown_s", rules.DEFAULT_COOLDOWN_S))
    except (QueryError, RuleError) as exc:
        raise _invalid(exc) from None
    return json_response(rule, status_code=201)


@doc
async def get_rule(request: Request) -> Response:
    """One alert rule.

    ---
    summary: Get an alert rule
    tags: [alerts]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the rule, content: {application/json: {schema: $RULE}}}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such rule, or not visible", content: {application/json: {schema: $ERROR}}}
    """
    team, project, principal = await authorize(request, "read")
    rule_id = request.path_params["rule_id"]
    rule = await backend_of(request).run(rules.get_rule, team, project, rule_id)
    if rule is None:
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    return json_response(_shown(rule, principal, team))


def _shown(rule: dict[str, Any], principal: Principal, team: str) -> dict[str, Any]:
    """A rule as this caller may see it: a webhook URL's path is its secret, so only writers see it whole."""
    hooks = rule["spec"].get("webhooks")
    if not hooks or allows(principal, team, "write"):
        return rule
    masked = [f"{urlsplit(url).scheme}://{urlsplit(url).hostname}/…" for url in hooks]
    return {**rule, "spec": {**rule["spec"], "webhooks": masked}}


@doc
async def patch_rule(request: Request) -> Response:
    """Change an alert rule: the fields sent; ``kind`` and ``spec`` go together, and the spec is replaced whole.

    ---
    summary: Update an alert rule
    tags: [alerts]
    requestBody:
      required: true
      content: {application/json: {schema: $RULE_CHANGES}}
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the updated rule, content: {application/json: {schema: $RULE}}}
      400: {description: "not a JSON object, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such rule, or not visible", content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      422: {description: "a field, the kind or the spec does not fit; the message says what to fix", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    changes = await _rule_fields(request)
    if ("kind" in changes) != ("spec" in changes):
        raise ApiError(422, "kind and spec change together (a spec is only valid for its kind): send both")
    _check_webhooks(request, changes.get("spec"))
    rule_id = request.path_params["rule_id"]
    try:
        rule = await backend_of(request).run(rules.update_rule, team, project, rule_id, changes)
    except (QueryError, RuleError) as exc:
        raise _invalid(exc) from None
    if rule is None:
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    return json_response(rule)


@doc
async def delete_rule(request: Request) -> Response:
    """Delete an alert rule; the processor stops applying it within a second.

    ---
    summary: Delete an alert rule
    tags: [alerts]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      204: {description: deleted}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such rule, or not visible", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    rule_id = request.path_params["rule_id"]
    if not await backend_of(request).run(rules.delete_rule, team, project, rule_id):
        raise not_found(f"alert rule {rule_id} in {team}/{project}")
    return Response(status_code=204)


routes = [
    Route(ALERTS_PATH, list_alerts, methods=["GET"]),
    Route(STREAM_PATH, stream_alerts, methods=["GET"]),
    Route(RULES_PATH, list_rules, methods=["GET"]),
    Route(RULES_PATH, create_rule, methods=["POST"]),
    Route(RULE_PATH, get_rule, methods=["GET"]),
    Route(RULE_PATH, patch_rule, methods=["PATCH"]),
    Route(RULE_PATH, delete_rule, methods=["DELETE"]),
]
