"""Reports (markdown with chart panels) and their share links.

A share link is a signed, expiring token (``auth.sign_share``) naming the report's
``share_version``: it reads the report's project until it expires or the
report's links are revoked (the version bumped) or the report is deleted.
``GET /api/v1/shared/{token}`` opens one without any key; the token also works
as ``X-Runstream-Share`` (or ``?share=``) on the project's read endpoints.
"""

from __future__ import annotations

import math
import re
import time
from typing import Annotated, Any, TypedDict

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import audit
from runstream.api.auth import MAX_SHARE_SECONDS, PROJECT_READ, PROJECT_WRITE, Principal, open_share, sign_share
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import API, PROJECT_PATH, project_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.storage import reports
from runstream.storage.errors import QueryError

REPORTS_PATH = f"{PROJECT_PATH}/reports"
REPORT_PATH = f"{REPORTS_PATH}/{{report_id}}"
SHARE_PATH = f"{REPORT_PATH}/share"
SHARED_PATH = f"{API}/shared/{{token}}"
DEFAULT_SHARE_SECONDS = 7 * 24 * 3600
MAX_REPORT_JSON = 8 << 20  # a body of MAX_BODY characters (up to 6 bytes each as JSON text) plus panels
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{1,4096}\.[A-Za-z0-9_\-]{1,100}\Z")

# -- what a request sends -----------------------------------------------------------------------

Title = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=reports.MAX_TITLE,
        pattern=r"\S",
        extra={"error": f"title must be a non-empty string of at most {reports.MAX_TITLE} characters"},
    ),
]
Markdown = Annotated[
    str,
    Meta(
        max_length=reports.MAX_BODY,
        description="markdown",
        extra={"error": f"body must be a markdown string of at most {reports.MAX_BODY:,} characters"},
    ),
]
Panels = Annotated[
    list[dict[str, Any]],
    Meta(
        max_length=reports.MAX_PANELS,
        description=f"chart specs, at most {reports.MAX_PANELS_BYTES:,} bytes of JSON in all",
        extra={"error": f"panels must be a JSON array of at most {reports.MAX_PANELS} chart specs (objects)"},
    ),
]


class NewReport(msgspec.Struct, forbid_unknown_fields=True):
    title: Title
    body: Markdown = ""
    panels: Panels = []


class ReportEdit(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are."""

    title: Title | UnsetType = UNSET
    body: Markdown | UnsetType = UNSET
    panels: Panels | UnsetType = UNSET


class NewShare(msgspec.Struct, forbid_unknown_fields=True):
    expires_in_s: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_SHARE_SECONDS,
            description="how long the link works",
            extra={"error": f"expires_in_s must be a whole number of seconds from 1 to {MAX_SHARE_SECONDS:,} (a year)"},
        ),
    ] = DEFAULT_SHARE_SECONDS


# -- what it answers -------------------------------------------------------------------------------


class ReportFields(TypedDict):
    id: str
    team: str
    project: str
    title: str
    created_by: str
    created_at: Time
    updated_at: Time
    share_version: Annotated[int, Meta(description="the version share links name; revoking them bumps it")]


class Report(ReportFields):
    body: Annotated[str, Meta(description="markdown")]
    panels: Annotated[list[dict[str, Any]], Meta(description="chart specs")]


class ReportSummary(ReportFields):
    panel_count: int


class Reports(TypedDict):
    reports: list[ReportSummary]


class ShareLink(TypedDict):
    token: str
    url: Annotated[str, Meta(description="the web UI's path for it")]
    expires_at: Time


class SharedProject(TypedDict):
    team: str
    name: str


class SharedReport(TypedDict):
    report: Report
    project: SharedProject
    expires_at: Time


# -- helpers ------------------------------------------------------------------------------


def _author(principal: Principal) -> str:
    return principal.user or principal.describe()


def _storable(panels: list[dict[str, Any]]) -> None:
    """Panels storage can keep as JSON text: what the declaration cannot bound (their nesting, integers
    beyond 64 bits) is content that cannot be stored, 422."""
    try:
        orjson.dumps(panels)
    except TypeError as exc:
        raise ApiError(422, f"the panels cannot be stored as JSON: {exc}", details={"field": "panels"}) from None


def _unstorable(exc: QueryError) -> ApiError:
    """Storage's refusal of a body that fits its declaration (the panels' JSON size in all): 422."""
    return ApiError(422, exc.message, details=exc.details or None)


async def _report(request: Request, team: str, project: str, report_id: str) -> dict[str, Any]:
    found = await backend_of(request).run(reports.get_report, team, project, report_id)
    if found is None:
        raise not_found(f"report {report_id} in {team}/{project}")
    return found


# -- reports ------------------------------------------------------------------------------


@endpoint(summary="List reports", tags=["reports"], ok=Answer(Reports, "the reports"), access=PROJECT_READ)
async def list_reports(request: Request) -> Response:
    """A project's reports, most recently updated first (without bodies and panels)."""
    team, project = project_path(request)
    return json_response({"reports": await backend_of(request).run(reports.list_reports, team, project)})


@endpoint(
    summary="Create a report",
    tags=["reports"],
    ok={201: Answer(Report, "the new report")},
    access=PROJECT_WRITE,
    body_bytes=MAX_REPORT_JSON,
    refusals={
        400: "a field that does not fit, or a team or project name that cannot exist",
        422: "the panels are more JSON than a report holds, or JSON storage cannot keep",
    },
)
async def create_report(request: Request, body: NewReport, principal: Principal) -> Response:
    """Create a report: a ``title``, a markdown ``body`` and chart ``panels``."""
    team, project = project_path(request)
    _storable(body.panels)
    try:
        report = await backend_of(request).run(
            reports.create_report, team, project, body.title, body.body, body.panels, _author(principal)
        )
    except QueryError as exc:
        raise _unstorable(exc) from None
    return json_response(report, status_code=201)


@endpoint(
    summary="Get a report",
    tags=["reports"],
    ok=Answer(Report, "the report"),
    access=PROJECT_READ,
    refusals={404: "no such report, or not visible"},
)
async def get_report(request: Request) -> Response:
    """One report."""
    team, project = project_path(request)
    return json_response(await _report(request, team, project, request.path_params["report_id"]))


@endpoint(
    summary="Update a report",
    tags=["reports"],
    ok=Answer(Report, "the updated report"),
    access=PROJECT_WRITE,
    body_bytes=MAX_REPORT_JSON,
    refusals={
        400: "a field that does not fit, or a team or project name that cannot exist",
        404: "no such report, or not visible",
        422: "the panels are more JSON than a report holds, or JSON storage cannot keep",
    },
)
async def patch_report(request: Request, body: ReportEdit) -> Response:
    """Change a report's title, body or panels (the fields sent)."""
    team, project = project_path(request)
    report_id = request.path_params["report_id"]
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}
    if body.panels is not UNSET:
        _storable(body.panels)
    try:
        report = await backend_of(request).run(reports.update_report, team, project, report_id, changes)
    except QueryError as exc:
        raise _unstorable(exc) from None
    if report is None:
        raise not_found(f"report {report_id} in {team}/{project}")
    return json_response(report)


@endpoint(
    summary="Delete a report",
    tags=["reports"],
    ok={204: Answer(None, "deleted")},
    access=PROJECT_WRITE,
    refusals={404: "no such report, or not visible"},
)
async def delete_report(request: Request, principal: Principal) -> Response:
    """Delete a report; its share links stop working."""
    team, project = project_path(request)
    report_id = request.path_params["report_id"]
    if not await backend_of(request).run(reports.delete_report, team, project, report_id):
        raise not_found(f"report {report_id} in {team}/{project}")
    await audit.record(request, principal, team, "report.delete", f"{project}/{report_id}")
    return Response(status_code=204)


# -- share links ----------------------------------------------------------------------------


@endpoint(
    summary="Create a share link",
    tags=["reports"],
    ok={201: Answer(ShareLink, "the token, the web UI's path for it, and when it expires")},
    access=PROJECT_WRITE,
    body_bytes=4096,
    empty_body_ok=True,
    refusals={
        400: "expires_in_s is not a whole number of seconds in range, or a team or project name that cannot exist",
        404: "no such report, or not visible",
    },
)
async def create_share(request: Request, body: NewShare, principal: Principal) -> Response:
    """A read-only link to the report and its project's data, valid for ``expires_in_s`` (default 7 days,
    at most a year)."""
    team, project = project_path(request)
    report_id = request.path_params["report_id"]
    report = await _report(request, team, project, report_id)
    # Rounded up: a link asked for N seconds must last at least N seconds, not N minus the part second.
    expires_at = math.ceil(time.time()) + body.expires_in_s
    secret = (await backend_of(request).share_secrets())[0]
    token = sign_share(secret, team, project, report_id, report["share_version"], expires_at)
    details = {"expires_at": expires_at, "share_version": report["share_version"]}
    await audit.record(request, principal, team, "share.create", f"{project}/{report_id}", details)
    return json_response({"token": token, "url": f"/share/{token}", "expires_at": expires_at}, status_code=201)


@endpoint(
    summary="Revoke share links",
    tags=["reports"],
    ok=Answer(Report, "the report with its new share_version"),
    access=PROJECT_WRITE,
    refusals={404: "no such report, or not visible"},
)
async def revoke_shares(request: Request, principal: Principal) -> Response:
    """Revoke every share link of the report made so far (new ones can be made after)."""
    team, project = project_path(request)
    report_id = request.path_params["report_id"]
    report = await backend_of(request).run(reports.revoke_shares, team, project, report_id)
    if report is None:
        raise not_found(f"report {report_id} in {team}/{project}")
    details = {"share_version": report["share_version"]}
    await audit.record(request, principal, team, "share.revoke", f"{project}/{report_id}", details)
    return json_response(report)


@endpoint(
    summary="Open a share link",
    tags=["reports"],
    ok=Answer(SharedReport, "the report and its project"),
    access=None,
    security=[],
    refusals={401: "the link is not valid, has expired, or was revoked; ask for a new one"},
)
async def open_shared(request: Request) -> Response:
    """The report a share link points to; the token is the credential, no key needed."""
    backend = backend_of(request)
    token = request.path_params["token"]
    if not _TOKEN.match(token):  # not one of ours: no need to check a signature
        raise ApiError(401, "this share link is not valid; ask for a new one", code="invalid_share_link")
    share, version = await open_share(backend, token)
    report = await backend.run(reports.get_report, share.team, share.project, share.report_id)
    if report is None or report["share_version"] != version:
        raise ApiError(401, "this share link was revoked; ask for a new one", code="share_link_revoked")
    return json_response(
        {"report": report, "project": {"team": share.team, "name": share.project}, "expires_at": share.expires_at}
    )


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
