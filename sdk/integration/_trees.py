"""What the XGBoost and LightGBM integrations share: the metric direction rules and the feature importance chart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runstream import plot
from runstream.media import Table
from runstream.run import Run

#: The key wandb's integrations log feature importance under.
FEATURE_IMPORTANCE_KEY = "Feature Importance"


def summary_goal(metric_name: str, minimize: Iterable[str], maximize: Iterable[str]) -> str | None:
    """ "min" or "max" for a metric the summary should keep the best value of (wandb's rule), else None."""
    name = metric_name.lower()
    if "loss" in name or name in minimize:
        return "min"
    if name in maximize:
        return "max"
    return None


def feature_importance_chart(pairs: Iterable[tuple[str, float]]) -> Any:
    """A bar chart of (feature, importance), as wandb logs it: ``plot.bar`` over a Feature/Importance table."""
    table = Table(columns=["Feature", "Importance"], data=[[str(name), float(value)] for name, value in pairs])
    return plot.bar(table, "Feature", "Importance", title="Feature Importance")


def log_feature_importance(run: Run, pairs: Iterable[tuple[str, float]], commit: bool = True) -> None:
    run.log({FEATURE_IMPORTANCE_KEY: feature_importance_chart(pairs)}, commit=commit)
