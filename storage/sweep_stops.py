"""What the stream processor reads and writes about sweeps: hyperband's milestones and stops (docs/sweeps.md).

The API's side of sweeps (the sweep rows, claims, agents) is ``sweeps.py``; the
processor only reads a sweep's configuration, records each run's metric value
at a bracket (``sweep_milestones``), reads the values of a bracket, and records
the runs it stops (``sweep_stops``, which the API also writes when a sweep is
cancelled). Milestones and stops are keyed by their identity, so a replayed
batch writes the same rows again.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from runstream.storage.writer import insert_row

_SWEEP = "team = {t:String} AND project = {p:String} AND sweep_id = {s:String}"


def sweep_config(client: Client, team: str, project: str, sweep_id: str) -> str | None:
    """The sweep's configuration (its JSON text, current version), or None when there is no such sweep."""
    rows = client.query(
        f"SELECT config FROM sweeps FINAL WHERE {_SWEEP}", parameters={"t": team, "p": project, "s": sweep_id}
    ).result_rows
    return rows[0][0] if rows else None


def insert_milestone(
    client: Client, team: str, project: str, sweep_id: str, iteration: int, run_id: str, value: float, at: float
) -> None:
    """The run's metric ``value`` at the bracket ``iteration`` (its ``iteration``-th finite logged value)."""
    insert_row(
        client,
        "sweep_milestones",
        {
            "team": team,
            "project": project,
            "sweep_id": sweep_id,
            "iteration": iteration,
            "run_id": run_id,
            "value": value,
            "at": round(at * 1000),
        },
    )


def bracket_values(client: Client, team: str, project: str, sweep_id: str, iteration: int, but: str) -> list[float]:
    """The values every run of the sweep but ``but`` had at the bracket ``iteration``."""
    rows = client.query(
        f"SELECT value FROM sweep_milestones FINAL WHERE {_SWEEP} AND iteration = {{i:UInt64}} AND run_id != {{r:String}}",
        parameters={"t": team, "p": project, "s": sweep_id, "i": iteration, "r": but},
    ).result_rows
    return [value for (value,) in rows]


def insert_stop(client: Client, team: str, project: str, sweep_id: str, run_id: str, reason: str, at: float) -> None:
    """The run is told to stop (the agent learns it from its next heartbeat)."""
    insert_row(
        client,
        "sweep_stops",
        {
            "team": team,
            "project": project,
            "sweep_id": sweep_id,
            "run_id": run_id,
            "reason": reason,
            "at": round(at * 1000),
        },
    )


def stop_reason(client: Client, team: str, project: str, sweep_id: str, run_id: str) -> str | None:
    """Why the run was told to stop (by hyperband or a cancelled sweep), or None when it was not."""
    rows = client.query(
        f"SELECT reason FROM sweep_stops FINAL WHERE {_SWEEP} AND run_id = {{r:String}}",
        parameters={"t": team, "p": project, "s": sweep_id, "r": run_id},
    ).result_rows
    return rows[0][0] if rows else None
