"""The audit log on the real engine: what is recorded, who reads it, and that nothing changes it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from runstream.api.app import create_app
from runstream.api.backend import Backend
from runstream.storage import accounts, audit
from runstream.storage.errors import QueryError

V1 = "/api/v1"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def local(api) -> Iterator[TestClient]:
    """The same database behind a server whose loopback caller is its local admin (``runstream server``)."""
    app = create_app(api.settings, backend=Backend(api.settings, local_admin=True))
    with TestClient(app, client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080") as http:
        yield http


@pytest.fixture
def keys(api) -> dict[str, dict[str, str]]:
    return {
        "admin": api.key("acme", "ann", "admin"),
        "member": api.key("acme", "max", "member"),
        "viewer": api.key("acme", "vic", "viewer"),
        "other_team": api.key("globex", "gus", "admin"),
    }


def _log(api, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = api.http.get(f"{V1}/teams/acme/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _key_id(headers: dict[str, str]) -> str:
    return headers["Authorization"].split("_")[1]


def test_only_the_teams_admins_read_its_audit_log(api, keys, local):
    statuses = {who: api.http.get(f"{V1}/teams/acme/audit", headers=h).status_code for who, h in keys.items()}
    statuses["anonymous"] = api.http.get(f"{V1}/teams/acme/audit").status_code
    statuses["local_admin"] = local.get(f"{V1}/teams/acme/audit").status_code
    assert statuses == {
        "anonymous": 401,
        "other_team": 404,
        "viewer": 403,
        "member": 403,
        "admin": 200,
        "local_admin": 200,
    }
    assert local.get(f"{V1}/teams/nosuchteam/audit").status_code == 404


def test_key_member_and_visibility_changes_are_recorded_with_who_when_and_where(api, keys):
    admin = {**keys["admin"], "User-Agent": "audit-test/1.0", "X-Forwarded-For": "203.0.113.9"}
    http = api.http
    assert http.put(f"{V1}/teams/acme/members/zoe", json={"role": "member"}, headers=admin).status_code == 201
    assert http.put(f"{V1}/teams/acme/members/zoe", json={"role": "member"}, headers=admin).status_code == 200
    assert http.put(f"{V1}/teams/acme/members/zoe", json={"role": "viewer"}, headers=admin).status_code == 200
    created = http.post(f"{V1}/teams/acme/keys", json={"user": "zoe", "name": "ci", "scope": "ingest"}, headers=admin)
    created = created.json()
    own = http.post(f"{V1}/teams/acme/keys", json={"name": "laptop"}, headers=keys["member"]).json()
    assert http.delete(f"{V1}/teams/acme/keys/{own['key_id']}", headers=admin).status_code == 200
    assert http.delete(f"{V1}/teams/acme/keys/{own['key_id']}", headers=admin).status_code == 200  # no change
    assert http.delete(f"{V1}/teams/acme/members/zoe", headers=admin).status_code == 200
    assert http.post(f"{V1}/projects/acme", json={"name": "p"}, headers=keys["member"]).status_code == 201
    assert http.patch(f"{V1}/projects/acme/p", json={"visibility": "public"}, headers=admin).status_code == 200
    assert http.patch(f"{V1}/projects/acme/p", json={"description": "d"}, headers=admin).status_code == 200
    refused = http.put(f"{V1}/teams/acme/members/ann", json={"role": "member"}, headers=admin)
    assert refused.status_code == 409  # refused changes are not entries

    entries = _log(api, keys["admin"])["entries"]
    assert [(e["action"], e["target"], e["details"]) for e in entries] == [
        ("project.visibility", "p", {"from": "private", "to": "public"}),
        ("project.create", "p", {"visibility": "private"}),
        ("member.remove", "zoe", {"role": "viewer", "revoked_keys": [created["key_id"]]}),
        ("key.revoke", own["key_id"], {"user": "max"}),
        ("key.create", own["key_id"], {"user": "max", "name": "laptop", "scope": "admin"}),
        ("key.create", created["key_id"], {"user": "zoe", "name": "ci", "scope": "ingest"}),
        ("member.role", "zoe", {"from": "member", "to": "viewer"}),
        ("member.add", "zoe", {"role": "member"}),
    ]
    newest = entries[0]
    assert newest["team"] == "acme" and re.fullmatch(r"[0-9a-f]{16}", newest["id"])
    assert newest["actor"] == {"kind": "key", "user": "ann", "key_id": _key_id(keys["admin"])}
    assert newest["client_ip"] == "testclient"  # the connection's peer, as the server saw it
    assert newest["forwarded_for"] == "203.0.113.9"  # what the proxy claimed, kept apart
    assert newest["user_agent"] == "audit-test/1.0"
    assert entries[1]["actor"]["user"] == "max" and entries[1]["forwarded_for"] is None
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True) and abs(times[0] - times[-1]) < 60
    # Another team's log holds none of this.
    globex = api.http.get(f"{V1}/teams/globex/audit", headers=keys["other_team"]).json()
    assert globex == {"team": "globex", "entries": [], "next_cursor": None}


def test_share_links_and_deletions_are_recorded(api, keys):
    member = keys["member"]
    reports = f"{V1}/projects/acme/p/reports"
    report = api.http.post(reports, json={"title": "t", "body": "", "panels": []}, headers=member).json()
    path = f"{reports}/{report['id']}"
    share = api.http.post(f"{path}/share", json={"expires_in_s": 3600}, headers=member)
    assert share.status_code == 201
    assert api.http.delete(f"{path}/share", headers=member).status_code == 200
    assert api.http.delete(path, headers=member).status_code == 204
    entries = _log(api, keys["admin"])["entries"]
    target = f"p/{report['id']}"
    assert [(e["action"], e["target"]) for e in entries] == [
        ("report.delete", target),
        ("share.revoke", target),
        ("share.create", target),
    ]
    assert entries[1]["details"] == {"share_version": report["share_version"] + 1}
    assert entries[2]["details"] == {"expires_at": share.json()["expires_at"], "share_version": report["share_version"]}
    assert {e["actor"]["user"] for e in entries} == {"max"}


def test_alert_rules_which_may_post_to_webhooks_are_recorded(api, keys):
    rules = f"{V1}/projects/acme/p/alert-rules"
    spec = {"metric": "loss", "op": ">", "value": 10}
    rule = api.http.post(rules, json={"name": "big loss", "kind": "threshold", "spec": spec}, headers=keys["member"])
    assert rule.status_code == 201, rule.text
    rule_id = rule.json()["id"]
    assert api.http.delete(f"{rules}/{rule_id}", headers=keys["member"]).status_code == 204
    assert api.http.delete(f"{rules}/{rule_id}", headers=keys["member"]).status_code == 404  # nothing to record
    entries = _log(api, keys["admin"])["entries"]
    assert [(e["action"], e["target"], e["details"]) for e in entries] == [
        ("rule.delete", f"p/{rule_id}", {}),
        ("rule.create", f"p/{rule_id}", {"name": "big loss"}),
    ]


def test_the_local_admin_is_recorded_as_such(api, local):
    assert local.post(f"{V1}/teams", json={"team": "lab"}).status_code == 201
    assert local.post(f"{V1}/projects/fresh", json={"name": "p", "visibility": "public"}).status_code == 201
    assert local.put(f"{V1}/teams/lab/members/lou", json={"role": "admin"}).status_code == 201
    lab = local.get(f"{V1}/teams/lab/audit").json()["entries"]
    assert [(e["action"], e["target"]) for e in lab] == [("member.add", "lou"), ("team.create", "lab")]
    assert lab[0]["actor"] == {"kind": "local_admin", "user": None, "key_id": None}
    assert lab[0]["client_ip"] == "127.0.0.1"
    fresh = local.get(f"{V1}/teams/fresh/audit").json()["entries"]
    assert [(e["action"], e["details"]) for e in fresh] == [
        ("project.create", {"visibility": "public"}),
        ("team.create", {}),
    ]


def test_pages_newest_first_filtered_by_action(api, keys):
    storage = api.storage
    actor = audit.Actor("key", user="ann", key_id="k")
    for i in range(7):
        audit.record(storage, "acme", "key.create" if i % 2 else "key.revoke", actor, f"k{i}")
    first = _log(api, keys["admin"], limit=3)
    assert [e["target"] for e in first["entries"]] == ["k6", "k5", "k4"]
    second = _log(api, keys["admin"], limit=3, cursor=first["next_cursor"])
    third = _log(api, keys["admin"], limit=3, cursor=second["next_cursor"])
    assert [e["target"] for e in second["entries"] + third["entries"]] == ["k3", "k2", "k1", "k0"]
    assert third["next_cursor"] is None
    created = _log(api, keys["admin"], action="key.create")
    assert [e["target"] for e in created["entries"]] == ["k5", "k3", "k1"]
    for params in ({"action": "key.delete"}, {"limit": 0}, {"limit": 501}, {"cursor": "nope"}):
        response = api.http.get(f"{V1}/teams/acme/audit", headers=keys["admin"], params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["message"]


def test_the_cli_records_through_the_same_function(api):
    """``runstream keys create`` calls storage directly; it records with ``audit.cli_actor()``."""
    storage = api.storage
    accounts.ensure_team(storage, "ops")
    key_id, _ = accounts.create_key(storage, "ops", "root")
    audit.record(storage, "ops", "key.create", audit.cli_actor(), key_id, {"user": "root", "name": ""})
    (entry,) = audit.list_entries(storage, "ops")["entries"]
    assert entry["actor"]["kind"] == "cli" and entry["user_agent"].startswith("runstream CLI on ")
    assert entry["client_ip"] is None and entry["target"] == key_id
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(storage, "ops", "key.stolen", audit.cli_actor())
    with pytest.raises(QueryError):
        audit.list_entries(storage, "ops", cursor="1.zz")


def test_the_log_is_append_only(api):
    """A plain MergeTree (no engine that folds or drops rows), and no code that changes it."""
    engine = api.storage.query(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'audit_log'"
    ).result_rows
    assert engine == [("MergeTree",)]
    changes = re.compile(
        r"(ALTER|DROP|TRUNCATE|OPTIMIZE|RENAME)\s+TABLE\s+(IF\s+EXISTS\s+)?audit_log|DELETE\s+FROM\s+audit_log|"
        r"TRUNCATE\s+audit_log",
        re.IGNORECASE,
    )
    sources = [p for d in ("api", "storage", "streams", "sdk", "infra") for p in (ROOT / d).rglob("*.py")]
    sources += list((ROOT / "storage" / "migrations").glob("*.sql"))
    assert len(sources) > 50 and any(p.name == "audit.py" for p in sources)
    assert [p for p in sources if changes.search(p.read_text())] == []


def test_the_endpoint_is_documented(api):
    operation = api.http.get(f"{V1}/openapi.json").json()["paths"]["/api/v1/teams/{team}/audit"]["get"]
    assert {"200", "400", "401", "403", "404"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} >= {"team", "action", "limit", "cursor"}
