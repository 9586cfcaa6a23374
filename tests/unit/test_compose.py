"""docker-compose.yml agrees with the code (no Docker engine here: the file is parsed and checked)."""

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from runstream.api.app import HEALTH_PATH
from runstream.cli import _parser
from runstream.settings import ENV_VARS, Settings
from runstream.storage.client import database_of

COMPOSE = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
RUNSTREAM_SERVICES = ("init", "api", "worker")
BROKERS = ("kafka-1", "kafka-2", "kafka-3")


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[service].get("environment", {}).items()}


def _resolve(value: str) -> str:
    """${VAR:-default} as docker compose expands it with VAR unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_and_official_images():
    assert set(SERVICES) == {*BROKERS, "clickhouse", "init", "api", "worker"}
    for broker in BROKERS:
        assert SERVICES[broker]["image"].startswith("apache/kafka:4.")
    assert SERVICES["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name in RUNSTREAM_SERVICES:
        assert SERVICES[name]["build"] == "."


@pytest.mark.parametrize("service", RUNSTREAM_SERVICES)
def test_runstream_services_set_only_variables_the_code_reads(service):
    env = _env(service)
    unknown = {k for k in env if k.startswith("RUNSTREAM_")} - set(ENV_VARS)
    assert not unknown, f"{service} sets variables no code reads: {unknown}"
    settings = Settings.from_env({k: _resolve(v) for k, v in env.items()})
    assert settings.kafka, f"{service} runs in cluster mode and needs RUNSTREAM_KAFKA"

    # Every broker, each by the address it advertises.
    advertised = {_env(broker)["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://") for broker in BROKERS}
    assert sorted(settings.kafka.split(",")) == sorted(advertised)

    dsn = urlparse(settings.clickhouse_dsn)
    assert dsn.scheme == "clickhouse" and dsn.hostname == "clickhouse" and dsn.port == 8123
    ch = _env("clickhouse")
    assert database_of(settings.clickhouse_dsn) == ch["CLICKHOUSE_DB"]
    assert dsn.username == ch["CLICKHOUSE_USER"]
    assert dsn.password == _resolve(ch["CLICKHOUSE_PASSWORD"])


@pytest.mark.parametrize("service", RUNSTREAM_SERVICES)
def test_commands_are_real_cli_commands(service):
    command = SERVICES[service]["command"]
    invocations = [part.split() for part in command[2].split("&&")] if command[:2] == ["sh", "-c"] else [command]
    for argv in invocations:
        assert argv[0] == "runstream"
        _parser().parse_args(argv[1:])  # exits (fails the test) on an unknown command or flag


def test_api_port_and_health_check_match_the_app():
    api = SERVICES["api"]
    settings = Settings.from_env(_env("api"))
    assert f"{settings.port}:{settings.port}" in api["ports"]
    assert str(settings.port) in api["command"]
    assert f"{settings.port}{HEALTH_PATH}" in " ".join(api["healthcheck"]["test"])


def test_every_server_has_a_health_check_and_named_volumes_exist():
    for name in (*BROKERS, "clickhouse", "api", "worker"):
        assert SERVICES[name]["healthcheck"]["test"], name
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"
    for name in ("init", "api", "worker"):
        needs = SERVICES[name]["depends_on"]
        healthy = {"condition": "service_healthy"}
        assert needs == {"init": {"condition": "service_completed_successfully"}} or needs == {
            **dict.fromkeys(BROKERS, healthy),
            "clickhouse": healthy,
        }


def test_the_brokers_form_one_quorum_and_replicate_three_times():
    envs = [_env(broker) for broker in BROKERS]
    assert len({env["CLUSTER_ID"] for env in envs}) == 1, "every node is formatted with the same cluster id"
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs}
    assert voters == {",".join(f"{env['KAFKA_NODE_ID']}@{broker}:9093" for broker, env in zip(BROKERS, envs))}
    assert sorted(env["KAFKA_NODE_ID"] for env in envs) == ["1", "2", "3"]
    for env in envs:
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert (
            env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]
            == env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]
            == "3"
        )
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
    volumes = [SERVICES[broker]["volumes"][0].split(":")[0] for broker in BROKERS]
    assert len(set(volumes)) == 3, "each broker keeps its own data"
    init = _parser().parse_args(SERVICES["init"]["command"][2].split("&&")[1].split()[1:])
    assert (init.replication_factor, init.min_insync_replicas) == (3, 2)


def test_the_image_installs_the_server_extra():
    dockerfile = (Path(__file__).parents[2] / "Dockerfile").read_text()
    assert "'.[server]'" in dockerfile
