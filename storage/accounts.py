"""Teams, members, projects and API keys: the small tables access control reads.

Every record is a versioned row (``storage.versioned``): a write is visible to
the next read on any replica. The API decides who may call these; this module
only validates shapes and keeps SQL parameterized.

An API key is ``rs_<key_id>_<secret>``: ``key_id`` is public and finds the row,
only the secret's SHA-256 is stored, and the key is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from runstream.names import NAME_RULE, USER_RULE, is_name, is_user
from runstream.storage.errors import QueryError
from runstream.storage.versioned import VersionedTable, now_ms
from runstream.storage.writer import insert_row

Role = Literal["viewer", "member", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "member", "admin")
VISIBILITIES = ("private", "public")
_KEY = re.compile(r"rs_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})\Z")
MAX_DESCRIPTION = 4000
MAX_DISPLAY_NAME = 200
MAX_KEY_NAME = 200

_TEAMS = VersionedTable("teams", ("team",))
_MEMBERS = VersionedTable("members", ("team", "user"))
_PROJECTS = VersionedTable("projects", ("team", "project"))
_KEYS = VersionedTable("api_keys", ("key_id",), deletable=False)  # a key is revoked, never deleted


def check_name(what: str, value: Any) -> str:
    """A team or project name (``runstream.names``), or a QueryError saying what one is."""
    if not is_name(value):
        raise QueryError(f"{what} must be {NAME_RULE}", field=what, value=value if isinstance(value, str) else None)
    return value


def check_user(value: Any) -> str:
    if not is_user(value):
        raise QueryError(f"user must be {USER_RULE}", field="user")
    return value


def check_role(value: Any) -> Role:
    if value not in ROLES:
        raise QueryError(f"role must be one of {', '.join(ROLES)}", field="role")
    return value


# -- teams and members --------------------------------------------------------------------


def ensure_team(client: Client, team: str, display_name: str = "") -> bool:
    """Create the team unless it exists; whether it was created."""
    check_name("team", team)
    if not isinstance(display_name, str) or len(display_name) > MAX_DISPLAY_NAME:
        raise QueryError(
            f"display_name must be a string of at most {MAX_DISPLAY_NAME} characters", field="display_name"
        )
    if get_team(client, team) is not None:
        return False
    _TEAMS.write(client, {"team": team, "display_name": display_name or team, "created_at": now_ms()})
    return True


def get_team(client: Client, team: str) -> dict[str, Any] | None:
    return _TEAMS.latest(client, "team, display_name, toUnixTimestamp64Milli(created_at) / 1000 AS created_at", team)


def list_teams(client: Client, teams: list[str] | None = None) -> list[dict[str, Any]]:
    """All teams, or those named."""
    where, params = ("WHERE team IN {teams:Array(String)}", {"teams": teams}) if teams is not None else ("", {})
    return list(
        client.query(
            f"SELECT team, display_name, toUnixTimestamp64Milli(created_at) / 1000 AS created_at FROM teams FINAL {where} "
            "ORDER BY team",
            parameters=params,
        ).named_results()
    )


def set_member(client: Client, team: str, user: str, role: Role) -> dict[str, Any]:
    check_name("team", team)
    check_user(user)
    check_role(role)
    existing = member_role(client, team, user)
    created = now_ms() if existing is None else existing["created_at_ms"]
    _MEMBERS.write(
        client,
        {"team": team, "user": user, "role": role, "created_at": created},
        after=existing["version"] if existing else None,
    )
    return {"team": team, "user": user, "role": role}


def remove_member(client: Client, team: str, user: str) -> bool:
    """Remove a member and revoke their keys of the team; whether they were one.

    The keys are revoked, not just left unusable: adding the user back later must not
    bring old (perhaps leaked) keys back to life.
    """
    existing = member_role(client, team, user)
    if existing is None:
        return False
    _MEMBERS.write(
        client,
        {"team": team, "user": user, "role": existing["role"], "created_at": existing["created_at_ms"]},
        after=existing["version"],
        deleted=True,
    )
    for key in list_keys(client, team, user):
        if key["revoked_at"] is None:
            revoke_key(client, key["key_id"])
    return True


def member_role(client: Client, team: str, user: str) -> dict[str, Any] | None:
    return _MEMBERS.latest(client, "role, toUnixTimestamp64Milli(created_at) AS created_at_ms, version", team, user)


def list_members(client: Client, team: str) -> list[dict[str, Any]]:
    return list(
        client.query(
            "SELECT user, role, toUnixTimestamp64Milli(created_at) / 1000 AS created_at FROM members FINAL "
            "WHERE team = {t:String} ORDER BY user",
            parameters={"t": team},
        ).named_results()
    )


def admin_count(client: Client, team: str) -> int:
    return int(
        client.query(
            "SELECT count() FROM members FINAL WHERE team = {t:String} AND role = 'admin'", parameters={"t": team}
        ).result_rows[0][0]
    )


# -- API keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyOwner:
    """Whom a valid key speaks for: a member of one team, with their current role."""

    key_id: str
    team: str
    user: str
    role: Role


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(client: Client, team: str, user: str, name: str = "") -> tuple[str, str]:
    """A new key for a member of ``team``: (key_id, the full key, shown only now)."""
    check_name("team", team)
    check_user(user)
    if not isinstance(name, str) or len(name) > MAX_KEY_NAME:
        raise QueryError(f"a key's name is a string of at most {MAX_KEY_NAME} characters", field="name")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    _KEYS.write(
        client,
        {
            "key_id": key_id,
            "secret_sha256": _digest(secret),
            "team": team,
            "user": user,
            "name": name,
            "created_at": now_ms(),
            "revoked_at": None,
        },
    )
    return key_id, f"rs_{key_id}_{secret}"


def resolve_key(client: Client, raw: str) -> KeyOwner | None:
    """The owner of a key that is well-formed, known, not revoked and whose user is still a member; else None.

    One query, not cached: a revoked key or a removed member fails on the next request.
    """
    match = _KEY.match(raw)
    if not match:
        return None
    key_id, secret = match.groups()
    rows = client.query(
        "SELECT k.secret_sha256, k.team, k.user, toString(m.role) FROM api_keys AS k FINAL "
        "INNER JOIN (SELECT team, user, role FROM members FINAL) AS m ON m.team = k.team AND m.user = k.user "
        "WHERE k.key_id = {k:String} AND k.revoked_at IS NULL",
        parameters={"k": key_id},
    ).result_rows
    if not rows:
        return None
    digest, team, user, role = rows[0]
    stored = digest.decode() if isinstance(digest, bytes) else digest  # FixedString comes back as bytes
    if not hmac.compare_digest(stored, _digest(secret)):
        return None
    return KeyOwner(key_id, team, user, role)


def list_keys(client: Client, team: str, user: str | None = None) -> list[dict[str, Any]]:
    """A team's keys (or one member's), never their secrets."""
    where, params = "team = {t:String}", {"t": team}
    if user is not None:
        where, params = where + " AND user = {u:String}", params | {"u": user}
    return list(
        client.query(
            "SELECT key_id, team, user, name, toUnixTimestamp64Milli(created_at) / 1000 AS created_at, "
            "toUnixTimestamp64Milli(revoked_at) / 1000 AS revoked_at "
            f"FROM api_keys FINAL WHERE {where} ORDER BY created_at, key_id",
            parameters=params,
        ).named_results()
    )


def get_key(client: Client, key_id: str) -> dict[str, Any] | None:
    """A key as listings show it (never its secret's hash), or None."""
    row = _key_row(client, key_id)
    if row is None:
        return None
    return {
        "key_id": row["key_id"],
        "team": row["team"],
        "user": row["user"],
        "name": row["name"],
        "created_at": row["created_ms"] / 1000,
        "revoked_at": None if row["revoked_ms"] is None else row["revoked_ms"] / 1000,
    }


def _key_row(client: Client, key_id: str) -> dict[str, Any] | None:
    """The whole stored row (with the hash, and times in integer milliseconds so a rewrite keeps them exact)."""
    return _KEYS.latest(
        client,
        "key_id, team, user, name, secret_sha256, toUnixTimestamp64Milli(created_at) AS "
        "created_ms, toUnixTimestamp64Milli(revoked_at) AS revoked_ms, version",
        key_id,
    )


def revoke_key(client: Client, key_id: str) -> bool:
    """Revoke a key for good; whether it was live."""
    row = _key_row(client, key_id)
    if row is None or row["revoked_ms"] is not None:
        return False
    _KEYS.write(
        client,
        {
            "key_id": key_id,
            "secret_sha256": row["secret_sha256"],
            "team": row["team"],
            "user": row["user"],
            "name": row["name"],
            "created_at": row["created_ms"],
            "revoked_at": now_ms(),
        },
        after=row["version"],
    )
    return True


# -- projects -----------------------------------------------------------------------------

# Projects exist once they have a row (created through the API) or runs (created by logging).
# One without a row is private; the row's visibility and description win over the runs side.
_PROJECTS_SQL = """
SELECT team, project,
       if(countIf(runs = 0) > 0, anyIf(visibility, runs = 0), 'private') AS visibility,
       anyIf(description, runs = 0) AS description,
       min(created_ms) / 1000 AS created_at, sum(runs) AS run_count
FROM (
    SELECT team, project, toString(visibility) AS visibility, description,
           toUnixTimestamp64Milli(created_at) AS created_ms, 0 AS runs
    FROM projects FINAL WHERE {where}
    UNION ALL
    SELECT team, project, 'private', '', toUnixTimestamp64Milli(min(created_at)), count()
    FROM runs FINAL WHERE {where} GROUP BY team, project
)
GROUP BY team, project
ORDER BY team, project"""


def list_projects(client: Client, teams: list[str] | None, public: bool) -> list[dict[str, Any]]:
    """Projects of ``teams`` (every team when None), plus every public project when ``public``."""
    sql = _PROJECTS_SQL
    if teams is None:
        rows = client.query(sql.format(where="1"))
    else:
        rows = client.query(sql.format(where="team IN {teams:Array(String)}"), parameters={"teams": teams})
    found = list(rows.named_results())
    if public and teams is not None:
        seen = {(r["team"], r["project"]) for r in found}
        public_rows = client.query(
            "SELECT team, project FROM projects FINAL WHERE visibility = 'public' AND team NOT IN {teams:Array(String)}",
            parameters={"teams": teams},
        ).result_rows
        others = sorted({t for t, _ in public_rows})
        if others:
            more = client.query(sql.format(where="team IN {teams:Array(String)}"), parameters={"teams": others})
            found += [
                r for r in more.named_results() if r["visibility"] == "public" and (r["team"], r["project"]) not in seen
            ]
    return sorted(found, key=lambda r: (r["team"], r["project"]))


def get_project(client: Client, team: str, project: str) -> dict[str, Any] | None:
    """A project with its visibility and run count, or None when it has neither a row nor runs."""
    rows = list(
        client.query(
            _PROJECTS_SQL.format(where="team = {t:String} AND project = {p:String}"),
            parameters={"t": team, "p": project},
        ).named_results()
    )
    return rows[0] if rows else None


def project_visibility(client: Client, team: str, project: str) -> str:
    """'public' or 'private' (also for a project that does not exist): what access checks need, in one cheap query."""
    rows = client.query(
        "SELECT toString(visibility) FROM projects FINAL WHERE team = {t:String} AND project = {p:String}",
        parameters={"t": team, "p": project},
    ).result_rows
    return rows[0][0] if rows else "private"


def upsert_project(
    client: Client, team: str, project: str, visibility: str | None = None, description: str | None = None
) -> dict[str, Any]:
    """Create a project or change its visibility or description (unchanged when None)."""
    check_name("team", team)
    check_name("project", project)
    if visibility is not None and visibility not in VISIBILITIES:
        raise QueryError("visibility must be 'private' or 'public'", field="visibility")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
        raise QueryError(f"description must be a string of at most {MAX_DESCRIPTION} characters", field="description")
    current = get_project(client, team, project)
    stored = _PROJECTS.latest(client, "version", team, project)  # None for a project known only by its runs
    row = {
        "team": team,
        "project": project,
        "visibility": visibility or (current["visibility"] if current else "private"),
        "description": description if description is not None else (current["description"] if current else ""),
        # round, not int: created_at is a float of seconds, and truncating would move it back 1 ms per edit
        "created_at": round(current["created_at"] * 1000) if current else now_ms(),
    }
    _PROJECTS.write(client, row, after=stored["version"] if stored else None)
    return get_project(client, team, project) or {}


# -- server secrets -------------------------------------------------------------------------


def server_secrets(client: Client, name: str) -> list[bytes]:
    """The random secrets of ``name`` every replica shares, the one to sign with first; created on first use.

    Two replicas starting at once may each create one. Both are kept: everyone signs
    with the earliest and accepts either, so no link made in the race stops working.
    """
    sql = "SELECT value FROM server_secrets WHERE name = {n:String} ORDER BY created_at, value"
    rows = client.query(sql, parameters={"n": name}).result_rows
    if not rows:
        insert_row(
            client,
            "server_secrets",
            {"name": name, "value": secrets.token_hex(32), "created_at": time.time_ns() // 1000},
        )
        rows = client.query(sql, parameters={"n": name}).result_rows
    return [bytes.fromhex(value) for (value,) in rows]
