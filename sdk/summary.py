"""``run.summary`` and ``run.define_metric``: one value per metric for the runs table.

By default a metric's summary is its last logged value; ``define_metric`` (glob
patterns, first match wins, later definitions first) can pick min, max, mean or
none instead. Values the user sets explicitly (``run.summary["best"] = x``) win
over computed ones.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runstream.values import json_safe

SUMMARY_CHOICES = ("min", "max", "mean", "last", "none")


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


def make_definition(name: str, step_metric: str | None, summary: str | None, goal: str | None) -> MetricDefinition:
    if not isinstance(name, str) or not name:
        raise TypeError(f"define_metric() needs a metric name or glob pattern, got {name!r}")
    if summary is not None and summary not in SUMMARY_CHOICES:
        raise ValueError(f"define_metric(summary=...) must be one of {SUMMARY_CHOICES}, got {summary!r}")
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
        s.last = float(values[-1])
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
            choice = definition.summary if definition else "last"
            if choice == "none":
                continue
            value = self._stats.value(key, choice)
            if value is not None:
                out[key] = json_safe(value)
        return out

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
