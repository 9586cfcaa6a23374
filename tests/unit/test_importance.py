"""Parameter importance's computation (storage.panels.rank_params) on synthetic runs whose metric one param drives."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from runstream.storage import panels
from runstream.storage.panels import MIN_RUNS, Busy, Unrankable, rank_params


def _runs(n: int = 200, seed: int = 3) -> tuple[list, dict[str, list]]:
    rng = random.Random(seed)
    params: dict[str, list] = {"lr": [], "batch": [], "opt": [], "amp": [], "run_name": [], "const": []}
    metric = []
    for i in range(n):
        lr = rng.uniform(0, 1)
        opt = rng.choice(["adam", "sgd", "rmsprop"])
        params["lr"].append(lr)
        params["batch"].append(rng.choice([16, 32, 64]))
        params["opt"].append(opt)
        params["amp"].append(rng.random() < 0.5)
        params["run_name"].append(f"run-{i}")
        params["const"].append(7)
        metric.append(5 * lr + (0.4 if opt == "sgd" else 0.0) + rng.gauss(0, 0.05))
    return metric, params


def _by_name(ranked: list[dict]) -> dict[str, dict]:
    return {p["param"]: p for p in ranked}


def test_the_driving_param_ranks_first_and_the_category_second() -> None:
    metric, params = _runs()
    ranked, model, runs = rank_params(metric, params)
    assert runs == 200
    assert [p["param"] for p in ranked[:2]] == ["lr", "opt"]
    assert math.isclose(sum(p["importance"] for p in ranked), 1.0)
    found = _by_name(ranked)
    assert found["lr"]["importance"] > 0.7 and found["lr"]["correlation"] > 0.9
    assert 0 < found["opt"]["correlation"] < 1  # the strongest level's (sgd) r, positive
    assert found["const"]["importance"] == 0 and found["const"]["correlation"] is None
    # A category is one-hot encoded (three levels); a value only one run has is no category (the names).
    assert model["features"] == 1 + 1 + 3 + 1
    assert found["run_name"]["importance"] == 0 and found["run_name"]["correlation"] is None
    assert model["oob_r2"] > 0.9 and model["random_state"] == 0
    assert rank_params(metric, params) == (ranked, model, runs)  # seeded


def test_by_default_constants_and_many_valued_strings_are_left_out() -> None:
    metric, params = _runs()
    ranked, _, _ = rank_params(metric, params, explicit=False)
    assert {p["param"] for p in ranked} == {"lr", "batch", "opt", "amp"}
    assert ranked[0]["param"] == "lr"
    with pytest.raises(Unrankable):
        rank_params(metric, {"const": params["const"]}, explicit=False)


def test_runs_without_a_finite_metric_are_left_out() -> None:
    metric, params = _runs(50)
    metric[:10] = [None, math.nan, "NaN", "Infinity", "text", None, None, None, None, None]
    params["lr"][10] = None  # a missing param value is left to the forest, and out of the correlation
    params["lr"][11] = "NaN"
    ranked, _, runs = rank_params(metric, params)
    assert runs == 40 and ranked[0]["param"] == "lr"


def test_too_few_runs_is_unrankable() -> None:
    metric, params = _runs(10)
    metric = [None] * 8 + metric[8:]
    with pytest.raises(Unrankable, match=f"2 of the runs have a numeric metric; .* at least {MIN_RUNS}"):
        rank_params(metric, params)


def test_a_constant_metric_has_no_importance() -> None:
    _, params = _runs(20)
    ranked, _, _ = rank_params([1.0] * 20, params)
    assert all(p["importance"] == 0 and p["correlation"] is None for p in ranked)


def test_a_categorys_correlation_leaves_out_runs_without_it() -> None:
    # "a" runs score 1, "b" runs 0, runs without the key 1: over the runs that have it, "a" is r = 1.
    opt = ["a", "b", None] * 10
    metric = [0.0 if v == "b" else 1.0 for v in opt]
    ranked, _, _ = rank_params(metric, {"opt": opt})
    assert ranked[0]["correlation"] == pytest.approx(1.0)


def test_the_forest_fits_at_most_max_features_columns() -> None:
    rng = random.Random(5)
    n, keys, levels = 400, 40, 20  # 800 categories
    lrs = [rng.random() for _ in range(n)]
    params: dict[str, list[Any]] = {f"k{j:02}": [f"v{rng.randrange(levels)}" for _ in range(n)] for j in range(keys)}
    params["lr"] = lrs
    metric = [5 * lr + rng.gauss(0, 0.05) for lr in lrs]
    ranked, model, _ = rank_params(metric, params)
    assert model["features"] == panels.MAX_FEATURES
    assert ranked[0]["param"] == "lr" and len(ranked) == keys + 1
    assert all(p["correlation"] is not None for p in ranked)  # each key kept its most frequent categories


def test_many_runs_are_scored_on_runs_held_out_of_the_fit() -> None:
    metric, params = _runs(panels.HOLD_OUT_FROM)
    ranked, model, runs = rank_params(metric, {"lr": params["lr"], "opt": params["opt"]})
    assert runs == panels.HOLD_OUT_FROM and ranked[0]["param"] == "lr"
    assert model["oob_r2"] > 0.9


def test_fits_past_the_most_at_once_are_refused() -> None:
    metric, params = _runs(50)
    held = [panels._FITS.acquire(blocking=False) for _ in range(panels.MAX_FITS)]
    try:
        assert all(held)
        with pytest.raises(Busy, match="retry after") as refused:
            rank_params(metric, params)
        assert refused.value.details == {"retry_after": panels.BUSY_RETRY_S}
    finally:
        for _ in held:
            panels._FITS.release()
    assert rank_params(metric, params)[2] == 50  # a slot is free again
