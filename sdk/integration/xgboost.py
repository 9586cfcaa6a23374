"""XGBoost's ``WandbCallback``, with wandb's name, arguments and behaviour.

``from runstream.integration.xgboost import WandbCallback`` replaces wandb's import line; pass it to
``xgb.train(..., callbacks=[WandbCallback()])`` or to the sklearn estimators (``XGBRegressor(callbacks=[...])``).
``xgboost.cv(..., callbacks=[WandbCallback()])`` logs each round's mean and std (``<name>-std``); a cross-validation
has no single booster, so no config, feature importance or model is logged for it.

The callback logs to the run current when it is called (``runstream.init()`` must come before it is made, as with
wandb): it holds no run, so ``sklearn.clone``, ``GridSearchCV`` and ``copy.deepcopy`` copy it, and one kept
across ``finish()`` and a new ``init()`` logs to the new run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import xgboost
import xgboost.callback

import runstream
from runstream.integration._trees import log_feature_importance, summary_goal
from runstream.run import Error, Run

__all__ = ["WandbCallback"]

MINIMIZE_METRICS = ["rmse", "rmsle", "mae", "mape", "mphe", "logloss", "error", "error@t", "merror"]
MAXIMIZE_METRICS = ["auc", "aucpr", "ndcg", "map", "ndcg@n", "map@n"]


class WandbCallback(xgboost.callback.TrainingCallback):
    """Logs an XGBoost training to the current run (wandb's xgboost ``WandbCallback``):

    - the booster's configuration (``save_config()``) as the run's config, before training;
    - each evaluation metric per boosting round, as ``<eval name>-<metric>`` (``validation_0-rmse``), with
      ``epoch`` the round;
    - with ``define_metric`` (default), the summary keeps each metric's best value (min for losses and errors,
      max for auc, ndcg, map) rather than its last;
    - after training: the feature importance (``importance_type``: weight, gain, cover, total_gain, total_cover)
      as a bar chart under ``Feature Importance``, ``best_score`` and ``best_iteration`` when early stopping set
      them, and with ``log_model`` the model as the ``model`` artifact ``<run id>_model.json``.
    """

    def __init__(
        self,
        log_model: bool = False,
        log_feature_importance: bool = True,
        importance_type: str = "gain",
        define_metric: bool = True,
    ) -> None:
        super().__init__()
        _ = self._run  # wandb's check, at once: init() comes first
        self.log_model = log_model
        self.log_feature_importance = log_feature_importance
        self.importance_type = importance_type
        self.define_metric = define_metric
        self._defined: set[str] = set()  # metrics given a summary goal in the run of id() _defined_in
        self._defined_in: int | None = None

    @property
    def _run(self) -> Run:
        if runstream.run is None:
            raise Error("You must call runstream.init() before WandbCallback()")
        return runstream.run

    def before_training(self, model: Any) -> Any:
        if isinstance(model, xgboost.Booster):  # xgboost.cv hands a pack of the folds' boosters: no one config
            # A second fit in the same run logs its own configuration: a changed value is no error.
            self._run.config.update(json.loads(model.save_config()), allow_val_change=True)
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, dict[str, Any]]) -> bool:
        run = self._run
        if self._defined_in != id(run):  # a new run (the callback kept across finish() and init())
            self._defined_in, self._defined = id(run), set()
        row: dict[str, Any] = {}
        for data, metrics in evals_log.items():
            for metric_name, history in metrics.items():
                key = f"{data}-{metric_name}"
                if self.define_metric and key not in self._defined:
                    self._defined.add(key)
                    goal = summary_goal(metric_name, MINIMIZE_METRICS, MAXIMIZE_METRICS)
                    if goal is not None:
                        run.define_metric(key, summary=goal)
                last = history[-1]
                if isinstance(last, tuple):  # xgboost.cv: (mean, std)
                    row[key], row[f"{key}-std"] = float(last[0]), float(last[1])
                else:
                    row[key] = float(last)
        row["epoch"] = epoch
        run.log(row)
        return False  # never asks training to stop

    def after_training(self, model: Any) -> Any:
        if isinstance(model, xgboost.Booster):  # not xgboost.cv's pack of boosters (see before_training)
            if self.log_model:
                self._log_model_as_artifact(model)
            if self.log_feature_importance:
                self._log_feature_importance(model)
        best_score = model.attr("best_score")
        if best_score is not None:
            self._run.log({"best_score": float(best_score), "best_iteration": int(model.attr("best_iteration"))})
        return model

    def _log_model_as_artifact(self, model: Any) -> None:
        run = self._run
        name = f"{run.id}_model.json"
        path = Path(run.dir) / name
        model.save_model(str(path))
        artifact = runstream.Artifact(name, type="model")
        artifact.add_file(path)
        run.log_artifact(artifact)

    def _log_feature_importance(self, model: Any) -> None:
        scores = model.get_score(importance_type=self.importance_type)
        pairs = [(name, value if not isinstance(value, list) else sum(value)) for name, value in scores.items()]
        log_feature_importance(self._run, pairs)
