"""Errors as the API answers them: ``{"error": {"code", "message", "details"}}`` with a status.

Handlers raise ``ApiError`` (or the query layer's ``QueryError``, a 400); anything
else becomes a 500 that names the request id and never shows a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from runstream.api.responses import json_response
from runstream.storage.errors import QueryError

log = logging.getLogger("runstream.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details


def not_found(what: str) -> ApiError:
    """The same answer for "does not exist" and "not visible to you": no existence leak."""
    return ApiError(404, f"{what} not found (or not visible with this API key)")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return json_response(body, status_code=status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


async def on_query_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QueryError)
    return error_response(400, "invalid_query", exc.message, exc.details or None)


async def on_http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own (unknown path, wrong method) in the API's shape."""
    assert isinstance(exc, HTTPException)
    allowed = _allowed_methods(request) if exc.status_code in (404, 405) else []
    if exc.status_code == 404 and allowed:
        # An API path with another method: the UI mounted at / answered 404 where the router would say 405.
        exc = HTTPException(405)
    message = {
        404: f"no such endpoint: {request.method} {request.url.path} (see /api/v1/openapi.json)",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed)
    return error_response(exc.status_code, _CODES.get(exc.status_code, "error"), message, None, headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's own 405 names only the first route's)."""
    allowed: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    return sorted(allowed)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("request %s failed: %s %s", request_id, request.method, request.url.path)
    return error_response(
        500,
        "internal",
        f"the server failed on this request; its log has the details under request id {request_id}",
        {"request_id": request_id},
    )


EXCEPTION_HANDLERS = {
    ApiError: on_api_error,
    QueryError: on_query_error,
    HTTPException: on_http_error,
    Exception: on_unexpected,
}
