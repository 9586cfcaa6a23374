"""Sweeps (docs/sweeps.md, migration 0017): a sweep's record, its claims, its agents, its runs and the stops.

The API writes sweeps, claims, agents and the stops of a cancelled sweep; the processor writes
milestones and hyperband's stops. A sweep and a claim are versioned rows (``ReplacingMergeTree(version)``,
read with ``FINAL``): a change writes the whole row again with a larger version, so the next read on any
replica sees it. An agent's row is replaced by its latest heartbeat. What a sweep's runs did is read from
the runs and their summaries (``storage.runs``' tables); this module only says which runs are the sweep's.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from runstream.storage.accounts import check_name
from runstream.storage.runs import _RUNS, _SUMMARIES
from runstream.storage.versioned import VersionedTable, next_version, now_ms
from runstream.storage.writer import insert_row, insert_rows

SWEEP_ID_LENGTH = 8
_ALPHABET = string.ascii_lowercase + string.digits
STATES = ("running", "paused", "finished", "stopped", "canceled")
#: Run states a run does not leave by itself: it ended (a crashed run may come back, but it does not stall a sweep).
ENDED = frozenset({"finished", "failed", "crashed", "killed", "stopped"})
DEFAULT_PAGE = 50
MAX_PAGE = 500

_SWEEPS = VersionedTable("sweeps", ("team", "project", "sweep_id"), deletable=False)
_SWEEP_COLUMNS = """sweep_id, name, config, method, state, created_by,
    toUnixTimestamp64Milli(created_at) AS created_ms, toUnixTimestamp64Milli(updated_at) AS updated_ms, version"""
_SWEEP = "team = {team:String} AND project = {project:String} AND sweep_id = {sweep:String}"


def new_sweep_id() -> str:
    """8 random characters of [a-z0-9] (``events.SWEEP_ID_PATTERN``): 2.8e12 ids, so a project's do not collide."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(SWEEP_ID_LENGTH))


# -- sweeps ---------------------------------------------------------------------------------------


def _sweep(row: Mapping[str, Any], run_count: int) -> dict[str, Any]:
    return {
        "sweep_id": row["sweep_id"],
        "name": row["name"],
        "method": row["method"],
        "state": row["state"],
        "config": orjson.loads(row["config"]),
        "created_by": row["created_by"],
        "created_at": row["created_ms"] / 1000,
        "updated_at": row["updated_ms"] / 1000,
        "run_count": run_count,
        "version": int(row["version"]),
    }


def _run_counts(client: Client, team: str, project: str, sweep_ids: Collection[str]) -> dict[str, int]:
    if not sweep_ids:
        return {}
    rows = client.query(
        f"SELECT sweep_id, count() FROM runs FINAL WHERE {_RUNS} AND sweep_id IN {{ids:Array(String)}} GROUP BY sweep_id",
        parameters={"team": team, "project": project, "ids": list(sweep_ids)},
    ).result_rows
    return {sweep_id: int(n) for sweep_id, n in rows}


def create_sweep(
    client: Client, team: str, project: str, name: str, config: Mapping[str, Any], method: str, created_by: str
) -> dict[str, Any]:
    """A new sweep, running, under a fresh id (which names it too when ``name`` is empty)."""
    check_name("team", team)
    check_name("project", project)
    now = now_ms()
    sweep_id = new_sweep_id()
    row = {
        "team": team,
        "project": project,
        "sweep_id": sweep_id,
        "name": name or sweep_id,
        "config": orjson.dumps(config).decode(),
        "method": method,
        "state": "running",
        "created_by": created_by,
        "created_at": now,
        "updated_at": now,
    }
    written = _SWEEPS.write(client, row)
    return _sweep({**row, "created_ms": now, "updated_ms": now, "version": written["version"]}, 0)


def get_sweep(client: Client, team: str, project: str, sweep_id: str) -> dict[str, Any] | None:
    """The sweep's current record with its run count (``version``: the row's, for ``set_state``), or None."""
    row = _SWEEPS.latest(client, _SWEEP_COLUMNS, team, project, sweep_id)
    if row is None:
        return None
    return _sweep(row, _run_counts(client, team, project, [sweep_id]).get(sweep_id, 0))


def list_sweeps(client: Client, team: str, project: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """A page of the project's sweeps, newest first, and how many it has."""
    params = {"team": team, "project": project}
    where = "team = {team:String} AND project = {project:String}"
    total = int(client.query(f"SELECT count() FROM sweeps FINAL WHERE {where}", parameters=params).result_rows[0][0])
    rows = list(
        client.query(
            f"SELECT {_SWEEP_COLUMNS} FROM sweeps FINAL WHERE {where} ORDER BY created_at DESC, sweep_id "
            "LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
            parameters={**params, "limit": limit, "offset": offset},
        ).named_results()
    )
    counts = _run_counts(client, team, project, [r["sweep_id"] for r in rows])
    return [_sweep(r, counts.get(r["sweep_id"], 0)) for r in rows], total


def set_state(client: Client, team: str, project: str, sweep: Mapping[str, Any], state: str) -> dict[str, Any]:
    """Write ``sweep`` (as ``get_sweep`` read it) again in ``state``; the record as written."""
    if state not in STATES:
        raise ValueError(f"a sweep's state is one of {', '.join(STATES)}, not {state!r}")
    now = max(now_ms(), round(sweep["updated_at"] * 1000))
    row = {
        "team": team,
        "project": project,
        "sweep_id": sweep["sweep_id"],
        "name": sweep["name"],
        "config": orjson.dumps(sweep["config"]).decode(),
        "method": sweep["method"],
        "state": state,
        "created_by": sweep["created_by"],
        "created_at": round(sweep["created_at"] * 1000),
        "updated_at": now,
    }
    written = _SWEEPS.write(client, row, after=sweep["version"])
    return {**sweep, "state": state, "updated_at": now / 1000, "version": written["version"]}


# -- the sweep's runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepRun:
    run_id: str
    name: str
    state: str
    value: float | None  # the run's summary value of the sweep's metric (finite), None without one


def sweep_runs(client: Client, team: str, project: str, sweep_id: str, metric: str | None) -> list[SweepRun]:
    """The sweep's runs (their ``runs`` rows name it), oldest first, each with its summary value of ``metric``
    (the summary processor's: the last logged value, or what ``define_metric`` asks for)."""
    rows = client.query(
        "SELECT run_id, name, state, if(mapContains(summary_num, {metric:String}) "
        "AND isFinite(summary_num[{metric:String}]), summary_num[{metric:String}], NULL) "
        f"FROM runs FINAL {_SUMMARIES} WHERE {_RUNS} AND sweep_id = {{sweep:String}} ORDER BY created_at, run_id",
        parameters={"team": team, "project": project, "sweep": sweep_id, "metric": metric or ""},
    ).result_rows
    return [SweepRun(run_id, name, state, value if metric else None) for run_id, name, state, value in rows]


# -- claims ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimRow:
    run_id: str
    agent_id: str
    params: dict[str, Any]  # flat: "a.b" keys
    grid_index: int  # -1: none
    claimed_ms: int
    released: bool
    version: int


def claims(client: Client, team: str, project: str, sweep_id: str) -> list[ClaimRow]:
    """Every claim of the sweep as last written (released ones too), oldest first."""
    rows = client.query(
        "SELECT run_id, agent_id, params, grid_index, toUnixTimestamp64Milli(claimed_at), released, version "
        f"FROM sweep_claims FINAL WHERE {_SWEEP}",
        parameters={"team": team, "project": project, "sweep": sweep_id},
    ).result_rows
    found = [
        ClaimRow(run_id, agent, orjson.loads(params), int(grid), int(at), bool(released), int(version))
        for run_id, agent, params, grid, at, released, version in rows
    ]
    return sorted(found, key=lambda c: (c.claimed_ms, c.run_id))


def add_claim(
    client: Client,
    team: str,
    project: str,
    sweep_id: str,
    run_id: str,
    agent_id: str,
    params: Mapping[str, Any],
    grid_index: int,
) -> ClaimRow:
    """Record a suggestion handed to ``agent_id`` as ``run_id``; the claim as written."""
    claim = ClaimRow(run_id, agent_id, dict(params), grid_index, now_ms(), False, next_version())
    _write_claims(client, team, project, sweep_id, [claim])
    return claim


def release_claims(client: Client, team: str, project: str, sweep_id: str, given_back: Iterable[ClaimRow]) -> None:
    """Give claims back: each written again with ``released = 1``, so its grid cell is free again."""
    rows = [
        ClaimRow(c.run_id, c.agent_id, c.params, c.grid_index, c.claimed_ms, True, next_version(c.version))
        for c in given_back
    ]
    _write_claims(client, team, project, sweep_id, rows)


def _write_claims(client: Client, team: str, project: str, sweep_id: str, rows: list[ClaimRow]) -> None:
    insert_rows(
        client,
        "sweep_claims",
        [
            {
                "team": team,
                "project": project,
                "sweep_id": sweep_id,
                "run_id": c.run_id,
                "agent_id": c.agent_id,
                "params": orjson.dumps(c.params).decode(),
                "grid_index": c.grid_index,
                "claimed_at": c.claimed_ms,
                "released": int(c.released),
                "version": c.version,
            }
            for c in rows
        ],
    )


# -- agents ---------------------------------------------------------------------------------------

_AGENT_COLUMNS = """agent_id, host, pid, toUnixTimestamp64Milli(started_at) AS started_ms,
    toUnixTimestamp64Milli(heartbeat_at) AS heartbeat_ms, state"""


def _write_agent(client: Client, team: str, project: str, sweep_id: str, agent: Mapping[str, Any]) -> None:
    insert_row(
        client,
        "sweep_agents",
        {
            "team": team,
            "project": project,
            "sweep_id": sweep_id,
            "agent_id": agent["agent_id"],
            "host": agent["host"],
            "pid": agent["pid"],
            "started_at": agent["started_ms"],
            "heartbeat_at": agent["heartbeat_ms"],
            "state": agent["state"],
        },
    )


def register_agent(client: Client, team: str, project: str, sweep_id: str, host: str, pid: int) -> dict[str, Any]:
    """A new agent of the sweep, alive now; its row."""
    now = now_ms()
    agent = {
        "agent_id": secrets.token_hex(8),
        "host": host,
        "pid": pid,
        "started_ms": now,
        "heartbeat_ms": now,
        "state": "running",
    }
    _write_agent(client, team, project, sweep_id, agent)
    return agent


def agents(client: Client, team: str, project: str, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's agents as their latest heartbeats left them, oldest first."""
    return list(
        client.query(
            f"SELECT {_AGENT_COLUMNS} FROM sweep_agents FINAL WHERE {_SWEEP} ORDER BY started_at, agent_id",
            parameters={"team": team, "project": project, "sweep": sweep_id},
        ).named_results()
    )


def heartbeat(
    client: Client, team: str, project: str, sweep_id: str, agent: Mapping[str, Any], state: str = "running"
) -> dict[str, Any]:
    """The agent (a row of ``agents``) is alive now, in ``state``; its row as written."""
    beat = {**agent, "heartbeat_ms": max(now_ms(), agent["heartbeat_ms"]), "state": state}
    _write_agent(client, team, project, sweep_id, beat)
    return beat


# -- stops ----------------------------------------------------------------------------------------


def stops(client: Client, team: str, project: str, sweep_id: str, run_ids: Collection[str]) -> dict[str, str]:
    """Of ``run_ids``, those told to stop (by hyperband or a cancelled sweep): run id -> the reason."""
    if not run_ids:
        return {}
    rows = client.query(
        f"SELECT run_id, reason FROM sweep_stops FINAL WHERE {_SWEEP} AND run_id IN {{runs:Array(String)}}",
        parameters={"team": team, "project": project, "sweep": sweep_id, "runs": list(run_ids)},
    ).result_rows
    return {run_id: reason for run_id, reason in rows}


def add_stops(client: Client, team: str, project: str, sweep_id: str, reasons: Mapping[str, str]) -> None:
    """Tell runs to stop: run id -> why (a run told twice keeps one row)."""
    now = now_ms()
    insert_rows(
        client,
        "sweep_stops",
        [
            {"team": team, "project": project, "sweep_id": sweep_id, "run_id": run_id, "reason": why, "at": now}
            for run_id, why in reasons.items()
        ],
    )
