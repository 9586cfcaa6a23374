"""Artifacts: versions, aliases and lineage (docs/artifacts.md).

The processor stores ``artifact`` events here (``insert_artifact_events``); the API
reads versions, resolves refs (``v3``, an alias, ``latest``, a digest), moves aliases
and walks lineage. Versions are numbered at read time: ``v0, v1, ...`` in the order
the processor first stored each digest (``created_at``, then the run's ``logged_at``,
then the digest), so nothing is renumbered when a version is stored twice.

Every write is idempotent under replays: a version's earliest row wins
(``ReplacingMergeTree(keep)``, ``keep`` falling with time), usage rows are keyed by
what they say, and a ``log`` event's aliases are set only when its run has not
logged that digest with this seq or a later one before (so a redelivered event does
not move an alias back after the API moved it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.events import ARTIFACT, Event, is_alias
from runstream.storage.errors import QueryError
from runstream.storage.writer import insert_rows

#: ``keep`` of a version row: larger for an earlier store, so ReplacingMergeTree(keep) keeps the first.
_KEEP_FROM = 2**63
#: How many nodes a lineage graph holds at most (runs and versions together), and how many usage rows
#: (edges) one hop reads at most.
MAX_LINEAGE_NODES = 500
MAX_LINEAGE_EDGES = 2 * MAX_LINEAGE_NODES
MAX_HOPS = 3
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_VERSION = re.compile(r"v(\d{1,9})\Z")

Version = dict[str, Any]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# -- writes (the processor) ------------------------------------------------------------------------


def insert_artifact_events(client: Client, batch: Sequence[Event], now: float) -> int:
    """Store ``artifact`` events (any others are skipped): versions, aliases and usage rows.
    ``now`` is the processor's clock: versions' ``created_at`` and aliases' ``set_at``. Returns
    how many events were stored (a replayed event is written again, harmlessly)."""
    seen: set[tuple[str, str, str, int]] = set()
    found: list[Event] = []
    for e in batch:
        identity = (e.team, e.project, e.run_id, e.seq)
        if e.type == ARTIFACT and identity not in seen:
            seen.add(identity)
            found.append(e)
    if not found:
        return 0
    logs = [e for e in found if e.data["action"] == "log"]
    versions: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for e in logs:
        key = (e.team, e.project, e.data["name"], e.data["digest"])
        if key in versions:
            continue  # the batch's first log of a digest is its producer
        created = _ms(now)
        versions[key] = {
            "team": e.team,
            "project": e.project,
            "name": e.data["name"],
            "digest": e.data["digest"],
            "type": e.data["type"],
            "description": e.data.get("description") or "",
            "metadata": orjson.dumps(e.data.get("metadata") or {}).decode(),
            "size": e.data["size"],
            "file_count": e.data["file_count"],
            "run_id": e.run_id,
            "created_at": created,
            "logged_at": _ms(e.ts),
            "keep": _KEEP_FROM - created,
            "deleted": 0,
        }
    # Aliases of logs not stored before (a replay of a log leaves aliases where they are now).
    logged = _logged_seqs(client, logs)
    aliases: dict[tuple[str, str, str, str], str] = {}
    for e in logs:
        if logged.get((e.team, e.project, e.data["name"], e.data["digest"], e.run_id), -1) >= e.seq:
            continue
        for alias in e.data.get("aliases") or ():
            if alias != "latest":
                aliases[(e.team, e.project, e.data["name"], alias)] = e.data["digest"]  # a later log moves it
    usage = [
        {
            "team": e.team,
            "project": e.data["project"] if e.data["action"] == "use" else e.project,
            "name": e.data["name"],
            "digest": e.data["digest"],
            "run_project": e.project,
            "run_id": e.run_id,
            "action": e.data["action"],
            "seq": e.seq,
            "at": _ms(e.ts),
        }
        for e in found
    ]
    insert_rows(client, "artifact_versions", list(versions.values()))
    insert_rows(
        client,
        "artifact_aliases",
        [
            {"team": t, "project": p, "name": n, "alias": a, "digest": d, "set_at": _ms(now)}
            for (t, p, n, a), d in aliases.items()
        ],
    )
    _revive(client, logs)
    insert_rows(client, "artifact_usage", usage)  # last: it marks the logs' aliases as set
    return len(found)


def _revive(client: Client, logs: Sequence[Event]) -> None:
    """Bring back the versions these logs name that were hidden when the run that alone had them was deleted
    (storage/deletion.py): the row is written again with the same ``keep`` (the later insert wins a tie in
    ReplacingMergeTree), so the version keeps its number; the reviving run is its producer now."""
    by_project: dict[tuple[str, str], dict[tuple[str, str], str]] = {}
    for e in logs:
        by_project.setdefault((e.team, e.project), {}).setdefault((e.data["name"], e.data["digest"]), e.run_id)
    for (team, project), wanted in by_project.items():
        rows = client.query(
            "SELECT name, digest, deleted FROM artifact_versions FINAL WHERE team = {t:String} AND project = {p:String} "
            "AND (name, digest) IN {k:Array(Tuple(String, String))}",
            parameters={"t": team, "p": project, "k": sorted(wanted)},
        ).result_rows
        for name, digest, deleted in rows:
            if deleted:
                client.command(
                    "INSERT INTO artifact_versions SELECT * REPLACE (0 AS deleted, {r:String} AS run_id) FROM "
                    "artifact_versions FINAL WHERE team = {t:String} AND project = {p:String} AND name = {n:String} "
                    "AND digest = {d:String}",
                    parameters={"t": team, "p": project, "n": name, "d": digest, "r": wanted[(name, digest)]},
                )


def _logged_seqs(client: Client, logs: Sequence[Event]) -> dict[tuple[str, str, str, str, str], int]:
    """(team, project, name, digest, run_id) -> the largest seq of that run's stored logs of that digest.

    In a replicated cluster this reads the processor's node's replica: a redelivered log whose first store
    was made by a worker on another node less than the replication lag ago is taken for a new one and sets
    its aliases again (docs/artifacts.md). ``select_sequential_consistency`` would not help: it only covers
    quorum inserts, which the writers do not make."""
    out: dict[tuple[str, str, str, str, str], int] = {}
    by_project: dict[tuple[str, str], set[str]] = {}
    for e in logs:
        by_project.setdefault((e.team, e.project), set()).add(e.data["digest"])
    for (team, project), digests in by_project.items():
        rows = client.query(
            "SELECT name, digest, run_id, seq FROM artifact_usage FINAL WHERE team = {t:String} "
            "AND project = {p:String} AND run_project = {p:String} AND action = 'log' "
            "AND digest IN {d:Array(String)}",
            parameters={"t": team, "p": project, "d": sorted(digests)},
        ).result_rows
        for name, digest, run_id, seq in rows:
            out[(team, project, name, digest, run_id)] = int(seq)
    return out


# -- aliases (the API) -----------------------------------------------------------------------------
# The API writes alias edits straight to ClickHouse (as it writes reports), not through the event
# pipeline: an edit is a user's, not a run's, and the next read must see it.


def check_alias(alias: str) -> str:
    if not is_alias(alias):
        raise QueryError(
            f"alias {alias[:100]!r} cannot be set: an alias is 1-64 letters, digits, '_', '.' or '-', not 64 hex "
            "digits (a digest), and 'latest', 'versions', 'aliases' and v<number> are the server's (latest is "
            "always the newest version)",
            field="alias",
        )
    return alias


def set_alias(client: Client, team: str, project: str, name: str, alias: str, digest: str, now: float) -> None:
    """Point ``alias`` of the name at ``digest`` (moved from wherever it was)."""
    row = {"team": team, "project": project, "name": name, "alias": check_alias(alias), "digest": digest}
    insert_rows(client, "artifact_aliases", [{**row, "set_at": _ms(now)}])


def remove_alias(client: Client, team: str, project: str, name: str, alias: str, now: float) -> bool:
    """Remove ``alias`` from the name; False when it was not set."""
    check_alias(alias)
    if _alias_digest(client, team, project, name, alias) is None:
        return False
    row = {"team": team, "project": project, "name": name, "alias": alias, "digest": ""}
    insert_rows(client, "artifact_aliases", [{**row, "set_at": _ms(now)}])
    return True


def _aliases(client: Client, team: str, project: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
    """name -> alias -> digest, for ``names``."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    rows = client.query(
        "SELECT name, alias, argMax(digest, set_at) AS target FROM artifact_aliases WHERE team = {t:String} "
        "AND project = {p:String} AND name IN {n:Array(String)} GROUP BY name, alias",
        parameters={"t": team, "p": project, "n": wanted},
    ).result_rows
    out: dict[str, dict[str, str]] = {}
    for name, alias, digest in rows:
        if digest:  # '' = removed
            out.setdefault(name, {})[alias] = digest
    return out


def _aliases_of(
    client: Client, team: str, project: str, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], list[str]]:
    """(name, digest) -> the user aliases naming that version (sorted), for these versions only."""
    rows = client.query(
        "SELECT name, alias, argMax(digest, set_at) AS target FROM artifact_aliases WHERE team = {t:String} "
        "AND project = {p:String} AND name IN {n:Array(String)} GROUP BY name, alias "
        "HAVING (name, target) IN {k:Array(Tuple(String, String))} ORDER BY alias",
        parameters={"t": team, "p": project, "n": sorted({n for n, _ in keys}), "k": sorted(keys)},
    ).result_rows
    out: dict[tuple[str, str], list[str]] = {}
    for name, alias, digest in rows:
        out.setdefault((name, digest), []).append(alias)
    return out


def _alias_digest(client: Client, team: str, project: str, name: str, alias: str) -> str | None:
    """The digest ``alias`` of the name points at, or None."""
    rows = client.query(
        "SELECT argMax(digest, set_at) FROM artifact_aliases WHERE team = {t:String} AND project = {p:String} "
        "AND name = {n:String} AND alias = {a:String}",
        parameters={"t": team, "p": project, "n": name, "a": alias},
    ).result_rows
    return str(rows[0][0]) if rows and rows[0][0] else None


# -- versions --------------------------------------------------------------------------------------
# Reads number versions in SQL: ``idx`` is a version's place among every row of its name, deleted ones
# included (a version hidden by deleting its run keeps its place, so no later version is renumbered).
# Only the rows asked for leave the engine: a ref is resolved with a filter on the numbered rows, and
# listings are paged.

#: Largest page of versions or artifacts one read answers (``limit``), and the default.
MAX_PAGE = 1000
DEFAULT_PAGE = 100

_NUMBERED = """SELECT name, digest, type, description, metadata, size, file_count, run_id, created_ms, idx,
    idx = max(idx) OVER (PARTITION BY name) AS is_latest
FROM (
    SELECT name, digest, type, description, metadata, size, file_count, run_id, deleted,
        toUnixTimestamp64Milli(created_at) AS created_ms,
        row_number() OVER (PARTITION BY name ORDER BY created_at, logged_at, digest) - 1 AS idx
    FROM artifact_versions FINAL
    WHERE team = {t:String} AND project = {p:String} AND name IN {n:Array(String)}
)
WHERE deleted = 0"""


def _numbered(
    client: Client,
    team: str,
    project: str,
    names: Iterable[str],
    where: str = "",
    params: dict[str, Any] | None = None,
    order: str = "name, idx",
    limit: int | None = None,
    offset: int = 0,
) -> list[Version]:
    """Live versions of ``names`` with their numbers and aliases; ``where`` filters the numbered rows
    (columns ``name, digest, idx, is_latest``)."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    page = "" if limit is None else f" LIMIT {int(limit)} OFFSET {int(offset)}"
    rows = client.query(
        f"SELECT * FROM ({_NUMBERED}) WHERE 1{where} ORDER BY {order}{page}",
        parameters={"t": team, "p": project, "n": wanted, **(params or {})},
    ).named_results()
    found = [
        {
            "team": team,
            "project": project,
            "name": row["name"],
            "type": row["type"],
            "version": f"v{int(row['idx'])}",
            "index": int(row["idx"]),
            "digest": row["digest"],
            "aliases": ["latest"] if row["is_latest"] else [],
            "description": row["description"],
            "metadata": orjson.loads(row["metadata"] or "{}"),
            "size": int(row["size"]),
            "file_count": int(row["file_count"]),
            "run_id": row["run_id"],
            "created_at": int(row["created_ms"]) / 1000,
        }
        for row in rows
    ]
    if found:
        aliases = _aliases_of(client, team, project, {(v["name"], v["digest"]) for v in found})
        for v in found:
            v["aliases"].extend(aliases.get((v["name"], v["digest"]), []))
    return found


def count_versions(client: Client, team: str, project: str, name: str) -> int:
    """How many live versions the name has."""
    rows = client.query(
        "SELECT count() FROM (SELECT deleted FROM artifact_versions FINAL WHERE team = {t:String} "
        "AND project = {p:String} AND name = {n:String}) WHERE deleted = 0",
        parameters={"t": team, "p": project, "n": name},
    ).result_rows
    return int(rows[0][0]) if rows else 0


def check_page(limit: int, offset: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"limit must be a whole number from 1 to {MAX_PAGE}, got {limit!r}", field="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise QueryError(f"offset must be a whole number from 0, got {offset!r}", field="offset")


def versions(
    client: Client, team: str, project: str, name: str, limit: int = MAX_PAGE, offset: int = 0
) -> list[Version]:
    """A page of the name's live versions, newest first ([] when it has none)."""
    check_page(limit, offset)
    return _numbered(client, team, project, [name], order="idx DESC", limit=limit, offset=offset)


def resolve(found: Sequence[Version], ref: str) -> Version | None:
    """The version ``ref`` names among ``found`` (any order): ``v3``, ``latest``, an alias or a 64-hex digest."""
    if not found:
        return None
    if _DIGEST.match(ref):
        return next((v for v in found if v["digest"] == ref), None)
    if number := _VERSION.match(ref):
        return next((v for v in found if v["index"] == int(number[1])), None)
    return next((v for v in found if ref in v["aliases"]), None)


def check_ref(ref: str) -> str:
    if not (_DIGEST.match(ref) or _VERSION.match(ref) or ref == "latest" or is_alias(ref)):
        raise QueryError(
            f"{ref[:100]!r} does not name a version: use v<number>, latest, an alias or a 64-hex digest", field="ref"
        )
    return ref


def version(client: Client, team: str, project: str, name: str, ref: str) -> Version | None:
    """The version ``ref`` names (QueryError for a ref that cannot name one), or None; one targeted query
    (two for an alias), never all of the name's versions."""
    check_ref(ref)
    if ref == "latest":
        found = _numbered(client, team, project, [name], " AND is_latest")
    elif number := _VERSION.match(ref):
        found = _numbered(client, team, project, [name], " AND idx = {i:UInt64}", {"i": int(number[1])})
    else:
        digest = ref if _DIGEST.match(ref) else _alias_digest(client, team, project, name, ref)
        if digest is None:
            return None
        found = _numbered(client, team, project, [name], " AND digest = {d:String}", {"d": digest})
    return found[0] if found else None


def list_artifacts(
    client: Client, team: str, project: str, type_: str | None = None, limit: int = MAX_PAGE, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """A page of the project's artifacts by name (of ``type_`` when given: its first live version's), each with
    its version count, latest version and aliases; and how many there are in all."""
    check_page(limit, offset)
    having = "" if type_ is None else " HAVING first_type = {type:String}"
    rows = client.query(
        f"""SELECT name, argMin(type, idx) AS first_type, count() AS live, count() OVER () AS total
FROM (
    SELECT name, type, deleted,
        row_number() OVER (PARTITION BY name ORDER BY created_at, logged_at, digest) - 1 AS idx
    FROM artifact_versions FINAL WHERE team = {{t:String}} AND project = {{p:String}}
)
WHERE deleted = 0 GROUP BY name{having} ORDER BY name LIMIT {int(limit)} OFFSET {int(offset)}""",
        parameters={"t": team, "p": project, "type": type_ or ""},
    ).result_rows
    if not rows:
        return [], (_count_artifacts(client, team, project, type_) if offset else 0)
    names = [str(r[0]) for r in rows]
    latest = {v["name"]: v for v in _numbered(client, team, project, names, " AND is_latest")}
    name_aliases = _aliases(client, team, project, names)
    out = [
        {
            "name": name,
            "type": first_type,
            "versions": int(live),
            "latest": latest[name],
            "aliases": sorted({"latest", *name_aliases.get(name, {})}),
        }
        for name, first_type, live, _ in rows
        if name in latest
    ]
    return out, int(rows[0][3])


def _count_artifacts(client: Client, team: str, project: str, type_: str | None) -> int:
    having = "" if type_ is None else " HAVING argMin(type, idx) = {type:String}"
    rows = client.query(
        f"""SELECT count() FROM (SELECT name FROM (
    SELECT name, type, deleted,
        row_number() OVER (PARTITION BY name ORDER BY created_at, logged_at, digest) - 1 AS idx
    FROM artifact_versions FINAL WHERE team = {{t:String}} AND project = {{p:String}}
) WHERE deleted = 0 GROUP BY name{having})""",
        parameters={"t": team, "p": project, "type": type_ or ""},
    ).result_rows
    return int(rows[0][0]) if rows else 0


# -- usage and lineage -----------------------------------------------------------------------------

_USAGE_COLUMNS = "project, name, digest, run_project, run_id, action"


def run_artifacts(
    client: Client, team: str, project: str, run_id: str, projects: Collection[str] | None = None
) -> dict[str, list[Version]]:
    """What a run logged and used: ``{"logged": [...], "used": [...]}``, oldest first. ``projects``: the only
    projects whose artifacts may be shown (None: any of the team's), for a caller who reads only some."""
    rows = client.query(
        f"SELECT {_USAGE_COLUMNS} FROM artifact_usage FINAL WHERE team = {{t:String}} "
        "AND run_project = {p:String} AND run_id = {r:String} ORDER BY at, name",
        parameters={"t": team, "p": project, "r": run_id},
    ).result_rows
    if projects is not None:
        rows = [r for r in rows if r[0] in projects]
    known = _versions_by_key(client, team, {(r[0], r[1], r[2]) for r in rows})
    out: dict[str, list[Version]] = {"logged": [], "used": []}
    for artifact_project, name, digest, _, _, action in rows:
        found = known.get((artifact_project, name, digest))
        if found is not None:
            out["logged" if action == "log" else "used"].append(found)
    return out


def _versions_by_key(client: Client, team: str, keys: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], Version]:
    """(project, name, digest) -> its live version, for these keys only."""
    by_project: dict[str, set[tuple[str, str]]] = {}
    for project, name, digest in keys:
        by_project.setdefault(project, set()).add((name, digest))
    out = {}
    for project, wanted in by_project.items():
        found = _numbered(
            client,
            team,
            project,
            {n for n, _ in wanted},
            " AND (name, digest) IN {k:Array(Tuple(String, String))}",
            {"k": sorted(wanted)},
        )
        for v in found:
            out[(project, v["name"], v["digest"])] = v
    return out


def artifact_node_id(project: str, name: str, digest: str) -> str:
    return f"artifact:{project}/{name}@{digest}"


def run_node_id(project: str, run_id: str) -> str:
    return f"run:{project}/{run_id}"


def lineage(
    client: Client,
    team: str,
    project: str,
    name: str,
    digest: str,
    hops: int = 2,
    projects: Collection[str] | None = None,
    max_nodes: int = MAX_LINEAGE_NODES,
) -> dict[str, Any]:
    """The graph around one version: its producer and consumer runs (1 hop), their other artifacts (2),
    those artifacts' runs (3). ``projects``: the only projects whose runs and artifacts may be shown (None:
    any of the team's). At most ``max_nodes`` nodes and ``MAX_LINEAGE_EDGES`` usage rows a hop
    (``truncated`` says when more were found): each hop reads at most that many rows."""
    if not 1 <= hops <= MAX_HOPS:
        raise QueryError(f"hops must be 1 to {MAX_HOPS}, got {hops}", field="hops")
    start = (project, name, digest)
    artifacts: set[tuple[str, str, str]] = {start}
    runs: set[tuple[str, str]] = set()
    edges: set[tuple[str, str, str]] = set()
    frontier_artifacts, frontier_runs = {start}, set[tuple[str, str]]()
    truncated = False
    for _ in range(hops):
        if frontier_artifacts:
            rows = _usage(client, team, "(project, name, digest)", sorted(frontier_artifacts), "run_project", projects)
        else:
            rows = _usage(client, team, "(run_project, run_id)", sorted(frontier_runs), "project", projects)
        if len(rows) > MAX_LINEAGE_EDGES:
            rows, truncated = rows[:MAX_LINEAGE_EDGES], True
        new_artifacts: set[tuple[str, str, str]] = set()
        new_runs: set[tuple[str, str]] = set()
        for artifact_project, artifact_name, artifact_digest, run_project, run_id, action in rows:
            artifact, run = (artifact_project, artifact_name, artifact_digest), (run_project, run_id)
            fresh = [n for n in ((artifact, artifacts), (run, runs)) if n[0] not in n[1]]
            if len(artifacts) + len(runs) + len(fresh) > max_nodes:
                truncated = True
                continue
            if artifact not in artifacts:
                artifacts.add(artifact)
                new_artifacts.add(artifact)
            if run not in runs:
                runs.add(run)
                new_runs.add(run)
            edges.add((action, artifact_node_id(*artifact), run_node_id(*run)))
        frontier_artifacts, frontier_runs = new_artifacts, new_runs
        if not (frontier_artifacts or frontier_runs):
            break
    known = _versions_by_key(client, team, artifacts)
    nodes: list[dict[str, Any]] = []
    for key in sorted(artifacts):
        if key in known:
            nodes.append({"id": artifact_node_id(*key), "kind": "artifact", **known[key]})
    run_info = _runs(client, team, runs)
    for run_project, run_id in sorted(runs):
        info = run_info.get((run_project, run_id), {})
        nodes.append(
            {
                "id": run_node_id(run_project, run_id),
                "kind": "run",
                "team": team,
                "project": run_project,
                "run_id": run_id,
                "name": info.get("name", ""),
                "state": info.get("state", ""),
            }
        )
    ids = {n["id"] for n in nodes}
    out_edges = [
        {"from": run, "to": artifact, "action": action}
        if action == "log"
        else {"from": artifact, "to": run, "action": action}
        for action, artifact, run in sorted(edges)
        if artifact in ids
    ]
    return {"nodes": nodes, "edges": out_edges, "truncated": truncated}


def _usage(
    client: Client,
    team: str,
    key: str,
    values: Sequence[tuple[str, ...]],
    other_project: str,
    projects: Collection[str] | None,
) -> list[tuple[Any, ...]]:
    """Usage rows whose ``key`` is one of ``values`` (and whose ``other_project`` is one of ``projects``),
    at most MAX_LINEAGE_EDGES + 1 of them."""
    assert key in ("(project, name, digest)", "(run_project, run_id)") and other_project in ("project", "run_project")
    width = 3 if key.count(",") == 2 else 2
    params: dict[str, Any] = {"t": team, "v": list(values)}
    only = ""
    if projects is not None:
        only, params["o"] = f" AND {other_project} IN {{o:Array(String)}}", sorted(projects)
    rows = client.query(
        f"SELECT {_USAGE_COLUMNS} FROM (SELECT {_USAGE_COLUMNS} FROM artifact_usage FINAL WHERE team = {{t:String}} "
        f"AND {key} IN {{v:Array(Tuple({', '.join(['String'] * width)}))}}{only}) "
        f"ORDER BY {_USAGE_COLUMNS} LIMIT {MAX_LINEAGE_EDGES + 1}",
        parameters=params,
    ).result_rows
    return [tuple(row) for row in rows]


def _runs(client: Client, team: str, runs: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    if not runs:
        return {}
    rows = client.query(
        "SELECT project, run_id, name, state FROM runs FINAL WHERE team = {t:String} AND run_id IN {r:Array(String)}",
        parameters={"t": team, "r": sorted({r for _, r in runs})},
    ).result_rows
    return {(p, r): {"name": n, "state": s} for p, r, n, s in rows if (p, r) in runs}
