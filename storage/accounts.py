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
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from clickhouse_connect.driver.client import Client

from runstream.names import NAME_RULE, USER_RULE, is_name, is_user
from runstream.storage.errors import QueryError
from runstream.storage.versioned import VersionedTable, now_ms
from runstream.storage.writer import insert_row

Role = Literal["viewer", "member", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "member", "admin")
#: What a key may do at most (its member's role still caps it): write runs and files, read, or everything.
Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
VISIBILITIES = ("private", "public")
_KEY = re.compile(r"rs_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})\Z")
MAX_DESCRIPTION = 4000
MAX_DISPLAY_NAME = 200
MAX_KEY_NAME = 200

# -- changes, as they are written -------------------------------------------------------------
#
# Access checks read members, keys and project visibility from memory (``api/keyring.py``).
# A write through a client is announced to that client's listeners as a change record: the
# whole record with its version, so applying records in any order, twice, or after a fresh
# read from the tables (the source of truth) always ends at the latest version.

Change = dict[str, Any]
_listeners: dict[tuple[str, str], list[Callable[[Change], None]]] = {}
_listeners_lock = threading.Lock()


def database_of(client: Client) -> tuple[str, str]:
    """(where, database) of a client: every client of this process on that database (a server may
    hand each thread its own) announces its writes to the same listeners."""
    where = getattr(client, "url", None) or getattr(client, "uri", None) or f"client {id(client)}"
    return str(where), str(getattr(client, "database", "") or "")


def listen(client: Client, listener: Callable[[Change], None]) -> Callable[[], None]:
    """Call ``listener(change)`` after each write of a member, key or project in this process to
    ``client``'s database (in the writing thread); returns the function that stops it."""
    database = database_of(client)
    with _listeners_lock:
        _listeners.setdefault(database, []).append(listener)

    def stop() -> None:
        with _listeners_lock:
            found = _listeners.get(database, [])
            if listener in found:
                found.remove(listener)
            if not found:
                _listeners.pop(database, None)

    return stop


def _announce(client: Client, change: Change) -> None:
    if not _listeners:
        return
    with _listeners_lock:
        listeners = list(_listeners.get(database_of(client), ()))
    for listener in listeners:
        listener(change)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # FixedString comes back as bytes


def member_change(team: str, user: str, role: str | None, version: int) -> Change:
    """A member's record (``role`` None: removed)."""
    return {"table": "members", "team": team, "user": user, "role": role, "version": int(version)}


def key_change(
    key_id: str, secret_sha256: Any, team: str, user: str, scope: str, revoked: bool, version: int
) -> Change:
    return {
        "table": "api_keys",
        "key_id": key_id,
        "secret_sha256": _text(secret_sha256),
        "team": team,
        "user": user,
        "scope": scope,
        "revoked": bool(revoked),
        "version": int(version),
    }


def project_change(team: str, project: str, visibility: str | None, version: int) -> Change:
    """A project row's record (``visibility`` None: its row was deleted)."""
    return {"table": "projects", "team": team, "project": project, "visibility": visibility, "version": int(version)}


def _change_of(table: str, values: Mapping[str, Any], deleted: bool) -> Change:
    if table == "members":
        return member_change(values["team"], values["user"], None if deleted else values["role"], values["version"])
    if table == "projects":
        visibility = None if deleted else values["visibility"]
        return project_change(values["team"], values["project"], visibility, values["version"])
    return key_change(
        values["key_id"],
        values["secret_sha256"],
        values["team"],
        values["user"],
        values.get("scope", "admin"),
        values["revoked_at"] is not None,
        values["version"],
    )


@dataclass(frozen=True)
class _AnnouncedTable(VersionedTable):
    """A versioned table whose writes are announced (``listen``) once stored."""

    def write(
        self, client: Client, row: Mapping[str, Any], after: int | None = None, deleted: bool = False
    ) -> dict[str, Any]:
        values = super().write(client, row, after, deleted)
        _announce(client, _change_of(self.name, values, deleted))
        return values


_TEAMS = VersionedTable("teams", ("team",))
_MEMBERS = _AnnouncedTable("members", ("team", "user"))
_PROJECTS = _AnnouncedTable("projects", ("team", "project"))
_KEYS = _AnnouncedTable("api_keys", ("key_id",), deletable=False)  # a key is revoked, never deleted


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


def check_scope(value: Any) -> Scope:
    if value not in SCOPES:
        raise QueryError(f"scope must be one of {', '.join(SCOPES)}", field="scope")
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


class LastAdminError(Exception):
    """The change would leave the team without an admin (the API answers 409)."""

    def __init__(self, team: str, user: str, raced: bool = False) -> None:
        why = "another admin was demoted or removed at the same moment; " if raced else ""
        super().__init__(f"{user} is the last admin of team {team}; {why}make another member admin first", team, user)
        self.team = team
        self.user = user


# Changes that can take a team's admin away run one at a time per team in this process (the
# embedded server, a CLI command). API replicas of a cluster do not share a lock: there each
# change is written, then checked, and undone when no admin is left (``_undo_if_no_admin``).
_TEAM_LOCKS: dict[str, threading.Lock] = {}
_TEAM_LOCKS_GUARD = threading.Lock()


def _team_lock(team: str) -> threading.Lock:
    with _TEAM_LOCKS_GUARD:
        return _TEAM_LOCKS.setdefault(team, threading.Lock())


def set_member(client: Client, team: str, user: str, role: Role) -> dict[str, Any]:
    """Add a member or change their role: ``{"team", "user", "role", "previous"}`` (``previous``: the
    role before, None for a new member). Demoting the team's last admin raises LastAdminError."""
    check_name("team", team)
    check_user(user)
    check_role(role)
    with _team_lock(team):
        existing = member_role(client, team, user)
        demoting = existing is not None and existing["role"] == "admin" and role != "admin"
        if demoting and admin_count(client, team) <= 1:
            raise LastAdminError(team, user)
        created = now_ms() if existing is None else existing["created_at_ms"]
        _MEMBERS.write(
            client,
            {"team": team, "user": user, "role": role, "created_at": created},
            after=existing["version"] if existing else None,
        )
        if demoting:
            assert existing is not None
            _undo_if_no_admin(client, team, user, existing, written_role=role, written_deleted=False)
    return {"team": team, "user": user, "role": role, "previous": existing["role"] if existing else None}


def remove_member(client: Client, team: str, user: str) -> bool:
    """Remove a member and revoke their keys of the team; whether they were one.

    The keys are revoked, not just left unusable: adding the user back later must not
    bring old (perhaps leaked) keys back to life. Removing the team's last admin raises
    LastAdminError.
    """
    with _team_lock(team):
        existing = member_role(client, team, user)
        if existing is None:
            return False
        if existing["role"] == "admin" and admin_count(client, team) <= 1:
            raise LastAdminError(team, user)
        _MEMBERS.write(
            client,
            {"team": team, "user": user, "role": existing["role"], "created_at": existing["created_at_ms"]},
            after=existing["version"],
            deleted=True,
        )
        if existing["role"] == "admin":
            _undo_if_no_admin(client, team, user, existing, written_role=existing["role"], written_deleted=True)
    for key in list_keys(client, team, user):
        if key["revoked_at"] is None:
            revoke_key(client, key["key_id"])
    return True


def _undo_if_no_admin(
    client: Client, team: str, user: str, previous: dict[str, Any], written_role: str, written_deleted: bool
) -> None:
    """After demoting or removing an admin, checked once the write is visible: when no admin is left, a
    change on another replica took the other one at the same moment. Put the member's previous row
    back (unless someone changed it again since) and refuse. Of two such changes, at least one sees the
    other's write, so the team never ends without an admin; both may be refused, and a retry then passes.
    """
    if admin_count(client, team) > 0:
        return
    rows = client.query(
        "SELECT toString(role), is_deleted, version FROM members WHERE team = {t:String} AND user = {u:String} "
        "ORDER BY version DESC LIMIT 1",
        parameters={"t": team, "u": user},
    ).result_rows
    if rows and (rows[0][0], bool(rows[0][1])) == (written_role, written_deleted):  # still the row written here
        _MEMBERS.write(
            client,
            {"team": team, "user": user, "role": previous["role"], "created_at": previous["created_at_ms"]},
            after=rows[0][2],
        )
    raise LastAdminError(team, user, raced=True)


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
    """How many admins the team has now (set_member and remove_member keep it above zero)."""
    return int(
        client.query(
            "SELECT count() FROM members FINAL WHERE team = {t:String} AND role = 'admin'", parameters={"t": team}
        ).result_rows[0][0]
    )


# -- API keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyOwner:
    """Whom a valid key speaks for: a member of one team, with their current role, and the key's scope."""

    key_id: str
    team: str
    user: str
    role: Role
    scope: Scope = "admin"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(client: Client, team: str, user: str, name: str = "", scope: Scope = "admin") -> tuple[str, str]:
    """A new key for a member of ``team``: (key_id, the full key, shown only now)."""
    check_name("team", team)
    check_user(user)
    check_scope(scope)
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
            "scope": scope,
            "created_at": now_ms(),
            "revoked_at": None,
        },
    )
    return key_id, f"rs_{key_id}_{secret}"


def resolve_key(client: Client, raw: str) -> KeyOwner | None:
    """The owner of a key that is well-formed, known, not revoked and whose user is still a member; else None.

    One query, not cached. The API checks keys from memory (``api/keyring.py``); this is the
    direct check, for tools and for when that copy cannot be trusted to be current.
    """
    parsed = parse_key(raw)
    if parsed is None:
        return None
    key_id, secret = parsed
    rows = client.query(
        "SELECT k.secret_sha256, k.team, k.user, toString(m.role), toString(k.scope) FROM api_keys AS k FINAL "
        "INNER JOIN (SELECT team, user, role FROM members FINAL) AS m ON m.team = k.team AND m.user = k.user "
        "WHERE k.key_id = {k:String} AND k.revoked_at IS NULL",
        parameters={"k": key_id},
    ).result_rows
    if not rows:
        return None
    digest, team, user, role, scope = rows[0]
    if not hmac.compare_digest(_text(digest), _digest(secret)):
        return None
    return KeyOwner(key_id, team, user, role, scope)


def parse_key(raw: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY.match(raw)
    return (match[1], match[2]) if match else None


def list_keys(client: Client, team: str, user: str | None = None) -> list[dict[str, Any]]:
    """A team's keys (or one member's), never their secrets."""
    where, params = "team = {t:String}", {"t": team}
    if user is not None:
        where, params = where + " AND user = {u:String}", params | {"u": user}
    return list(
        client.query(
            "SELECT key_id, team, user, name, toString(scope) AS scope, "
            "toUnixTimestamp64Milli(created_at) / 1000 AS created_at, "
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
        "scope": row["scope"],
        "created_at": row["created_ms"] / 1000,
        "revoked_at": None if row["revoked_ms"] is None else row["revoked_ms"] / 1000,
    }


def _key_row(client: Client, key_id: str) -> dict[str, Any] | None:
    """The whole stored row (with the hash, and times in integer milliseconds so a rewrite keeps them exact)."""
    return _KEYS.latest(
        client,
        "key_id, team, user, name, toString(scope) AS scope, secret_sha256, toUnixTimestamp64Milli(created_at) AS "
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
            "scope": row["scope"],
            "created_at": row["created_ms"],
            "revoked_at": now_ms(),
        },
        after=row["version"],
    )
    return True


# -- projects -----------------------------------------------------------------------------

# Projects exist once they have a row (created through the API) or runs (created by logging).
# One without a row is private; the row's visibility and description win over the runs side. Deleted and
# moved runs (tombstoned, storage/deletion.py) do not count, even while their rows are being removed.
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
    FROM runs FINAL WHERE {where}
        AND (team, project, run_id) NOT IN (SELECT team, project, run_id FROM run_tombstones WHERE {where})
    GROUP BY team, project
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


# -- what access checks hold in memory ---------------------------------------------------------

_MEMBER_ROWS = (
    "SELECT team, user, argMax(toString(role), version), argMax(is_deleted, version), max(version) "
    "FROM members {where} GROUP BY team, user {having}"
)
_KEY_ROWS = (
    "SELECT key_id, argMax(secret_sha256, version), argMax(team, version), argMax(user, version), "
    "argMax(toString(scope), version), argMax(isNotNull(revoked_at), version), max(version) "
    "FROM api_keys {where} GROUP BY key_id {having}"
)
_PROJECT_ROWS = (
    "SELECT team, project, argMax(toString(visibility), version), argMax(is_deleted, version), max(version) "
    "FROM projects {where} GROUP BY team, project {having}"
)


def access_records(client: Client, since: int | None = None) -> list[Change]:
    """Every member, key and project row at its latest version, removed ones as removed (only rows
    changed after version ``since``, when given): the change records that rebuild what access checks
    need (``api/keyring.py`` loads them at start)."""
    having = "" if since is None else "HAVING max(version) > {since:UInt64}"
    params = {} if since is None else {"since": max(0, since)}

    def rows(sql: str, **parts: str) -> list[Any]:
        return list(client.query(sql.format(having=having, **parts), parameters=params).result_rows)

    found = [
        member_change(team, user, None if deleted else role, version)
        for team, user, role, deleted, version in rows(_MEMBER_ROWS, where="")
    ]
    found += [key_change(*row) for row in rows(_KEY_ROWS, where="")]
    found += [
        project_change(team, project, None if deleted else visibility, version)
        for team, project, visibility, deleted, version in rows(_PROJECT_ROWS, where="")
    ]
    return found


#: The columns that name one row of each table access checks hold.
ROW_IDS: dict[str, tuple[str, ...]] = {
    "api_keys": ("key_id",),
    "members": ("team", "user"),
    "projects": ("team", "project"),
}


def row_records(client: Client, table: str, ids: tuple[str, ...]) -> list[Change]:
    """One row's record as stored now (``ROW_IDS[table]`` names it; none when it does not exist)."""
    columns = ROW_IDS[table]
    if len(ids) != len(columns):
        raise TypeError(f"{table} rows are named by {', '.join(columns)}")
    where = "WHERE " + " AND ".join(f"{column} = {{{column}:String}}" for column in columns)
    sql = {"api_keys": _KEY_ROWS, "members": _MEMBER_ROWS, "projects": _PROJECT_ROWS}[table]
    found = client.query(sql.format(where=where, having=""), parameters=dict(zip(columns, ids))).result_rows
    if table == "api_keys":
        return [key_change(*row) for row in found]
    if table == "members":
        return [member_change(team, user, None if deleted else role, v) for team, user, role, deleted, v in found]
    return [project_change(team, project, None if deleted else vis, v) for team, project, vis, deleted, v in found]


def key_records(client: Client, key_id: str) -> list[Change]:
    """One key's record and its member's (none for an unknown key): a key made moments ago elsewhere."""
    keys = client.query(
        _KEY_ROWS.format(where="WHERE key_id = {k:String}", having=""), parameters={"k": key_id}
    ).result_rows
    if not keys:
        return []
    key = key_change(*keys[0])
    members = client.query(
        _MEMBER_ROWS.format(where="WHERE team = {t:String} AND user = {u:String}", having=""),
        parameters={"t": key["team"], "u": key["user"]},
    ).result_rows
    return [key] + [
        member_change(team, user, None if deleted else role, version) for team, user, role, deleted, version in members
    ]
