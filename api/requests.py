"""Reading what a request sends: bounded bodies, JSON objects, and typed query parameters.

Every helper raises ``ApiError`` with a message that says what to send instead.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from runstream.api.errors import ApiError

MAX_JSON_BYTES = 4 << 20


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``max_bytes`` (not after reading it all)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"the body is {int(length):,} bytes, more than the limit of {max_bytes:,}; send less at once")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the body is more than the limit of {max_bytes:,} bytes; send less at once")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request, max_bytes: int = MAX_JSON_BYTES, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object (``{}`` for an empty body when ``empty_ok``: all defaults)."""
    raw = await read_body(request, max_bytes)
    if empty_ok and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def query_int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be a whole number, got {raw[:100]!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name} must be from {lo} to {hi}, got {value}")
    return value


def query_json(request: Request, name: str) -> Any:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"query parameter {name} must be JSON text: {exc}") from None


def query_list(request: Request, name: str) -> list[str] | None:
    """A comma-joined list (``keys=a,b``); None when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return [part for part in raw.split(",") if part]
