"""The Starlette application (served by uvicorn: ``runstream api``).

So far it answers health: ``GET /api/v1/health`` checks ClickHouse and, in
cluster mode, Kafka. Ingest, queries and the UI join it in later work.
"""

from __future__ import annotations

import asyncio

from aiokafka.admin import AIOKafkaAdminClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runstream.settings import Settings
from runstream.storage.client import connect

HEALTH_PATH = "/api/v1/health"


async def _check_clickhouse(settings: Settings) -> str:
    def ping() -> None:
        connect(settings.clickhouse_dsn).command("SELECT 1")

    await asyncio.to_thread(ping)
    return "ok"


async def _check_kafka(settings: Settings) -> str:
    if not settings.kafka:
        return "not used (embedded mode)"
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka, request_timeout_ms=3000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        await admin.close()
    return "ok"


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    async def health(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        healthy = True
        for name, check in (("clickhouse", _check_clickhouse), ("kafka", _check_kafka)):
            try:
                checks[name] = await asyncio.wait_for(check(settings), timeout=5)
            except Exception as exc:
                healthy = False
                checks[name] = f"unavailable: {type(exc).__name__}: {exc}"
        body = {"status": "ok" if healthy else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return Starlette(routes=[Route(HEALTH_PATH, health)])
