"""wandb.sklearn's plots: ``runstream.sklearn.plot_classifier(model, ...)`` and the other ``plot_*`` functions
compute a chart from a fitted scikit-learn model or its predictions and log it to the current run, each under
wandb's key ("confusion_matrix", "roc", "precision_recall", "feature_importances", ...), one ``log()`` each,
as wandb does. scikit-learn is imported when a function is called, not with this module.

The charts are ``runstream.plot``'s kinds: confusion matrix, ROC and PR curves as such; feature importances,
class proportions and summary metrics as bars; learning and calibration curves as lines; residuals as a
scatter; outlier candidates (Cook's distance) as bars. Missing arguments are a ValueError (wandb prints an
error and logs nothing). Functions that refit a model (calibration, residuals, outlier candidates) fit a copy
(``sklearn.base.clone``); wandb refits the model passed in. ``plot_clusterer``, ``plot_elbow_curve`` and
``plot_silhouette`` are not built.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Sequence
from typing import Any

from runstream import plot
from runstream.media import Chart, Table, _require

log = logging.getLogger("runstream")

__all__ = [
    "plot_calibration_curve", "plot_class_proportions", "plot_classifier", "plot_confusion_matrix",
    "plot_feature_importances", "plot_learning_curve", "plot_outlier_candidates", "plot_precision_recall",
    "plot_regressor", "plot_residuals", "plot_roc", "plot_summary_metrics",
]  # fmt: skip

#: wandb.sklearn's cap on the points of its tables (utils.chart_limit).
CHART_LIMIT = 1000
#: Residuals keep at most this many points per dataset (train, test), as wandb's.
MAX_RESIDUAL_POINTS = 100


def plot_classifier(
    model: Any,
    X_train: Any,  # noqa: N803 - wandb's argument names
    X_test: Any,  # noqa: N803
    y_train: Any,
    y_test: Any,
    y_pred: Any,
    y_probas: Any,
    labels: Sequence[str] | None,
    is_binary: bool = False,
    model_name: str = "Classifier",
    feature_names: Sequence[str] | None = None,
    log_learning_curve: bool = False,
) -> None:
    """Every classifier chart wandb's ``plot_classifier`` logs: feature importances, (learning curve),
    confusion matrix, summary metrics, class proportions, calibration curve (binary labels only), ROC, PR."""
    naive_bayes = _sklearn("naive_bayes")
    multinomial = isinstance(model, naive_bayes.MultinomialNB)  # wandb skips these two for it
    log.info("runstream: plotting %s", model_name)
    if not multinomial:
        plot_feature_importances(model, feature_names)
    if log_learning_curve:
        plot_learning_curve(model, X_train, y_train)
    plot_confusion_matrix(y_test, y_pred, labels)
    plot_summary_metrics(model, X=X_train, y=y_train, X_test=X_test, y_test=y_test)
    plot_class_proportions(y_train, y_test, labels)
    if not multinomial:
        plot_calibration_curve(model, X_train, y_train, model_name)
    plot_roc(y_test, y_probas, labels)
    plot_precision_recall(y_test, y_probas, labels)


def plot_regressor(
    model: Any,
    X_train: Any,  # noqa: N803
    X_test: Any,  # noqa: N803
    y_train: Any,
    y_test: Any,
    model_name: str = "Regressor",
) -> None:
    """Every regressor chart wandb's ``plot_regressor`` logs: summary metrics, learning curve, outlier
    candidates and residuals."""
    log.info("runstream: plotting %s", model_name)
    plot_summary_metrics(model, X_train, y_train, X_test, y_test)
    plot_learning_curve(model, X_train, y_train)
    plot_outlier_candidates(model, X_train, y_train)
    plot_residuals(model, X_train, y_train)


def plot_roc(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    plot_micro: bool = True,
    plot_macro: bool = True,
    classes_to_plot: Sequence[Any] | None = None,
) -> None:
    """``runstream.plot.roc_curve`` logged as "roc" (``plot_micro``/``plot_macro`` are ignored, as in wandb)."""
    _required("plot_roc", y_true=y_true, y_probas=y_probas)
    _log({"roc": plot.roc_curve(y_true, y_probas, labels, classes_to_plot)})


def plot_precision_recall(
    y_true: Any = None,
    y_probas: Any = None,
    labels: Sequence[str] | None = None,
    plot_micro: bool = True,
    classes_to_plot: Sequence[Any] | None = None,
) -> None:
    """``runstream.plot.pr_curve`` logged as "precision_recall" (``plot_micro`` is ignored, as in wandb)."""
    _required("plot_precision_recall", y_true=y_true, y_probas=y_probas)
    _log({"precision_recall": plot.pr_curve(y_true, y_probas, labels, classes_to_plot)})


def plot_confusion_matrix(
    y_true: Any = None,
    y_pred: Any = None,
    labels: Sequence[str] | None = None,
    true_labels: Sequence[Any] | None = None,
    pred_labels: Sequence[Any] | None = None,
    normalize: bool = False,
) -> None:
    """A confusion matrix logged as "confusion_matrix": the classes are the sorted labels of ``y_true`` and
    ``y_pred``; ``labels`` names them in that order when it holds one name per class (wandb's rule), else it
    names integer classes by index; ``normalize`` divides each true class's row by its total;
    ``true_labels``/``pred_labels`` keep only those rows/columns (and those classes on the axes)."""
    np = _numpy()
    _required("plot_confusion_matrix", y_true=y_true, y_pred=y_pred)
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape != predicted.shape or truth.ndim != 1:
        raise ValueError(
            f"plot_confusion_matrix: y_true and y_pred must be 1-D and of one length, got {truth.shape} "
            f"and {predicted.shape}"
        )
    classes = _sklearn("utils.multiclass").unique_labels(truth, predicted)
    if labels is not None and len(labels) == len(classes):
        names = [str(name) for name in labels]  # wandb: one name per sorted class, in that order
    else:
        names = _names(classes, labels)
    true_index, pred_index = np.searchsorted(classes, truth), np.searchsorted(classes, predicted)
    rows, axis_names = plot._confusion_rows(np, true_index, pred_index, names, normalize=normalize)
    if true_labels is not None or pred_labels is not None:
        rows, axis_names = _keep_cells(rows, axis_names, classes, names, true_labels, pred_labels)
    _log({"confusion_matrix": plot._confusion_chart_from_rows(rows, axis_names, "Confusion Matrix")})


def plot_feature_importances(
    model: Any = None,
    feature_names: Sequence[str] | None = None,
    title: str = "Feature Importance",
    max_num_features: int = 50,
) -> None:
    """The model's feature importances (``feature_importances_``, else ``feature_log_prob_``, else ``coef_``)
    as bars, largest first, at most ``max_num_features``, logged as "feature_importances". Models with
    importances per class (a 2-D ``coef_``) are skipped with a warning, as in wandb."""
    np = _numpy()
    _required("plot_feature_importances", model=model)
    _check_fitted(model)
    found = next((a for a in ("feature_importances_", "feature_log_prob_", "coef_") if hasattr(model, a)), None)
    if found is None:
        log.warning(
            "runstream: %s has none of feature_importances_, feature_log_prob_, coef_; no feature importances to plot",
            type(model).__name__,
        )
        return
    importances = np.asarray(getattr(model, found), dtype=np.float64)
    if sum(size > 1 for size in importances.shape) > 1:
        log.warning(
            "runstream: %s.%s has shape %s (one row per class); only 1-D feature importances are plotted",
            type(model).__name__,
            found,
            importances.shape,
        )
        return
    importances = importances.ravel()
    order = np.argsort(importances, kind="stable")[::-1][: max(1, int(max_num_features))]
    if feature_names is None:
        names = [str(i) for i in order.tolist()]
    else:
        names = [str(n) for n in np.asarray(feature_names)[order].tolist()]
    table = Table(columns=["feature_names", "importances"], data=list(zip(names, importances[order].tolist())))
    _log({"feature_importances": plot.bar(table, "feature_names", "importances", title=title)})


def plot_class_proportions(y_train: Any = None, y_test: Any = None, labels: Sequence[str] | None = None) -> None:
    """How many samples of each class the train and test sets hold, as bars ("<class> (train)", "<class>
    (test)"), logged as "class_proportions"."""
    np = _numpy()
    _required("plot_class_proportions", y_train=y_train, y_test=y_test)
    train, test = np.asarray(y_train), np.asarray(y_test)
    classes = _sklearn("utils.multiclass").unique_labels(train, test)[:CHART_LIMIT]
    rows = []
    for value, name in zip(classes.tolist(), _names(classes, labels), strict=True):
        for dataset, values in (("train", train), ("test", test)):
            rows.append([f"{name} ({dataset})", name, dataset, int((values == value).sum())])
    table = Table(columns=["label", "class", "dataset", "count"], data=rows)
    _log({"class_proportions": plot.bar(table, "label", "count", title="Class Proportions")})


def plot_learning_curve(
    model: Any = None,
    X: Any = None,  # noqa: N803
    y: Any = None,
    cv: Any = None,
    shuffle: bool = False,
    random_state: Any = None,
    train_sizes: Any = None,
    n_jobs: int | None = 1,
    scoring: Any = None,
) -> None:
    """scikit-learn's ``learning_curve`` (mean train and cross-validation scores by train size) as two lines,
    logged as "learning_curve"."""
    np = _numpy()
    _required("plot_learning_curve", model=model, X=X, y=y)
    sizes, train_scores, test_scores = _sklearn("model_selection").learning_curve(
        model,
        X,
        np.asarray(y),
        cv=cv,
        n_jobs=n_jobs,
        train_sizes=np.linspace(0.1, 1.0, 5) if train_sizes is None else train_sizes,
        scoring=scoring,
        shuffle=shuffle,
        random_state=random_state,
    )
    rows = []
    for size, train, test in zip(sizes.tolist(), train_scores.mean(axis=1), test_scores.mean(axis=1), strict=True):
        rows += [["train", round(float(train), 2), size], ["test", round(float(test), 2), size]]
    table = Table(columns=["dataset", "score", "train_size"], data=rows)
    _log({"learning_curve": plot.line(table, "train_size", "score", stroke="dataset", title="Learning Curve")})


def plot_summary_metrics(
    model: Any = None,
    X: Any = None,  # noqa: N803
    y: Any = None,
    X_test: Any = None,  # noqa: N803
    y_test: Any = None,
) -> None:
    """The model's test metrics as bars, logged as "summary_metrics": accuracy, precision, recall and F1
    (weighted) for classifiers; MAE, MSE and R² for regressors; rounded to 2 places as wandb's."""
    _required("plot_summary_metrics", model=model, X=X, y=y, X_test=X_test, y_test=y_test)
    _check_fitted(model)
    base, metrics = _sklearn("base"), _sklearn("metrics")
    predicted = model.predict(X_test)
    values: dict[str, float] = {}
    if base.is_classifier(model):
        values["accuracy_score"] = metrics.accuracy_score(y_test, predicted)
        for name in ("precision", "recall", "f1"):
            score = getattr(metrics, f"{name}_score")(y_test, predicted, average="weighted", zero_division=0)
            values["f1_score" if name == "f1" else name] = score
    elif base.is_regressor(model):
        values["mae"] = metrics.mean_absolute_error(y_test, predicted)
        values["mse"] = metrics.mean_squared_error(y_test, predicted)
        values["r2_score"] = metrics.r2_score(y_test, predicted)
    rows = [[name, round(float(value), 2), type(model).__name__] for name, value in values.items()]
    table = Table(columns=["metric_name", "metric_value", "model_name"], data=rows)
    _log({"summary_metrics": plot.bar(table, "metric_name", "metric_value", title="Summary Metrics")})


def plot_calibration_curve(
    clf: Any = None,
    X: Any = None,  # noqa: N803
    y: Any = None,
    clf_name: str = "Classifier",
) -> None:
    """Calibration curves (fraction of positives by mean predicted probability, 10 bins) of a copy of ``clf``
    calibrated with isotonic and with sigmoid regression, and of a logistic regression baseline, next to the
    perfectly calibrated diagonal, logged as "calibration_curve". Binary 0/1 labels only (others are skipped
    with a warning, as in wandb)."""
    np = _numpy()
    _required("plot_calibration_curve", clf=clf, X=X, y=y)
    _check_fitted(clf)
    labels = np.asarray(y)
    if labels.dtype.kind in "USO" or not ((labels == 0) | (labels == 1)).all():
        log.warning("runstream: plot_calibration_curve needs binary 0/1 labels; skipping the calibration curve")
        return
    calibration = _sklearn("calibration")
    features = np.asarray(X)
    if isinstance(clf, _sklearn("naive_bayes").ComplementNB):  # it needs non-negative features
        features = features - features.min()
    x_train, x_test, y_train, y_test = _sklearn("model_selection").train_test_split(
        features, labels, test_size=0.9, random_state=42
    )
    models = [
        ("Logistic", _sklearn("linear_model").LogisticRegression(C=1.0)),
        (f"{clf_name} Isotonic", calibration.CalibratedClassifierCV(clf, cv=2, method="isotonic")),
        (f"{clf_name} Sigmoid", calibration.CalibratedClassifierCV(clf, cv=2, method="sigmoid")),
    ]
    rows: list[list[Any]] = [["Perfectly calibrated", 0.0, 0.0], ["Perfectly calibrated", 1.0, 1.0]]
    for name, model in models:
        with warnings.catch_warnings():  # the baseline may not converge on unscaled features; it is only a baseline
            warnings.simplefilter("ignore", _sklearn("exceptions").ConvergenceWarning)
            model.fit(x_train, y_train)  # the calibrators fit clones of clf: the user's model is left as it was
        positive = model.predict_proba(x_test)[:, 1]
        fraction, mean_predicted = calibration.calibration_curve(y_test, positive, n_bins=10)
        rows += [[name, round(float(f), 3), round(float(m), 3)] for f, m in zip(fraction, mean_predicted, strict=True)]
    table = Table(columns=["model", "fraction_of_positives", "mean_predicted_value"], data=rows)
    chart = plot.line(table, "mean_predicted_value", "fraction_of_positives", stroke="model", title="Calibration")
    _log({"calibration_curve": chart})


def plot_residuals(regressor: Any = None, X: Any = None, y: Any = None) -> None:  # noqa: N803
    """Residuals (prediction - truth) against predictions of a copy of ``regressor`` fitted on 80% of the data,
    for that train part and the held-out 20% (at most 100 points each, as wandb's), as a scatter logged as
    "residuals"; the columns also hold each part's R² score."""
    np = _numpy()
    _required("plot_residuals", regressor=regressor, X=X, y=y)
    _check_fitted(regressor)
    x_train, x_test, y_train, y_test = _sklearn("model_selection").train_test_split(X, np.asarray(y), test_size=0.2)
    model = _sklearn("base").clone(regressor).fit(x_train, y_train)
    scores = {"train": model.score(x_train, y_train), "test": model.score(x_test, y_test)}
    rows = []
    for dataset, features, truth in (("train", x_train, y_train), ("test", x_test, y_test)):
        predicted = model.predict(features)[:MAX_RESIDUAL_POINTS]
        residuals = predicted - truth[:MAX_RESIDUAL_POINTS]
        rows += [
            [dataset, p, r, scores["train"], scores["test"]]
            for p, r in zip(predicted.tolist(), residuals.tolist(), strict=True)
        ]
    table = Table(columns=["dataset", "y_pred", "residuals", "train_score", "test_score"], data=rows)
    _log({"residuals": plot.scatter(table, "y_pred", "residuals", title="Residuals")})


def plot_outlier_candidates(regressor: Any = None, X: Any = None, y: Any = None) -> None:  # noqa: N803
    """Cook's distance of each sample (its influence on a copy of ``regressor`` fitted on X, y) as bars (the
    first 1,000 samples), logged as "outlier_candidates"; the columns also hold the share of samples past the
    4/n rule-of-thumb threshold and that threshold."""
    np = _numpy()
    _required("plot_outlier_candidates", regressor=regressor, X=X, y=y)
    _check_fitted(regressor)
    features, truth = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    model = _sklearn("base").clone(regressor).fit(features, truth)
    leverage = (features * np.linalg.pinv(features).T).sum(1)  # the diagonal of the hat matrix
    degrees = features.shape[0] - np.linalg.matrix_rank(features)
    residuals = truth - model.predict(features)
    mse = np.dot(residuals, residuals) / max(degrees, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        studentized = residuals / np.sqrt(mse) / np.sqrt(1 - leverage)
        distance = studentized**2 / features.shape[1] * (leverage / (1 - leverage))
    threshold = 4 / features.shape[0]
    share = round(float((distance >= threshold).sum() / features.shape[0] * 100.0), 3)
    rows = [[d, i, share, threshold] for i, d in enumerate(distance[:CHART_LIMIT].tolist())]
    table = Table(columns=["distance", "instance_indicies", "outlier_percentage", "influence_threshold"], data=rows)
    _log({"outlier_candidates": plot.bar(table, "instance_indicies", "distance", title="Outlier Candidates")})


#: wandb.sklearn's plots runstream does not draw (yet), with what to do instead.
_NOT_BUILT = ("plot_clusterer", "plot_elbow_curve", "plot_silhouette")


def __getattr__(name: str) -> Any:
    if name in _NOT_BUILT:
        raise AttributeError(
            f"runstream.sklearn.{name} is not built (wandb.sklearn's clusterer plots are not ported); "
            "compute the values yourself and log them with runstream.plot.line or runstream.plot.bar"
        )
    raise AttributeError(f"module 'runstream.sklearn' has no attribute {name!r}")


# -- helpers ---------------------------------------------------------------------------


def _log(data: dict[str, Chart]) -> None:
    from runstream.lifecycle import current  # the run wandb.sklearn logs to: the current one

    current().log(data)


def _sklearn(module: str) -> Any:
    _require("sklearn", "scikit-learn", "runstream.sklearn")
    return importlib.import_module(f"sklearn.{module}")


def _numpy() -> Any:
    return _require("numpy", "numpy", "runstream.sklearn")


def _required(function: str, **arguments: Any) -> None:
    missing = [name for name, value in arguments.items() if value is None]
    if missing:
        raise ValueError(f"runstream.sklearn.{function} needs {', '.join(missing)}")


def _check_fitted(model: Any) -> None:
    """A clear error for a model that has not been fitted yet (wandb's ``test_fitted``)."""
    validation, exceptions = _sklearn("utils.validation"), _sklearn("exceptions")
    try:
        validation.check_is_fitted(model)
    except exceptions.NotFittedError:
        raise ValueError(f"runstream.sklearn: fit the {type(model).__name__} before plotting it") from None


def _names(classes: Any, labels: Sequence[str] | None) -> list[str]:
    """Class names: ``labels[c]`` for integer classes when ``labels`` is given (wandb's rule), else the class."""
    integer = classes.dtype.kind in "iu"
    if labels is None or not integer:
        return [str(c) for c in classes.tolist()]
    values = classes.tolist()
    outside = [c for c in values if not 0 <= c < len(labels)]
    if outside:
        raise ValueError(f"runstream.sklearn: class {outside[0]} has no name in labels (it has {len(labels)})")
    return [str(labels[c]) for c in values]


def _keep_cells(
    rows: list[list[Any]],
    axis_names: list[str],
    classes: Any,
    names: list[str],
    true_labels: Sequence[Any] | None,
    pred_labels: Sequence[Any] | None,
) -> tuple[list[list[Any]], list[str]]:
    """The confusion matrix's cells restricted to the rows of ``true_labels`` and the columns of ``pred_labels``,
    and its axis names restricted to those classes (an axis not restricted keeps every class)."""
    by_class = dict(zip(classes.tolist(), names, strict=True))

    def chosen(wanted: Sequence[Any] | None) -> set[str] | None:
        return None if wanted is None else {by_class[c] for c in wanted if c in by_class}

    rows_kept, columns_kept = chosen(true_labels), chosen(pred_labels)
    kept = [
        row
        for row in rows
        if (rows_kept is None or row[0] in rows_kept) and (columns_kept is None or row[1] in columns_kept)
    ]
    # One list orders both axes: it keeps the classes of either restricted axis, in their order.
    on_axes = None if rows_kept is None or columns_kept is None else rows_kept | columns_kept
    return kept, [name for name in axis_names if on_axes is None or name in on_axes]
