"""Saved workspace views (docs/panels.md): a project's named layouts, shared with the team, one of them the default.

A view is a versioned row of ``workspace_views`` (migration 0018): a change writes the whole row
again with a larger version, a deletion writes it with ``deleted = 1``. The spec is the workspace's
state as the UI sends it, kept as JSON text and never interpreted here. Making a view the default
writes the previous default again without the mark, unless it was marked later: two writers racing
leave the later mark, never none, and reads name the one marked most recently.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.storage.accounts import check_name
from runstream.storage.errors import QueryError
from runstream.storage.versioned import VersionedTable, now_ms

MAX_NAME = 200
MAX_SPEC_BYTES = 256 << 10  # the spec's JSON text
MAX_VIEWS = 10_000

# ``deleted`` is a plain column (the table's engine has no is_deleted): reads leave deleted rows out.
_VIEWS = VersionedTable("workspace_views", ("team", "project", "view_id"), deletable=False)
_COLUMNS = """view_id, name, spec, is_default, created_by, updated_by,
    toUnixTimestamp64Milli(created_at) AS created_ms, toUnixTimestamp64Milli(updated_at) AS updated_ms, version"""
_PROJECT = "team = {team:String} AND project = {project:String} AND deleted = 0"


class SpecTooLarge(QueryError):
    """A spec of more JSON than a view keeps."""


def check_view_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise QueryError(f"name must be a non-empty string of at most {MAX_NAME} characters", field="name")
    return value


def check_spec(value: Any) -> str:
    """The spec as stored JSON text: an object of at most ``MAX_SPEC_BYTES``."""
    if not isinstance(value, dict):
        raise QueryError("spec must be a JSON object (the workspace's state)", field="spec")
    try:
        text = orjson.dumps(value)
    except TypeError as exc:
        raise QueryError(f"the spec cannot be stored as JSON: {exc}", field="spec") from None
    if len(text) > MAX_SPEC_BYTES:
        raise SpecTooLarge(
            f"the spec is {len(text):,} bytes of JSON, more than a view keeps ({MAX_SPEC_BYTES:,}); "
            "save fewer panels, or filters with fewer values",
            field="spec",
            limit=MAX_SPEC_BYTES,
        )
    return text.decode()


def _public(row: dict[str, Any], spec: bool = True) -> dict[str, Any]:
    view = {
        "view_id": row["view_id"],
        "name": row["name"],
        "is_default": bool(row["is_default"]),
        "created_by": row["created_by"],
        "updated_by": row["updated_by"],
        "created_at": row["created_ms"] / 1000,
        "updated_at": row["updated_ms"] / 1000,
    }
    if spec:
        view["spec"] = orjson.loads(row["spec"] or "{}")
    return view


def _rows(client: Client, team: str, project: str, where: str = "1", **params: Any) -> list[dict[str, Any]]:
    return list(
        client.query(
            f"SELECT {_COLUMNS} FROM workspace_views FINAL WHERE {_PROJECT} AND {where} "
            "ORDER BY lower(name), name, view_id LIMIT {n:UInt32}",
            parameters={"team": team, "project": project, "n": MAX_VIEWS, **params},
        ).named_results()
    )


def _marked(row: dict[str, Any]) -> tuple[int, int]:
    """When a row was written, to order marks: its time, then its version (unique, and later when later)."""
    return row["updated_ms"], row["version"]


def _the_default(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Of the rows marked default, the one marked last (there is one, unless two writers raced)."""
    marked = [row for row in rows if row["is_default"]]
    return max(marked, key=_marked) if marked else None


def _row(client: Client, team: str, project: str, view_id: str) -> dict[str, Any] | None:
    return _VIEWS.latest(client, _COLUMNS, team, project, view_id, where="deleted = 0")


def _write(client: Client, team: str, project: str, row: dict[str, Any], deleted: bool = False) -> None:
    values = {
        "team": team,
        "project": project,
        "view_id": row["view_id"],
        "name": row["name"],
        "spec": row["spec"],
        "is_default": int(row["is_default"]),
        "created_by": row["created_by"],
        "updated_by": row["updated_by"],
        "created_at": row["created_ms"],
        "updated_at": row["updated_ms"],
        "deleted": int(deleted),
    }
    row["version"] = _VIEWS.write(client, values, after=row.get("version"))["version"]


def _clear_default(client: Client, team: str, project: str, keep: dict[str, Any], by: str) -> None:
    """Unmark the other views marked default before ``keep`` was (a new version of each), so the project
    keeps one. A view marked later is left alone: its writer's clear unmarks ``keep``, so two writers
    racing leave the later mark, never none."""
    for row in _rows(client, team, project, "is_default = 1 AND view_id != {keep:String}", keep=keep["view_id"]):
        if _marked(row) > _marked(keep):
            continue
        row.update(is_default=0, updated_by=by, updated_ms=max(now_ms(), row["updated_ms"]))
        _write(client, team, project, row)


def list_views(client: Client, team: str, project: str) -> list[dict[str, Any]]:
    """The project's views by name, without their specs; only the default one is marked so."""
    rows = _rows(client, team, project)
    default = _the_default(rows)
    return [{**_public(row, spec=False), "is_default": row is default} for row in rows]


def get_view(client: Client, team: str, project: str, view_id: str) -> dict[str, Any] | None:
    """The view with its spec, or None when it does not exist or was deleted."""
    row = _row(client, team, project, view_id)
    if row is None:
        return None
    if row["is_default"]:  # unless it lost a race: another view was marked default later
        default = _the_default(_rows(client, team, project, "is_default = 1"))
        row["is_default"] = default is not None and default["view_id"] == view_id
    return _public(row)


def default_view(client: Client, team: str, project: str) -> dict[str, Any] | None:
    """The project's default view with its spec, or None when it has none."""
    default = _the_default(_rows(client, team, project, "is_default = 1"))
    return _public(default) if default else None


def create_view(
    client: Client, team: str, project: str, name: str, spec: dict[str, Any], default: bool = False, by: str = ""
) -> dict[str, Any]:
    check_name("team", team)
    check_name("project", project)
    now = now_ms()
    row: dict[str, Any] = {
        "view_id": secrets.token_hex(8),
        "name": check_view_name(name),
        "spec": check_spec(spec),
        "is_default": int(default),
        "created_by": by,
        "updated_by": by,
        "created_ms": now,
        "updated_ms": now,
    }
    _write(client, team, project, row)
    if default:
        _clear_default(client, team, project, row, by)
    return _public(row)


def update_view(
    client: Client, team: str, project: str, view_id: str, changes: dict[str, Any], by: str = ""
) -> dict[str, Any] | None:
    """Change name, spec or default (the keys present in ``changes``); None when the view is missing."""
    row = _row(client, team, project, view_id)
    if row is None:
        return None
    if "name" in changes:
        row["name"] = check_view_name(changes["name"])
    if "spec" in changes:
        row["spec"] = check_spec(changes["spec"])
    if "default" in changes:
        row["is_default"] = int(bool(changes["default"]))
    row.update(updated_by=by, updated_ms=max(now_ms(), row["updated_ms"]))
    _write(client, team, project, row)
    if changes.get("default"):
        _clear_default(client, team, project, row, by)
    return _public(row)


def delete_view(client: Client, team: str, project: str, view_id: str) -> bool:
    """Delete the view (the project has no default after deleting it); whether it existed."""
    row = _row(client, team, project, view_id)
    if row is None:
        return False
    row["updated_ms"] = max(now_ms(), row["updated_ms"])
    _write(client, team, project, row, deleted=True)
    return True
