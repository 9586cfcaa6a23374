"""wandb.plot's custom charts: ``runstream.plot.line(table, "step", "loss")`` and the others return a
``runstream.media.Chart``, which ``run.log({key: chart})`` stores as one JSON file (spec, columns, rows)
that the run page draws.

The signatures are wandb's (wandb/plot/*.py). Confusion matrices and precision-recall/ROC curves are computed
with numpy (imported when such a chart is built); scikit-learn is not needed. Limits, each with a clear message:

- a chart holds at most ``MAX_CHART_ROWS`` rows: line, scatter and line_series charts keep an evenly spread
  subset (with a warning), the other kinds refuse larger tables (ValueError);
- a confusion matrix with more than ``MAX_CONFUSION_CLASSES`` classes keeps only the classes that occur (true or
  predicted) on its axes; when more than that many occur, it keeps the most frequent true classes and folds the
  others into ``"(other)"`` (with a warning); its rows are the non-zero cells only, so 10,000 classes never build
  10^8 rows;
- precision-recall curves have ``interp_size`` points per class (wandb's interpolation), ROC curves at most
  ``ROC_POINTS`` per class;
- NaN or Inf in ``probs``/``y_probas`` is refused (ValueError).

``split_table`` is accepted and ignored: wandb uses it to file the chart's table in a separate UI section,
and runstream keeps a chart's rows inside the chart.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runstream.media import Chart, Table, _from, _is_dataframe, _require, _torch_to_numpy

log = logging.getLogger("runstream")

__all__ = [
    "MAX_CHART_ROWS", "MAX_CONFUSION_CLASSES", "ROC_POINTS", "Chart", "CustomChart",
    "bar", "confusion_matrix", "histogram", "line", "line_series", "plot_table", "pr_curve", "roc_curve", "scatter",
]  # fmt: skip

#: The most rows one chart holds (wandb's Table keeps 10,000 by default; runstream charts are drawn from JSON).
MAX_CHART_ROWS = 100_000
#: The most classes a confusion matrix keeps apart; the less frequent true classes become "(other)".
MAX_CONFUSION_CLASSES = 1_000
#: The most points a ROC curve keeps per class.
ROC_POINTS = 200
#: The class the confusion matrix folds the less frequent classes into.
OTHER = "(other)"
#: wandb's name for what these functions return (``isinstance(chart, wandb.plot.CustomChart)`` keeps working).
CustomChart = Chart


# -- charts of a table ---------------------------------------------------------------


def line(table: Any, x: str, y: str, stroke: str | None = None, title: str = "", split_table: bool = False) -> Chart:
    """A line chart of ``table``'s column ``y`` against ``x``, one line per value of ``stroke`` (if given)."""
    fields = {"x": x, "y": y} if stroke is None else {"x": x, "y": y, "stroke": stroke}
    columns, rows = _table_rows(table, "line", fields)
    _check_numbers(rows, columns, "line", x, y)
    return Chart("line", columns, _copied(_evenly("line", rows)), fields, title)


def scatter(table: Any, x: str, y: str, title: str = "", split_table: bool = False) -> Chart:
    """A scatter plot of ``table``'s columns ``x`` and ``y``."""
    fields = {"x": x, "y": y}
    columns, rows = _table_rows(table, "scatter", fields)
    _check_numbers(rows, columns, "scatter", x, y)
    return Chart("scatter", columns, _copied(_evenly("scatter", rows)), fields, title)


def bar(table: Any, label: str, value: str, title: str = "", split_table: bool = False) -> Chart:
    """A bar per row of ``table``: ``label`` names it, ``value`` is its height."""
    fields = {"label": label, "value": value}
    columns, rows = _table_rows(table, "bar", fields)
    _check_numbers(rows, columns, "bar", value)
    _refuse_past_limit("bar", len(rows), "aggregate the table to one row per bar first")
    return Chart("bar", columns, _copied(rows), fields, title)


def histogram(table: Any, value: str, title: str = "", split_table: bool = False) -> Chart:
    """A histogram of ``table``'s column ``value`` (the UI bins it)."""
    fields = {"value": value}
    columns, rows = _table_rows(table, "histogram", fields)
    _check_numbers(rows, columns, "histogram", value)
    _refuse_past_limit(
        "histogram",
        len(rows),
        "bin the values with numpy.histogram and log runstream.Histogram(np_histogram=(counts, edges)), "
        "or chart a random sample of them",
    )
    return Chart("histogram", columns, _copied(rows), fields, title)


def line_series(
    xs: Any, ys: Any, keys: Iterable[str] | None = None, title: str = "", xname: str = "x", split_table: bool = False
) -> Chart:
    """One line per sequence of ``ys``, against ``xs`` (one sequence shared by all, or one per line), named by
    ``keys`` (default ``line_0``, ``line_1``, ...), as wandb's. Past ``MAX_CHART_ROWS`` points in all, each line
    keeps an evenly spread subset of its points (with a warning)."""
    y_lists = [_plain_list(y, "ys", i) for i, y in enumerate(_plain_list(ys, "ys"))]
    x_outer = _plain_list(xs, "xs")
    if not x_outer or not _is_sequence(x_outer[0]):  # one x sequence for every line, as wandb
        x_lists = [x_outer] * len(y_lists)
    else:
        x_lists = [_plain_list(x, "xs", i) for i, x in enumerate(x_outer)]
    if len(x_lists) != len(y_lists):
        raise ValueError(f"line_series: the number of x-series ({len(x_lists)}) must match y-series ({len(y_lists)})")
    names = [f"line_{i}" for i in range(len(y_lists))] if keys is None else [str(k) for k in keys]
    if len(names) != len(y_lists):
        raise ValueError(f"line_series: the number of keys ({len(names)}) must match y-series ({len(y_lists)})")
    total = sum(min(len(x), len(y)) for x, y in zip(x_lists, y_lists, strict=True))
    per_line = MAX_CHART_ROWS // len(y_lists) if y_lists else 0
    if total > MAX_CHART_ROWS:
        if per_line < 2:
            raise ValueError(
                f"line_series: {len(y_lists)} lines are more than a chart of {MAX_CHART_ROWS} rows can draw; "
                "log fewer lines per chart"
            )
        log.warning(
            "runstream.plot.line_series: %d points are more than a chart holds (%d); each line keeps at most %d "
            "evenly spread points",
            total,
            MAX_CHART_ROWS,
            per_line,
        )
    rows: list[list[Any]] = []
    for name, x_values, y_values in zip(names, x_lists, y_lists, strict=True):
        count = min(len(x_values), len(y_values))  # wandb pairs x and y with zip: the longer one is cut
        kept = _spread(list(range(count)), per_line) if total > MAX_CHART_ROWS else range(count)
        rows += [[name, y_values[i], x_values[i]] for i in kept]  # picked before building rows: less memory
    _check_numbers(rows, ["lineKey", "lineVal", "step"], "line_series", "lineVal", "step")
    fields = {"x": "step", "y": "lineVal", "stroke": "lineKey"}
    return Chart("line_series", ["lineKey", "lineVal", "step"], rows, fields, title, xname=str(xname))


#: wandb's preset Vega spec names that map onto a runstream chart kind, for ``plot_table``.
_PRESETS = {
    "wandb/line/v0": ("line", ("x", "y", "stroke")),
    "wandb/scatter/v0": ("scatter", ("x", "y")),
    "wandb/bar/v0": ("bar", ("label", "value")),
    "wandb/histogram/v0": ("histogram", ("value",)),
}
_OPTIONAL_ROLES = ("stroke",)


def plot_table(
    vega_spec_name: str,
    data_table: Any,
    fields: Mapping[str, Any],
    string_fields: Mapping[str, Any] | None = None,
    split_table: bool = False,
) -> Chart:
    """wandb's ``plot_table`` for its preset line/scatter/bar/histogram specs (runstream draws its own chart
    kinds, not Vega specs): ``fields`` maps the spec's roles to columns, ``string_fields["title"]`` the title."""
    if vega_spec_name not in _PRESETS:
        raise ValueError(
            f"plot_table: runstream draws its own chart kinds, not Vega specs; {vega_spec_name!r} is not one of "
            f"the presets it maps ({', '.join(_PRESETS)}). Use runstream.plot.line/scatter/bar/histogram/"
            "line_series/confusion_matrix/pr_curve/roc_curve"
        )
    kind, roles = _PRESETS[vega_spec_name]
    title = str((string_fields or {}).get("title", ""))
    chosen = {role: fields[role] for role in roles if fields.get(role) is not None}
    if any(role not in chosen for role in roles if role not in _OPTIONAL_ROLES):
        needed = [role for role in roles if role not in _OPTIONAL_ROLES]
        raise ValueError(f"plot_table({vega_spec_name!r}) needs fields {needed}, got {dict(fields)}")
    builders: dict[str, Any] = {"line": line, "scatter": scatter, "bar": bar, "histogram": histogram}
    return builders[kind](data_table, title=title, **chosen)


# -- confusion matrix ------------------------------------------------------------------


def confusion_matrix(
    probs: Any = None,
    y_true: Any = None,
    preds: Any = None,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion Matrix Curve",
    split_table: bool = False,
) -> Chart:
    """A confusion matrix of ``y_true`` against ``preds`` (or ``probs``' argmax), as wandb's: with
    ``class_names``, labels are indices into it; without, the classes are the sorted labels seen, named
    ``Class_1``, ``Class_2``, ... The rows are the non-zero cells ``[actual, predicted, count]``; the
    chart's ``spec.class_names`` orders the axes."""
    np = _numpy("confusion_matrix")
    if probs is not None and preds is not None:
        raise ValueError("confusion_matrix: pass either probs or preds, not both")
    if y_true is None or (probs is None and preds is None):
        raise ValueError("confusion_matrix needs y_true and either preds (labels) or probs (N x classes)")
    truth = _labels_array(np, y_true, "y_true")
    if probs is not None:
        predicted = _finite_matrix(np, probs, "probs", "confusion_matrix").argmax(axis=1)
    else:
        predicted = _labels_array(np, preds, "preds")
    if len(predicted) != len(truth):
        raise ValueError(
            f"confusion_matrix: the number of predictions ({len(predicted)}) and true labels ({len(truth)}) "
            "must be equal"
        )
    if class_names is not None:
        names = [str(c) for c in class_names]
        true_index = _class_indices(np, truth, len(names), "y_true")
        pred_index = _class_indices(np, predicted, len(names), "preds")
    else:
        try:
            values, inverse = np.unique(np.concatenate([truth, predicted]), return_inverse=True)
        except TypeError as exc:  # e.g. ints mixed with strings in an object array
            raise ValueError(f"confusion_matrix: labels must be of one comparable type ({exc})") from None
        names = [f"Class_{i + 1}" for i in range(len(values))]  # wandb's names
        true_index, pred_index = inverse[: len(truth)], inverse[len(truth) :]
    return _confusion_chart(np, true_index, pred_index, names, str(title))


def _confusion_chart(
    np: Any, true_index: Any, pred_index: Any, names: list[str], title: str, normalize: bool = False
) -> Chart:
    """The chart of a confusion matrix of class indices into ``names``, built from its non-zero cells only."""
    rows, labels = _confusion_rows(np, true_index, pred_index, names, normalize)
    return _confusion_chart_from_rows(rows, labels, title)


def _confusion_chart_from_rows(rows: list[list[Any]], class_names: list[str], title: str) -> Chart:
    """The confusion matrix chart of ``[actual, predicted, count]`` rows, its axes ordered by ``class_names``."""
    fields = {"actual": "Actual", "predicted": "Predicted", "count": "nPredictions"}
    columns = ["Actual", "Predicted", "nPredictions"]
    return Chart("confusion_matrix", columns, rows, fields, title, class_names=class_names)


def _confusion_rows(
    np: Any, true_index: Any, pred_index: Any, names: list[str], normalize: bool = False
) -> tuple[list[list[Any]], list[str]]:
    """The non-zero cells ``[actual, predicted, count]`` of a confusion matrix of class indices into ``names``,
    and the class names on its axes (folded past ``MAX_CONFUSION_CLASSES``)."""
    true_index = original_true = true_index.astype(np.int64)
    pred_index = original_pred = pred_index.astype(np.int64)
    labels = list(names)
    if len(names) > MAX_CONFUSION_CLASSES:
        # Many names but few of them seen (e.g. 21,841 ImageNet names, a batch of 64 images): the axes keep the
        # classes that occur, true or predicted, and nothing is folded.
        present = np.union1d(true_index, pred_index)
        if len(present) <= MAX_CONFUSION_CLASSES:
            labels = [names[i] for i in present.tolist()]
            true_index, pred_index = np.searchsorted(present, true_index), np.searchsorted(present, pred_index)
            original_true, original_pred, names = true_index, pred_index, labels
    if len(labels) > MAX_CONFUSION_CLASSES:
        log.warning(
            "runstream.plot.confusion_matrix: %d classes; keeping the %d most frequent true classes and folding "
            "the others into %r",
            len(labels),
            MAX_CONFUSION_CLASSES,
            OTHER,
        )
        labels, true_index, pred_index = _fold(np, true_index, pred_index, names, MAX_CONFUSION_CLASSES)
    actual, predicted, counts = _cells(np, true_index, pred_index, len(labels))
    if len(counts) > MAX_CHART_ROWS:
        # Only past ~316 classes can the cells outnumber a chart's rows; fewer classes always fit.
        keep = math.isqrt(MAX_CHART_ROWS) - 1
        log.warning(
            "runstream.plot.confusion_matrix: %d non-zero cells are more than a chart holds (%d); keeping the %d "
            "most frequent true classes and folding the others into %r",
            len(counts),
            MAX_CHART_ROWS,
            keep,
            OTHER,
        )
        labels, true_index, pred_index = _fold(np, original_true, original_pred, names, keep)
        actual, predicted, counts = _cells(np, true_index, pred_index, len(labels))
    values: list[Any] = counts.tolist()
    if normalize:  # each true class's row sums to 1 (rounded to 2 places, as wandb.sklearn)
        totals = np.bincount(true_index, minlength=len(labels))
        values = np.round(counts / totals[actual], 2).tolist()
    rows = [[labels[a], labels[p], v] for a, p, v in zip(actual.tolist(), predicted.tolist(), values, strict=True)]
    return rows, labels


def _fold(np: Any, true_index: Any, pred_index: Any, names: list[str], keep: int) -> tuple[list[str], Any, Any]:
    """Keep the ``keep`` most frequent true classes (in their order), every other class becomes ``OTHER``.
    Ties (and classes never true) go by how often they are predicted, so a class that never occurs is never kept
    over one that does."""
    true_frequency = np.bincount(true_index, minlength=len(names))
    pred_frequency = np.bincount(pred_index, minlength=len(names))
    kept = np.sort(np.lexsort((-pred_frequency, -true_frequency))[:keep])
    remap = np.full(len(names), len(kept), dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return [names[i] for i in kept.tolist()] + [OTHER], remap[true_index], remap[pred_index]


def _cells(np: Any, true_index: Any, pred_index: Any, n_classes: int) -> tuple[Any, Any, Any]:
    """The non-zero cells of the matrix (actual, predicted, count), sorted by actual then predicted."""
    codes, counts = np.unique(true_index * n_classes + pred_index, return_counts=True)
    return codes // n_classes, codes % n_classes, counts


# -- precision-recall and ROC curves -----------------------------------------------------


def pr_curve(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    classes_to_plot: Sequence[Any] | None = None,
    interp_size: int = 21,
    title: str = "Precision-Recall Curve",
    split_table: bool = False,
) -> Chart:
    """One precision-recall curve per class (one-vs-rest on ``y_probas``' column for it), as wandb's: precision
    made monotone, then read at ``interp_size`` recall values evenly spread over [0, 1]; rounded to 3 places."""
    np = _numpy("pr_curve")
    points = operator.index(interp_size)
    if points < 2:
        raise ValueError(f"pr_curve: interp_size must be at least 2, got {points}")
    curves = _one_vs_rest(np, y_true, y_probas, labels, classes_to_plot, "pr_curve", points)
    grid = np.linspace(0, 1, points)[::-1]  # wandb's order: recall from 1 down to 0
    rows: list[list[Any]] = []
    for name, positive, scores in curves:
        precision, recall = _precision_recall(np, positive, scores)
        precision = np.maximum.accumulate(precision)[::-1]  # wandb's smoothing, then recall ascending
        at = np.searchsorted(recall[::-1], grid, side="left")
        rounded = zip(np.round(precision[at], 3).tolist(), np.round(grid, 3).tolist(), strict=True)
        rows += [[name, p, r] for p, r in rounded]
    fields = {"x": "recall", "y": "precision", "stroke": "class"}
    return Chart("pr_curve", ["class", "precision", "recall"], rows, fields, title)


def roc_curve(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    classes_to_plot: Sequence[Any] | None = None,
    title: str = "ROC Curve",
    split_table: bool = False,
) -> Chart:
    """One ROC curve per class (one-vs-rest on ``y_probas``' column for it), as scikit-learn's ``roc_curve``
    draws it, at most ``ROC_POINTS`` points per class (longer curves are read on an even FPR grid); rounded to
    3 places as wandb's."""
    np = _numpy("roc_curve")
    curves = _one_vs_rest(np, y_true, y_probas, labels, classes_to_plot, "roc_curve", ROC_POINTS)
    rows: list[list[Any]] = []
    for name, positive, scores in curves:
        if positive.all():
            raise ValueError(
                f"roc_curve: every sample is of class {name!r}, so there is no false positive rate to draw; "
                "pass y_true holding at least two classes"
            )
        fpr, tpr = _roc(np, positive, scores)
        if len(fpr) > ROC_POINTS:
            fpr, tpr = _resample_roc(np, fpr, tpr, ROC_POINTS)
        rows += [[name, f, t] for f, t in zip(np.round(fpr, 3).tolist(), np.round(tpr, 3).tolist(), strict=True)]
    fields = {"x": "fpr", "y": "tpr", "stroke": "class"}
    return Chart("roc_curve", ["class", "fpr", "tpr"], rows, fields, title)


def _one_vs_rest(
    np: Any, y_true: Any, y_probas: Any, labels: Any, classes_to_plot: Any, kind: str, points: int
) -> list[tuple[str, Any, Any]]:
    """(class name, is-this-class mask, this class's scores) for each class to plot, checked first."""
    if y_true is None or y_probas is None:
        raise ValueError(f"{kind} needs y_true (N labels) and y_probas (N x classes scores)")
    truth = _labels_array(np, y_true, "y_true")
    scores = _finite_matrix(np, y_probas, "y_probas", kind, one_column_ok=True)
    classes = np.unique(truth)
    if scores.ndim == 1:  # one score per sample: the positive (greater) class's, for a binary problem
        if len(classes) > 2:
            raise ValueError(f"{kind}: y_probas is 1-D but y_true has {len(classes)} classes; pass N x classes")
        scores = np.stack([1 - scores, scores], axis=1)
    if len(scores) != len(truth):
        raise ValueError(f"{kind}: y_probas has {len(scores)} rows but y_true has {len(truth)} labels")
    chosen = classes if classes_to_plot is None else classes[np.isin(classes, np.asarray(list(classes_to_plot)))]
    if len(chosen) == 0:
        raise ValueError(f"{kind}: none of classes_to_plot {list(classes_to_plot)} is in y_true ({classes.tolist()})")
    rows = len(chosen) * points
    if rows > MAX_CHART_ROWS:
        raise ValueError(
            f"{kind}: {len(chosen)} classes x {points} points is {rows} rows, more than a chart holds "
            f"({MAX_CHART_ROWS}); pass classes_to_plot to choose fewer classes"
            + (" or a smaller interp_size" if kind == "pr_curve" else "")
        )
    integer = classes.dtype.kind in "iu"
    curves = []
    for value in chosen.tolist():
        column = _score_column(np, classes, value, scores.shape[1], integer, kind)
        if labels is not None and integer:  # wandb: labels name integer classes by index
            if not 0 <= value < len(labels):
                raise ValueError(f"{kind}: class {value} has no name in labels (it has {len(labels)})")
            name = str(labels[value])
        else:
            name = str(value)
        curves.append((name, truth == value, scores[:, column]))
    return curves


def _score_column(np: Any, classes: Any, value: Any, n_columns: int, integer: bool, kind: str) -> int:
    """Which column of y_probas scores class ``value``: its position among y_true's classes (wandb's rule);
    when y_true lacks some classes of an integer labelling, the class's own number (its predict_proba column)."""
    if n_columns == len(classes):
        return int(np.searchsorted(classes, value))
    if integer and 0 <= value < n_columns:
        return int(value)
    raise ValueError(
        f"{kind}: y_probas has {n_columns} columns but y_true has {len(classes)} classes {classes.tolist()[:10]}; "
        "pass one score column per class (as predict_proba returns)"
    )


def _binary_counts(np: Any, positive: Any, scores: Any) -> tuple[Any, Any]:
    """False and true positives at each distinct score threshold, highest first (scikit-learn's rule)."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, positive = scores[order], positive[order]
    last_of_each = np.r_[np.where(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(positive, dtype=np.float64)[last_of_each]
    return 1 + last_of_each - tps, tps


def _precision_recall(np: Any, positive: Any, scores: Any) -> tuple[Any, Any]:
    """scikit-learn's ``precision_recall_curve`` (precision, recall): recall decreasing, ending at (1, 0)."""
    fps, tps = _binary_counts(np, positive, scores)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = tps / tps[-1] if tps[-1] else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _roc(np: Any, positive: Any, scores: Any) -> tuple[Any, Any]:
    """scikit-learn's ``roc_curve`` (fpr, tpr) with its default ``drop_intermediate=True``."""
    fps, tps = _binary_counts(np, positive, scores)
    if len(fps) > 2:  # drop points collinear with their neighbours: they change nothing drawn
        corners = np.where(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])[0]
        fps, tps = fps[corners], tps[corners]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    return fps / fps[-1], (tps / tps[-1] if tps[-1] else np.full(len(tps), np.nan))


def _resample_roc(np: Any, fpr: Any, tpr: Any, points: int) -> tuple[Any, Any]:
    """The curve read at ``points - 1`` evenly spread FPRs, after its (0, 0) start. At an FPR where the curve
    rises vertically it takes the top; between two FPRs it is linear, as the curve is drawn."""
    grid = np.linspace(0, 1, points - 1)
    after = np.searchsorted(fpr, grid, side="right")  # first point right of each grid FPR
    at = after - 1  # the last point at or left of it: the top of a vertical rise
    nxt = np.minimum(after, len(fpr) - 1)
    span = fpr[nxt] - fpr[at]
    share = np.divide(grid - fpr[at], span, out=np.zeros_like(grid), where=span > 0)
    values = tpr[at] + share * (tpr[nxt] - tpr[at])
    return np.r_[0.0, grid], np.r_[0.0, values]


# -- helpers ---------------------------------------------------------------------------


def _numpy(kind: str) -> Any:
    return _require("numpy", "numpy", f"runstream.plot.{kind}")


def _table_rows(table: Any, kind: str, fields: Mapping[str, str]) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of ``table`` (its own list: copy what the chart keeps), once every field names one
    of its columns."""
    if _is_dataframe(table):
        table = Table(dataframe=table)
    if not isinstance(table, Table):
        raise TypeError(
            f"runstream.plot.{kind} takes a runstream.Table (wandb.Table) or a pandas DataFrame, got "
            f"{type(table).__name__}: build one with runstream.Table(columns=[...], data=[...])"
        )
    for role, name in fields.items():
        if name not in table.columns:
            raise ValueError(f"runstream.plot.{kind}: {role}={name!r} is not a column of the table {table.columns}")
    return list(table.columns), table.data


def _copied(rows: list[list[Any]]) -> list[list[Any]]:
    """The rows as they are now: the table may grow or be edited after the chart is built."""
    return [list(row) for row in rows]


def _check_numbers(rows: list[list[Any]], columns: list[str], kind: str, *names: str) -> None:
    """Every cell of the named columns is a number or empty (None, as Table stores NaN)."""
    for name in names:
        index = columns.index(name)
        for number, row in enumerate(rows):
            cell = row[index]
            if cell is not None and (isinstance(cell, bool) or not isinstance(cell, (int, float))):
                raise ValueError(
                    f"runstream.plot.{kind}: column {name!r} must hold numbers, row {number} holds {cell!r:.60}"
                )


def _spread(rows: list[Any], limit: int) -> list[Any]:
    """``limit`` rows evenly spread over ``rows``, the first and the last among them."""
    if len(rows) <= limit:
        return rows
    last = len(rows) - 1
    return [rows[i * last // (limit - 1)] for i in range(limit)]


def _evenly(kind: str, rows: list[list[Any]]) -> list[list[Any]]:
    if len(rows) > MAX_CHART_ROWS:
        log.warning(
            "runstream.plot.%s: the table has %d rows, more than a chart holds (%d); an evenly spread subset of "
            "%d rows is kept (the first and last among them)",
            kind,
            len(rows),
            MAX_CHART_ROWS,
            MAX_CHART_ROWS,
        )
    return _spread(rows, MAX_CHART_ROWS)


def _refuse_past_limit(kind: str, rows: int, what_to_do: str) -> None:
    if rows > MAX_CHART_ROWS:
        raise ValueError(f"runstream.plot.{kind}: the table has {rows} rows, more than a chart holds "
                         f"({MAX_CHART_ROWS}); {what_to_do}")  # fmt: skip


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


def _plain_list(values: Any, what: str, index: int | None = None) -> list[Any]:
    """``values`` (a list, tuple, numpy array or torch tensor) as a list of Python values; NaN becomes None."""
    where = what if index is None else f"{what}[{index}]"
    if _from(values, "torch") and hasattr(values, "detach"):
        values = _torch_to_numpy(values)
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if not _is_sequence(values):
        raise TypeError(f"line_series: {where} must be a sequence, got {type(values).__name__}")
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def _labels_array(np: Any, values: Any, what: str) -> Any:
    """Labels as a 1-D numpy array."""
    if _from(values, "torch") and hasattr(values, "detach"):
        values = _torch_to_numpy(values)
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one label per sample (1-D), got shape {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN/Inf labels; drop those samples before plotting")
    return array


def _finite_matrix(np: Any, values: Any, what: str, kind: str, one_column_ok: bool = False) -> Any:
    """Scores as a float array of N x classes (or N, for ``one_column_ok``), refusing NaN and Inf."""
    if _from(values, "torch") and hasattr(values, "detach"):
        values = _torch_to_numpy(values)
    try:
        array = np.asarray(values)
        if array.dtype.kind != "f":  # float32 scores stay float32: no copy of a large array
            array = array.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{kind}: {what} must be numbers, N samples x classes ({exc})") from None
    if not (array.ndim == 2 or (one_column_ok and array.ndim == 1)) or array.size == 0:
        raise ValueError(f"{kind}: {what} must be N samples x classes scores, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{kind}: {what} holds {int(bad.sum())} NaN/Inf values (the first in row {row}); "
            "fix or drop those samples before plotting"
        )
    return array


def _class_indices(np: Any, labels: Any, n_classes: int, what: str) -> Any:
    """With class_names, labels are indices 0..n-1 into it (wandb's rule)."""
    if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iub":
        raise ValueError(
            f"confusion_matrix: with class_names, {what} must hold class indices 0..{n_classes - 1}, "
            f"got {labels.dtype} values such as {labels[:1].tolist()}"
        )
    outside = (labels < 0) | (labels >= n_classes)
    if outside.any():
        raise ValueError(
            f"confusion_matrix: {what} holds {labels[outside][0]}, outside the {n_classes} class_names "
            f"(indices 0..{n_classes - 1})"
        )
    return labels.astype(np.int64)
