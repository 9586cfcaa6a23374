"""JSON responses through orjson: numpy arrays (chart series) serialise directly, NaN never leaks.

JSON has no NaN or infinities; the query layer sends them as the event contract's
strings, and anything non-finite that is left becomes ``null``.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from starlette.responses import Response

from runstream.events import encode_value

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=_OPTIONS)


def render_json(content: Any) -> bytes:
    """The JSON bytes, for handlers that render in the thread pool (large chart answers keep the event loop free)."""
    return orjson.dumps(content, option=_OPTIONS)


def rendered_json(body: bytes, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=headers)


def contract_numbers(value: Any) -> Any:
    """Non-finite floats anywhere in a nested value as the contract's strings (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else encode_value(value)
    if isinstance(value, dict):
        return {k: contract_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [contract_numbers(v) for v in value]
    return value
