"""The sweep controller: the next suggestion of a sweep, from its configuration and what it has seen.

Stateless and plain: the API reads the sweep's runs (``Trial``) and the suggestions already handed
out (``Claim``) and calls ``suggest``; nothing is kept between calls, so any number of API replicas
can answer agents. Grid and random search are the SDK's (``runstream.sweep_config``); bayes is
Optuna's TPE over an in-memory study rebuilt from the trials on every call.

``Hyperband`` (early termination, used by the stream processor) is defined with the configuration
and re-exported here.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runstream.sweep_config import Hyperband, Param, SweepConfig, grid_point, grid_size, sample_random

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = ["Claim", "Done", "Hyperband", "Suggestion", "Trial", "Wait", "suggest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Trial:
    """A run of the sweep: its parameters (flat), state and summary value of the metric (W&B's: the last logged)."""

    run_id: str
    params: Mapping[str, Any]
    state: str  # running, finished, failed, crashed, killed, stopped
    value: float | None = None


@dataclass(frozen=True)
class Claim:
    """A suggestion handed out and not given back."""

    run_id: str
    params: Mapping[str, Any]
    grid_index: int | None = None


@dataclass(frozen=True)
class Suggestion:
    params: dict[str, Any]  # flat
    grid_index: int | None = None


@dataclass(frozen=True)
class Done:
    """No more suggestions: the grid is covered, the run cap or the metric's target is reached."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """Ask again in ``seconds`` (the API's answer while a sweep is paused)."""

    seconds: float
    reason: str


def suggest(
    cfg: SweepConfig, trials: Sequence[Trial], claims: Sequence[Claim], rng_seed: int
) -> Suggestion | Done | Wait:
    """The next suggestion; ``rng_seed`` is the caller's (drawn from the sweep id and the claim count)."""
    if cfg.run_cap is not None and len(claims) >= cfg.run_cap:
        return Done(f"run_cap {cfg.run_cap} reached")
    metric = cfg.metric
    if metric is not None and metric.target is not None:
        for trial in trials:
            if trial.state == "finished" and trial.value is not None and metric.reached(trial.value):
                return Done(f"run {trial.run_id} reached the target: {metric.name} {trial.value:g}")
    if cfg.method == "grid":
        return _grid(cfg, claims)
    if cfg.method == "random":
        # The claim count is mixed in here too: one seed with another number of claims gives another suggestion.
        return Suggestion(sample_random(cfg, random.Random(f"{rng_seed}:{len(claims)}")))
    return _bayes(cfg, trials, claims, rng_seed)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _grid(cfg: SweepConfig, claims: Sequence[Claim]) -> Suggestion | Done:
    """The lowest unclaimed index: found among the first len(claims) + 1, and only that point is computed."""
    size = grid_size(cfg)
    claimed = {c.grid_index for c in claims}
    for index in range(min(size, len(claimed) + 1)):
        if index not in claimed:
            return Suggestion(grid_point(cfg, index), grid_index=index)
    return Done(f"every point of the grid ({size}) is claimed")


# --- bayes -------------------------------------------------------------------------------------


def _optuna_distribution(param: Param) -> BaseDistribution | None:
    """The Optuna distribution TPE searches a parameter in; None for a constant and for the normal
    family and beta, which Optuna has no prior for and are sampled as random search does.

    A categorical is searched by index, so its values may be anything JSON holds (lists, dicts).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    d, lo, hi = param.distribution, param.min, param.max
    if d == "categorical":
        return CategoricalDistribution(list(range(len(param.values))))
    if d == "int_uniform":
        return IntDistribution(int(lo), int(hi))
    if d == "uniform":
        return FloatDistribution(lo, hi)
    if d == "q_uniform":  # searched as the count of q, so no float step has to divide the range
        return IntDistribution(*param.q_range())
    if d in ("log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values"):
        return FloatDistribution(lo, hi, log=True)  # Optuna has no log with step: q is applied after
    # W&B's older forms: the bounds are natural-log exponents (inv_log_uniform draws exp(-u)).
    if d in ("log_uniform", "q_log_uniform"):
        return FloatDistribution(math.exp(lo), math.exp(hi), log=True)
    if d == "inv_log_uniform":
        return FloatDistribution(math.exp(-hi), math.exp(-lo), log=True)
    return None


def _to_optuna(param: Param, dist: BaseDistribution, value: Any) -> Any:
    """A trial's value as Optuna holds it: a categorical's index, a count of q, a number brought inside the range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return param.values.index(value)  # ValueError when not one of the values
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{param.name}: {value!r} is not a number")
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if param.distribution == "q_uniform":
        value /= param.q
    # q rounding may put a value just outside [min, max]; the model only needs it close.
    inside = min(max(value, dist.low), dist.high)
    return round(inside) if isinstance(dist, IntDistribution) else float(inside)


def _from_optuna(param: Param, value: Any) -> Any:
    if param.distribution == "categorical":
        return param.values[value]
    if param.distribution == "q_uniform":
        return param.quantize(value * param.q)
    if param.distribution == "q_log_uniform_values":
        return param.snap(value)
    if param.distribution == "q_log_uniform":
        return param.quantize(value)
    return value


def _bayes(cfg: SweepConfig, trials: Sequence[Trial], claims: Sequence[Claim], rng_seed: int) -> Suggestion:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per trial in the API's log
    assert cfg.metric is not None  # validate requires a metric with bayes
    searched = {name: d for name, p in cfg.params.items() if (d := _optuna_distribution(p)) is not None}
    rng = random.Random(rng_seed)
    flat = {name: p.sample(rng) for name, p in cfg.params.items() if name not in searched}
    if not searched:
        return Suggestion(flat)

    with warnings.catch_warnings():
        # multivariate and constant_liar are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=rng_seed, multivariate=True, constant_liar=True)
    maximize = cfg.metric.goal == "maximize"
    direction = optuna.study.StudyDirection.MAXIMIZE if maximize else optuna.study.StudyDirection.MINIMIZE
    study = optuna.create_study(direction=direction, sampler=sampler)

    def add(params: Mapping[str, Any], state: optuna.trial.TrialState, value: float | None = None) -> None:
        try:
            internal = {n: _to_optuna(cfg.params[n], d, params[n]) for n, d in searched.items()}
            study.add_trial(
                optuna.trial.create_trial(params=internal, distributions=searched, value=value, state=state)
            )
        except (KeyError, ValueError) as exc:  # a run whose parameters are not the sweep's tells the model nothing
            log.debug("sweep trial left out of the model: %s", exc)

    with_value: set[str] = set()
    for trial in trials:
        if _finite(trial.value):
            add(trial.params, optuna.trial.TrialState.COMPLETE, trial.value)
            with_value.add(trial.run_id)
    # Running runs and claims without a value yet are running trials, so constant liar steers away
    # from them (a claim's parameters are the ones handed out); ended runs without a value (failed,
    # crashed) are left out.
    ended = {t.run_id for t in trials if t.state != "running"}
    pending = {t.run_id: t.params for t in trials if t.state == "running"} | {c.run_id: c.params for c in claims}
    for run_id, params in pending.items():
        if run_id not in with_value and run_id not in ended:
            add(params, optuna.trial.TrialState.RUNNING)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        asked = study.ask(searched)
    flat.update({name: _from_optuna(cfg.params[name], v) for name, v in asked.params.items()})
    return Suggestion(dict(sorted(flat.items())))
