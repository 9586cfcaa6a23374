"""runstream.plot's charts and runstream.sklearn's plots logged by the real SDK to a real ``runstream server``
(embedded ClickHouse), read back through ``runstream.Api`` (each chart's JSON file) and the run's media
endpoint (its meta), as the run page reads them.

W&B's behaviour pinned down: ``wandb.log({key: wandb.plot.<chart>(...)})`` stores a chart under the key;
``wandb.sklearn.plot_classifier``/``plot_regressor`` log each chart under wandb's key, one ``log()`` each."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

import runstream
from infra.net import free_port
from runstream.media import Chart
from tests.helpers import Server, unique

QUIET = {"console": False, "system_metrics": False, "git": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("server") / "data", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def api(server: Server) -> runstream.Api:
    return runstream.Api(url=server.url, api_key="")


def _init(server: Server, tmp_path: Path, project: str, run_id: str) -> runstream.Run:
    return runstream.init(
        project=project, id=run_id, dir=tmp_path, settings={**QUIET, "url": server.url, "api_key": ""}
    )


def _charts(api: runstream.Api, path: str, tmp_path: Path) -> dict[str, dict]:
    """The chart the run logged last under each key (read through runstream.Api's files)."""
    latest: dict[str, Any] = {}
    for file in api.run(path).files():
        if file.kind == "media" and file.mimetype == "chart":
            key = file.name.removeprefix("media/charts/").rsplit("_", 2)[0]  # <key>_<step>_<hash>.json
            if key not in latest or file.step > latest[key].step:
                latest[key] = file
    charts = {}
    for key, file in latest.items():
        with file.download(tmp_path / "downloaded", replace=True) as f:
            charts[key] = json.load(f)
    return charts


def _media_entries(server: Server, path: str, key: str) -> list[dict]:
    """The run's media under ``key``, as the run page's media tab asks for them."""
    entity, project, run_id = path.split("/")
    query = urllib.parse.urlencode({"key": key})
    url = f"{server.url}/api/v1/runs/{entity}/{project}/{run_id}/media?{query}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.load(answer)["media"]


def test_every_chart_kind_is_stored_as_its_json_and_read_back(server, api, tmp_path):
    project, run_id = unique("plot"), unique("r")
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 120)
    y_probas = rng.dirichlet(np.ones(3), 120)
    y_probas[np.arange(120), y_true] += 0.5
    table = runstream.Table(columns=["step", "loss", "phase"], data=[[i, 1 / (i + 1), "train"] for i in range(5)])
    built: dict[str, Chart] = {
        "line": runstream.plot.line(table, "step", "loss", stroke="phase", title="Loss"),
        "scatter": runstream.plot.scatter(table, "step", "loss"),
        "bar": runstream.plot.bar(table, "phase", "loss"),
        "histogram": runstream.plot.histogram(table, "loss", title="Losses"),
        "series": runstream.plot.line_series([0, 1, 2], [[1, 2, 3], [3, 2, 1]], keys=["up", "down"]),
        "cm": runstream.plot.confusion_matrix(probs=y_probas, y_true=y_true, class_names=["a", "b", "c"]),
        "pr": runstream.plot.pr_curve(y_true, y_probas, labels=["a", "b", "c"]),
        "roc": runstream.plot.roc_curve(y_true, y_probas),
    }
    run = _init(server, tmp_path, project, run_id)
    for step, (key, chart) in enumerate(built.items()):
        run.log({key: chart, "acc": 0.5}, step=step)
    assert run.finish().unacked_events == 0

    path = f"default/{project}/{run_id}"
    charts = _charts(api, path, tmp_path)
    assert sorted(charts) == sorted(built)
    for key, chart in built.items():
        assert charts[key] == json.loads(chart._encode()[0]), key
        assert charts[key]["spec"]["kind"] == chart.kind
    assert charts["line"]["spec"] == {
        "kind": "line", "title": "Loss", "fields": {"x": "step", "y": "loss", "stroke": "phase"}
    }  # fmt: skip
    assert charts["line"]["data"][1] == [1, 0.5, "train"]
    cm = charts["cm"]
    assert cm["spec"]["class_names"] == ["a", "b", "c"]
    dense = metrics.confusion_matrix(y_true, y_probas.argmax(axis=1))
    assert {(a, p): n for a, p, n in cm["data"]} == {
        ("abc"[i], "abc"[j]): int(dense[i, j]) for i in range(3) for j in range(3) if dense[i, j]
    }
    fpr, tpr, _ = metrics.roc_curve(y_true == 2, y_probas[:, 2])
    assert [r[1:] for r in charts["roc"]["data"] if r[0] == "2"] == np.round(np.column_stack([fpr, tpr]), 3).tolist()
    # What the media tab and a media panel read: the chart's step and meta.
    (entry,) = _media_entries(server, path, "cm")
    assert entry["media_type"] == "chart" and entry["step"] == 5
    meta = {"chart": "confusion_matrix", "title": "Confusion Matrix Curve", "rows": len(cm["data"]), "key": "cm"}
    assert entry["meta"] == meta
    assert api.run(path).summary["acc"] == 0.5


def test_plot_classifier_and_plot_regressor_log_wandbs_charts(server, api, tmp_path):
    project, run_id = unique("sk"), unique("r")
    x, y = make_classification(n_samples=240, n_features=6, n_informative=4, random_state=0)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    model = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0).fit(x_train, y_train)
    y_pred, y_probas = model.predict(x_test), model.predict_proba(x_test)
    xr, yr = make_regression(n_samples=80, n_features=3, noise=4.0, random_state=0)
    regressor = LinearRegression().fit(xr[:60], yr[:60])
    coef_before = regressor.coef_.copy()

    run = _init(server, tmp_path, project, run_id)
    runstream.sklearn.plot_classifier(
        model, x_train, x_test, y_train, y_test, y_pred, y_probas, labels=["no", "yes"],
        model_name="Forest", feature_names=[f"f{i}" for i in range(6)],
    )  # fmt: skip
    runstream.sklearn.plot_regressor(regressor, xr[:60], xr[60:], yr[:60], yr[60:], model_name="Linear")
    with pytest.raises(ValueError, match="plot_roc needs y_probas"):
        runstream.sklearn.plot_roc(y_test)
    with pytest.raises(ValueError, match="fit the LinearRegression before plotting it"):
        runstream.sklearn.plot_summary_metrics(LinearRegression(), xr, yr, xr, yr)
    assert run.finish().unacked_events == 0
    assert np.array_equal(regressor.coef_, coef_before)  # refits happen on copies

    charts = _charts(api, f"default/{project}/{run_id}", tmp_path)
    kinds = {key: chart["spec"]["kind"] for key, chart in charts.items()}
    assert kinds == {
        "feature_importances": "bar", "confusion_matrix": "confusion_matrix", "summary_metrics": "bar",
        "class_proportions": "bar", "calibration_curve": "line", "roc": "roc_curve", "precision_recall": "pr_curve",
        "learning_curve": "line", "outlier_candidates": "bar", "residuals": "scatter",
    }  # fmt: skip
    # summary_metrics is logged twice (classifier, then regressor): the regressor's is the later one.
    importances = {name: value for name, value in charts["feature_importances"]["data"]}
    assert importances == pytest.approx(dict(zip([f"f{i}" for i in range(6)], model.feature_importances_)))
    assert [v for _, v in charts["feature_importances"]["data"]] == sorted(importances.values(), reverse=True)
    cm = charts["confusion_matrix"]
    assert cm["spec"]["class_names"] == ["no", "yes"]
    dense = metrics.confusion_matrix(y_test, y_pred)
    assert {(a, p): n for a, p, n in cm["data"]} == {
        (("no", "yes")[i], ("no", "yes")[j]): int(dense[i, j]) for i in range(2) for j in range(2) if dense[i, j]
    }
    proportions = {label: count for label, _, _, count in charts["class_proportions"]["data"]}
    assert proportions == {
        "no (train)": int((y_train == 0).sum()), "yes (train)": int((y_train == 1).sum()),
        "no (test)": int((y_test == 0).sum()), "yes (test)": int((y_test == 1).sum()),
    }  # fmt: skip
    fpr, tpr, _ = metrics.roc_curve(y_test, y_probas[:, 1])
    assert [r[1:] for r in charts["roc"]["data"] if r[0] == "yes"] == np.round(np.column_stack([fpr, tpr]), 3).tolist()
    assert {r[0] for r in charts["precision_recall"]["data"]} == {"no", "yes"}
    calibration = {r[0] for r in charts["calibration_curve"]["data"]}
    assert calibration == {"Perfectly calibrated", "Logistic", "Forest Isotonic", "Forest Sigmoid"}
    metrics_by_name = {name: value for name, value, _ in charts["summary_metrics"]["data"]}
    assert metrics_by_name == {
        "mae": round(metrics.mean_absolute_error(yr[60:], regressor.predict(xr[60:])), 2),
        "mse": round(metrics.mean_squared_error(yr[60:], regressor.predict(xr[60:])), 2),
        "r2_score": round(metrics.r2_score(yr[60:], regressor.predict(xr[60:])), 2),
    }
    assert {r[0] for r in charts["learning_curve"]["data"]} == {"train", "test"}
    assert len(charts["outlier_candidates"]["data"]) == 60
    assert {r[0] for r in charts["residuals"]["data"]} == {"train", "test"}
