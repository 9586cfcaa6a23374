"""Versioned schema migrations, applied idempotently at start-up, once per process and database.

Migrations are the files ``migrations/NNNN_name.sql`` beside this module, applied
in version order. Each applied version is recorded with its checksum in
``schema_migrations``; a recorded version is skipped, and one whose file
changed after it was applied is an error (add a new migration instead).

Every statement must be safe to run twice (``CREATE ... IF NOT EXISTS``,
``ADD COLUMN IF NOT EXISTS``): a process that dies between a statement and the
record, or two workers starting at once, then re-run it harmlessly. Statements
end with ``;`` at the end of a line; ``--`` starts a comment line.

Every process that opens the database goes through ``migrate_once``: the embedded
server opens it at start-up and again in its backend, a CLI command before its
work, a worker when it first connects. The first call checks the ledger and
applies what is missing; later calls for the same database in this process
return at once.

On a ClickHouse cluster (``runstream migrate --cluster NAME``) the same files are
laid out by ``storage.cluster`` and ``migrate_cluster`` applies them; the ledger
records the files' checksums as on one server. A database laid out for a cluster
is then migrated only that way: ``migrate`` without a cluster refuses to apply a
pending migration to it (it would create single-server tables), and does nothing
when none is pending, so workers and servers start on it as usual.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from runstream.storage.cluster import Cluster, ClusterError, check_nodes, table_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql\Z")

_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3) DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        lines = [line for line in self.sql.splitlines() if not line.lstrip().startswith("--")]
        parts = re.split(r";[ \t]*(?:\n|\Z)", "\n".join(lines))
        return [part.strip() for part in parts if part.strip()]


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name!r} must be named NNNN_lowercase_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {directory}")
    return migrations


def applied_migrations(client: Client, cluster: Cluster | None = None) -> dict[int, str]:
    """Version -> checksum of what the database has applied."""
    for statement in [_LEDGER] if cluster is None else cluster.layout([_LEDGER], client.database or ""):
        client.command(statement)
    rows = client.query("SELECT version, any(checksum) FROM schema_migrations GROUP BY version").result_rows
    return {int(version): checksum for version, checksum in rows}


#: A table every layout has; its engine tells a cluster's database (Distributed) from one server's.
_PROBE_TABLE = "metric_points"


def migrate(client: Client, directory: Path = MIGRATIONS_DIR, cluster: Cluster | None = None) -> list[Migration]:
    """Apply the migrations the database lacks, in order; return those it applied.

    With ``cluster``, laid out for it (``storage.cluster``): with ON CLUSTER this one call
    migrates every node, without it the caller migrates each node (``migrate_cluster``).
    """
    if cluster is not None and table_engine(client, _PROBE_TABLE) not in (None, "Distributed"):
        raise MigrationError(
            f"database {client.database!r} holds the single-server schema; a cluster layout needs a new "
            "database (copying existing data onto a cluster is not automated)"
        )
    done = applied_migrations(client, cluster)
    pending = []
    for migration in load_migrations(directory):
        if migration.version not in done:
            pending.append(migration)
        elif done[migration.version] != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} changed after it was applied to database "
                f"{client.database!r}; put schema changes in a new migration file instead"
            )
    if pending and cluster is None and table_engine(client, _PROBE_TABLE) == "Distributed":
        raise MigrationError(
            f"database {client.database!r} is laid out on a ClickHouse cluster: apply migration "
            f"{pending[0].version:04d}_{pending[0].name} with runstream migrate --cluster NAME"
        )
    applied = []
    for migration in pending:
        statements = migration.statements()
        if cluster is not None:
            try:
                statements = cluster.layout(statements, client.database or "")
            except ClusterError as exc:
                raise MigrationError(f"migration {migration.version:04d}_{migration.name}: {exc}") from exc
        for statement in statements:
            try:
                client.command(statement)
            except Exception as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}\nstatement:\n{statement}"
                ) from exc
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum]],
            column_names=["version", "name", "checksum"],
        )
        applied.append(migration)
    return applied


def cluster_schema(cluster: Cluster, database: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Every statement that lays the ledger and all migrations out on ``cluster``, in order."""
    migrations = [[_LEDGER]] + [m.statements() for m in load_migrations(directory)]
    return [statement for statements in migrations for statement in cluster.layout(statements, database)]


def migrate_cluster(clients: list[Client], cluster: Cluster, directory: Path = MIGRATIONS_DIR) -> list[list[Migration]]:
    """Lay the schema out on ``cluster``: through one node with ON CLUSTER, else on each node
    (the clients must then reach every node). Returns what each client's node applied."""
    try:
        check_nodes(clients, cluster)
    except ClusterError as exc:
        raise MigrationError(str(exc)) from exc
    return [migrate(client, directory, cluster) for client in clients]


#: The databases this process has migrated: (server URL or engine directory, database).
_migrated: set[tuple[str, str]] = set()
_migrating = threading.Lock()


def migrate_once(client: Client) -> list[Migration]:
    """``migrate`` the client's database unless this process already did; return what it applied."""
    target = (getattr(client, "url", None) or getattr(client, "path", None) or "", client.database or "")
    with _migrating:  # a second caller waits for the first, then finds the schema done
        if target in _migrated:
            return []
        applied = migrate(client)
        _migrated.add(target)
        return applied
