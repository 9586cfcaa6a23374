"""The audit log: who changed access to a team's data, when, from where, and what.

Each entry is one row of ``audit_log`` (migration 0013), a plain MergeTree table
that is only ever appended to: this module inserts and reads, and nothing in
runstream updates or deletes a row (no ``ALTER``, no ``DELETE``, no endpoint
that changes it). Recording goes through ``record``, which both the API
(``api/audit.py``) and the ``runstream keys`` commands call, so a change made
either way is audited the same.

An entry is written right after the change it records succeeded. A change whose
entry then fails to be written has still happened; the caller sees the error.
"""

from __future__ import annotations

import getpass
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from clickhouse_connect.driver.client import Client

from runstream.storage.errors import QueryError
from runstream.storage.writer import insert_row

ActorKind = Literal["key", "local_admin", "cli", "anonymous"]

#: Every action an entry can record (docs/api.md, "Audit log", says what each one's target names).
Action = Literal[
    "team.create",
    "member.add",
    "member.role",
    "member.remove",
    "key.create",
    "key.revoke",
    "project.create",
    "project.visibility",
    "project.delete",
    "report.delete",
    "share.create",
    "share.revoke",
    "run.delete",
    "run.move",
    "rule.create",
    "rule.delete",
    "artifact.alias",
    "artifact.unalias",
    "view.delete",
    "sweep.state",
]
ACTIONS: tuple[str, ...] = get_args(Action)
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_MAX_TEXT = 512  # a user agent or forwarded-for chain longer than this is cut: an entry stays small
_CURSOR = re.compile(r"(\d{1,19})\.([0-9a-f]{16})\Z")


@dataclass(frozen=True)
class Actor:
    """Who made a change, and from where.

    ``kind``: an API ``key`` (``user``, ``key_id``), the embedded server's ``local_admin``, or the
    ``cli`` (``runstream keys`` on the server: ``user`` is the OS account). ``client_ip`` is the
    connection's peer; ``forwarded_for`` is what a proxy's ``X-Forwarded-For``/``Forwarded``
    claimed, kept as claimed (unverified), since behind a proxy the peer is the proxy.
    """

    kind: ActorKind
    user: str = ""
    key_id: str = ""
    client_ip: str = ""
    forwarded_for: str = ""
    user_agent: str = ""


def cli_actor() -> Actor:
    """The actor of a ``runstream`` command: the OS account and host it runs on."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's bare uid)
        user = ""
    return Actor("cli", user=user, user_agent=f"runstream CLI on {socket.gethostname()}")


def record(
    client: Client, team: str, action: str, actor: Actor, target: str = "", details: dict[str, Any] | None = None
) -> str:
    """Append one entry for ``team``; its id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to storage.audit.Action")
    entry_id = secrets.token_hex(8)
    insert_row(
        client,
        "audit_log",
        {
            "team": team,
            "at": time.time_ns() // 1000,  # DateTime64(6): integer microseconds
            "entry_id": entry_id,
            "action": action,
            "actor_kind": actor.kind,
            "actor_user": actor.user[:_MAX_TEXT],
            "actor_key": actor.key_id[:_MAX_TEXT],
            "client_ip": actor.client_ip[:_MAX_TEXT],
            "forwarded_for": actor.forwarded_for[:_MAX_TEXT],
            "user_agent": actor.user_agent[:_MAX_TEXT],
            "target": target[:_MAX_TEXT],
            "details": orjson.dumps(details or {}).decode(),
        },
    )
    return entry_id


def _parse_cursor(cursor: str) -> tuple[int, str]:
    match = _CURSOR.match(cursor)
    if not match:
        raise QueryError("cursor must be the next_cursor of the previous page", field="cursor")
    return int(match.group(1)), match.group(2)


def list_entries(
    client: Client, team: str, action: str | None = None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> dict[str, Any]:
    """A page of ``team``'s entries, newest first: ``{"entries", "next_cursor"}`` (None on the last page)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be a whole number from 1 to {MAX_LIMIT}", field="limit")
    where = "team = {team:String}"
    params: dict[str, Any] = {"team": team, "limit": limit + 1}
    if action is not None:
        if action not in ACTIONS:
            raise QueryError(f"action must be one of {', '.join(ACTIONS)}", field="action")
        where += " AND action = {action:String}"
        params["action"] = action
    if cursor is not None:
        params["at"], params["entry"] = _parse_cursor(cursor)
        where += " AND (toUnixTimestamp64Micro(at), entry_id) < ({at:Int64}, {entry:String})"
    rows = list(
        client.query(
            "SELECT toUnixTimestamp64Micro(at) AS at_us, entry_id, toString(action) AS action, "
            "toString(actor_kind) AS actor_kind, actor_user, actor_key, client_ip, forwarded_for, user_agent, "
            f"target, details FROM audit_log WHERE {where} "
            "ORDER BY at DESC, entry_id DESC LIMIT {limit:UInt64}",
            parameters=params,
        ).named_results()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "entries": [_entry(team, row) for row in rows],
        "next_cursor": f"{rows[-1]['at_us']}.{rows[-1]['entry_id']}" if more else None,
    }


def _entry(team: str, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["entry_id"],
        "team": team,
        "at": row["at_us"] / 1_000_000,
        "action": row["action"],
        "actor": {"kind": row["actor_kind"], "user": row["actor_user"] or None, "key_id": row["actor_key"] or None},
        "client_ip": row["client_ip"] or None,
        "forwarded_for": row["forwarded_for"] or None,
        "user_agent": row["user_agent"] or None,
        "target": row["target"],
        "details": orjson.loads(row["details"] or "{}"),
    }
