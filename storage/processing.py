"""What the stream processor reads besides run states: a project's enabled alert rules, and the sweep's questions.

The processor (``streams/processor.py``) writes through ``writer.py`` and reads
its run states there; these are its other queries. The rule rows are those
``rules.py`` writes (``FINAL`` hides deleted ones); they are read here, beside
the sweep, because the processor reads them on every batch of a project, cached
for a second, while ``rules.py`` serves the API.
"""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client


def enabled_rules(client: Client, team: str, project: str) -> list[dict[str, Any]]:
    """The project's enabled alert rules, as rows (``spec`` is JSON text)."""
    return list(
        client.query(
            "SELECT team, project, rule_id, name, kind, spec, cooldown_s FROM alert_rules FINAL "
            "WHERE team = {t:String} AND project = {p:String} AND enabled",
            parameters={"t": team, "p": project},
        ).named_results()
    )


# Deleted and moved runs (storage/deletion.py) are swept no more: their rows may linger while being removed.
_NOT_TOMBSTONED = "(team, project, run_id) NOT IN (SELECT team, project, run_id FROM run_tombstones)"


def silent_runs(client: Client, before: float) -> list[tuple[str, str, str, float]]:
    """(team, project, run_id, last seen) of the running runs the server has heard nothing from since
    ``before`` (Unix seconds, the server's clock), the last seen time at millisecond precision."""
    rows = client.query(
        "SELECT team, project, run_id, toUnixTimestamp64Milli(last_seen_at) FROM runs FINAL "
        "WHERE state = 'running' AND last_seen_at < fromUnixTimestamp64Milli({cutoff:Int64}) "
        f"AND {_NOT_TOMBSTONED}",
        parameters={"cutoff": int(before * 1000)},
    ).result_rows
    return [(team, project, run_id, seen_ms / 1000) for team, project, run_id, seen_ms in rows]


def projects_with_stall_rules(client: Client) -> list[tuple[str, str]]:
    """(team, project) of every project with an enabled stall rule."""
    rows = client.query("SELECT DISTINCT team, project FROM alert_rules FINAL WHERE enabled AND kind = 'stall'")
    return [(team, project) for team, project in rows.result_rows]


def last_step_times(client: Client, team: str, project: str) -> list[tuple[str, float]]:
    """(run_id, Unix seconds) of the newest step any metric of each running run of the project logged."""
    rows = client.query(
        "SELECT s.run_id, toUnixTimestamp64Milli(max(s.last_time)) FROM metric_summaries AS s FINAL "
        "WHERE s.team = {t:String} AND s.project = {p:String} AND s.run_id IN "
        "(SELECT run_id FROM runs FINAL WHERE team = {t:String} AND project = {p:String} AND state = 'running' "
        f"AND {_NOT_TOMBSTONED}) "
        "GROUP BY s.run_id",
        parameters={"t": team, "p": project},
    ).result_rows
    return [(run_id, last_ms / 1000) for run_id, last_ms in rows]
