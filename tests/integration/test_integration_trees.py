"""XGBoost's ``WandbCallback`` and LightGBM's ``wandb_callback``/``log_summary`` training real (tiny) models on
scikit-learn toy data, logging to a real ``runstream server`` (embedded ClickHouse); everything is read back
through ``runstream.Api``.

W&B's behaviour pinned down (wandb/integration/xgboost, wandb/integration/lightgbm): the booster's configuration
(xgboost) or the train params (lightgbm) become the config; each eval metric is logged per round as
``<set>-<metric>`` (xgboost, with ``epoch``) or ``<set>_<metric>`` (lightgbm, with ``iteration``); losses keep
their minimum in the summary (define_metric); the feature importance is a chart under ``Feature Importance``;
``best_score``/``best_iteration`` after early stopping; the model as a ``model`` artifact when asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import make_regression

import runstream
from infra.net import free_port
from runstream.integration.lightgbm import log_summary, wandb_callback
from runstream.integration.xgboost import WandbCallback
from tests.helpers import Server, metric_points, scanned_history, script_env, spooled_events, unique

QUIET = {"console": False, "system_metrics": False, "git": False}
ROUNDS = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = make_regression(n_samples=240, n_features=5, n_informative=3, noise=5.0, random_state=0)
    return x.astype(np.float32), y.astype(np.float32)


def _init(server: Server, tmp_path: Path, project: str, run_id: str) -> runstream.Run:
    return runstream.init(
        project=project, id=run_id, dir=tmp_path, settings={**QUIET, "url": server.url, "api_key": ""}
    )


def _importance(api: runstream.Api, path: str, tmp_path: Path) -> dict[str, float]:
    """The ``Feature Importance`` bar chart the run logged, as {feature: importance}."""
    files = [f for f in api.run(path).files() if f.kind == "media" and "Feature_Importance" in f.name]
    assert [f.mimetype for f in files] == ["chart"]
    assert len(files) == 1, [f.name for f in api.run(path).files()]
    with files[0].download(tmp_path / "downloaded") as f:
        content = json.load(f)
    assert content["spec"] == {
        "kind": "bar", "title": "Feature Importance", "fields": {"label": "Feature", "value": "Importance"}
    }  # fmt: skip
    assert content["columns"] == ["Feature", "Importance"]
    return {name: value for name, value in content["data"]}


def test_xgboost_callback_logs_config_rounds_best_summary_importance_and_the_model(server, api, data, tmp_path):
    x, y = data
    project, run_id = unique("xgb"), unique("r")
    run = _init(server, tmp_path, project, run_id)
    model = xgb.XGBRegressor(
        n_estimators=ROUNDS, max_depth=2, learning_rate=0.3, early_stopping_rounds=3, eval_metric=["rmse", "mae"],
        callbacks=[WandbCallback(log_model=True, importance_type="gain")],
    )  # fmt: skip
    model.fit(x[:180], y[:180], eval_set=[(x[:180], y[:180]), (x[180:], y[180:])], verbose=False)
    assert run.finish().unacked_events == 0

    path = f"default/{project}/{run_id}"
    logged = api.run(path)
    booster = model.get_booster()
    # The booster's configuration (save_config) is the config.
    assert logged.config["learner"]["objective"]["name"] == "reg:squarederror"
    assert float(logged.config["learner"]["gradient_booster"]["tree_train_param"]["max_depth"]) == 2
    # One row per round, with every eval set's metrics and the round as `epoch`.
    evals = model.evals_result()
    rows = [r for r in scanned_history(api, path) if "epoch" in r]
    assert [r["epoch"] for r in rows] == list(range(len(evals["validation_1"]["rmse"])))
    for name in ("validation_0", "validation_1"):
        for metric in ("rmse", "mae"):
            assert [r[f"{name}-{metric}"] for r in rows] == pytest.approx(evals[name][metric])
            # define_metric: rmse and mae are minimised, so the summary keeps the best round's value.
            assert logged.summary[f"{name}-{metric}"] == {"min": pytest.approx(min(evals[name][metric]))}
    # Early stopping's best round.
    assert logged.summary["best_iteration"] == booster.best_iteration
    assert logged.summary["best_score"] == pytest.approx(booster.best_score)
    # The feature importance (gain) of every feature the trees split on.
    assert _importance(api, path, tmp_path) == pytest.approx(booster.get_score(importance_type="gain"))
    # log_model: the model, as a `model` artifact, loads and predicts as the trained one.
    (artifact,) = logged.logged_artifacts()
    assert (artifact.name, artifact.type) == (f"{run_id}_model.json:v0", "model")
    folder = Path(artifact.download(tmp_path / "model"))
    loaded = xgb.Booster(model_file=str(folder / f"{run_id}_model.json"))
    probe = xgb.DMatrix(x[180:])
    assert np.allclose(loaded.predict(probe), booster.predict(probe))


def test_lightgbm_callback_and_log_summary_log_params_rounds_best_importance_and_checkpoint(
    server, api, data, tmp_path
):
    x, y = data
    project, run_id = unique("lgb"), unique("r")
    run = _init(server, tmp_path, project, run_id)
    params = {"objective": "regression", "metric": ["l2", "l1"], "num_leaves": 4, "learning_rate": 0.2, "verbose": -1}
    record: dict = {}
    train, valid = lgb.Dataset(x[:180], y[:180]), lgb.Dataset(x[180:], y[180:])
    booster = lgb.train(
        params, train, num_boost_round=ROUNDS, valid_sets=[valid], valid_names=["valid"],
        callbacks=[wandb_callback(), lgb.record_evaluation(record), lgb.early_stopping(3, verbose=False)],
    )  # fmt: skip
    log_summary(booster, save_model_checkpoint=True)
    assert run.finish().unacked_events == 0

    path = f"default/{project}/{run_id}"
    logged = api.run(path)
    assert logged.config["num_leaves"] == 4 and logged.config["metric"] == ["l2", "l1"]
    rows = [r for r in scanned_history(api, path) if "iteration" in r]
    assert [r["iteration"] for r in rows] == list(range(len(record["valid"]["l2"])))
    for metric in ("l2", "l1"):
        assert [r[f"valid_{metric}"] for r in rows] == pytest.approx(record["valid"][metric])
        assert logged.summary[f"valid_{metric}"] == {"min": pytest.approx(min(record["valid"][metric]))}
    assert logged.summary["best_iteration"] == booster.best_iteration
    assert logged.summary["best_score"] == {"valid": pytest.approx(dict(booster.best_score["valid"]))}
    importance = dict(zip(booster.feature_name(), booster.feature_importance().tolist(), strict=True))
    assert _importance(api, path, tmp_path) == pytest.approx(importance)
    # save_model_checkpoint: the best model, alias `best`, predicts as the trained booster's best iteration.
    (artifact,) = logged.logged_artifacts()
    assert (artifact.name, artifact.type) == (f"model_{run_id}:v0", "model")
    assert set(artifact.aliases) == {"latest", "best"}
    folder = Path(artifact.download(tmp_path / "model"))
    loaded = lgb.Booster(model_file=str(folder / f"model_ckpt_{booster.best_iteration}.txt"))
    assert np.allclose(loaded.predict(x[180:]), booster.predict(x[180:], num_iteration=booster.best_iteration))


def test_misuse_is_a_clear_error(server, tmp_path):
    assert runstream.run is None
    with pytest.raises(runstream.Error, match=r"runstream.init\(\) before WandbCallback"):
        WandbCallback()
    run = _init(server, tmp_path, unique("misuse"), unique("r"))
    try:
        with pytest.raises(runstream.Error, match=r"takes a lightgbm\.Booster, got LGBMRegressor"):
            log_summary(lgb.LGBMRegressor())
    finally:
        run.finish()


def test_the_xgboost_callback_is_cloned_and_logs_to_the_run_current_when_called(data, tmp_path):
    """GridSearchCV clones the estimator (its callbacks deep-copied); a script may keep the callback across
    finish() and a new init(): it holds no run, so each fit logs to the run of its time."""
    from sklearn.base import clone

    x, y = data
    offline = {"mode": "offline", "dir": tmp_path, "settings": QUIET}
    first = runstream.init(project="xgb-clone", **offline)
    estimator = xgb.XGBRegressor(n_estimators=3, max_depth=2, callbacks=[WandbCallback()])
    cloned = clone(estimator)
    assert cloned.callbacks[0] is not estimator.callbacks[0]
    cloned.fit(x, y, eval_set=[(x, y)], verbose=False)
    first.finish()
    second = runstream.init(project="xgb-clone", **offline)
    estimator.fit(x, y, eval_set=[(x, y)], verbose=False)
    second.finish()
    for run in (first, second):
        points = metric_points(spooled_events(run.dir))
        assert [step for step, key, _ in points if key == "validation_0-rmse"] == [0, 1, 2]


def test_xgboost_cv_logs_each_rounds_mean_and_std(data, tmp_path):
    x, y = data
    run = runstream.init(project="xgb-cv", mode="offline", dir=tmp_path, settings=QUIET)
    xgb.cv({"max_depth": 2}, xgb.DMatrix(x, label=y), num_boost_round=3, nfold=2, callbacks=[WandbCallback()])
    run.finish()
    spooled = spooled_events(run.dir)
    points = metric_points(spooled)
    assert [step for step, key, _ in points if key == "test-rmse-std"] == [0, 1, 2]
    assert {key for _, key, _ in points} == {"train-rmse", "train-rmse-std", "test-rmse", "test-rmse-std", "epoch"}
    assert not [e for e in spooled if e.type == "file" and e.data["kind"] == "media"]  # no importance: no booster


# A wandb user's LightGBM script, as wandb's docs write it; switching it is its import lines.
WANDB_SCRIPT = """\
import lightgbm as lgb
from sklearn.datasets import make_regression
import wandb
from wandb.integration.lightgbm import wandb_callback, log_summary

x, y = make_regression(n_samples=200, n_features=4, random_state=1)
wandb.init(project=PROJECT, id=RUN_ID, config={"source": "wandb docs"})
gbm = lgb.train({"objective": "regression", "num_leaves": 4, "verbose": -1}, lgb.Dataset(x[:150], y[:150]),
                num_boost_round=5, valid_sets=[lgb.Dataset(x[150:], y[150:])], callbacks=[wandb_callback()])
log_summary(gbm, save_model_checkpoint=True)
wandb.finish()
"""


def test_a_wandb_lightgbm_script_switches_by_its_import_lines(server, api, tmp_path):
    project, run_id = unique("lgbswitch"), unique("r")
    switched = WANDB_SCRIPT.replace("import wandb\n", "import runstream as wandb\n").replace(
        "from wandb.integration.lightgbm import", "from runstream.integration.lightgbm import"
    )
    changed = [(a, b) for a, b in zip(WANDB_SCRIPT.splitlines(), switched.splitlines(), strict=True) if a != b]
    assert len(changed) == 2  # the two import lines, nothing else
    (tmp_path / "train.py").write_text(f"PROJECT, RUN_ID = {project!r}, {run_id!r}\n" + switched)
    result = subprocess.run(
        [sys.executable, "train.py"], cwd=tmp_path, env=script_env(server.url, tmp_path),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    path = f"default/{project}/{run_id}"
    logged = api.run(path)
    assert logged.state == "finished"
    assert logged.config["source"] == "wandb docs" and logged.config["num_leaves"] == 4
    assert [r["iteration"] for r in scanned_history(api, path) if "iteration" in r] == list(range(5))
    assert set(logged.summary["valid_0_l2"]) == {"min"}
    assert [a.type for a in logged.logged_artifacts()] == ["model"]
