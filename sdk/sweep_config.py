"""A sweep's configuration (W&B's format): load, validate, grid, random sampling and the agent's command line.

Shared by the SDK (the CLI and ``runstream.sweep()`` validate before sending) and the server (which
validates again and runs the controller, ``runstream.streams.sweep_controller``). Pure Python:
PyYAML and the stdlib's ``random`` only, so a training environment needs nothing more.

Validation collects **every** problem, one line each naming its key path
(``parameters.lr.max: must be greater than min (0.1)``), so a user fixes a file in one go.
Nested parameters are flattened to dotted names (``optimizer.lr``); ``nest`` turns them back.

W&B's top-level ``controller`` (``{type: local}``: who runs W&B's controller) is accepted and ignored:
here the server is always the controller.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
#: A grid larger than this is refused: the controller lists it on every suggestion.
MAX_GRID_POINTS = 100_000

_TOP_LEVEL = {
    "program",
    "command",
    "method",
    "metric",
    "parameters",
    "run_cap",
    "early_terminate",
    "name",
    "description",
    "project",
    "entity",
    "controller",
}
# W&B's `impute` keys are accepted (so its files work unchanged) and ignored: a run without a value
# is a trial without a value here.
_METRIC_KEYS = {"name", "goal", "target", "impute", "impute_while_running"}
_HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "eta", "s", "strict"}
# W&B's pattern for a parameter name, with a dot allowed only between segments (a nested name is dotted),
# and '/' allowed too: W&B's server only warns about it, and files written for it use names like `model/lr`.
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_/-]*(?:\.[A-Za-z0-9_/-]+)*$")
# The macros a command's item may be (W&B's), whole; `${envvar:NAME}` may also be part of an item.
_MACROS = (
    "${env}",
    "${interpreter}",
    "${program}",
    "${args}",
    "${args_no_equals}",
    "${args_no_hyphens}",
    "${args_no_boolean_flags}",
    "${args_json}",
    "${args_json_file}",
)
_MACRO = re.compile(r"\$\{[^}]*\}")
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")  # W&B's pattern
# Beyond this many multiples of q, a float bound divided by q is no exact count (and may overflow).
_MAX_Q_STEPS = 2**53
# No Hyperband bracket lies beyond this iteration.
_MAX_BRACKET = 2**31 - 1


class SweepConfigError(ValueError):
    """An invalid sweep configuration; ``problems`` has one line per problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid sweep configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class _Form:
    """A distribution's keys: those it requires and those with a default (W&B's defaults)."""

    required: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    grid: bool = False


# The distributions, at a glance. `constant`, `categorical`, `int_uniform` and `q_uniform` can be
# searched by grid; the `*_values` forms take values as bounds, W&B's older `log_uniform`,
# `inv_log_uniform` and `q_log_uniform` take natural-log exponents.
DISTRIBUTIONS: dict[str, _Form] = {
    "constant": _Form(("value",), grid=True),
    "categorical": _Form(("values",), {"probabilities": None}, grid=True),
    "int_uniform": _Form(("min", "max"), grid=True),
    "uniform": _Form(("min", "max")),
    "q_uniform": _Form(("min", "max"), {"q": 1.0}, grid=True),
    "log_uniform_values": _Form(("min", "max")),
    "q_log_uniform_values": _Form(("min", "max"), {"q": 1.0}),
    "inv_log_uniform_values": _Form(("min", "max")),
    "log_uniform": _Form(("min", "max")),
    "inv_log_uniform": _Form(("min", "max")),
    "q_log_uniform": _Form(("min", "max"), {"q": 1.0}),
    "normal": _Form((), {"mu": 0.0, "sigma": 1.0}),
    "q_normal": _Form((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "log_normal": _Form((), {"mu": 0.0, "sigma": 1.0}),
    "q_log_normal": _Form((), {"mu": 0.0, "sigma": 1.0, "q": 1.0}),
    "beta": _Form((), {"a": 1.0, "b": 1.0}),
    "q_beta": _Form((), {"a": 1.0, "b": 1.0, "q": 1.0}),
}


@dataclass(frozen=True)
class Param:
    """One parameter (its flat, dotted name) and its distribution's arguments; unused arguments keep W&B's defaults."""

    name: str
    distribution: str
    value: Any = None
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float = 0.0
    max: float = 0.0
    q: float = 1.0
    mu: float = 0.0
    sigma: float = 1.0
    a: float = 1.0
    b: float = 1.0

    def sample(self, rng: random.Random) -> Any:
        return _SAMPLERS[self.distribution](self, rng)

    def grid_size(self) -> int | None:
        """How many values a grid search tries, counted without listing them; None when the distribution is continuous."""
        if not DISTRIBUTIONS[self.distribution].grid:
            return None
        if self.distribution == "constant":
            return 1
        if self.distribution == "categorical":
            return len(self.values)
        if self.distribution == "int_uniform":
            return int(self.max) - int(self.min) + 1
        first, last = self.q_range()  # q_uniform
        return last - first + 1

    def grid_value(self, index: int) -> Any:
        """The ``index``-th value a grid search tries (0 <= index < grid_size())."""
        if self.distribution == "constant":
            return self.value
        if self.distribution == "categorical":
            return self.values[index]
        if self.distribution == "int_uniform":
            return int(self.min) + index
        return self.quantize((self.q_range()[0] + index) * self.q)  # q_uniform

    def grid_values(self) -> list[Any] | None:
        """The values a grid search tries, in order; None when the distribution is continuous.
        ValueError when there are more than MAX_GRID_POINTS (never listed)."""
        size = self.grid_size()
        if size is None:
            return None
        if size > MAX_GRID_POINTS:
            raise ValueError(f"{self.name}: its grid has {size} values, more than {MAX_GRID_POINTS}")
        return [self.grid_value(i) for i in range(size)]

    def q_range(self) -> tuple[int, int]:
        """``q_uniform``, ``q_log_uniform_values``: the first and last multiple of ``q`` inside [min, max], in ``q``s."""
        return math.ceil(self.min / self.q - 1e-9), math.floor(self.max / self.q + 1e-9)

    def quantize(self, x: float) -> Any:
        """Round to a multiple of ``q`` (W&B's rule: an int when ``q`` is one), without float noise (0.3, not 0.30000000000000004)."""
        if isinstance(self.q, int):
            return round(x / self.q) * self.q
        return float(f"{round(x / self.q) * self.q:.12g}")

    def snap(self, x: float) -> Any:
        """The nearest multiple of ``q`` inside [min, max] (W&B's rounding could leave the range, even reach 0)."""
        first, last = self.q_range()
        return self.quantize(min(max(round(x / self.q), first), last) * self.q)


def _log_uniform(lo: float, hi: float, rng: random.Random) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


# How each distribution draws a value (W&B's definitions).
_SAMPLERS: dict[str, Callable[[Param, random.Random], Any]] = {
    "constant": lambda p, rng: p.value,
    "categorical": lambda p, rng: rng.choices(p.values, weights=p.probabilities)[0],
    "int_uniform": lambda p, rng: rng.randint(int(p.min), int(p.max)),
    "uniform": lambda p, rng: rng.uniform(p.min, p.max),
    "q_uniform": lambda p, rng: p.snap(rng.uniform(p.min, p.max)),
    "log_uniform_values": lambda p, rng: _log_uniform(p.min, p.max, rng),
    "q_log_uniform_values": lambda p, rng: p.snap(_log_uniform(p.min, p.max, rng)),
    "inv_log_uniform_values": lambda p, rng: 1 / _log_uniform(1 / p.max, 1 / p.min, rng),
    "log_uniform": lambda p, rng: math.exp(rng.uniform(p.min, p.max)),
    "inv_log_uniform": lambda p, rng: math.exp(-rng.uniform(p.min, p.max)),
    "q_log_uniform": lambda p, rng: p.quantize(math.exp(rng.uniform(p.min, p.max))),
    "normal": lambda p, rng: rng.gauss(p.mu, p.sigma),
    "q_normal": lambda p, rng: p.quantize(rng.gauss(p.mu, p.sigma)),
    "log_normal": lambda p, rng: math.exp(rng.gauss(p.mu, p.sigma)),
    "q_log_normal": lambda p, rng: p.quantize(math.exp(rng.gauss(p.mu, p.sigma))),
    "beta": lambda p, rng: rng.betavariate(p.a, p.b),
    "q_beta": lambda p, rng: p.quantize(rng.betavariate(p.a, p.b)),
}


@dataclass(frozen=True)
class Metric:
    name: str
    goal: str = "minimize"
    target: float | None = None

    def reached(self, value: float) -> bool:
        """Whether ``value`` meets the target (W&B: the sweep finishes once any run does)."""
        if self.target is None:
            return False
        return value <= self.target if self.goal == "minimize" else value >= self.target


@dataclass(frozen=True)
class Hyperband:
    """Hyperband early termination (W&B's): where the brackets are, and whether a run is stopped at one.

    Lives here (not with the controller) because it is part of the validated configuration; the
    stream processor imports it from ``runstream.streams.sweep_controller``.
    """

    metric: str
    eta: float = 3
    min_iter: int | None = None
    max_iter: int | None = None
    s: int = 3  # used with max_iter only (W&B)
    strict: bool = True  # W&B's default since 2024

    def brackets(self) -> list[int]:
        """The iterations (numbers of finite logged values) at which runs are compared, ascending (W&B's).

        ``max_iter``: divided by ``eta`` ``s`` times, each result rounded down, stopping below 1.
        ``min_iter``: multiplied by ``eta`` 99 times (100 brackets, ``s`` is not used), each rounded
        down; those past 2**31 - 1 dropped.
        """
        found: set[int] = set()
        if self.max_iter is not None:
            band = float(self.max_iter)
            for _ in range(self.s):
                band /= self.eta
                if band < 1:
                    break
                found.add(int(band))
        else:
            assert self.min_iter is not None
            band = float(self.min_iter)
            for _ in range(100):
                if band > _MAX_BRACKET:
                    break
                found.add(int(band))
                band *= self.eta
        return sorted(found)

    def should_stop(
        self,
        value: float,
        others: Sequence[float],
        goal: str,
        *,
        best: float | None = None,
        iteration: int | None = None,
    ) -> str | None:
        """Why a run whose value at a bracket is ``value`` is stopped, or None to let it go on (W&B's rule).

        ``others``: the values the sweep's other runs had at the same bracket (not this run's own).
        The cut: of the n values at the bracket (this run's ``value`` included), ranked best first, the
        one at index ``int(n / eta)``. The run is stopped when its judged value is worse than the cut:
        with ``strict`` (the default) its ``value`` at the bracket; without, ``best``, its best value up
        to the bracket (``value`` when not given). Non-finite values are left out (W&B filters them
        from the history), so a run alone at a bracket is never stopped.
        """
        by_best = not self.strict and best is not None
        judged = best if by_best and best is not None else value
        if not (math.isfinite(value) and math.isfinite(judged)):
            return None
        ranked = sorted([v for v in others if math.isfinite(v)] + [value], reverse=goal == "maximize")
        n = len(ranked)
        cut = ranked[int(n / self.eta)]
        if not (judged > cut if goal == "minimize" else judged < cut):
            return None
        if by_best:
            what = f"{self.metric}'s best {judged:g}" + (f" up to iteration {iteration}" if iteration else "")
        else:
            what = f"{self.metric} {value:g}" + (f" at iteration {iteration}" if iteration else "")
        return f"{what} is worse than the bracket's cut {cut:g} (top 1/{self.eta:g} of {n} runs)"


@dataclass(frozen=True)
class SweepConfig:
    method: str
    params: dict[str, Param]  # flat names, sorted: the order of grid points and command-line arguments
    metric: Metric | None = None
    program: str | None = None
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    run_cap: int | None = None
    early_terminate: Hyperband | None = None
    name: str | None = None
    description: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


# --- loading -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; W&B users write it as a number, so read it as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A configuration from a YAML or JSON file (JSON is YAML) or a mapping; raises SweepConfigError if unreadable."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepConfigError([f"{source}: cannot read ({exc.strerror or exc})"]) from exc
    try:
        loaded = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SweepConfigError([f"{source}: not valid YAML or JSON ({exc})"]) from exc
    if not isinstance(loaded, dict):
        raise SweepConfigError([f"{source}: must be a mapping of keys (method, parameters, ...)"])
    return loaded


# --- validation --------------------------------------------------------------------------------


def _is_number(x: object) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond any float (YAML and JSON allow one)
        return False


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate(config: Mapping[str, Any]) -> SweepConfig:
    """The validated configuration, or SweepConfigError listing every problem found."""
    if not isinstance(config, Mapping):
        raise SweepConfigError([f"the configuration must be a mapping, not {type(config).__name__}"])
    problems: list[str] = []
    for key in config:
        if key not in _TOP_LEVEL:
            problems.append(f"{key}: unknown key (allowed: {', '.join(sorted(_TOP_LEVEL))})")

    method = config.get("method")
    if method is None:
        problems.append(f"method: required ({', '.join(METHODS)})")
    elif method not in METHODS:
        problems.append(f"method: must be one of {', '.join(METHODS)}, not {method!r}")

    metric = _metric(config.get("metric"), problems) if "metric" in config else None
    if "metric" not in config:
        if method == "bayes":
            problems.append("metric: required with method bayes")
        if "early_terminate" in config:
            problems.append("metric: required with early_terminate")

    params: dict[str, Param] = {}
    if "parameters" not in config:
        problems.append("parameters: required")
    else:
        _parameters(config["parameters"], "parameters", "", params, problems)
    params = dict(sorted(params.items()))
    if method == "grid":
        _check_grid(params, problems)

    for key in ("program", "name", "description", "project", "entity"):
        if key in config and not isinstance(config[key], str):
            problems.append(f"{key}: must be a string")
    command = config.get("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        problems.append("command: must be a non-empty list of strings")
    else:
        problems += _command_problems(command)
    if "controller" in config and not isinstance(config["controller"], Mapping):
        problems.append("controller: must be a mapping such as {type: local} (it is ignored)")
    run_cap = config.get("run_cap")
    if run_cap is not None and not (_is_int(run_cap) and run_cap > 0):
        problems.append(f"run_cap: must be a positive integer, not {run_cap!r}")
    hyperband = (
        _hyperband(config["early_terminate"], metric.name if metric else "", problems)
        if "early_terminate" in config
        else None
    )

    if problems:
        raise SweepConfigError(problems)
    assert isinstance(method, str)
    return SweepConfig(
        method=method,
        params=params,
        metric=metric,
        program=config.get("program"),
        command=list(command),
        run_cap=run_cap,
        early_terminate=hyperband,
        name=config.get("name"),
        description=config.get("description"),
        raw=copy.deepcopy(dict(config)),
    )


def _command_problems(command: Sequence[str]) -> list[str]:
    """A macro is expanded only as a whole item (W&B's rule; ``${envvar:NAME}`` anywhere): any other
    ``${...}`` would reach the program as written (W&B drops an unknown one silently), so it is refused."""
    problems = []
    for i, item in enumerate(command):
        for macro in _MACRO.findall(_ENVVAR.sub("", item)):
            if macro not in _MACROS:
                problems.append(f"command[{i}]: unknown macro {macro} (known: {', '.join(_MACROS)}, ${{envvar:NAME}})")
            elif item != macro:
                problems.append(f"command[{i}]: {macro} must be a whole item to be expanded, not part of {item!r}")
    return problems


def _metric(spec: object, problems: list[str]) -> Metric | None:
    if not isinstance(spec, Mapping):
        problems.append("metric: must be a mapping {name, goal, target}")
        return None
    before = len(problems)
    for key in spec:
        if key not in _METRIC_KEYS:
            problems.append(f"metric.{key}: unknown key (allowed: name, goal, target)")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        problems.append("metric.name: required, a non-empty string")
    goal = spec.get("goal", "minimize")
    if goal not in GOALS:
        problems.append(f"metric.goal: must be minimize or maximize, not {goal!r}")
    target = spec.get("target")
    if target is not None and not _is_number(target):
        problems.append(f"metric.target: must be a number, not {target!r}")
    if len(problems) > before:
        return None
    return Metric(name=str(name), goal=str(goal), target=target)


def _parameters(spec: object, path: str, prefix: str, out: dict[str, Param], problems: list[str]) -> None:
    if not isinstance(spec, Mapping) or not spec:
        problems.append(f"{path}: must be a non-empty mapping of parameter names")
        return
    for name, param in spec.items():
        key_path = f"{path}.{name}"
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            problems.append(
                f"{key_path}: not a valid parameter name (a letter or '_', then letters, digits, '_', '-', '/', dots between)"
            )
            continue
        flat = prefix + name
        if not isinstance(param, Mapping):
            problems.append(f"{key_path}: must be a mapping (value, values, min/max, distribution or parameters)")
        elif "parameters" in param:
            if len(param) > 1:
                problems.append(f"{key_path}: a nested parameter has only the key parameters")
            _parameters(param["parameters"], f"{key_path}.parameters", flat + ".", out, problems)
        elif (made := _param(flat, param, key_path, problems)) is not None:
            clash = [n for n in out if n == flat or n.startswith(flat + ".") or flat.startswith(n + ".")]
            if clash:
                problems.append(f"{key_path}: its dotted name {flat!r} clashes with {clash[0]!r}")
            else:
                out[flat] = made


def _infer(spec: Mapping[str, Any]) -> str | None:
    """W&B's inference when ``distribution`` is absent."""
    if "values" in spec:
        return "categorical"
    if "value" in spec:
        return "constant"
    if "min" in spec and "max" in spec:
        return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
    return None


def _param(name: str, spec: Mapping[str, Any], path: str, problems: list[str]) -> Param | None:
    before = len(problems)
    distribution = spec.get("distribution")
    if distribution is None:
        distribution = _infer(spec)
        if distribution is None:
            problems.append(f"{path}: cannot tell the distribution: give value, values, min and max, or distribution")
            return None
    elif distribution == "categorical_w_probabilities":  # W&B's name for categorical with probabilities
        distribution = "categorical"
    if distribution not in DISTRIBUTIONS:
        problems.append(f"{path}.distribution: unknown {distribution!r} (known: {', '.join(DISTRIBUTIONS)})")
        return None
    form = DISTRIBUTIONS[distribution]
    args = {**form.defaults, **{k: v for k, v in spec.items() if k != "distribution"}}
    for key in spec:
        if key != "distribution" and key not in form.required and key not in form.defaults:
            problems.append(f"{path}.{key}: not an argument of {distribution} (it takes {_takes(form)})")
    for key in form.required:
        if key not in spec:
            problems.append(f"{path}.{key}: required by {distribution}")
    if len(problems) > before:
        return None

    def bad(key: str, why: str) -> None:
        problems.append(f"{path}.{key}: {why}")

    for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if key in args and not _is_number(args[key]):
            bad(key, f"must be a number, not {args[key]!r}")
    if len(problems) > before:
        return None
    if distribution == "int_uniform":
        for key in ("min", "max"):
            if not _is_int(args[key]):
                bad(key, f"must be an integer for int_uniform, not {args[key]!r}")
    if "min" in args and args["max"] <= args["min"]:
        bad("max", f"must be greater than min ({args['min']})")
    if distribution in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and args["min"] <= 0:
        bad("min", f"must be greater than 0 for {distribution}")
    if args.get("q", 1) <= 0:
        bad("q", "must be greater than 0")
    if args.get("sigma", 1) < 0:
        bad("sigma", "must not be negative")
    for key in ("a", "b"):
        if args.get(key, 1) <= 0:
            bad(key, "must be greater than 0")
    if distribution == "categorical":
        _categorical(args, bad)
    if len(problems) > before:
        return None
    quantized_range = distribution in ("q_uniform", "q_log_uniform_values")
    if quantized_range and max(abs(args["min"]), abs(args["max"])) / args["q"] > _MAX_Q_STEPS:
        bad("q", f"too small for min and max: they lie beyond 2**53 multiples of {args['q']}")
        return None
    arguments: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    made = Param(name=name, distribution=distribution, **arguments)
    if quantized_range and made.q_range()[0] > made.q_range()[1]:
        bad("q", f"no multiple of {made.q} lies between min and max")
        return None
    return made


def _categorical(args: Mapping[str, Any], bad: Callable[[str, str], None]) -> None:
    values, probabilities = args["values"], args["probabilities"]
    if not isinstance(values, list) or not values:
        bad("values", "must be a non-empty list")
        return
    if probabilities is None:
        return
    if not isinstance(probabilities, list) or not all(_is_number(p) and p >= 0 for p in probabilities):
        bad("probabilities", "must be a list of numbers, none negative")
    elif len(probabilities) != len(values):
        bad("probabilities", f"has {len(probabilities)} items, values has {len(values)}")
    elif not math.isclose(sum(probabilities), 1.0, abs_tol=1e-3):
        bad("probabilities", f"must sum to 1, not {sum(probabilities):g}")


def _takes(form: _Form) -> str:
    keys = [*form.required, *form.defaults]
    return ", ".join(keys) if keys else "no arguments"


def _check_grid(params: Mapping[str, Param], problems: list[str]) -> None:
    """Grid problems, from each parameter's count of values: nothing is listed, so a huge range costs nothing."""
    size = 1
    for name, param in params.items():
        count = param.grid_size()
        if count is None:
            problems.append(
                f"parameters.{name}: {param.distribution} cannot be searched by grid "
                "(use value, values, int_uniform or q_uniform)"
            )
        elif param.probabilities is not None:
            problems.append(f"parameters.{name}.probabilities: not allowed with method grid")
        elif count > MAX_GRID_POINTS:
            problems.append(f"parameters.{name}: its grid has {count} values, more than {MAX_GRID_POINTS}")
            size = 0  # the whole grid's size says nothing more
        else:
            size *= count
    if size > MAX_GRID_POINTS:
        problems.append(f"parameters: the grid has {size} points, more than {MAX_GRID_POINTS}")


def _hyperband(spec: object, metric: str, problems: list[str]) -> Hyperband | None:
    if not isinstance(spec, Mapping):
        problems.append("early_terminate: must be a mapping {type: hyperband, min_iter or max_iter, ...}")
        return None
    before = len(problems)
    for key in spec:
        if key not in _HYPERBAND_KEYS:
            problems.append(f"early_terminate.{key}: unknown key (allowed: {', '.join(sorted(_HYPERBAND_KEYS))})")
    if spec.get("type") != "hyperband":
        problems.append(f"early_terminate.type: must be hyperband, not {spec.get('type')!r}")
    if "min_iter" not in spec and "max_iter" not in spec:
        problems.append("early_terminate: give min_iter or max_iter")
    for key in ("min_iter", "max_iter", "s"):
        if key in spec and not (_is_int(spec[key]) and spec[key] >= 1):
            problems.append(f"early_terminate.{key}: must be an integer of at least 1, not {spec[key]!r}")
    eta = spec.get("eta", 3)
    if not (_is_number(eta) and eta > 1):
        problems.append(f"early_terminate.eta: must be a number greater than 1, not {eta!r}")
    if not isinstance(spec.get("strict", False), bool):
        problems.append("early_terminate.strict: must be true or false")
    if len(problems) > before:
        return None
    # With both given, max_iter wins (W&B); s (default 3) counts max_iter's brackets, and min_iter's
    # are always W&B's 100, whatever s says.
    max_iter = spec.get("max_iter")
    hyperband = Hyperband(
        metric=metric,
        eta=eta,
        min_iter=None if max_iter is not None else spec["min_iter"],
        max_iter=max_iter,
        s=spec.get("s", 3) if max_iter is not None else 3,
        strict=spec.get("strict", True),
    )
    if not hyperband.brackets():
        problems.append("early_terminate.max_iter: max_iter / eta is below 1, so there is no bracket")
        return None
    return hyperband


# --- using a configuration ---------------------------------------------------------------------


def grid_size(cfg: SweepConfig) -> int:
    """How many points the grid has, counted without listing them (0 when a parameter is continuous)."""
    return math.prod(param.grid_size() or 0 for param in cfg.params.values())


def grid_point(cfg: SweepConfig, index: int) -> dict[str, Any]:
    """The ``index``-th point of ``grid_points`` (0 <= index < grid_size), computed alone."""
    point: dict[str, Any] = {}
    for name, param in reversed(cfg.params.items()):  # the last parameter varies fastest
        index, i = divmod(index, param.grid_size() or 0)
        point[name] = param.grid_value(i)
    return dict(reversed(point.items()))


def grid_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the grid's values once, flat, in a fixed order (the last parameter varies fastest).
    ValueError when the grid has more than MAX_GRID_POINTS (never listed)."""
    size = grid_size(cfg)
    if size > MAX_GRID_POINTS:
        raise ValueError(f"the grid has {size} points, more than {MAX_GRID_POINTS}")
    names = list(cfg.params)
    columns = [cfg.params[n].grid_values() or [] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in product(*columns)]


def sample_random(cfg: SweepConfig, rng: random.Random) -> dict[str, Any]:
    """One random suggestion, flat."""
    return {name: param.sample(rng) for name, param in cfg.params.items()}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": 2}`` -> ``{"a": {"b": 1}, "c": 2}``; ValueError when a name is both a value and a group."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *groups, leaf = name.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name!r}: {group!r} is both a value and a group")
        if leaf in node:
            raise ValueError(f"{name!r}: given twice, or both a value and a group")
        node[leaf] = value
    return nested


def _arg(value: Any) -> str:
    """A value on the command line: Python's spelling for scalars (W&B's ``True``), JSON for lists and dicts."""
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)


def build_command(
    cfg: SweepConfig,
    flat_params: Mapping[str, Any],
    *,
    interpreter: str,
    program: str | None = None,
    args_json_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """The agent's command line: ``cfg.command`` with its macros expanded (W&B's, each a whole item).

    ``${args}`` and its variants use the flat (dotted) names, which argparse and Hydra both read;
    ``${args_json}`` is one item, the nested parameters as JSON; ``${args_json_file}`` is the path
    ``args_json_file`` of a file holding that JSON, which the caller (the agent) writes.
    ``${envvar:NAME}`` anywhere in an item becomes ``environ[NAME]`` (NAME itself when unset, as
    W&B does); without ``environ`` it is left as written (the server must not fill in its own).
    ValueError when ``${program}`` or ``${args_json_file}`` is used and there is none.
    """
    program = program if program is not None else cfg.program
    items = list(flat_params.items())
    macros: dict[str, Callable[[], list[str]]] = {
        "${env}": lambda: ["/usr/bin/env"],
        "${interpreter}": lambda: [interpreter],
        "${program}": lambda: [_require(program, "${program}", "the configuration has no program")],
        "${args}": lambda: [f"--{k}={_arg(v)}" for k, v in items],
        "${args_no_equals}": lambda: [part for k, v in items for part in (f"--{k}", _arg(v))],
        "${args_no_hyphens}": lambda: [f"{k}={_arg(v)}" for k, v in items],
        "${args_json}": lambda: [json.dumps(nest(flat_params))],
        "${args_json_file}": lambda: [_require(args_json_file, "${args_json_file}", "no file was given")],
        # W&B: a true boolean is a bare flag, a false one is left out.
        "${args_no_boolean_flags}": lambda: [
            f"--{k}" if v is True else f"--{k}={_arg(v)}" for k, v in items if v is not False
        ],
    }
    command: list[str] = []
    for item in cfg.command:
        if item in macros:
            command.extend(macros[item]())
        elif environ is not None:
            command.append(_ENVVAR.sub(lambda m: environ.get(m.group(1), m.group(1)), item))
        else:
            command.append(item)
    return command


def _require(value: str | None, macro: str, why: str) -> str:
    if not value:
        raise ValueError(f"the sweep's command uses {macro} but {why}")
    return value
