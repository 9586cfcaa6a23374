"""The API's health endpoint checks the real services."""

from starlette.testclient import TestClient

from infra.net import free_port
from runstream.api.app import HEALTH_PATH, create_app
from runstream.settings import Settings


def test_health_is_ok_with_kafka_and_clickhouse(kafka_bootstrap, clickhouse_dsn):
    client = TestClient(create_app(Settings(kafka=kafka_bootstrap, clickhouse_dsn=clickhouse_dsn)))
    response = client.get(HEALTH_PATH)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"clickhouse": "ok", "kafka": "ok"}}


def test_health_in_embedded_mode_does_not_need_kafka(clickhouse_dsn):
    response = TestClient(create_app(Settings(clickhouse_dsn=clickhouse_dsn))).get(HEALTH_PATH)
    assert response.status_code == 200
    assert response.json()["checks"]["kafka"] == "not used (embedded mode)"


def test_health_reports_an_unreachable_kafka_as_503(clickhouse_dsn):
    settings = Settings(kafka=f"127.0.0.1:{free_port()}", clickhouse_dsn=clickhouse_dsn)
    response = TestClient(create_app(settings)).get(HEALTH_PATH)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["clickhouse"] == "ok"
    assert body["checks"]["kafka"].startswith("unavailable: ")


def test_health_reports_an_unreachable_clickhouse_as_503():
    settings = Settings(clickhouse_dsn=f"clickhouse://default:@127.0.0.1:{free_port()}/runstream")
    response = TestClient(create_app(settings)).get(HEALTH_PATH)
    assert response.status_code == 503
    assert response.json()["checks"]["clickhouse"].startswith("unavailable: ")
