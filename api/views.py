"""Saved workspace views (docs/panels.md): a project's named layouts, shared with the team, one of them the default.

Reading needs read access to the project, writing a team member's write access; a deletion is audited,
as a report's is. The spec is the workspace's state as the UI sends it (an object of at most 256 KiB of
JSON), kept as given.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import audit
from runstream.api.auth import PROJECT_READ, PROJECT_WRITE, Principal
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.storage import views
from runstream.storage.errors import QueryError


class _ViewId(StringConvertor):
    """A view id in a path: any segment but ``default``, which names the default view, so that path
    answers GET only (and its Allow header says so) rather than also matching a view's PUT and DELETE."""

    regex = r"(?!default$)[^/]+"


register_url_convertor("view_id", _ViewId())
VIEWS_PATH = f"{PROJECT_PATH}/views"
DEFAULT_PATH = f"{VIEWS_PATH}/default"
VIEW_PATH = f"{VIEWS_PATH}/{{view_id:view_id}}"  # the document shows it as {view_id}
# A spec of MAX_SPEC_BYTES written with escapes (up to 6 bytes a character) still arrives whole, so its own
# size is what refuses it, with a message that says so.
MAX_BODY = 6 * views.MAX_SPEC_BYTES + 4096

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=views.MAX_NAME,
        pattern=r"\S",
        extra={"error": f"name must be a non-empty string of at most {views.MAX_NAME} characters"},
    ),
]
Spec = Annotated[
    dict[str, Any],
    Meta(
        description="the workspace's state (panels, sections, filters, grouping, columns, hidden runs, order), "
        f"at most {views.MAX_SPEC_BYTES:,} bytes of JSON; kept as given",
        extra={"error": "spec must be a JSON object (the workspace's state)"},
    ),
]
Default = Annotated[
    bool,
    Meta(
        description="make it the project's default view (the previous default is unmarked); false unmarks it",
        extra={"error": "default must be true or false"},
    ),
]


class NewView(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    spec: Spec
    default: Default = False


class ViewEdit(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are."""

    name: Name | UnsetType = UNSET
    spec: Spec | UnsetType = UNSET
    default: Default | UnsetType = UNSET


class ViewSummary(TypedDict):
    view_id: str
    name: str
    is_default: bool
    created_by: str
    updated_by: str
    created_at: Time
    updated_at: Time


class View(ViewSummary):
    spec: Annotated[dict[str, Any], Meta(description="the workspace's state, as saved")]


class Views(TypedDict):
    views: Annotated[list[ViewSummary], Meta(description="by name")]


def _author(principal: Principal) -> str:
    return principal.user or principal.describe()


def _refused(exc: QueryError) -> ApiError:
    """Storage's refusal of a body that fits its declaration: a spec too large (413) or not storable (422)."""
    status = 413 if isinstance(exc, views.SpecTooLarge) else 422
    return ApiError(status, exc.message, details=exc.details or None)


@endpoint(summary="List saved views", tags=["views"], ok=Answer(Views, "the views, without specs"), access=PROJECT_READ)
async def list_views(request: Request) -> Response:
    """A project's saved views by name (without their specs); the default one has ``is_default``."""
    team, project = project_path(request)
    return json_response({"views": await backend_of(request).run(views.list_views, team, project)})


@endpoint(
    summary="Save a view",
    tags=["views"],
    ok={201: Answer(View, "the new view")},
    access=PROJECT_WRITE,
    body_bytes=MAX_BODY,
    refusals={
        400: "a field that does not fit, or a team or project name that cannot exist",
        413: f"the body is too large, or the spec is more than {views.MAX_SPEC_BYTES:,} bytes of JSON",
        422: "the spec cannot be stored as JSON",
    },
)
async def create_view(request: Request, body: NewView, principal: Principal) -> Response:
    """Save the workspace's state as a named view; ``default: true`` makes it the project's default."""
    team, project = project_path(request)
    try:
        view = await backend_of(request).run(
            views.create_view, team, project, body.name, body.spec, body.default, _author(principal)
        )
    except QueryError as exc:
        raise _refused(exc) from None
    return json_response(view, status_code=201)


@endpoint(
    summary="The default view",
    tags=["views"],
    ok=Answer(View, "the project's default view"),
    access=PROJECT_READ,
    refusals={404: "the project has no default view, or is not visible"},
)
async def get_default_view(request: Request) -> Response:
    """The view a project opens with, when it has one."""
    team, project = project_path(request)
    view = await backend_of(request).run(views.default_view, team, project)
    if view is None:
        raise not_found(f"a default view of {team}/{project}")
    return json_response(view)


@endpoint(
    summary="Get a view",
    tags=["views"],
    ok=Answer(View, "the view"),
    access=PROJECT_READ,
    refusals={404: "no such view, or not visible"},
)
async def get_view(request: Request) -> Response:
    """One saved view, with its spec."""
    team, project = project_path(request)
    view_id = request.path_params["view_id"]
    view = await backend_of(request).run(views.get_view, team, project, view_id)
    if view is None:
        raise not_found(f"view {view_id} in {team}/{project}")
    return json_response(view)


@endpoint(
    summary="Update a view",
    tags=["views"],
    ok=Answer(View, "the updated view"),
    access=PROJECT_WRITE,
    body_bytes=MAX_BODY,
    refusals={
        404: "no such view, or not visible",
        413: f"the body is too large, or the spec is more than {views.MAX_SPEC_BYTES:,} bytes of JSON",
        422: "the spec cannot be stored as JSON",
    },
)
async def update_view(request: Request, body: ViewEdit, principal: Principal) -> Response:
    """Rename a view, replace its spec, or make it (or stop it being) the default: the fields sent."""
    team, project = project_path(request)
    view_id = request.path_params["view_id"]
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not UNSET}
    try:
        view = await backend_of(request).run(views.update_view, team, project, view_id, changes, _author(principal))
    except QueryError as exc:
        raise _refused(exc) from None
    if view is None:
        raise not_found(f"view {view_id} in {team}/{project}")
    return json_response(view)


@endpoint(
    summary="Delete a view",
    tags=["views"],
    ok={204: Answer(None, "deleted")},
    access=PROJECT_WRITE,
    refusals={404: "no such view, or not visible"},
)
async def delete_view(request: Request, principal: Principal) -> Response:
    """Delete a saved view; deleting the default leaves the project without one."""
    team, project = project_path(request)
    view_id = request.path_params["view_id"]
    if not await backend_of(request).run(views.delete_view, team, project, view_id):
        raise not_found(f"view {view_id} in {team}/{project}")
    await audit.record(request, principal, team, "view.delete", f"{project}/{view_id}")
    return Response(status_code=204)


routes = [
    Route(VIEWS_PATH, list_views, methods=["GET"]),
    Route(VIEWS_PATH, create_view, methods=["POST"]),
    Route(DEFAULT_PATH, get_default_view, methods=["GET"]),
    Route(VIEW_PATH, get_view, methods=["GET"]),
    Route(VIEW_PATH, update_view, methods=["PUT"]),
    Route(VIEW_PATH, delete_view, methods=["DELETE"]),
]
