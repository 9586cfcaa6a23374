"""Who am I, teams, members, keys and projects through the API, for every kind of caller, on the real engine."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from runstream import events
from runstream.api.app import create_app
from runstream.api.backend import Backend
from runstream.public_api import Project
from runstream.storage import accounts
from tests.helpers import make_event, metrics_event

V1 = "/api/v1"
WHO = ("anonymous", "other_team", "viewer", "member", "admin", "local_admin")
_counter = itertools.count()


def _start(team: str, project: str, run_id: str = "run1") -> dict:
    return make_event(
        events.RUN_START, {"name": run_id, "config": {"lr": 0.1}}, run_id=run_id, team=team, project=project
    )


@dataclass
class World:
    """Team acme (admin ann, member max, viewer vic), team globex (admin gus), and the embedded server's owner."""

    api: Any
    local: TestClient
    headers: dict[str, dict[str, str]]

    def call(self, who: str, method: str, path: str, json: Any = None):
        http = self.local if who == "local_admin" else self.api.http
        return http.request(method, f"{V1}{path}", json=json, headers=self.headers.get(who, {}))

    def fresh_member(self, role: accounts.Role = "member") -> str:
        user = f"u{next(_counter)}"
        accounts.set_member(self.api.storage, "acme", user, role)
        return user

    def fresh_key(self, user: str) -> tuple[str, str]:
        return accounts.create_key(self.api.storage, "acme", user, "test")


@pytest.fixture
def local_client(api) -> Iterator[TestClient]:
    """The same database behind a server whose loopback caller is its local admin (``runstream server``)."""
    app = create_app(api.settings, backend=Backend(api.settings, local_admin=True))
    with TestClient(
        app, client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080", raise_server_exceptions=False
    ) as http:
        yield http


@pytest.fixture
def world(api, local_client) -> World:
    headers = {
        "admin": api.key("acme", "ann", "admin"),
        "member": api.key("acme", "max", "member"),
        "viewer": api.key("acme", "vic", "viewer"),
        "other_team": api.key("globex", "gus", "admin"),
    }
    accounts.upsert_project(api.storage, "acme", "priv", "private", "secret plans")
    accounts.upsert_project(api.storage, "acme", "pub", "public", "open data")
    return World(api, local_client, headers)


def _expect(world: World, expected: dict[str, int], method: str, path: str, json: Any = None, per_call=None) -> None:
    """Each caller's status; ``per_call(who)`` may give a fresh (path, json) so calls do not see each other's effects."""
    got = {}
    for who in WHO:
        p, j = per_call(who) if per_call else (path, json)
        response = world.call(who, method, p, j)
        got[who] = response.status_code
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.json()["error"]["message"], response.text
    assert got == expected


# -- who am I, teams -----------------------------------------------------------------------------------------


def test_whoami_for_each_kind_of_caller(world):
    assert world.call("anonymous", "GET", "/whoami").json() == {
        "user": None,
        "team": None,
        "role": None,
        "key_id": None,
        "scope": None,
        "local_admin": False,
        "share": None,
    }
    viewer = world.call("viewer", "GET", "/whoami").json()
    key_id = world.headers["viewer"]["Authorization"].split("_")[1]
    assert viewer == {
        "user": "vic",
        "team": "acme",
        "role": "viewer",
        "key_id": key_id,
        "scope": "admin",
        "local_admin": False,
        "share": None,
    }
    assert world.call("local_admin", "GET", "/whoami").json()["local_admin"] is True
    bad = world.api.http.get(f"{V1}/whoami", headers={"Authorization": "Bearer rs_000000000000_" + "x" * 43})
    assert bad.status_code == 401 and "runstream keys create" in bad.json()["error"]["message"]


def test_only_a_loopback_caller_is_the_local_admin(api):
    app = create_app(api.settings, backend=Backend(api.settings, local_admin=True))
    with TestClient(app) as http:  # the test client's host is "testclient", not loopback
        assert http.get(f"{V1}/whoami").json()["local_admin"] is False
        assert http.post(f"{V1}/teams", json={"team": "sneaky"}).status_code == 401


def test_teams_list_the_callers_own_team_and_everything_for_the_local_admin(world):
    assert world.call("anonymous", "GET", "/teams").status_code == 401
    teams = world.call("member", "GET", "/teams").json()["teams"]
    assert [(t["team"], t["role"]) for t in teams] == [("acme", "member")]
    assert teams[0]["display_name"] == "acme" and teams[0]["created_at"] > 0
    assert [t["team"] for t in world.call("local_admin", "GET", "/teams").json()["teams"]] == ["acme", "globex"]


def test_only_the_local_admin_creates_teams(world):
    expected = {"anonymous": 401, "other_team": 403, "viewer": 403, "member": 403, "admin": 403, "local_admin": 201}
    _expect(world, expected, "POST", "/teams", per_call=lambda who: ("/teams", {"team": f"new-{who}"}))
    created = world.call("local_admin", "POST", "/teams", {"team": "lab", "display_name": "The Lab"})
    assert created.status_code == 201
    assert created.json()["team"] == "lab" and created.json()["display_name"] == "The Lab"
    again = world.call("local_admin", "POST", "/teams", {"team": "lab"})
    assert again.status_code == 409 and "exists" in again.json()["error"]["message"]
    assert world.call("admin", "POST", "/teams", {"team": "lab2"}).json()["error"]["message"].count("keys create")
    assert world.call("local_admin", "POST", "/teams", {}).status_code == 400
    assert world.call("local_admin", "POST", "/teams", {"team": 5}).status_code == 400
    assert world.call("local_admin", "POST", "/teams", {"team": "ok", "display_name": "d" * 201}).status_code == 400


# -- members -------------------------------------------------------------------------------------------------


def test_member_endpoints_role_matrix(world):
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 200, "member": 200, "admin": 200, "local_admin": 200},
        "GET",
        "/teams/acme/members",
    )
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 403, "member": 403, "admin": 201, "local_admin": 201},
        "PUT",
        "",
        per_call=lambda who: (f"/teams/acme/members/new-{who}", {"role": "viewer"}),
    )
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 403, "member": 403, "admin": 200, "local_admin": 200},
        "DELETE",
        "",
        per_call=lambda who: (f"/teams/acme/members/{world.fresh_member()}", None),
    )


def test_members_are_listed_added_changed_and_removed(world):
    members = world.call("viewer", "GET", "/teams/acme/members").json()
    assert members["team"] == "acme"
    assert [(m["user"], m["role"]) for m in members["members"]] == [
        ("ann", "admin"),
        ("max", "member"),
        ("vic", "viewer"),
    ]
    added = world.call("admin", "PUT", "/teams/acme/members/zoe@example.com", {"role": "member"})
    assert added.status_code == 201
    assert added.json()["user"] == "zoe@example.com" and added.json()["role"] == "member"
    changed = world.call("admin", "PUT", "/teams/acme/members/zoe@example.com", {"role": "admin"})
    assert changed.status_code == 200 and changed.json()["role"] == "admin"
    assert changed.json()["created_at"] == added.json()["created_at"]
    assert world.call("admin", "DELETE", "/teams/acme/members/zoe@example.com").status_code == 200
    assert world.call("admin", "DELETE", "/teams/acme/members/zoe@example.com").status_code == 404
    assert world.call("admin", "PUT", "/teams/acme/members/x", {"role": "owner"}).status_code == 400
    assert world.call("admin", "PUT", "/teams/acme/members/x", {}).status_code == 400
    assert world.call("local_admin", "GET", "/teams/nosuchteam/members").status_code == 404


def test_a_removed_members_key_fails_at_once_and_stays_revoked(world):
    user = world.fresh_member()
    _, key = world.fresh_key(user)
    headers = {"Authorization": f"Bearer {key}"}
    assert world.api.http.get(f"{V1}/whoami", headers=headers).status_code == 200
    assert world.call("admin", "DELETE", f"/teams/acme/members/{user}").status_code == 200
    assert world.api.http.get(f"{V1}/whoami", headers=headers).status_code == 401
    # Coming back to the team does not bring the old key back to life.
    assert world.call("admin", "PUT", f"/teams/acme/members/{user}", {"role": "member"}).status_code == 201
    assert world.api.http.get(f"{V1}/whoami", headers=headers).status_code == 401


def test_the_last_admin_is_neither_removed_nor_demoted(world):
    removed = world.call("admin", "DELETE", "/teams/acme/members/ann")
    assert removed.status_code == 409 and "last admin" in removed.json()["error"]["message"]
    demoted = world.call("local_admin", "PUT", "/teams/acme/members/ann", {"role": "member"})
    assert demoted.status_code == 409 and "make another member admin first" in demoted.json()["error"]["message"]
    assert world.call("admin", "GET", "/whoami").json()["role"] == "admin"
    # With a second admin, the first may step down.
    assert world.call("admin", "PUT", "/teams/acme/members/max", {"role": "admin"}).status_code == 200
    assert world.call("admin", "PUT", "/teams/acme/members/ann", {"role": "viewer"}).status_code == 200
    assert world.call("admin", "GET", "/whoami").json()["role"] == "viewer"
    assert world.call("member", "DELETE", "/teams/acme/members/max").status_code == 409


def _admins(world: World, *users: str) -> None:
    for user in users:
        accounts.set_member(world.api.storage, "acme", user, "admin")


def test_two_admins_demoting_each_other_at_once_leave_the_team_an_admin(world):
    bob = world.api.key("acme", "bob", "admin")
    ann = world.headers["admin"]
    for _ in range(3):
        _admins(world, "ann", "bob")
        start = threading.Barrier(2)

        def demote(headers: dict[str, str], user: str, start: threading.Barrier = start) -> Any:
            start.wait()
            return world.api.http.put(f"{V1}/teams/acme/members/{user}", json={"role": "member"}, headers=headers)

        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(demote, [ann, bob], ["bob", "ann"]))
        statuses = sorted(a.status_code for a in answers)
        # One wins; the other is refused: 409 (last admin), or 403 when the winner demoted its key's user first.
        assert statuses in ([200, 409], [200, 403]), [a.text for a in answers]
        assert accounts.admin_count(world.api.storage, "acme") == 1


def test_concurrent_demotions_and_removals_in_one_process_keep_one_admin(world):
    storage = world.api.storage
    admins = [f"boss{i}" for i in range(4)]
    _admins(world, *admins)
    accounts.set_member(storage, "acme", "ann", "member")
    start = threading.Barrier(len(admins))

    def step_down(i: int) -> str:
        start.wait()
        try:
            if i % 2:
                accounts.remove_member(storage, "acme", admins[i])
            else:
                accounts.set_member(storage, "acme", admins[i], "viewer")
        except accounts.LastAdminError:
            return "refused"
        return "done"

    with ThreadPoolExecutor(len(admins)) as pool:
        outcomes = sorted(pool.map(step_down, range(len(admins))))
    assert outcomes == ["done"] * 3 + ["refused"]
    assert accounts.admin_count(storage, "acme") == 1


def test_replicas_racing_without_a_shared_lock_undo_their_change(world, monkeypatch):
    """Two API replicas share no lock: both pass the check, both write, both then see no admin left.
    Each puts its member's row back and refuses, so the team keeps both admins (a retry then passes)."""
    storage = world.api.storage
    _admins(world, "ann", "bob")
    _, bobs_key = accounts.create_key(storage, "acme", "bob")
    monkeypatch.setattr(accounts, "_team_lock", lambda team: contextlib.nullcontext())
    real_count = accounts.admin_count
    in_step = threading.Barrier(2)
    calls = threading.local()

    def admin_count(client, team: str) -> int:
        calls.n = getattr(calls, "n", 0) + 1
        if calls.n == 1:  # the check before writing: both see two admins
            count = real_count(client, team)
            in_step.wait()
            return count
        in_step.wait()  # the check after writing: both writes are in
        return real_count(client, team)

    monkeypatch.setattr(accounts, "admin_count", admin_count)

    def demote(user: str) -> str:
        try:
            if user == "ann":
                accounts.set_member(storage, "acme", user, "member")
            else:
                accounts.remove_member(storage, "acme", user)
        except accounts.LastAdminError as exc:
            return str(exc)
        return "done"

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(demote, ["ann", "bob"]))
    assert all("at the same moment" in o for o in outcomes), outcomes
    monkeypatch.setattr(accounts, "admin_count", real_count)
    roles = {m["user"]: m["role"] for m in accounts.list_members(storage, "acme")}
    assert roles["ann"] == roles["bob"] == "admin"
    # Each undo kept the member's row as it was: bob's keys were not revoked, and a retry passes.
    assert accounts.resolve_key(storage, bobs_key) is not None
    accounts.set_member(storage, "acme", "ann", "member")
    assert accounts.admin_count(storage, "acme") == 1


# -- keys ----------------------------------------------------------------------------------------------------


def test_key_endpoints_role_matrix(world):
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 200, "member": 200, "admin": 200, "local_admin": 200},
        "GET",
        "/teams/acme/keys",
    )
    # A key for oneself: any member; the local admin has no user of its own and must name one.
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 201, "member": 201, "admin": 201, "local_admin": 403},
        "POST",
        "/teams/acme/keys",
        {"name": "laptop"},
    )
    # A key for vic: vic, admins and the local admin.
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 201, "member": 403, "admin": 201, "local_admin": 201},
        "POST",
        "/teams/acme/keys",
        {"user": "vic"},
    )
    # Revoking one of vic's keys: vic, admins and the local admin.
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 200, "member": 403, "admin": 200, "local_admin": 200},
        "DELETE",
        "",
        per_call=lambda who: (f"/teams/acme/keys/{world.fresh_key('vic')[0]}", None),
    )


def test_a_created_key_works_is_shown_once_and_listings_hold_no_secrets(world):
    created = world.call("admin", "POST", "/teams/acme/keys", {"name": "ci runner", "user": "max"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"key_id", "key", "team", "user", "name", "scope", "created_at"}
    assert (body["team"], body["user"], body["name"]) == ("acme", "max", "ci runner")
    assert body["key"].startswith(f"rs_{body['key_id']}_")
    me = world.api.http.get(f"{V1}/whoami", headers={"Authorization": f"Bearer {body['key']}"}).json()
    assert (me["user"], me["role"], me["key_id"]) == ("max", "member", body["key_id"])
    secret = body["key"].split("_", 2)[2]  # the secret itself may hold "_"
    for who in ("admin", "member", "local_admin"):
        listing = world.call(who, "GET", "/teams/acme/keys")
        assert secret not in listing.text and "sha256" not in listing.text
        for key in listing.json()["keys"]:
            assert set(key) == {"key_id", "team", "user", "name", "scope", "created_at", "revoked_at"}
    # Members see their own keys; admins see everyone's.
    assert {k["user"] for k in world.call("member", "GET", "/teams/acme/keys").json()["keys"]} == {"max"}
    assert {k["user"] for k in world.call("admin", "GET", "/teams/acme/keys").json()["keys"]} == {"ann", "max", "vic"}


def test_a_key_only_for_a_member_of_the_team(world):
    response = world.call("admin", "POST", "/teams/acme/keys", {"user": "gus"})
    assert response.status_code == 404
    assert "not a member of team acme" in response.json()["error"]["message"]
    response = world.call("local_admin", "POST", "/teams/acme/keys", {})
    assert response.status_code == 403 and "send 'user'" in response.json()["error"]["message"]
    assert world.call("admin", "POST", "/teams/acme/keys", {"user": "../x"}).status_code == 400
    assert world.call("admin", "POST", "/teams/acme/keys", {"name": "n" * 201}).status_code == 400
    assert world.call("admin", "POST", "/teams/acme/keys", {"name": None}).status_code == 400
    assert world.call("local_admin", "POST", "/teams/nosuchteam/keys", {"user": "ann"}).status_code == 404


def test_a_revoked_key_fails_on_the_very_next_request(world):
    created = world.call("member", "POST", "/teams/acme/keys", {"name": "short-lived"}).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert world.api.http.get(f"{V1}/teams/acme/members", headers=headers).status_code == 200
    # The key revokes itself.
    revoked = world.api.http.delete(f"{V1}/teams/acme/keys/{created['key_id']}", headers=headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    response = world.api.http.get(f"{V1}/teams/acme/members", headers=headers)
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    # Revoked by an admin, too; revoking again changes nothing.
    key_id, key = world.fresh_key("vic")
    assert world.call("admin", "DELETE", f"/teams/acme/keys/{key_id}").status_code == 200
    assert world.api.http.get(f"{V1}/whoami", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert world.call("admin", "DELETE", f"/teams/acme/keys/{key_id}").status_code == 200
    listed = {k["key_id"]: k for k in world.call("admin", "GET", "/teams/acme/keys").json()["keys"]}
    assert listed[key_id]["revoked_at"] is not None
    # Another team's key ids are not found through this team.
    gus_key = accounts.create_key(world.api.storage, "globex", "gus")[0]
    assert world.call("admin", "DELETE", f"/teams/acme/keys/{gus_key}").status_code == 404
    assert world.call("admin", "DELETE", "/teams/acme/keys/nope").status_code == 404


# -- projects ------------------------------------------------------------------------------------------------


def test_project_endpoints_role_matrix(world):
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 403, "member": 201, "admin": 201, "local_admin": 201},
        "POST",
        "",
        per_call=lambda who: ("/projects/acme", {"name": f"p-{who}"}),
    )
    _expect(
        world,
        {"anonymous": 404, "other_team": 404, "viewer": 200, "member": 200, "admin": 200, "local_admin": 200},
        "GET",
        "/projects/acme/priv",
    )
    _expect(world, {who: 200 for who in WHO}, "GET", "/projects/acme/pub")
    _expect(
        world,
        {"anonymous": 401, "other_team": 404, "viewer": 403, "member": 403, "admin": 200, "local_admin": 200},
        "PATCH",
        "/projects/acme/priv",
        {"description": "x"},
    )
    _expect(
        world,
        {"anonymous": 401, "other_team": 403, "viewer": 403, "member": 403, "admin": 200, "local_admin": 200},
        "PATCH",
        "/projects/acme/pub",
        {"description": "y"},
    )


def test_visibility_private_is_hidden_public_is_read_only_to_outsiders(world):
    for who in ("anonymous", "other_team"):
        response = world.call(who, "GET", "/projects/acme/priv")
        assert response.status_code == 404 and "secret" not in response.text
        assert world.call(who, "GET", "/projects/acme/pub").json()["description"] == "open data"
    # Writing to the public project: refused to anonymous callers and other teams alike.
    assert world.api.ingest([_start("acme", "pub")], {}).status_code == 401
    assert world.api.ingest([_start("acme", "pub")], world.headers["other_team"]).status_code == 403
    assert world.call("other_team", "POST", "/projects/acme", {"name": "intruder"}).status_code == 404
    # Made public, the private project opens up to reading; made private again, it is gone.
    opened = world.call("admin", "PATCH", "/projects/acme/priv", {"visibility": "public"})
    assert opened.status_code == 200 and opened.json()["visibility"] == "public"
    assert opened.json()["description"] == "secret plans"
    assert world.call("anonymous", "GET", "/projects/acme/priv").status_code == 200
    assert world.call("admin", "PATCH", "/projects/acme/priv", {"visibility": "private"}).status_code == 200
    assert world.call("anonymous", "GET", "/projects/acme/priv").status_code == 404


def test_creating_and_changing_a_project(world):
    created = world.call("member", "POST", "/projects/acme", {"name": "vision", "description": "cnn"})
    assert created.status_code == 201
    assert created.json() == {
        "team": "acme",
        "name": "vision",
        "visibility": "private",
        "description": "cnn",
        "run_count": 0,
        "created_at": created.json()["created_at"],
    }
    assert world.call("admin", "POST", "/projects/acme", {"name": "vision"}).status_code == 409
    # Publishing is an admin's decision, at creation too.
    assert world.call("member", "POST", "/projects/acme", {"name": "open", "visibility": "public"}).status_code == 403
    assert world.call("admin", "POST", "/projects/acme", {"name": "open", "visibility": "public"}).status_code == 201
    for _ in range(3):  # created_at survives edits exactly
        patched = world.call("admin", "PATCH", "/projects/acme/vision", {"description": "resnet"})
        assert patched.json()["created_at"] == created.json()["created_at"]
    assert patched.json()["description"] == "resnet" and patched.json()["visibility"] == "private"
    assert world.call("admin", "PATCH", "/projects/acme/vision", {}).json() == patched.json()
    assert world.call("admin", "PATCH", "/projects/acme/missing", {"description": "x"}).status_code == 404
    assert world.call("admin", "GET", "/projects/acme/missing").status_code == 404
    for bad in (
        {"visibility": "secret"},
        {"visibility": None},
        {"visibility": ""},
        {"description": 5},
        {"description": "d" * 4001},
    ):
        assert world.call("admin", "PATCH", "/projects/acme/vision", bad).status_code == 400, bad
    for bad in ({}, {"name": ""}, {"name": "a/b"}, {"name": 7}, {"name": "x", "visibility": "everyone"}):
        assert world.call("admin", "POST", "/projects/acme", bad).status_code == 400, bad
    response = world.api.http.post(f"{V1}/projects/acme", content=b"{not json", headers=world.headers["admin"])
    assert response.status_code == 400


def test_project_listing_with_implicit_projects(world):
    api = world.api
    assert (
        api.ingest(
            [
                _start("acme", "logged", "r1"),
                _start("acme", "logged", "r2"),
                metrics_event(seq=1, run_id="r1", team="acme", project="logged"),
            ],
            world.headers["member"],
        ).status_code
        == 200
    )
    assert api.ingest([_start("globex", "theirs")], world.headers["other_team"]).status_code == 200
    # An implicit project (runs only) is private, counts its runs, and is readable by its team.
    mine = {(p["team"], p["name"]): p for p in world.call("viewer", "GET", "/projects").json()["projects"]}
    assert set(mine) == {("acme", "logged"), ("acme", "priv"), ("acme", "pub")}
    assert mine[("acme", "logged")]["visibility"] == "private" and mine[("acme", "logged")]["run_count"] == 2
    assert mine[("acme", "logged")]["description"] == "" and mine[("acme", "logged")]["created_at"] > 0
    assert world.call("viewer", "GET", "/projects/acme/logged").json()["run_count"] == 2
    assert world.call("other_team", "GET", "/projects/acme/logged").status_code == 404
    # Another team sees its own and the public ones; anonymous callers only the public ones.
    theirs = [(p["team"], p["name"]) for p in world.call("other_team", "GET", "/projects").json()["projects"]]
    assert theirs == [("acme", "pub"), ("globex", "theirs")]
    anonymous = world.call("anonymous", "GET", "/projects").json()["projects"]
    assert [(p["team"], p["name"]) for p in anonymous] == [("acme", "pub")]
    everything = [(p["team"], p["name"]) for p in world.call("local_admin", "GET", "/projects").json()["projects"]]
    assert everything == [("acme", "logged"), ("acme", "priv"), ("acme", "pub"), ("globex", "theirs")]
    only = world.call("other_team", "GET", "/projects?team=acme").json()["projects"]
    assert [(p["team"], p["name"]) for p in only] == [("acme", "pub")]
    assert world.call("local_admin", "GET", "/projects?team=globex").json()["projects"][0]["name"] == "theirs"
    # Creating a project that runs already made is a conflict; changing it gives it a row, runs still counted.
    assert world.call("member", "POST", "/projects/acme", {"name": "logged"}).status_code == 409
    opened = world.call("admin", "PATCH", "/projects/acme/logged", {"visibility": "public"}).json()
    assert (opened["visibility"], opened["run_count"]) == ("public", 2)
    assert opened["created_at"] == mine[("acme", "logged")]["created_at"]
    assert ("acme", "logged") in {
        (p["team"], p["name"]) for p in world.call("anonymous", "GET", "/projects").json()["projects"]
    }
    # The shape the SDK's public client (runstream.Api.projects) reads.
    for p in world.call("viewer", "GET", "/projects").json()["projects"]:
        assert Project(p["team"], p["name"], p["visibility"], p["run_count"], p.get("created_at")).path


# -- hostile input -------------------------------------------------------------------------------------------

HOSTILE = [
    "..",
    "%2e%2e",
    "..%2F..%2Fetc",
    "a'b",
    'a"b',
    "x" * 5000,
    "%00",
    "a%20b",
    "%E2%98%83",
    "a;DROP TABLE runs",
    "-leading",
    "%27%29%3B--",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused_with_4xx(world, name):
    calls = [
        ("GET", f"/teams/{name}/members", None),
        ("GET", f"/teams/{name}/keys", None),
        ("POST", f"/teams/{name}/keys", {"name": "k"}),
        ("DELETE", f"/teams/{name}/keys/{name}", None),
        ("PUT", f"/teams/{name}/members/{name}", {"role": "admin"}),
        ("PUT", f"/teams/acme/members/{name}", {"role": "member"}),
        ("DELETE", f"/teams/acme/members/{name}", None),
        ("DELETE", f"/teams/acme/keys/{name}", None),
        ("POST", f"/projects/{name}", {"name": "p"}),
        ("GET", f"/projects/{name}/{name}", None),
        ("GET", f"/projects/acme/{name}", None),
        ("PATCH", f"/projects/acme/{name}", {"description": "d"}),
        ("GET", f"/projects?team={name}", None),
    ]
    for who in ("anonymous", "admin", "local_admin"):
        for method, path, body in calls:
            response = world.call(who, method, path, body)
            assert response.status_code < 500, (who, method, path[:80], response.text)
            # The HTTP client resolves dot segments ("acme/.." is "/projects"): such a path is another endpoint.
            if not path.startswith("/projects?") and name not in ("..", "%2e%2e"):
                assert response.status_code >= 400, (who, method, path[:80], response.text)
    # Hostile names in bodies, too.
    import urllib.parse

    raw = urllib.parse.unquote(name)
    assert world.call("local_admin", "POST", "/teams", {"team": raw}).status_code == 400
    assert world.call("admin", "POST", "/projects/acme", {"name": raw}).status_code == 400
    assert world.call("admin", "POST", "/teams/acme/keys", {"user": raw}).status_code == 400


def test_openapi_documents_these_endpoints_with_their_statuses(api):
    document = api.http.get(f"{V1}/openapi.json").json()
    paths = document["paths"]

    def resolved(schema: dict) -> dict:  # a named schema is a $ref into the components
        if "$ref" in schema:
            return resolved(document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
        return schema

    assert set(paths[f"{V1}/teams/{{team}}/keys"]) == {"get", "post"}
    post_key = paths[f"{V1}/teams/{{team}}/keys"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404"} <= set(post_key)
    assert post_key["401"]["description"] == "no key, or a key that does not work"
    schema = resolved(post_key["201"]["content"]["application/json"]["schema"])
    assert "key" in schema["required"]
    listing = resolved(
        paths[f"{V1}/teams/{{team}}/keys"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    )
    assert "key" not in resolved(listing["properties"]["keys"]["items"])["properties"]
    assert {"200", "400", "401", "403", "404"} <= set(
        paths[f"{V1}/projects/{{team}}/{{project}}"]["patch"]["responses"]
    )
