"""The embedded server trusts this machine's own user, and only them: not a proxy's clients, not a web page."""

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from runstream.api.app import create_app
from runstream.api.backend import Backend
from runstream.settings import Settings


def _whoami(client: TestClient, **headers: str) -> bool:
    return client.get("/api/v1/whoami", headers=headers).json()["local_admin"]


def test_only_a_direct_loopback_request_for_a_loopback_host_is_the_local_admin(clickhouse_dsn, tmp_path):
    settings = Settings(clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path))
    app = create_app(settings, Backend(settings, local_admin=True))
    with TestClient(app, client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080") as local:
        assert _whoami(local) and _whoami(local, Host="localhost:8080")
        assert _whoami(local, Origin="http://127.0.0.1:8080")  # the web UI's own requests
        assert not _whoami(local, Host="rebind.evil.example:8080")  # DNS rebinding
        assert not _whoami(local, Origin="http://evil.example")  # another site's page
        assert not _whoami(local, **{"X-Forwarded-For": "203.0.113.9"})  # relayed by a proxy on this machine
        # What a cross-site page would try: write with no key.
        rule = {"name": "x", "kind": "nonfinite", "spec": {"metric": "*"}}
        refused = local.post(
            "/api/v1/projects/acme/p/alert-rules", json=rule, headers={"Origin": "http://evil.example"}
        )
        assert refused.status_code == 401
    with TestClient(app, client=("::1", 50000), base_url="http://[::1]:8080") as local6:
        assert _whoami(local6)
    with TestClient(app, client=("192.0.2.7", 50000), base_url="http://127.0.0.1:8080") as remote:
        assert not _whoami(remote)
    plain = create_app(settings, Backend(settings, local_admin=False))  # runstream api: nobody is local
    with TestClient(plain, client=("127.0.0.1", 50000), base_url="http://127.0.0.1:8080") as cluster:
        assert not _whoami(cluster)


# -- a page in the user's browser is not the user ------------------------------------------------------------

_FORWARDING = {
    "Forwarded": "for=203.0.113.9",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Host": "example.com",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Server": "proxy",
    "X-Forwarded-Prefix": "/runstream",
    "X-Forwarded-Anything": "1",  # any X-Forwarded-* header
    "Via": "1.1 proxy",
    "X-Real-IP": "203.0.113.9",
    "X-Client-IP": "203.0.113.9",
    "True-Client-IP": "203.0.113.9",
    "CF-Connecting-IP": "203.0.113.9",
}


@pytest.fixture
def local(clickhouse_dsn, tmp_path) -> Iterator[TestClient]:
    settings = Settings(clickhouse_dsn=clickhouse_dsn, data_dir=str(tmp_path))
    app = create_app(settings, Backend(settings, local_admin=True))
    with TestClient(app, client=("127.0.0.1", 50000), base_url="http://localhost:8080") as http:
        yield http


@pytest.mark.parametrize("header", sorted(_FORWARDING))
def test_any_forwarding_header_disqualifies(local, header):
    assert _whoami(local)
    assert not _whoami(local, **{header: _FORWARDING[header]})


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3000",  # a page on another loopback port: the finding
        "http://127.0.0.1:8080",  # another name of this machine is another origin
        "https://localhost:8080",  # another scheme
        "http://localhost",  # port 80, not 8080
        "http://[::1]:8080",
        "null",  # a sandboxed frame or a file:// page
        "http://localhost:8080/path",  # not an origin at all
        "http://user@localhost:8080",
        "http://localhost:notaport",
    ],
)
def test_only_the_servers_own_origin_is_the_local_admin(local, origin):
    assert not _whoami(local, Origin=origin)
    # What the page in the finding did: create a key for another user, and a webhook rule.
    key = local.post("/api/v1/teams/default/keys", json={"user": "someone"}, headers={"Origin": origin})
    assert key.status_code == 401, key.text
    rule = {"name": "x", "kind": "nonfinite", "spec": {"metric": "*"}}
    refused = local.post("/api/v1/projects/default/p/alert-rules", json=rule, headers={"Origin": origin})
    assert refused.status_code == 401


def test_the_servers_own_pages_are_still_the_local_admin(local):
    """The web UI this server serves: same-origin requests, with or without Origin, and navigations."""
    assert _whoami(local)  # curl, scripts: no browser headers at all
    assert _whoami(local, Origin="http://localhost:8080")
    assert _whoami(local, Origin="http://LOCALHOST:8080")  # hosts compare without case
    assert _whoami(local, Origin="http://localhost:8080", **{"Sec-Fetch-Site": "same-origin"})
    assert _whoami(local, **{"Sec-Fetch-Site": "same-origin"})  # a same-origin GET sends no Origin
    assert _whoami(local, **{"Sec-Fetch-Site": "none"})  # typed in the address bar, a bookmark
    made = local.post(
        "/api/v1/teams",
        json={"team": "lab"},
        headers={"Origin": "http://localhost:8080", "Sec-Fetch-Site": "same-origin"},
    )
    assert made.status_code == 201, made.text
    with TestClient(local.app, client=("127.0.0.1", 50000), base_url="http://localhost") as port80:
        assert _whoami(port80, Origin="http://localhost")  # the default port, written or not
        assert _whoami(port80, Origin="http://localhost:80")


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
def test_a_request_another_page_made_is_not_the_local_admin(local, site):
    # A cross-site GET (an <img>, a form, fetch with no-cors) carries no Origin, but the browser says where it came from.
    assert not _whoami(local, **{"Sec-Fetch-Site": site})
    assert local.get("/api/v1/teams", headers={"Sec-Fetch-Site": site}).status_code == 401
    assert not _whoami(local, Origin="http://localhost:8080", **{"Sec-Fetch-Site": site})


def test_a_foreign_or_malformed_host_is_not_the_local_admin(local):
    assert not _whoami(local, Host="localhost.evil.example:8080")
    assert not _whoami(local, Host="localhost:8080@evil.example")
    assert not _whoami(local, Host="localhost:x")
    assert not _whoami(local, Host="")
