"""Settings every runstream process reads from its environment, in one place.

Each setting has an environment variable; docs/operations.md lists them and
docker-compose.yml sets them for the cluster. (Command-line flags, where a
command has them, override the environment.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path.home() / ".runstream"


@dataclass(frozen=True)
class Settings:
    #: Where the SDK sends events: http(s)://server (the API) or kafka://host:port[,host:port].
    url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    #: API key the SDK and CLI present to the API.
    api_key: str = ""
    #: Where runs upload file and media blobs (the API's http(s):// URL); default: ``url`` when it is http(s).
    files_url: str = ""
    #: Kafka bootstrap servers of the cluster (workers, API); empty means embedded mode, without Kafka.
    kafka: str = ""
    #: ClickHouse DSN: clickhouse://user:password@host:8123/db, or chdb:///dir for the embedded engine.
    clickhouse_dsn: str = f"chdb://{DEFAULT_DATA_DIR / 'clickhouse'}"
    #: Local state of the server: embedded database, file store, spools.
    data_dir: str = str(DEFAULT_DATA_DIR)
    #: Address the API server binds to.
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: Faust application id: workers with the same id share the work (one consumer group).
    app_id: str = "runstream"
    #: Seconds without a heartbeat (or any event) before a running run is marked crashed.
    crash_timeout: int = 90
    #: Webhook URLs (comma-separated) every alert is posted to, Slack-compatible.
    alert_webhooks: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(env_var(field.name))
            if raw is None or raw == "":
                continue
            if field.type in (int, "int"):
                try:
                    values[field.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{env_var(field.name)} must be a whole number, got {raw!r}") from None
            else:
                values[field.name] = raw
        return cls(**values)


def env_var(field_name: str) -> str:
    return f"RUNSTREAM_{field_name.upper()}"


#: Every environment variable runstream reads.
ENV_VARS: tuple[str, ...] = tuple(env_var(f.name) for f in fields(Settings))
