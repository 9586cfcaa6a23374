"""Reports and share links through the API, on the real engine (embedded mode)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from starlette.testclient import TestClient

from runstream.api import auth
from runstream.storage import accounts

TEAM, PROJECT = "acme", "mnist"
REPORTS = f"/api/v1/projects/{TEAM}/{PROJECT}/reports"
PANELS = [{"type": "line", "metrics": ["loss"], "runs": {"filters": {"config.lr": {"$lt": 0.01}}}}]


def _new(api, headers, title="Loss study", **fields):
    response = api.http.post(
        REPORTS, json={"title": title, "body": "# Findings\nlr matters.", "panels": PANELS, **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


def _share(api, headers, report_id, **body):
    response = api.http.post(f"{REPORTS}/{report_id}/share", json=body or None, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_report_crud(api):
    member = api.key(TEAM, "mia", "member")
    report = _new(api, member)
    assert report["title"] == "Loss study" and report["panels"] == PANELS and report["created_by"] == "mia"
    assert report["team"] == TEAM and report["project"] == PROJECT and report["share_version"] == 1

    listed = api.http.get(REPORTS, headers=member).json()["reports"]
    assert [(r["id"], r["title"], r["panel_count"]) for r in listed] == [(report["id"], "Loss study", 1)]
    assert "body" not in listed[0]
    assert api.http.get(f"{REPORTS}/{report['id']}", headers=member).json() == report

    patched = api.http.patch(
        f"{REPORTS}/{report['id']}", json={"title": "Loss, revisited", "panels": []}, headers=member
    )
    assert patched.status_code == 200
    assert patched.json()["title"] == "Loss, revisited" and patched.json()["panels"] == []
    assert patched.json()["body"] == report["body"] and patched.json()["updated_at"] >= report["updated_at"]
    assert api.http.get(f"{REPORTS}/{report['id']}", headers=member).json() == patched.json()

    second = _new(api, member, title="Second")
    assert [r["id"] for r in api.http.get(REPORTS, headers=member).json()["reports"]] == [second["id"], report["id"]]

    assert api.http.delete(f"{REPORTS}/{report['id']}", headers=member).status_code == 204
    assert api.http.get(f"{REPORTS}/{report['id']}", headers=member).status_code == 404
    assert api.http.delete(f"{REPORTS}/{report['id']}", headers=member).status_code == 404
    assert api.http.patch(f"{REPORTS}/{report['id']}", json={"title": "x"}, headers=member).status_code == 404
    assert [r["id"] for r in api.http.get(REPORTS, headers=member).json()["reports"]] == [second["id"]]


def test_report_bodies_are_validated(api):
    member = api.key(TEAM, "mia", "member")
    report = _new(api, member)
    bad = [  # the body does not fit its declaration: 400
        {"body": "no title"},
        {"title": "  "},
        {"title": "x" * 257},
        {"title": "t", "panels": {"type": "line"}},
        {"title": "t", "panels": [1, 2]},
        {"title": "t", "panels": [{}] * 101},
        {"title": "t", "body": 42},
        {"title": "t", "colour": "red"},
    ]
    for body in bad:
        response = api.http.post(REPORTS, json=body, headers=member)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["message"]
    # It fits, but its panels are more JSON than a report holds: 422.
    response = api.http.post(REPORTS, json={"title": "t", "panels": [{"text": "x" * (300 << 10)}]}, headers=member)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"]
    assert api.http.post(REPORTS, content=b"{not json", headers=member).status_code == 400
    assert api.http.post(REPORTS, json=[1], headers=member).status_code == 400
    assert api.http.patch(f"{REPORTS}/{report['id']}", json={"panels": "x"}, headers=member).status_code == 400
    bad_name = api.http.post(f"/api/v1/projects/{TEAM}/bad%20name/reports", json={"title": "t"}, headers=member)
    assert bad_name.status_code == 400
    assert api.http.get(f"{REPORTS}/{report['id']}", headers=member).json() == report  # nothing changed


def test_role_matrix(api):
    admin = api.key(TEAM, "ann", "admin")
    member = api.key(TEAM, "mia", "member")
    viewer = api.key(TEAM, "vic", "viewer")
    outsider = api.key("rivals", "otto", "admin")
    report = _new(api, admin)
    one = f"{REPORTS}/{report['id']}"
    reads = [("GET", REPORTS, None), ("GET", one, None)]
    writes = [
        ("POST", REPORTS, {"title": "new"}),
        ("PATCH", one, {"title": "renamed"}),
        ("POST", f"{one}/share", {}),
        ("DELETE", f"{one}/share", None),
    ]

    def status(method, path, body, headers):
        return api.http.request(method, path, json=body, headers=headers).status_code

    for method, path, body in reads:
        assert status(method, path, body, {}) == 404, (method, path)
        assert status(method, path, body, outsider) == 404, (method, path)
        for who in (viewer, member, admin):
            assert status(method, path, body, who) == 200, (method, path)
    for method, path, body in writes:
        assert status(method, path, body, {}) == 401, (method, path)
        assert status(method, path, body, outsider) == 404, (method, path)
        assert status(method, path, body, viewer) == 403, (method, path)
        for who in (member, admin):
            assert status(method, path, body, who) in (200, 201), (method, path)
    assert status("DELETE", one, None, {}) == 401
    assert status("DELETE", one, None, outsider) == 404
    assert status("DELETE", one, None, viewer) == 403
    assert status("DELETE", one, None, member) == 204


def test_private_reports_are_404_to_other_teams_and_public_ones_read_only(api):
    admin = api.key(TEAM, "ann", "admin")
    outsider = api.key("rivals", "otto", "admin")
    report = _new(api, admin)
    one = f"{REPORTS}/{report['id']}"
    response = api.http.get(one, headers=outsider)
    assert response.status_code == 404 and "not found" in response.json()["error"]["message"]
    assert api.http.get(f"{REPORTS}/nope", headers=outsider).status_code == 404  # the same answer as a missing one

    accounts.upsert_project(api.storage, TEAM, PROJECT, visibility="public")
    assert api.http.get(one, headers=outsider).json()["id"] == report["id"]
    assert api.http.get(one).json()["id"] == report["id"]  # anonymous reads a public project
    assert api.http.patch(one, json={"title": "mine"}, headers=outsider).status_code == 403
    assert api.http.patch(one, json={"title": "mine"}).status_code == 401


def test_share_link_opens_the_report_and_reads_its_project_only(api):
    member = api.key(TEAM, "mia", "member")
    report = _new(api, member)
    other = api.http.post(f"/api/v1/projects/{TEAM}/secret/reports", json={"title": "Private"}, headers=member).json()
    share = _share(api, member, report["id"], expires_in_s=3600)
    token = share["token"]
    assert share["url"] == f"/share/{token}"
    assert time.time() + 3500 < share["expires_at"] <= time.time() + 3601

    fresh = TestClient(api.app, raise_server_exceptions=False)  # no key, no cookies: only the token
    opened = fresh.get(f"/api/v1/shared/{token}")
    assert opened.status_code == 200, opened.text
    assert opened.json()["report"] == report
    assert opened.json()["project"] == {"team": TEAM, "name": PROJECT}

    by_header = {auth.SHARE_HEADER: token}
    assert fresh.get(f"{REPORTS}/{report['id']}", headers=by_header).json() == report
    assert fresh.get(f"{REPORTS}/{report['id']}", params={"share": token}).json() == report
    assert [r["id"] for r in fresh.get(REPORTS, headers=by_header).json()["reports"]] == [report["id"]]
    assert fresh.get(f"/api/v1/projects/{TEAM}/{PROJECT}/alerts", headers=by_header).json() == {"alerts": []}
    assert fresh.get(f"{REPORTS}/{report['id']}").status_code == 404  # without the token: private

    # It only reads, and only its own project.
    assert fresh.patch(f"{REPORTS}/{report['id']}", json={"title": "x"}, headers=by_header).status_code == 401
    assert fresh.post(REPORTS, json={"title": "x"}, headers=by_header).status_code == 401
    assert fresh.post(f"{REPORTS}/{report['id']}/share", headers=by_header).status_code == 401
    assert fresh.get(f"/api/v1/projects/{TEAM}/secret/reports/{other['id']}", headers=by_header).status_code == 404
    assert fresh.get(f"/api/v1/projects/{TEAM}/secret/reports", headers=by_header).status_code == 404
    assert fresh.get("/api/v1/projects/rivals/stuff/reports", headers=by_header).status_code == 404


def test_expired_and_tampered_links_are_401(api, monkeypatch):
    member = api.key(TEAM, "mia", "member")
    report = _new(api, member)
    fresh = TestClient(api.app, raise_server_exceptions=False)
    secret = accounts.server_secrets(api.storage, "share_links")[0]

    expired = auth.sign_share(secret, TEAM, PROJECT, report["id"], report["share_version"], time.time() - 1)
    response = fresh.get(f"/api/v1/shared/{expired}")
    assert response.status_code == 401 and response.json()["error"]["code"] == "share_link_expired"
    assert "expired" in response.json()["error"]["message"]
    assert fresh.get(REPORTS, headers={auth.SHARE_HEADER: expired}).status_code == 401

    # The server's clock is set rather than waited on: a busy machine may take longer than the link lives.
    asked_at = time.time()
    short = _share(api, member, report["id"], expires_in_s=1)
    assert short["expires_at"] >= asked_at + 1
    clock = asked_at
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: clock))
    assert fresh.get(f"/api/v1/shared/{short['token']}").status_code == 200
    clock = short["expires_at"]
    assert fresh.get(f"/api/v1/shared/{short['token']}").json()["error"]["code"] == "share_link_expired"
    monkeypatch.undo()

    token = _share(api, member, report["id"])["token"]
    payload, signature = token.split(".")
    forged_payload = auth.sign_share(secret, TEAM, "secret", report["id"], 1, time.time() + 60).split(".")[0]
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for bad in (f"{payload}.{flipped}", f"{forged_payload}.{signature}", payload, "garbage", f"{payload}x.{signature}"):
        response = fresh.get(f"/api/v1/shared/{bad}")
        assert response.status_code == 401, bad
        assert response.json()["error"]["code"] == "invalid_share_link"
        assert fresh.get(REPORTS, headers={auth.SHARE_HEADER: bad}).status_code == 401
    wrong_key = auth.sign_share(b"another server's secret", TEAM, PROJECT, report["id"], 1, time.time() + 60)
    assert fresh.get(f"/api/v1/shared/{wrong_key}").status_code == 401

    for body in (
        {"expires_in_s": 0},
        {"expires_in_s": auth.MAX_SHARE_SECONDS + 1},
        {"expires_in_s": 1.5},
        {"expires_in_s": "1"},
        {"expires": 60},
    ):
        assert api.http.post(f"{REPORTS}/{report['id']}/share", json=body, headers=member).status_code == 400, body
    assert api.http.post(f"{REPORTS}/nope/share", headers=member).status_code == 404


def test_revoking_ends_every_link_and_new_ones_work(api):
    member = api.key(TEAM, "mia", "member")
    report = _new(api, member)
    fresh = TestClient(api.app, raise_server_exceptions=False)
    first, second = _share(api, member, report["id"])["token"], _share(api, member, report["id"])["token"]
    assert fresh.get(f"/api/v1/shared/{first}").status_code == 200

    revoked = api.http.delete(f"{REPORTS}/{report['id']}/share", headers=member)
    assert revoked.status_code == 200 and revoked.json()["share_version"] == report["share_version"] + 1
    for token in (first, second):
        response = fresh.get(f"/api/v1/shared/{token}")
        assert response.status_code == 401 and response.json()["error"]["code"] == "share_link_revoked"
        assert "revoked" in response.json()["error"]["message"]
        assert fresh.get(f"{REPORTS}/{report['id']}", headers={auth.SHARE_HEADER: token}).status_code == 401

    third = _share(api, member, report["id"])["token"]
    assert fresh.get(f"/api/v1/shared/{third}").json()["report"]["share_version"] == 2
    assert api.http.patch(f"{REPORTS}/{report['id']}", json={"body": "edited"}, headers=member).status_code == 200
    assert fresh.get(f"/api/v1/shared/{third}").json()["report"]["body"] == "edited"  # edits keep links alive

    assert api.http.delete(f"{REPORTS}/{report['id']}", headers=member).status_code == 204
    assert fresh.get(f"/api/v1/shared/{third}").status_code == 401  # a deleted report's links die with it


def test_an_edit_racing_a_revoke_or_a_delete_cannot_undo_it(api):
    """An edit rewrites the row it read; if a revoke or a delete landed in between, that row is stale."""
    from runstream.storage import reports

    client = api.storage
    report = reports.create_report(client, "acme", "mnist", "race")
    stale = reports._row(client, "acme", "mnist", report["id"])  # an edit has read the row ...
    assert reports.revoke_shares(client, "acme", "mnist", report["id"])["share_version"] == 2  # ... a revoke lands
    reports._write(client, {**stale, "title": "edited"}, stale["version"])  # ... and the edit writes what it read
    after = reports.get_report(client, "acme", "mnist", report["id"])
    assert after["title"] == "edited" and after["share_version"] == 2  # links made before the revoke stay dead

    stale = reports._row(client, "acme", "mnist", report["id"])
    assert reports.delete_report(client, "acme", "mnist", report["id"])
    reports._write(client, {**stale, "title": "edited again"}, stale["version"])
    assert reports.get_report(client, "acme", "mnist", report["id"]) is None
    assert report["id"] not in {r["id"] for r in reports.list_reports(client, "acme", "mnist")}


def test_links_signed_by_either_replica_of_a_secret_race_work(api):
    """Two API replicas starting at once may each create the link secret; links made with either keep working."""
    headers = api.key(TEAM, "ada", "admin")
    report = api.http.post(REPORTS, json={"title": "race"}, headers=headers).json()
    mine = api.http.post(f"{REPORTS}/{report['id']}/share", headers=headers).json()["token"]
    # The other replica's secret lands after this one cached its own, and sorts first.
    api.storage.insert("server_secrets", [["share_links", "ab" * 32, 0]], column_names=["name", "value", "created_at"])
    assert accounts.server_secrets(api.storage, "share_links")[0] == bytes.fromhex("ab" * 32)
    theirs = auth.sign_share(
        bytes.fromhex("ab" * 32), TEAM, PROJECT, report["id"], report["share_version"], time.time() + 60
    )
    for token in (mine, theirs):
        assert api.http.get(f"/api/v1/shared/{token}").status_code == 200


def test_share_tokens_never_reach_the_access_log(api, caplog):
    headers = api.key(TEAM, "ada", "admin")
    report = api.http.post(REPORTS, json={"title": "logged"}, headers=headers).json()
    token = api.http.post(f"{REPORTS}/{report['id']}/share", headers=headers).json()["token"]
    with caplog.at_level("INFO", logger="runstream.api.access"):
        assert api.http.get(f"/api/v1/shared/{token}").status_code == 200
        assert api.http.get(f"{REPORTS}/{report['id']}", params={"share": token}).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "runstream.api.access"]
    assert len(lines) == 2 and "/api/v1/shared/…" in lines[0]
    assert not any(token in line or token[:20] in line for line in lines)
