"""The embedded server trusts this machine's own user, and only them: not a proxy's clients, not a web page."""

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
