"""Who am I, teams, members, API keys and projects.

Teams are created by ``runstream keys create`` on the server (or, on the embedded
server, by its local admin through ``POST /teams``); from then on a team's admins
manage it here. A team always keeps one admin: removing or demoting the last one
is refused (``storage.accounts.LastAdminError``, also when two admins demote each
other at once). Every change of keys, members, roles and visibility is recorded in
the team's audit log (``storage.audit``), which its admins read here. Keys are
shown whole once, when created; listings never carry a secret or its hash. Project
visibility follows ``runstream.api.auth``'s table: a private project is 404 to
everyone outside its team, and a team, project or user name that none can have is
400 for a caller who may be there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api import audit as audit_entries
from runstream.api.auth import (
    ANY_READER,
    ANYONE,
    PROJECT_ADMIN,
    PROJECT_READ,
    TEAM_ADMIN,
    TEAM_READ,
    TEAM_WRITE,
    Access,
    Principal,
    allows,
    authenticate,
)
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import API, project_path
from runstream.api.responses import json_response
from runstream.api.schemas import Time
from runstream.names import NAME_PATTERN, NAME_RULE, USER_PATTERN, USER_RULE
from runstream.storage import accounts, audit
from runstream.storage.accounts import MAX_DESCRIPTION, MAX_DISPLAY_NAME, MAX_KEY_NAME, Role, Scope

Visibility = Literal[accounts.VISIBILITIES]  # type: ignore[valid-type]
VisibilityField = Annotated[Visibility, Meta(extra={"error": "visibility must be 'private' or 'public'"})]
TeamName = Annotated[str, Meta(pattern=NAME_PATTERN)]
UserName = Annotated[str, Meta(pattern=USER_PATTERN)]
NO_KEY = "no key, or a key that does not work"

# -- answers ------------------------------------------------------------------------------------------------


class ShareGrant(TypedDict):
    team: str
    project: str
    report_id: str
    expires_at: Time


class Whoami(TypedDict):
    user: str | None
    team: str | None
    role: Role | None
    key_id: str | None
    scope: Annotated[Scope | None, Meta(description="the key's scope; null without a key")]
    local_admin: bool
    share: Annotated[ShareGrant | None, Meta(description="what a share link grants; null for anything else")]


class Team(TypedDict):
    team: str
    display_name: str
    created_at: Time
    role: Annotated[Role, Meta(description="the caller's role in the team")]


class Teams(TypedDict):
    teams: list[Team]


class Member(TypedDict):
    team: str
    user: str
    role: Role
    created_at: Time


class Members(TypedDict):
    team: str
    members: list[Member]


class ApiKey(TypedDict):
    key_id: str
    team: str
    user: str
    name: str
    scope: Scope
    created_at: Time
    revoked_at: Time | None


class ApiKeys(TypedDict):
    team: str
    keys: list[ApiKey]


class CreatedApiKey(TypedDict):
    key_id: str
    key: Annotated[str, Meta(description="the whole key, shown only this once")]
    team: str
    user: str
    name: str
    scope: Scope
    created_at: Time


class AuditActor(TypedDict):
    kind: Annotated[
        Literal["key", "local_admin", "cli", "anonymous"],
        Meta(description="an API key, the embedded server's local admin, or `runstream keys` on the server"),
    ]
    user: Annotated[str | None, Meta(description="the key's user; for the CLI, the OS account")]
    key_id: str | None


class AuditEntry(TypedDict):
    id: str
    team: str
    at: Time
    action: audit.Action
    actor: AuditActor
    client_ip: Annotated[str | None, Meta(description="the connection's peer address")]
    forwarded_for: Annotated[
        str | None, Meta(description="what a proxy's X-Forwarded-For or Forwarded header claimed, unverified")
    ]
    user_agent: str | None
    target: Annotated[str, Meta(description="what the action changed: a user, key id, project or project/id")]
    details: dict[str, Any]


class AuditPage(TypedDict):
    team: str
    entries: list[AuditEntry]
    next_cursor: Annotated[str | None, Meta(description="null on the last page")]


class Project(TypedDict):
    team: str
    name: str
    visibility: Visibility
    description: str
    run_count: Annotated[int, Meta(ge=0)]
    created_at: Time


class Projects(TypedDict):
    projects: list[Project]


# -- helpers ---------------------------------------------------------------------------------------------


async def _local_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if principal.local_admin:
        return principal
    if principal.anonymous:
        raise ApiError(
            401,
            "creating a team needs the server's local admin; on a server, run "
            "`runstream keys create --team T --user U` there",
        )
    raise ApiError(
        403, "teams are created on the server with `runstream keys create --team T --user U`, not with an API key"
    )


#: The embedded server's local admin only (``auth.Principal.local_admin``).
LOCAL_ADMIN = Access(_local_admin, (401, 403))


async def _team(request: Request, principal: Principal) -> str:
    """The path's team; the local admin passes every access check, so for it a missing team is still a 404."""
    team: str = request.path_params["team"]
    if principal.local_admin and await backend_of(request).run(accounts.get_team, team) is None:
        raise not_found(f"team {team[:200]!r}")
    return team


def _last_admin(exc: accounts.LastAdminError) -> ApiError:
    return ApiError(409, str(exc.args[0]), code="last_admin")


def _is_admin(principal: Principal) -> bool:
    return principal.local_admin or principal.role == "admin"


def _member(team: str, user: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"team": team, "user": user, "role": row["role"], "created_at": row["created_at_ms"] / 1000}


def _project(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "team": row["team"],
        "name": row["project"],
        "visibility": row["visibility"],
        "description": row["description"],
        "run_count": int(row["run_count"]),
        "created_at": row["created_at"],
    }


# -- who am I, teams ----------------------------------------------------------------------------------------


@endpoint(
    summary="Who am I",
    tags=["teams"],
    ok=Answer(Whoami, "the principal"),
    access=ANYONE,
    refusals={401: "a key or share link was sent that does not work"},
)
async def whoami(request: Request, principal: Principal) -> Response:
    """The caller as the server sees it (also anonymous callers and share links)."""
    share = principal.share
    return json_response(
        {
            "user": principal.user,
            "team": principal.team,
            "role": principal.role,
            "key_id": principal.key_id,
            "scope": principal.scope,
            "local_admin": principal.local_admin,
            "share": None
            if share is None
            else {
                "team": share.team,
                "project": share.project,
                "report_id": share.report_id,
                "expires_at": share.expires_at,
            },
        }
    )


@endpoint(
    summary="List teams",
    tags=["teams"],
    ok=Answer(Teams, "the teams, with the caller's role in each"),
    access=ANY_READER,
    refusals={401: NO_KEY},
)
async def list_teams(request: Request, principal: Principal) -> Response:
    """The teams the caller belongs to (the local admin: every team)."""
    if principal.local_admin:
        teams = await backend_of(request).run(accounts.list_teams)
        return json_response({"teams": [{**t, "role": "admin"} for t in teams]})
    if principal.team is None:
        raise ApiError(401, "listing teams needs an API key: send 'Authorization: Bearer <key>'")
    teams = await backend_of(request).run(accounts.list_teams, [principal.team])
    return json_response({"teams": [{**t, "role": principal.role} for t in teams]})


class NewTeam(msgspec.Struct, forbid_unknown_fields=True):
    team: Annotated[TeamName, Meta(extra={"error": f"team must be {NAME_RULE}"})]
    display_name: Annotated[str, Meta(max_length=MAX_DISPLAY_NAME)] = ""


@endpoint(
    summary="Create a team",
    tags=["teams"],
    ok={201: Answer(Team, "created")},
    access=LOCAL_ADMIN,
    refusals={401: NO_KEY, 403: "only the local admin creates teams through the API", 409: "the team exists"},
)
async def create_team(request: Request, body: NewTeam, principal: Principal) -> Response:
    """Create a team. Only the embedded server's local admin may; otherwise use ``runstream keys create``."""
    backend = backend_of(request)
    if not await backend.run(accounts.ensure_team, body.team, body.display_name):
        raise ApiError(409, f"team {body.team} exists already", code="exists")
    await audit_entries.record(request, principal, body.team, "team.create", body.team)
    created = await backend.run(accounts.get_team, body.team)
    assert created is not None  # a write is visible to the next read (storage.versioned)
    return json_response({**created, "role": "admin"}, status_code=201)


# -- members ------------------------------------------------------------------------------------------------


@endpoint(
    summary="List a team's members",
    tags=["teams"],
    ok=Answer(Members, "the members"),
    access=TEAM_READ,
    refusals={401: NO_KEY, 404: "no such team, or not this key's"},
)
async def list_members(request: Request, principal: Principal) -> Response:
    """A team's members and their roles (any member may read them)."""
    team = await _team(request, principal)
    rows = await backend_of(request).run(accounts.list_members, team)
    return json_response({"team": team, "members": [{"team": team, **row} for row in rows]})


class MemberRole(msgspec.Struct, forbid_unknown_fields=True):
    role: Annotated[Role, Meta(extra={"error": f"role must be one of {', '.join(accounts.ROLES)}"})]


@endpoint(
    summary="Add or change a member",
    tags=["teams"],
    ok={200: Answer(Member, "the member's role changed"), 201: Answer(Member, "the member was added")},
    access=TEAM_ADMIN,
    refusals={
        400: "a bad user name, role or body",
        401: NO_KEY,
        403: "only the team's admins change members",
        404: "no such team, or not this key's",
        409: "that would demote the team's last admin",
    },
)
async def put_member(request: Request, body: MemberRole, principal: Principal) -> Response:
    """Add a member or change their role (team admins).

    ``user`` is 1-128 letters, digits or ``_.@+-``, starting with a letter or digit
    (an e-mail address fits).
    """
    team = await _team(request, principal)
    user = request.path_params["user"]
    backend = backend_of(request)
    try:
        changed = await backend.run(accounts.set_member, team, user, body.role)
    except accounts.LastAdminError as exc:
        raise _last_admin(exc) from None
    previous = changed["previous"]
    if previous is None:
        await audit_entries.record(request, principal, team, "member.add", user, {"role": body.role})
    elif previous != body.role:
        await audit_entries.record(request, principal, team, "member.role", user, {"from": previous, "to": body.role})
    row = await backend.run(accounts.member_role, team, user)
    assert row is not None  # a write is visible to the next read (storage.versioned)
    return json_response(_member(team, user, row), status_code=200 if previous is not None else 201)


@endpoint(
    summary="Remove a member",
    tags=["teams"],
    ok=Answer(Member, "removed"),
    access=TEAM_ADMIN,
    refusals={
        401: NO_KEY,
        403: "only the team's admins remove members",
        404: "no such team or member",
        409: "the member is the team's last admin",
    },
)
async def delete_member(request: Request, principal: Principal) -> Response:
    """Remove a member (team admins); their keys of the team are revoked at once."""
    team = await _team(request, principal)
    user = request.path_params["user"]
    backend = backend_of(request)
    current = await backend.run(accounts.member_role, team, user)
    if current is None:
        raise not_found(f"member {user[:200]!r} of team {team}")
    live = [k["key_id"] for k in await backend.run(accounts.list_keys, team, user) if k["revoked_at"] is None]
    try:
        removed = await backend.run(accounts.remove_member, team, user)
    except accounts.LastAdminError as exc:
        raise _last_admin(exc) from None
    if not removed:  # removed by another request in between
        raise not_found(f"member {user[:200]!r} of team {team}")
    details = {"role": current["role"], "revoked_keys": live}
    await audit_entries.record(request, principal, team, "member.remove", user, details)
    return json_response(_member(team, user, current))


# -- keys ---------------------------------------------------------------------------------------------------


@endpoint(
    summary="List API keys",
    tags=["teams"],
    ok=Answer(ApiKeys, "the keys, revoked ones with revoked_at"),
    access=TEAM_READ,
    refusals={401: NO_KEY, 404: "no such team, or not this key's"},
)
async def list_keys(request: Request, principal: Principal) -> Response:
    """A team's API keys (admins: all of them; other members: their own), never their secrets."""
    team = await _team(request, principal)
    user = None if _is_admin(principal) else principal.user
    rows = await backend_of(request).run(accounts.list_keys, team, user)
    return json_response({"team": team, "keys": rows})


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(max_length=MAX_KEY_NAME)] = ""
    user: (
        Annotated[
            UserName,
            Meta(
                description="the member the key is for; the caller when left out",
                extra={"error": f"user must be {USER_RULE}"},
            ),
        ]
        | UnsetType
    ) = UNSET
    scope: Annotated[
        Scope,
        Meta(
            description="what the key may do at most (its member's role still caps it): ingest writes runs and "
            "files only, read only reads, admin all the role allows",
            extra={"error": f"scope must be one of {', '.join(accounts.SCOPES)}"},
        ),
    ] = "admin"


@endpoint(
    summary="Create an API key",
    tags=["teams"],
    ok={201: Answer(CreatedApiKey, "the key; store it now, it is not shown again")},
    access=TEAM_READ,
    refusals={
        401: NO_KEY,
        403: "only admins create keys for other members; the local admin must name the user",
        404: "no such team (or not this key's), or the user is not a member of it",
    },
)
async def create_key(request: Request, body: NewKey, principal: Principal) -> Response:
    """A new API key: for yourself, or (team admins) for any member. The full key is in this answer only."""
    team = await _team(request, principal)
    user = principal.user if body.user is UNSET else body.user
    if user is None:  # the local admin has no user, hence no key, of its own
        raise ApiError(
            403,
            "the local admin has no key of its own: send 'user', the member the key is for",
            details={"field": "user"},
        )
    if user != principal.user and not _is_admin(principal):
        raise ApiError(403, f"{principal.describe()} may create keys only for themselves; ask a team admin")
    backend = backend_of(request)
    if await backend.run(accounts.member_role, team, user) is None:
        # 404 as for any missing thing a request names (the user is a valid name, just not in the team).
        raise ApiError(
            404,
            f"{user} is not a member of team {team}; add them first with PUT /api/v1/teams/{team}/members/{user}",
            code="not_a_member",
        )
    key_id, key = await backend.run(accounts.create_key, team, user, body.name, body.scope)
    await audit_entries.record(
        request, principal, team, "key.create", key_id, {"user": user, "name": body.name, "scope": body.scope}
    )
    row = await backend.run(accounts.get_key, key_id)
    assert row is not None  # a write is visible to the next read (storage.versioned)
    return json_response(
        {
            "key_id": key_id,
            "key": key,
            "team": team,
            "user": user,
            "name": body.name,
            "scope": body.scope,
            "created_at": row["created_at"],
        },
        status_code=201,
    )


@endpoint(
    summary="Revoke an API key",
    tags=["teams"],
    ok=Answer(ApiKey, "revoked (revoking a revoked key again changes nothing)"),
    access=TEAM_READ,
    refusals={401: NO_KEY, 403: "not an admin, and not the key's user", 404: "no such team or key"},
)
async def revoke_key(request: Request, principal: Principal) -> Response:
    """Revoke a key (team admins, or the key's own user); it fails from the next request on."""
    team = await _team(request, principal)
    key_id = request.path_params["key_id"]
    backend = backend_of(request)
    row = await backend.run(accounts.get_key, key_id)
    if row is None or row["team"] != team:
        raise not_found(f"key {key_id[:200]!r} of team {team}")
    if row["user"] != principal.user and not _is_admin(principal):
        raise ApiError(403, f"{principal.describe()} may revoke only their own keys; ask a team admin")
    if await backend.run(accounts.revoke_key, key_id):  # revoking a revoked key again changes nothing
        await audit_entries.record(request, principal, team, "key.revoke", key_id, {"user": row["user"]})
    return json_response(await backend.run(accounts.get_key, key_id))


# -- audit log ----------------------------------------------------------------------------------------------


class AuditQuery(msgspec.Struct, forbid_unknown_fields=True):
    action: (
        Annotated[
            audit.Action,
            Meta(
                description="only entries of this action",
                extra={"error": f"action must be one of {', '.join(audit.ACTIONS)}"},
            ),
        ]
        | None
    ) = None
    limit: Annotated[int, Meta(ge=1, le=audit.MAX_LIMIT)] = audit.DEFAULT_LIMIT
    cursor: Annotated[str, Meta(max_length=64, description="next_cursor of the previous page")] | None = None


@endpoint(
    summary="Read the audit log",
    tags=["teams"],
    ok=Answer(AuditPage, "a page of entries, newest first; next_cursor is null on the last"),
    access=TEAM_ADMIN,
    refusals={
        400: "a bad action, limit or cursor",
        401: NO_KEY,
        403: "only the team's admins read its audit log",
        404: "no such team, or not this key's",
    },
)
async def list_audit(request: Request, query: AuditQuery, principal: Principal) -> Response:
    """The team's audit log, newest first: who (key and user, the local admin, or the CLI) created or
    revoked keys, added, removed or changed members, changed a project's visibility, deleted things or
    made share links, when, and from where. Entries are only ever appended; nothing changes or removes one."""
    team = await _team(request, principal)
    page = await backend_of(request).run(audit.list_entries, team, query.action, query.limit, query.cursor)
    return json_response({"team": team, **page})


# -- projects -----------------------------------------------------------------------------------------------


class ProjectsQuery(msgspec.Struct, forbid_unknown_fields=True):
    team: (
        Annotated[TeamName, Meta(description="only this team's projects", extra={"error": f"team must be {NAME_RULE}"})]
        | None
    ) = None


@endpoint(
    summary="List projects",
    tags=["projects"],
    ok=Answer(Projects, "the projects, by team and name"),
    access=ANY_READER,
    refusals={401: "a key or share link was sent that does not work"},
)
async def list_projects(request: Request, query: ProjectsQuery, principal: Principal) -> Response:
    """Projects the caller can read: their team's and every public one (anonymous: public only)."""
    only = query.team
    backend = backend_of(request)
    if principal.local_admin:
        rows = await backend.run(accounts.list_projects, None if only is None else [only], False)
    else:
        own = [principal.team] if principal.team else []
        rows = await backend.run(accounts.list_projects, own, True)
        if principal.share and principal.share.team not in own:  # a share link also reads its report's project
            shared = await backend.run(accounts.get_project, principal.share.team, principal.share.project)
            if shared is not None and shared["visibility"] != "public":
                rows = sorted([*rows, shared], key=lambda r: (r["team"], r["project"]))
    if only is not None:
        rows = [r for r in rows if r["team"] == only]
    return json_response({"projects": [_project(r) for r in rows]})


class NewProject(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[TeamName, Meta(extra={"error": f"name must be {NAME_RULE}"})]
    visibility: VisibilityField = "private"
    description: Annotated[str, Meta(max_length=MAX_DESCRIPTION)] = ""


@endpoint(
    summary="Create a project",
    tags=["projects"],
    ok={201: Answer(Project, "created")},
    access=TEAM_WRITE,
    refusals={
        400: "a bad name, visibility, description or body",
        401: NO_KEY,
        403: "viewers do not create projects, and only admins create public ones",
        404: "no such team, or not this key's",
        409: "the project exists",
    },
)
async def create_project(request: Request, body: NewProject, principal: Principal) -> Response:
    """Create a project in a team (members and admins). Logging a run also creates one, private."""
    team = request.path_params["team"]
    if body.visibility == "public" and not allows(principal, team, "admin"):
        raise ApiError(
            403,
            f"only an admin of team {team} makes a project public; create it private, "
            "and ask an admin to change its visibility",
        )
    backend = backend_of(request)
    # The embedded server's owner: the team comes into being with its first project.
    if principal.local_admin and await backend.run(accounts.ensure_team, team):
        await audit_entries.record(request, principal, team, "team.create", team)
    if await backend.run(accounts.get_project, team, body.name) is not None:
        raise ApiError(409, f"project {team}/{body.name} exists already; change it with PATCH", code="exists")
    row = await backend.run(accounts.upsert_project, team, body.name, body.visibility, body.description)
    details = {"visibility": body.visibility}
    await audit_entries.record(request, principal, team, "project.create", body.name, details)
    return json_response(_project(row), status_code=201)


@endpoint(
    summary="Get a project",
    tags=["projects"],
    ok=Answer(Project, "the project"),
    access=PROJECT_READ,
    refusals={
        401: "a key or share link was sent that does not work",
        404: "no such project, or not visible to the caller",
    },
)
async def get_project(request: Request) -> Response:
    """One project, with its visibility and run count."""
    team, project = project_path(request)
    row = await backend_of(request).run(accounts.get_project, team, project)
    if row is None:
        raise not_found(f"project {team}/{project}")
    return json_response(_project(row))


class ProjectEdit(msgspec.Struct, forbid_unknown_fields=True):
    """Fields left out stay as they are."""

    visibility: VisibilityField | UnsetType = UNSET
    description: Annotated[str, Meta(max_length=MAX_DESCRIPTION)] | UnsetType = UNSET


@endpoint(
    summary="Change a project",
    tags=["projects"],
    ok=Answer(Project, "the changed project"),
    access=PROJECT_ADMIN,
    refusals={
        400: "a bad visibility, description or body",
        401: NO_KEY,
        403: "only the team's admins change a project",
        404: "no such project, or not visible to the caller",
    },
)
async def patch_project(request: Request, body: ProjectEdit, principal: Principal) -> Response:
    """Change a project's visibility or description (team admins)."""
    team, project = project_path(request)
    backend = backend_of(request)
    before = await backend.run(accounts.get_project, team, project)
    if before is None:
        raise not_found(f"project {team}/{project}")
    row = await backend.run(
        accounts.upsert_project,
        team,
        project,
        None if body.visibility is UNSET else body.visibility,
        None if body.description is UNSET else body.description,
    )
    if row["visibility"] != before["visibility"]:
        details = {"from": before["visibility"], "to": row["visibility"]}
        await audit_entries.record(request, principal, team, "project.visibility", project, details)
    return json_response(_project(row))


routes = [
    Route(f"{API}/whoami", whoami, methods=["GET"]),
    Route(f"{API}/teams", list_teams, methods=["GET"]),
    Route(f"{API}/teams", create_team, methods=["POST"]),
    Route(f"{API}/teams/{{team}}/members", list_members, methods=["GET"]),
    Route(f"{API}/teams/{{team}}/members/{{user}}", put_member, methods=["PUT"]),
    Route(f"{API}/teams/{{team}}/members/{{user}}", delete_member, methods=["DELETE"]),
    Route(f"{API}/teams/{{team}}/keys", list_keys, methods=["GET"]),
    Route(f"{API}/teams/{{team}}/keys", create_key, methods=["POST"]),
    Route(f"{API}/teams/{{team}}/keys/{{key_id}}", revoke_key, methods=["DELETE"]),
    Route(f"{API}/teams/{{team}}/audit", list_audit, methods=["GET"]),
    Route(f"{API}/projects", list_projects, methods=["GET"]),
    Route(f"{API}/projects/{{team}}", create_project, methods=["POST"]),
    Route(f"{API}/projects/{{team}}/{{project}}", get_project, methods=["GET"]),
    Route(f"{API}/projects/{{team}}/{{project}}", patch_project, methods=["PATCH"]),
]
