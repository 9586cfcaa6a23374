"""``runstream keys``: the server-side commands that make the first admin key, list keys and revoke them.

The commands run as subprocesses against a ClickHouse server (chdb served over
HTTP in a child process), and the keys they print are then used against an API
app on the same database, as a user would after `export RUNSTREAM_API_KEY=...`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from runstream.api.app import create_app
from runstream.settings import Settings


def keys(*args: str, dsn: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "RUNSTREAM_CLICKHOUSE_DSN": dsn},
        timeout=120,
    )


def printed_key(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"^\s*export RUNSTREAM_API_KEY=(rs_\S+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


@pytest.fixture
def server_dsn(clickhouse_server) -> str:
    return f"clickhouse://default:@127.0.0.1:{clickhouse_server.http_port}/keys_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def open_api(server_dsn, tmp_path) -> Iterator:
    """An API app on the same database (built lazily: the CLI migrates the fresh database first)."""
    clients: list[TestClient] = []

    def open_app() -> TestClient:
        client = TestClient(create_app(Settings(clickhouse_dsn=server_dsn, data_dir=str(tmp_path))))
        client.__enter__()
        clients.append(client)
        return client

    yield open_app
    for client in clients:
        client.__exit__(None, None, None)


def whoami(client: TestClient, key: str):
    return client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})


def eventually_refused(client: TestClient, key: str, within_s: float):
    """whoami with ``key`` until it is refused, for at most ``within_s`` (then its last answer)."""
    deadline = time.monotonic() + within_s
    while True:
        response = whoami(client, key)
        if response.status_code != 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def test_keys_create_takes_a_scope_that_listings_show_and_the_api_enforces(server_dsn, open_api):
    created = keys("create", "--team", "lab", "--user", "ada", "--scope", "read", dsn=server_dsn)
    assert created.returncode == 0, created.stderr
    assert "of scope read" in created.stdout
    key = printed_key(created)
    ingest = printed_key(keys("create", "--team", "lab", "--user", "ada", "--scope", "ingest", dsn=server_dsn))
    listed = keys("list", "--team", "lab", dsn=server_dsn).stdout
    assert re.search(rf"^{key.split('_')[1]} +ada +admin +read ", listed, re.MULTILINE), listed
    assert re.search(rf"^{ingest.split('_')[1]} +ada +admin +ingest ", listed, re.MULTILINE), listed
    client = open_api()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/teams/lab/members", headers=headers).status_code == 200  # a read
    made = client.post("/api/v1/teams/lab/keys", headers=headers, json={"name": "more"})  # would widen its scope
    assert made.status_code == 403 and made.json()["error"]["code"] == "key_scope"
    assert "runstream keys create --scope admin" in made.json()["error"]["message"]
    listing = client.get("/api/v1/teams/lab/members", headers={"Authorization": f"Bearer {ingest}"})
    assert listing.status_code == 403 and listing.json()["error"]["code"] == "key_scope"
    bad = keys("create", "--team", "lab", "--user", "ada", "--scope", "owner", dsn=server_dsn)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_keys_create_bootstraps_an_admin_whose_key_works(server_dsn, open_api):
    first = keys("create", "--team", "acme", "--user", "ann", "--name", "laptop", dsn=server_dsn)
    assert first.returncode == 0, first.stderr
    assert "created team acme" in first.stdout and "admin of team acme" in first.stdout
    assert "only time the key is shown" in first.stdout
    admin_key = printed_key(first)
    # A second user of the existing team is a member by default; --role says otherwise.
    second = keys("create", "--team", "acme", "--user", "bob", dsn=server_dsn)
    assert second.returncode == 0 and "member of team acme" in second.stdout
    third = keys("create", "--team", "acme", "--user", "vic", "--role", "viewer", dsn=server_dsn)
    assert third.returncode == 0 and "viewer of team acme" in third.stdout
    # Another key for ann keeps her an admin.
    again = keys("create", "--team", "acme", "--user", "ann", dsn=server_dsn)
    assert again.returncode == 0 and "admin of team acme" in again.stdout

    client = open_api()
    me = whoami(client, admin_key).json()
    assert (me["user"], me["team"], me["role"]) == ("ann", "acme", "admin")
    assert whoami(client, printed_key(second)).json()["role"] == "member"
    assert whoami(client, printed_key(third)).json()["role"] == "viewer"
    members = client.get("/api/v1/teams/acme/members", headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert [(m["user"], m["role"]) for m in members["members"]] == [
        ("ann", "admin"),
        ("bob", "member"),
        ("vic", "viewer"),
    ]


def test_keys_list_shows_no_secrets_and_revoke_stops_a_key_at_once(server_dsn, open_api):
    created = keys("create", "--team", "lab", "--user", "lea", "--name", "ci", dsn=server_dsn)
    key = printed_key(created)
    key_id = key.split("_")[1]
    listed = keys("list", "--team", "lab", dsn=server_dsn)
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and "lea" in listed.stdout and "admin" in listed.stdout and "ci" in listed.stdout
    assert key.split("_", 2)[2] not in listed.stdout  # the secret (which may hold "_" itself)

    client = open_api()
    assert whoami(client, key).status_code == 200
    revoked = keys("revoke", key_id, dsn=server_dsn)
    assert revoked.returncode == 0 and f"revoked key {key_id}" in revoked.stdout
    # The API checks keys from memory and reads what changed in the database at most a second before.
    response = eventually_refused(client, key, within_s=1.5)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert keys("revoke", key_id, dsn=server_dsn).stdout.count("already revoked")
    relisted = keys("list", "--team", "lab", dsn=server_dsn).stdout
    assert re.search(rf"^{key_id} .* \d{{4}}-\d\d-\d\d \d\d:\d\d UTC +ci$", relisted, re.MULTILINE), relisted


def test_keys_commands_are_in_the_teams_audit_log(server_dsn):
    from runstream.storage import audit
    from runstream.storage.client import connect

    key_id = printed_key(keys("create", "--team", "lab", "--user", "lea", "--scope", "ingest", dsn=server_dsn))
    key_id = key_id.split("_")[1]
    assert keys("revoke", key_id, dsn=server_dsn).returncode == 0
    entries = audit.list_entries(connect(server_dsn), "lab")["entries"]
    assert [(e["action"], e["target"], e["actor"]["kind"]) for e in entries] == [
        ("key.revoke", key_id, "cli"),
        ("key.create", key_id, "cli"),
        ("member.add", "lea", "cli"),
        ("team.create", "lab", "cli"),
    ]
    assert entries[1]["details"] == {"user": "lea", "name": "", "scope": "ingest"}
    assert entries[0]["user_agent"].startswith("runstream CLI on ")


def test_keys_errors_are_clear_and_non_zero(server_dsn):
    unknown_team = keys("list", "--team", "nope", dsn=server_dsn)
    assert unknown_team.returncode == 1 and "no team 'nope'" in unknown_team.stderr
    unknown_key = keys("revoke", "0123456789ab", dsn=server_dsn)
    assert unknown_key.returncode == 1 and "no key '0123456789ab'" in unknown_key.stderr
    bad_team = keys("create", "--team", "../etc", "--user", "x", dsn=server_dsn)
    assert bad_team.returncode == 2 and "team must be" in bad_team.stderr
    bad_user = keys("create", "--team", "ok", "--user", "a b", dsn=server_dsn)
    assert bad_user.returncode == 2 and "user must be" in bad_user.stderr
    bad_role = keys("create", "--team", "ok", "--user", "x", "--role", "owner", dsn=server_dsn)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
    # The last admin is not demoted by accident.
    assert keys("create", "--team", "solo", "--user", "sol", dsn=server_dsn).returncode == 0
    demote = keys("create", "--team", "solo", "--user", "sol", "--role", "member", dsn=server_dsn)
    assert demote.returncode == 1 and "last admin of team solo" in demote.stderr
    for result in (unknown_team, unknown_key, bad_team, bad_user, demote):
        assert "Traceback" not in result.stderr


def test_keys_take_the_dsn_as_an_option(clickhouse_server, server_dsn):
    result = subprocess.run(
        [sys.executable, "-m", "runstream.cli", "keys", "create", "--team", "t", "--user", "u", "--dsn", server_dsn],
        capture_output=True,
        text=True,
        env={**os.environ, "RUNSTREAM_CLICKHOUSE_DSN": "postgres://nowhere"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert printed_key(result).startswith("rs_")
    missing = keys("create", "--team", "t", "--user", "u", dsn="postgres://nowhere")
    assert missing.returncode == 2 and "unsupported ClickHouse DSN" in missing.stderr
