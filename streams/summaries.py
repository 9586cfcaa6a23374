"""Run summaries: per (run, metric) statistics, and the run summary the runs table shows.

Plain Python, folded into the same JSON-able run state as ``runstate`` (the
``summary`` entry): per metric the last value (at the largest step), min, max,
sum and count of the finite values, NaN and infinity counts, first/last step
and time. The run summary takes each metric's last value unless a
``define_metric`` summary choice asks for some of min, max, mean, last and best
(then the entry is shaped as wandb shapes it: ``{"loss": {"min": 0.1}}``, the
same function as the SDK's local view) or none; values set with
``run.summary[...]`` (or a user's edit through the API) win. A user's edit may
also delete summary keys (``summary_delete``): an explicit value goes, and a
value computed from a metric is hidden (``hidden``) until the metric is logged
again, as wandb's summary shows it. The ``define``
entry also keeps each spec's ``step_metric`` and ``goal``: the runs table shows
them, and the web UI's charts take a metric's step_metric as their x axis.
Non-finite values are kept as the contract's strings
("NaN", "Infinity") so the state stays valid JSON.

A metric's ``integer`` says whether every finite value so far was logged as an
int (a JSON int in the event): such a metric keeps its last value, min and max
as ints, so the run summary and history read back as ints (W&B's ``epoch ==
3``); one float value makes it float for good, and so do states from before the
flag.

A metrics event whose seq is at or below the highest one folded is a replay and
changes nothing (a run's metric events arrive in seq order on one partition).

A step logged again replaces its value in history, so the statistics count the
newer value only. Within one batch that is folding's own business: of rows at
the same step, only the last is folded. A step logged before the batch (a run
resumed from a checkpoint logs its last steps once more) cannot be unfolded:
``relogged`` names such metrics, and the processor restates their counts, sum,
minimum and maximum from the history it has just written (``restate``). The last
value and the first and last steps and times need no repair: replacing a value
keeps the set of steps, and folding keeps the newest value at the last step.
"""

from __future__ import annotations

import fnmatch
import functools
import itertools
import math
from typing import Any, NotRequired, TypedDict

from runstream.events import METRICS, RUN_EDIT, RUN_UPDATE, Event, decode_value, encode_value
from runstream.summary import NO_SUMMARY, summary_ops, summary_value


class MetricStats(TypedDict):
    """One metric's statistics over the finite values folded (NaN and infinities only counted)."""

    last: float | int | str | None  # the value at the largest step, as it travels ("NaN" for a NaN)
    last_step: int  # -1 before any value
    min: float | int | None
    max: float | int | None
    sum: float
    count: int
    nan: int
    inf: int
    first_step: int | None
    first_time: float | None
    last_time: float | None
    integer: NotRequired[bool]  # every finite value so far was an int (states from before the flag lack it)


class Summary(TypedDict):
    """A run's ``summary`` state entry."""

    metrics_seq: int  # highest seq folded from the metrics topic
    metrics: dict[str, MetricStats]
    explicit: dict[str, Any]  # values set with run.summary[...] or a user's edit: they win
    define: list[dict[str, Any]]  # define_metric specs, newest first: name plus some of ``DEFINED``
    # Computed summary keys a user's edit deleted (a metric's name, or a dotted key inside its entry such as
    # "loss.min"): left out of the run summary until the metric is logged again. States before it lack it.
    hidden: NotRequired[list[str]]


def new_summary() -> Summary:
    return {"metrics_seq": -1, "metrics": {}, "explicit": {}, "define": []}


def _stats() -> MetricStats:
    return {
        "last": None,
        "last_step": -1,
        "min": None,
        "max": None,
        "sum": 0.0,
        "count": 0,
        "nan": 0,
        "inf": 0,
        "first_step": None,
        "first_time": None,
        "last_time": None,
        "integer": True,
    }


def _to_float(s: MetricStats) -> None:
    """A float value arrived: the metric is float from now on, its kept values too."""
    s["integer"] = False
    if type(s["last"]) is int:
        s["last"] = float(s["last"])
    if type(s["min"]) is int:
        s["min"] = float(s["min"])
    if type(s["max"]) is int:
        s["max"] = float(s["max"])


def fold_metrics(summary: Summary, event: Event) -> set[str]:
    """Fold one metrics batch; return the metrics it changed (none when it was already folded)."""
    if event.type != METRICS:
        raise ValueError(f"expected a metrics event, got {event.type!r}")
    if event.seq <= summary["metrics_seq"]:
        return set()
    summary["metrics_seq"] = event.seq
    steps, times = event.data["step"], event.data["time"]
    ordered = all(a < b for a, b in itertools.pairwise(steps))
    names = set()
    for name, column in event.data["values"].items():
        if column.count(None) == len(column):
            continue  # declared in the batch, logged in no row
        names.add(name)
        s = summary["metrics"].get(name) or _stats()
        if ordered and None not in column and str not in map(type, column):
            _fold_dense(s, steps, times, column)  # the common case: min/max/sum run in C
        elif ordered:
            _fold_rows(s, steps, times, column)
        else:  # a step may come twice: history keeps its last row, and so do the statistics
            last_rows = {step: (t, v) for step, t, v in zip(steps, times, column) if v is not None}
            _fold_rows(s, list(last_rows), [t for t, _ in last_rows.values()], [v for _, v in last_rows.values()])
        summary["metrics"][name] = s
    if names and summary.get("hidden"):  # logged again: its computed summary shows again
        summary["hidden"] = [h for h in summary["hidden"] if not any(_within(h, name) for name in names)]
    return names


def _within(key: str, path: str) -> bool:
    """Whether dotted ``key`` is ``path`` or a key inside it."""
    return key == path or key.startswith(path + ".")


def without_keys(tree: dict[str, Any], keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A config or summary without the dotted ``keys``, each matched as storage flattens the tree: "opt.lr" is
    ``{"opt": {"lr": ...}}`` and ``{"opt.lr": ...}`` alike. A key takes its whole subtree with it, and an
    object the deletion leaves empty goes too. ``tree`` is left as it is (a copy is changed)."""
    out = dict(tree)
    for key in keys:
        _drop(out, key)
    return out


def _drop(node: dict[str, Any], key: str) -> bool:
    """Delete ``key`` from ``node`` (a copy; nested objects are copied before they change); True if it held it."""
    # The key itself, and keys that hold a dot themselves and flatten to a key inside it ({"opt.lr": ...} for "opt").
    inside = [k for k in node if k == key or ("." in k and k.startswith(key + "."))]
    for k in inside:
        del node[k]
    dropped = bool(inside)
    for i, c in enumerate(key):
        parent = key[:i]
        if c == "." and isinstance(child := node.get(parent), dict) and child:
            child = dict(child)
            if _drop(child, key[i + 1 :]):
                dropped = True
                if child:
                    node[parent] = child
                else:
                    del node[parent]
    return dropped


def relogged(summary: Summary, event: Event) -> set[str]:
    """The metrics of a batch not folded yet that log a step again, at or below the metric's last
    step folded: their statistics need ``restate`` after the batch is folded."""
    if event.seq <= summary["metrics_seq"]:
        return set()
    steps = event.data["step"]
    lowest = min(steps, default=None)
    out = set()
    for name, column in event.data["values"].items():
        s = summary["metrics"].get(name)
        if s is None or s["last_step"] < 0 or lowest is None or lowest > s["last_step"]:
            continue  # the common case, decided without reading the column
        if None not in column:
            first = lowest
        else:
            first = min((step for step, value in zip(steps, column) if value is not None), default=None)
        if first is not None and first <= s["last_step"]:
            out.add(name)
    return out


def restate(summary: Summary, metric: str, stats: dict[str, Any]) -> None:
    """Replace a metric's counts, sum, minimum and maximum with ``stats`` from its whole history
    (``storage.history.metric_statistics``)."""
    s = summary["metrics"][metric]
    s["count"], s["sum"], s["nan"], s["inf"] = stats["count"], stats["sum"], stats["nan"], stats["inf"]
    s["min"], s["max"] = stats["min"], stats["max"]
    if s.get("integer"):  # the history read back is Float64; its values were all logged as ints
        s["min"], s["max"] = (None if v is None else int(v) for v in (s["min"], s["max"]))


def _fold_dense(s: MetricStats, steps: list[int], times: list[float], column: list[float | int]) -> None:
    if s.get("integer") and float in map(type, column):
        _to_float(s)
    low, high = min(column), max(column)
    if math.isfinite(low) and math.isfinite(high) and math.isfinite(total := math.fsum(column)):
        if not s.get("integer"):  # a float metric's odd int value is kept as a float
            low, high = float(low), float(high)
        s["count"] += len(column)
        s["sum"] += total
        s["min"] = low if s["min"] is None else min(s["min"], low)
        s["max"] = high if s["max"] is None else max(s["max"], high)
    else:  # an infinity (NaN arrives as a string) or an overflowing sum
        _fold_rows(s, steps, times, column)
        return
    if steps[-1] >= s["last_step"]:
        last = column[-1] if s.get("integer") else float(column[-1])
        s["last"], s["last_step"], s["last_time"] = last, steps[-1], times[-1]
    if s["first_step"] is None or steps[0] < s["first_step"]:
        s["first_step"], s["first_time"] = steps[0], times[0]


def _fold_rows(s: MetricStats, steps: list[int], times: list[float], column: list[Any]) -> None:
    for step, t, raw in zip(steps, times, column):
        value = decode_value(raw)
        if value is None:
            continue
        if math.isfinite(value):
            if type(value) is not int:
                if s.get("integer"):
                    _to_float(s)
            elif not s.get("integer"):
                value = float(value)
            s["count"] += 1
            s["sum"] += value
            s["min"] = value if s["min"] is None else min(s["min"], value)
            s["max"] = value if s["max"] is None else max(s["max"], value)
        elif math.isnan(value):
            s["nan"] += 1
        else:
            s["inf"] += 1
        if step >= s["last_step"]:
            s["last"], s["last_step"], s["last_time"] = encode_value(value), step, t
        if s["first_step"] is None or step < s["first_step"]:
            s["first_step"], s["first_time"] = step, t


#: What a define_metric spec may set; each is looked up on its own (``metric_definitions``).
DEFINED = ("step_metric", "summary", "goal")


def fold_update(summary: Summary, event: Event) -> bool:
    """Fold explicit summary values and define_metric specs from a run_update, or the summary of a
    user's edit (run_edit, already ordered by ``runstate``); True if anything changed."""
    if event.type not in (RUN_UPDATE, RUN_EDIT):
        return False
    changed = False
    if deleted := event.data.get("summary_delete") if event.type == RUN_EDIT else None:
        summary["explicit"] = without_keys(summary["explicit"], deleted)
        # A computed value is hidden: the whole metric's entry for its name or a key holding it, the part
        # named for a key inside its entry ("loss.min" of {"loss": {"min": ..., "max": ...}}).
        hidden = set(summary.get("hidden", ()))
        for key in deleted:
            hidden.update(m for m in summary["metrics"] if _within(m, key))
            hidden.update(key for m in summary["metrics"] if key.startswith(m + "."))
        summary["hidden"] = sorted(hidden)
        changed = True
    if "summary" in event.data:
        summary["explicit"].update(event.data["summary"])
        changed = True
    for spec in event.data.get("define_metric", ()) if event.type == RUN_UPDATE else ():
        # Newest first. As in the SDK, each attribute is the newest matching spec's that sets it, so an
        # older spec of the same name keeps only what the new one leaves unset (and goes once it has nothing).
        new = {"name": spec["name"], **{k: spec[k] for k in DEFINED if spec.get(k) is not None}}
        if len(new) == 1:
            continue  # define_metric("epoch") alone chooses nothing
        older = []
        for d in summary["define"]:
            if d["name"] == spec["name"]:
                d = {k: v for k, v in d.items() if k not in new or k == "name"}
            if len(d) > 1:
                older.append(d)
        summary["define"] = [new, *older]
        changed = True
    return changed


def metric_definitions(summary: Summary) -> list[dict[str, Any]]:
    """The run's define_metric specs, oldest first (the runs table's ``metric_defs``): for each attribute,
    the last spec whose glob matches a metric and that sets it wins."""
    return [{"name": d["name"], **{k: d.get(k) for k in DEFINED}} for d in reversed(summary["define"])]


def _defined(summary: Summary, metric: str, attribute: str) -> Any:
    """The newest define_metric spec's ``attribute`` among those whose glob matches ``metric``."""
    for spec in summary["define"]:
        if spec.get(attribute) and fnmatch.fnmatchcase(metric, spec["name"]):
            return spec[attribute]
    return None


def _statistic(s: MetricStats, op: str) -> Any:
    if op == "last":
        return None if s["last"] is None else decode_value(s["last"])
    if op == "mean":
        return s["sum"] / s["count"] if s["count"] else None
    return s["min"] if op == "min" else s["max"]


def run_summary(summary: Summary) -> dict[str, Any]:
    """The run summary: per metric its last value, or the statistics its define_metric summary asks
    for, shaped as wandb shapes them (``{"loss": {"min": 0.1}}``); explicit values over them."""
    out: dict[str, Any] = {}
    for metric, s in summary["metrics"].items():
        ops = summary_ops(_defined(summary, metric, "summary"))
        value = summary_value(ops, _defined(summary, metric, "goal"), functools.partial(_statistic, s))
        if value is not NO_SUMMARY and value is not None:
            out[metric] = value
    if summary.get("hidden"):
        out = without_keys(out, summary["hidden"])
    out.update(summary["explicit"])
    return out


def metric_summary_rows(
    summary: Summary, team: str, project: str, run_id: str, version: int, metrics: set[str] | None = None
) -> list[dict[str, Any]]:
    """``metric_summaries`` rows for the given metrics (default: all); its values are Float64."""
    rows = []
    for metric in sorted(metrics if metrics is not None else summary["metrics"]):
        s = summary["metrics"][metric]
        rows.append(
            {
                "team": team,
                "project": project,
                "run_id": run_id,
                "metric": metric,
                "last": float(decode_value(s["last"])) if s["last"] is not None else math.nan,
                "min": float(s["min"]) if s["min"] is not None else math.nan,
                "max": float(s["max"]) if s["max"] is not None else math.nan,
                "mean": s["sum"] / s["count"] if s["count"] else math.nan,
                "count": s["count"] + s["nan"] + s["inf"],
                "nan_count": s["nan"],
                "inf_count": s["inf"],
                "first_step": s["first_step"] or 0,
                "last_step": max(s["last_step"], 0),
                "first_time": s["first_time"] or 0.0,
                "last_time": s["last_time"] or 0.0,
                "integer": bool(s.get("integer")),
                "version": version,
            }
        )
    return rows
