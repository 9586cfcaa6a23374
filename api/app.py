"""The Starlette application: ``runstream api`` (cluster mode) and ``runstream server`` (embedded) serve it.

Each module under ``runstream.api`` owns one group of endpoints and exports its
``routes``; this one assembles them with the error handlers, the request-id and
metrics middleware, the quotas (``api/quotas.py``), and the backend's start and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Literal, TypedDict

from aiokafka.admin import AIOKafkaAdminClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import (
    alert_rules,
    alerts,
    artifacts,
    charts,
    deletion,
    exports,
    history,
    home,
    ingest,
    media,
    panels,
    quotas,
    reports,
    runs,
    sweeps,
    teams,
    views,
)
from runstream.api.backend import Backend
from runstream.api.errors import EXCEPTION_HANDLERS
from runstream.api.middleware import RequestContext, metrics_endpoint
from runstream.api.openapi import Answer, endpoint, openapi
from runstream.api.responses import json_response
from runstream.settings import Settings

API = "/api/v1"
HEALTH_PATH = f"{API}/health"


async def _check_clickhouse(backend: Backend) -> str:
    await backend.run(lambda client: client.command("SELECT 1"))
    return "ok"


async def _check_kafka(backend: Backend) -> str:
    if not backend.settings.kafka:
        return "not used (embedded mode)"
    admin = AIOKafkaAdminClient(bootstrap_servers=backend.settings.kafka, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()
    return "ok"


class Health(TypedDict):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


@endpoint(
    summary="Health and readiness",
    tags=["service"],
    access=None,
    security=[],
    ok={
        200: Answer(Health, "ClickHouse (and Kafka in cluster mode) answer"),
        503: Answer(Health, "a dependency is down; checks says which"),
    },
)
async def health(request: Request) -> Response:
    """Whether the services the API depends on answer: 200, or 503 naming what is down."""
    backend: Backend = request.app.state.backend
    checks: dict[str, str] = {}
    healthy = True
    for name, check in (("clickhouse", _check_clickhouse), ("kafka", _check_kafka)):
        try:
            checks[name] = await asyncio.wait_for(check(backend), timeout=5)
        except Exception as exc:  # noqa: BLE001 - any failure is "unavailable", with its reason
            healthy = False
            checks[name] = f"unavailable: {type(exc).__name__}: {exc}"
    body = {"status": "ok" if healthy else "unavailable", "checks": checks}
    return json_response(body, status_code=200 if healthy else 503)


def create_app(settings: Settings | None = None, backend: Backend | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    backend = backend or Backend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await backend.start()
        except Exception:
            import logging

            logging.getLogger("runstream.api").exception("starting the backend failed; /api/v1/health will say why")
        try:
            yield
        finally:
            await backend.stop()

    routes = [
        Route(HEALTH_PATH, health, methods=["GET"]),
        Route(f"{API}/ready", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route(f"{API}/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        *ingest.routes,
        *runs.routes,
        *history.routes,
        *charts.routes,
        *exports.routes,
        *reports.routes,
        *artifacts.routes,
        *alerts.routes,
        *alert_rules.routes,
        *teams.routes,
        *deletion.routes,
        *sweeps.routes,
        *panels.routes,
        *media.routes,
        *views.routes,
        *home.routes(),  # last: the UI's assets are mounted at /
    ]
    handlers = {**EXCEPTION_HANDLERS, quotas.QuotaExceeded: quotas.on_quota_exceeded}  # 429 with Retry-After
    app = Starlette(
        routes=routes, middleware=[Middleware(RequestContext)], exception_handlers=handlers, lifespan=lifespan
    )
    app.state.backend = backend
    app.state.quotas = quotas.Quotas(settings)  # this replica's buckets (tests may swap in one with a fake clock)
    return app
