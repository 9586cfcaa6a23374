"""The shapes several endpoints' requests and answers share, declared once (docs/api.md).

Answers are TypedDicts (handlers build plain dicts, orjson renders them; the
type is their declaration for readers, mypy and the OpenAPI document); request
bodies and query parameters are msgspec Structs, checked at the edge.
Times are Unix seconds; values a run set that are not finite travel as the event
contract's strings ("NaN", "Infinity", "-Infinity").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Required, TypedDict

from msgspec import Meta

Time = Annotated[float, Meta(description="Unix seconds")]
Names = list[str]
#: A wandb-style filter document.
Filters = Annotated[
    dict[str, Any],
    Meta(
        description='wandb-style filter document, e.g. {"config.lr": {"$gt": 0.01}}',
        extra={"error": 'filters must be a filter object (JSON), e.g. filters={"state": "finished"}'},
    ),
]
#: Numbers, null (not logged), or "NaN"/"Infinity"/"-Infinity".
Values = Annotated[list[Any], Meta(description='numbers, null (not logged), or "NaN"/"Infinity"/"-Infinity"')]
NonEmptyNames = Annotated[list[Annotated[str, Meta(min_length=1)]], Meta(min_length=1)]
#: A chart array: numbers, null where a bucket has no finite value.
Numbers = list[float | None]
Step = Annotated[int, Meta(ge=0)]


def one_selection(run_ids: list[str] | None, filters: dict[str, Any] | None) -> None:
    """The runs of a chart or export are ``run_ids`` or those matching ``filters``, not both (a 400)."""
    if run_ids is not None and filters is not None:
        raise ValueError("send run_ids or filters, not both")


class SystemSeries(TypedDict):
    """One system metric of a run in time buckets."""

    metric: str
    bucket_seconds: float
    time: Annotated[Numbers, Meta(description="each bucket's start, Unix seconds")]
    mean: Numbers
    min: Numbers
    max: Numbers


class MetricDefinition(TypedDict):
    name: str
    step_metric: str | None
    goal: str | None
    summary: str | None


_RunState = Literal["running", "finished", "failed", "killed", "crashed", "stopped"]


class _RunIdentity(TypedDict):
    """What names a run: every run answer has it, whichever fields a search picks."""

    team: str
    project: str
    id: str


class _RunDetails(TypedDict, total=False):
    """The fields a run answer may leave out (unless a search's ``fields=`` picks them)."""

    group: str | None
    job_type: str | None
    notes: str
    updated_at: Time
    heartbeat_at: Time
    finished_at: Time | None
    exit_code: int | None
    user: str
    host: str
    program: str
    args: Names
    python: str
    git: dict[str, Any]
    error: Annotated[str | None, Meta(description="a failed run's traceback, until it resumes")]
    metrics: Annotated[
        list[MetricDefinition],
        Meta(
            description="define_metric specs, oldest first: for each attribute the last spec whose glob matches a "
            "metric and sets it wins"
        ),
    ]
    sweep: Annotated[str | None, Meta(description="the sweep the run belongs to (docs/sweeps.md)")]


# RunFields and Run differ only in whether these fields are required, which a TypedDict cannot
# change in a subclass: both declare them, beside the fields they share (_RunIdentity, _RunDetails).
class RunFields(_RunIdentity, _RunDetails, total=False):
    """Every field of a run, unless a search's ``fields=`` picks some."""

    name: str
    state: _RunState
    config: dict[str, Any]
    summary: dict[str, Any]
    tags: Names
    created_at: Time


class Run(_RunIdentity, _RunDetails):
    """A run, as every endpoint answers it."""

    name: str
    state: _RunState
    config: dict[str, Any]
    summary: dict[str, Any]
    tags: Names
    created_at: Time


#: The run fields a search may pick (``fields=``), besides the identity it always answers, in the
#: order its messages list them (RunFields' keys, less the identity; a unit test checks they agree).
RUN_FIELDS = (
    "name",
    "state",
    "config",
    "summary",
    "tags",
    "group",
    "job_type",
    "notes",
    "created_at",
    "updated_at",
    "heartbeat_at",
    "finished_at",
    "exit_code",
    "user",
    "host",
    "program",
    "args",
    "python",
    "git",
    "error",
    "metrics",
    "sweep",
)


class FileEntry(TypedDict, total=False):
    path: Required[str]
    kind: Required[str]
    media_type: str | None
    step: int | None
    size: Required[int]
    sha256: Required[str]
    store_key: str
    meta: dict[str, Any]
    time: float
    url: Required[Annotated[str, Meta(description="where the blob downloads from")]]
