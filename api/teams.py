"""Who am I, teams, members, API keys and projects.

Teams are created by ``runstream keys create`` on the server (or, on the embedded
server, by its local admin through ``POST /teams``); from then on a team's admins
manage it here. A team always keeps one admin: removing or demoting the last one
is refused. Keys are shown whole once, when created; listings never carry a
secret or its hash. Project visibility follows ``runstream.api.auth``'s table:
a private project is 404 to everyone outside its team.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import Principal, allows, authenticate, require_project, require_team
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, not_found
from runstream.api.openapi import with_schemas
from runstream.api.requests import json_body
from runstream.api.responses import json_response
from runstream.storage import accounts

API = "/api/v1"

# -- response schemas, shared by the docstrings below (``$NAME`` is replaced by the JSON schema) --------------

_ROLE = {"type": "string", "enum": list(accounts.ROLES)}
_NAME_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,127}$"}
_USER_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@+\\-]{0,127}$"}
_TIME = {"type": "number", "description": "seconds since the epoch"}


def _object(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


_SCHEMAS: dict[str, dict[str, Any]] = {
    "WHOAMI": _object(
        user={"type": "string", "nullable": True}, team={"type": "string", "nullable": True},
        role={**_ROLE, "nullable": True, "enum": [*accounts.ROLES, None]},
        key_id={"type": "string", "nullable": True}, local_admin={"type": "boolean"},
        share={**_object(team={"type": "string"}, project={"type": "string"}, report_id={"type": "string"},
                         expires_at=_TIME), "nullable": True}),
    "TEAM": _object(team={"type": "string"}, display_name={"type": "string"}, created_at=_TIME,
                    role={**_ROLE, "nullable": True, "enum": [*accounts.ROLES, None]}),
    "MEMBER": _object(team={"type": "string"}, user={"type": "string"}, role=_ROLE, created_at=_TIME),
    "KEY": _object(key_id={"type": "string"}, team={"type": "string"}, user={"type": "string"},
                   name={"type": "string"}, created_at=_TIME, revoked_at={**_TIME, "nullable": True}),
    "NEW_KEY": _object(key_id={"type": "string"}, key={"type": "string", "description": "shown only this once"},
                       team={"type": "string"}, user={"type": "string"}, name={"type": "string"},
                       created_at=_TIME),
    "PROJECT": _object(team={"type": "string"}, name={"type": "string"},
                       visibility={"type": "string", "enum": list(accounts.VISIBILITIES)},
                       description={"type": "string"}, run_count={"type": "integer", "minimum": 0},
                       created_at=_TIME),
    "NAME": _NAME_SCHEMA,
    "USER": _USER_SCHEMA,
    "ROLE": _ROLE,
    "VISIBILITY": {"type": "string", "enum": list(accounts.VISIBILITIES)},
}
_SCHEMAS["TEAMS"] = _object(teams={"type": "array", "items": _SCHEMAS["TEAM"]})
_SCHEMAS["MEMBERS"] = _object(team={"type": "string"}, members={"type": "array", "items": _SCHEMAS["MEMBER"]})
_SCHEMAS["KEYS"] = _object(team={"type": "string"}, keys={"type": "array", "items": _SCHEMAS["KEY"]})
_SCHEMAS["PROJECTS"] = _object(projects={"type": "array", "items": _SCHEMAS["PROJECT"]})


_documented = with_schemas(_SCHEMAS)


# -- helpers ---------------------------------------------------------------------------------------------


def _path_name(request: Request, param: str, what: str) -> str:
    """A team or project name from the path; one no team or project can have is simply not found."""
    value = request.path_params[param]
    if not accounts.is_name(value):
        raise not_found(f"{what} {value[:200]!r}")
    return value


def _field(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string field of a JSON body: absent is None (or 400 when required); any other type is 400."""
    value = body.get(name)
    if value is None and name not in body and not required:
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"send {name!r} as a string" if name in body else f"send {name!r} in the body",
                       details={"field": name})
    return value


async def _team_must_exist(request: Request, principal: Principal, team: str) -> None:
    """The local admin passes every check, so for it a missing team must still be a 404."""
    if principal.local_admin and await backend_of(request).run(accounts.get_team, team) is None:
        raise not_found(f"team {team}")


def _is_admin(principal: Principal) -> bool:
    return principal.local_admin or principal.role == "admin"


def _member(team: str, user: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"team": team, "user": user, "role": row["role"], "created_at": row["created_at_ms"] / 1000}


def _project(row: dict[str, Any]) -> dict[str, Any]:
    return {"team": row["team"], "name": row["project"], "visibility": row["visibility"],
            "description": row["description"], "run_count": int(row["run_count"]),
            "created_at": row["created_at"]}


# -- who am I, teams ----------------------------------------------------------------------------------------


@_documented
async def whoami(request: Request) -> Response:
    """The caller as the server sees it (also anonymous callers and share links).

    ---
    summary: Who am I
    tags: [teams]
    responses:
      200:
        description: the principal
        content: {application/json: {schema: $WHOAMI}}
      401: {description: a key or share link was sent that does not work}
    """
    principal = await authenticate(request)
    share = principal.share
    return json_response({
        "user": principal.user, "team": principal.team, "role": principal.role, "key_id": principal.key_id,
        "local_admin": principal.local_admin,
        "share": None if share is None else {"team": share.team, "project": share.project,
                                             "report_id": share.report_id, "expires_at": share.expires_at},
    })


@_documented
async def list_teams(request: Request) -> Response:
    """The teams the caller belongs to (the local admin: every team).

    ---
    summary: List teams
    tags: [teams]
    responses:
      200:
        description: the teams, with the caller's role in each
        content: {application/json: {schema: $TEAMS}}
      401: {description: "no key, or a key that does not work"}
    """
    principal = await authenticate(request)
    if principal.local_admin:
        teams = await backend_of(request).run(accounts.list_teams)
        return json_response({"teams": [{**t, "role": "admin"} for t in teams]})
    if principal.team is None:
        raise ApiError(401, "listing teams needs an API key: send 'Authorization: Bearer <key>'")
    teams = await backend_of(request).run(accounts.list_teams, [principal.team])
    return json_response({"teams": [{**t, "role": principal.role} for t in teams]})


@_documented
async def create_team(request: Request) -> Response:
    """Create a team. Only the embedded server's local admin may; otherwise use ``runstream keys create``.

    ---
    summary: Create a team
    tags: [teams]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [team]
            properties:
              team: $NAME
              display_name: {type: string, maxLength: 200}
    responses:
      201:
        description: created
        content: {application/json: {schema: $TEAM}}
      400: {description: a bad team name or body}
      401: {description: "no key, or a key that does not work"}
      403: {description: only the local admin creates teams through the API}
      409: {description: the team exists}
      413: {description: the body is too large}
    """
    principal = await authenticate(request)
    if not principal.local_admin:
        if principal.anonymous:
            raise ApiError(401, "creating a team needs the server's local admin; on a server, run "
                                "`runstream keys create --team T --user U` there")
        raise ApiError(403, "teams are created on the server with `runstream keys create --team T --user U`, "
                            "not with an API key")
    body = await json_body(request)
    team = _field(body, "team", required=True)
    display_name = _field(body, "display_name") or ""
    if not await backend_of(request).run(accounts.ensure_team, team, display_name):
        raise ApiError(409, f"team {team} exists already", code="exists")
    created = await backend_of(request).run(accounts.get_team, team)
    return json_response({**created, "role": "admin"}, status_code=201)


# -- members ------------------------------------------------------------------------------------------------


@_documented
async def list_members(request: Request) -> Response:
    """A team's members and their roles (any member may read them).

    ---
    summary: List a team's members
    tags: [teams]
    responses:
      200:
        description: the members
        content: {application/json: {schema: $MEMBERS}}
      401: {description: "no key, or a key that does not work"}
      404: {description: "no such team, or not this key's"}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "read")
    await _team_must_exist(request, principal, team)
    rows = await backend_of(request).run(accounts.list_members, team)
    return json_response({"team": team, "members": [{"team": team, **row} for row in rows]})


@_documented
async def put_member(request: Request) -> Response:
    """Add a member or change their role (team admins).

    ---
    summary: Add or change a member
    tags: [teams]
    parameters:
      - {name: user, in: path, required: true, schema: $USER}
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object, required: [role], properties: {role: $ROLE}}
    responses:
      200:
        description: the member's role changed
        content: {application/json: {schema: $MEMBER}}
      201:
        description: the member was added
        content: {application/json: {schema: $MEMBER}}
      400: {description: "a bad user name, role or body"}
      401: {description: "no key, or a key that does not work"}
      403: {description: "only the team's admins change members"}
      404: {description: "no such team, or not this key's"}
      409: {description: "that would demote the team's last admin"}
      413: {description: the body is too large}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "admin")
    await _team_must_exist(request, principal, team)
    user = accounts.check_user(request.path_params["user"])
    role = accounts.check_role(_field(await json_body(request), "role", required=True))
    backend = backend_of(request)
    current = await backend.run(accounts.member_role, team, user)
    if current is not None and current["role"] == "admin" and role != "admin" \
            and await backend.run(accounts.admin_count, team) <= 1:
        raise ApiError(409, f"{user} is the last admin of team {team}; make another member admin first",
                       code="last_admin")
    await backend.run(accounts.set_member, team, user, role)
    row = await backend.run(accounts.member_role, team, user)
    return json_response(_member(team, user, row), status_code=200 if current is not None else 201)


@_documented
async def delete_member(request: Request) -> Response:
    """Remove a member (team admins); their keys of the team are revoked at once.

    ---
    summary: Remove a member
    tags: [teams]
    parameters:
      - {name: user, in: path, required: true, schema: $USER}
    responses:
      200:
        description: removed
        content: {application/json: {schema: $MEMBER}}
      401: {description: "no key, or a key that does not work"}
      403: {description: "only the team's admins remove members"}
      404: {description: no such team or member}
      409: {description: "the member is the team's last admin"}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "admin")
    await _team_must_exist(request, principal, team)
    user = request.path_params["user"]
    backend = backend_of(request)
    current = await backend.run(accounts.member_role, team, user)
    if current is None:
        raise not_found(f"member {user[:200]!r} of team {team}")
    if current["role"] == "admin" and await backend.run(accounts.admin_count, team) <= 1:
        raise ApiError(409, f"{user} is the last admin of team {team}; make another member admin first",
                       code="last_admin")
    await backend.run(accounts.remove_member, team, user)
    return json_response(_member(team, user, current))


# -- keys ---------------------------------------------------------------------------------------------------


@_documented
async def list_keys(request: Request) -> Response:
    """A team's API keys (admins: all of them; other members: their own), never their secrets.

    ---
    summary: List API keys
    tags: [teams]
    responses:
      200:
        description: the keys, revoked ones with revoked_at
        content: {application/json: {schema: $KEYS}}
      401: {description: "no key, or a key that does not work"}
      404: {description: "no such team, or not this key's"}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "read")
    await _team_must_exist(request, principal, team)
    user = None if _is_admin(principal) else principal.user
    rows = await backend_of(request).run(accounts.list_keys, team, user)
    return json_response({"team": team, "keys": rows})


@_documented
async def create_key(request: Request) -> Response:
    """A new API key: for yourself, or (team admins) for any member. The full key is in this answer only.

    ---
    summary: Create an API key
    tags: [teams]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            properties:
              name: {type: string, maxLength: 200}
              user: $USER
    responses:
      201:
        description: the key; store it now, it is not shown again
        content: {application/json: {schema: $NEW_KEY}}
      400: {description: a bad body}
      401: {description: "no key, or a key that does not work"}
      403: {description: "only admins create keys for other members; the local admin must name the user"}
      404: {description: "no such team (or not this key's), or the user is not a member of it"}
      413: {description: the body is too large}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "read")
    await _team_must_exist(request, principal, team)
    body = await json_body(request)
    name = _field(body, "name") or ""
    user = _field(body, "user")
    user = principal.user if user is None else user
    if user is None:  # the local admin has no user, hence no key, of its own
        raise ApiError(403, "the local admin has no key of its own: send 'user', the member the key is for",
                       details={"field": "user"})
    accounts.check_user(user)
    if user != principal.user and not _is_admin(principal):
        raise ApiError(403, f"{principal.describe()} may create keys only for themselves; ask a team admin")
    backend = backend_of(request)
    if await backend.run(accounts.member_role, team, user) is None:
        # 404 as for any missing thing a request names (the user is schema-valid, just not in the team).
        raise ApiError(404, f"{user} is not a member of team {team}; add them first with "
                            f"PUT /api/v1/teams/{team}/members/{user}", code="not_a_member")
    key_id, key = await backend.run(accounts.create_key, team, user, name)
    row = await backend.run(accounts.get_key, key_id)
    return json_response({"key_id": key_id, "key": key, "team": team, "user": user, "name": name,
                          "created_at": row["created_at"]}, status_code=201)


@_documented
async def revoke_key(request: Request) -> Response:
    """Revoke a key (team admins, or the key's own user); it fails from the next request on.

    ---
    summary: Revoke an API key
    tags: [teams]
    responses:
      200:
        description: revoked (revoking a revoked key again changes nothing)
        content: {application/json: {schema: $KEY}}
      401: {description: "no key, or a key that does not work"}
      403: {description: "not an admin, and not the key's user"}
      404: {description: no such team or key}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "read")
    await _team_must_exist(request, principal, team)
    key_id = request.path_params["key_id"]
    backend = backend_of(request)
    row = await backend.run(accounts.get_key, key_id)
    if row is None or row["team"] != team:
        raise not_found(f"key {key_id[:200]!r} of team {team}")
    if row["user"] != principal.user and not _is_admin(principal):
        raise ApiError(403, f"{principal.describe()} may revoke only their own keys; ask a team admin")
    await backend.run(accounts.revoke_key, key_id)
    return json_response(await backend.run(accounts.get_key, key_id))


# -- projects -----------------------------------------------------------------------------------------------


@_documented
async def list_projects(request: Request) -> Response:
    """Projects the caller can read: their team's and every public one (anonymous: public only).

    ---
    summary: List projects
    tags: [projects]
    parameters:
      - {name: team, in: query, required: false, schema: {type: string}, description: only this team's}
    responses:
      200:
        description: the projects, by team and name
        content: {application/json: {schema: $PROJECTS}}
      401: {description: a key or share link was sent that does not work}
    """
    principal = await authenticate(request)
    only = request.query_params.get("team") or None
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


@_documented
async def create_project(request: Request) -> Response:
    """Create a project in a team (members and admins). Logging a run also creates one, private.

    ---
    summary: Create a project
    tags: [projects]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [name]
            properties:
              name: $NAME
              visibility: $VISIBILITY
              description: {type: string, maxLength: 4000}
    responses:
      201:
        description: created
        content: {application/json: {schema: $PROJECT}}
      400: {description: "a bad name, visibility, description or body"}
      401: {description: "no key, or a key that does not work"}
      403: {description: "viewers do not create projects, and only admins create public ones"}
      404: {description: "no such team, or not this key's"}
      409: {description: the project exists}
      413: {description: the body is too large}
    """
    team = _path_name(request, "team", "team")
    principal = await require_team(request, team, "write")
    body = await json_body(request)
    name = accounts.check_name("project", _field(body, "name", required=True))
    visibility = _field(body, "visibility")
    description = _field(body, "description")
    if visibility == "public" and not allows(principal, team, "admin"):
        raise ApiError(403, f"only an admin of team {team} makes a project public; create it private, "
                            "and ask an admin to change its visibility")
    backend = backend_of(request)
    if principal.local_admin:  # the embedded server's owner: the team comes into being with its first project
        await backend.run(accounts.ensure_team, team)
    if await backend.run(accounts.get_project, team, name) is not None:
        raise ApiError(409, f"project {team}/{name} exists already; change it with PATCH", code="exists")
    row = await backend.run(accounts.upsert_project, team, name, "private" if visibility is None else visibility,
                            description)
    return json_response(_project(row), status_code=201)


@_documented
async def get_project(request: Request) -> Response:
    """One project, with its visibility and run count.

    ---
    summary: Get a project
    tags: [projects]
    responses:
      200:
        description: the project
        content: {application/json: {schema: $PROJECT}}
      401: {description: a key or share link was sent that does not work}
      404: {description: "no such project, or not visible to the caller"}
    """
    team = _path_name(request, "team", "team")
    project = _path_name(request, "project", "project")
    await require_project(request, team, project, "read")
    row = await backend_of(request).run(accounts.get_project, team, project)
    if row is None:
        raise not_found(f"project {team}/{project}")
    return json_response(_project(row))


@_documented
async def patch_project(request: Request) -> Response:
    """Change a project's visibility or description (team admins).

    ---
    summary: Change a project
    tags: [projects]
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            properties:
              visibility: $VISIBILITY
              description: {type: string, maxLength: 4000}
    responses:
      200:
        description: the changed project
        content: {application/json: {schema: $PROJECT}}
      400: {description: "a bad visibility, description or body"}
      401: {description: "no key, or a key that does not work"}
      403: {description: "only the team's admins change a project"}
      404: {description: "no such project, or not visible to the caller"}
      413: {description: the body is too large}
    """
    team = _path_name(request, "team", "team")
    project = _path_name(request, "project", "project")
    await require_project(request, team, project, "admin")
    backend = backend_of(request)
    if await backend.run(accounts.get_project, team, project) is None:
        raise not_found(f"project {team}/{project}")
    body = await json_body(request)
    row = await backend.run(accounts.upsert_project, team, project, _field(body, "visibility"),
                            _field(body, "description"))
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
    Route(f"{API}/projects", list_projects, methods=["GET"]),
    Route(f"{API}/projects/{{team}}", create_project, methods=["POST"]),
    Route(f"{API}/projects/{{team}}/{{project}}", get_project, methods=["GET"]),
    Route(f"{API}/projects/{{team}}/{{project}}", patch_project, methods=["PATCH"]),
]
