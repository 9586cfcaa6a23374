"""One run's metric history: sampled (at most ``samples`` rows, each key's extremes kept) or scanned page by page.

A history cell is what the run logged: NaN and infinities come as the event
contract's strings ("NaN", "Infinity", "-Infinity"), ``null`` means "not logged
in this row", and a metric whose every finite value was logged as an int comes
as ints (``storage.history.integer_metrics``). A run that does not exist is 404,
not an empty history.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, TypedDict

import msgspec
import numpy as np
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ, read_run
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import RUN_PATH
from runstream.api.responses import json_response
from runstream.api.schemas import Step, Values
from runstream.events import encode_value
from runstream.storage import history
from runstream.storage.series import MAX_METRICS

DEFAULT_SAMPLES = 500
MAX_SAMPLES = 100_000
MAX_KEYS = MAX_METRICS * 10

# Optional parameters carry their 400's words outside ``| None``, where the edge looks for them.
Keys = Annotated[
    Annotated[list[str], Meta(max_length=MAX_KEYS)] | None,
    Meta(
        description="metric names (every metric when omitted)",
        extra={"error": f"keys must be at most {MAX_KEYS} metric names"},
    ),
]
Rewinds = Annotated[
    Annotated[int, Meta(ge=0)] | None,
    Meta(
        description="the run as it stood after its first K rewinds (0: before any), the history a rewind "
        "replaced included; the run as it is when omitted",
        extra={"error": "rewinds must be a whole number from 0"},
    ),
]
Columns = Annotated[
    dict[str, Values], Meta(description="columns of equal length: _step, _timestamp (Unix seconds) and one per key")
]


def contract_column(values: list[Any], integer: bool = False) -> list[Any]:
    """A history column (floats, None where not logged) with non-finite floats as the contract's strings,
    and with ``integer`` (a metric logged as ints) its finite values as ints.

    numpy finds the few cells to change, so a page of 100,000 rows costs no Python loop per value.
    """
    if not values:
        return values
    array = np.array(values, dtype=float)  # None becomes NaN: those are skipped below
    finite = np.isfinite(array)
    for i in np.flatnonzero(~finite).tolist():
        if values[i] is not None:
            values[i] = encode_value(values[i])
    whole = np.flatnonzero(finite)
    if integer and len(whole) and np.abs(array[whole]).max() < 2.0**63:  # beyond int64: stays float
        out = np.array(values, dtype=object)
        out[whole] = array[whole].astype(np.int64)  # into an object array as Python ints
        values = out.tolist()
    return values


def history_columns(rows: history.Rows, integer: Collection[str] = ()) -> dict[str, list[Any]]:
    """History rows as the API's columns: ``_step``, ``_timestamp`` and one per key (those in ``integer`` as ints)."""
    columns: dict[str, list[Any]] = {"_step": rows["step"], "_timestamp": rows["time"]}
    for name, values in rows["columns"].items():
        columns[name] = contract_column(values, name in integer)
    return columns


# -- sampled -------------------------------------------------------------------------------------


class HistoryQuery(msgspec.Struct, forbid_unknown_fields=True):
    keys: Keys = None
    samples: Annotated[int, Meta(ge=1, le=MAX_SAMPLES)] = DEFAULT_SAMPLES
    rewinds: Rewinds = None


class History(TypedDict):
    columns: Columns


@endpoint(
    summary="A run's sampled history",
    tags=["history"],
    ok=Answer(History, "the sampled rows' columns"),
    access=PROJECT_READ,
)
async def run_history(request: Request, query: HistoryQuery) -> Response:
    """At most ``samples`` rows of a run's metrics, sampled keeping each key's extremes (its min and max).

    A row is a step at which any of the keys was logged; ``null`` where it did not log a key.
    """

    def sampled(client: Client, team: str, project: str, run_id: str) -> dict[str, list[Any]]:
        segments = history.segments_of(client, team, project, run_id, query.rewinds)  # once per request
        rows = history.sampled_history(client, team, project, run_id, query.keys, query.samples, segments=segments)
        integer = history.integer_metrics(client, team, project, run_id, list(rows["columns"]), segments)
        return history_columns(rows, integer)

    return json_response({"columns": await read_run(request, sampled)})


# -- scanned -------------------------------------------------------------------------------------

STEP_RULE = "a step (a whole number from 0 to 2**64 - 1)"


class ScanQuery(msgspec.Struct, forbid_unknown_fields=True):
    keys: Keys = None
    page_size: Annotated[int, Meta(ge=1, le=history.MAX_PAGE_SIZE)] = 1000
    cursor: Annotated[
        Annotated[str, Meta(pattern=r"^[0-9]{0,20}$")] | None,
        Meta(
            description="next_cursor of the previous page",
            extra={"error": "cursor must be the next_cursor of the previous page"},
        ),
    ] = None
    min_step: Annotated[
        Step | None, Meta(description="inclusive", extra={"error": f"min_step must be {STEP_RULE}"})
    ] = None
    max_step: Annotated[
        Step | None, Meta(description="exclusive", extra={"error": f"max_step must be {STEP_RULE}"})
    ] = None
    rewinds: Rewinds = None

    def __post_init__(self) -> None:
        # Steps are unsigned 64-bit, beyond what a declared bound can say.
        if self.cursor and int(self.cursor) > history.MAX_STEP:
            raise ValueError("cursor must be the next_cursor of the previous page")
        for name in ("min_step", "max_step"):
            value = getattr(self, name)
            if value is not None and value > history.MAX_STEP:
                raise ValueError(f"{name} must be {STEP_RULE}, got {value}")


class HistoryPage(TypedDict):
    columns: Columns
    next_cursor: Annotated[str | None, Meta(description="null on the last page")]


@endpoint(
    summary="A run's full history, paged",
    tags=["history"],
    ok=Answer(HistoryPage, "a page of columns; next_cursor is null on the last"),
    access=PROJECT_READ,
)
async def run_history_scan(request: Request, query: ScanQuery) -> Response:
    """A page of a run's unsampled history, by step (``min_step`` inclusive, ``max_step`` exclusive)."""
    after = int(query.cursor) if query.cursor else None
    max_step = query.max_step

    def scan(client: Client, team: str, project: str, run_id: str) -> tuple[history.Page, set[str]]:
        segments = history.segments_of(client, team, project, run_id, query.rewinds)  # once per request
        if max_step == 0:  # exclusive: nothing before step 0
            names = (
                query.keys
                if query.keys is not None
                else history.run_metrics(client, team, project, run_id, segments=segments)
            )
            return {"step": [], "time": [], "columns": {n: [] for n in names}, "next_after_step": None}, set()
        page = history.history_page(
            client,
            team,
            project,
            run_id,
            query.keys,
            min_step=query.min_step,
            max_step=None if max_step is None else max_step - 1,
            after_step=after,
            page_size=query.page_size,
            segments=segments,
        )
        return page, history.integer_metrics(
            client, team, project, run_id, [n for n, v in page["columns"].items() if v], segments
        )

    page, integer = await read_run(request, scan)
    cursor = page["next_after_step"]
    return json_response(
        {"columns": history_columns(page, integer), "next_cursor": None if cursor is None else str(cursor)}
    )


routes = [
    Route(RUN_PATH + "/history", run_history, methods=["GET"]),
    Route(RUN_PATH + "/history/scan", run_history_scan, methods=["GET"]),
]
