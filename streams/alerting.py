"""Alert rules: which conditions fire, evaluated on a run's events. Plain Python.

A rule belongs to a project and applies to each of its runs. Kinds and specs
(``alert_rules.spec``, JSON):

- ``threshold``: ``{"metric": "loss", "op": ">", "value": 10}``
- ``nonfinite``: ``{"metric": "loss"}`` (``"*"`` for any metric): a NaN or infinity is logged
- ``divergence``: ``{"metric": "loss", "percent": 50, "within_steps": 100, "goal": "minimize"}``:
  the metric is ``percent`` worse than its best, which it reached at most ``within_steps`` before
- ``stall``: ``{"metric": "loss", "patience": 1000, "goal": "minimize"}`` (no improvement for
  that many steps) or ``{"seconds": 600}`` (no new step of any metric for that long; checked
  by the periodic sweep)
- ``system``: ``{"metric": "gpu.0.gpu", "op": "<", "value": 10, "for_seconds": 300}``: a
  system metric holds the condition for that long
- ``run_state``: ``{"states": ["crashed", "failed"]}``

Every spec may set ``level`` (INFO, WARN, ERROR; default WARN) and ``webhooks``
(http(s) URLs the notifier posts this rule's alerts to, besides the global ones). Conditions are
edge-triggered (a threshold fires when it becomes true, again only after it
was false), and a rule fires at most once per ``cooldown_s`` per run, so one
condition does not become a storm. Per-run rule memory (``alerts`` in the run
state) is JSON-able, kept in the same store as the rest of the run's state.
"""

from __future__ import annotations

import hashlib
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from runstream.events import ALERT_LEVELS, METRICS, SYSTEM, Event, decode_value

RULE_KINDS = ("threshold", "nonfinite", "divergence", "stall", "system", "run_state")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class RuleError(ValueError):
    """A rule spec that cannot be evaluated; the message says what to fix."""


@dataclass(frozen=True)
class Rule:
    team: str
    project: str
    rule_id: str
    name: str
    kind: str
    spec: dict[str, Any]
    cooldown_s: float = 300.0

    @property
    def level(self) -> str:
        return self.spec.get("level", "WARN")


def check_rule(kind: str, spec: dict[str, Any]) -> None:
    """Raise RuleError unless the spec is complete for its kind (the API calls this before storing a rule)."""
    if kind not in RULE_KINDS:
        raise RuleError(f"unknown rule kind {kind!r}; use one of {', '.join(RULE_KINDS)}")
    if not isinstance(spec, dict):
        raise RuleError("a rule spec is a JSON object")
    if not isinstance(spec.get("level", "WARN"), str) or spec.get("level", "WARN") not in ALERT_LEVELS:
        raise RuleError(f"level must be one of {ALERT_LEVELS}")

    def need(key: str, ok: Callable[[Any], bool], what: str) -> None:
        if key not in spec or not ok(spec[key]):
            raise RuleError(f"a {kind} rule needs {key!r}: {what}")

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def name(x: Any) -> bool:
        return isinstance(x, str) and 0 < len(x) <= 256

    if kind in ("threshold", "system"):
        need("metric", name, "a metric name")
        need("op", lambda x: isinstance(x, str) and x in OPS, f"one of {' '.join(OPS)}")
        need("value", number, "a number")
    if kind == "system":
        need("for_seconds", lambda x: number(x) and x >= 0, "seconds the condition must hold")
    if kind == "nonfinite":
        need("metric", name, "a metric name or '*'")
    if kind == "divergence":
        need("metric", name, "a metric name")
        need("percent", lambda x: number(x) and x > 0, "a positive percentage")
        need("within_steps", lambda x: isinstance(x, int) and x > 0, "a positive number of steps")
    if kind in ("divergence", "stall") and spec.get("goal", "minimize") not in ("minimize", "maximize"):
        raise RuleError("goal must be 'minimize' or 'maximize'")
    if kind == "stall":
        if "seconds" in spec:
            need("seconds", lambda x: number(x) and x > 0, "positive seconds without a new step")
        else:
            need("metric", name, "a metric name (or give 'seconds' for a stall of any metric)")
            need("patience", lambda x: isinstance(x, int) and x > 0, "steps without improvement")
    if kind == "run_state":
        need(
            "states",
            lambda x: isinstance(x, list) and len(x) > 0 and all(isinstance(s, str) for s in x),
            "a list of states",
        )
    hooks = spec.get("webhooks", [])
    if not isinstance(hooks, list) or not all(
        isinstance(u, str) and u.startswith(("http://", "https://")) for u in hooks
    ):
        raise RuleError("webhooks must be a list of http:// or https:// URLs")


def rule_from_row(row: dict[str, Any]) -> Rule:
    """A stored rule, checked like a new one: a bad row raises RuleError (a ValueError) instead of
    failing later, inside a worker's batch."""
    try:
        spec = row["spec"] if isinstance(row["spec"], dict) else orjson.loads(row["spec"])
    except orjson.JSONDecodeError as exc:
        raise RuleError(f"rule {row['rule_id']!r}: spec is not JSON ({exc})") from None
    check_rule(row["kind"], spec)
    return Rule(row["team"], row["project"], row["rule_id"], row["name"], row["kind"], spec, float(row["cooldown_s"]))


@dataclass
class Fired:
    """An alert a rule fired, ready for the alerts topic and table."""

    rule: Rule
    run_id: str
    title: str
    text: str
    at: float
    trigger: str  # what caused it, unique per (rule, run): a replay computes the same id

    @property
    def alert_id(self) -> str:
        return hashlib.sha256(f"{self.rule.rule_id}\0{self.run_id}\0{self.trigger}".encode()).hexdigest()[:32]

    def event_data(self) -> dict[str, Any]:
        return {
            "title": self.title[:256],
            "text": self.text[:4000],
            "level": self.rule.level,
            "source": "rule",
            "rule_id": self.rule.rule_id,
            "alert_id": self.alert_id,
        }


@dataclass
class RuleMemory:
    """What one rule remembers about one run (a view on a JSON-able dict)."""

    data: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value


class Evaluator:
    """Evaluates a project's rules on one run's events; ``memory`` is the run's ``alerts`` state entry."""

    def __init__(self, rules: Iterable[Rule], memory: dict[str, dict[str, Any]]) -> None:
        self.rules = list(rules)
        self.memory = memory
        self.fired: list[Fired] = []

    def _mem(self, rule: Rule) -> RuleMemory:
        return RuleMemory(self.memory.setdefault(rule.rule_id, {}))

    def _fire(self, rule: Rule, run_id: str, at: float, title: str, text: str, trigger: str) -> None:
        mem = self._mem(rule)
        last = mem["fired_at"]
        if last is not None and at - last < rule.cooldown_s:
            return
        mem["fired_at"] = at
        self.fired.append(Fired(rule, run_id, title, text, at, trigger))

    # -- inputs ------------------------------------------------------------------------
    def metrics(self, event: Event) -> None:
        if event.type != METRICS:
            return
        steps, times = event.data["step"], event.data["time"]
        for rule in self.rules:
            metric = rule.spec.get("metric")
            if rule.kind == "nonfinite":
                values = event.data["values"]  # a metrics event's values are keyed by metric name (str)
                names = values if metric == "*" else ([metric] if isinstance(metric, str) and metric in values else [])
                for name in names:
                    self._nonfinite(rule, event, name, steps, times)
                continue
            if metric not in event.data["values"] or rule.kind not in ("threshold", "divergence", "stall"):
                continue
            column = event.data["values"][metric]
            for row, raw in enumerate(column):
                if raw is None:
                    continue
                value, step, at = decode_value(raw), steps[row], times[row]
                trigger = f"{event.seq}:{row}"
                if rule.kind == "threshold":
                    self._threshold(rule, event.run_id, value, at, trigger, f"{metric} = {value:g} at step {step}")
                elif rule.kind == "divergence":
                    self._divergence(rule, event.run_id, value, step, at, trigger)
                elif "patience" in rule.spec:
                    self._patience(rule, event.run_id, value, step, at, trigger)

    def system(self, event: Event) -> None:
        if event.type != SYSTEM:
            return
        for rule in self.rules:
            metric = rule.spec.get("metric")
            if rule.kind != "system" or metric not in event.data["values"]:
                continue
            mem = self._mem(rule)
            for row, raw in enumerate(event.data["values"][metric]):
                if raw is None:
                    continue
                value, at = decode_value(raw), event.data["time"][row]
                if not OPS[rule.spec["op"]](value, rule.spec["value"]):
                    mem["since"], mem["active"] = None, False
                    continue
                if mem["since"] is None:
                    mem["since"] = at
                if not mem["active"] and at - mem["since"] >= rule.spec["for_seconds"]:
                    mem["active"] = True
                    self._fire(
                        rule,
                        event.run_id,
                        at,
                        f"{rule.name}: {metric} {rule.spec['op']} {rule.spec['value']:g}",
                        f"{metric} has been {rule.spec['op']} {rule.spec['value']:g} for "
                        f"{at - mem['since']:.0f} s (now {value:g})",
                        f"{event.seq}:{row}",
                    )

    def state_change(self, run_id: str, new: str, at: float, reason: str | None) -> None:
        for rule in self.rules:
            if rule.kind == "run_state" and new in rule.spec["states"]:
                text = f"the run is {new}" + (f": {reason}" if reason else "")
                self._fire(rule, run_id, at, f"{rule.name}: run {new}", text[:4000], f"state:{new}:{at}")

    def sweep(self, run_id: str, now: float, last_step_time: float | None) -> None:
        """Time-based rules, for the periodic sweep: a stall with no new step for ``seconds``.
        The sweep keeps no memory between runs of it; alert ids make repeats one alert."""
        for rule in self.rules:
            if rule.kind != "stall" or "seconds" not in rule.spec or last_step_time is None:
                continue
            mem = self._mem(rule)
            if now - last_step_time < rule.spec["seconds"]:
                mem["active"] = False
            elif not mem["active"]:
                mem["active"] = True
                # Dated when the stall began, not when a sweep noticed it: every sweep (and every
                # worker) that sees the same stall produces the same alert.
                at = last_step_time + rule.spec["seconds"]
                self._fire(
                    rule,
                    run_id,
                    at,
                    f"{rule.name}: no new step",
                    f"no new step for {rule.spec['seconds']:g} s (the last at {last_step_time:.0f})",
                    f"stall:{last_step_time}",
                )

    # -- conditions ----------------------------------------------------------------------
    def _threshold(self, rule: Rule, run_id: str, value: float, at: float, trigger: str, what: str) -> None:
        mem = self._mem(rule)
        holds = OPS[rule.spec["op"]](value, rule.spec["value"])
        if holds and not mem["active"]:
            self._fire(
                rule,
                run_id,
                at,
                f"{rule.name}: {rule.spec['metric']} {rule.spec['op']} {rule.spec['value']:g}",
                what,
                trigger,
            )
        mem["active"] = holds

    def _nonfinite(self, rule: Rule, event: Event, name: str, steps: list[int], times: list[float]) -> None:
        for row, raw in enumerate(event.data["values"][name]):
            if isinstance(raw, str):  # "NaN", "Infinity", "-Infinity"
                self._fire(
                    rule,
                    event.run_id,
                    times[row],
                    f"{rule.name}: {name} is {raw}",
                    f"{name} = {raw} at step {steps[row]}",
                    f"{event.seq}:{row}:{name}",
                )
                return  # one alert per batch and metric at most

    def _new_best(self, rule: Rule, value: float, step: int) -> bool:
        """Record ``value`` if it is the best so far (by the rule's goal) and say so."""
        mem = self._mem(rule)
        best = mem["best"]
        maximize = rule.spec.get("goal") == "maximize"
        if best is None or (value > best if maximize else value < best):
            mem["best"], mem["best_step"], mem["active"] = value, step, False
            return True
        return False

    def _divergence(self, rule: Rule, run_id: str, value: float, step: int, at: float, trigger: str) -> None:
        if not math.isfinite(value) or self._new_best(rule, value, step):
            return
        mem = self._mem(rule)
        if step - mem["best_step"] > rule.spec["within_steps"]:
            return  # a slow drift, not a divergence
        best = mem["best"]
        worse = (best - value) if rule.spec.get("goal") == "maximize" else (value - best)
        diverged = worse > 0 and worse >= abs(best) * rule.spec["percent"] / 100
        if diverged and not mem["active"]:
            self._fire(
                rule,
                run_id,
                at,
                f"{rule.name}: {rule.spec['metric']} diverged",
                f"{rule.spec['metric']} = {value:g} at step {step}, worse than its best {best:g} "
                f"(step {mem['best_step']}) by {worse:g}",
                trigger,
            )
        mem["active"] = diverged

    def _patience(self, rule: Rule, run_id: str, value: float, step: int, at: float, trigger: str) -> None:
        if not math.isfinite(value) or self._new_best(rule, value, step):
            return
        mem = self._mem(rule)
        if step - mem["best_step"] >= rule.spec["patience"] and not mem["active"]:
            mem["active"] = True
            self._fire(
                rule,
                run_id,
                at,
                f"{rule.name}: {rule.spec['metric']} stalled",
                f"no improvement on {mem['best']:g} (step {mem['best_step']}) for {step - mem['best_step']} steps",
                trigger,
            )
