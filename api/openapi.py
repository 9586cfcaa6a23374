"""Declaring endpoints, and the OpenAPI document (``GET /api/v1/openapi.json``) built from the declarations.

Each endpoint is declared once, with ``@endpoint``: its summary, its answers and
refusals, and in the handler's signature the msgspec types of its query
parameters (``query: T``) and JSON body (``body: T``). The same declaration
checks each request at the edge (``api/requests.py``) and is the document's
schema, so what is documented is what is enforced. The handler's docstring is the
operation's description: what the endpoint does, for its callers.

Refusals every endpoint can answer are described once here (``REFUSALS``); an
endpoint names the ones it answers, with its own words where they say more.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.schemas import SchemaGenerator

from runstream.api import quotas
from runstream.api.auth import ANYONE, SCOPE_DESCRIPTIONS, Access
from runstream.api.requests import MAX_JSON_BYTES, Declared, check_path, decode_body, decode_query
from runstream.api.responses import json_response
from runstream.names import NAME_PATTERN, RUN_ID_PATTERN, USER_PATTERN

Handler = Callable[..., Awaitable[Response]]


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    details: Any


class Error(msgspec.Struct):
    """The API's refusal (``api/errors.py``)."""

    error: ErrorBody


#: What each refusal means, unless an endpoint says more (docs/api.md, "Errors").
REFUSALS: dict[int, str] = {
    400: "the request does not fit its declaration (a field, parameter or value); the message says what to fix",
    401: "a credential that does not work",
    403: "the key may not do this here",
    404: "no such resource, or not visible with this key",
    409: "it conflicts with what exists",
    413: "the body is too large",
    422: "the request fits its declaration, but its content cannot be applied; the message says why",
    429: "over a quota of this key, its team or this client; Retry-After says when to retry, and the message "
    "which setting raises the quota",
    503: "a service it needs is unavailable; retry",
}


@dataclass(frozen=True)
class Answer:
    """A successful answer: a msgspec-describable type (None: no JSON body) or other content types."""

    type: Any
    description: str
    content: Mapping[str, Any] | None = None  # media type -> OpenAPI media object, for answers that are not JSON
    headers: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    summary: str
    tags: tuple[str, ...]
    description: str
    answers: Mapping[int, Answer]
    refusals: Mapping[int, str]
    query: Declared | None
    body: Declared | None
    body_content: Mapping[str, Any] | None  # a body that is not one JSON object (NDJSON events, a blob)
    empty_body_ok: bool
    security: list[Any] | None
    parameters: tuple[Mapping[str, Any], ...] = field(default=())
    access: Access | None = None
    scope: str | None = None  # the key scope documented, when the handler checks more than ``access``

    def scope_for(self, method: str) -> str:
        """The key scope a request needs (``auth.SCOPE_DESCRIPTIONS``): what the document says."""
        if self.scope is not None:
            return self.scope
        return self.access.scope_for(method) if self.access is not None else "none"


def endpoint(
    *,
    summary: str,
    tags: Iterable[str],
    ok: Answer | Mapping[int, Answer],
    access: Access | None,
    refusals: Mapping[int, str] | Iterable[int] = (),
    security: list[Any] | None = None,
    body_bytes: int = MAX_JSON_BYTES,
    empty_body_ok: bool = False,
    body_content: Mapping[str, Any] | None = None,
    parameters: Iterable[Mapping[str, Any]] = (),
    scope: str | None = None,
) -> Callable[[Handler], Handler]:
    """Declare an endpoint: who may call it, what it takes, what it answers.

    Each request is checked in this order: ``access`` (None: anyone, unchecked), then
    the path's names (``check_path``) and the handler's ``query`` and ``body``
    parameters are decoded, then the handler runs, given the access check's principal if it has a
    ``principal`` parameter. So a caller who may not be here learns nothing about its request.

    ``refusals`` are statuses (described by ``REFUSALS``) or status -> description;
    the access check's statuses are added, 400 for a declared query or body, 413
    for a body. ``empty_body_ok``: an empty body is ``{}`` (every field's default).
    ``security=[]`` for an endpoint anyone may call; ``body_content``
    documents a body the handler reads itself; ``parameters`` documents
    parameters the handler reads itself. ``scope`` documents the key scope the handler
    requires itself, when ``access`` admits more (``ANYONE`` with a check inside).
    """
    if scope is not None and scope not in SCOPE_DESCRIPTIONS:
        raise ValueError(f"scope must be one of {', '.join(SCOPE_DESCRIPTIONS)}")
    answers = dict(ok) if isinstance(ok, Mapping) else {200: ok}
    said = dict(refusals) if isinstance(refusals, Mapping) else {status: REFUSALS[status] for status in refusals}

    def declare(handler: Handler) -> Handler:
        hints = get_type_hints(handler)
        names = inspect.signature(handler).parameters
        query = Declared.of(hints["query"]) if "query" in names else None
        body = Declared.of(hints["body"]) if "body" in names else None
        refused = dict(said)
        for status in access.refusals if access else ():
            refused.setdefault(status, REFUSALS[status])
        if query or body:
            refused.setdefault(400, REFUSALS[400])
        if body or body_content:
            refused.setdefault(413, REFUSALS[413])
        # Requests to a project or team count against queries/s (ingest, under ANYONE, counts points instead).
        counted = access is not None and access is not ANYONE
        if counted:
            refused.setdefault(429, REFUSALS[429])
        operation = Operation(
            summary,
            tuple(tags),
            inspect.cleandoc(handler.__doc__ or ""),
            answers,
            dict(sorted(refused.items())),
            query,
            body,
            body_content,
            empty_body_ok,
            security,
            tuple(parameters),
            access,
            scope,
        )

        wants_principal = "principal" in names
        if wants_principal and access is None:
            raise TypeError(f"{handler.__name__} takes the principal: declare an access check")

        @functools.wraps(handler)
        async def checked(request: Request) -> Response:
            given: dict[str, Any] = {}
            if access is not None:
                principal = await access.check(request)
                if wants_principal:
                    given["principal"] = principal
                if counted:
                    await quotas.charge_query(request, principal)
            check_path(request)
            if query is not None:
                given["query"] = decode_query(request, query)
            if body is not None:
                given["body"] = await decode_body(request, body, body_bytes, empty_body_ok)
            return await handler(request, **given)

        checked.__operation__ = operation  # type: ignore[attr-defined]
        return checked

    return declare


# -- the document ------------------------------------------------------------------------------

PATH_SCHEMAS = {
    "team": {"type": "string", "pattern": NAME_PATTERN},
    "project": {"type": "string", "pattern": NAME_PATTERN},
    "run_id": {"type": "string", "pattern": RUN_ID_PATTERN},
    "user": {"type": "string", "pattern": USER_PATTERN},
}
_REF = "#/components/schemas/{name}"
_RETRY_AFTER = {
    "description": "whole seconds to wait before retrying",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_ROUTES = SchemaGenerator({})  # only for walking the routes (mounts, path converters)
_HEAD = {
    "openapi": "3.1.0",
    "info": {"title": "runstream API", "version": "1"},
    "security": [{"apiKey": []}, {"shareLink": []}, {"shareLinkQuery": []}, {}],
}
_SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "rs_<key_id>_<secret>"},
    "shareLink": {"type": "apiKey", "in": "header", "name": "X-Runstream-Share"},
    "shareLinkQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "share",
        "description": "a share link for clients that cannot send headers (a browser's EventSource)",
    },
}


def document(routes: list[Any]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes' declared endpoints."""
    infos = _ROUTES.get_endpoints(routes)
    declared = [
        (info.path, info.http_method, info.func.__operation__) for info in infos if hasattr(info.func, "__operation__")
    ]
    types: list[Any] = []
    for _, _, operation in declared:
        types += [a.type for a in operation.answers.values() if a.type is not None]
        types += [d.kind for d in (operation.query, operation.body) if d is not None]
    types.append(Error)
    unique = list({id(t): t for t in types}.values())
    schemas, components = _without_null_defaults(msgspec.json.schema_components(unique, ref_template=_REF))
    schema_of = {id(t): s for t, s in zip(unique, schemas)}
    query_types = {d.kind.__name__ for _, _, op in declared if (d := op.query) is not None}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation in declared:
        paths.setdefault(path, {})[method] = _operation(path, method, operation, schema_of, components)
    used = _referenced({"paths": paths, "components": {k: v for k, v in components.items() if k not in query_types}})
    return {
        **_HEAD,
        "paths": paths,
        "components": {
            "schemas": {name: components[name] for name in sorted(components) if name in used},
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }


def _operation(
    path: str, method: str, operation: Operation, schema_of: dict[int, Any], components: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": operation.summary, "tags": list(operation.tags)}
    scope = operation.scope_for(method)
    said = f"Key scope: {scope} ({SCOPE_DESCRIPTIONS[scope]})."
    out["description"] = f"{operation.description}\n\n{said}" if operation.description else said
    out["x-runstream-scope"] = scope
    if operation.security is not None:
        out["security"] = operation.security
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_SCHEMAS.get(name, {"type": "string", "minLength": 1}),
        }
        for name in re.findall(r"{(\w+)}", path)
    ]
    if operation.query is not None:
        parameters += _query_parameters(operation.query, components)
    parameters += [dict(p) for p in operation.parameters]
    if parameters:
        out["parameters"] = parameters
    if operation.body is not None:
        out["requestBody"] = {
            "required": not operation.empty_body_ok,
            "content": {"application/json": {"schema": schema_of[id(operation.body.kind)]}},
        }
    elif operation.body_content is not None:
        out["requestBody"] = {"required": True, "content": dict(operation.body_content)}
    responses: dict[str, Any] = {}
    for status, answer in operation.answers.items():
        response: dict[str, Any] = {"description": answer.description}
        if answer.type is not None:
            response["content"] = {"application/json": {"schema": schema_of[id(answer.type)]}}
        if answer.content is not None:
            response["content"] = {**response.get("content", {}), **answer.content}
        if answer.headers is not None:
            response["headers"] = dict(answer.headers)
        responses[str(status)] = response
    refusals = dict(operation.refusals)
    if set(re.findall(r"{(\w+)}", path)) & set(PATH_SCHEMAS):  # check_path: a name that cannot exist
        refusals.setdefault(400, REFUSALS[400])
    for status, description in sorted(refusals.items()):
        responses[str(status)] = {
            "description": description,
            "content": {"application/json": {"schema": schema_of[id(Error)]}},
        }
        if status == 429:
            responses[str(status)]["headers"] = {"Retry-After": _RETRY_AFTER}
    out["responses"] = responses
    return out


def _query_parameters(declared: Declared, components: dict[str, Any]) -> list[dict[str, Any]]:
    """The query type's fields as parameters: JSON ones as JSON content, comma-joined lists as strings."""
    struct = components[declared.kind.__name__]
    required = set(struct.get("required", ()))
    parameters = []
    for name, declared_schema in struct["properties"].items():
        schema = _not_null(declared_schema)  # its description may sit inside ``X | None``: lift it out after
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in schema:
            parameter["description"] = schema.pop("description")
        if name in declared.json:
            parameter["content"] = {"application/json": {"schema": schema}}
        elif name in declared.lists:
            parameter["schema"] = {"type": "string"}
            parameter["description"] = ("comma-joined; " + parameter.get("description", "")).rstrip("; ")
        else:
            parameter["schema"] = schema
        parameters.append(parameter)
    return parameters


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent, never null: ``X | None`` documents as ``X``."""
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        others = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**others, **rest[0]} if len(rest) == 1 else {**others, "anyOf": rest}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _without_null_defaults(tree: Any) -> Any:
    """The generated schemas without ``default: null``: an optional field that is left out says as much."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(_without_null_defaults(v) for v in tree)
    if isinstance(tree, dict):
        return {k: _without_null_defaults(v) for k, v in tree.items() if not (k == "default" and v is None)}
    return tree


def _referenced(tree: Any) -> set[str]:
    """The component names ``$ref``-erenced anywhere in ``tree``, following references into components."""
    text = msgspec.json.encode(tree).decode()
    return set(re.findall(r'#/components/schemas/([^"]+)"', text))


async def openapi(request: Request) -> Response:
    """This document, built from the endpoints' declarations."""
    built = getattr(request.app.state, "openapi_document", None)
    if built is None:
        built = request.app.state.openapi_document = document(request.app.routes)
    return json_response(built)
