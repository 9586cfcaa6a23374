"""runstream.plot's charts as pure logic: the JSON each chart stores, its values against scikit-learn's
(confusion_matrix, precision_recall_curve, roc_curve), its limits and its errors.

W&B's behaviour pinned down: the signatures and defaults of wandb/plot/*.py; confusion_matrix's class naming
(``Class_1``... without class_names, indices into class_names with them); pr_curve's interpolation (monotone
precision read at ``interp_size`` recall values); rounding to 3 places."""

from __future__ import annotations

import inspect
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn import metrics

import runstream
from runstream import media, plot
from runstream.media import Chart, Table


def _content(chart: Chart) -> dict:
    blob, ext, meta = chart._encode()
    assert ext == "json" and meta == {"chart": chart.kind, "title": chart.title, "rows": len(chart.data)}
    return orjson.loads(blob)


# -- wandb's signatures --------------------------------------------------------------

SIGNATURES = {
    "line": "(table, x, y, stroke=None, title='', split_table=False)",
    "scatter": "(table, x, y, title='', split_table=False)",
    "bar": "(table, label, value, title='', split_table=False)",
    "histogram": "(table, value, title='', split_table=False)",
    "line_series": "(xs, ys, keys=None, title='', xname='x', split_table=False)",
    "confusion_matrix": (
        "(probs=None, y_true=None, preds=None, class_names=None, title='Confusion Matrix Curve', split_table=False)"
    ),
    "pr_curve": (
        "(y_true=None, y_probas=None, labels=None, classes_to_plot=None, interp_size=21, "
        "title='Precision-Recall Curve', split_table=False)"
    ),
    "roc_curve": (
        "(y_true=None, y_probas=None, labels=None, classes_to_plot=None, title='ROC Curve', split_table=False)"
    ),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_every_chart_function_has_wandbs_signature(name):
    signature = inspect.signature(getattr(plot, name))
    bare = signature.replace(
        parameters=[p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    assert str(bare) == SIGNATURES[name]
    assert runstream.plot is plot  # import runstream as wandb; wandb.plot.line(...)


# -- charts of a table -----------------------------------------------------------------


def test_line_scatter_bar_histogram_store_their_roles_columns_and_rows():
    table = Table(columns=["step", "loss", "run"], data=[[0, 1.5, "a"], [1, float("nan"), "a"], [0, 2.0, "b"]])
    assert _content(plot.line(table, "step", "loss", stroke="run", title="Loss")) == {
        "spec": {"kind": "line", "title": "Loss", "fields": {"x": "step", "y": "loss", "stroke": "run"}},
        "columns": ["step", "loss", "run"],
        "data": [[0, 1.5, "a"], [1, None, "a"], [0, 2.0, "b"]],  # NaN is an empty cell
    }
    assert _content(plot.line(table, "step", "loss"))["spec"]["fields"] == {"x": "step", "y": "loss"}
    assert _content(plot.scatter(table, "step", "loss"))["spec"] == {
        "kind": "scatter", "title": "", "fields": {"x": "step", "y": "loss"}
    }  # fmt: skip
    bars = plot.bar(Table(columns=["name", "n"], data=[["cat", 3], ["dog", 5]]), "name", "n", title="Pets")
    assert _content(bars) == {
        "spec": {"kind": "bar", "title": "Pets", "fields": {"label": "name", "value": "n"}},
        "columns": ["name", "n"],
        "data": [["cat", 3], ["dog", 5]],
    }
    hist = plot.histogram(Table(columns=["v"], data=[[0.5], [0.25]]), "v", split_table=True)
    assert _content(hist)["spec"] == {"kind": "histogram", "title": "", "fields": {"value": "v"}}


def test_a_chart_copies_the_table_as_it_was():
    table = Table(columns=["x", "y"], data=[[0, 1]])
    chart = plot.line(table, "x", "y")
    table.add_data(1, 2)
    table.data[0][1] = 99
    assert _content(chart)["data"] == [[0, 1]]


def test_a_dataframe_is_taken_as_a_table():
    df = pd.DataFrame({"x": [1, 2], "y": [0.5, np.nan]})
    assert _content(plot.scatter(df, "x", "y"))["data"] == [[1, 0.5], [2, None]]


def test_table_charts_refuse_what_they_cannot_draw():
    table = Table(columns=["x", "y", "name"], data=[[0, 1.0, "a"], [1, "high", "b"]])
    with pytest.raises(ValueError, match=r"x='step' is not a column of the table \['x', 'y', 'name'\]"):
        plot.line(table, "step", "y")
    with pytest.raises(ValueError, match="column 'y' must hold numbers, row 1 holds 'high'"):
        plot.scatter(table, "x", "y")
    with pytest.raises(ValueError, match="column 'name' must hold numbers"):
        plot.bar(table, "x", "name")
    with pytest.raises(TypeError, match=r"takes a runstream.Table \(wandb.Table\) or a pandas DataFrame, got list"):
        plot.histogram([[1], [2]], "x")
    with pytest.raises(ValueError, match="must hold numbers, row 0 holds True"):
        plot.histogram(Table(columns=["flag"], data=[[True]]), "flag")


def test_line_and_scatter_past_the_row_limit_keep_an_evenly_spread_subset(caplog):
    rows = plot.MAX_CHART_ROWS + 2_500
    table = Table(columns=["x", "y"], data=np.column_stack([np.arange(rows), np.arange(rows) * 2.0]))
    with caplog.at_level(logging.WARNING, logger="runstream"):
        chart = plot.line(table, "x", "y")
    assert f"the table has {rows} rows, more than a chart holds ({plot.MAX_CHART_ROWS})" in caplog.text
    xs = [row[0] for row in _content(chart)["data"]]
    assert len(xs) == plot.MAX_CHART_ROWS and xs[0] == 0 and xs[-1] == rows - 1
    gaps = np.diff(xs)
    assert gaps.min() >= 1 and gaps.max() <= 2  # even: no stretch of the table is dropped
    assert chart._encode()[2]["rows"] == plot.MAX_CHART_ROWS


def test_bar_and_histogram_past_the_row_limit_are_refused(monkeypatch):
    monkeypatch.setattr(plot, "MAX_CHART_ROWS", 10)
    table = Table(columns=["label", "value"], data=[[str(i), i] for i in range(11)])
    with pytest.raises(ValueError, match=r"11 rows, more than a chart holds \(10\); aggregate"):
        plot.bar(table, "label", "value")
    with pytest.raises(ValueError, match=r"numpy\.histogram and log runstream\.Histogram"):
        plot.histogram(table, "value")
    assert len(plot.bar(Table(columns=["l", "v"], data=[["a", 1]] * 10), "l", "v").data) == 10


def test_line_series_with_one_shared_x_or_one_x_per_line():
    chart = plot.line_series([0, 1, 2], [[1, 2, 3], np.array([4.0, np.nan, 6.0])], title="T", xname="epoch")
    assert _content(chart) == {
        "spec": {
            "kind": "line_series", "title": "T", "xname": "epoch",
            "fields": {"x": "step", "y": "lineVal", "stroke": "lineKey"},
        },
        "columns": ["lineKey", "lineVal", "step"],
        "data": [
            ["line_0", 1, 0], ["line_0", 2, 1], ["line_0", 3, 2],
            ["line_1", 4.0, 0], ["line_1", None, 1], ["line_1", 6.0, 2],
        ],
    }  # fmt: skip
    # One x per line; lines of different lengths; x and y paired as zip pairs them (wandb).
    chart = plot.line_series(np.array([[0, 1], [0, 2]]), [[5, 6], [7, 8, 9]], keys=["a", "b"])
    assert _content(chart)["data"] == [["a", 5, 0], ["a", 6, 1], ["b", 7, 0], ["b", 8, 2]]
    with pytest.raises(ValueError, match=r"number of keys \(1\) must match y-series \(2\)"):
        plot.line_series([0, 1], [[1, 2], [3, 4]], keys=["only"])
    with pytest.raises(ValueError, match=r"number of x-series \(3\) must match y-series \(2\)"):
        plot.line_series([[0], [1], [2]], [[1], [2]])
    with pytest.raises(ValueError, match="column 'lineVal' must hold numbers"):
        plot.line_series([0], [["a"]])


def test_line_series_past_the_row_limit_keeps_each_lines_ends(monkeypatch, caplog):
    monkeypatch.setattr(plot, "MAX_CHART_ROWS", 20)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        chart = plot.line_series(list(range(100)), [list(range(100)), list(range(100, 200))])
    assert "each line keeps at most 10 evenly spread points" in caplog.text
    data = _content(chart)["data"]
    assert len(data) == 20
    assert [r[2] for r in data if r[0] == "line_0"][::9] == [0, 99] and data[10][1] == 100


def test_plot_table_maps_wandbs_preset_specs():
    table = Table(columns=["a", "b"], data=[[1, 2]])
    chart = plot.plot_table("wandb/line/v0", table, {"x": "a", "y": "b"}, {"title": "T"})
    assert chart.spec == {"kind": "line", "title": "T", "fields": {"x": "a", "y": "b"}}
    with pytest.raises(ValueError, match="runstream draws its own chart kinds, not Vega specs"):
        plot.plot_table("me/custom/v1", table, {"x": "a"})
    with pytest.raises(ValueError, match=r"needs fields \['label', 'value'\]"):
        plot.plot_table("wandb/bar/v0", table, {"label": "a"})


def test_the_chart_class_checks_its_kind_and_fields_and_is_logged_alone():
    with pytest.raises(ValueError, match="chart kind must be one of line, scatter"):
        Chart("pie", ["a"], [], {})
    with pytest.raises(ValueError, match=r"fields \{'y': 'b'\} name no column"):
        Chart("line", ["a"], [], {"x": "a", "y": "b"})
    chart = plot.bar(Table(columns=["l", "v"], data=[["a", np.int64(3)]]), "l", "v")
    assert media.to_media(chart) is chart and chart.media_type == "chart"
    assert _content(chart)["data"] == [["a", 3]]
    with pytest.raises(TypeError, match="list of Chart"):
        media.sequence_to_media("charts", [chart, chart])


def test_a_chart_past_the_media_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(media, "MAX_MEDIA_BYTES", 1000)
    table = Table(columns=["l", "v"], data=[["x" * 100, i] for i in range(20)])
    with pytest.raises(ValueError, match=r"runstream\.plot\.bar: the chart's JSON is .* over the 0 MiB limit"):
        plot.bar(table, "l", "v")


# -- confusion matrix -----------------------------------------------------------------


def _dense(chart: Chart) -> np.ndarray:
    """The matrix a confusion chart's sparse cells stand for, in spec.class_names order."""
    content = _content(chart)
    names = content["spec"]["class_names"]
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for actual, predicted, count in content["data"]:
        assert count > 0  # only the non-zero cells are stored
        matrix[index[actual], index[predicted]] = count
    return matrix


def test_confusion_matrix_from_preds_or_probs_matches_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 5, 400)
    probs = rng.random((400, 5))
    preds = probs.argmax(axis=1)
    expected = metrics.confusion_matrix(y_true, preds, labels=range(5))
    by_preds = plot.confusion_matrix(y_true=y_true, preds=preds, class_names=list("abcde"), title="CM")
    assert np.array_equal(_dense(by_preds), expected)
    content = _content(by_preds)
    assert content["spec"] == {
        "kind": "confusion_matrix", "title": "CM", "class_names": ["a", "b", "c", "d", "e"],
        "fields": {"actual": "Actual", "predicted": "Predicted", "count": "nPredictions"},
    }  # fmt: skip
    assert content["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert content["data"] == sorted(content["data"], key=lambda r: (r[0], r[1]))  # by actual, then predicted
    by_probs = plot.confusion_matrix(probs=probs, y_true=y_true.tolist(), class_names=list("abcde"))
    assert np.array_equal(_dense(by_probs), expected)


def test_confusion_matrix_without_class_names_names_the_sorted_labels_as_wandb():
    chart = plot.confusion_matrix(y_true=["dog", "cat", "cat"], preds=["cat", "cat", "owl"])
    assert chart.spec["class_names"] == ["Class_1", "Class_2", "Class_3"]  # cat, dog, owl
    expected = metrics.confusion_matrix(["dog", "cat", "cat"], ["cat", "cat", "owl"], labels=["cat", "dog", "owl"])
    assert np.array_equal(_dense(chart), expected)


def test_confusion_matrix_refuses_bad_input():
    with pytest.raises(ValueError, match="pass either probs or preds, not both"):
        plot.confusion_matrix(probs=[[0.1, 0.9]], y_true=[1], preds=[1])
    with pytest.raises(ValueError, match="needs y_true and either preds"):
        plot.confusion_matrix(y_true=[1])
    with pytest.raises(ValueError, match=r"number of predictions \(2\) and true labels \(3\) must be equal"):
        plot.confusion_matrix(y_true=[0, 1, 1], preds=[0, 1])
    with pytest.raises(ValueError, match=r"probs holds 1 NaN/Inf values \(the first in row 1\)"):
        plot.confusion_matrix(probs=[[0.2, 0.8], [np.nan, 0.5]], y_true=[0, 1])
    with pytest.raises(ValueError, match=r"preds holds 3, outside the 2 class_names \(indices 0..1\)"):
        plot.confusion_matrix(y_true=[0, 1], preds=[0, 3], class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"y_true must hold class indices 0\.\.1"):
        plot.confusion_matrix(y_true=["a", "b"], preds=[0, 1], class_names=["a", "b"])


def test_a_10000_class_confusion_matrix_stays_small_and_bounded(caplog):
    rng = np.random.default_rng(0)
    samples, classes = 200_000, 10_000
    # Skewed class frequencies, so "most frequent" is well defined; 80% right, the rest spread over all.
    y_true = np.minimum((rng.pareto(1.0, samples) * 50).astype(np.int64), classes - 1)
    preds = np.where(rng.random(samples) < 0.8, y_true, rng.integers(0, classes, samples))
    tracemalloc.start()
    with caplog.at_level(logging.WARNING, logger="runstream"):
        chart = plot.confusion_matrix(y_true=y_true, preds=preds, class_names=[f"c{i}" for i in range(classes)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20, peak  # a dense 10,000 x 10,000 matrix alone would be 800 MB
    assert "10000 classes; keeping the 1000 most frequent true classes" in caplog.text
    names = chart.spec["class_names"]
    assert len(names) == plot.MAX_CONFUSION_CLASSES + 1 and names[-1] == "(other)"
    assert len(chart.data) <= plot.MAX_CHART_ROWS
    matrix = _dense(chart)
    assert matrix.sum() == samples  # every sample is in some cell
    frequency = np.bincount(y_true, minlength=classes)
    predicted = np.bincount(preds, minlength=classes)  # ties go to the class predicted more often
    kept = np.sort(np.lexsort((-predicted, -frequency))[:1000])
    assert names[:-1] == [f"c{i}" for i in kept]
    assert matrix[:-1].sum(axis=1).tolist() == frequency[kept].tolist()  # kept rows are whole
    dense_kept = metrics.confusion_matrix(y_true, preds, labels=kept)
    assert np.array_equal(matrix[:-1, :-1], dense_kept)


def test_a_confusion_matrix_with_more_cells_than_rows_folds_to_fewer_classes(monkeypatch, caplog):
    monkeypatch.setattr(plot, "MAX_CHART_ROWS", 1000)  # so ~31 classes fit: isqrt(1000) - 1 kept + "(other)"
    rng = np.random.default_rng(1)
    y_true, preds = rng.integers(0, 100, 20_000), rng.integers(0, 100, 20_000)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        chart = plot.confusion_matrix(y_true=y_true, preds=preds)
    assert "non-zero cells are more than a chart holds (1000); keeping the 30 most frequent" in caplog.text
    assert len(chart.spec["class_names"]) == 31 and len(chart.data) <= 1000
    assert _dense(chart).sum() == 20_000


# -- precision-recall and ROC curves ----------------------------------------------------


def _binary_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for size in (2, 5, 40, 300):
        labels = rng.integers(0, 2, size).astype(bool)
        labels[0], labels[-1] = True, False  # both kinds present
        scores = np.round(rng.random(size), 1)  # ties, as real scores have
        cases.append((labels, scores))
    return cases


@pytest.mark.parametrize("case", range(4))
def test_the_binary_curves_equal_scikit_learns(case):
    labels, scores = _binary_cases()[case]
    precision, recall = plot._precision_recall(np, labels, scores)
    sk_precision, sk_recall, _ = metrics.precision_recall_curve(labels, scores)
    assert np.allclose(precision, sk_precision) and np.allclose(recall, sk_recall)
    fpr, tpr = plot._roc(np, labels, scores)
    sk_fpr, sk_tpr, _ = metrics.roc_curve(labels, scores)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)


def _wandb_interpolation(labels: np.ndarray, scores: np.ndarray, size: int) -> list[float]:
    """wandb's pr_curve for one class, on scikit-learn's curve: precision made monotone, read at recall points."""
    precision, recall, _ = metrics.precision_recall_curve(labels, scores)
    precision = np.maximum.accumulate(precision)[::-1]
    grid = np.linspace(0, 1, size)[::-1]
    return np.round(precision[np.searchsorted(recall[::-1], grid, side="left")], 3).tolist()


def test_pr_curve_is_wandbs_interpolation_of_scikit_learns_curve():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 3, 200)
    y_probas = rng.dirichlet(np.ones(3), 200)
    y_probas[np.arange(200), y_true] += 0.3  # better than chance
    chart = plot.pr_curve(y_true, y_probas, labels=["cat", "dog", "owl"], interp_size=11, title="PR")
    content = _content(chart)
    assert content["spec"] == {
        "kind": "pr_curve", "title": "PR", "fields": {"x": "recall", "y": "precision", "stroke": "class"}
    }  # fmt: skip
    assert content["columns"] == ["class", "precision", "recall"]
    for index, name in enumerate(["cat", "dog", "owl"]):
        rows = [r for r in content["data"] if r[0] == name]
        assert [r[2] for r in rows] == np.round(np.linspace(1, 0, 11), 3).tolist()
        assert [r[1] for r in rows] == _wandb_interpolation(y_true == index, y_probas[:, index], 11)
    only = plot.pr_curve(y_true, y_probas, classes_to_plot=[2])
    assert {r[0] for r in only.data} == {"2"} and len(only.data) == 21  # no labels: the class itself


def test_roc_curve_equals_scikit_learns_rounded_to_3_places():
    rng = np.random.default_rng(9)
    y_true = rng.choice(["a", "b"], 150)
    y_probas = rng.random((150, 2))
    chart = plot.roc_curve(y_true, y_probas, labels=["ignored", "for strings"])
    content = _content(chart)
    assert content["spec"]["fields"] == {"x": "fpr", "y": "tpr", "stroke": "class"}
    assert content["columns"] == ["class", "fpr", "tpr"]
    for index, name in enumerate(["a", "b"]):
        fpr, tpr, _ = metrics.roc_curve(y_true, y_probas[:, index], pos_label=name)
        rows = [r for r in content["data"] if r[0] == name]
        assert [r[1] for r in rows] == np.round(fpr, 3).tolist()
        assert [r[2] for r in rows] == np.round(tpr, 3).tolist()


def test_a_long_roc_curve_is_read_at_200_points_keeping_its_area():
    rng = np.random.default_rng(11)
    y_true = rng.integers(0, 2, 20_000)
    scores = rng.random(20_000) + 0.4 * y_true
    y_probas = np.column_stack([1 - scores, scores])
    sk_fpr, _, _ = metrics.roc_curve(y_true, scores)
    assert len(sk_fpr) > 1000  # long enough to need it
    chart = plot.roc_curve(y_true, y_probas, classes_to_plot=[1])
    rows = chart.data
    assert len(rows) == plot.ROC_POINTS
    fpr, tpr = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    assert abs(np.trapezoid(tpr, fpr) - metrics.roc_auc_score(y_true, scores)) < 0.005


def test_binary_scores_may_be_one_column_and_columns_follow_predict_proba():
    y_true = np.array([0, 1, 1, 0, 1])
    positive = np.array([0.1, 0.8, 0.7, 0.3, 0.4])
    one_column = plot.roc_curve(y_true, positive)
    two_columns = plot.roc_curve(y_true, np.column_stack([1 - positive, positive]))
    assert one_column.data == two_columns.data
    # y_true lacks class 1 of a 3-class predict_proba: class 2 is scored by column 2, not by position.
    y3 = np.array([0, 2, 2, 0])
    probas = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1]])
    rows = [r for r in plot.pr_curve(y3, probas).data if r[0] == "2"]
    assert {r[1] for r in rows} == {1.0}  # column 2 separates class 2 perfectly


def test_curves_refuse_bad_input(monkeypatch):
    y_true = [0, 1, 1]
    with pytest.raises(ValueError, match=r"y_probas holds 2 NaN/Inf values \(the first in row 1\)"):
        plot.pr_curve(y_true, [[0.5, 0.5], [np.nan, 0.2], [0.1, np.inf]])
    with pytest.raises(ValueError, match="roc_curve needs y_true"):
        plot.roc_curve(y_true)
    with pytest.raises(ValueError, match=r"y_probas has 2 rows but y_true has 3 labels"):
        plot.roc_curve(y_true, [[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(ValueError, match=r"none of classes_to_plot \[7\] is in y_true \(\[0, 1\]\)"):
        plot.roc_curve(y_true, [[0.5, 0.5]] * 3, classes_to_plot=[7])
    with pytest.raises(ValueError, match="every sample is of class '1'"):
        plot.roc_curve([1, 1], [[0.4], [0.6]])
    with pytest.raises(ValueError, match="interp_size must be at least 2"):
        plot.pr_curve(y_true, [[0.5, 0.5]] * 3, interp_size=1)
    with pytest.raises(ValueError, match=r"class 1 has no name in labels \(it has 1\)"):
        plot.pr_curve(y_true, [[0.5, 0.5]] * 3, labels=["only"])
    with pytest.raises(ValueError, match="y_probas has 3 columns but y_true has 2 classes"):
        plot.roc_curve(["a", "b"], [[0.2, 0.3, 0.5]] * 2)
    # Past the row limit (10,000 classes x 21 points would be): refused before any curve is computed.
    monkeypatch.setattr(plot, "MAX_CHART_ROWS", 1000)
    many, scores = np.arange(100), np.eye(100, dtype=np.float32)
    with pytest.raises(ValueError, match=r"100 classes x 21 points is 2100 rows.*\(1000\); pass classes_to_plot"):
        plot.pr_curve(many, scores)
    assert len(plot.pr_curve(many, scores, classes_to_plot=[3, 4]).data) == 42
    with pytest.raises(ValueError, match="100 classes x 200 points is 20000 rows"):
        plot.roc_curve(many, scores)


def test_torch_tensors_are_taken_as_arrays():
    import torch  # installed with the test dependencies; imported here so the other tests do not pay for it

    y_true = torch.tensor([0, 1, 1, 0])
    probas = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    assert plot.roc_curve(y_true, probas).data == plot.roc_curve(y_true.numpy(), probas.numpy()).data
    chart = plot.confusion_matrix(probs=probas, y_true=y_true)
    assert np.array_equal(_dense(chart), [[2, 0], [0, 2]])
    assert plot.line_series(torch.arange(3), [torch.ones(3)]).data[2] == ["line_0", 1.0, 2]


# -- runstream.sklearn (an offline run: the charts it logs are the files in the run's directory) ---------------


@pytest.fixture
def offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNSTREAM_CONFIG", str(tmp_path / "no-config.toml"))
    run = runstream.init(
        project="plots",
        mode="offline",
        dir=tmp_path,
        settings={"console": False, "system_metrics": False, "git": False},
    )
    yield run
    run.finish()


def _logged(run) -> dict[str, dict]:
    """The charts the run logged so far, by key (the sender writes them when the run finishes)."""
    run.finish()
    charts = {}
    for path in sorted((Path(run.dir) / "files" / "media" / "charts").glob("*.json")):
        charts[path.name.rsplit("_", 2)[0]] = orjson.loads(path.read_bytes())
    return charts


def test_sklearn_confusion_matrix_names_normalizes_and_keeps_chosen_cells(offline_run):
    from runstream import sklearn as rs_sklearn

    y_true, y_pred = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0]
    rs_sklearn.plot_confusion_matrix(y_true, y_pred, labels=["a", "b", "c"], normalize=True)
    chart = _logged(offline_run)["confusion_matrix"]
    assert chart["spec"]["class_names"] == ["a", "b", "c"]
    expected = metrics.confusion_matrix(y_true, y_pred, normalize="true").round(2)
    assert chart["data"] == [
        [a, p, expected[i, j]] for i, a in enumerate("abc") for j, p in enumerate("abc") if expected[i, j]
    ]


def test_sklearn_confusion_matrix_true_and_pred_labels_keep_those_rows_and_columns(tmp_path, monkeypatch):
    from runstream import sklearn as rs_sklearn

    monkeypatch.setenv("RUNSTREAM_CONFIG", str(tmp_path / "no-config.toml"))
    run = runstream.init(project="plots", mode="offline", dir=tmp_path, settings={"console": False, "git": False})
    rs_sklearn.plot_confusion_matrix(
        ["x", "y", "y", "z"], ["x", "z", "y", "x"], true_labels=["y"], pred_labels=["y", "z"]
    )
    assert _logged(run)["confusion_matrix"]["data"] == [["y", "y", 1], ["y", "z", 1]]


def test_sklearn_plots_skip_what_wandb_skips_and_refuse_bad_input(offline_run, caplog):
    from sklearn.linear_model import LogisticRegression

    from runstream import sklearn as rs_sklearn

    rng = np.random.default_rng(2)
    x = rng.random((60, 4))
    y3 = rng.integers(0, 3, 60)
    multiclass = LogisticRegression(max_iter=200).fit(x, y3)
    with caplog.at_level(logging.WARNING, logger="runstream"):
        rs_sklearn.plot_feature_importances(multiclass)  # coef_ is classes x features: skipped, as wandb
        rs_sklearn.plot_calibration_curve(multiclass, x, y3)  # binary labels only, as wandb
    assert "has shape (3, 4) (one row per class)" in caplog.text
    assert "plot_calibration_curve needs binary 0/1 labels" in caplog.text
    binary = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    rs_sklearn.plot_feature_importances(binary, ["a", "b", "c", "d"], max_num_features=2)
    with pytest.raises(ValueError, match="plot_learning_curve needs X, y"):
        rs_sklearn.plot_learning_curve(binary)
    with pytest.raises(ValueError, match="fit the LogisticRegression before plotting it"):
        rs_sklearn.plot_feature_importances(LogisticRegression())
    with pytest.raises(AttributeError, match="plot_silhouette is not built"):
        rs_sklearn.plot_silhouette  # noqa: B018
    charts = _logged(offline_run)
    assert list(charts) == ["feature_importances"]
    bars = charts["feature_importances"]
    assert bars["spec"]["fields"] == {"label": "feature_names", "value": "importances"}
    coef = binary.coef_[0]
    top = np.argsort(coef)[::-1][:2]
    assert bars["data"] == [[name, pytest.approx(value)] for name, value in zip(np.array(list("abcd"))[top], coef[top])]


def test_many_class_names_but_few_classes_seen_keep_only_those_on_the_axes(caplog):
    names = [f"n{i}" for i in range(21_841)]  # e.g. ImageNet-21k's names, a batch that shows three of them
    with caplog.at_level(logging.WARNING, logger="runstream"):
        chart = plot.confusion_matrix(y_true=[5000, 5000, 6000], preds=[7000, 5000, 6000], class_names=names)
    assert chart.spec["class_names"] == ["n5000", "n6000", "n7000"]  # no "(other)"
    assert chart.data == [["n5000", "n5000", 1], ["n5000", "n7000", 1], ["n6000", "n6000", 1]]
    assert "folding" not in caplog.text


def test_sklearn_labels_name_the_sorted_classes_in_order_as_wandb(offline_run):
    from runstream import sklearn as rs_sklearn

    rs_sklearn.plot_confusion_matrix([1, 2, 3, 3], [1, 2, 2, 3], labels=["low", "mid", "high"])
    chart = _logged(offline_run)["confusion_matrix"]
    assert chart["spec"]["class_names"] == ["low", "mid", "high"]  # not labels[1], labels[2], labels[3]
    assert chart["data"] == [["low", "low", 1], ["mid", "mid", 1], ["high", "mid", 1], ["high", "high", 1]]


def test_sklearn_chosen_rows_and_columns_keep_only_their_classes_on_the_axes(offline_run):
    from runstream import sklearn as rs_sklearn

    rs_sklearn.plot_confusion_matrix(
        ["w", "x", "y", "y", "z"], ["w", "x", "z", "y", "x"], true_labels=["y"], pred_labels=["y", "z"]
    )
    chart = _logged(offline_run)["confusion_matrix"]
    assert chart["data"] == [["y", "y", 1], ["y", "z", 1]]
    assert chart["spec"]["class_names"] == ["y", "z"]  # w and x are neither kept row nor kept column
