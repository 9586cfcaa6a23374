"""Deleting runs and projects, and moving a run to another project of its team.

Every deletion starts with a tombstone (``run_tombstones``, migration 0015), then
removes rows; the tombstone stays:

- run searches (``storage/runs.py``) leave tombstoned runs out, so from the moment it
  is written no query shows the run, while its rows are still being removed (or if a
  removal fails half way: what remains is invisible, and deleting the project clears it);
- the stream processor dead-letters every later event of a tombstoned run
  (``TombstoneCache``): a resend from an SDK's spool or a replayed topic cannot bring the
  run back, and a new run cannot take its id in that project. What a batch under way
  stores after the removal, its sweep removes again (``purge_reappeared``).

Deleting a deleted run again removes its rows again: a deletion that failed half way is
finished so.

A run's rows are found in every table keyed by run: the tables of the database with
``team``, ``project`` and ``run_id`` columns (``run_tables``), so a table added by a later
migration is covered without a change here. Points a rewound run logged under its
internal ids (``<run_id>~r<k>``, see storage/lineage.py) go with it. Rows are removed with
lightweight ``DELETE``s: the rows vanish from reads when the statement returns, and the
space is reclaimed by later merges.

Moving marks the source first (its tombstone "moving to team/project #token"), copies the
rows to the target project (``INSERT ... SELECT`` with the project replaced, the runs row
last, so the run shows in the target only when whole), then tombstones ("moved to
team/project") and deletes the source; moving again to the same target finishes a move that
failed half way. A running run cannot move: its SDK keeps writing to the old identity,
whose events would then be dead-lettered.

On a cluster the local tables' rows are deleted ``ON CLUSTER`` when they are replicated,
else on every node by a client of its own (``node_clients``).

Blobs in the file store are the API's (``api/deletion.py``); artifact blobs are
content-addressed and shared within a team, so they stay (only the versions a deleted
run alone owned are hidden, keeping their numbers, see ``_delete_owned_artifacts``).
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.names import is_name, is_run_id
from runstream.storage.errors import QueryError
from runstream.storage.writer import insert_rows, load_run_states, upsert_run_states

RunKey = tuple[str, str, str]
TOMBSTONES = "run_tombstones"
DELETED = "deleted"
DELETED_WITH_PROJECT = "deleted with its project"
#: A move's mark, written before it copies anything ("moving to acme/other #<token>"), then "moved to acme/other".
MOVING = "moving to "
MOVED = "moved to "
#: Tables with team, project and run_id columns that are not keyed by run: artifacts belong to their
#: project (``run_id`` is their producer; handled by ``_owned_artifacts``), tombstones stay.
_NOT_RUN_KEYED = frozenset({TOMBSTONES, "artifact_versions", "artifact_aliases", "artifact_usage"})
#: Tables of a project that are not keyed by run, emptied when the project is deleted.
_PROJECT_TABLES = ("key_catalog", "alert_rules", "reports", "report_links", "workspace_views")
_ARTIFACT_TABLES = ("artifact_versions", "artifact_aliases", "artifact_usage")
_DISTRIBUTED_CLUSTER = re.compile(r"Distributed\('([^']+)'")
# A run's rows: its own id and the internal ids of its rewinds (``~`` cannot be in a run id).
_RUN = "team = {team:String} AND project = {project:String} AND (run_id = {run:String} OR startsWith(run_id, {rewind:String}))"
_PROJECT = "team = {team:String} AND project = {project:String}"


class RunNotFound(LookupError):
    """No such run (or already deleted)."""


class MoveConflict(Exception):
    """A move that cannot be made now or there: the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _check(team: Any, project: Any, run_id: Any = None) -> None:
    for what, value in (("team", team), ("project", project)):
        if not is_name(value):
            raise QueryError(f"{what} must be a team or project name, not {value!r}")
    if run_id is not None and not is_run_id(run_id):
        raise QueryError(f"run_id must be a run id, not {run_id!r}")


def _run_params(team: str, project: str, run_id: str) -> dict[str, str]:
    return {"team": team, "project": project, "run": run_id, "rewind": f"{run_id}~"}


# -- tombstones --------------------------------------------------------------------------------


def tombstones(client: Client, keys: Iterable[RunKey], marks: bool = False) -> dict[RunKey, str]:
    """The tombstoned runs among ``keys``, each with its reason ("deleted", "moving to acme/other",
    "moved to acme/other"); ``marks``: a move's mark with its token ("moving to acme/other #1f2e...")."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    rows = client.query(
        f"SELECT team, project, run_id, reason FROM {TOMBSTONES} FINAL "
        "WHERE (team, project, run_id) IN {keys:Array(Tuple(String, String, String))}",
        parameters={"keys": keys},
    ).result_rows
    return {(t, p, r): reason if marks else reason.split(" #", 1)[0] for t, p, r, reason in rows}


#: How long a lookup's "not tombstoned" answer is trusted (``TombstoneCache``).
ALIVE_FOR_S = 1.0


class TombstoneCache:
    """``tombstones`` with memory, for the stream processor's per-batch lookup (one per process).

    A tombstone found is kept for good (they are never removed; its reason may still go from
    "moving to" to "moved to", which changes nothing for the processor); a "not tombstoned" answer
    for ``alive_for_s`` (1 s): a worker may store events of a run for up to that long after its
    deletion began. What it stores then is removed again by the sweep (``purge_reappeared``)."""

    def __init__(self, alive_for_s: float = ALIVE_FOR_S, limit: int = 100_000) -> None:
        self.alive_for_s, self.limit = alive_for_s, limit
        self._buried: dict[RunKey, str] = {}
        self._alive: dict[RunKey, float] = {}  # key -> monotonic time it was last found not tombstoned
        self._lock = threading.Lock()

    def forget(self, keys: Iterable[RunKey]) -> None:
        """Look these runs up again next time (the embedded server's API deleted or moved them)."""
        with self._lock:
            for key in keys:
                self._alive.pop(key, None)

    def lookup(self, client: Client, keys: Iterable[RunKey]) -> dict[RunKey, str]:
        now = time.monotonic()
        keys = set(keys)
        with self._lock:
            found = {k: self._buried[k] for k in keys if k in self._buried}
            ask = {k for k in keys - found.keys() if now - self._alive.get(k, -1e18) > self.alive_for_s}
        if not ask:
            return found
        fresh = tombstones(client, ask)
        with self._lock:
            if len(self._buried) + len(fresh) > self.limit:
                self._buried.clear()
            self._buried.update(fresh)
            if len(self._alive) > self.limit:
                self._alive = {k: t for k, t in self._alive.items() if now - t <= self.alive_for_s}
            for key in ask - fresh.keys():
                self._alive[key] = now
        return found | fresh


def live_run_ids(client: Client, team: str, project: str, run_ids: Sequence[str]) -> list[str]:
    """``run_ids`` less the tombstoned ones, in their order: charts and exports that name runs read no
    deleted or moved run."""
    if not run_ids:
        return []
    buried = {
        r[0]
        for r in client.query(
            f"SELECT run_id FROM {TOMBSTONES} WHERE {_PROJECT} AND run_id IN {{ids:Array(String)}}",
            parameters={"team": team, "project": project, "ids": sorted(set(run_ids))},
        ).result_rows
    }
    return [r for r in run_ids if r not in buried]


def _bury(client: Client, team: str, project: str, run_ids: Iterable[str], reason: str) -> None:
    at = round(time.time() * 1000)
    rows = [{"team": team, "project": project, "run_id": r, "reason": reason, "at": at} for r in sorted(set(run_ids))]
    insert_rows(client, TOMBSTONES, rows)


# -- where a run's rows are ----------------------------------------------------------------------


def run_tables(client: Client) -> list[str]:
    """The tables keyed by run (``team``, ``project``, ``run_id`` columns), ``runs`` first."""
    rows = client.query(
        "SELECT table FROM system.columns WHERE database = currentDatabase() "
        "AND name IN ('team', 'project', 'run_id') GROUP BY table HAVING count() = 3"
    ).result_rows
    found = {r[0] for r in rows if not r[0].endswith("_local") and r[0] not in _NOT_RUN_KEYED}
    return sorted(found, key=lambda t: (t != "runs", t))


def _delete(client: Client, table: str, where: str, params: dict[str, Any]) -> None:
    """A lightweight DELETE. Of a Distributed table (a cluster), of its local tables: ``ON CLUSTER`` when
    they are replicated (the layout with Keeper runs its statements so), else on every node, each by a
    client of its own (``node_clients``): without Keeper there is no ``ON CLUSTER``."""
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    if not rows:
        return  # a table a migration has not made here (an older database)
    cluster = _DISTRIBUTED_CLUSTER.match(rows[0][0] or "")
    if cluster is None:
        client.command(f"DELETE FROM {table} WHERE {where}", parameters=params)
        return
    local = f"{table}_local"
    engine = client.query(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": local},
    ).result_rows
    if engine and str(engine[0][0]).startswith("Replicated"):
        client.command(f"DELETE FROM {local} ON CLUSTER `{cluster.group(1)}` WHERE {where}", parameters=params)
        return
    for node in node_clients(client, cluster.group(1)):
        node.command(f"DELETE FROM {local} WHERE {where}", parameters=params)


_NODES: weakref.WeakKeyDictionary[Client, tuple[float, list[Client]]] = weakref.WeakKeyDictionary()
_NODES_FOR_S = 60.0


def node_clients(client: Client, cluster: str) -> list[Client]:
    """A client of every node of ``cluster`` (this one's own among them), for the statements a cluster
    without ``ON CLUSTER`` runs on each node: the nodes of ``system.clusters``, each at its HTTP port
    (``getServerPort``, asked through the cluster), with this client's credentials and database.
    Known for a minute per client."""
    known = _NODES.get(client)
    if known is not None and time.monotonic() - known[0] < _NODES_FOR_S:
        return known[1]
    nodes = client.query(
        "SELECT shard_num, host_address, port, is_local FROM system.clusters WHERE cluster = {c:String}",
        parameters={"c": cluster},
    ).result_rows
    http = {
        (int(shard), int(tcp)): int(port)
        for shard, tcp, port in client.query(
            "SELECT shardNum(), getServerPort('tcp_port'), getServerPort('http_port') "
            f"FROM clusterAllReplicas('{cluster}', system.one)"  # the name is checked: letters, digits, _ . -
        ).result_rows
    }
    found: list[Client] = []
    for shard, host, tcp, is_local in nodes:
        if is_local:
            found.append(client)
            continue
        port = http.get((int(shard), int(tcp)))
        if port is None:
            raise QueryError(f"node {host}:{tcp} of cluster {cluster} did not say its HTTP port")
        found.append(_client_at(client, str(host), port))
    _NODES[client] = (time.monotonic(), found)
    return found


def _client_at(client: Client, host: str, port: int) -> Client:
    """This HTTP client (credentials, database, settings, connection pool) pointed at another server.

    clickhouse-connect has no call for it: its transport's address is replaced on a copy, and the copy is
    asked which HTTP port it reached, so a client of another make is an error, never a wrong node."""
    transport: Any = getattr(client, "_backend", None)
    url = getattr(transport, "url", None)
    if not isinstance(url, str) or "://" not in url:
        raise QueryError("deleting on a cluster without ON CLUSTER needs a ClickHouse HTTP client")
    host = f"[{host}]" if ":" in host else host
    moved = copy.copy(transport)
    moved.url = f"{url.split('://', 1)[0]}://{host}:{port}"
    moved._base_url = f"{moved.url}/"
    other = copy.copy(client)
    other._backend = moved  # type: ignore[attr-defined]
    reached = other.command("SELECT getServerPort('http_port')")
    if str(reached).strip() != str(port):
        raise QueryError(f"could not reach node {host}:{port} of the cluster (reached port {reached})")
    return other


def _exists(client: Client, table: str) -> bool:
    return bool(
        client.query(
            "SELECT 1 FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
            parameters={"t": table},
        ).result_rows
    )


def get_state(client: Client, team: str, project: str, run_id: str) -> str | None:
    """A live run's state ('running', 'finished', ...), or None when there is no such run (or it is tombstoned)."""
    rows = client.query(
        f"SELECT state FROM runs FINAL WHERE team = {{team:String}} AND project = {{project:String}} "
        f"AND run_id = {{run:String}} AND run_id NOT IN (SELECT run_id FROM {TOMBSTONES} "
        "WHERE team = {team:String} AND project = {project:String})",
        parameters={"team": team, "project": project, "run": run_id},
    ).result_rows
    return str(rows[0][0]) if rows else None


# -- deleting --------------------------------------------------------------------------------------


def delete_run(client: Client, team: str, project: str, run_id: str) -> None:
    """Tombstone a run, then remove its rows from every run-keyed table and the artifacts it alone owned.

    A run already deleted (its removal failed half way, say) is removed again: what remains goes.
    RunNotFound when there is no such run, or it was moved away; MoveConflict while it is being moved."""
    _check(team, project, run_id)
    reason = tombstones(client, [(team, project, run_id)]).get((team, project, run_id))
    if reason is None:
        if get_state(client, team, project, run_id) is None:
            raise RunNotFound(f"run {team}/{project}/{run_id}")
        _bury(client, team, project, [run_id], DELETED)
    elif reason.startswith(MOVING):
        raise MoveConflict(
            f"run {team}/{project}/{run_id} is being moved ({reason}): move it there again to finish the move"
        )
    elif reason not in (DELETED, DELETED_WITH_PROJECT):
        raise RunNotFound(f"run {team}/{project}/{run_id} ({reason})")
    _delete_owned_artifacts(client, team, project, run_id)
    _purge(client, team, project, run_id)


#: How long after its deletion began a run is looked for by ``purge_reappeared``.
REAPPEARED_WITHIN_S = 3600


def purge_reappeared(client: Client, within_s: float = REAPPEARED_WITHIN_S) -> list[RunKey]:
    """Remove again the runs tombstoned in the last ``within_s`` seconds that have rows again: a batch a
    worker was writing when the deletion began (it had looked the run up before the tombstone, or within
    its cache's second) may store them after the removal. Every batch writes the run's state, so
    ``run_states`` and ``runs`` show such a run; the processor's sweep calls this. A run being moved is
    left alone (its rows are being copied). Returns the runs purged."""
    recent = (  # not a run being moved: its rows stay until its copy is whole
        f"(team, project, run_id) IN (SELECT team, project, run_id FROM {TOMBSTONES} FINAL "
        f"WHERE at >= now64(3) - toIntervalMillisecond({{ms:Int64}}) AND NOT startsWith(reason, '{MOVING}'))"
    )
    found = client.query(
        f"SELECT DISTINCT team, project, run_id FROM (SELECT team, project, run_id FROM runs WHERE {recent} "
        f"UNION ALL SELECT team, project, run_id FROM run_states WHERE {recent})",
        parameters={"ms": int(within_s * 1000)},
    ).result_rows
    keys = sorted((str(t), str(p), str(r)) for t, p, r in found)
    for team, project, run_id in keys:
        _purge(client, team, project, run_id)
    return keys


def _purge(client: Client, team: str, project: str, run_id: str) -> None:
    params = _run_params(team, project, run_id)
    for table in run_tables(client):
        _delete(client, table, _RUN, params)
    if _exists(client, "artifact_usage"):  # what it logged or used: the versions stay, with their other runs
        where = "team = {team:String} AND run_project = {project:String} AND run_id = {run:String}"
        _delete(client, "artifact_usage", where, params)


def _owned_artifacts(client: Client, team: str, project: str, run_id: str) -> list[tuple[str, str]]:
    """(name, digest) of the live artifact versions the run produced that no other run logged or used."""
    if not _exists(client, "artifact_versions"):
        return []
    rows = client.query(
        """SELECT name, digest FROM (
    SELECT name, digest, deleted FROM artifact_versions FINAL
    WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String})
WHERE deleted = 0 AND (name, digest) NOT IN (
    SELECT name, digest FROM artifact_usage FINAL
    WHERE team = {team:String} AND project = {project:String}
      AND NOT (run_project = {project:String} AND run_id = {run:String}))""",
        parameters=_run_params(team, project, run_id),
    ).result_rows
    return [(str(n), str(d)) for n, d in rows]


def _delete_owned_artifacts(client: Client, team: str, project: str, run_id: str) -> None:
    """Hide the versions only this run had, keeping their places: versions are numbered at read time over
    every row of a name (storage/artifacts.py), so a removed row would renumber the later versions (v3
    would become v2). The row is written again with ``deleted = 1`` and the same ``keep``: the later insert
    wins the tie. A later log of the same contents by another run brings the version back, same number."""
    owned = _owned_artifacts(client, team, project, run_id)
    if not owned:
        return
    params = {"team": team, "project": project, "owned": owned}
    where = f"{_PROJECT} AND (name, digest) IN {{owned:Array(Tuple(String, String))}}"
    # An alias on one of them is removed the way the API removes one (a row pointing nowhere, the latest
    # wins): deleting its row could bring back an older one that pointed elsewhere.
    aliases = client.query(
        "SELECT name, alias FROM artifact_aliases WHERE team = {team:String} AND project = {project:String} "
        "GROUP BY name, alias HAVING (name, argMax(digest, set_at)) IN {owned:Array(Tuple(String, String))}",
        parameters=params,
    )
    now = round(time.time() * 1000)
    removed = [
        {"team": team, "project": project, "name": n, "alias": a, "digest": "", "set_at": now}
        for n, a in aliases.result_rows
    ]
    insert_rows(client, "artifact_aliases", removed)
    client.command(
        f"INSERT INTO artifact_versions SELECT * REPLACE (1 AS deleted) FROM artifact_versions FINAL WHERE {where}",
        parameters=params,
    )
    _delete(client, "artifact_usage", where, params)


def delete_project(client: Client, team: str, project: str) -> list[str]:
    """Tombstone every run of a project, then remove everything of it: runs, reports, rules, artifacts, its row.

    Returns the ids of the runs it had; RunNotFound when the project does not exist."""
    from runstream.storage import accounts  # accounts -> writer; the project row is written (and announced) there

    _check(team, project)
    if accounts.get_project(client, team, project) is None:
        raise RunNotFound(f"project {team}/{project}")
    ids = [
        r[0]
        for r in client.query(
            f"SELECT DISTINCT run_id FROM runs FINAL WHERE {_PROJECT} "
            f"AND run_id NOT IN (SELECT run_id FROM {TOMBSTONES} WHERE {_PROJECT})",
            parameters={"team": team, "project": project},
        ).result_rows
    ]
    _bury(client, team, project, ids, DELETED_WITH_PROJECT)
    params = {"team": team, "project": project}
    for table in [*run_tables(client), *_PROJECT_TABLES, *_ARTIFACT_TABLES]:
        _delete(client, table, _PROJECT, params)  # every row of the project, whatever a failed deletion left
    if _exists(client, "artifact_usage"):  # its runs' use of other projects' artifacts
        _delete(client, "artifact_usage", "team = {team:String} AND run_project = {project:String}", params)
    stored = accounts._PROJECTS.latest(client, "version", team, project)
    if stored is not None:
        row = {"team": team, "project": project, "visibility": "private", "description": "", "created_at": 0}
        accounts._PROJECTS.write(client, row, after=stored["version"], deleted=True)
    return ids


# -- moving ----------------------------------------------------------------------------------------


def move_run(
    client: Client, team: str, project: str, run_id: str, target: str, copy_files: Callable[[], None] | None = None
) -> None:
    """Move a finished run to project ``target`` of the same team (made if missing, as logging a run there would).

    First the source is marked (its tombstone, "moving to team/target #token": hidden from then on, its
    late events dead-lettered); a move that finds its mark still the latest goes on, so of two moves at
    once one goes on and the other is a MoveConflict. A move interrupted half way is finished by moving
    the run there again: what it copied is replaced by a whole copy, unless the copy was whole.
    ``copy_files`` copies its blobs, called once its rows are copied and before the source is deleted.
    RunNotFound when there is no such run; MoveConflict when it is running, being moved elsewhere, or the
    target has (or had) a run with its id; QueryError for a bad or the same target."""
    _check(team, project, run_id)
    if not is_name(target):
        raise QueryError(f"project must be a project name, not {target!r}")
    if target == project:
        raise QueryError(f"run {team}/{project}/{run_id} is already in project {target}")
    source = (team, project, run_id)
    there = f"{team}/{target}"
    reason = tombstones(client, [source], marks=True).get(source)
    if reason is None:
        _check_movable(client, team, project, run_id, target)
    elif reason == MOVED + there:  # its copy was whole: the source's removal is what is left to do
        _purge(client, team, project, run_id)
        return
    elif not reason.startswith(MOVING):
        raise RunNotFound(f"run {team}/{project}/{run_id} ({reason})")
    elif reason.split(" #", 1)[0] != MOVING + there:
        raise MoveConflict(f"run {team}/{project}/{run_id} is being moved to {reason[len(MOVING) :].split(' #')[0]}")
    elif gone := tombstones(client, [(team, target, run_id)]).get((team, target, run_id)):
        raise MoveConflict(f"run id {run_id} was used in {team}/{target} by a run since {gone}; it cannot be reused")
    mark = f"{MOVING}{there} #{uuid.uuid4().hex[:12]}"
    _bury(client, team, project, [run_id], mark)
    if tombstones(client, [source], marks=True).get(source) != mark:  # the latest mark wins
        raise MoveConflict(f"run {team}/{project}/{run_id} is being moved by another request")
    params = {**_run_params(team, project, run_id), "target": target}
    if not _has_run_row(client, team, target, run_id):  # else a copy was whole: the runs row is copied last
        if reason is not None:
            _purge(client, team, target, run_id)  # what the interrupted move copied
        for table in [t for t in run_tables(client) if t not in ("runs", "run_states")]:
            _copy(client, table, _RUN, params)
        _copy_catalog(client, params)
        if _exists(client, "artifact_usage"):
            client.command(
                "INSERT INTO artifact_usage SELECT * REPLACE ({target:String} AS run_project) FROM (SELECT * FROM "
                "artifact_usage WHERE team = {team:String} AND run_project = {project:String} AND run_id = {run:String})",
                parameters=params,
            )
        _copy_state(client, team, project, run_id, target)
        if copy_files is not None:
            copy_files()
        if tombstones(client, [source], marks=True).get(source) != mark:
            raise MoveConflict(f"run {team}/{project}/{run_id} is being moved by another request")
        _copy(client, "runs", _RUN, params)  # last: the run shows in the target once the rest is there
    elif copy_files is not None:
        copy_files()  # the blobs may not have been copied whole: again (existing ones are kept)
    _bury(client, team, project, [run_id], MOVED + there)
    _purge(client, team, project, run_id)


def _check_movable(client: Client, team: str, project: str, run_id: str, target: str) -> None:
    state = get_state(client, team, project, run_id)
    if state is None:
        raise RunNotFound(f"run {team}/{project}/{run_id}")
    if state == "running":
        raise MoveConflict(
            f"run {team}/{project}/{run_id} is running: its process keeps writing to {project}; "
            "move it once it has finished"
        )
    if _has_run_row(client, team, target, run_id):
        raise MoveConflict(f"project {team}/{target} already has a run {run_id}")
    if reason := tombstones(client, [(team, target, run_id)]).get((team, target, run_id)):
        raise MoveConflict(f"run id {run_id} was used in {team}/{target} by a run since {reason}; it cannot be reused")
    if forked := _fork_relations(client, team, project, run_id):
        raise MoveConflict(
            f"run {team}/{project}/{run_id} {forked}, and a fork reads its parent's history in its own project"
        )


def _has_run_row(client: Client, team: str, project: str, run_id: str) -> bool:
    return bool(
        client.query(
            "SELECT 1 FROM runs WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String} "
            "LIMIT 1",
            parameters={"team": team, "project": project, "run": run_id},
        ).result_rows
    )


def _fork_relations(client: Client, team: str, project: str, run_id: str) -> str:
    """What ties the run to others of its project by a fork (storage/lineage.py): "" when nothing does."""
    if not _exists(client, "run_lineage"):
        return ""
    rows = client.query(
        "SELECT run_id, fork_run_id FROM run_lineage FINAL WHERE team = {team:String} AND project = {project:String} "
        "AND (run_id = {run:String} OR fork_run_id = {run:String}) AND fork_run_id != ''",
        parameters={"team": team, "project": project, "run": run_id},
    ).result_rows
    if parent := next((f for r, f in rows if r == run_id), None):
        return f"was forked from {parent}"
    return f"has forks ({', '.join(sorted(r for r, _ in rows)[:5])})" if rows else ""


def _copy(client: Client, table: str, where: str, params: dict[str, Any]) -> None:
    # The filter in a subquery: in ClickHouse an alias shadows the column, so ``WHERE project = ...`` beside
    # ``REPLACE (... AS project)`` would read the new project.
    client.command(
        f"INSERT INTO {table} SELECT * REPLACE ({{target:String}} AS project) FROM (SELECT * FROM {table} WHERE {where})",
        parameters=params,
    )


def _copy_catalog(client: Client, params: dict[str, Any]) -> None:
    """The target's key catalog learns the run's config, summary, metric and system keys (types as the source saw them)."""
    client.command(
        """INSERT INTO key_catalog SELECT team, {target:String}, kind, key, type FROM key_catalog
WHERE team = {team:String} AND project = {project:String} AND (
    (kind = 'config' AND key IN (SELECT arrayJoin(mapKeys(config)) FROM runs FINAL
                                 WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String}))
 OR (kind = 'summary' AND key IN (SELECT arrayJoin(mapKeys(summary)) FROM run_summaries FINAL
                                  WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String}))
 OR (kind = 'metric' AND key IN (SELECT metric FROM metric_summaries
                                 WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String}))
 OR (kind = 'system' AND key IN (SELECT metric FROM system_points
                                 WHERE team = {team:String} AND project = {project:String} AND run_id = {run:String})))""",
        parameters=params,
    )


def _copy_state(client: Client, team: str, project: str, run_id: str, target: str) -> None:
    """The processor's state under the new identity, so a resume in the target goes on from it; the alert
    rules' memory stays behind (rules belong to a project)."""
    raw = load_run_states(client, [(team, project, run_id)]).get((team, project, run_id))
    if raw is None:
        return
    state = orjson.loads(raw)
    state.get("record", {})["project"] = target
    state["alerts"] = {}
    upsert_run_states(client, {(team, target, run_id): (orjson.dumps(state), int(state.get("folded", 0)))})
