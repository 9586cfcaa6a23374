"""``run.summary`` and ``run.define_metric``: one value per metric for the runs table.

By default a metric's summary is its last logged value; ``define_metric`` (glob
patterns, first match wins, later definitions first) can ask for some of min,
max, mean, last and best instead (``summary="min,max"``), which shapes the entry
as wandb does: ``{"loss": {"min": 0.1, "max": 2.3}}``; "none" leaves the metric
out, "copy" is the default. Values the user sets explicitly
(``run.summary["best"] = x``) win over computed ones.

This is the training script's local view. The server computes the stored
summary itself, from every point the run logged (also before a resume): the SDK
sends only the values the user set and the ``define_metric`` choices.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from runstream import events
from runstream.events import decode_value
from runstream.values import json_safe

SUMMARY_CHOICES = events.SUMMARY_OPS


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    step_metric: str | None = None
    summary: str | None = None
    goal: str | None = None

    def to_event(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"name": self.name}
        for key in ("step_metric", "summary", "goal"):
            if getattr(self, key) is not None:
                spec[key] = getattr(self, key)
        return spec


def summary_ops(summary: str | None) -> tuple[str, ...]:
    """The operations of a summary choice: "min,max" -> ("min", "max")."""
    return tuple(op.strip() for op in summary.split(",") if op.strip()) if summary else ()


def summary_value(ops: tuple[str, ...], goal: str | None, stat: Callable[[str], Any]) -> Any:
    """A metric's summary entry as wandb shapes it, from ``stat("last" | "min" | "max" | "mean")``:
    the last value (no choice, or "copy"), nothing ("none": ``NO_SUMMARY``) or a dict of the chosen statistics."""
    if "none" in ops:
        return NO_SUMMARY
    if not ops or ops == ("copy",):
        return stat("last")
    out = {}
    for op in ops:
        if op == "best":
            out["best"] = stat("max" if goal == "maximize" else "min")
        elif op in ("min", "max", "mean", "last"):
            out[op] = stat(op)
    out = {k: v for k, v in out.items() if v is not None}
    return out or NO_SUMMARY


NO_SUMMARY = object()


def make_definition(name: str, step_metric: str | None, summary: str | None, goal: str | None) -> MetricDefinition:
    if not isinstance(name, str) or not name:
        raise TypeError(f"define_metric() needs a metric name or glob pattern, got {name!r}")
    if summary is not None:
        ops = summary_ops(summary) if isinstance(summary, str) else ()
        if not ops or not set(ops) <= set(SUMMARY_CHOICES):
            raise ValueError(
                f"define_metric(summary=...) takes one or more of {SUMMARY_CHOICES} separated by commas, got {summary!r}"
            )
        summary = ",".join(ops)
    if goal is not None and goal not in ("minimize", "maximize"):
        raise ValueError(f"define_metric(goal=...) must be 'minimize' or 'maximize', got {goal!r}")
    if step_metric is not None and (not isinstance(step_metric, str) or not step_metric):
        raise TypeError(f"define_metric(step_metric=...) must be a metric name, got {step_metric!r}")
    return MetricDefinition(name, step_metric, summary, goal)


@dataclass
class _Stats:
    last: float = math.nan
    min: float = math.inf
    max: float = -math.inf
    total: float = 0.0
    count: int = 0  # finite values only: NaN/Inf are kept in history, not in min/max/mean


@dataclass
class MetricStats:
    """Running statistics of every logged metric, fed by the sender thread."""

    stats: dict[str, _Stats] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = _Stats()
        s.last = value
        if value - value == 0:  # finite
            s.count += 1
            s.total += value
            if value < s.min:
                s.min = value
            if value > s.max:
                s.max = value

    def add_finite_column(self, key: str, values: list[float], total: float) -> None:
        """Many finite values at once (the sender's fast path: min/max/sum run in C)."""
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = _Stats()
        s.last = values[-1]  # an int stays an int, as W&B keeps it
        s.count += len(values)
        s.total += total
        s.min = min(s.min, min(values))
        s.max = max(s.max, max(values))

    def value(self, key: str, summary: str) -> float | None:
        s = self.stats[key]
        if summary == "last":
            return s.last
        if s.count == 0:
            return None
        return {"min": s.min, "max": s.max, "mean": s.total / s.count}[summary]

    def restore(self, key: str, stats: dict[str, Any]) -> None:
        """Start from the statistics the server has of a resumed run's metric."""
        s = self.stats[key] = _Stats()
        count = stats.get("count") or 0
        s.count = int(count)
        s.total = float(stats.get("mean") or 0.0) * s.count
        # decode_value() gives None for None only, which is checked first
        if stats.get("min") is not None and s.count:
            s.min = cast(float, decode_value(stats["min"]))
        if stats.get("max") is not None and s.count:
            s.max = cast(float, decode_value(stats["max"]))
        if stats.get("last") is not None:
            s.last = cast(float, decode_value(stats["last"]))


class Summary:
    """Dict-like view: computed summaries of logged metrics, overridden by explicit sets."""

    def __init__(self, refresh: Callable[[], None], on_set: Callable[[dict[str, Any]], None]) -> None:
        self._refresh = refresh  # brings pending logged rows into the stats first
        self._on_set = on_set
        self._explicit: dict[str, Any] = {}
        self._stats = MetricStats()
        self._definitions: list[MetricDefinition] = []

    # -- fed by the run --------------------------------------------------------------
    @property
    def stats(self) -> MetricStats:
        return self._stats

    def define(self, definition: MetricDefinition) -> None:
        self._definitions.insert(0, definition)  # later definitions take precedence

    def definition_for(self, key: str) -> MetricDefinition | None:
        for definition in self._definitions:
            if definition.summary is not None and fnmatch.fnmatchcase(key, definition.name):
                return definition
        return None

    def computed(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._stats.stats:
            definition = self.definition_for(key)
            ops = summary_ops(definition.summary) if definition else ()
            value = summary_value(ops, definition.goal if definition else None, lambda op: self._stats.value(key, op))  # noqa: B023 - summary_value calls it in this iteration
            if value is not NO_SUMMARY and value is not None:
                out[key] = json_safe(value)
        return out

    def restore(self, metrics: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
        """A resumed run's summary so far: the server's statistics of its metrics, and the other
        values of its summary (set by the user) as explicit ones, without sending them again."""
        for key, stats in metrics.items():
            self._stats.restore(key, stats)
        self._explicit.update({k: v for k, v in summary.items() if k not in metrics})

    def detach(self) -> None:
        """Nothing to refresh from and nowhere to send to (a disabled run)."""
        self._refresh = lambda: None
        self._on_set = lambda values: None

    def as_dict(self) -> dict[str, Any]:
        self._refresh()
        return {**self.computed(), **self._explicit}

    # -- the dict interface ----------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, values: dict[str, Any]) -> None:
        if not isinstance(values, dict):
            raise TypeError(f"summary.update() takes a dict, got {type(values).__name__}")
        safe = {str(k): json_safe(v) for k, v in values.items()}
        if not events.is_tree(safe):
            raise ValueError(
                f"summary keys must be non-empty and nest at most {events.MAX_TREE_DEPTH} levels "
                "(dotted keys count as levels)"
            )
        self._explicit.update(safe)
        self._on_set(safe)

    def get(self, key: str, default: Any = None) -> Any:
        return self.as_dict().get(key, default)

    def keys(self):  # noqa: ANN201
        return self.as_dict().keys()

    def items(self):  # noqa: ANN201
        return self.as_dict().items()

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())

    def __repr__(self) -> str:
        return f"Summary({self.as_dict()!r})"
