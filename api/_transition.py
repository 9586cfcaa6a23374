"""TRANSITION: the undeclared toolbox series.py used from runs.py; deleted once series.py declares its types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from starlette.requests import Request

from runstream.api.errors import ApiError
from runstream.api.openapi import ERROR_SCHEMA, with_schemas
from runstream.api.requests import query_json
from runstream.storage import runs

F = TypeVar("F", bound=Callable[..., Any])


def run_exists(client: Client, team: str, project: str, run_id: str) -> bool:
    return runs.count_runs(client, team, project, {"run_id": run_id}) > 0


# -- OpenAPI schemas, put into the endpoints' docstrings by ``documented`` ---------------------

_STR = {"type": "string"}
_OPT_STR = {"type": "string", "nullable": True}
_TIME = {"type": "number", "description": "Unix seconds"}
_NAMES = {"type": "array", "items": _STR}
SCHEMAS: dict[str, Any] = {
    "ERROR": ERROR_SCHEMA,
    "RUN": {
        "type": "object",
        "required": ["team", "project", "id", "name", "state", "config", "summary", "tags", "created_at"],
        "properties": {
            "team": _STR, "project": _STR, "id": _STR, "name": _STR, "state": _STR,
            "config": {"type": "object"}, "summary": {"type": "object"}, "tags": _NAMES,
            "group": _OPT_STR, "job_type": _OPT_STR, "notes": _STR,
            "created_at": _TIME, "updated_at": _TIME, "heartbeat_at": _TIME,
            "finished_at": {**_TIME, "nullable": True}, "exit_code": {"type": "integer", "nullable": True},
            "user": _STR, "host": _STR, "program": _STR, "args": _NAMES, "python": _STR, "git": {"type": "object"},
            "error": {**_OPT_STR, "description": "a failed run's traceback, until it resumes"},
            "metrics": {"type": "array", "description": "define_metric specs, oldest first: for each attribute the "
                        "last spec whose glob matches a metric and sets it wins", "items": {
                "type": "object", "required": ["name", "step_metric", "goal", "summary"],
                "properties": {"name": _STR, "step_metric": _OPT_STR, "goal": _OPT_STR, "summary": _OPT_STR}}},
        },
    },
    "FILTERS": {"type": "object", "description": "wandb-style filter document, e.g. {\"config.lr\": {\"$gt\": 0.01}}"},
    "VALUES": {"type": "array", "items": {}, "description": "numbers, null (not logged), or \"NaN\"/\"Infinity\"/\"-Infinity\""},
    "NAMES": _NAMES,
}
#: A run as a search with ``fields`` answers it: the fields asked for, besides its identity.
SCHEMAS["RUN_FIELDS"] = {**SCHEMAS["RUN"], "required": ["team", "project", "id"],
                         "description": "every field of a RUN, unless the request's fields= picks some"}
SCHEMAS["RUNS"] = {"type": "object", "required": ["runs", "next_cursor"],
                   "properties": {"runs": {"type": "array", "items": SCHEMAS["RUN_FIELDS"]}, "next_cursor": _OPT_STR}}
RUN_FIELDS = tuple(p for p in SCHEMAS["RUN"]["properties"] if p not in ("team", "project", "id"))
SCHEMAS["COLUMNS"] = {"type": "object", "required": ["_step"], "additionalProperties": SCHEMAS["VALUES"]}
_GROUP = {
    "type": "object", "required": ["group", "count", "summary"],
    "properties": {"group": {"type": "object"}, "count": {"type": "integer"},
                   "summary": {"type": "object", "additionalProperties": {"type": "object"}}, "run_ids": _NAMES},
}
SCHEMAS["GROUPS"] = {"type": "object", "required": ["groups"], "properties": {"groups": {"type": "array", "items": _GROUP}}}
SCHEMAS["CATALOG"] = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {
        "type": "object", "required": ["key", "types"], "properties": {"key": _STR, "types": _NAMES}}},
}
_FILE = {"type": "object", "required": ["path", "kind", "size", "sha256", "url"],
         "properties": {"path": _STR, "kind": _STR, "media_type": _OPT_STR, "step": {"type": "integer", "nullable": True},
                        "size": {"type": "integer"}, "sha256": _STR, "store_key": _STR, "meta": {"type": "object"},
                        "time": {"type": "number"}, "url": _STR}}
SCHEMAS["FILES"] = {"type": "object", "required": ["files"], "properties": {"files": {"type": "array", "items": _FILE}}}
SCHEMAS["MEDIA"] = {"type": "object", "required": ["key", "media"],
                    "properties": {"key": _STR, "media": {"type": "array", "items": _FILE}}}
_NUMBERS = {"type": "array", "items": {"type": "number", "nullable": True}}
SCHEMAS["SYSTEM"] = {"type": "object", "required": ["series"], "properties": {"series": {"type": "array", "items": {
    "type": "object", "required": ["metric", "bucket_seconds", "time", "mean", "min", "max"],
    "properties": {"metric": _STR, "bucket_seconds": {"type": "number"}, "time": _NUMBERS, "mean": _NUMBERS,
                   "min": _NUMBERS, "max": _NUMBERS}}}}}
_OPT_NUMBER = {"type": "number", "nullable": True}
SCHEMAS["STATISTICS"] = {"type": "object", "required": ["last_step", "last_seq", "metrics"], "properties": {
    "last_step": {"type": "integer", "nullable": True},
    "last_seq": {"type": "integer", "nullable": True, "description": "the largest event seq of the run folded so far"},
    "metrics": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["count", "min", "max", "mean", "last", "first_step", "last_step"],
        "properties": {"count": {"type": "integer"}, "min": _OPT_NUMBER, "max": _OPT_NUMBER, "mean": _OPT_NUMBER,
                       "last": {"nullable": True, "description": "a number, or \"NaN\"/\"Infinity\"/\"-Infinity\""},
                       "first_step": {"type": "integer"}, "last_step": {"type": "integer"}}}}}}
SCHEMAS["CONSOLE"] = {"type": "object", "required": ["lines", "next_cursor"], "properties": {
    "lines": {"type": "array", "items": {"type": "object", "required": ["time", "stream", "line"],
                                         "properties": {"time": {"type": "number"}, "stream": _STR, "line": _STR}}},
    "next_cursor": _OPT_STR}}


def documented(**extra: Any) -> Callable[[F], F]:
    """Put this module's schemas (and ``extra``) into an endpoint's OpenAPI YAML."""
    return with_schemas({**SCHEMAS, **extra})


def query_filters(request: Request) -> dict[str, Any] | None:
    """The ``filters`` query parameter: None when absent, else it must be a JSON object."""
    if "filters" not in request.query_params:
        return None
    filters = query_json(request, "filters")
    if not isinstance(filters, dict):
        raise ApiError(400, "filters must be a JSON object, e.g. filters={\"state\": \"finished\"}")
    return filters


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional body field's schema: null is sent for "not given" too."""
    return {**schema, "nullable": True}


def body_field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    """A field of a JSON body, of the given type (bools are not integers), or ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ApiError(400, f"{name} must be {what}")
    return value


def check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise ApiError(400, f"unknown field(s) {shown}; send only {', '.join(allowed)}")


def names_field(body: dict[str, Any], name: str, required: bool = False) -> list[str] | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ApiError(400, f"{name} must be a non-empty list of names")
    return value


