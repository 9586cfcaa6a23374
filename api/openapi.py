"""The OpenAPI document (``GET /api/v1/openapi.json``), built from the endpoints' docstrings.

Each endpoint's docstring carries its operation as YAML after ``---``;
``with_schemas`` puts shared JSON schemas into it (``$NAME``; JSON is YAML), so
each shape is written once. Path parameters are declared here from the route's
template unless the docstring declares them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.schemas import SchemaGenerator

from runstream.api.responses import json_response

F = TypeVar("F", bound=Callable[..., Any])

#: The API's error answer (``api/errors.py``).
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}}}
#: The event contract's names (``runstream.events``), so generated requests use names that can exist.
NAME_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"}
PATH_SCHEMAS = {"team": NAME_SCHEMA, "project": NAME_SCHEMA,
                "run_id": {"type": "string", "pattern": r"^[A-Za-z0-9_\-]{1,64}$"}}


def with_schemas(schemas: Mapping[str, Any]) -> Callable[[F], F]:
    """A decorator putting ``$NAME`` schemas into an endpoint's docstring (longest names first: $RUNS before $RUN)."""
    def put(fn: F) -> F:
        doc = fn.__doc__ or ""
        for name in sorted(schemas, key=len, reverse=True):
            doc = doc.replace(f"${name}", orjson.dumps(schemas[name]).decode())
        fn.__doc__ = doc
        return fn
    return put


SCHEMAS = SchemaGenerator({
    "openapi": "3.0.3",
    "info": {"title": "runstream API", "version": "1"},
    "components": {"securitySchemes": {
        "apiKey": {"type": "http", "scheme": "bearer", "description": "rs_<key_id>_<secret>"},
        "shareLink": {"type": "apiKey", "in": "header", "name": "X-Runstream-Share"},
    }},
    "security": [{"apiKey": []}, {"shareLink": []}, {}],
})


async def openapi(request: Request) -> Response:
    """The OpenAPI document, built from the endpoints' docstrings.

    ---
    summary: This document
    tags: [service]
    security: []
    responses:
      200: {description: OpenAPI 3 JSON}
    """
    schema = SCHEMAS.get_schema(routes=request.app.routes)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            _declare_path_parameters(path, operation)
    return json_response(schema)


def _declare_path_parameters(path: str, operation: dict) -> None:
    """Every ``{name}`` of a path as a required string parameter, unless the docstring declares it."""
    declared = {p.get("name") for p in operation.get("parameters", []) if p.get("in") == "path"}
    for name in re.findall(r"{(\w+)}", path):
        if name not in declared:
            schema = PATH_SCHEMAS.get(name, {"type": "string", "minLength": 1})
            operation.setdefault("parameters", []).append({"name": name, "in": "path", "required": True, "schema": schema})
