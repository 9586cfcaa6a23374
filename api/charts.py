"""Charts of many runs: metric series, group bands, and system metrics, each in one request for every run shown.

Chart arrays are statistics of buckets: ``min``, ``max`` and ``mean`` are over a
bucket's finite values and ``null`` where it has none; ``y`` (the bucket's last
logged value) is ``null`` when that value is not finite; ``count`` says how many
finite values a bucket had.

Series leave storage as numpy arrays and are rendered by orjson in the worker
thread that read them (``render_json``), so a compare chart of 1,000 runs costs
no Python loop per point or per run here, and megabytes of JSON do not hold up
the event loop.

The runs of a chart are ``run_ids``, or those matching ``filters`` (every run of
the project when neither is sent).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, TypedDict

import msgspec
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ
from runstream.api.backend import backend_of
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import contract_numbers, json_response, render_json, rendered_json
from runstream.api.schemas import Filters, Numbers, Step, SystemSeries, one_selection
from runstream.names import MAX_TIME_S
from runstream.storage import deletion, logs, runs, series

DEFAULT_POINTS = 500
SERIES_FIELDS = ("x", "step", "y", "mean", "min", "max", "count")
#: System metrics of a machine with many GPUs: a few per GPU.
MAX_SYSTEM_METRICS = series.MAX_METRICS * 10

RunId = Annotated[str, Meta(min_length=1)]
Name = Annotated[str, Meta(min_length=1)]
XAxis = Literal[series.X_AXES]  # type: ignore[valid-type]
SeriesField = Literal[SERIES_FIELDS]  # type: ignore[valid-type]

Selection = Annotated[list[RunId], Meta(min_length=1, max_length=series.MAX_RUNS)]
RunIds = Annotated[
    Selection | None,
    Meta(extra={"error": f"run_ids must be a non-empty list of at most {series.MAX_RUNS} run ids"}),
]
StepRange = Annotated[
    tuple[Step | None, Step | None] | None,
    Meta(
        description="[first, last] steps, inclusive; null for an open end",
        extra={"error": "step_range must be [first, last] steps (null for an open end)"},
    ),
]
ChartPoints = Annotated[
    Annotated[int, Meta(ge=2, le=series.MAX_POINTS)] | None,
    Meta(
        description=f"at most this many points per (run, metric); {DEFAULT_POINTS} when omitted",
        extra={"error": f"points must be an integer from 2 to {series.MAX_POINTS}"},
    ),
]


# -- series ------------------------------------------------------------------------------------


class SeriesBody(msgspec.Struct, forbid_unknown_fields=True):
    metrics: Annotated[
        list[Name],
        Meta(
            min_length=1,
            max_length=series.MAX_METRICS,
            extra={"error": f"metrics must be a non-empty list of at most {series.MAX_METRICS} names"},
        ),
    ]
    run_ids: RunIds = None
    filters: Filters | None = None
    points: ChartPoints = None
    x: Annotated[
        XAxis | None,
        Meta(
            description="step, time (Unix seconds), relative (seconds since the run's first step) or metric (the "
            "value of x_metric); step when omitted",
            extra={"error": f"x must be one of {', '.join(series.X_AXES)}"},
        ),
    ] = None
    x_metric: Annotated[Name | None, Meta(extra={"error": "x_metric must be a metric name, not empty"})] = None
    step_range: StepRange = None
    fields: Annotated[
        Annotated[list[SeriesField], Meta(min_length=1)] | None,
        Meta(
            description="the arrays to answer (all when omitted): a chart needs fewer",
            extra={"error": f"fields are some of {', '.join(SERIES_FIELDS)}"},
        ),
    ] = None

    def __post_init__(self) -> None:
        one_selection(self.run_ids, self.filters)
        if self.x == "metric" and not self.x_metric:
            raise ValueError('x "metric" needs x_metric: the metric to plot against')


class Series(TypedDict):
    """One (run, metric): its arrays, those the request's fields picked."""

    run_id: str
    metric: str
    level: Annotated[int, Meta(description="the stored level read (0: raw points)")]
    bucket_steps: Annotated[int, Meta(description="steps per point")]
    x: NotRequired[Numbers]
    step: NotRequired[Numbers]
    y: NotRequired[Numbers]
    mean: NotRequired[Numbers]
    min: NotRequired[Numbers]
    max: NotRequired[Numbers]
    count: NotRequired[Numbers]


class Chart(TypedDict):
    x: str
    x_metric: str | None
    points: int
    series: list[Series]


@endpoint(
    summary="Chart series of many runs",
    tags=["charts"],
    ok=Answer(Chart, "one entry per (run, metric) with data, by metric then run"),
    access=PROJECT_READ,
    refusals={400: "bad arguments or filter"},
)
async def post_series(request: Request, body: SeriesBody) -> Response:
    """Chart series: at most ``points`` points per (run, metric), each bucket's last value, mean, min and max.

    Runs are ``run_ids``, or those matching ``filters`` (every run of the project
    when neither is sent). ``x``: step, time (Unix seconds), relative (seconds
    since the run's first step) or metric (the value of ``x_metric``). ``fields``
    picks the arrays to answer: a line with its min/max envelope needs only x, y,
    min and max.
    """
    team, project = project_path(request)
    points, x = body.points or DEFAULT_POINTS, body.x or "step"
    x_metric = body.x_metric if x == "metric" else None
    dropped = set() if body.fields is None else set(SERIES_FIELDS) - set(body.fields)

    def read(client: Client) -> bytes:
        """The chart, rendered here in the worker thread: 1,000 runs make megabytes of JSON."""
        ids = body.run_ids
        if ids is None:
            ids = runs.matching_run_ids(client, team, project, body.filters, series.MAX_RUNS)
        else:  # named: less the deleted and moved ones, which no query shows
            ids = deletion.live_run_ids(client, team, project, ids)
        if not ids:
            return render_json({"x": x, "x_metric": x_metric, "points": points, "series": []})
        chart = series.series(client, team, project, ids, body.metrics, points, x, x_metric, body.step_range)
        if dropped:
            picked = [{k: v for k, v in s.items() if k not in dropped} for s in chart["series"]]
            return render_json({**chart, "series": picked})
        return render_json(chart)

    return rendered_json(await backend_of(request).run(read))


# -- bands -------------------------------------------------------------------------------------


class BandsBody(msgspec.Struct, forbid_unknown_fields=True):
    metric: Annotated[Name, Meta(extra={"error": 'name the metric to band: {"metric": "loss"}'})]
    groups: Annotated[
        Annotated[dict[str, Selection], Meta(min_length=1)] | None,
        Meta(
            description="label -> the run ids of the group",
            extra={"error": "groups must be an object mapping a label to a non-empty list of run ids"},
        ),
    ] = None
    by: Annotated[
        Annotated[list[Name], Meta(min_length=1, max_length=runs.MAX_GROUP_KEYS)] | None,
        Meta(
            description="fields to group the runs matching filters by",
            extra={"error": f"by must be a non-empty list of at most {runs.MAX_GROUP_KEYS} names"},
        ),
    ] = None
    filters: Filters | None = None
    points: ChartPoints = None
    step_range: StepRange = None

    def __post_init__(self) -> None:
        if (self.groups is None) == (self.by is None):
            raise ValueError("send groups ({label: [run ids]}) or by (fields to group the runs by), one of them")
        if self.groups is not None and self.filters is not None:
            raise ValueError("filters select runs to group by fields: send them with by, not with groups")
        if self.by is not None and "tags" in self.by:
            raise ValueError("bands cannot group by tags: a run with several tags would be in several bands")


class Band(TypedDict):
    group: Annotated[str, Meta(description="its label; grouped by fields, the values joined")]
    values: NotRequired[Annotated[dict[str, Any], Meta(description="grouped by fields: the group's value of each")]]
    run_count: NotRequired[Annotated[int, Meta(description="grouped by fields: the group's runs")]]
    x: Numbers
    mean: Numbers
    std: Numbers
    min: Numbers
    max: Numbers
    runs: Annotated[Numbers, Meta(description="how many runs have a finite mean in each bucket")]


class Bands(TypedDict):
    metric: str
    points: int
    level: NotRequired[int]
    bucket_steps: NotRequired[int]
    groups: list[Band]


def _label(values: dict[str, Any]) -> str:
    """A group's values as a legend label: ``adam / 0.001``."""
    return " / ".join(
        "null" if v is None else v if isinstance(v, str) else str(contract_numbers(v)) for v in values.values()
    )


@endpoint(
    summary="Group bands",
    tags=["charts"],
    ok=Answer(Bands, "one entry per group with data"),
    access=PROJECT_READ,
    refusals={400: "bad arguments or filter"},
)
async def post_bands(request: Request, body: BandsBody) -> Response:
    """Group bands of one metric: per group, at aligned steps, the mean and std across its runs and the min/max.

    Groups are given (``groups``: label to run ids), or made by grouping the
    runs that match ``filters`` by fields (``by``, as in ``runs/groups``; each
    group then carries its ``values`` and ``run_count``, and its label joins the values).
    """
    team, project = project_path(request)
    points = body.points or DEFAULT_POINTS

    def read(client: Client) -> Any:
        if body.groups is not None:
            return series.group_bands(client, team, project, body.groups, body.metric, points, body.step_range)
        assert body.by is not None  # one of them, as the body's declaration says
        found = runs.group_runs(client, team, project, body.by, body.filters, run_ids=True)
        if not found:
            return {"metric": body.metric, "points": points, "groups": []}
        bands = series.group_bands(
            client,
            team,
            project,
            {str(i): g["run_ids"] for i, g in enumerate(found)},
            body.metric,
            points,
            body.step_range,
        )
        groups = [found[int(band["group"])] for band in bands["groups"]]
        return {
            **bands,
            "groups": [
                {
                    **band,
                    "group": _label(group["group"]),
                    "values": contract_numbers(group["group"]),
                    "run_count": group["count"],
                }
                for band, group in zip(bands["groups"], groups)
            ],
        }

    return json_response(await backend_of(request).run(read))


# -- system metrics of many runs -----------------------------------------------------------------


Seconds = Annotated[float, Meta(ge=0, le=MAX_TIME_S)]


class SystemBody(msgspec.Struct, forbid_unknown_fields=True):
    run_ids: Annotated[
        Annotated[list[RunId], Meta(min_length=1, max_length=logs.MAX_RUNS)] | None,
        Meta(extra={"error": f"run_ids must be a non-empty list of at most {logs.MAX_RUNS} run ids"}),
    ] = None
    filters: Filters | None = None
    metrics: Annotated[
        Annotated[list[Name], Meta(min_length=1, max_length=MAX_SYSTEM_METRICS)] | None,
        Meta(
            description="system metric names (every one when omitted)",
            extra={"error": f"metrics must be a non-empty list of names, at most {MAX_SYSTEM_METRICS} metrics"},
        ),
    ] = None
    points: Annotated[
        Annotated[int, Meta(ge=1, le=logs.MAX_POINTS)] | None,
        Meta(
            description=f"at most this many buckets per (run, metric); {DEFAULT_POINTS} when omitted",
            extra={"error": f"points must be an integer from 1 to {logs.MAX_POINTS}"},
        ),
    ] = None
    start: Annotated[
        Seconds | None,
        Meta(
            description="Unix seconds, inclusive",
            extra={"error": f"start must be a Unix time in seconds from 0 to {MAX_TIME_S}"},
        ),
    ] = None
    end: Annotated[
        Seconds | None,
        Meta(
            description="Unix seconds, inclusive",
            extra={"error": f"end must be a Unix time in seconds from 0 to {MAX_TIME_S}"},
        ),
    ] = None

    def __post_init__(self) -> None:
        one_selection(self.run_ids, self.filters)
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(
                f"start ({_shown(self.start)}) is after end ({_shown(self.end)}): the range would be empty"
            )


def _shown(seconds: float) -> float | int:
    return int(seconds) if seconds.is_integer() else seconds


class RunSystemSeries(SystemSeries):
    run_id: str


class ProjectSystem(TypedDict):
    points: int
    series: list[RunSystemSeries]


@endpoint(
    summary="System metrics of many runs",
    tags=["charts"],
    ok=Answer(
        ProjectSystem,
        "one entry per (run, metric) with samples; time in Unix seconds (each bucket's "
        "start), null where a bucket has no finite value",
    ),
    access=PROJECT_READ,
    refusals={400: "bad arguments or filter"},
)
async def post_system(request: Request, body: SystemBody) -> Response:
    """System metrics (CPU, memory, GPU, ...) of many runs in time buckets: mean, min and max of each.

    The project-wide form of a run's ``/system``: a panel of a system metric reads
    every run it shows in one request. Runs are ``run_ids``, or those matching ``filters`` (every run of the
    project when neither is sent); ``metrics`` (every one when omitted); at most
    ``points`` buckets per (run, metric), from the run's first sample between
    ``start`` and ``end`` (Unix seconds, inclusive). Entries are as the run's
    endpoint answers them, with ``run_id``, ordered by metric then by the order of
    ``run_ids`` (oldest run first for a filter); a run without samples of a metric
    has none.
    """
    team, project = project_path(request)
    points = body.points or DEFAULT_POINTS

    def read(client: Client) -> bytes:
        ids = body.run_ids
        if ids is None:
            ids = runs.matching_run_ids(client, team, project, body.filters, logs.MAX_RUNS)
        else:
            ids = deletion.live_run_ids(client, team, project, ids)
        found = (
            logs.system_series(client, team, project, ids, body.metrics, points, body.start, body.end)["runs"]
            if ids
            else []
        )
        order = {run_id: i for i, run_id in enumerate(dict.fromkeys(ids))}
        found.sort(key=lambda s: (s["metric"], order[s["run_id"]]))
        return render_json({"points": points, "series": found})  # here, in the worker thread: NaN becomes null

    return rendered_json(await backend_of(request).run(read))


routes = [
    Route(PROJECT_PATH + "/series", post_series, methods=["POST"]),
    Route(PROJECT_PATH + "/bands", post_bands, methods=["POST"]),
    Route(PROJECT_PATH + "/system", post_system, methods=["POST"]),
]
