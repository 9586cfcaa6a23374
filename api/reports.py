"""Reports (markdown with chart panels) and their share links.

A share link is a signed, expiring token (``auth.sign_share``) naming the report's
``share_version``: it reads the report's project until it expires or the
report's links are revoked (the version bumped) or the report is deleted.
``GET /api/v1/shared/{token}`` opens one without any key; the token also works
as ``X-Runstream-Share`` (or ``?share=``) on the project's read endpoints.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import MAX_SHARE_SECONDS, Need, Principal, open_share, require_project, sign_share
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import ERROR_SCHEMA, NAME_SCHEMA, with_schemas
from runstream.api.requests import json_body
from runstream.api.responses import json_response
from runstream.storage import reports
from runstream.storage.accounts import check_name
from runstream.storage.errors import QueryError

API = "/api/v1"
REPORTS_PATH = f"{API}/projects/{{team}}/{{project}}/reports"
REPORT_PATH = f"{REPORTS_PATH}/{{report_id}}"
SHARE_PATH = f"{REPORT_PATH}/share"
SHARED_PATH = f"{API}/shared/{{token}}"
DEFAULT_SHARE_SECONDS = 7 * 24 * 3600
MAX_REPORT_JSON = 8 << 20  # a body of MAX_BODY characters (up to 6 bytes each as JSON text) plus panels
_FIELDS = ("title", "body", "panels")

# -- OpenAPI schemas, put into the docstrings below -----------------------------------------

_TITLE = {"type": "string", "minLength": 1, "maxLength": reports.MAX_TITLE, "pattern": "\\S"}
_BODY = {"type": "string", "maxLength": reports.MAX_BODY, "description": "markdown"}
_PANELS = {"type": "array", "maxItems": reports.MAX_PANELS, "items": {"type": "object"},
           "description": f"chart specs, at most {reports.MAX_PANELS_BYTES:,} bytes of JSON in all"}
_COMMON = {"id": {"type": "string"}, "team": {"type": "string"}, "project": {"type": "string"},
           "title": {"type": "string"}, "created_by": {"type": "string"}, "created_at": {"type": "number"},
           "updated_at": {"type": "number"}, "share_version": {"type": "integer"}}
_REPORT = {"type": "object", "required": [*_COMMON, "body", "panels"],
           "properties": {**_COMMON, "body": {"type": "string"}, "panels": {"type": "array", "items": {"type": "object"}}}}
_SUMMARY = {"type": "object", "required": [*_COMMON, "panel_count"],
            "properties": {**_COMMON, "panel_count": {"type": "integer"}}}
# Team and project names as the event contract has them (storage.accounts.check_name).
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,4096}\.[A-Za-z0-9_\-]{1,100}\Z")
SCHEMAS: dict[str, Any] = {
    "ERROR": ERROR_SCHEMA,
    "TEAM": {"name": "team", "in": "path", "required": True, "schema": NAME_SCHEMA},
    "PROJECT": {"name": "project", "in": "path", "required": True, "schema": NAME_SCHEMA},
    "REPORT": _REPORT,
    "REPORT_LIST": {"type": "object", "required": ["reports"],
                    "properties": {"reports": {"type": "array", "items": _SUMMARY}}},
    "NEW_REPORT": {"type": "object", "required": ["title"], "additionalProperties": False,
                   "properties": {"title": _TITLE, "body": _BODY, "panels": _PANELS}},
    "REPORT_CHANGES": {"type": "object", "additionalProperties": False,
                       "properties": {"title": _TITLE, "body": _BODY, "panels": _PANELS}},
    "NEW_SHARE": {"type": "object", "additionalProperties": False, "properties": {"expires_in_s": {
        "type": "integer", "minimum": 1, "maximum": MAX_SHARE_SECONDS, "default": DEFAULT_SHARE_SECONDS}}},
    "SHARE": {"type": "object", "required": ["token", "url", "expires_at"], "properties": {
        "token": {"type": "string"}, "url": {"type": "string"}, "expires_at": {"type": "number"}}},
    "SHARED": {"type": "object", "required": ["report", "project", "expires_at"], "properties": {
        "report": _REPORT, "expires_at": {"type": "number"},
        "project": {"type": "object", "required": ["team", "name"],
                    "properties": {"team": {"type": "string"}, "name": {"type": "string"}}}}},
}


doc = with_schemas(SCHEMAS)


# -- helpers ------------------------------------------------------------------------------


async def authorize(request: Request, need: Need) -> tuple[str, str, Principal]:
    """The path's team and project once the caller may ``need`` them (401/403/404 first, like every endpoint);
    then a name that no project can have is 400, so a typo is not mistaken for an empty project."""
    team, project = request.path_params["team"], request.path_params["project"]
    principal = await require_project(request, team, project, need)
    check_name("team", team)
    check_name("project", project)
    return team, project, principal


def _author(principal: Principal) -> str:
    return principal.user or principal.describe()


async def _fields(request: Request, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The body's report fields; 422 for an unknown, missing or null one."""
    body = await json_body(request, MAX_REPORT_JSON)
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ApiError(422, f"unknown report fields {unknown}; a report has {', '.join(_FIELDS)}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:  # storage reads None as "the default": null is a mistake here, not "no panels"
        raise ApiError(422, f"{', '.join(nulls)} cannot be null; leave a field out to keep it as it is")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(422, f"a report needs {', '.join(missing)}")
    return body


def _invalid(exc: QueryError) -> ApiError:
    """A field that does not fit is the body's fault: 422 with the storage layer's message."""
    return ApiError(422, exc.message, details=exc.details or None)


async def _report(request: Request, team: str, project: str, report_id: str) -> dict[str, Any]:
    found = await backend_of(request).run(reports.get_report, team, project, report_id)
    if found is None:
        raise not_found(f"report {report_id} in {team}/{project}")
    return found


# -- reports ------------------------------------------------------------------------------


@doc
async def list_reports(request: Request) -> Response:
    """A project's reports, most recently updated first (without bodies and panels).

    ---
    summary: List reports
    tags: [reports]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the reports, content: {application/json: {schema: $REPORT_LIST}}}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "read")
    return json_response({"reports": await backend_of(request).run(reports.list_reports, team, project)})


@doc
async def create_report(request: Request) -> Response:
    """Create a report: markdown ``body`` and chart ``panels``.

    ---
    summary: Create a report
    tags: [reports]
    requestBody:
      required: true
      content: {application/json: {schema: $NEW_REPORT}}
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      201: {description: the new report, content: {application/json: {schema: $REPORT}}}
      400: {description: "not a JSON object, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: the project is not visible, content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      422: {description: a field does not fit; the message says which, content: {application/json: {schema: $ERROR}}}
    """
    team, project, principal = await authorize(request, "write")
    body = await _fields(request, required=("title",))
    try:
        report = await backend_of(request).run(reports.create_report, team, project, body["title"], body.get("body", ""),
                                             body.get("panels", []), _author(principal))
    except QueryError as exc:
        raise _invalid(exc) from None
    return json_response(report, status_code=201)


@doc
async def get_report(request: Request) -> Response:
    """One report.

    ---
    summary: Get a report
    tags: [reports]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the report, content: {application/json: {schema: $REPORT}}}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: a key or share link that does not work, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such report, or not visible", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "read")
    return json_response(await _report(request, team, project, request.path_params["report_id"]))


@doc
async def patch_report(request: Request) -> Response:
    """Change a report's title, body or panels (the fields sent).

    ---
    summary: Update a report
    tags: [reports]
    requestBody:
      required: true
      content: {application/json: {schema: $REPORT_CHANGES}}
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the updated report, content: {application/json: {schema: $REPORT}}}
      400: {description: "not a JSON object, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such report, or not visible", content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      422: {description: a field does not fit; the message says which, content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    changes = await _fields(request)
    try:
        report = await backend_of(request).run(reports.update_report, team, project, request.path_params["report_id"],
                                             changes)
    except QueryError as exc:
        raise _invalid(exc) from None
    if report is None:
        raise not_found(f"report {request.path_params['report_id']} in {team}/{project}")
    return json_response(report)


@doc
async def delete_report(request: Request) -> Response:
    """Delete a report; its share links stop working.

    ---
    summary: Delete a report
    tags: [reports]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      204: {description: deleted}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such report, or not visible", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    report_id = request.path_params["report_id"]
    if not await backend_of(request).run(reports.delete_report, team, project, report_id):
        raise not_found(f"report {report_id} in {team}/{project}")
    return Response(status_code=204)


# -- share links ----------------------------------------------------------------------------


@doc
async def create_share(request: Request) -> Response:
    """A read-only link to the report and its project's data, valid for ``expires_in_s`` (default 7 days).

    ---
    summary: Create a share link
    tags: [reports]
    requestBody:
      required: false
      content: {application/json: {schema: $NEW_SHARE}}
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      201: {description: "the token, the web UI's path for it, and when it expires", content: {application/json: {schema: $SHARE}}}
      400: {description: "not a JSON object, or a team or project name that cannot exist", content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such report, or not visible", content: {application/json: {schema: $ERROR}}}
      413: {description: the body is too large, content: {application/json: {schema: $ERROR}}}
      422: {description: expires_in_s is not a whole number of seconds in range, content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    body = await json_body(request, 4096, empty_ok=True)
    unknown = sorted(set(body) - {"expires_in_s"})
    if unknown:
        raise ApiError(422, f"unknown share link fields {unknown}; send only expires_in_s")
    seconds = body.get("expires_in_s", DEFAULT_SHARE_SECONDS)
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= MAX_SHARE_SECONDS:
        raise ApiError(422, f"expires_in_s must be a whole number of seconds from 1 to {MAX_SHARE_SECONDS:,} "
                            f"(a year), got {seconds!r}")
    report_id = request.path_params["report_id"]
    report = await _report(request, team, project, report_id)
    expires_at = int(time.time()) + seconds
    token = sign_share((await backend_of(request).share_secrets())[0], team, project, report_id, report["share_version"],
                       expires_at)
    return json_response({"token": token, "url": f"/share/{token}", "expires_at": expires_at}, status_code=201)


@doc
async def revoke_shares(request: Request) -> Response:
    """Revoke every share link of the report made so far (new ones can be made after).

    ---
    summary: Revoke share links
    tags: [reports]
    parameters:
      - $TEAM
      - $PROJECT
    responses:
      200: {description: the report with its new share_version, content: {application/json: {schema: $REPORT}}}
      400: {description: a team or project name that cannot exist, content: {application/json: {schema: $ERROR}}}
      401: {description: "no key, or one that does not work", content: {application/json: {schema: $ERROR}}}
      403: {description: the key may not write here, content: {application/json: {schema: $ERROR}}}
      404: {description: "no such report, or not visible", content: {application/json: {schema: $ERROR}}}
    """
    team, project, _ = await authorize(request, "write")
    report_id = request.path_params["report_id"]
    report = await backend_of(request).run(reports.revoke_shares, team, project, report_id)
    if report is None:
        raise not_found(f"report {report_id} in {team}/{project}")
    return json_response(report)


@doc
async def open_shared(request: Request) -> Response:
    """The report a share link points to; the token is the credential, no key needed.

    ---
    summary: Open a share link
    tags: [reports]
    security: []
    parameters:
      - {name: token, in: path, required: true, schema: {type: string, pattern: "^[A-Za-z0-9_-]+[.][A-Za-z0-9_-]+$"}}
    responses:
      200: {description: the report and its project, content: {application/json: {schema: $SHARED}}}
      401: {description: "the link is not valid, has expired, or was revoked; ask for a new one", content: {application/json: {schema: $ERROR}}}
    """
    backend = backend_of(request)
    token = request.path_params["token"]
    if not _TOKEN.match(token):  # not one of ours: no need to check a signature
        raise ApiError(401, "this share link is not valid; ask for a new one", code="invalid_share_link")
    share, version = await open_share(backend, token)
    report = await backend.run(reports.get_report, share.team, share.project, share.report_id)
    if report is None or report["share_version"] != version:
        raise ApiError(401, "this share link was revoked; ask for a new one", code="share_link_revoked")
    return json_response({"report": report, "project": {"team": share.team, "name": share.project},
                          "expires_at": share.expires_at})


routes = [
    Route(REPORTS_PATH, list_reports, methods=["GET"]),
    Route(REPORTS_PATH, create_report, methods=["POST"]),
    Route(REPORT_PATH, get_report, methods=["GET"]),
    Route(REPORT_PATH, patch_report, methods=["PATCH"]),
    Route(REPORT_PATH, delete_report, methods=["DELETE"]),
    Route(SHARE_PATH, create_share, methods=["POST"]),
    Route(SHARE_PATH, revoke_shares, methods=["DELETE"]),
    Route(SHARED_PATH, open_shared, methods=["GET"]),
]
