"""The sweep controller (grid, random, bayes; run cap and target) and hyperband's brackets and stopping rule."""

from __future__ import annotations

import math
import statistics

import pytest

from runstream import sweep_config
from runstream.streams.sweep_controller import Claim, Done, Hyperband, Suggestion, Trial, suggest
from runstream.sweep_config import validate

GRID = {
    "method": "grid",
    "parameters": {"a": {"values": [1, 2]}, "b": {"parameters": {"c": {"min": 0, "max": 2}}}},
}


def _claims(points: list[tuple[int, dict]]) -> list[Claim]:
    return [Claim(f"r{i}", params, grid_index=i) for i, params in points]


# --- grid --------------------------------------------------------------------------------------


def test_grid_hands_out_the_lowest_unclaimed_index_until_every_one_is_claimed():
    cfg = validate(GRID)
    points = sweep_config.grid_points(cfg)
    assert len(points) == 6
    claims: list[Claim] = []
    for index in range(6):
        got = suggest(cfg, [], claims, rng_seed=index)
        assert got == Suggestion(points[index], grid_index=index)
        claims.append(Claim(f"r{index}", got.params, got.grid_index))
    done = suggest(cfg, [], claims, rng_seed=6)
    assert done == Done("every point of the grid (6) is claimed")


def test_a_grid_at_the_limit_computes_only_the_point_it_hands_out():
    cfg = validate({"method": "grid", "parameters": {"a": {"min": 1, "max": 1000}, "b": {"values": list(range(100))}}})
    claims = [Claim(f"r{i}", {}, grid_index=i) for i in range(5)]
    assert suggest(cfg, [], claims, rng_seed=0) == Suggestion({"a": 1, "b": 5}, grid_index=5)
    every = [Claim(f"r{i}", {}, grid_index=i) for i in range(100_000)]
    assert suggest(cfg, [], every, rng_seed=0) == Done("every point of the grid (100000) is claimed")


def test_a_released_grid_claim_is_handed_out_again():
    cfg = validate(GRID)
    points = sweep_config.grid_points(cfg)
    # Claims 0..5 except 2 and 4 (given back: the API does not pass them in).
    claims = _claims([(i, points[i]) for i in (0, 1, 3, 5)])
    assert suggest(cfg, [], claims, rng_seed=0) == Suggestion(points[2], grid_index=2)
    claims += _claims([(2, points[2])])
    assert suggest(cfg, [], claims, rng_seed=0) == Suggestion(points[4], grid_index=4)


# --- random ------------------------------------------------------------------------------------


RANDOM = {
    "method": "random",
    "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "opt": {"parameters": {"name": {"values": ["adam", "sgd"]}}},
        "epochs": {"value": 3},
    },
}


def test_random_is_seeded_by_the_callers_seed_and_stays_in_range():
    cfg = validate(RANDOM)
    first = suggest(cfg, [], [], rng_seed=11)
    assert isinstance(first, Suggestion) and first.grid_index is None
    assert set(first.params) == {"epochs", "lr", "opt.name"}
    assert suggest(cfg, [], [], rng_seed=11) == first
    seen = [suggest(cfg, [], [], rng_seed=seed).params for seed in range(200)]
    assert all(1e-4 <= p["lr"] <= 1e-1 and p["opt.name"] in ("adam", "sgd") and p["epochs"] == 3 for p in seen)
    assert len({p["lr"] for p in seen}) == 200
    # One seed with another number of claims gives another suggestion.
    claims = [Claim(f"r{i}", {}) for i in range(3)]
    again = [suggest(cfg, [], claims[:n], rng_seed=11) for n in range(4)]
    assert again[0] == first and len({s.params["lr"] for s in again}) == 4


# --- run cap and target --------------------------------------------------------------------------


def test_run_cap_counts_claims_not_given_back():
    cfg = validate({**RANDOM, "run_cap": 2})
    one = _claims([(0, {})])
    assert isinstance(suggest(cfg, [], one, rng_seed=0), Suggestion)
    assert suggest(cfg, [], one + _claims([(1, {})]), rng_seed=0) == Done("run_cap 2 reached")


@pytest.mark.parametrize(
    ("goal", "target", "hit", "miss"), [("minimize", 0.1, 0.05, 0.2), ("maximize", 0.9, 0.95, 0.8)]
)
def test_the_metric_target_reached_by_a_finished_run_is_done(goal, target, hit, miss):
    cfg = validate({**RANDOM, "metric": {"name": "loss", "goal": goal, "target": target}})
    not_yet = [
        Trial("a", {}, "finished", miss),
        Trial("b", {}, "running", hit),  # running: its value may still change
        Trial("c", {}, "failed", None),
        Trial("d", {}, "finished", math.nan),
    ]
    assert isinstance(suggest(cfg, not_yet, [], rng_seed=0), Suggestion)
    done = suggest(cfg, [*not_yet, Trial("e", {}, "finished", target)], [], rng_seed=0)
    assert done == Done(f"run e reached the target: loss {target:g}")


# --- bayes -------------------------------------------------------------------------------------


BAYES = {
    "method": "bayes",
    "metric": {"name": "loss", "goal": "minimize"},
    "parameters": {
        "x": {"min": 0.0, "max": 1.0},
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "model": {"parameters": {"layers": {"values": [1, 2, 3, 4]}}},
    },
}


def _loss(p: dict) -> float:
    return (p["x"] - 0.3) ** 2 + (math.log10(p["lr"]) + 2.5) ** 2 + 0.3 * abs(p["model.layers"] - 3)


def _best_of(method: str, seed: int, budget: int = 40) -> float:
    """The sweep loop as the API and agents run it, one run at a time."""
    cfg = validate({**BAYES, "method": method})
    trials: list[Trial] = []
    claims: list[Claim] = []
    for i in range(budget):
        got = suggest(cfg, trials, claims, rng_seed=seed * 1000 + i)
        assert isinstance(got, Suggestion)
        claims.append(Claim(f"r{i}", got.params))
        trials.append(Trial(f"r{i}", got.params, "finished", _loss(got.params)))
    return min(t.value for t in trials if t.value is not None)


def test_bayes_beats_random_on_a_known_function_with_the_same_budget():
    seeds = range(5)
    bayes = statistics.median(_best_of("bayes", s) for s in seeds)
    random_ = statistics.median(_best_of("random", s) for s in seeds)
    assert bayes < random_


def test_bayes_is_seeded_and_keeps_every_parameter_in_its_domain():
    cfg = validate(
        {
            **BAYES,
            "parameters": {
                "q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.1},
                "qi": {"distribution": "q_uniform", "min": 0, "max": 256, "q": 32},
                "ql": {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 8},
                "i": {"min": 1, "max": 5},
                "inv": {"distribution": "inv_log_uniform_values", "min": 1, "max": 100},
                "old": {"distribution": "log_uniform", "min": -3, "max": 0},
                "shape": {"values": [[1, 2], {"w": 3}]},
                "noise": {"distribution": "normal", "mu": 0, "sigma": 1},
                "frac": {"distribution": "beta", "a": 2, "b": 2},
                "fixed": {"value": "x"},
            },
        }
    )
    trials: list[Trial] = []
    claims: list[Claim] = []
    for i in range(25):
        got = suggest(cfg, trials, claims, rng_seed=i)
        assert got == suggest(cfg, trials, claims, rng_seed=i)  # seeded: the same answer twice
        p = got.params
        assert set(p) == set(cfg.params)
        assert p["q"] in [k / 10 for k in range(11)]
        assert p["qi"] in range(0, 257, 32)
        assert isinstance(p["ql"], int) and p["ql"] % 8 == 0 and 8 <= p["ql"] <= 1000
        assert p["i"] in range(1, 6)
        assert 1 <= p["inv"] <= 100 and math.exp(-3) <= p["old"] <= 1
        assert p["shape"] in ([1, 2], {"w": 3})
        assert isinstance(p["noise"], float) and 0 <= p["frac"] <= 1 and p["fixed"] == "x"
        claims.append(Claim(f"r{i}", p))
        # every third run is still running (a claim without a value), one in five crashed
        if i % 3:
            state, value = ("crashed", None) if i % 5 == 0 else ("finished", p["q"] + p["i"])
            trials.append(Trial(f"r{i}", p, state, value))


def test_bayes_leaves_out_trials_whose_parameters_are_not_the_sweeps():
    cfg = validate(BAYES)
    odd = [
        Trial("a", {"x": 0.5}, "finished", 1.0),  # missing parameters
        Trial("b", {"x": "high", "lr": 0.01, "model.layers": 2}, "finished", 1.0),
        Trial("c", {"x": 0.5, "lr": 0.01, "model.layers": 9}, "finished", 1.0),  # not one of the values
        Trial("d", {"x": 7.0, "lr": 0.01, "model.layers": 2}, "finished", 2.0),  # outside: kept, brought inside
    ]
    got = suggest(cfg, odd, [Claim("e", {})], rng_seed=3)
    assert isinstance(got, Suggestion) and 0 <= got.params["x"] <= 1


def test_bayes_with_only_random_parameters_samples_them():
    cfg = validate({**BAYES, "parameters": {"n": {"distribution": "normal"}, "k": {"value": 1}}})
    got = suggest(cfg, [], [], rng_seed=5)
    assert set(got.params) == {"k", "n"} and got == suggest(cfg, [], [], rng_seed=5)


# --- hyperband ---------------------------------------------------------------------------------


def test_hyperband_is_the_configurations():
    assert Hyperband is sweep_config.Hyperband


@pytest.mark.parametrize(
    ("hyperband", "brackets"),
    [
        (Hyperband("loss", eta=3, max_iter=27, s=3), [1, 3, 9]),
        (Hyperband("loss", eta=3, max_iter=81, s=3), [3, 9, 27]),
        (Hyperband("loss", eta=3, max_iter=81, s=2), [9, 27]),
        (Hyperband("loss", eta=2, max_iter=5, s=2), [1, 2]),  # 2.5 and 1.25, rounded down
        (Hyperband("loss", eta=3, max_iter=10, s=5), [1, 3]),  # 0.37 and below are dropped
    ],
)
def test_hyperband_max_iter_brackets(hyperband, brackets):
    assert hyperband.brackets() == brackets


@pytest.mark.parametrize(
    ("hyperband", "first"),
    [
        (Hyperband("loss", eta=3, min_iter=3, s=3), [3, 9, 27, 81]),  # s is not used with min_iter (W&B)
        (Hyperband("loss", eta=2, min_iter=1), [1, 2, 4, 8, 16]),
        (Hyperband("loss", eta=1.5, min_iter=2), [2, 3, 4, 6, 10]),  # 4.5, 6.75, 10.125 rounded down
    ],
)
def test_hyperband_min_iter_brackets_are_wandbs_100_up_to_2_31(hyperband, first):
    brackets = hyperband.brackets()
    assert brackets[: len(first)] == first
    assert brackets[-1] <= 2**31 - 1 and len(brackets) <= 100


def test_hyperband_min_iter_without_s_is_wandbs_unbounded_series():
    cfg = validate(
        {**RANDOM, "metric": {"name": "loss"}, "early_terminate": {"type": "hyperband", "min_iter": 3, "eta": 3}}
    )
    brackets = cfg.early_terminate.brackets()
    assert brackets[:4] == [3, 9, 27, 81]
    assert brackets == [3 * 3**k for k in range(19)]  # up to 2**31 - 1
    slow = Hyperband("loss", eta=1.01, min_iter=1).brackets()
    assert len(slow) < 100 and slow[-1] == int(1.01**99)  # 100 multiplications, repeats once each
    max_form = validate(
        {**RANDOM, "metric": {"name": "loss"}, "early_terminate": {"type": "hyperband", "max_iter": 27}}
    )
    assert max_form.early_terminate.brackets() == [1, 3, 9]


def _stopped(hyperband, goal, vals, bests=None):
    """The values at the bracket whose runs are stopped, each judged against the others."""
    out = []
    for i, v in enumerate(vals):
        best = bests[i] if bests else None
        if hyperband.should_stop(v, vals[:i] + vals[i + 1 :], goal, best=best):
            out.append(v)
    return out


def test_should_stop_stops_exactly_the_runs_outside_the_top_fraction():
    hb = Hyperband("val/loss", eta=3)
    assert hb.strict  # W&B's default
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    # W&B's cut: index int(6 / 3) = 2 of the ranked values at the bracket
    assert _stopped(hb, "minimize", values) == [0.4, 0.5, 0.6]
    assert _stopped(hb, "maximize", values) == [0.1, 0.2, 0.3]
    # ties with the cut go on
    assert _stopped(hb, "minimize", [1.0, 1.0, 1.0]) == []
    # strict judges by the value at the bracket, whatever the run's best was
    assert _stopped(hb, "minimize", values, bests=[0.01] * 6) == [0.4, 0.5, 0.6]


def test_should_stop_without_strict_judges_by_the_best_so_far_against_the_cut_of_values_at_the_bracket():
    hb = Hyperband("val/loss", eta=3, strict=False)
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # at the bracket; the cut stays 0.3
    bests = [0.1, 0.2, 0.3, 0.25, 0.5, 0.3]  # 0.4's run was at 0.25 earlier, 0.6's at 0.3 (the cut: a tie)
    assert _stopped(hb, "minimize", values, bests) == [0.5]
    assert _stopped(hb, "minimize", values) == [0.4, 0.5, 0.6]  # no best given: the value at the bracket
    assert _stopped(hb, "maximize", values, bests=[0.1, 0.45, 0.3, 0.4, 0.5, 0.6]) == [0.1, 0.3]
    assert hb.should_stop(0.5, [0.1, 0.2, 0.3, 0.4, 0.6], "minimize", best=0.45, iteration=9) == (
        "val/loss's best 0.45 up to iteration 9 is worse than the bracket's cut 0.3 (top 1/3 of 6 runs)"
    )


def test_should_stop_needs_two_values_and_ignores_non_finite_ones():
    hb = Hyperband("loss", eta=3)
    assert hb.should_stop(5.0, [], "minimize") is None
    assert hb.should_stop(5.0, [math.nan, math.inf], "minimize") is None
    assert hb.should_stop(math.nan, [1.0, 2.0], "minimize") is None
    assert hb.should_stop(5.0, [1.0], "minimize") == "loss 5 is worse than the bracket's cut 1 (top 1/3 of 2 runs)"
    assert hb.should_stop(1.0, [5.0], "minimize") is None
    assert Hyperband("loss", strict=False).should_stop(5.0, [1.0], "minimize", best=math.inf) is None


def test_should_stop_gives_the_reason():
    hb = Hyperband("val/loss", eta=3)
    others = [0.1, 0.2, 0.42, 0.5, 0.7]
    assert hb.should_stop(0.91, others, "minimize", iteration=9) == (
        "val/loss 0.91 at iteration 9 is worse than the bracket's cut 0.42 (top 1/3 of 6 runs)"
    )
