"""Reading runs: search, count, group and the key catalog of a project; one run, its edits, and its logs.

A RUN, as every endpoint here answers it (docs/api.md, "Read"), is storage's run
with ``id`` for ``run_id`` and its ``team`` and ``project``; times are Unix
seconds, as everywhere in the API (``runstream.Api`` shows them as ISO 8601 text,
as wandb's client does). Config and summary values that are not finite are the
event contract's strings ("NaN", "Infinity", "-Infinity"), so nothing a run set
turns into ``null`` on the way.

Sub-resources of a run (its logs here, its history in ``api.series``) answer 404
for a run that does not exist, not an empty list, so a typo is not mistaken for
a run that logged nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from clickhouse_connect.driver.client import Client
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import read_project, require_project
from runstream.api.backend import Backend
from runstream.api.errors import ApiError, not_found
from runstream.api.ingest import publish_edit
from runstream.api.openapi import ERROR_SCHEMA, with_schemas
from runstream.api.requests import json_body, query_int, query_json, query_list
from runstream.api.responses import json_response
from runstream.events import MAX_NAME_LEN, RUN_EDIT_FIELDS, encode_value
from runstream.storage import history, logs, runs
from runstream.storage.writer import load_run_states
from runstream.streams.processor import last_seq
from runstream.streams.runstate import merge_config

F = TypeVar("F", bound=Callable[..., Any])
API = "/api/v1"
PROJECT_PATH = API + "/projects/{team}/{project}"
RUN_PATH = API + "/runs/{team}/{project}/{run_id}"
DEFAULT_PAGE = 50

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


# -- converting storage's answers --------------------------------------------------------------


def contract_numbers(value: Any) -> Any:
    """Non-finite floats anywhere in a nested value as the contract's strings (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else encode_value(value)
    if isinstance(value, dict):
        return {k: contract_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [contract_numbers(v) for v in value]
    return value


def public_run(team: str, project: str, run: dict[str, Any]) -> dict[str, Any]:
    """Storage's run as the API's RUN."""
    out: dict[str, Any] = {"team": team, "project": project, "id": run["run_id"]}
    for key, value in run.items():
        if key == "run_id":
            continue
        if key in ("config", "summary"):
            value = contract_numbers(value)
        out[key] = value
    return out


def run_exists(client: Client, team: str, project: str, run_id: str) -> bool:
    return runs.count_runs(client, team, project, {"run_id": run_id}) > 0


def project_path(request: Request) -> tuple[str, str]:
    """The (team, project) a project endpoint's path names."""
    return request.path_params["team"], request.path_params["project"]


def run_path(request: Request) -> tuple[str, str, str]:
    """The (team, project, run_id) a run endpoint's path names."""
    p = request.path_params
    return p["team"], p["project"], p["run_id"]


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


# -- project endpoints ---------------------------------------------------------------------------


@documented()
async def list_runs(request: Request) -> Response:
    """A page of the project's runs matching a filter, in an order.

    ---
    summary: Search runs
    tags: [runs]
    parameters:
      - {name: filters, in: query, required: false, content: {application/json: {schema: $FILTERS}}}
      - {name: order, in: query, required: false, schema: {type: string, default: "-created_at"},
         description: "a run column, config.<key> or summary.<key>; - first for descending"}
      - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
      - {name: cursor, in: query, required: false, schema: {type: string}, description: next_cursor of the previous page}
      - {name: fields, in: query, required: false, schema: {type: string},
         description: "comma-separated run fields to answer besides team, project and id (absent: all; empty:
           none); a chart legend needs name only, and leaving out config and summary makes a page several times
           cheaper"}
    responses:
      200: {description: "a page; next_cursor is null on the last", content: {application/json: {schema: $RUNS}}}
      400: {description: "a bad filter, order, limit, cursor or field", content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    fields = query_list(request, "fields")
    if fields is not None:
        fields = [f.strip() for f in fields if f.strip()]  # "name, state" too

    async def search() -> Callable[[Client], dict[str, Any]]:
        if fields is not None and (unknown := sorted(set(fields) - set(RUN_FIELDS) - {"team", "project", "id"})):
            raise ApiError(400, f"unknown run fields {', '.join(unknown)[:200]}; fields are some of "
                                f"{', '.join(RUN_FIELDS)}")
        filters = query_filters(request)
        order = request.query_params.get("order") or "-created_at"
        limit = query_int(request, "limit", DEFAULT_PAGE, 1, runs.MAX_LIMIT)
        cursor = request.query_params.get("cursor") or None
        maps = runs.MAPS if fields is None else [m for m in runs.MAPS if m in fields]
        return lambda client: runs.search_runs(client, team, project, filters, order, limit, cursor, maps)

    page = await read_project(request, team, project, search)
    found = [public_run(team, project, r) for r in page["runs"]]
    if fields is not None:
        kept = {"team", "project", "id", *fields}
        found = [{k: v for k, v in run.items() if k in kept} for run in found]
    return json_response({"runs": found, "next_cursor": page["next_cursor"]})


@documented()
async def count_runs(request: Request) -> Response:
    """How many of the project's runs match a filter.

    ---
    summary: Count runs
    tags: [runs]
    parameters:
      - {name: filters, in: query, required: false, content: {application/json: {schema: $FILTERS}}}
    responses:
      200:
        description: the count
        content: {application/json: {schema: {type: object, required: [count], properties: {count: {type: integer}}}}}
      400: {description: a bad filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    await require_project(request, team, project, "read")
    count = await request.app.state.backend.run(runs.count_runs, team, project, query_filters(request))
    return json_response({"count": count})


_GROUP_BODY = {
    "type": "object", "required": ["by"], "additionalProperties": False,
    "properties": {
        "by": {"type": "array", "minItems": 1, "maxItems": runs.MAX_GROUP_KEYS, "items": {"type": "string", "minLength": 1}},
        "filters": nullable(SCHEMAS["FILTERS"]),
        "aggregates": nullable({"type": "array", "maxItems": runs.MAX_AGGREGATES,
                                "items": {"type": "string", "minLength": 1}}),
        "run_ids": nullable({"type": "boolean", "description": "add each group's run ids"}),
    },
}


@documented(BODY=_GROUP_BODY)
async def group_runs(request: Request) -> Response:
    """Matching runs grouped by fields, with each group's count and summary statistics.

    ``by`` names text columns (group, job_type, state, ...), ``tags`` or
    ``config.<key>``/``summary.<key>``; ``aggregates`` names summary (or config)
    keys, each giving mean, min, max and count over the group's numeric values.

    ---
    summary: Group runs
    tags: [runs]
    requestBody: {required: true, content: {application/json: {schema: $BODY}}}
    responses:
      200: {description: "the groups, ordered by their values", content: {application/json: {schema: $GROUPS}}}
      400: {description: bad fields or filter, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    await require_project(request, team, project, "read")
    body = await json_body(request)
    check_fields(body, ("by", "filters", "aggregates", "run_ids"))
    by = names_field(body, "by", required=True)
    filters = body_field(body, "filters", dict, "a filter object")
    aggregates = [] if body.get("aggregates") == [] else names_field(body, "aggregates") or []
    with_ids = body_field(body, "run_ids", bool, "true or false", False)
    groups = await request.app.state.backend.run(runs.group_runs, team, project, by, filters, aggregates,
                                                 run_ids=with_ids)
    # Group values and statistics are values runs set: non-finite ones as the contract's strings.
    return json_response({"groups": [contract_numbers(g) for g in groups]})


@documented()
async def key_catalog(request: Request) -> Response:
    """The config, summary, metric and system keys the project has seen, with their JSON types.

    ---
    summary: Key catalog
    tags: [runs]
    responses:
      200: {description: "keys by kind: config, summary, metric, system", content: {application/json: {schema: $CATALOG}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible with this key, content: {application/json: {schema: $ERROR}}}
    """
    team, project = project_path(request)
    await require_project(request, team, project, "read")
    return json_response(await request.app.state.backend.run(runs.key_catalog, team, project))


# -- one run -------------------------------------------------------------------------------------


@documented()
async def get_run(request: Request) -> Response:
    """One run.

    ---
    summary: Get a run
    tags: [runs]
    responses:
      200: {description: the run, content: {application/json: {schema: $RUN}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "read")
    run = await request.app.state.backend.run(runs.get_run, team, project, run_id)
    if run is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    return json_response(public_run(team, project, run))


_EDIT_BODY = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN},
                   "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN}},
                   "notes": {"type": "string", "nullable": True},
                   "config": {"type": "object", "description": "keys merged into the config, nested objects "
                              "merged key by key (as run.config.update)"},
                   "summary": {"type": "object", "description": "keys set as explicit summary values, which win "
                               "over the ones computed from metrics"}},
}


@documented(BODY=_EDIT_BODY)
async def edit_run(request: Request) -> Response:
    """Edit a run's name, tags, notes, config and summary; answers the updated run.

    The edit travels through the pipeline like the SDK's events, so every
    replica and the run's later events see it; a later edit wins, and so does,
    field by field, a later value the run's SDK sends (a tag list, a config or
    summary key, its name).

    ---
    summary: Edit a run
    tags: [runs]
    requestBody: {required: true, content: {application/json: {schema: $BODY}}}
    responses:
      200: {description: the run with the edit, content: {application/json: {schema: $RUN}}}
      400: {description: a bad edit, content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or a key that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      503: {description: the edit could not be stored; retry, content: {application/json: {schema: $ERROR}}}
    """
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "write")
    body = await json_body(request, max_bytes=1 << 20)
    check_fields(body, RUN_EDIT_FIELDS)
    changes: dict[str, Any] = {}
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
            raise ApiError(400, f"name must be a non-empty string of at most {MAX_NAME_LEN} characters")
        changes["name"] = name
    for field in ("config", "summary"):
        if field in body:
            if not isinstance(body[field], dict):
                raise ApiError(400, f"{field} must be an object of the keys to set, e.g. {{\"lr\": 0.01}}")
            changes[field] = body[field]
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            raise ApiError(400, "tags must be a list of non-empty strings")
        changes["tags"] = list(dict.fromkeys(tags))
    if "notes" in body:
        notes = body["notes"]
        if notes is not None and not isinstance(notes, str):
            raise ApiError(400, "notes must be a string")
        changes["notes"] = notes or ""  # cleared notes are "", as the runs table keeps them
    if not changes:
        raise ApiError(400, f"send some of {', '.join(RUN_EDIT_FIELDS)} to set, e.g. {{\"tags\": [\"baseline\"]}}")
    backend: Backend = request.app.state.backend
    if await backend.run(runs.get_run, team, project, run_id) is None:
        raise not_found(f"run {team}/{project}/{run_id}")  # the pipeline would drop an edit of an unknown run
    await publish_edit(request, team, project, run_id, changes)
    run = await backend.run(runs.get_run, team, project, run_id)
    if run is None:
        raise not_found(f"run {team}/{project}/{run_id}")
    if not backend.sink.applied_on_send:  # cluster mode: a worker applies the edit shortly; answer what it will store
        run.update({k: v for k, v in changes.items() if k not in ("config", "summary")})
        run["config"] = merge_config(run["config"], changes.get("config", {}))
        run["summary"] = {**run["summary"], **changes.get("summary", {})}
    return json_response(public_run(team, project, run))


# -- a run's logs ----------------------------------------------------------------------------------


async def _read_run(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(client, team, project, run_id, *args)`` after the access check; 404 when the run does not exist."""
    team, project, run_id = run_path(request)
    await require_project(request, team, project, "read")

    def read(client: Client) -> tuple[bool, Any]:
        if not run_exists(client, team, project, run_id):
            return False, None
        return True, fn(client, team, project, run_id, *args)

    found, result = await request.app.state.backend.run(read)
    if not found:
        raise not_found(f"run {team}/{project}/{run_id}")
    return result


@documented()
async def run_metrics(request: Request) -> Response:
    """The names of the metrics a run logged, sorted.

    ---
    summary: A run's metric names
    tags: [runs]
    responses:
      200:
        description: the names
        content: {application/json: {schema: {type: object, required: [metrics], properties: {metrics: $NAMES}}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    return json_response({"metrics": await _read_run(request, history.run_metrics)})


@documented()
async def run_statistics(request: Request) -> Response:
    """What a run resumed elsewhere needs to go on: its last step and sequence number, and each
    metric's statistics.

    ``count`` is the number of finite values, which ``min``, ``max`` and ``mean``
    are over (null without any); ``last`` is the value logged at the metric's
    last step (non-finite ones as the contract's strings).

    ---
    summary: A run's metric statistics
    tags: [runs]
    responses:
      200: {description: "the largest step any metric logged (null when none), and per metric its statistics",
            content: {application/json: {schema: $STATISTICS}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    return json_response(contract_numbers(await _read_run(request, _statistics)))


def _statistics(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
    stats = history.run_statistics(client, team, project, run_id)
    state = load_run_states(client, [(team, project, run_id)]).get((team, project, run_id))
    stats["last_seq"] = last_seq(orjson.loads(state)) if state else None
    return stats


@documented()
async def run_system(request: Request) -> Response:
    """A run's system metrics (CPU, memory, GPU, ...) in time buckets: mean, min and max of each.

    ---
    summary: A run's system metrics
    tags: [runs]
    parameters:
      - {name: names, in: query, required: false, schema: {type: string}, description: "comma-joined metric names (all when omitted)"}
      - {name: points, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 10000, default: 500}}
    responses:
      200: {description: "one series per metric; time in Unix seconds, null where a bucket has no finite value", content: {application/json: {schema: $SYSTEM}}}
      400: {description: bad arguments, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    names = query_list(request, "names")
    points = query_int(request, "points", 500, 1, logs.MAX_POINTS)

    def system(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
        return logs.system_series(client, team, project, [run_id], names, max_points=points)

    result = await _read_run(request, system)
    return json_response({"series": [{k: v for k, v in s.items() if k != "run_id"} for s in result["runs"]]})


@documented()
async def run_console(request: Request) -> Response:
    """A run's console output: the last ``tail`` lines, or with ``q`` the last lines that contain it (or match it).

    Lines come oldest first; ``next_cursor`` pages to older lines.

    ---
    summary: A run's console output
    tags: [runs]
    parameters:
      - {name: tail, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 10000, default: 1000}}
      - {name: q, in: query, required: false, schema: {type: string, minLength: 1, maxLength: 1000},
         description: "text to find, ignoring case (a RE2 pattern with regex=1)"}
      - {name: regex, in: query, required: false, schema: {type: string, enum: ["0", "1"], default: "0"}}
      - {name: cursor, in: query, required: false, schema: {type: string}, description: next_cursor of the previous answer}
    responses:
      200: {description: the lines, content: {application/json: {schema: $CONSOLE}}}
      400: {description: bad arguments or a bad pattern, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    tail = query_int(request, "tail", 1000, 1, logs.MAX_LINES)
    q = request.query_params.get("q")
    regex = request.query_params.get("regex", "0")
    if regex not in ("0", "1"):
        raise ApiError(400, f"regex must be 0 or 1, got {regex[:20]!r}")
    cursor = request.query_params.get("cursor") or None

    def console(client: Client, team: str, project: str, run_id: str) -> dict[str, Any]:
        if q is None:
            return logs.console_tail(client, team, project, run_id, limit=tail, before=cursor)
        return logs.console_search(client, team, project, run_id, q, regex=regex == "1", limit=tail, before=cursor)

    result = await _read_run(request, console)
    return json_response({"lines": result["lines"], "next_cursor": result["next_before"]})


def _with_urls(team: str, project: str, run_id: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each file with the URL its blob downloads from (``GET /api/v1/files/...``)."""
    base = f"{API}/files/{quote(team, safe='')}/{quote(project, safe='')}/{quote(run_id, safe='')}/"
    return [{**f, "url": base + quote(f["store_key"])} for f in files]


@documented()
async def run_files(request: Request) -> Response:
    """A run's files (the current entry per path, sorted by path), each with the URL of its blob.

    ---
    summary: A run's files
    tags: [runs]
    parameters:
      - {name: kind, in: query, required: false, schema: {type: string, enum: [file, media, code, git_patch, requirements]}}
      - {name: prefix, in: query, required: false, schema: {type: string}}
    responses:
      200: {description: the files, content: {application/json: {schema: $FILES}}}
      400: {description: an unknown kind, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    kind = request.query_params.get("kind")  # present but empty is an unknown kind
    prefix = request.query_params.get("prefix") or None
    files = await _read_run(request, logs.run_files, kind, prefix)
    return json_response({"files": _with_urls(*run_path(request), files)})


@documented()
async def run_media(request: Request) -> Response:
    """The media a run logged under one key, by step: what a media panel's step slider walks.

    ---
    summary: A run's media under a key
    tags: [runs]
    parameters:
      - {name: key, in: query, required: true, schema: {type: string, minLength: 1}}
    responses:
      200: {description: the media files by step, content: {application/json: {schema: $MEDIA}}}
      400: {description: no key given, content: {application/json: {schema: $ERROR}}}
      401: {description: a credential that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such run, or not visible with this key", content: {application/json: {schema: $ERROR}}}
    """
    key = request.query_params.get("key")
    if not key:
        raise ApiError(400, "name the media key: ?key=<the key passed to run.log>")
    media = await _read_run(request, logs.media_steps, key)
    return json_response({"key": key, "media": _with_urls(*run_path(request), media)})


routes = [
    Route(PROJECT_PATH + "/runs", list_runs, methods=["GET"]),
    Route(PROJECT_PATH + "/runs/count", count_runs, methods=["GET"]),
    Route(PROJECT_PATH + "/runs/groups", group_runs, methods=["POST"]),
    Route(PROJECT_PATH + "/keys", key_catalog, methods=["GET"]),
    Route(RUN_PATH, get_run, methods=["GET"]),
    Route(RUN_PATH, edit_run, methods=["PATCH"]),
    Route(RUN_PATH + "/metrics", run_metrics, methods=["GET"]),
    Route(RUN_PATH + "/statistics", run_statistics, methods=["GET"]),
    Route(RUN_PATH + "/system", run_system, methods=["GET"]),
    Route(RUN_PATH + "/console", run_console, methods=["GET"]),
    Route(RUN_PATH + "/files", run_files, methods=["GET"]),
    Route(RUN_PATH + "/media", run_media, methods=["GET"]),
]
