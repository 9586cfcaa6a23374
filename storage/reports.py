"""Reports: a project's markdown notes with chart panels (JSON specs), and the version of their share links.

A report is a versioned row (``storage.versioned``): a write is visible to the
next read on any replica. Share links are signed tokens that name ``share_version``:
bumping it revokes every link made before. Revocations and deletions are also
appended to ``report_links``, where the largest version and any deletion win,
so an edit racing them (it rewrites the row it read) cannot undo them. The API
decides who may call these; this module validates shapes and keeps SQL
parameterized.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.storage.accounts import check_name
from runstream.storage.errors import QueryError
from runstream.storage.versioned import VersionedTable, now_ms
from runstream.storage.writer import insert_row

MAX_TITLE = 256
MAX_BODY = 1 << 20  # characters of markdown
MAX_PANELS = 100
MAX_PANELS_BYTES = 256 << 10  # the panels' JSON text
MAX_REPORTS = 10_000

_REPORTS = VersionedTable("reports", ("team", "project", "report_id"))

_COLUMNS = """report_id, team, project, title, body, panels, created_by,
    toUnixTimestamp64Milli(created_at) AS created_ms, toUnixTimestamp64Milli(updated_at) AS updated_ms,
    share_version, version"""


def check_title(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise QueryError(f"title must be a non-empty string of at most {MAX_TITLE} characters", field="title")
    return value


def check_body(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_BODY:
        raise QueryError(f"body must be a markdown string of at most {MAX_BODY:,} characters", field="body")
    return value


def check_panels(value: Any) -> str:
    """The panels as stored JSON text: a list of at most MAX_PANELS objects, MAX_PANELS_BYTES in all."""
    if not isinstance(value, list) or not all(isinstance(p, dict) for p in value):
        raise QueryError("panels must be a JSON array of chart specs (objects)", field="panels")
    if len(value) > MAX_PANELS:
        raise QueryError(f"a report holds at most {MAX_PANELS} panels, got {len(value)}", field="panels")
    text = orjson.dumps(value)
    if len(text) > MAX_PANELS_BYTES:
        raise QueryError(
            f"the panels are {len(text):,} bytes of JSON, more than the limit of {MAX_PANELS_BYTES:,}", field="panels"
        )
    return text.decode()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["report_id"],
        "team": row["team"],
        "project": row["project"],
        "title": row["title"],
        "body": row["body"],
        "panels": orjson.loads(row["panels"] or "[]"),
        "created_by": row["created_by"],
        "created_at": row["created_ms"] / 1000,
        "updated_at": row["updated_ms"] / 1000,
        "share_version": int(row["share_version"]),
    }


# Each report's latest revocation and whether it was deleted (no row: neither).
_LINKS = """LEFT JOIN (SELECT report_id, max(share_version) AS link_version, max(deleted) AS gone FROM report_links
                    WHERE team = {team:String} AND project = {project:String} GROUP BY report_id) AS l
          USING (report_id)"""


def _row(client: Client, team: str, project: str, report_id: str) -> dict[str, Any] | None:
    row = _REPORTS.latest(
        client, f"{_COLUMNS}, link_version, gone", team, project, report_id, join=_LINKS, where="gone = 0"
    )
    if row is None:
        return None
    row["share_version"] = max(int(row["share_version"]), int(row.pop("link_version")))
    del row["gone"]
    return row


def _log_links(client: Client, row: dict[str, Any], deleted: bool = False) -> None:
    insert_row(
        client,
        "report_links",
        {
            "team": row["team"],
            "project": row["project"],
            "report_id": row["report_id"],
            "share_version": row["share_version"],
            "deleted": int(deleted),
            "at": now_ms(),
        },
    )


def _write(client: Client, row: dict[str, Any], current_version: int | None, deleted: bool = False) -> None:
    values = {
        "team": row["team"],
        "project": row["project"],
        "report_id": row["report_id"],
        "title": row["title"],
        "body": row["body"],
        "panels": row["panels"],
        "created_by": row["created_by"],
        "created_at": row["created_ms"],
        "updated_at": row["updated_ms"],
        "share_version": row["share_version"],
    }
    _REPORTS.write(client, values, after=current_version, deleted=deleted)


def get_report(client: Client, team: str, project: str, report_id: str) -> dict[str, Any] | None:
    """The report, or None when it does not exist or was deleted."""
    row = _row(client, team, project, report_id)
    return _public(row) if row else None


def list_reports(client: Client, team: str, project: str) -> list[dict[str, Any]]:
    """The project's reports, most recently updated first, without their bodies and panels."""
    rows = client.query(
        "SELECT report_id, title, created_by, toUnixTimestamp64Milli(created_at), toUnixTimestamp64Milli(updated_at), "
        f"greatest(share_version, link_version), length(JSONExtractArrayRaw(panels)) FROM reports FINAL {_LINKS} "
        "WHERE team = {team:String} AND project = {project:String} AND gone = 0 ORDER BY updated_at DESC, report_id "
        "LIMIT {n:UInt32}",
        parameters={"team": team, "project": project, "n": MAX_REPORTS},
    ).result_rows
    return [
        {
            "id": rid,
            "team": team,
            "project": project,
            "title": title,
            "created_by": by,
            "created_at": created / 1000,
            "updated_at": updated / 1000,
            "share_version": int(share),
            "panel_count": int(panels),
        }
        for rid, title, by, created, updated, share, panels in rows
    ]


def create_report(
    client: Client,
    team: str,
    project: str,
    title: str,
    body: str = "",
    panels: list[dict[str, Any]] | None = None,
    created_by: str = "",
) -> dict[str, Any]:
    check_name("team", team)
    check_name("project", project)
    now = now_ms()
    row = {
        "team": team,
        "project": project,
        "report_id": secrets.token_hex(8),
        "title": check_title(title),
        "body": check_body(body),
        "panels": check_panels(panels if panels is not None else []),
        "created_by": created_by,
        "created_ms": now,
        "updated_ms": now,
        "share_version": 1,
    }
    _write(client, row, None)
    return _public(row)


def update_report(
    client: Client, team: str, project: str, report_id: str, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Change title, body or panels (the keys present in ``changes``); None when the report is missing."""
    row = _row(client, team, project, report_id)
    if row is None:
        return None
    if "title" in changes:
        row["title"] = check_title(changes["title"])
    if "body" in changes:
        row["body"] = check_body(changes["body"])
    if "panels" in changes:
        row["panels"] = check_panels(changes["panels"])
    row["updated_ms"] = max(now_ms(), row["updated_ms"])
    _write(client, row, row["version"])
    return _public(row)


def revoke_shares(client: Client, team: str, project: str, report_id: str) -> dict[str, Any] | None:
    """Bump the share version, so every link made so far stops working; None when the report is missing."""
    row = _row(client, team, project, report_id)
    if row is None:
        return None
    row["share_version"] = int(row["share_version"]) + 1
    _log_links(client, row)
    _write(client, row, row["version"])
    return _public(row)


def delete_report(client: Client, team: str, project: str, report_id: str) -> bool:
    """Delete the report (its share links die with it); whether it existed."""
    row = _row(client, team, project, report_id)
    if row is None:
        return False
    _log_links(client, row, deleted=True)
    _write(client, row, row["version"], deleted=True)
    return True
