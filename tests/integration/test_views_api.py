"""Saved workspace views through the API, on the real engine (embedded mode)."""

from __future__ import annotations

import threading
from typing import Any

from runstream import events
from runstream.storage import accounts, audit
from runstream.storage import views as stored_views
from tests.helpers import make_event

TEAM, PROJECT = "acme", "mnist"
VIEWS = f"/api/v1/projects/{TEAM}/{PROJECT}/views"
DEFAULT = f"{VIEWS}/default"
SPEC = {
    "panels": [{"kind": "parallel", "axes": ["config.lr", "summary.val/loss"]}, {"kind": "metric", "metric": "loss"}],
    "filters": {"config.lr": {"$lt": 0.01}},
    "hidden": ["r1"],
    "sections": {"train": {"folded": True}},
}
SUMMARY_KEYS = {"view_id", "name", "is_default", "created_by", "updated_by", "created_at", "updated_at"}


def _new(api, headers, name="Sweep overview", spec=SPEC, **fields) -> dict[str, Any]:
    response = api.http.post(VIEWS, json={"name": name, "spec": spec, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def _listed(api, headers) -> list[dict[str, Any]]:
    response = api.http.get(VIEWS, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["views"]


def test_view_crud(api):
    member = api.key(TEAM, "mia", "member")
    other = api.key(TEAM, "max", "member")
    view = _new(api, member)
    assert set(view) == SUMMARY_KEYS | {"spec"}
    assert view["spec"] == SPEC and view["name"] == "Sweep overview" and view["is_default"] is False
    assert view["created_by"] == view["updated_by"] == "mia" and view["created_at"] == view["updated_at"]
    one = f"{VIEWS}/{view['view_id']}"

    assert _listed(api, member) == [{k: v for k, v in view.items() if k != "spec"}]
    assert api.http.get(one, headers=member).json() == view

    renamed = api.http.put(one, json={"name": "Renamed"}, headers=other)
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Renamed" and renamed.json()["spec"] == SPEC
    assert renamed.json()["updated_by"] == "max" and renamed.json()["created_by"] == "mia"
    respec = api.http.put(one, json={"spec": {"panels": []}}, headers=member).json()
    assert respec["spec"] == {"panels": []} and respec["name"] == "Renamed"
    assert respec["updated_at"] >= view["updated_at"]
    assert api.http.get(one, headers=member).json() == respec

    second = _new(api, member, name="another")
    assert [v["name"] for v in _listed(api, member)] == ["another", "Renamed"]  # by name, ignoring case

    assert api.http.delete(one, headers=member).status_code == 204
    for method, body in (("GET", None), ("PUT", {"name": "x"}), ("DELETE", None)):
        assert api.http.request(method, one, json=body, headers=member).status_code == 404, method
    assert [v["view_id"] for v in _listed(api, member)] == [second["view_id"]]
    assert api.http.get(f"{VIEWS}/nope", headers=member).status_code == 404

    entries = audit.list_entries(api.storage, TEAM, action="view.delete")["entries"]
    assert [(e["target"], e["actor"]["user"]) for e in entries] == [(f"{PROJECT}/{view['view_id']}", "mia")]


def test_one_default_at_a_time(api):
    member = api.key(TEAM, "mia", "member")
    assert api.http.get(DEFAULT, headers=member).status_code == 404
    first = _new(api, member, name="first", default=True)
    assert first["is_default"] is True
    assert api.http.get(DEFAULT, headers=member).json() == first

    second = _new(api, member, name="second", default=True)
    assert api.http.get(DEFAULT, headers=member).json()["view_id"] == second["view_id"]
    assert [(v["name"], v["is_default"]) for v in _listed(api, member)] == [("first", False), ("second", True)]
    assert api.http.get(f"{VIEWS}/{first['view_id']}", headers=member).json()["is_default"] is False
    assert api.http.get(f"{VIEWS}/{first['view_id']}", headers=member).json()["spec"] == SPEC

    back = api.http.put(f"{VIEWS}/{first['view_id']}", json={"default": True}, headers=member).json()
    assert back["is_default"] is True and back["name"] == "first"
    assert [(v["name"], v["is_default"]) for v in _listed(api, member)] == [("first", True), ("second", False)]

    unmarked = api.http.put(f"{VIEWS}/{first['view_id']}", json={"default": False}, headers=member).json()
    assert unmarked["is_default"] is False
    assert api.http.get(DEFAULT, headers=member).status_code == 404

    api.http.put(f"{VIEWS}/{second['view_id']}", json={"default": True}, headers=member)
    assert api.http.delete(f"{VIEWS}/{second['view_id']}", headers=member).status_code == 204
    assert api.http.get(DEFAULT, headers=member).status_code == 404
    # The default path is not a view's: it is read only.
    refused = api.http.put(DEFAULT, json={"name": "x"}, headers=member)
    assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


def test_two_writers_marking_defaults_at_once_leave_the_later_one(api):
    member = api.key(TEAM, "mia", "member")
    # Interleaved by hand: both marks written, then each writer's clear; the earlier mark's clear spares the later.
    rows = []
    for name in ("x", "y"):
        now = stored_views.now_ms()
        row = {"view_id": name * 16, "name": name, "spec": "{}", "is_default": 1, "created_by": "u"}
        row.update(updated_by="u", created_ms=now, updated_ms=now)
        stored_views._write(api.storage, TEAM, PROJECT, row)
        rows.append(row)
    for row in rows:
        stored_views._clear_default(api.storage, TEAM, PROJECT, row, "u")
    assert [(v["name"], v["is_default"]) for v in _listed(api, member)] == [("x", False), ("y", True)]
    assert api.http.get(DEFAULT, headers=member).json()["view_id"] == "y" * 16

    # Two requests at once, a few times: one default each time, the one marked last.
    for trial in range(4):
        views = f"/api/v1/projects/{TEAM}/race{trial}/views"
        start = threading.Barrier(2)

        def create(i: int, views: str = views, start: threading.Barrier = start) -> None:
            start.wait()
            response = api.http.post(views, json={"name": f"v{i}", "spec": {}, "default": True}, headers=member)
            assert response.status_code == 201, response.text

        writers = [threading.Thread(target=create, args=(i,)) for i in range(2)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        listed = api.http.get(views, headers=member).json()["views"]
        assert len(listed) == 2 and sum(v["is_default"] for v in listed) == 1, listed
        # Made and marked at once: the later created_at is the later mark (within a millisecond, either may be).
        (default,) = [v for v in listed if v["is_default"]]
        assert default["created_at"] == max(v["created_at"] for v in listed), listed
        assert api.http.get(f"{views}/default", headers=member).json()["view_id"] == default["view_id"]


def test_deleting_the_project_deletes_its_views(api):
    admin = api.key(TEAM, "ada", "admin")
    start = make_event(events.RUN_START, {"name": "a", "config": {}}, seq=1, run_id="a", project="doomed")
    assert api.ingest([start], admin).status_code < 300
    views = f"/api/v1/projects/{TEAM}/doomed/views"
    _new(api, admin)
    for name in ("kept", "default"):
        assert api.http.post(views, json={"name": name, "spec": {}, "default": True}, headers=admin).status_code == 201
    assert len(_listed(api, admin)) == 1  # the other project's view stays
    assert api.http.delete(f"/api/v1/projects/{TEAM}/doomed", headers=admin).status_code == 200

    assert api.http.get(views, headers=admin).json()["views"] == []
    assert api.http.get(f"{views}/default", headers=admin).status_code == 404
    count = api.storage.query(
        "SELECT count() FROM workspace_views WHERE team = {t:String} AND project = 'doomed'", parameters={"t": TEAM}
    ).result_rows[0][0]
    assert count == 0
    assert len(_listed(api, admin)) == 1


def test_view_bodies_are_checked(api):
    member = api.key(TEAM, "mia", "member")
    view = _new(api, member)
    bad = [
        {"spec": SPEC},
        {"name": "", "spec": SPEC},
        {"name": "   ", "spec": SPEC},
        {"name": "x" * 201, "spec": SPEC},
        {"name": "v"},
        {"name": "v", "spec": [1, 2]},
        {"name": "v", "spec": "text"},
        {"name": "v", "spec": SPEC, "default": "yes"},
        {"name": "v", "spec": SPEC, "colour": "red"},
    ]
    for body in bad:
        response = api.http.post(VIEWS, json=body, headers=member)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["message"]
    assert _new(api, member, name="x" * 200)["name"] == "x" * 200
    assert api.http.put(f"{VIEWS}/{view['view_id']}", json={"spec": None}, headers=member).status_code == 400

    big = {"panels": [{"note": "x" * (300 << 10)}]}
    for response in (
        api.http.post(VIEWS, json={"name": "big", "spec": big}, headers=member),
        api.http.put(f"{VIEWS}/{view['view_id']}", json={"spec": big}, headers=member),
    ):
        assert response.status_code == 413, response.text
        assert "262,144" in response.json()["error"]["message"]
    assert api.http.get(f"{VIEWS}/{view['view_id']}", headers=member).json() == view  # nothing changed
    fits = {"panels": [{"note": "x" * (250 << 10)}]}
    assert _new(api, member, name="fits", spec=fits)["spec"] == fits


def test_who_may_read_and_write_views(api):
    member = api.key(TEAM, "mia", "member")
    viewer = api.key(TEAM, "vic", "viewer")
    _, read_key = accounts.create_key(api.storage, TEAM, "mia", scope="read")
    reader = {"Authorization": f"Bearer {read_key}"}
    outsider = api.key("rivals", "otto", "admin")
    view = _new(api, member, default=True)
    one = f"{VIEWS}/{view['view_id']}"
    reads = [VIEWS, one, DEFAULT]
    writes = [("POST", VIEWS, {"name": "n", "spec": {}}), ("PUT", one, {"name": "n"}), ("DELETE", one, None)]

    def status(method: str, path: str, body: Any, headers: dict[str, str]) -> int:
        return api.http.request(method, path, json=body, headers=headers).status_code

    for path in reads:
        assert status("GET", path, None, {}) == 404, path  # a private project
        assert status("GET", path, None, outsider) == 404, path
        for who in (viewer, reader, member):
            assert status("GET", path, None, who) == 200, path
    for method, path, body in writes:
        assert status(method, path, body, {}) == 401, (method, path)
        assert status(method, path, body, outsider) == 404, (method, path)
        assert status(method, path, body, viewer) == 403, (method, path)
        assert status(method, path, body, reader) == 403, (method, path)
    assert api.http.get(one, headers=member).json() == view  # nothing changed
    for method, path, body in writes:
        assert status(method, path, body, member) in (200, 201, 204), (method, path)
