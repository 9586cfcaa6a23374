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
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

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


def applied_migrations(client: Client) -> dict[int, str]:
    """Version -> checksum of what the database has applied."""
    client.command(_LEDGER)
    rows = client.query("SELECT version, any(checksum) FROM schema_migrations GROUP BY version").result_rows
    return {int(version): checksum for version, checksum in rows}


def migrate(client: Client, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply the migrations the database lacks, in order; return those it applied."""
    done = applied_migrations(client)
    applied = []
    for migration in load_migrations(directory):
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied to database "
                    f"{client.database!r}; put schema changes in a new migration file instead"
                )
            continue
        for statement in migration.statements():
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
