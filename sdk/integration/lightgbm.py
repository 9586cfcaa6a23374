"""LightGBM's ``wandb_callback`` and ``log_summary``, with wandb's names, arguments and behaviour.

``from runstream.integration.lightgbm import wandb_callback, log_summary`` replaces wandb's import line:
``lgb.train(params, train_set, valid_sets=[...], callbacks=[wandb_callback()])``, then ``log_summary(booster)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm

import runstream
from runstream.integration._trees import log_feature_importance, summary_goal
from runstream.run import Error, Run

__all__ = ["log_summary", "wandb_callback"]

MINIMIZE_METRICS = ["l1", "l2", "rmse", "mape", "huber", "fair", "poisson", "gamma", "binary_logloss"]
MAXIMIZE_METRICS = ["map", "auc", "average_precision"]


def _current_run(what: str) -> Run:
    if runstream.run is None:
        raise Error(f"You must call runstream.init() before {what}()")
    return runstream.run


class _WandbCallback:
    """The callable ``wandb_callback()`` returns; LightGBM calls it after each boosting round."""

    def __init__(self, log_params: bool = True, define_metric: bool = True) -> None:
        self.order = 20  # LightGBM runs its callbacks sorted by `order`; 20 is wandb's (record_evaluation's)
        self.before_iteration = False
        self.log_params = log_params
        self.define_metric_bool = define_metric

    def _init(self, run: Run, env: Any) -> None:
        if self.log_params:
            run.config.update(dict(env.params), allow_val_change=True)
        if not self.define_metric_bool:
            return
        for item in env.evaluation_result_list:
            if len(item) == 4:
                _define_metric(run, item[0], item[1])
            else:  # lightgbm.cv: ("cv_agg", "valid l2", mean, higher_better, stdv)
                data_name, eval_name = item[1].split()
                _define_metric(run, data_name, f"{eval_name}-mean")
                _define_metric(run, data_name, f"{eval_name}-stdv")

    def __call__(self, env: Any) -> None:
        run = _current_run("wandb_callback")
        if env.iteration == env.begin_iteration:
            self._init(run, env)
        row: dict[str, Any] = {}
        for item in env.evaluation_result_list:
            if len(item) == 4:
                data_name, eval_name, result = item[:3]
                row[f"{data_name}_{eval_name}"] = result
            else:
                data_name, eval_name = item[1].split()
                row[f"{data_name}_{eval_name}-mean"] = item[2]
                row[f"{data_name}_{eval_name}-stdv"] = item[4]
        row["iteration"] = env.iteration  # one step per boosting round
        run.log(row)


def _define_metric(run: Run, data_name: str, metric_name: str) -> None:
    # wandb's rule: the summary keeps a metric's best value (min for losses, max for auc...), not its last.
    goal = summary_goal(metric_name, MINIMIZE_METRICS, MAXIMIZE_METRICS)
    if goal is not None:
        run.define_metric(f"{data_name}_{metric_name}", summary=goal)


def wandb_callback(log_params: bool = True, define_metric: bool = True) -> Callable[[Any], None]:
    """A LightGBM callback that logs to the current run (wandb's ``wandb_callback``):

    - ``log_params`` (default): the params given to ``lightgbm.train`` as the run's config;
    - each evaluation metric per round, as ``<valid set name>_<metric>`` (``valid_0_l2``), with ``iteration``;
    - ``define_metric`` (default): the summary keeps each metric's best value rather than its last.
    """
    return _WandbCallback(log_params, define_metric)


def log_summary(model: Any, feature_importance: bool = True, save_model_checkpoint: bool = False) -> None:
    """After training (wandb's ``log_summary``): ``best_iteration`` and ``best_score`` into the summary, the
    feature importance as a bar chart under ``Feature Importance`` and, with ``save_model_checkpoint``, the best
    model as the ``model`` artifact ``model_<run id>`` (alias ``best``)."""
    run = _current_run("log_summary")
    if not isinstance(model, lightgbm.Booster):
        raise Error(
            f"log_summary takes a lightgbm.Booster, got {type(model).__name__} (for the sklearn API pass "
            "estimator.booster_)"
        )
    run.summary["best_iteration"] = model.best_iteration
    # best_score: {valid set: {metric: value}}, nested defaultdicts of OrderedDicts
    run.summary["best_score"] = {data: dict(scores) for data, scores in model.best_score.items()}
    if feature_importance:
        pairs = zip(model.feature_name(), model.feature_importance(), strict=True)
        log_feature_importance(run, pairs, commit=False)
    if save_model_checkpoint:
        _checkpoint_artifact(run, model, model.best_iteration, aliases=["best"])


def _checkpoint_artifact(run: Run, model: Any, iteration: int, aliases: list[str]) -> None:
    path = Path(run.dir) / f"model_ckpt_{iteration}.txt"
    model.save_model(str(path), num_iteration=iteration)
    artifact = runstream.Artifact(f"model_{run.id}", type="model")
    artifact.add_file(path)
    run.log_artifact(artifact, aliases=aliases)
