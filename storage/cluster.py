"""The schema on a ClickHouse cluster, laid out from the same migration files.

``Cluster.layout`` rewrites each migration statement (written for one server) into
the statements that give a cluster the same tables under the same names, so the
writers and the query layer run unchanged. Tables sharded by run (``SHARDED``: the
high-volume ones, and per-run processor state) become ``<name>_local`` on every node
plus a ``Distributed`` table ``<name>`` in front, sharded by ``SHARDING_KEY``: every
row of a run lives on one shard, so ReplacingMergeTree's deduplication and ``FINAL``
stay exact through the Distributed table (each shard deduplicates its own runs).
The other tables (``EVERY_NODE``: small, joined with each other, or read inside
sharded queries) depend on replication:

- replicated (the default; needs Keeper): every statement runs ``ON CLUSTER``; local
  tables get the Replicated variant of their engine with the ``{shard}``/``{replica}``
  macros, and an ``EVERY_NODE`` table keeps its name with a replica on every node,
  so reads, joins and ``IN`` subqueries on it stay local everywhere;
- not replicated (no Keeper, hence no ``ON CLUSTER``: the caller runs the statements on
  every node): plain engines, and an ``EVERY_NODE`` table is a ``Distributed`` table
  whose constant sharding key puts every row on the first shard. Its joins and ``IN``
  subqueries are then distributed inside distributed queries, which ClickHouse refuses
  unless the servers set ``distributed_product_mode = 'global'``.

The ledger (``schema_migrations``) records what a node has applied: replicated, it
is one table on every node like the others; not replicated, each node keeps its own.

Anything the rewrite does not know (a table not classified below, a statement other
than ``CREATE TABLE IF NOT EXISTS`` and ``ALTER TABLE``) is an error, so a new
migration cannot reach a cluster in a shape nobody chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

#: Rows of one run land on one shard; the hash spreads a project's runs over all shards.
SHARDING_KEY = "cityHash64(team, project, run_id)"
LOCAL_SUFFIX = "_local"
LEDGER = "schema_migrations"

#: Tables sharded by run: each has team, project and run_id columns.
SHARDED = frozenset(
    {
        "metric_points",
        "metric_steps",
        "metric_buckets",
        "metric_summaries",
        "system_points",
        "console_lines",
        "run_files",
        "bucket_pending",  # upper bucket levels a run's batches left behind, kept with its buckets
        "run_states",  # one JSON document per run, read and written by key by the processor
    }
)
#: Tables whole on every node (replicated) or on the first shard (not replicated): small ones,
#: joined with each other (runs and run_summaries, api_keys and members, reports and
#: report_links), or read inside a sharded query (runs, in storage/processing.py).
EVERY_NODE = frozenset(
    {
        LEDGER,
        "runs",
        "run_summaries",
        "key_catalog",
        "alerts",
        "alert_rules",
        "teams",
        "members",
        "projects",
        "api_keys",
        "reports",
        "report_links",
        "server_secrets",
        "audit_log",
        "run_tombstones",  # deleted and moved runs: read inside run searches and by the processor per batch
        "artifact_versions",  # artifacts: small, and read across runs and projects
        "artifact_aliases",
        "artifact_usage",
        "run_lineage",  # forks and rewinds: one small row per such run, read before the points
        "sweeps",  # sweeps: small, read by the API per agent request and by the processor per batch
        "sweep_claims",
        "sweep_agents",
        "sweep_milestones",
        "sweep_stops",
        "workspace_views",  # saved workspace layouts
    }
)

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
_CREATE = re.compile(
    r"CREATE TABLE IF NOT EXISTS (?P<name>\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE\s*=\s*(?P<engine>\w+)(?:\s*\((?P<args>[^()]*)\))?(?P<rest>.*)\Z",
    re.S,
)
_ALTER = re.compile(r"ALTER TABLE (?P<name>\w+)\s+(?P<rest>.*)\Z", re.S)


class ClusterError(ValueError):
    """A statement or table the cluster layout does not cover, or a cluster that cannot take it."""


@dataclass(frozen=True)
class Cluster:
    """A cluster of the servers' ``remote_servers`` that the schema is laid out on."""

    name: str
    #: Replicated engines ON CLUSTER (Keeper); False: plain engines, run on every node by the caller.
    replicated: bool = True
    #: Defaults to ``replicated``; False with replication: the caller runs the statements on every node.
    on_cluster: bool | None = None

    def __post_init__(self) -> None:
        if not _CLUSTER_NAME.match(self.name):
            raise ClusterError(f"cluster name {self.name!r} must be letters, digits, '_', '.' and '-'")
        if self.on_cluster is None:
            object.__setattr__(self, "on_cluster", self.replicated)
        if self.on_cluster and not self.replicated:
            raise ClusterError("ON CLUSTER needs Keeper, and a cluster with Keeper should replicate")

    def layout(self, statements: list[str], database: str) -> list[str]:
        """The cluster's statements for one migration's single-server ``statements``, in order."""
        if not _DATABASE_NAME.match(database):
            raise ClusterError(f"database name {database!r} must be letters, digits and '_'")
        return [out for statement in statements for out in self._statement(statement.strip(), database)]

    def _statement(self, statement: str, database: str) -> list[str]:
        if created := _CREATE.match(statement):
            return self._create(database, **created.groupdict())
        if altered := _ALTER.match(statement):
            return self._alter(altered["name"], altered["rest"])
        raise ClusterError(
            "only CREATE TABLE IF NOT EXISTS and ALTER TABLE statements can be laid out on a cluster; "
            f"extend storage/cluster.py for:\n{statement}"
        )

    @property
    def _on(self) -> str:
        return f" ON CLUSTER `{self.name}`" if self.on_cluster else ""

    def _create(self, database: str, name: str, columns: str, engine: str, args: str | None, rest: str) -> list[str]:
        sharded = _sharded(name)
        if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
            raise ClusterError(f"table {name}: only plain MergeTree-family engines can be laid out, not {engine}")
        if name == LEDGER and not self.replicated:  # each node records what it has applied
            return [f"CREATE TABLE IF NOT EXISTS {name}\n{columns}\nENGINE = {engine}{_args(args)}{rest}"]
        if self.replicated and not sharded:  # one shard, every node a replica: the table keeps its name
            path = f"/clickhouse/tables/all/{{database}}/{name}"
            # Shard and replica together: unique whether {replica} is unique per shard or in the cluster.
            return [self._replicated(name, columns, engine, args, rest, path, "{shard}-{replica}")]
        local = name + LOCAL_SUFFIX
        if self.replicated:
            path = f"/clickhouse/tables/{{shard}}/{{database}}/{name}"
            create = self._replicated(local, columns, engine, args, rest, path, "{replica}")
        else:
            create = f"CREATE TABLE IF NOT EXISTS {local}\n{columns}\nENGINE = {engine}{_args(args)}{rest}"
        key = SHARDING_KEY if sharded else "0"  # 0: every row to the first shard
        distributed = (
            f"CREATE TABLE IF NOT EXISTS {name}{self._on} AS {local}\n"
            f"ENGINE = Distributed('{self.name}', '{database}', {local}, {key})"
        )
        return [create, distributed]

    def _replicated(
        self, table: str, columns: str, engine: str, args: str | None, rest: str, path: str, replica: str
    ) -> str:
        engine_args = ", ".join([f"'{path}'", f"'{replica}'"] + ([args.strip()] if args and args.strip() else []))
        return (
            f"CREATE TABLE IF NOT EXISTS {table}{self._on}\n{columns}\nENGINE = Replicated{engine}({engine_args}){rest}"
        )

    def _alter(self, name: str, rest: str) -> list[str]:
        # A table with a Distributed front: alter the local table first, a Distributed
        # table must not name a column its shards lack.
        fronted = _sharded(name) or (not self.replicated and name != LEDGER)
        tables = [name + LOCAL_SUFFIX, name] if fronted else [name]
        return [f"ALTER TABLE {table}{self._on} {rest}" for table in tables]

    def required_settings(self) -> dict[str, str]:
        """Settings every client of the cluster needs (in the servers' default profile), with their values."""
        # Synchronous Distributed inserts: the processor reads back what it has just written.
        settings = {"distributed_foreground_insert": "1"}
        if not self.replicated:  # EVERY_NODE tables are Distributed, and joined inside distributed queries
            settings["distributed_product_mode"] = "global"
        return settings


def _args(args: str | None) -> str:
    return f"({args})" if args is not None else ""


def _sharded(table: str) -> bool:
    if table in SHARDED:
        return True
    if table in EVERY_NODE:
        return False
    raise ClusterError(
        f"table {table} is neither sharded by run nor on every node: add it to SHARDED or EVERY_NODE "
        "in storage/cluster.py (and to the cluster table in docs/storage.md)"
    )


def table_engine(client: Client, table: str) -> str | None:
    """The engine of ``table`` in the client's database, or None when there is no such table."""
    rows = client.query(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    return str(rows[0][0]) if rows else None


def cluster_nodes(client: Client, name: str) -> list[tuple[int, int, bool]]:
    """(shard, replica, whether it is this server) of each node of cluster ``name``; [] if the server lacks it."""
    rows = client.query(
        "SELECT shard_num, replica_num, is_local FROM system.clusters WHERE cluster = {c:String} "
        "ORDER BY shard_num, replica_num",
        parameters={"c": name},
    ).result_rows
    return [(int(shard), int(replica), bool(is_local)) for shard, replica, is_local in rows]


def check_nodes(clients: list[Client], cluster: Cluster) -> None:
    """Raise ClusterError unless the clients reach what ``cluster`` needs: one node of it with ON CLUSTER,
    else every node of it (each node is then migrated by its own client)."""
    nodes = [cluster_nodes(client, cluster.name) for client in clients]
    if not all(nodes):
        raise ClusterError(f"a server has no cluster {cluster.name!r} in its remote_servers")
    if cluster.on_cluster:
        if len(clients) != 1:
            raise ClusterError("ON CLUSTER reaches every node: give one server of the cluster")
        return
    every = {(shard, replica) for shard, replica, _ in nodes[0]}
    reached = [{(s, r) for s, r, local in found if local} for found in nodes]
    if any(not here for here in reached):
        raise ClusterError(f"a server given is not itself a node of cluster {cluster.name!r}")
    missed = every - set().union(*reached)
    if missed:
        names = ", ".join(f"shard {s} replica {r}" for s, r in sorted(missed))
        raise ClusterError(f"without ON CLUSTER every node must be migrated; not given: {names}")


def settings_missing(client: Client, cluster: Cluster) -> list[str]:
    """The settings of ``Cluster.required_settings`` this client's session lacks, as ``name = value``."""
    missing = []
    for name, value in cluster.required_settings().items():
        actual = str(client.command("SELECT toString(getSetting({n:String}))", parameters={"n": name}))
        if actual.strip().lower() not in {value, "true" if value == "1" else value}:  # Bool settings read 'true'
            missing.append(f"{name} = {value if value.isdigit() else repr(value)}")
    return missing
