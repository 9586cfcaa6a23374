"""The cluster layout of the migrations (storage/cluster.py), checked as text: no server needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runstream.cli import main
from runstream.storage.cluster import EVERY_NODE, LEDGER, LOCAL_SUFFIX, SHARDED, SHARDING_KEY, Cluster, ClusterError
from runstream.storage.migrations import _LEDGER, cluster_schema, load_migrations

DATABASE = "rs"
CREATE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<name>\w+)(?P<on> ON CLUSTER `\w+`)?\s*"
    r"(?:AS (?P<as>\w+)\s*)?(?P<columns>\(.*\))?\s*ENGINE = (?P<engine>\w+)(?:\((?P<args>.*?)\))?(?P<rest>\s*ORDER BY .*)?\Z",
    re.S,
)


def _single_server() -> dict[str, re.Match[str]]:
    """The single-server CREATE statements by table."""
    created = {}
    for statement in [_LEDGER.strip()] + [s for m in load_migrations() for s in m.statements()]:
        if statement.startswith("CREATE"):
            match = re.match(
                r"CREATE TABLE IF NOT EXISTS (\w+)\s*(\(.*\))\s*ENGINE = (\w+)(?:\((.*?)\))?(\s*ORDER BY .*)\Z",
                statement,
                re.S,
            )
            assert match, statement
            created[match[1]] = match
    return created


def _created(statements: list[str]) -> dict[str, re.Match[str]]:
    out = {}
    for statement in statements:
        if statement.startswith("CREATE"):
            match = CREATE.match(statement)
            assert match, statement
            out[match["name"]] = match
    return out


def test_every_table_of_the_migrations_is_classified_once():
    tables = set(_single_server())
    assert tables == SHARDED | EVERY_NODE, "classify new tables in storage/cluster.py; drop names no migration has"
    assert not SHARDED & EVERY_NODE


def test_replicated_layout_keeps_each_table_and_puts_a_distributed_one_before_the_sharded():
    single = _single_server()
    created = _created(cluster_schema(Cluster("prod"), DATABASE))
    for name, original in single.items():
        columns, engine, args, order = original[2], original[3], original[4], original[5]
        table = name + LOCAL_SUFFIX if name in SHARDED else name
        local = created[table]
        # Same columns, codecs and order as on one server; the Replicated variant of the same engine.
        assert (local["columns"], local["rest"]) == (columns, order)
        assert local["engine"] == f"Replicated{engine}"
        shard, replica = ("{shard}", "'{replica}'") if name in SHARDED else ("all", "'{shard}-{replica}'")
        expected = [f"'/clickhouse/tables/{shard}/{{database}}/{name}'", replica] + ([args] if args else [])
        assert local["args"] == ", ".join(expected)
        if name in SHARDED:
            front = created[name]
            assert (front["as"], front["engine"]) == (table, "Distributed")
            assert front["args"] == f"'prod', '{DATABASE}', {table}, {SHARDING_KEY}"
            assert re.search(r"\bteam\b.*\bproject\b.*\brun_id\b", columns, re.S), "the sharding key's columns"
    assert set(created) == set(single) | {t + LOCAL_SUFFIX for t in SHARDED}


def test_replicated_statements_all_run_on_cluster_and_alter_local_tables_first():
    statements = cluster_schema(Cluster("prod"), DATABASE)
    assert all(" ON CLUSTER `prod`" in s.split("\n")[0] for s in statements)
    alters = [s.split(" ON CLUSTER")[0] for s in statements if s.startswith("ALTER")]
    assert alters.index("ALTER TABLE metric_summaries_local") + 1 == alters.index("ALTER TABLE metric_summaries")
    assert "ALTER TABLE runs" in alters and "ALTER TABLE runs_local" not in alters  # runs has no Distributed front


def test_without_replication_every_table_but_the_ledger_is_distributed_and_nothing_runs_on_cluster():
    statements = cluster_schema(Cluster("dev", replicated=False), DATABASE)
    assert not any("ON CLUSTER" in s or "Replicated" in s for s in statements)
    created = _created(statements)
    assert created[LEDGER]["engine"] == "ReplacingMergeTree"  # each node records what it applied
    for name in (SHARDED | EVERY_NODE) - {LEDGER}:
        key = SHARDING_KEY if name in SHARDED else "0"  # 0: the first shard holds the small tables
        assert created[name]["args"] == f"'dev', '{DATABASE}', {name}{LOCAL_SUFFIX}, {key}"
    alters = [s.split("\n")[0] for s in statements if s.startswith("ALTER")]
    assert alters[:2] == [
        "ALTER TABLE runs_local ADD COLUMN IF NOT EXISTS error String",
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS error String",
    ]


def test_what_the_layout_does_not_know_is_an_error():
    cluster = Cluster("prod")
    with pytest.raises(ClusterError, match="table scratch is neither sharded by run nor on every node"):
        cluster.layout(["CREATE TABLE IF NOT EXISTS scratch (a UInt8) ENGINE = MergeTree ORDER BY a"], DATABASE)
    with pytest.raises(ClusterError, match="only CREATE TABLE IF NOT EXISTS and ALTER TABLE"):
        cluster.layout(["CREATE MATERIALIZED VIEW v AS SELECT 1"], DATABASE)
    with pytest.raises(ClusterError, match="only plain MergeTree-family engines"):
        cluster.layout(["CREATE TABLE IF NOT EXISTS runs (a UInt8) ENGINE = Memory"], DATABASE)
    with pytest.raises(ClusterError, match="database name"):
        cluster.layout([], "no-dashes")
    with pytest.raises(ClusterError, match="cluster name"):
        Cluster("a`b")
    with pytest.raises(ClusterError, match="ON CLUSTER needs Keeper"):
        Cluster("prod", replicated=False, on_cluster=True)


def test_required_settings_depend_on_replication():
    assert Cluster("prod").required_settings() == {"distributed_foreground_insert": "1"}
    assert Cluster("dev", replicated=False).required_settings() == {
        "distributed_foreground_insert": "1",
        "distributed_product_mode": "global",
    }


def test_cli_prints_the_cluster_schema_without_a_server(capsys, tmp_path: Path):
    dsn = f"chdb://{tmp_path}/absent?database={DATABASE}"
    assert main(["migrate", "--cluster", "prod", "--print-sql", "--dsn", dsn]) == 0
    printed = capsys.readouterr().out
    assert printed == "".join(f"{s};\n\n" for s in cluster_schema(Cluster("prod"), DATABASE))
    assert not (tmp_path / "absent").exists()
    assert main(["migrate", "--print-sql", "--dsn", dsn]) == 2  # only with --cluster
    assert "go with --cluster" in capsys.readouterr().err


def test_docs_name_every_table_in_the_cluster_section():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "storage.md").read_text()
    section = docs.split("## On a ClickHouse cluster", 1)[1]
    for table in (SHARDED | EVERY_NODE) - {LEDGER}:
        assert f"`{table}`" in section, table
