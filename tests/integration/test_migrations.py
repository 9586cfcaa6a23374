"""Schema migrations against the real embedded ClickHouse engine."""

import pytest

from runstream.storage.client import connect
from runstream.storage.migrations import MigrationError, applied_migrations, load_migrations, migrate


def test_migrations_apply_once_and_twice_is_a_no_op(any_clickhouse_dsn):
    clickhouse_dsn = any_clickhouse_dsn
    client = connect(clickhouse_dsn)
    first = migrate(client)
    assert [m.version for m in first] == [m.version for m in load_migrations()]
    tables = {row[0] for row in client.query("SHOW TABLES").result_rows}
    assert {"schema_migrations", "metric_points"} <= tables

    assert migrate(client) == []
    assert migrate(connect(clickhouse_dsn)) == []  # a second client sees the same ledger
    assert applied_migrations(client) == {m.version: m.checksum for m in first}


def test_statements_rerun_safely_when_the_ledger_was_lost(clickhouse_dsn):
    # A process that died between the statements and the ledger insert re-runs them.
    client = connect(clickhouse_dsn)
    migrate(client)
    client.command("TRUNCATE TABLE schema_migrations")
    assert len(migrate(client)) == len(load_migrations())


def test_a_changed_applied_migration_is_refused(clickhouse_dsn, tmp_path):
    (tmp_path / "0001_things.sql").write_text(
        "CREATE TABLE IF NOT EXISTS things (a UInt8) ENGINE = MergeTree ORDER BY a;\n"
    )
    client = connect(clickhouse_dsn)
    assert [m.name for m in migrate(client, tmp_path)] == ["things"]
    (tmp_path / "0001_things.sql").write_text(
        "CREATE TABLE IF NOT EXISTS things (b UInt8) ENGINE = MergeTree ORDER BY b;\n"
    )
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(client, tmp_path)


def test_a_failing_statement_names_the_migration_and_applies_nothing_more(clickhouse_dsn, tmp_path):
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE IF NOT EXISTS ok (a UInt8) ENGINE = MergeTree ORDER BY a;\n")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE nonsense (;\n")
    (tmp_path / "0003_later.sql").write_text(
        "CREATE TABLE IF NOT EXISTS later (a UInt8) ENGINE = MergeTree ORDER BY a;\n"
    )
    client = connect(clickhouse_dsn)
    with pytest.raises(MigrationError, match="0002_broken failed"):
        migrate(client, tmp_path)
    assert set(applied_migrations(client)) == {1}
    assert "later" not in {row[0] for row in client.query("SHOW TABLES").result_rows}


def test_badly_named_migration_file_is_an_error(tmp_path):
    (tmp_path / "init.sql").write_text("SELECT 1;\n")
    with pytest.raises(MigrationError, match=r"NNNN_lowercase_name.sql"):
        load_migrations(tmp_path)
