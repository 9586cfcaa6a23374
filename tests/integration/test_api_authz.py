"""Every endpoint × every kind of caller → the expected status, against a real server on real data.

``ACCESS`` maps each operation of the OpenAPI document to its access class and a
valid request (valid body, existing resources; a fresh resource where the call
destroys one). A test checks that it covers exactly the document's operations, so
a new endpoint cannot be left out. Each class has its row in ``EXPECTED``,
following ``runstream.api.auth``: private things are 404 to outsiders, anonymous
writes 401, a share link reads its report's project and gets 401 on writes, a
viewer gets 403 on writes. The target is a private project of team acme; read
and write classes are also tried on a public project (anyone reads, nobody
outside the team writes); ingest (runs, files, sweep agents) is a write that keys of
scope ingest may make. The callers: no key, another team's admin key, acme's
viewer, member and admin, a share link of a report in the private project, and
the embedded server's local admin (a loopback caller when the server trusts it).

Scoped keys (``SCOPED``) are tried on every operation too: the admin's keys of scope
read and ingest, and the viewer's of scope ingest. What they get follows from the
operation's declared scope (``x-runstream-scope``) and what the same member's admin-scoped
key gets (``expected_scoped``); ``test_declared_scopes`` pins the declarations.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from runstream import events
from runstream.api.app import create_app
from runstream.settings import Settings
from runstream.storage import accounts
from tests.helpers import ServedApp, fresh_chdb_dsn, make_event

TEAM, PRIVATE, PUBLIC = "acme", "mnist", "open"
RUN = {PRIVATE: "r1", PUBLIC: "p1"}
ADMIN, MEMBER, VIEWER = "alice", "mia", "vic"
BLOB = b"weights\n"
SHA = hashlib.sha256(BLOB).hexdigest()
ARTIFACT = "data"  # an artifact of one version in each project: BLOB as "w.bin"
#: A random sweep with no run cap: its agent's ``next`` hands out a run however often it is asked.
SWEEP_CONFIG = {"method": "random", "parameters": {"lr": {"values": [0.1, 0.01]}}}
#: Runs of each project with a summary metric of their own, enough for parameter importance.
IMPORTANCE_RUNS = {"k0": 0.1, "k1": 0.01, "k2": 0.001}
MANIFEST = orjson.dumps(
    {"version": 1, "entries": {"w.bin": {"digest": SHA, "size": len(BLOB)}}}, option=orjson.OPT_SORT_KEYS
)
#: Keys with a scope: caller -> (the caller whose role it has, the key's scope).
SCOPED: dict[str, tuple[str, accounts.Scope]] = {
    "admin_read_key": ("admin", "read"),
    "admin_ingest_key": ("admin", "ingest"),
    "viewer_ingest_key": ("viewer", "ingest"),
}
CALLERS = ("anonymous", "other_team", "viewer", "member", "admin", "share_link", "local_admin", *SCOPED)
OK = "ok"  # the request's own success status
V1 = "/api/v1"
_fresh = itertools.count()

# -- who may do what (api/auth.py's table) ------------------------------------------------------

EXPECTED: dict[str, dict[str, int | str]] = {
    "public": dict(anonymous=OK, other_team=OK, viewer=OK, member=OK, admin=OK, share_link=OK, local_admin=OK),
    "any-key": dict(anonymous=401, other_team=OK, viewer=OK, member=OK, admin=OK, share_link=401, local_admin=OK),
    "project-read": dict(anonymous=404, other_team=404, viewer=OK, member=OK, admin=OK, share_link=OK, local_admin=OK),
    "project-write": dict(
        anonymous=401, other_team=404, viewer=403, member=OK, admin=OK, share_link=401, local_admin=OK
    ),
    # Runs, files, blobs and sweep agents: a member's write, which a key of scope ingest may make too.
    "project-ingest": dict(
        anonymous=401, other_team=404, viewer=403, member=OK, admin=OK, share_link=401, local_admin=OK
    ),
    "project-admin": dict(
        anonymous=401, other_team=404, viewer=403, member=403, admin=OK, share_link=401, local_admin=OK
    ),
    "team-read": dict(anonymous=401, other_team=404, viewer=OK, member=OK, admin=OK, share_link=401, local_admin=OK),
    "team-write": dict(anonymous=401, other_team=404, viewer=403, member=OK, admin=OK, share_link=401, local_admin=OK),
    "team-admin": dict(anonymous=401, other_team=404, viewer=403, member=403, admin=OK, share_link=401, local_admin=OK),
    # The member's own key (created or revoked): the member and admins may, a viewer may not.
    "self-or-admin": dict(
        anonymous=401, other_team=404, viewer=403, member=OK, admin=OK, share_link=401, local_admin=OK
    ),
    "local-admin-only": dict(
        anonymous=401, other_team=403, viewer=403, member=403, admin=403, share_link=401, local_admin=OK
    ),
}
# The same classes on a public project of acme: everyone reads; outsiders with a key get 403 on writes.
EXPECTED_PUBLIC: dict[str, dict[str, int | str]] = {
    "project-read": EXPECTED["public"],
    "project-write": {**EXPECTED["project-write"], "other_team": 403},
    "project-ingest": {**EXPECTED["project-ingest"], "other_team": 403},
    "project-admin": {**EXPECTED["project-admin"], "other_team": 403},
}


# -- the data and the callers ------------------------------------------------------------------------


@dataclass
class Target:
    """One project's existing things: what requests name."""

    project: str
    run_id: str
    report_id: str = ""
    rule_id: str = ""
    sweep_id: str = ""
    agent_id: str = ""  # an agent of sweep_id
    view_id: str = ""  # the project's default view


@dataclass
class World:
    url: str
    app: Any
    headers: dict[str, dict[str, str]]
    targets: dict[str, Target] = field(default_factory=dict)
    share_token: str = ""
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> Any:
        return self.app.state.backend.client

    def admin_call(
        self, method: str, path: str, status: int = 200, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        response = requests.request(
            method, f"{self.url}{V1}{path}", timeout=30, headers={**self.headers["admin"], **(headers or {})}, **kwargs
        )
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    # Fresh resources, for calls that destroy or create the thing they name.
    def fresh_report(self, project: str) -> str:
        return self.admin_call("POST", f"/projects/{TEAM}/{project}/reports", 201, json={"title": "scratch"})["id"]

    def fresh_rule(self, project: str) -> str:
        return self.admin_call(
            "POST",
            f"/projects/{TEAM}/{project}/alert-rules",
            201,
            json={"name": "scratch", "kind": "nonfinite", "spec": {"metric": "loss"}},
        )["id"]

    def fresh_sweep(self, project: str) -> str:
        return self.admin_call("POST", f"/projects/{TEAM}/{project}/sweeps", 201, json={"config": SWEEP_CONFIG})[
            "sweep_id"
        ]

    def fresh_view(self, project: str, default: bool = False) -> str:
        body = {"name": "scratch", "spec": {"panels": []}, "default": default}
        return self.admin_call("POST", f"/projects/{TEAM}/{project}/views", 201, json=body)["view_id"]

    def fresh_user(self) -> str:
        user = f"u{next(_fresh)}"
        accounts.set_member(self.client, TEAM, user, "viewer")
        return user

    def fresh_member_key(self) -> str:
        return accounts.create_key(self.client, TEAM, MEMBER, "scratch")[0]

    def fresh_alias(self, project: str) -> str:
        """An alias of the seeded artifact, for a call that removes it: its name."""
        alias = f"a{next(_fresh)}"
        self.admin_call(
            "PUT", f"/projects/{TEAM}/{project}/artifacts/{ARTIFACT}/aliases/{alias}", json={"version": "v0"}
        )
        return alias

    def fresh_run(self, project: str) -> str:
        """A finished run of its own, for calls that delete or move it: its path."""
        run_id = f"s{next(_fresh)}"
        started = make_event(events.RUN_START, {"name": run_id}, seq=1, run_id=run_id, team=TEAM, project=project)
        finished = make_event(
            events.RUN_FINISH, {"state": "finished"}, seq=2, run_id=run_id, team=TEAM, project=project
        )
        body = b"\n".join(orjson.dumps(e) for e in (started, finished))
        self.admin_call("POST", "/events", data=body, headers={"Content-Type": "application/x-ndjson"})
        return f"{V1}/runs/{TEAM}/{project}/{run_id}"

    def fresh_project(self, like: str) -> str:
        """A project of its own with the visibility of ``like``, for a call that deletes it: its path."""
        name = f"scratch{next(_fresh)}"
        visibility = "public" if like == PUBLIC else "private"
        self.admin_call("POST", f"/projects/{TEAM}", 201, json={"name": name, "visibility": visibility})
        return f"{V1}/projects/{TEAM}/{name}"


def _events(project: str, run_id: str) -> list[dict[str, Any]]:
    t0 = time.time() - 300
    seq = itertools.count(1)

    def event(type: str, data: dict[str, Any], ts: float) -> dict[str, Any]:
        return make_event(type, data, seq=next(seq), run_id=run_id, team=TEAM, project=project, ts=ts)

    return [
        event(events.RUN_START, {"name": run_id, "config": {"lr": 0.1}, "group": "g"}, t0),
        event(
            events.METRICS,
            {"step": [0, 1, 2], "time": [t0, t0 + 1, t0 + 2], "values": {"loss": [1.0, 0.5, 0.25]}},
            t0 + 2,
        ),
        event(events.SYSTEM, {"time": [t0, t0 + 1], "values": {"cpu": [10.0, 20.0]}}, t0 + 1),
        event(events.CONSOLE, {"time": [t0], "stream": ["stdout"], "line": ["epoch 1"]}, t0),
        event(
            events.FILE,
            {"path": "model.pt", "kind": "file", "size": len(BLOB), "sha256": SHA, "store_key": "model.pt"},
            t0,
        ),
        event(
            events.FILE,
            {
                "path": "media/images/s_1.png",
                "kind": "media",
                "size": 3,
                "sha256": "ab" * 32,
                "store_key": "media/images/s_1.png",
                "step": 1,
                "media_type": "image/png",
                "meta": {"key": "samples"},
            },
            t0,
        ),
        event(events.ALERT, {"title": "loss is low", "text": "", "level": "INFO", "source": "sdk"}, t0 + 2),
    ]


def _importance_events(project: str) -> list[dict[str, Any]]:
    """IMPORTANCE_RUNS, finished, each with its config.lr and summary.acc."""
    batch = []
    for run_id, lr in IMPORTANCE_RUNS.items():
        steps: list[tuple[str, dict[str, Any]]] = [
            (events.RUN_START, {"name": run_id, "config": {"lr": lr}}),
            (events.RUN_UPDATE, {"summary": {"acc": 1 - lr}}),
            (events.RUN_FINISH, {"state": "finished"}),
        ]
        for seq, (type, data) in enumerate(steps, start=1):
            batch.append(make_event(type, data, seq=seq, run_id=run_id, team=TEAM, project=project))
    return batch


def seed(world: World) -> None:
    client = world.client
    world.headers = {"anonymous": {}, "local_admin": {}}
    seats: list[tuple[str, str, str, accounts.Role]] = [
        ("admin", TEAM, ADMIN, "admin"),
        ("member", TEAM, MEMBER, "member"),
        ("viewer", TEAM, VIEWER, "viewer"),
        ("other_team", "rival", "mallory", "admin"),
    ]
    for who, team, user, role in seats:
        accounts.ensure_team(client, team)
        accounts.set_member(client, team, user, role)
        world.headers[who] = {"Authorization": f"Bearer {accounts.create_key(client, team, user, 'authz')[1]}"}
    users = {who: user for who, _, user, _ in seats}
    for who, (seat, scope) in SCOPED.items():
        key = accounts.create_key(client, TEAM, users[seat], f"authz {scope}", scope=scope)[1]
        world.headers[who] = {"Authorization": f"Bearer {key}"}
    batch = [e for project, run_id in RUN.items() for e in _events(project, run_id) + _importance_events(project)]
    world.admin_call(
        "POST",
        "/events",
        data=b"\n".join(orjson.dumps(e) for e in batch),
        headers={"Content-Type": "application/x-ndjson"},
    )
    world.admin_call("PATCH", f"/projects/{TEAM}/{PUBLIC}", json={"visibility": "public"})
    for project, run_id in RUN.items():
        world.admin_call("PUT", f"/files/{TEAM}/{project}/{run_id}/model.pt", params={"sha256": SHA}, data=BLOB)
        seed_artifact(world, project, run_id)
        sweep_id = world.fresh_sweep(project)
        agent = world.admin_call(
            "POST", f"/projects/{TEAM}/{project}/sweeps/{sweep_id}/agents", 201, json={"host": "h", "pid": 1}
        )
        world.targets[project] = Target(
            project,
            run_id,
            world.fresh_report(project),
            world.fresh_rule(project),
            sweep_id,
            agent["agent_id"],
            world.fresh_view(project, default=True),
        )
    # The share link is of a report of its own, so editing the reports above leaves it alone.
    shared = world.fresh_report(PRIVATE)
    world.share_token = world.admin_call("POST", f"/projects/{TEAM}/{PRIVATE}/reports/{shared}/share", 201, json={})[
        "token"
    ]
    world.headers["share_link"] = {"X-Runstream-Share": world.share_token}


def seed_artifact(world: World, project: str, run_id: str) -> None:
    """Blobs, then the log event of ARTIFACT's v0 (docs/artifacts.md)."""
    for blob in (BLOB, MANIFEST):
        digest = hashlib.sha256(blob).hexdigest()
        world.admin_call("PUT", f"/projects/{TEAM}/{project}/blobs/{digest}", params={"size": len(blob)}, data=blob)
    data = {
        "action": "log",
        "name": ARTIFACT,
        "type": "dataset",
        "digest": hashlib.sha256(MANIFEST).hexdigest(),
        "size": len(BLOB),
        "file_count": 1,
    }
    event = make_event(events.ARTIFACT, data, seq=50, run_id=run_id, team=TEAM, project=project)
    world.admin_call("POST", "/events", data=orjson.dumps(event), headers={"Content-Type": "application/x-ndjson"})


@pytest.fixture(scope="module")
def world(chdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(clickhouse_dsn=fresh_chdb_dsn(chdb_dir), data_dir=str(tmp_path_factory.mktemp("authz")))
    app = create_app(settings)
    with ServedApp(app) as url:
        served = World(url, app, {})
        seed(served)
        yield served


# -- one valid request per operation --------------------------------------------------------------


@dataclass
class Call:
    method: str
    path: str
    ok: int = 200
    json: Any = None
    data: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)


Build = Callable[[World, Target], Call]
P = "/projects/{team}/{project}"  # path templates, as the document has them
R = "/runs/{team}/{project}/{run_id}"


def _p(t: Target) -> str:
    return f"{V1}/projects/{TEAM}/{t.project}"


def _r(t: Target) -> str:
    return f"{V1}/runs/{TEAM}/{t.project}/{t.run_id}"


def _ingest(w: World, t: Target) -> Call:
    event = make_event(
        events.METRICS,
        {"step": [10], "time": [time.time()], "values": {"loss": [0.1]}},
        seq=100,
        run_id=t.run_id,
        team=TEAM,
        project=t.project,
    )
    return Call("POST", f"{V1}/events", data=orjson.dumps(event), headers={"Content-Type": "application/x-ndjson"})


# (method, path template) -> (access class, the request). Paths are the document's.
ACCESS: dict[tuple[str, str], tuple[str, Build]] = {
    ("GET", "/api/v1/health"): ("public", lambda w, t: Call("GET", f"{V1}/health")),
    ("GET", "/api/v1/ready"): ("public", lambda w, t: Call("GET", f"{V1}/ready")),
    ("GET", "/metrics"): ("public", lambda w, t: Call("GET", "/metrics")),
    ("GET", "/api/v1/whoami"): ("public", lambda w, t: Call("GET", f"{V1}/whoami")),
    ("GET", "/api/v1/projects"): ("public", lambda w, t: Call("GET", f"{V1}/projects")),
    ("GET", "/api/v1/shared/{token}"): ("public", lambda w, t: Call("GET", f"{V1}/shared/{w.share_token}")),
    ("GET", "/api/v1/teams"): ("any-key", lambda w, t: Call("GET", f"{V1}/teams")),
    ("POST", "/api/v1/teams"): (
        "local-admin-only",
        lambda w, t: Call("POST", f"{V1}/teams", 201, json={"team": f"t{next(_fresh)}"}),
    ),
    # ingest and files
    ("POST", "/api/v1/events"): ("project-ingest", _ingest),
    ("PUT", "/api/v1/files/{team}/{project}/{run_id}/{store_key}"): (
        "project-ingest",
        lambda w, t: Call("PUT", f"{V1}/files/{TEAM}/{t.project}/{t.run_id}/up.bin", params={"sha256": SHA}, data=BLOB),
    ),
    ("GET", "/api/v1/files/{team}/{project}/{run_id}/{store_key}"): (
        "project-read",
        lambda w, t: Call("GET", f"{V1}/files/{TEAM}/{t.project}/{t.run_id}/model.pt"),
    ),
    # runs
    ("GET", f"/api/v1{P}/runs"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/runs")),
    ("GET", f"/api/v1{P}/runs/count"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/runs/count")),
    ("POST", f"/api/v1{P}/runs/groups"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/runs/groups", json={"by": ["group"]}),
    ),
    ("GET", f"/api/v1{P}/keys"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/keys")),
    ("GET", f"/api/v1{R}"): ("project-read", lambda w, t: Call("GET", _r(t))),
    ("PATCH", f"/api/v1{R}"): (
        "project-write",
        lambda w, t: Call(
            "PATCH", _r(t), json={"tags": ["seen"], "name": "seen", "config": {"seen": True}, "summary": {"seen": 1}}
        ),
    ),
    ("GET", f"/api/v1{R}/metrics"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/metrics")),
    ("GET", f"/api/v1{R}/statistics"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/statistics")),
    ("GET", f"/api/v1{R}/system"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/system")),
    ("GET", f"/api/v1{R}/console"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/console")),
    ("GET", f"/api/v1{R}/files"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/files")),
    ("GET", f"/api/v1{R}/media"): (
        "project-read",
        lambda w, t: Call("GET", f"{_r(t)}/media", params={"key": "samples"}),
    ),
    # history, charts, exports
    ("GET", f"/api/v1{R}/history"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/history")),
    ("GET", f"/api/v1{R}/history/scan"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/history/scan")),
    ("GET", f"/api/v1{R}/export"): (
        "project-read",
        lambda w, t: Call("GET", f"{_r(t)}/export", params={"format": "csv"}),
    ),
    ("POST", f"/api/v1{P}/series"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/series", json={"metrics": ["loss"]}),
    ),
    ("POST", f"/api/v1{P}/bands"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/bands", json={"metric": "loss", "groups": {"all": [t.run_id]}}),
    ),
    ("POST", f"/api/v1{P}/system"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/system", json={"metrics": ["cpu"]}),
    ),
    ("GET", f"/api/v1{P}/export"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/export", params={"format": "csv"}),
    ),
    # reports and share links
    ("GET", f"/api/v1{P}/reports"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/reports")),
    ("POST", f"/api/v1{P}/reports"): (
        "project-write",
        lambda w, t: Call("POST", f"{_p(t)}/reports", 201, json={"title": "new"}),
    ),
    ("GET", f"/api/v1{P}/reports/{{report_id}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/reports/{t.report_id}"),
    ),
    ("PATCH", f"/api/v1{P}/reports/{{report_id}}"): (
        "project-write",
        lambda w, t: Call("PATCH", f"{_p(t)}/reports/{t.report_id}", json={"body": "edited"}),
    ),
    ("DELETE", f"/api/v1{P}/reports/{{report_id}}"): (
        "project-write",
        lambda w, t: Call("DELETE", f"{_p(t)}/reports/{w.fresh_report(t.project)}", 204),
    ),
    ("POST", f"/api/v1{P}/reports/{{report_id}}/share"): (
        "project-write",
        lambda w, t: Call("POST", f"{_p(t)}/reports/{t.report_id}/share", 201, json={}),
    ),
    ("DELETE", f"/api/v1{P}/reports/{{report_id}}/share"): (
        "project-write",
        lambda w, t: Call("DELETE", f"{_p(t)}/reports/{w.fresh_report(t.project)}/share"),
    ),
    # alerts and rules
    ("GET", f"/api/v1{P}/alerts"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/alerts")),
    ("GET", f"/api/v1{P}/alerts/stream"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/alerts/stream", params={"since": "0", "max_events": "1", "timeout_s": "5"}),
    ),
    ("GET", f"/api/v1{P}/alert-rules"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/alert-rules")),
    ("POST", f"/api/v1{P}/alert-rules"): (
        "project-write",
        lambda w, t: Call(
            "POST", f"{_p(t)}/alert-rules", 201, json={"name": "new", "kind": "nonfinite", "spec": {"metric": "loss"}}
        ),
    ),
    ("GET", f"/api/v1{P}/alert-rules/{{rule_id}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/alert-rules/{t.rule_id}"),
    ),
    ("PATCH", f"/api/v1{P}/alert-rules/{{rule_id}}"): (
        "project-write",
        lambda w, t: Call("PATCH", f"{_p(t)}/alert-rules/{t.rule_id}", json={"cooldown_s": 60}),
    ),
    ("DELETE", f"/api/v1{P}/alert-rules/{{rule_id}}"): (
        "project-write",
        lambda w, t: Call("DELETE", f"{_p(t)}/alert-rules/{w.fresh_rule(t.project)}", 204),
    ),
    # teams, members, keys, projects
    ("GET", "/api/v1/teams/{team}/members"): ("team-read", lambda w, t: Call("GET", f"{V1}/teams/{TEAM}/members")),
    ("PUT", "/api/v1/teams/{team}/members/{user}"): (
        "team-admin",
        lambda w, t: Call("PUT", f"{V1}/teams/{TEAM}/members/n{next(_fresh)}", 201, json={"role": "viewer"}),
    ),
    ("DELETE", "/api/v1/teams/{team}/members/{user}"): (
        "team-admin",
        lambda w, t: Call("DELETE", f"{V1}/teams/{TEAM}/members/{w.fresh_user()}"),
    ),
    ("GET", "/api/v1/teams/{team}/keys"): ("team-read", lambda w, t: Call("GET", f"{V1}/teams/{TEAM}/keys")),
    ("GET", "/api/v1/teams/{team}/audit"): ("team-admin", lambda w, t: Call("GET", f"{V1}/teams/{TEAM}/audit")),
    ("POST", "/api/v1/teams/{team}/keys"): (
        "self-or-admin",
        lambda w, t: Call("POST", f"{V1}/teams/{TEAM}/keys", 201, json={"user": MEMBER, "name": "ci"}),
    ),
    ("DELETE", "/api/v1/teams/{team}/keys/{key_id}"): (
        "self-or-admin",
        lambda w, t: Call("DELETE", f"{V1}/teams/{TEAM}/keys/{w.fresh_member_key()}"),
    ),
    ("POST", "/api/v1/projects/{team}"): (
        "team-write",
        lambda w, t: Call("POST", f"{V1}/projects/{TEAM}", 201, json={"name": f"p{next(_fresh)}"}),
    ),
    # artifacts (docs/artifacts.md)
    ("POST", f"/api/v1{P}/blobs/missing"): (
        "project-ingest",
        lambda w, t: Call("POST", f"{_p(t)}/blobs/missing", json={"sha256": [SHA]}),
    ),
    ("PUT", f"/api/v1{P}/blobs/{{sha256}}"): (
        "project-ingest",
        lambda w, t: Call("PUT", f"{_p(t)}/blobs/{SHA}", params={"size": str(len(BLOB))}, data=BLOB),
    ),
    ("GET", f"/api/v1{P}/artifacts"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/artifacts")),
    ("GET", f"/api/v1{P}/artifacts/{{name}}/versions"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/artifacts/{ARTIFACT}/versions"),
    ),
    ("GET", f"/api/v1{P}/artifacts/{{name}}/{{ref}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/artifacts/{ARTIFACT}/latest"),
    ),
    ("GET", f"/api/v1{P}/artifacts/{{name}}/{{ref}}/lineage"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/artifacts/{ARTIFACT}/v0/lineage"),
    ),
    ("GET", f"/api/v1{P}/artifacts/{{name}}/{{ref}}/files/{{path}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/artifacts/{ARTIFACT}/v0/files/w.bin"),
    ),
    ("PUT", f"/api/v1{P}/artifacts/{{name}}/aliases/{{alias}}"): (
        "project-write",
        lambda w, t: Call("PUT", f"{_p(t)}/artifacts/{ARTIFACT}/aliases/best", json={"version": "v0"}),
    ),
    ("DELETE", f"/api/v1{P}/artifacts/{{name}}/aliases/{{alias}}"): (
        "project-write",
        lambda w, t: Call("DELETE", f"{_p(t)}/artifacts/{ARTIFACT}/aliases/{w.fresh_alias(t.project)}", 204),
    ),
    ("GET", f"/api/v1{R}/artifacts"): ("project-read", lambda w, t: Call("GET", f"{_r(t)}/artifacts")),
    # sweeps (docs/sweeps.md): a paused sweep of its own for each PATCH, so the seeded one keeps running
    ("POST", f"/api/v1{P}/sweeps"): (
        "project-write",
        lambda w, t: Call("POST", f"{_p(t)}/sweeps", 201, json={"config": SWEEP_CONFIG, "name": "new"}),
    ),
    ("GET", f"/api/v1{P}/sweeps"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/sweeps")),
    ("GET", f"/api/v1{P}/sweeps/{{sweep}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/sweeps/{t.sweep_id}"),
    ),
    ("PATCH", f"/api/v1{P}/sweeps/{{sweep}}"): (
        "project-write",
        lambda w, t: Call("PATCH", f"{_p(t)}/sweeps/{w.fresh_sweep(t.project)}", json={"state": "paused"}),
    ),
    ("POST", f"/api/v1{P}/sweeps/{{sweep}}/agents"): (
        "project-ingest",
        lambda w, t: Call("POST", f"{_p(t)}/sweeps/{t.sweep_id}/agents", 201, json={"host": "h", "pid": 2}),
    ),
    ("POST", f"/api/v1{P}/sweeps/{{sweep}}/agents/{{agent}}/next"): (
        "project-ingest",
        lambda w, t: Call("POST", f"{_p(t)}/sweeps/{t.sweep_id}/agents/{t.agent_id}/next"),
    ),
    ("POST", f"/api/v1{P}/sweeps/{{sweep}}/agents/{{agent}}/heartbeat"): (
        "project-ingest",
        lambda w, t: Call("POST", f"{_p(t)}/sweeps/{t.sweep_id}/agents/{t.agent_id}/heartbeat", json={"running": []}),
    ),
    # panels and saved views (docs/panels.md)
    ("POST", f"/api/v1{P}/runs/columns"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/runs/columns", json={"fields": ["config.lr", "summary.acc", "state"]}),
    ),
    ("POST", f"/api/v1{P}/importance"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/importance", json={"metric": "summary.acc", "params": ["config.lr"]}),
    ),
    # media across runs (docs/panels.md, "Media across runs")
    ("POST", f"/api/v1{P}/media/latest"): (
        "project-read",
        lambda w, t: Call("POST", f"{_p(t)}/media/latest", json={"key": "samples", "filters": {"state": "finished"}}),
    ),
    ("GET", f"/api/v1{P}/media/keys"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/media/keys")),
    ("GET", f"/api/v1{P}/views"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/views")),
    ("POST", f"/api/v1{P}/views"): (
        "project-write",
        lambda w, t: Call("POST", f"{_p(t)}/views", 201, json={"name": "new", "spec": {"panels": []}}),
    ),
    ("GET", f"/api/v1{P}/views/default"): ("project-read", lambda w, t: Call("GET", f"{_p(t)}/views/default")),
    ("GET", f"/api/v1{P}/views/{{view_id}}"): (
        "project-read",
        lambda w, t: Call("GET", f"{_p(t)}/views/{t.view_id}"),
    ),
    ("PUT", f"/api/v1{P}/views/{{view_id}}"): (
        "project-write",
        lambda w, t: Call("PUT", f"{_p(t)}/views/{t.view_id}", json={"name": "edited", "spec": {"panels": [1]}}),
    ),
    ("DELETE", f"/api/v1{P}/views/{{view_id}}"): (
        "project-write",
        lambda w, t: Call("DELETE", f"{_p(t)}/views/{w.fresh_view(t.project)}", 204),
    ),
    ("GET", f"/api/v1{P}"): ("project-read", lambda w, t: Call("GET", _p(t))),
    ("PATCH", f"/api/v1{P}"): ("project-admin", lambda w, t: Call("PATCH", _p(t), json={"description": "edited"})),
    # deleting and moving (storage/deletion.py): each call on a run or project of its own
    ("DELETE", f"/api/v1{P}"): ("project-admin", lambda w, t: Call("DELETE", w.fresh_project(t.project))),
    ("DELETE", f"/api/v1{R}"): ("project-admin", lambda w, t: Call("DELETE", w.fresh_run(t.project))),
    ("POST", f"/api/v1{R}/move"): (
        "project-admin",
        lambda w, t: Call("POST", f"{w.fresh_run(t.project)}/move", json={"project": f"moved{next(_fresh)}"}),
    ),
}


# -- the tests ------------------------------------------------------------------------------------------


def _send(world: World, caller: str, call: Call) -> requests.Response:
    backend = world.app.state.backend
    backend.local_admin = caller == "local_admin"  # the embedded server trusts a loopback caller
    try:
        return requests.request(
            call.method,
            world.url + call.path,
            json=call.json,
            data=call.data,
            params=call.params,
            headers={**world.headers[caller], **call.headers},
            timeout=30,
        )
    finally:
        backend.local_admin = False


def declared_scope(world: World, operation: tuple[str, str]) -> str:
    if not world.document:
        world.document = requests.get(f"{world.url}/api/v1/openapi.json", timeout=30).json()
    method, path = operation
    declared: str = world.document["paths"][path][method.lower()]["x-runstream-scope"]
    return declared


def expected_scoped(base: int | str, key_scope: str, declared: str) -> int | str:
    """What a key of ``key_scope`` gets where the same member's admin-scoped key gets ``base``: the same
    where its scope admits the operation; else 403 where the member could (or was refused for the role),
    and the same refusal where the member learns nothing (404)."""
    if declared in ("none", "any") or key_scope == "admin" or key_scope == declared:
        return base
    return 403 if base in (OK, 403) else base


def _check(
    world: World, operation: tuple[str, str], caller: str, project: str, expected: dict[str, dict[str, int | str]]
) -> None:
    access, build = ACCESS[operation]
    call = build(world, world.targets[project])
    response = _send(world, caller, call)
    if caller in SCOPED:
        seat, scope = SCOPED[caller]
        want = expected_scoped(expected[access][seat], scope, declared_scope(world, operation))
    else:
        want = expected[access][caller]
    want = call.ok if want == OK else want
    assert response.status_code == want, f"{caller} {call.method} {call.path}: {response.text[:300]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and error["code"]


def test_the_table_covers_exactly_the_documented_operations(world: World) -> None:
    document = requests.get(f"{world.url}/api/v1/openapi.json", timeout=30).json()
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert set(ACCESS) == documented, (
        f"not in ACCESS: {sorted(documented - set(ACCESS))}; not in the document: {sorted(set(ACCESS) - documented)}"
    )


def test_declared_scopes(world: World) -> None:
    """The declarations the scoped rows follow: reads are read, team changes and other writes admin."""
    scopes = {op: declared_scope(world, op) for op in ACCESS}
    assert set(scopes.values()) <= {"none", "any", "read", "ingest", "admin"}
    for operation, (access, _build) in ACCESS.items():
        if access == "project-read":
            assert scopes[operation] == "read", operation
        if access == "project-write":
            assert scopes[operation] == "admin", operation
        if access == "project-ingest":
            assert scopes[operation] == "ingest", operation
        if access in ("project-admin", "team-admin", "team-write", "self-or-admin", "local-admin-only"):
            assert scopes[operation] == "admin", operation
        if access == "team-read":
            assert scopes[operation] == "read", operation
    for operation in [("POST", "/api/v1/events"), ("PUT", "/api/v1/files/{team}/{project}/{run_id}/{store_key}")]:
        assert scopes[operation] == "ingest", operation
    assert scopes[("GET", "/api/v1/teams")] == scopes[("GET", "/api/v1/projects")] == "read"
    assert scopes[("PATCH", "/api/v1/runs/{team}/{project}/{run_id}")] == "admin"


def test_every_expected_status_is_declared(world: World) -> None:
    document = requests.get(f"{world.url}/api/v1/openapi.json", timeout=30).json()
    for (method, path), (access, _build) in ACCESS.items():
        declared = set(document["paths"][path][method.lower()]["responses"])
        rows = [EXPECTED[access], EXPECTED_PUBLIC.get(access, {})]
        statuses = {str(s) for row in rows for s in row.values() if s != OK}
        assert statuses <= declared, f"{method} {path} does not declare {sorted(statuses - declared)}"


OPERATIONS = sorted(ACCESS)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_private_project(world: World, operation: tuple[str, str], caller: str) -> None:
    _check(world, operation, caller, PRIVATE, EXPECTED)


PUBLIC_OPERATIONS = [op for op in OPERATIONS if ACCESS[op][0] in EXPECTED_PUBLIC]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("operation", PUBLIC_OPERATIONS, ids=[f"{m} {p}" for m, p in PUBLIC_OPERATIONS])
def test_public_project(world: World, operation: tuple[str, str], caller: str) -> None:
    _check(world, operation, caller, PUBLIC, EXPECTED_PUBLIC)
