"""One ClickHouse client for both engines, chosen by a DSN.

- ``clickhouse://user:password@host:8123/db`` (or ``clickhouses://`` for TLS): a
  ClickHouse server, as in cluster deployments.
- ``chdb:///path/to/dir`` (optionally ``?database=db``): the embedded ClickHouse
  engine in this process, the default on a laptop and in tests. Only one
  process can open a chdb directory, and one process can open only one.

Either way the result is a clickhouse-connect ``Client`` speaking the same SQL,
and the database is created if it does not exist.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

DEFAULT_DATABASE = "runstream"
SERVER_SCHEMES = ("clickhouse", "clickhouses")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


class DsnError(ValueError):
    pass


def database_of(dsn: str) -> str:
    """The database a DSN names (``runstream`` when it names none)."""
    url = urlparse(dsn)
    if url.scheme == "chdb":
        database = parse_qs(url.query).get("database", [""])[0]
    elif url.scheme in SERVER_SCHEMES:
        database = url.path.strip("/")
    else:
        raise DsnError(
            f"unsupported ClickHouse DSN {redact(dsn)!r}: use clickhouse://user:password@host:8123/db "
            "for a ClickHouse server or chdb:///path/to/dir for the embedded engine"
        )
    database = database or DEFAULT_DATABASE
    if not _IDENTIFIER.match(database):
        raise DsnError(f"database name {database!r} must be letters, digits and '_', starting with a letter or '_'")
    return database


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    url = urlparse(dsn)
    if url.password:
        return url._replace(netloc=url.netloc.replace(f":{url.password}@", ":***@")).geturl()
    return dsn


def _client(dsn: str, database: str) -> Client:
    url = urlparse(dsn)
    if url.scheme == "chdb":
        return clickhouse_connect.get_client(interface="chdb", path=url.path or None, database=database)
    return clickhouse_connect.get_client(
        host=url.hostname or "localhost",
        port=url.port or (8443 if url.scheme == "clickhouses" else 8123),
        username=url.username or "default",
        password=url.password or "",
        secure=url.scheme == "clickhouses",
        database=database,
        # The first query may create the database; the handshake must not need it.
        autogenerate_session_id=False,
    )


def connect(dsn: str) -> Client:
    """A client for the DSN's engine and database, creating the database if missing."""
    database = database_of(dsn)
    bootstrap = _client(dsn, "default")
    try:
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    finally:
        if not dsn.startswith("chdb:"):
            bootstrap.close()  # chdb clients share one embedded engine per process: closing would end it
    return _client(dsn, database)
