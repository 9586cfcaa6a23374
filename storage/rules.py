"""Alert rules as the API writes them and the processor reads them.

A rule row is what ``streams.processor.RuleBook`` loads (``FINAL``, ``enabled``,
``spec`` as JSON text, ``cooldown_s``), so every rule written here is checked
with ``streams.alerting.check_rule`` first: a rule stored is a rule that fires.
A rule is a versioned row (``storage.versioned``); the processor reads it with
``FINAL`` too, so a deleted rule stops firing.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.storage.accounts import check_name
from runstream.storage.errors import QueryError
from runstream.storage.versioned import VersionedTable, now_ms
from runstream.streams.alerting import RuleError, check_rule

MAX_NAME = 256
MAX_SPEC_BYTES = 16 << 10
MAX_COOLDOWN_S = 30 * 24 * 3600
DEFAULT_COOLDOWN_S = 300
MAX_RULES = 1000

_RULES = VersionedTable("alert_rules", ("team", "project", "rule_id"))

_COLUMNS = """rule_id, team, project, name, kind, spec, enabled, cooldown_s,
    toUnixTimestamp64Milli(created_at) AS created_ms, toUnixTimestamp64Milli(updated_at) AS updated_ms, version"""


def check_fields(fields: dict[str, Any]) -> None:
    """QueryError for a bad name, enabled or cooldown_s; RuleError (kind and spec) is checked by ``check_spec``."""
    if "name" in fields:
        name = fields["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
            raise QueryError(f"name must be a non-empty string of at most {MAX_NAME} characters", field="name")
    if "enabled" in fields and not isinstance(fields["enabled"], bool):
        raise QueryError("enabled must be true or false", field="enabled")
    if "cooldown_s" in fields:
        value = fields["cooldown_s"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COOLDOWN_S:
            raise QueryError(
                f"cooldown_s must be a whole number of seconds from 0 to {MAX_COOLDOWN_S}", field="cooldown_s"
            )


def check_spec(kind: Any, spec: Any) -> str:
    """The spec as stored JSON text; RuleError (the processor's own check) when it would not evaluate."""
    if not isinstance(kind, str):
        raise RuleError("kind must be a string naming a rule kind")
    try:
        check_rule(kind, spec)
    except TypeError:  # e.g. a list where an operator belongs: `x in OPS` cannot hash it
        raise RuleError(
            f"a {kind} rule's spec holds a value of the wrong type (an array or object where a "
            "string or number belongs)"
        ) from None
    text = orjson.dumps(spec)
    if len(text) > MAX_SPEC_BYTES:
        raise RuleError(f"the spec is {len(text):,} bytes of JSON, more than the limit of {MAX_SPEC_BYTES:,}")
    return text.decode()


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["rule_id"],
        "team": row["team"],
        "project": row["project"],
        "name": row["name"],
        "kind": row["kind"],
        "spec": orjson.loads(row["spec"]),
        "enabled": bool(row["enabled"]),
        "cooldown_s": int(row["cooldown_s"]),
        "created_at": row["created_ms"] / 1000,
        "updated_at": row["updated_ms"] / 1000,
    }


def _write(client: Client, row: dict[str, Any], current_version: int | None, deleted: bool = False) -> None:
    values = {
        "team": row["team"],
        "project": row["project"],
        "rule_id": row["rule_id"],
        "name": row["name"],
        "kind": row["kind"],
        "spec": row["spec"],
        "enabled": bool(row["enabled"]),
        "cooldown_s": row["cooldown_s"],
        "created_at": row["created_ms"],
        "updated_at": row["updated_ms"],
    }
    _RULES.write(client, values, after=current_version, deleted=deleted)


def _row(client: Client, team: str, project: str, rule_id: str) -> dict[str, Any] | None:
    return _RULES.latest(client, _COLUMNS, team, project, rule_id)


def get_rule(client: Client, team: str, project: str, rule_id: str) -> dict[str, Any] | None:
    row = _row(client, team, project, rule_id)
    return _public(row) if row else None


def list_rules(client: Client, team: str, project: str) -> list[dict[str, Any]]:
    """The project's rules (enabled or not), by name."""
    rows = client.query(
        f"SELECT {_COLUMNS} FROM alert_rules FINAL WHERE team = {{t:String}} AND project = {{p:String}} "
        "ORDER BY name, rule_id LIMIT {n:UInt32}",
        parameters={"t": team, "p": project, "n": MAX_RULES},
    ).named_results()
    return [_public(r) for r in rows]


def create_rule(
    client: Client,
    team: str,
    project: str,
    name: str,
    kind: str,
    spec: dict[str, Any],
    enabled: bool = True,
    cooldown_s: int = DEFAULT_COOLDOWN_S,
) -> dict[str, Any]:
    """A new rule; QueryError for bad fields, RuleError for a kind or spec the processor could not evaluate."""
    check_name("team", team)
    check_name("project", project)
    check_fields({"name": name, "enabled": enabled, "cooldown_s": cooldown_s})
    if len(list_rules(client, team, project)) >= MAX_RULES:
        raise QueryError(f"a project holds at most {MAX_RULES} alert rules; delete some first")
    now = now_ms()
    row = {
        "team": team,
        "project": project,
        "rule_id": secrets.token_hex(8),
        "name": name,
        "kind": kind,
        "spec": check_spec(kind, spec),
        "enabled": enabled,
        "cooldown_s": cooldown_s,
        "created_ms": now,
        "updated_ms": now,
    }
    _write(client, row, None)
    return _public(row)


def update_rule(
    client: Client, team: str, project: str, rule_id: str, changes: dict[str, Any]
) -> dict[str, Any] | None:
    """Change any of name, kind, spec, enabled, cooldown_s; the result is checked whole. None when missing."""
    row = _row(client, team, project, rule_id)
    if row is None:
        return None
    check_fields(changes)
    for key in ("name", "enabled", "cooldown_s", "kind"):
        if key in changes:
            row[key] = changes[key]
    spec = changes["spec"] if "spec" in changes else orjson.loads(row["spec"])
    row["spec"] = check_spec(row["kind"], spec)
    row["updated_ms"] = max(now_ms(), row["updated_ms"])
    _write(client, row, row["version"])
    return _public(row)


def delete_rule(client: Client, team: str, project: str, rule_id: str) -> bool:
    row = _row(client, team, project, rule_id)
    if row is None:
        return False
    _write(client, row, row["version"], deleted=True)
    return True
