"""Forks and rewinds: a run's history composed from stored segments, never copied.

A run's history is a chain of segments, each a stored run id and the steps it
contributes (``Segment``), disjoint and in step order:

- a run without lineage: itself, every step;
- a fork of P at step N (``init(fork_from="P?_step=N")``): P's composed history up to
  N, then its own points after N;
- a rewind to step N (``init(resume_from="R?_step=N")``): the history so far cut at N,
  then what the run logs from then on. Those points are stored under an internal id,
  ``R~r<seq>``, ``<seq>`` being the seq of the rewind's run_start (``~`` is not allowed in
  run ids), because ``metric_points`` keeps one value per (run, metric, step): written under
  ``R``, the new step N+1 would replace the old one. So the replaced history stays stored and
  readable (``resolve(..., rewinds=k)`` reads the run as it stood before its k+1-th rewind,
  rewinds ordered by seq), and the composed history reads the old segment up to N, then the
  new one. A run has at most ``MAX_REWINDS`` rewinds.

The processor decides a metric event's segment by the rewind marker the SDK puts into every
``metrics`` event of a rewound session (``{"seq", "step"}`` of its run_start): the event alone
names its segment, whatever order the topics are read in, and it records the rewind if its
run_start has not arrived yet. Events without a marker (older SDKs) are placed by their seq
(``segment_of``): every event of a rewound session has a larger seq than its run_start, so a late
event of the earlier session still lands where it belongs. ``run_lineage`` holds one row per run
that has a fork or a rewind; reads resolve segments first (one small query per level of forks) and
filter the points with ``SEGMENT_FILTER``, a plain run's reads staying those of a run without lineage.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from clickhouse_connect.driver.client import Client

from runstream.events import MAX_REWINDS as MAX_REWINDS  # the contract's: the SDK refuses more too
from runstream.storage.writer import insert_rows

MAX_STEP = 2**64 - 1
#: Forks of forks are followed this deep; a deeper chain (or a cycle) stops there.
MAX_DEPTH = 64
SEGMENT_MARK = "~r"


class Segment(NamedTuple):
    """Steps ``first`` to ``last`` of a composed history come from stored run ``run_id``."""

    run_id: str
    first: int
    last: int


class Rewind(NamedTuple):
    step: int  # the last step kept
    seq: int  # the seq of the run_start that asked for it: later events belong to the new segment
    at: float  # Unix seconds (the SDK's clock)


@dataclass(frozen=True)
class Lineage:
    fork_run_id: str | None = None
    fork_step: int | None = None
    rewinds: list[Rewind] = field(default_factory=list)


def segment_id(run_id: str, rewind_seq: int | None) -> str:
    """The stored id of the points a run logged after the rewind whose run_start had ``rewind_seq``
    (None: before any rewind)."""
    return run_id if rewind_seq is None else f"{run_id}{SEGMENT_MARK}{rewind_seq}"


def segment_of(run_id: str, rewind_seqs: Sequence[int], seq: int) -> str:
    """The stored id an event of ``run_id`` with ``seq`` and no rewind marker writes its points under:
    that of the latest rewind at or before it."""
    return segment_id(run_id, max((s for s in rewind_seqs if s <= seq), default=None))


def compose(
    run_id: str, lineage: Lineage | None, parent: Sequence[Segment] = (), rewinds: int | None = None
) -> list[Segment]:
    """A run's segments: ``parent`` (the fork parent's composed segments) cut at the fork step, then its own,
    cut at each rewind (only the first ``rewinds`` when given)."""
    lineage = lineage or Lineage()
    segments: list[Segment] = []
    start = 0
    if lineage.fork_step is not None:
        segments = _cut(parent, lineage.fork_step)
        start = lineage.fork_step + 1
    segments.append(Segment(run_id, start, MAX_STEP))
    ordered = sorted(lineage.rewinds, key=lambda r: r.seq)
    for rewind in ordered if rewinds is None else ordered[:rewinds]:
        segments = _cut(segments, rewind.step)
        segments.append(Segment(segment_id(run_id, rewind.seq), rewind.step + 1, MAX_STEP))
    return segments


def _cut(segments: Sequence[Segment], last: int) -> list[Segment]:
    return [Segment(s.run_id, s.first, min(s.last, last)) for s in segments if s.first <= last]


def is_plain(segments: Sequence[Segment], run_id: str) -> bool:
    """Whether the history is the run's own points, every step (no fork, no rewind)."""
    return len(segments) == 1 and segments[0] == Segment(run_id, 0, MAX_STEP)


# -- storage -----------------------------------------------------------------------------------

_LINEAGE = """
SELECT run_id, fork_run_id, fork_step, rewind_steps, rewind_seqs, arrayMap(t -> toUnixTimestamp64Milli(t), rewind_at)
FROM run_lineage FINAL
WHERE team = {team:String} AND project = {project:String} AND run_id IN {runs:Array(String)}
"""

#: Points (or steps) of the composed history, given ``segment_params``: the stored runs, each within its steps.
SEGMENT_FILTER = (
    "run_id IN {seg_ids:Array(String)}"
    " AND step >= transform(toString(run_id), {seg_ids:Array(String)}, {seg_first:Array(UInt64)}, toUInt64(0))"
    " AND step <= transform(toString(run_id), {seg_ids:Array(String)}, {seg_last:Array(UInt64)}, toUInt64(0))"
)


def segment_params(segments: Sequence[Segment]) -> dict[str, Any]:
    """The parameters of ``SEGMENT_FILTER`` (a composed history never holds a stored run twice)."""
    return {
        "seg_ids": [s.run_id for s in segments],
        "seg_first": [s.first for s in segments],
        "seg_last": [s.last for s in segments],
    }


def lineages(client: Client, team: str, project: str, run_ids: Sequence[str]) -> dict[str, Lineage]:
    """The lineage of those of ``run_ids`` that have one (a fork or a rewind)."""
    if not run_ids:
        return {}
    params = {"team": team, "project": project, "runs": list(run_ids)}
    out = {}
    for run_id, fork_run_id, fork_step, steps, seqs, ats in client.query(_LINEAGE, parameters=params).result_rows:
        out[str(run_id)] = Lineage(
            fork_run_id or None,
            int(fork_step) if fork_run_id else None,
            [Rewind(int(s), int(q), int(ms) / 1000.0) for s, q, ms in zip(steps, seqs, ats)],
        )
    return out


def resolve(
    client: Client, team: str, project: str, run_ids: Sequence[str], rewinds: int | None = None
) -> dict[str, list[Segment]]:
    """Every run's segments (a run without lineage: itself, every step). ``rewinds``: apply only the first
    ``rewinds`` rewinds of the given runs (0: the history as it was before the first), their parents' all."""
    known: dict[str, Lineage] = {}
    wanted = set(run_ids)
    for _ in range(MAX_DEPTH):
        found = lineages(client, team, project, sorted(wanted - known.keys()))
        for run_id in wanted - known.keys():
            known[run_id] = found.get(run_id, Lineage())
        wanted = {lin.fork_run_id for lin in known.values() if lin.fork_run_id} - known.keys()
        if not wanted:
            break

    def chain(run_id: str, path: frozenset[str], limit: int | None) -> list[Segment]:
        lineage = known.get(run_id, Lineage())
        parent: list[Segment] = []
        # A run already on the path (a cycle: the processor accepts a fork only on a run's first start, so
        # only rows written otherwise can make one) ends the chain, like a chain deeper than MAX_DEPTH.
        if lineage.fork_run_id and lineage.fork_run_id not in path and len(path) < MAX_DEPTH:
            parent = chain(lineage.fork_run_id, path | {lineage.fork_run_id}, None)
        return compose(run_id, lineage, parent, limit)

    return {run_id: chain(run_id, frozenset({run_id}), rewinds) for run_id in run_ids}


def upsert_lineage(client: Client, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write whole lineage rows: team, project, run_id, ``fork`` ({"run_id", "step"} or None), ``rewinds``
    ([{"step", "seq", "at"}]) and version (the run row's)."""
    insert_rows(
        client,
        "run_lineage",
        [
            {
                "team": row["team"],
                "project": row["project"],
                "run_id": row["run_id"],
                "fork_run_id": (row.get("fork") or {}).get("run_id", ""),
                "fork_step": (row.get("fork") or {}).get("step", 0),
                "rewind_steps": [r["step"] for r in row.get("rewinds") or ()],
                "rewind_seqs": [r["seq"] for r in row.get("rewinds") or ()],
                "rewind_at": [round(r["at"] * 1000) for r in row.get("rewinds") or ()],
                "version": row["version"],
            }
            for row in rows
        ],
    )
