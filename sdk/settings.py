"""Settings every runstream process reads, in one place.

Each setting comes, in this order of precedence, from a command-line flag
(where a command has one), its environment variable (``RUNSTREAM_<NAME>``), the
config file (``runstream login`` writes it: ``~/.config/runstream/config.toml``,
or ``RUNSTREAM_CONFIG``), or the default here. docs/operations.md lists them and
docker-compose.yml sets them for the cluster.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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
    #: Internal hosts, addresses and CIDR networks (comma-separated) that alert rules' own webhooks may reach;
    #: without them a rule's webhook reaches public addresses only.
    webhook_allow: str = ""
    # Quotas of the API, per replica (api/quotas.py; docs/operations.md, "Quotas"). 0 = unlimited.
    #: Metric points per second one API key may ingest.
    quota_key_points_per_s: int = 1_000_000
    #: Metric points per second one team may ingest, all its keys together.
    quota_team_points_per_s: int = 4_000_000
    #: Ingest body bytes per second one API key may send.
    quota_key_bytes_per_s: int = 64 << 20
    #: Ingest body bytes per second one team may send, all its keys together.
    quota_team_bytes_per_s: int = 256 << 20
    #: Requests per second one API key may make to project and team endpoints (charts, runs, reports...).
    quota_key_queries_per_s: int = 200
    #: Requests per second one team may make to project and team endpoints, all its keys together.
    quota_team_queries_per_s: int = 1000
    #: Requests per second one client address may make without a key (public projects, share links).
    quota_anonymous_queries_per_s: int = 100
    #: Live alert streams (Server-Sent Events) one API key may hold open at once.
    quota_key_streams: int = 16
    #: Live alert streams one team may hold open at once, all its keys together.
    quota_team_streams: int = 64
    #: Live alert streams one client address may hold open without a key.
    quota_anonymous_streams: int = 16
    #: Seconds of its rate a quota lets pass at once (the token bucket's size), so bursts are not refused.
    quota_burst_s: int = 10
    #: Largest ingest request body in bytes (at most 16 MiB, what the API reads at all).
    quota_request_bytes: int = 16 << 20
    #: Whether the embedded server's local admin (its machine's own user, no key) is held to quotas too.
    quota_local_admin: bool = False
    #: Largest artifact file (content-addressed blob) the API stores, in bytes; uploads resume at an offset.
    max_blob_bytes: int = 64 << 30
    #: The server a key saved by ``runstream login`` belongs to ("": the key came from the environment).
    api_key_url: str = field(default="", metadata={"internal": True})

    def key_for(self, url: str) -> str:
        """The API key to send to ``url``: a saved key goes only to the server it was saved for."""
        if self.api_key_url and url.rstrip("/") != self.api_key_url.rstrip("/"):
            return ""
        return self.api_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, config: Path | None = None) -> Settings:
        """Environment variables over the config file (``config``, default: ``config_path(environ)``) over defaults."""
        path = config or config_path(environ)
        stored = read_config(path)
        values: dict[str, Any] = {}
        for setting in public_fields():
            raw, where = environ.get(env_var(setting.name)), env_var(setting.name)
            if raw is None or raw == "":
                raw, where = stored.get(setting.name), f"{setting.name} in {path}"
            if raw is None or raw == "":
                continue
            if setting.type in (bool, "bool"):
                values[setting.name] = _boolean(raw, where)
            elif setting.type in (int, "int"):
                try:
                    values[setting.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{where} must be a whole number, got {raw!r}") from None
            else:
                values[setting.name] = raw
        if not environ.get(env_var("api_key")) and stored.get("api_key"):
            values["api_key_url"] = stored.get("url", "")  # the saved key is for the saved server only
        return cls(**values)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _boolean(raw: object, where: str) -> bool:
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{where} must be true or false (or 1 or 0), got {raw!r}")


def public_fields() -> list:
    """The settings a user sets (not the internal bookkeeping ones)."""
    return [f for f in fields(Settings) if not f.metadata.get("internal")]


def env_var(field_name: str) -> str:
    return f"RUNSTREAM_{field_name.upper()}"


#: Every environment variable runstream reads.
ENV_VARS: tuple[str, ...] = (*(env_var(f.name) for f in public_fields()), "RUNSTREAM_CONFIG")


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """Where ``runstream login`` keeps the server's URL and key."""
    if environ.get("RUNSTREAM_CONFIG"):
        return Path(environ["RUNSTREAM_CONFIG"])
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runstream" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The config file's settings (none when it does not exist); a broken file is a clear error."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ValueError(f"the config file {path} cannot be read ({exc}): fix or delete it") from None
    known = {f.name for f in public_fields()}
    return {k: str(v) for k, v in data.items() if k in known}


def write_config(path: Path, values: Mapping[str, str]) -> None:
    """Merge ``values`` into the config file, readable by its owner only (it may hold an API key)."""
    merged = {**read_config(path), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k} = {json.dumps(str(v))}" for k, v in sorted(merged.items())]  # a JSON string is a TOML string
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# written by `runstream login`; environment variables override these\n" + "\n".join(lines) + "\n")
    os.replace(tmp, path)
