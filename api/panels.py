"""Panel data (docs/panels.md): many runs' config and summary values as columns, and parameter importance.

Both read the runs a workspace's filter selects, as run search does (``storage.panels``), and do
their work in the thread pool: a column answer of 50,000 runs is rendered there too, and the
random forest of parameter importance never runs on the event loop.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

import msgspec
from clickhouse_connect.driver.client import Client
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from runstream.api.auth import PROJECT_READ
from runstream.api.backend import backend_of
from runstream.api.errors import ApiError, error_response
from runstream.api.openapi import Answer, endpoint
from runstream.api.requests import PROJECT_PATH, project_path
from runstream.api.responses import render_json, rendered_json
from runstream.api.schemas import Filters, Names
from runstream.storage import panels

Field = Annotated[
    str,
    Meta(
        min_length=1,
        description="config.<key>, summary.<key> or a run column (state, group, job_type, created_at, ...)",
    ),
]
Order = Annotated[str, Meta(description="a run column, config.<key> or summary.<key>; - first for descending")]


class ColumnsQuery(msgspec.Struct, forbid_unknown_fields=True):
    fields: Annotated[
        list[Field],
        Meta(
            min_length=1,
            max_length=panels.MAX_FIELDS,
            extra={"error": f"fields must be a list of 1 to {panels.MAX_FIELDS} field names"},
        ),
    ]
    filters: Filters | None = None
    order: Order = "-created_at"
    limit: Annotated[
        int,
        Meta(
            ge=1,
            le=panels.MAX_RUNS,
            extra={"error": f"limit must be a whole number of runs from 1 to {panels.MAX_RUNS:,}"},
        ),
    ] = panels.DEFAULT_RUNS


class RunColumns(TypedDict):
    run_ids: Names
    names: Names
    columns: Annotated[
        dict[str, list[Any]],
        Meta(
            description="per field, one value per run in run_ids' order: numbers, strings, bools, lists, or null "
            'where the run has none; non-finite numbers as "NaN", "Infinity", "-Infinity"; a value longer than '
            f'{panels.MAX_CHARS:,} characters as its first {panels.MAX_CHARS:,} and "…"'
        ),
    ]
    total: Annotated[int, Meta(description="how many runs match (run_ids holds the first limit of them)")]


@endpoint(
    summary="Runs' values as columns",
    tags=["panels"],
    ok=Answer(RunColumns, "the runs in order, and each field's values"),
    access=PROJECT_READ,
    refusals={
        400: "a bad filter, order or field, or fields or limit out of bounds",
        413: f"the values add up to more than {panels.MAX_ANSWER_BYTES:,} bytes: ask for fewer runs or fields",
    },
)
async def run_columns(request: Request, body: ColumnsQuery) -> Response:
    """Many runs' values of a few fields at once, column by column: what parallel coordinates, scatter and
    bar panels draw. The runs are those the filter matches, in the order (newest first by default), at most
    ``limit``; a field asked twice is one column."""
    team, project = project_path(request)

    def read(client: Client) -> bytes:
        # Storage answers non-finite values as the contract's strings already (the JSON text it keeps).
        return render_json(panels.run_columns(client, team, project, body.fields, body.filters, body.order, body.limit))

    try:
        return rendered_json(await backend_of(request).run(read))
    except panels.AnswerTooLarge as exc:
        raise ApiError(413, exc.message, details=exc.details) from None


class ImportanceQuery(msgspec.Struct, forbid_unknown_fields=True):
    metric: Annotated[
        str,
        Meta(
            pattern=r"^summary\..",
            max_length=300,
            description="the summary key to explain: summary.<key>",
            extra={"error": "metric must be a summary key: summary.<key>"},
        ),
    ]
    params: (
        Annotated[
            list[Annotated[str, Meta(pattern=r"^config\..", max_length=300)]],
            Meta(
                min_length=1,
                max_length=panels.MAX_PARAMS,
                description="config keys to rank (absent: the project's config keys of numbers, bools or a few "
                f"distinct strings that vary, at most {panels.MAX_PARAMS})",
                extra={"error": f"params must be a list of 1 to {panels.MAX_PARAMS} config keys: config.<key>"},
            ),
        ]
        | None
    ) = None
    filters: Filters | None = None
    limit: Annotated[
        int,
        Meta(
            ge=1,
            le=panels.MAX_RUNS,
            description="the newest runs with the metric to learn from",
            extra={"error": f"limit must be a whole number of runs from 1 to {panels.MAX_RUNS:,}"},
        ),
    ] = panels.DEFAULT_RUNS


class ParamImportance(TypedDict):
    param: str
    importance: Annotated[float, Meta(description="its share of the forest's impurity decrease; all sum to 1")]
    correlation: Annotated[
        float | None,
        Meta(description="Pearson's r with the metric (a category: its strongest level's); null when constant"),
    ]


class ImportanceModel(TypedDict):
    kind: str
    n_estimators: int
    random_state: int
    features: Annotated[int, Meta(description="the columns fitted: a number per key, a column per category")]
    oob_r2: Annotated[
        float | None,
        Meta(
            description="out-of-bag R² of the forest (from 8,000 runs: R² on 2,000 runs held out of the fit): how "
            "much of the metric the params explain; null under 20 runs"
        ),
    ]


class Importance(TypedDict):
    metric: str
    runs: Annotated[int, Meta(description="the runs learned from: those with a numeric metric")]
    params: Annotated[list[ParamImportance], Meta(description="most important first")]
    model: ImportanceModel


@endpoint(
    summary="Parameter importance",
    tags=["panels"],
    ok=Answer(Importance, "the params, most important first"),
    access=PROJECT_READ,
    refusals={
        400: "a bad filter, metric or param, or limit out of bounds",
        413: f"the values add up to more than {panels.MAX_ANSWER_BYTES:,} bytes: ask for fewer runs or params",
        422: "fewer than 3 runs have the metric as a number, or no config key varies across them",
        429: f"{panels.MAX_FITS} fits are running on this server already: retry after Retry-After seconds",
    },
)
async def importance(request: Request, body: ImportanceQuery) -> Response:
    """Which config keys drive a summary metric: a random forest's feature importances (scikit-learn's,
    seeded; a categorical key one-hot encoded and summed back) and Pearson's r, over the runs the filter
    matches that have the metric as a number."""
    team, project = project_path(request)
    try:
        found = await backend_of(request).run(
            panels.importance, team, project, body.metric, body.params, body.filters, body.limit
        )
    except panels.Unrankable as exc:
        raise ApiError(422, exc.message, details=exc.details or None) from None
    except panels.AnswerTooLarge as exc:
        raise ApiError(413, exc.message, details=exc.details) from None
    except panels.Busy as exc:
        # As the API's quotas answer: 429 with Retry-After (whole seconds).
        headers = {"Retry-After": str(panels.BUSY_RETRY_S)}
        return error_response(429, "too_many_requests", exc.message, exc.details, headers)
    return rendered_json(render_json(found))


routes = [
    Route(PROJECT_PATH + "/runs/columns", run_columns, methods=["POST"]),
    Route(PROJECT_PATH + "/importance", importance, methods=["POST"]),
]
