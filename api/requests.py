"""Reading what a request sends: bounded bodies, and the declared types of bodies and query parameters.

An endpoint declares its query parameters and its JSON body as msgspec types
(``api/openapi.py``'s ``endpoint`` reads them from the handler's signature);
``decode_query`` and ``decode_body`` check a request against them once, at the
edge, so the handler and storage take typed values. Whatever does not fit is a
400 whose message says what to send instead (docs/api.md, "Errors": 400 for a
request that does not fit its declaration, 422 for one that fits but whose
content cannot be applied).

A field may carry its own message for the 400 (``Meta(extra={"error": ...})``);
otherwise the message names the field and what it expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson
from starlette.requests import Request

from runstream.api.errors import ApiError
from runstream.names import NAME_RULE, RUN_ID_RULE, USER_RULE, is_name, is_run_id, is_user

MAX_JSON_BYTES = 4 << 20
API = "/api/v1"
PROJECT_PATH = API + "/projects/{team}/{project}"
RUN_PATH = API + "/runs/{team}/{project}/{run_id}"


def project_path(request: Request) -> tuple[str, str]:
    """The (team, project) a project endpoint's path names."""
    return request.path_params["team"], request.path_params["project"]


def run_path(request: Request) -> tuple[str, str, str]:
    """The (team, project, run_id) a run endpoint's path names."""
    p = request.path_params
    return p["team"], p["project"], p["run_id"]


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``max_bytes`` (not after reading it all)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(
            413, f"the body is {int(length):,} bytes, more than the limit of {max_bytes:,}; send less at once"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the body is more than the limit of {max_bytes:,} bytes; send less at once")
        chunks.append(chunk)
    return b"".join(chunks)


# -- declared types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Declared:
    """What the edge needs to know about a declared type, worked out once per endpoint."""

    kind: type[msgspec.Struct]
    fields: tuple[str, ...]  # the names a request may send
    messages: Mapping[str, str]  # field -> its own message for a 400
    lists: frozenset[str]  # query fields sent comma-joined (``keys=a,b``)
    json: frozenset[str]  # query fields sent as JSON text (``filters={...}``)
    choices: Mapping[str, tuple[Any, ...]]  # field -> the values a Literal allows, for its 400

    @classmethod
    def of(cls, kind: type[msgspec.Struct]) -> Declared:
        info = msgspec.inspect.type_info(kind)
        if not isinstance(info, msgspec.inspect.StructType):
            raise TypeError(f"{kind!r} is not a msgspec.Struct")
        messages, lists, json, choices = {}, set(), set(), {}
        for field in info.fields:
            if message := _error_message(field.type):
                messages[field.encode_name] = message
            bare = _without_none(field.type)
            if isinstance(bare, msgspec.inspect.LiteralType):
                choices[field.encode_name] = bare.values
            if isinstance(bare, (msgspec.inspect.ListType, msgspec.inspect.TupleType, msgspec.inspect.VarTupleType)):
                lists.add(field.encode_name)
            elif isinstance(bare, (msgspec.inspect.DictType, msgspec.inspect.AnyType)):
                json.add(field.encode_name)
        return cls(
            kind,
            tuple(f.encode_name for f in info.fields),
            messages,
            frozenset(lists),
            frozenset(json),
            choices,
        )


def _error_message(info: msgspec.inspect.Type) -> str | None:
    """A field's own 400 message: ``Meta(extra={"error": ...})``, outside or inside ``| None``."""
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    for option in options:
        while isinstance(option, msgspec.inspect.Metadata):
            if option.extra and "error" in option.extra:
                return str(option.extra["error"])
            option = option.type
    return None


def _without_none(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """The type of an optional field (``X | None``), without its metadata."""
    while isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return _without_none(rest[0])
    return info


_AT = re.compile(r" - at `\$(?:\.([^`.\[]+))?([^`]*)`$")


def refused(
    declared: Declared, exc: msgspec.ValidationError, where: str = "", given: Mapping[str, Any] | None = None
) -> ApiError:
    """msgspec's complaint as a 400 that names the field and what to send (and, from ``given``, what was sent)."""
    text = str(exc)
    if text.startswith("Object contains unknown field"):
        unknown = text.split("`")[1]
        return ApiError(400, f"unknown field(s) {unknown[:40]!r}; send only {', '.join(declared.fields)}")
    match = _AT.search(text)
    field = match[1] if match else None
    text = text[: match.start()] if match else text
    if text.startswith("Object missing required field"):
        field = text.split("`")[1]
        return ApiError(400, declared.messages.get(field) or f"{where}{field} is required")
    if field is None:
        if text.startswith("Expected `object`"):
            return ApiError(400, "the body must be a JSON object")
        return ApiError(400, text)  # a check across fields (``__post_init__``) says it all
    if field in declared.messages:
        return ApiError(400, declared.messages[field])
    said = text.replace("`", "")
    if text.startswith("Invalid enum value") and field in declared.choices:
        said = f"must be one of {', '.join(map(str, declared.choices[field]))}"
    if given is not None and field in given:  # a query parameter is text: say the text, not "got str"
        said = said.split(", got")[0] + f", got {str(given[field])[:100]!r}"
    return ApiError(400, f"{where}{field}{match[2] if match else ''}: {said[:1].lower()}{said[1:]}")


_PATH_NAMES = {
    "team": (is_name, NAME_RULE),
    "project": (is_name, NAME_RULE),
    "run_id": (is_run_id, RUN_ID_RULE),
    "user": (is_user, USER_RULE),
}


def check_path(request: Request) -> None:
    """The path's team, project and run id as the document declares them: a name that cannot exist is 400, so a
    typo is not taken for something empty."""
    for what, value in request.path_params.items():
        if what in _PATH_NAMES and not _PATH_NAMES[what][0](value):
            raise ApiError(400, f"{what} {value[:200]!r} is not valid: {_PATH_NAMES[what][1]}", details={"field": what})


def decode_query(request: Request, declared: Declared) -> Any:
    """The query parameters as the declared type (numbers from their text, lists comma-joined, JSON as JSON).

    Parameters the endpoint does not declare are left to others (``?share=`` is a credential, read by
    ``api/auth.py``) or ignored, as HTTP clients expect (a cache-busting ``?_=...``).
    """
    given: dict[str, Any] = {}
    for name, raw in request.query_params.items():
        if name not in declared.fields:
            continue
        if name in declared.lists:
            given[name] = [part.strip() for part in raw.split(",") if part.strip()]
        elif name in declared.json:
            if raw.strip() in ("", "null"):  # sent, so it must say something
                raise ApiError(400, declared.messages.get(name) or f"query parameter {name} must be JSON text")
            try:
                given[name] = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError(
                    400, declared.messages.get(name) or f"query parameter {name} must be JSON text: {exc}"
                ) from None
        else:
            given[name] = raw
    try:
        query = msgspec.convert(given, declared.kind, strict=False)
    except msgspec.ValidationError as exc:
        raise refused(declared, exc, "query parameter ", given) from None
    for name, value in given.items():  # lax conversion reads the text "null" as None: a parameter is never null
        if value == "null" and getattr(query, name, "") is None:
            raise ApiError(400, declared.messages.get(name) or f"query parameter {name} is not null: leave it out")
    return query


async def decode_body(
    request: Request, declared: Declared, max_bytes: int = MAX_JSON_BYTES, empty_ok: bool = False
) -> Any:
    """The JSON body as the declared type (``{}`` for an empty body when ``empty_ok``: all defaults)."""
    raw = await read_body(request, max_bytes)
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        return msgspec.json.decode(raw, type=declared.kind)
    except msgspec.ValidationError as exc:
        raise refused(declared, exc) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's own limit on nesting: a client error, not the server's
        raise ApiError(400, "the body's JSON is nested too deeply") from None
