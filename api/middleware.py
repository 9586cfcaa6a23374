"""Per-request context: a request id (echoed as ``X-Request-Id`` and put in the access log) and Prometheus metrics.

The access log (logger ``runstream.api.access``) shows the path without its query
string, and share tokens in paths cut off, so no credential reaches a log.

Metrics are labelled by route template (``/api/v1/runs/{team}/{project}/{run_id}``),
never by raw path, so their number stays bounded.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runstream.api.openapi import Answer, endpoint

log = logging.getLogger("runstream.api.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}\Z")
_SHARE_TOKEN = re.compile(r"(/shared?/)[^/]+")  # a share link is a credential: never in a log

REGISTRY = CollectorRegistry()
REQUESTS = Counter("runstream_api_requests", "API requests answered", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram(
    "runstream_api_request_seconds",
    "Time to the response's first byte",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGESTED = Counter("runstream_api_ingested_events", "Events accepted by the ingest endpoint", registry=REGISTRY)
REJECTED = Counter("runstream_api_rejected_batches", "Ingest batches refused, by reason", ["reason"], registry=REGISTRY)
QUOTA_REFUSED = Counter(
    "runstream_api_quota_refusals", "Requests refused with 429, by the quota setting", ["limit"], registry=REGISTRY
)


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
                route = getattr(scope.get("route"), "path", "unmatched")
                LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            path = _SHARE_TOKEN.sub(r"\1…", scope["path"])
            log.info(
                "%s %s %s %d %.1fms", request_id, scope["method"], path, status, (time.perf_counter() - started) * 1000
            )


@endpoint(
    summary="Prometheus metrics",
    tags=["service"],
    access=None,
    security=[],
    ok=Answer(None, "the text exposition format", content={CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}),
)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of this API process."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
