"""The schema on a two-shard ClickHouse cluster: writers and queries through the Distributed tables.

Two chdb servers (infra/clickhouse_server.py) form cluster ``runstream``, one shard each.
chdb cannot replicate (no distributed DDL, Replicated tables stay read-only: see that
module), so the data test uses ``runstream migrate --cluster runstream --no-replication``
(plain local tables, Distributed in front); the replicated layout is checked as far as
the engine can: every statement parses, and its tables are created.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infra.clickhouse_server import ClickHouseServer, cluster_servers
from runstream import events
from runstream.cli import main
from runstream.events import Event
from runstream.storage import history, logs, processing, runs, series
from runstream.storage.client import connect
from runstream.storage.cluster import EVERY_NODE, LEDGER, LOCAL_SUFFIX, SHARDED, Cluster, settings_missing
from runstream.storage.migrations import MIGRATIONS_DIR, MigrationError, cluster_schema, migrate, migrate_cluster
from runstream.storage.writer import (
    insert_console_lines,
    insert_files,
    insert_metric_points,
    insert_system_points,
    load_run_states,
    upsert_metric_summaries,
    upsert_run_states,
    upsert_run_summaries,
    upsert_runs,
)
from tests.helpers import make_event

NAME = "runstream"
TEAM, PROJECT = "acme", "sharded"
T0 = 1.75e9
RUN_IDS = [f"run-{i:02d}" for i in range(12)]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ClickHouseServer]]:
    nodes = cluster_servers(tmp_path_factory.mktemp("cluster"), shards=2, name=NAME)
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _dsn(server: ClickHouseServer, database: str) -> str:
    return server.dsn.rsplit("/", 1)[0] + "/" + database


@pytest.fixture(scope="module")
def dsns(servers: list[ClickHouseServer]) -> list[str]:
    """A database laid out on the cluster by the CLI, as the DSNs of its two nodes."""
    database = f"cluster_{uuid.uuid4().hex[:10]}"
    dsns = [_dsn(server, database) for server in servers]
    assert main(["migrate", "--cluster", NAME, "--no-replication", "--dsn", dsns[0], "--dsn", dsns[1]]) == 0
    return dsns


def _tables(dsn: str) -> dict[str, tuple[str, str]]:
    rows = connect(dsn).query("SELECT name, engine, engine_full FROM system.tables WHERE database = currentDatabase()")
    return {name: (engine, full) for name, engine, full in rows.result_rows}


def test_migrate_lays_out_every_table_on_every_node(dsns, capsys):
    for dsn in dsns:
        tables = _tables(dsn)
        assert tables[LEDGER][0] == "ReplacingMergeTree"  # each node's own record of what it applied
        for name in SHARDED | (EVERY_NODE - {LEDGER}):
            engine, full = tables[name]
            key = "cityHash64(team, project, run_id)" if name in SHARDED else "0"
            assert engine == "Distributed"
            assert full.startswith(f"Distributed('{NAME}', '{connect(dsn).database}', '{name}{LOCAL_SUFFIX}', {key})")
            assert tables[name + LOCAL_SUFFIX][0].endswith("MergeTree")
    # Again: nothing to apply, on either node.
    assert main(["migrate", "--cluster", NAME, "--no-replication", "--dsn", dsns[0], "--dsn", dsns[1]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.endswith("applied none (the schema is up to date)") for line in out] == [True, True]


def test_the_settings_a_layout_needs_are_checked(dsns, clickhouse):
    assert settings_missing(connect(dsns[1]), Cluster(NAME, replicated=False)) == []  # the dev servers' profile
    assert settings_missing(clickhouse, Cluster(NAME, replicated=False)) == [  # ClickHouse's defaults
        "distributed_foreground_insert = 1",
        "distributed_product_mode = 'global'",
    ]
    assert settings_missing(clickhouse, Cluster(NAME)) == ["distributed_foreground_insert = 1"]


def test_without_on_cluster_every_node_must_be_given(servers):
    database = f"cluster_{uuid.uuid4().hex[:10]}"
    with pytest.raises(MigrationError, match="not given: shard 2 replica 1"):
        migrate_cluster([connect(_dsn(servers[0], database))], Cluster(NAME, replicated=False))
    with pytest.raises(MigrationError, match="no cluster 'elsewhere'"):
        migrate_cluster([connect(_dsn(servers[0], database))], Cluster("elsewhere", replicated=False))


def test_a_cluster_database_takes_new_migrations_only_laid_out(dsns, tmp_path: Path):
    client = connect(dsns[0])
    assert migrate(client) == []  # nothing pending: workers and servers start on it as usual
    for path in MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "0999_more.sql").write_text(
        "CREATE TABLE IF NOT EXISTS more (team String) ENGINE = MergeTree ORDER BY team;\n"
    )
    with pytest.raises(MigrationError, match="laid out on a ClickHouse cluster: apply migration 0999_more"):
        migrate(client, tmp_path)
    with pytest.raises(MigrationError, match="table more is neither sharded by run nor on every node"):
        migrate(client, tmp_path, Cluster(NAME, replicated=False, on_cluster=False))


def test_a_single_server_database_is_not_laid_out_again(servers, capsys):
    database = f"single_{uuid.uuid4().hex[:10]}"
    migrate(connect(_dsn(servers[0], database)))
    given = ["--dsn", _dsn(servers[0], database), "--dsn", _dsn(servers[1], database)]
    assert main(["migrate", "--cluster", NAME, "--no-replication", *given]) == 1
    assert "holds the single-server schema" in capsys.readouterr().err


def test_the_replicated_layout_parses_and_its_tables_are_created(servers):
    """As far as chdb goes: ON CLUSTER cannot run here, and Replicated tables stay read-only."""
    client = connect(_dsn(servers[0], f"replicated_{uuid.uuid4().hex[:10]}"))
    for statement in cluster_schema(Cluster(NAME), client.database):
        assert client.command("SELECT formatQuery({q:String}) != ''", parameters={"q": statement})
    for statement in cluster_schema(Cluster(NAME, on_cluster=False), client.database):
        if statement.startswith("CREATE"):  # an ALTER would need an active replica
            client.command(statement)
    replicas = client.query(
        "SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = currentDatabase()"
    ).result_rows
    paths = {table: (path, replica) for table, path, replica in replicas}
    assert paths["metric_points_local"] == (f"/clickhouse/tables/1/{client.database}/metric_points", "replica1")
    assert paths["runs"] == (f"/clickhouse/tables/all/{client.database}/runs", "1-replica1")
    assert set(paths) == {t + LOCAL_SUFFIX for t in SHARDED} | EVERY_NODE
    assert _tables(_dsn(servers[0], client.database))["metric_points"][0] == "Distributed"


# -- the same writes on one server and on the cluster give the same answers ---------------------------------


def _metric_batches(run_id: str, seed: int, steps: int) -> list[Event]:
    rng = np.random.default_rng(seed)
    loss = 3 * np.exp(-np.arange(steps) / (steps / 4)) + rng.normal(0, 0.05, steps)
    loss[int(rng.integers(10, steps - 10))] += 500.0  # a spike the downsampled chart must keep
    times = T0 + seed * 1000 + np.cumsum(rng.uniform(0.05, 0.2, steps))
    batches = []
    for k, start in enumerate(range(0, steps, 400)):
        end = min(start + 400, steps)
        data = {
            "step": list(range(start, end)),
            "time": times[start:end].tolist(),
            "values": {"loss": loss[start:end].tolist(), "acc": (np.arange(start, end) / steps).tolist()},
        }
        batches.append(Event(events.METRICS, TEAM, PROJECT, run_id, 10 + k, T0, data))
    return batches


def _write(client) -> None:
    """Everything a processor writes for 12 runs, with redeliveries and a step logged again."""
    batches = [b for i, run_id in enumerate(RUN_IDS) for b in _metric_batches(run_id, i, 1_000 + 350 * i)]
    random.Random(3).shuffle(batches)
    insert_metric_points(client, batches)
    insert_metric_points(client, batches[:7])  # redelivered
    again = Event(
        events.METRICS, TEAM, PROJECT, RUN_IDS[0], 99, T0, {"step": [5], "time": [T0 + 9], "values": {"loss": [42.0]}}
    )
    # Logged again later (the larger seq wins), its upper levels left pending as a busy driver does.
    insert_metric_points(client, [again], defer_upper=True)

    records = [
        {
            "team": TEAM,
            "project": PROJECT,
            "run_id": run_id,
            "name": f"name {i}",
            "state": "running" if i % 3 else "finished",
            "created_at": T0 + i,
            "updated_at": T0 + 100,
            "heartbeat_at": T0 + 100,
            "config": {"lr": 10.0**-i, "optimizer": {"name": ["adam", "sgd"][i % 2]}},
            "version": 2,
        }
        for i, run_id in enumerate(RUN_IDS)
    ]
    upsert_runs(client, [{**r, "version": 1, "name": "stale"} for r in records])
    upsert_runs(client, records)
    upsert_run_summaries(
        client,
        [
            {"team": TEAM, "project": PROJECT, "run_id": r, "summary": {"best": i * 0.5}, "version": 1}
            for i, r in enumerate(RUN_IDS)
        ],
    )
    statistics = {
        "last": 0.1, "min": 0.05, "max": 3.0, "mean": 1.0, "count": 1000, "nan_count": 0, "inf_count": 0,
        "first_step": 0, "integer": False,
    }  # fmt: skip
    upsert_metric_summaries(
        client,
        [
            {**statistics, "team": TEAM, "project": PROJECT, "run_id": r, "metric": "loss", "last_step": 999 + i,
             "first_time": T0, "last_time": T0 + 50 + i, "version": v}
            for i, r in enumerate(RUN_IDS) for v in (1, 2)
        ],
    )  # fmt: skip
    upsert_run_states(client, {(TEAM, PROJECT, r): (f'{{"n": {i}}}'.encode(), 3) for i, r in enumerate(RUN_IDS)})
    system = [
        events.validate(make_event(events.SYSTEM, {"time": [T0 + s for s in range(30)], "values": {"cpu": [float(i + s) for s in range(30)]}}, seq=5, run_id=r, team=TEAM, project=PROJECT))
        for i, r in enumerate(RUN_IDS)
    ]  # fmt: skip
    insert_system_points(client, system)
    console = [
        events.validate(make_event(events.CONSOLE, {"time": [T0, T0 + 1], "stream": ["stdout", "stderr"], "line": [f"hello {r}", "warn"]}, seq=6, run_id=r, team=TEAM, project=PROJECT))
        for r in RUN_IDS
    ]  # fmt: skip
    insert_console_lines(client, console)
    files = [
        events.validate(make_event(events.FILE, {"path": "model.pt", "kind": "file", "size": size, "sha256": "0" * 64, "store_key": f"{r}/{size}"}, seq=seq, run_id=r, team=TEAM, project=PROJECT, ts=T0))
        for r in RUN_IDS for seq, size in ((7, 10), (8, 20))
    ]  # fmt: skip
    insert_files(client, files)  # saved twice: the later entry replaces the earlier


def _plain(value: Any) -> Any:
    """Comparable: numpy arrays as lists, NaN as a string."""
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _answers(client) -> dict[str, Any]:
    """What the query layer answers about the project."""
    chart = series.series(client, TEAM, PROJECT, RUN_IDS, ["loss", "acc"], points=200)
    zoom = series.series(client, TEAM, PROJECT, RUN_IDS[:4], ["loss"], points=5000, step_range=(100, 900))
    search = runs.search_runs(client, TEAM, PROJECT, {"config.optimizer.name": "adam"}, order="-summary.best", limit=4)
    page2 = runs.search_runs(client, TEAM, PROJECT, {"config.optimizer.name": "adam"}, order="-summary.best", limit=4, cursor=search["next_cursor"])  # fmt: skip
    return {
        "chart": _plain(chart),
        "zoom": _plain(zoom),
        "search": _plain([search["runs"], page2["runs"]]),
        "count": runs.count_runs(client, TEAM, PROJECT, {"state": "running"}),
        "history": _plain(history.history_page(client, TEAM, PROJECT, RUN_IDS[0], page_size=300)),
        "statistics": _plain(history.run_statistics(client, TEAM, PROJECT, RUN_IDS[3])),
        "last_steps": sorted(processing.last_step_times(client, TEAM, PROJECT)),
        "states": load_run_states(client, [(TEAM, PROJECT, r) for r in RUN_IDS]),
        "system": _plain(logs.system_series(client, TEAM, PROJECT, RUN_IDS, ["cpu"], max_points=10)),
        "console": _plain(logs.console_tail(client, TEAM, PROJECT, RUN_IDS[5])),
        "files": _plain(logs.run_files(client, TEAM, PROJECT, RUN_IDS[7])),
    }


@pytest.fixture(scope="module")
def written(dsns: list[str]) -> list[str]:
    _write(connect(dsns[0]))
    return dsns


def test_queries_through_either_node_answer_as_one_server(written, clickhouse):
    _write(clickhouse)
    expected = _answers(clickhouse)
    assert len(expected["chart"]["series"]) == 24 and expected["search"][0]
    assert expected["last_steps"] and len(expected["states"]) == 12  # the comparison compares something
    for dsn in written:
        assert _answers(connect(dsn)) == expected


def _local_runs(dsn: str, table: str) -> set[str]:
    return {
        r for (r,) in connect(dsn).query(f"SELECT DISTINCT toString(run_id) FROM {table}{LOCAL_SUFFIX}").result_rows
    }


def test_both_shards_hold_runs_and_each_run_lives_on_one(written):
    shard_of = {}
    for shard, dsn in enumerate(written):
        for run_id in _local_runs(dsn, "metric_points"):
            assert run_id not in shard_of, f"{run_id} has points on both shards"
            shard_of[run_id] = shard
    assert set(shard_of) == set(RUN_IDS) and set(shard_of.values()) == {0, 1}
    # Every table keeps a run's rows on its points' shard: FINAL and a bucket refresh stay on one shard.
    for table in SHARDED:
        found = [(run_id, shard) for shard, dsn in enumerate(written) for run_id in _local_runs(dsn, table)]
        assert found and all(shard_of[run_id] == shard for run_id, shard in found), table
    # Without replication, the tables whole on every node live on the first shard.
    assert len(_local_runs(written[0], "runs")) == 12 and not _local_runs(written[1], "runs")
