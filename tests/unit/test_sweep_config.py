"""The sweep configuration: loading, validation (every problem at once), grid, random sampling, nest, command line."""

from __future__ import annotations

import json
import math
import random
import statistics
import subprocess
import sys
from collections import Counter

import pytest

from runstream.sweep_config import (
    DEFAULT_COMMAND,
    MAX_GRID_POINTS,
    Hyperband,
    SweepConfigError,
    build_command,
    grid_point,
    grid_points,
    grid_size,
    load,
    nest,
    sample_random,
    validate,
)


def _cfg(parameters: dict, **extra):
    return validate({"method": "random", "parameters": parameters, **extra})


def _problems(config: dict) -> list[str]:
    with pytest.raises(SweepConfigError) as caught:
        validate(config)
    return caught.value.problems


# --- loading ---------------------------------------------------------------------------------


def test_load_reads_yaml_with_wandb_style_exponents_and_json(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "method: bayes\nmetric: {name: val/loss, goal: minimize}\n"
        "parameters:\n  lr: {distribution: log_uniform_values, min: 1e-4, max: 1E-1}\n  epochs: {value: 10}\n"
    )
    loaded = load(path)
    assert loaded["parameters"]["lr"] == {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}
    assert validate(loaded).params["lr"].min == 1e-4
    as_json = tmp_path / "sweep.json"
    as_json.write_text(json.dumps(loaded))
    assert load(str(as_json)) == loaded


def test_load_copies_a_mapping_and_reports_unreadable_files(tmp_path):
    source = {"method": "grid", "parameters": {"a": {"values": [1]}}}
    loaded = load(source)
    loaded["parameters"]["a"]["values"].append(2)
    assert source["parameters"]["a"]["values"] == [1]

    with pytest.raises(SweepConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("method: [grid\n")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SweepConfigError, match="must be a mapping"):
        load(tmp_path / "list.yaml")


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "distribution", "arguments"),
    [
        ({"value": 10}, "constant", {"value": 10}),
        ({"distribution": "constant", "value": "adam"}, "constant", {"value": "adam"}),
        ({"values": [1, 2]}, "categorical", {"values": (1, 2), "probabilities": None}),
        ({"values": ["a", "b"], "probabilities": [0.25, 0.75]}, "categorical", {"probabilities": (0.25, 0.75)}),
        ({"distribution": "categorical_w_probabilities", "values": [1], "probabilities": [1]}, "categorical", {}),
        ({"min": 1, "max": 5}, "int_uniform", {"min": 1, "max": 5}),
        ({"min": 0.0, "max": 1}, "uniform", {"min": 0.0, "max": 1}),
        ({"distribution": "uniform", "min": 0, "max": 1}, "uniform", {"min": 0, "max": 1}),
        ({"distribution": "q_uniform", "min": 0, "max": 1}, "q_uniform", {"q": 1.0}),
        ({"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25}, "q_uniform", {"q": 0.25}),
        ({"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}, "log_uniform_values", {"min": 1e-4}),
        ({"distribution": "q_log_uniform_values", "min": 1, "max": 256, "q": 8}, "q_log_uniform_values", {"q": 8}),
        ({"distribution": "inv_log_uniform_values", "min": 1, "max": 100}, "inv_log_uniform_values", {"max": 100}),
        ({"distribution": "log_uniform", "min": -5, "max": 0}, "log_uniform", {"min": -5}),
        ({"distribution": "inv_log_uniform", "min": 0, "max": 5}, "inv_log_uniform", {"max": 5}),
        ({"distribution": "q_log_uniform", "min": 0, "max": 5, "q": 2}, "q_log_uniform", {"q": 2}),
        ({"distribution": "normal"}, "normal", {"mu": 0.0, "sigma": 1.0}),
        ({"distribution": "normal", "mu": 5, "sigma": 2}, "normal", {"mu": 5, "sigma": 2}),
        ({"distribution": "q_normal", "mu": 5, "sigma": 2, "q": 2}, "q_normal", {"q": 2}),
        ({"distribution": "log_normal", "mu": 1}, "log_normal", {"mu": 1, "sigma": 1.0}),
        ({"distribution": "q_log_normal", "q": 4}, "q_log_normal", {"q": 4}),
        ({"distribution": "beta", "a": 2, "b": 5}, "beta", {"a": 2, "b": 5}),
        ({"distribution": "q_beta", "q": 0.1}, "q_beta", {"a": 1.0, "b": 1.0, "q": 0.1}),
    ],
)
def test_every_distribution_validates_with_wandb_inference_and_defaults(spec, distribution, arguments):
    param = _cfg({"p": spec}).params["p"]
    assert param.name == "p"
    assert param.distribution == distribution
    for key, value in arguments.items():
        assert getattr(param, key) == value


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"min": 0.1, "max": 0.01}, "parameters.p.max: must be greater than min (0.1)"),
        ({"min": 1, "max": 1}, "parameters.p.max: must be greater than min (1)"),
        ({"values": []}, "parameters.p.values: must be a non-empty list"),
        ({"values": "abc"}, "parameters.p.values: must be a non-empty list"),
        ({"values": [1, 2], "probabilities": [1.0]}, "parameters.p.probabilities: has 1 items, values has 2"),
        ({"values": [1, 2], "probabilities": [0.5, 0.6]}, "parameters.p.probabilities: must sum to 1, not 1.1"),
        ({"values": [1, 2], "probabilities": [-0.5, 1.5]}, "parameters.p.probabilities: must be a list of numbers"),
        ({"distribution": "wat"}, "parameters.p.distribution: unknown 'wat'"),
        ({"distribution": "uniform", "min": 0}, "parameters.p.max: required by uniform"),
        ({"distribution": "int_uniform", "min": 0, "max": 2.5}, "parameters.p.max: must be an integer"),
        ({"min": "a", "max": 1}, "parameters.p.min: must be a number, not 'a'"),
        ({"distribution": "log_uniform_values", "min": 0, "max": 1}, "parameters.p.min: must be greater than 0"),
        ({"distribution": "q_uniform", "min": 0, "max": 1, "q": 0}, "parameters.p.q: must be greater than 0"),
        ({"distribution": "q_uniform", "min": 0.1, "max": 0.2, "q": 1}, "parameters.p.q: no multiple of 1"),
        ({"distribution": "normal", "sigma": -1}, "parameters.p.sigma: must not be negative"),
        ({"distribution": "beta", "a": 0}, "parameters.p.a: must be greater than 0"),
        ({"min": 0, "max": 4, "q": 2}, "parameters.p.q: not an argument of int_uniform"),
        ({"mu": 0, "sigma": 1}, "parameters.p: cannot tell the distribution"),
        ({"value": 1, "extra": 2}, "parameters.p.extra: not an argument of constant"),
        ("adam", "parameters.p: must be a mapping"),
        ({"parameters": {}}, "parameters.p.parameters: must be a non-empty mapping"),
        ({"parameters": {"lr": {"min": 1, "max": 0}}}, "parameters.p.parameters.lr.max: must be greater than min"),
    ],
)
def test_each_bad_parameter_is_one_problem_naming_its_key_path(spec, problem):
    problems = _problems({"method": "random", "parameters": {"ok": {"value": 1}, "p": spec}})
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


def test_every_problem_is_listed_together():
    problems = _problems(
        {
            "method": "bayes",
            "color": "blue",
            "run_cap": 0,
            "command": "python train.py",
            "parameters": {
                "lr": {"min": 0.1, "max": 0.01},
                "batch": {"values": []},
                "opt": {"parameters": {"momentum": {"distribution": "normal", "sigma": "x"}}},
            },
            "early_terminate": {"type": "hyperband", "eta": 1},
        }
    )
    assert [p.split(":")[0] for p in problems] == [
        "color",
        "metric",  # required with bayes
        "metric",  # required with early_terminate
        "parameters.lr.max",
        "parameters.batch.values",
        "parameters.opt.parameters.momentum.sigma",
        "command",
        "run_cap",
        "early_terminate",  # neither min_iter nor max_iter
        "early_terminate.eta",
    ], problems
    assert "invalid sweep configuration" in str(SweepConfigError(problems))


def test_top_level_keys():
    assert _problems({"parameters": {"a": {"value": 1}}}) == ["method: required (grid, random, bayes)"]
    assert _problems({"method": "hill"})[0] == "method: must be one of grid, random, bayes, not 'hill'"
    assert _problems({"method": "grid"}) == ["parameters: required"]
    assert _problems({"method": "grid", "parameters": {"1a": {"value": 1}}})[0].startswith(
        "parameters.1a: not a valid parameter name"
    )
    for bad in ("a b", "a=b", "a..b", "a.", "/a", "-a"):
        assert _problems({"method": "grid", "parameters": {bad: {"value": 1}}})[0].startswith(
            f"parameters.{bad}: not a valid parameter name"
        ), bad


def test_wandb_keys_and_names_it_accepts():
    # `controller` (W&B's choice of who runs the controller) is accepted and ignored; '/' may be in a name.
    cfg = validate(
        {
            "method": "grid",
            "controller": {"type": "local"},
            "parameters": {"model/lr": {"value": 0.1}, "optimizer/init_args": {"parameters": {"wd/x": {"value": 2}}}},
        }
    )
    assert list(cfg.params) == ["model/lr", "optimizer/init_args.wd/x"]
    assert nest(grid_points(cfg)[0]) == {"model/lr": 0.1, "optimizer/init_args": {"wd/x": 2}}
    assert build_command(cfg, grid_points(cfg)[0], interpreter="py", program="t.py")[3:] == [
        "--model/lr=0.1",
        "--optimizer/init_args.wd/x=2",
    ]
    assert _problems({"method": "grid", "controller": "local", "parameters": {"a": {"value": 1}}}) == [
        "controller: must be a mapping such as {type: local} (it is ignored)"
    ]
    metric_problems = _problems(
        {"method": "random", "parameters": {"a": {"value": 1}}, "metric": {"goal": "up", "target": "x", "by": 1}}
    )
    assert [p.split(":")[0] for p in metric_problems] == ["metric.by", "metric.name", "metric.goal", "metric.target"]
    assert _problems({"method": "grid", "parameters": {"a": {"value": 1}}, "program": 3}) == [
        "program: must be a string"
    ]
    assert _problems({"method": "grid", "parameters": {"a": {"value": 1}}, "metric": "loss"}) == [
        "metric: must be a mapping {name, goal, target}"
    ]


def test_a_full_configuration():
    raw = {
        "program": "train.py",
        "command": ["${env}", "python3", "${program}", "${args_no_hyphens}"],
        "method": "bayes",
        "metric": {"name": "val/acc", "goal": "maximize", "target": 0.99, "impute": "worst"},
        "parameters": {"b": {"value": 1}, "a": {"parameters": {"lr": {"min": 0.0, "max": 1.0}}}},
        "run_cap": 20,
        "early_terminate": {"type": "hyperband", "min_iter": 3},
        "name": "n",
        "description": "d",
        "project": "p",
        "entity": "e",
    }
    cfg = validate(raw)
    assert cfg.method == "bayes"
    assert (cfg.metric.name, cfg.metric.goal, cfg.metric.target) == ("val/acc", "maximize", 0.99)
    assert list(cfg.params) == ["a.lr", "b"]
    assert cfg.program == "train.py"
    assert cfg.command == raw["command"]
    assert cfg.run_cap == 20
    assert cfg.early_terminate == Hyperband(metric="val/acc", eta=3, min_iter=3, strict=True)
    assert (cfg.name, cfg.description) == ("n", "d")
    assert cfg.raw == raw and cfg.raw is not raw
    assert validate({"method": "grid", "parameters": {"a": {"value": 1}}}).command == list(DEFAULT_COMMAND)
    assert validate({"method": "grid", "parameters": {"a": {"value": 1}}}).metric is None


def test_metric_goal_defaults_to_minimize():
    cfg = validate({"method": "bayes", "metric": {"name": "loss"}, "parameters": {"a": {"min": 0, "max": 1}}})
    assert cfg.metric.goal == "minimize"
    assert cfg.metric.reached(0.1) is False  # no target
    assert validate(
        {"method": "bayes", "metric": {"name": "loss", "target": 0.5}, "parameters": {"a": {"values": [1]}}}
    ).metric.reached(0.5)


def test_early_terminate_forms_and_problems():
    base = {"method": "random", "metric": {"name": "loss"}, "parameters": {"a": {"value": 1}}}
    hb = validate({**base, "early_terminate": {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}}).early_terminate
    assert hb == Hyperband(metric="loss", eta=3, max_iter=27, s=2)
    assert validate({**base, "early_terminate": {"type": "hyperband", "max_iter": 27}}).early_terminate.s == 3
    # W&B: s only counts max_iter's brackets (min_iter always has 100), and strict defaults to true.
    with_s = validate({**base, "early_terminate": {"type": "hyperband", "min_iter": 3, "s": 2}}).early_terminate
    assert with_s == validate({**base, "early_terminate": {"type": "hyperband", "min_iter": 3}}).early_terminate
    assert with_s.brackets()[:3] == [3, 9, 27] and with_s.strict is True
    assert validate(
        {**base, "early_terminate": {"type": "hyperband", "max_iter": 9, "strict": False}}
    ).early_terminate == (Hyperband(metric="loss", max_iter=9, strict=False))
    problems = _problems(
        {**base, "early_terminate": {"type": "median", "min_iter": 0, "s": 1.5, "strict": "yes", "extra": 1}}
    )
    assert [p.split(":")[0] for p in problems] == [
        "early_terminate.extra",
        "early_terminate.type",
        "early_terminate.min_iter",
        "early_terminate.s",
        "early_terminate.strict",
    ]
    assert _problems({**base, "early_terminate": {"type": "hyperband", "max_iter": 2, "eta": 3}}) == [
        "early_terminate.max_iter: max_iter / eta is below 1, so there is no bracket"
    ]


def test_nested_parameters_flatten_to_dotted_names_and_clashes_are_refused():
    cfg = _cfg(
        {
            "optimizer": {"parameters": {"lr": {"min": 0.0, "max": 1.0}, "kind": {"values": ["adam", "sgd"]}}},
            "model": {"parameters": {"size": {"parameters": {"width": {"value": 64}}}}},
        }
    )
    assert list(cfg.params) == ["model.size.width", "optimizer.kind", "optimizer.lr"]
    assert cfg.params["optimizer.lr"].name == "optimizer.lr"
    problems = _problems(
        {"method": "random", "parameters": {"a.b": {"value": 1}, "a": {"parameters": {"b": {"value": 2}}}}}
    )
    assert problems == ["parameters.a.parameters.b: its dotted name 'a.b' clashes with 'a.b'"]
    assert _problems({"method": "random", "parameters": {"a": {"parameters": {"b": {"value": 1}}, "value": 3}}}) == [
        "parameters.a: a nested parameter has only the key parameters"
    ]


# --- grid --------------------------------------------------------------------------------------


def test_grid_covers_every_combination_once_in_a_fixed_order():
    raw = {
        "method": "grid",
        "parameters": {
            "opt": {"parameters": {"name": {"values": ["adam", "sgd"]}, "wd": {"value": 0.0}}},
            "layers": {"min": 1, "max": 3},
            "dropout": {"distribution": "q_uniform", "min": 0.0, "max": 0.3, "q": 0.1},
            "shape": {"values": [[1, 2], {"w": 3}]},
        },
    }
    cfg = validate(raw)
    points = grid_points(cfg)
    assert len(points) == 2 * 3 * 4 * 2
    keys = {json.dumps(p, sort_keys=True) for p in points}
    assert len(keys) == len(points)  # each combination once
    assert {p["dropout"] for p in points} == {0.0, 0.1, 0.2, 0.3}  # no float noise (0.30000000000000004)
    assert {p["layers"] for p in points} == {1, 2, 3}
    assert {p["opt.name"] for p in points} == {"adam", "sgd"}
    assert all(p["opt.wd"] == 0.0 for p in points)
    assert points[0] == {"dropout": 0.0, "layers": 1, "opt.name": "adam", "opt.wd": 0.0, "shape": [1, 2]}
    assert points[1]["shape"] == {"w": 3}  # the last parameter varies fastest
    # The order does not depend on the order the keys were written in.
    reordered = {**raw, "parameters": dict(reversed(list(raw["parameters"].items())))}
    assert grid_points(validate(reordered)) == points


def test_q_uniform_grid_is_the_multiples_of_q_inside_the_range():
    assert _cfg({"p": {"distribution": "q_uniform", "min": 0, "max": 100, "q": 32}}).params["p"].grid_values() == [
        0,
        32,
        64,
        96,
    ]
    values = _cfg({"p": {"distribution": "q_uniform", "min": 0.05, "max": 0.5, "q": 0.1}}).params["p"].grid_values()
    assert values == [0.1, 0.2, 0.3, 0.4, 0.5]


def test_grid_refuses_continuous_parameters_probabilities_and_huge_grids():
    problems = _problems(
        {
            "method": "grid",
            "parameters": {
                "lr": {"min": 0.0, "max": 1.0},
                "n": {"distribution": "normal"},
                "c": {"values": [1, 2], "probabilities": [0.5, 0.5]},
                "ok": {"min": 1, "max": 3},
            },
        }
    )
    assert problems == [
        "parameters.c.probabilities: not allowed with method grid",
        "parameters.lr: uniform cannot be searched by grid (use value, values, int_uniform or q_uniform)",
        "parameters.n: normal cannot be searched by grid (use value, values, int_uniform or q_uniform)",
    ]
    huge = _problems({"method": "grid", "parameters": {"a": {"min": 0, "max": 999}, "b": {"min": 0, "max": 999}}})
    assert huge == ["parameters: the grid has 1000000 points, more than 100000"]


def test_a_huge_grid_range_is_counted_and_refused_without_listing_it():
    """A range of 10**12 integers (or of multiples of a tiny q) is refused at once, naming the parameter and the
    size: nothing is listed, so validation stays instant whatever the range."""
    assert _problems({"method": "grid", "parameters": {"x": {"min": 0, "max": 10**12}, "y": {"min": 0, "max": 9}}}) == [
        "parameters.x: its grid has 1000000000001 values, more than 100000"
    ]
    tiny_q = {"distribution": "q_uniform", "min": 0, "max": 1e6, "q": 1e-6}
    assert _problems({"method": "grid", "parameters": {"x": tiny_q}}) == [
        "parameters.x: its grid has 1000000000001 values, more than 100000"
    ]
    # A q so small that the bounds lie beyond any exact count of q (or overflow) is refused for any method.
    overflow = {"distribution": "q_uniform", "min": 0, "max": 1e300, "q": 1e-300}
    assert _problems({"method": "random", "parameters": {"x": overflow}}) == [
        "parameters.x.q: too small for min and max: they lie beyond 2**53 multiples of 1e-300"
    ]
    # An integer beyond any float is not a number (not an OverflowError).
    assert _problems({"method": "grid", "parameters": {"x": {"min": 0, "max": 10**400}}})[0].startswith(
        "parameters.x.max: must be a number"
    )
    # Random search of a huge int_uniform draws without listing the range.
    big = _cfg({"x": {"min": 0, "max": 10**15}}).params["x"]
    assert big.grid_size() == 10**15 + 1
    assert 0 <= big.sample(random.Random(1)) <= 10**15
    with pytest.raises(ValueError, match="more than 100000"):
        big.grid_values()
    with pytest.raises(ValueError, match="more than 100000"):
        grid_points(_cfg({"x": {"min": 0, "max": 10**15}}))


def test_grid_point_is_the_indexed_point_of_grid_points():
    cfg = validate(
        {
            "method": "grid",
            "parameters": {
                "a": {"values": ["x", "y", "z"]},
                "b": {"min": -1, "max": 2},
                "c": {"distribution": "q_uniform", "min": 0.05, "max": 0.5, "q": 0.1},
            },
        }
    )
    points = grid_points(cfg)
    assert grid_size(cfg) == len(points) == 3 * 4 * 5
    assert [grid_point(cfg, i) for i in range(len(points))] == points
    at_limit = _cfg({"a": {"min": 1, "max": MAX_GRID_POINTS}})
    assert grid_size(at_limit) == MAX_GRID_POINTS and grid_point(at_limit, MAX_GRID_POINTS - 1) == {
        "a": MAX_GRID_POINTS
    }


# --- random sampling ---------------------------------------------------------------------------


def _samples(spec: dict, n: int = 2000, seed: int = 7) -> list:
    param = _cfg({"p": spec}).params["p"]
    rng = random.Random(seed)
    return [param.sample(rng) for _ in range(n)]


def _is_multiple(x: float, q: float) -> bool:
    return math.isclose(round(x / q) * q, x, abs_tol=1e-9)


def test_uniform_family_samples_lie_in_their_ranges():
    ints = _samples({"min": -2, "max": 2})
    assert set(ints) == {-2, -1, 0, 1, 2} and all(isinstance(x, int) for x in ints)
    floats = _samples({"min": 0.5, "max": 1.5})
    assert all(0.5 <= x <= 1.5 for x in floats)
    assert 0.95 < statistics.mean(floats) < 1.05
    q = _samples({"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25})
    assert set(q) == {0.0, 0.25, 0.5, 0.75, 1.0}
    q_int = _samples({"distribution": "q_uniform", "min": 0, "max": 256, "q": 32})
    assert all(isinstance(x, int) and x % 32 == 0 and 0 <= x <= 256 for x in q_int)


def test_log_uniform_family_samples_are_log_distributed():
    for spec in (
        {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        {"distribution": "inv_log_uniform_values", "min": 1e-5, "max": 1e-1},
        {"distribution": "log_uniform", "min": math.log(1e-5), "max": math.log(1e-1)},
        {"distribution": "inv_log_uniform", "min": -math.log(1e-1), "max": -math.log(1e-5)},
    ):
        values = _samples(spec)
        assert all(1e-5 * 0.999 <= x <= 1e-1 * 1.001 for x in values), spec
        # log-uniform: the median is the geometric mean of the bounds, 1e-3
        assert -3.2 < math.log10(statistics.median(values)) < -2.8, spec
    q = _samples({"distribution": "q_log_uniform_values", "min": 1, "max": 1024, "q": 8})
    assert all(isinstance(x, int) and x % 8 == 0 and 8 <= x <= 1024 for x in q)  # never rounded down to 0
    assert statistics.median(q) < 100
    q_old = _samples({"distribution": "q_log_uniform", "min": 0, "max": math.log(100), "q": 2})
    assert all(x % 2 == 0 and 0 <= x <= 100 for x in q_old)


def test_normal_family_and_beta_samples_follow_their_distributions():
    normal = _samples({"distribution": "normal", "mu": 5, "sigma": 2})
    assert 4.85 < statistics.mean(normal) < 5.15 and 1.85 < statistics.stdev(normal) < 2.15
    q_normal = _samples({"distribution": "q_normal", "mu": 5, "sigma": 2, "q": 0.5})
    assert all(_is_multiple(x, 0.5) for x in q_normal) and 4.85 < statistics.mean(q_normal) < 5.15
    log_normal = _samples({"distribution": "log_normal", "mu": 1, "sigma": 0.5})
    assert all(x > 0 for x in log_normal)
    assert 0.9 < math.log(statistics.median(log_normal)) < 1.1
    q_log_normal = _samples({"distribution": "q_log_normal", "mu": 3, "sigma": 0.5, "q": 5})
    assert all(isinstance(x, int) and x % 5 == 0 for x in q_log_normal)
    beta = _samples({"distribution": "beta", "a": 2, "b": 6})
    assert all(0 <= x <= 1 for x in beta) and 0.23 < statistics.mean(beta) < 0.27
    q_beta = _samples({"distribution": "q_beta", "q": 0.1})
    assert all(0 <= x <= 1 and _is_multiple(x, 0.1) for x in q_beta)


def test_categorical_samples_respect_probabilities_and_constants_are_constant():
    counts = Counter(_samples({"values": ["a", "b", "c"], "probabilities": [0.1, 0.0, 0.9]}, n=4000))
    assert counts["b"] == 0 and 0.07 < counts["a"] / 4000 < 0.13
    uniform = Counter(json.dumps(v) for v in _samples({"values": [[1], {"x": 2}]}, n=2000))
    assert set(uniform) == {"[1]", '{"x": 2}'} and 900 < uniform["[1]"] < 1100
    assert set(_samples({"value": {"nested": True}}, n=10)[0]) == {"nested"}


def test_sample_random_is_flat_and_seeded():
    cfg = _cfg({"opt": {"parameters": {"lr": {"min": 0.0, "max": 1.0}}}, "bs": {"values": [16, 32]}})
    first = sample_random(cfg, random.Random(42))
    assert set(first) == {"bs", "opt.lr"}
    assert sample_random(cfg, random.Random(42)) == first
    assert sample_random(cfg, random.Random(43)) != first


# --- nest and the command line -----------------------------------------------------------------


def test_nest():
    assert nest({"a.b": 1, "a.c.d": 2, "e": 3}) == {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    assert nest({}) == {}
    with pytest.raises(ValueError, match="both a value and a group"):
        nest({"a": 1, "a.b": 2})
    with pytest.raises(ValueError):
        nest({"a.b": 2, "a": 1})


def test_build_command_expands_every_macro():
    cfg = validate(
        {
            "program": "train.py",
            "method": "grid",
            "parameters": {"lr": {"value": 0.01}, "opt": {"parameters": {"name": {"value": "adam"}}}},
        }
    )
    flat = {"lr": 0.01, "opt.name": "adam", "amp": True, "ema": False, "sizes": [1, 2]}
    assert build_command(cfg, flat, interpreter="/venv/bin/python") == [
        "/usr/bin/env",
        "/venv/bin/python",
        "train.py",
        "--lr=0.01",
        "--opt.name=adam",
        "--amp=True",
        "--ema=False",
        "--sizes=[1, 2]",
    ]
    custom = validate(
        {
            **cfg.raw,
            "command": ["python", "-u", "${program}", "${args_no_hyphens}", "${args_json}", "${args_no_boolean_flags}"],
        }
    )
    assert build_command(custom, flat, interpreter="py", program="other.py") == [
        "python",
        "-u",
        "other.py",
        "lr=0.01",
        "opt.name=adam",
        "amp=True",
        "ema=False",
        "sizes=[1, 2]",
        json.dumps(
            {"lr": 0.01, "opt": {"name": "adam"}, "amp": True, "ema": False, "sizes": [1, 2]}
        ),  # W&B's: one item
        "--lr=0.01",
        "--opt.name=adam",
        "--amp",
        "--sizes=[1, 2]",
    ]


def test_build_command_args_no_equals_args_json_file_and_envvar():
    cfg = validate(
        {
            "method": "grid",
            "parameters": {"a": {"value": 1}},
            "command": [
                "${env}",
                "${interpreter}",
                "x.py",
                "--json",
                "${args_json_file}",
                "${args_no_equals}",
                "--out=${envvar:OUT_DIR}/${envvar:MISSING_VAR}",
            ],
        }
    )
    flat = {"a": 1, "b.c": "s"}
    assert build_command(cfg, flat, interpreter="py", args_json_file="/tmp/p.json", environ={"OUT_DIR": "/o"}) == [
        "/usr/bin/env",
        "py",
        "x.py",
        "--json",
        "/tmp/p.json",
        "--a",
        "1",
        "--b.c",
        "s",
        "--out=/o/MISSING_VAR",  # W&B: an unset variable becomes its name
    ]
    # Without environ (the server's preview) an envvar macro is left as written; a file must be given.
    with pytest.raises(ValueError, match=r"\$\{args_json_file\} but no file was given"):
        build_command(cfg, flat, interpreter="py")
    no_file = validate({**cfg.raw, "command": ["x.py", "--out=${envvar:OUT_DIR}"]})
    assert build_command(no_file, flat, interpreter="py") == ["x.py", "--out=${envvar:OUT_DIR}"]


def test_unknown_or_embedded_macros_are_refused():
    base = {"method": "grid", "parameters": {"a": {"value": 1}}}
    assert _problems({**base, "command": ["python", "${program}", "${args_yaml}", "--c=${args_json_file}"]}) == [
        "command[2]: unknown macro ${args_yaml} (known: ${env}, ${interpreter}, ${program}, ${args}, "
        "${args_no_equals}, ${args_no_hyphens}, ${args_no_boolean_flags}, ${args_json}, ${args_json_file}, "
        "${envvar:NAME})",
        "command[3]: ${args_json_file} must be a whole item to be expanded, not part of '--c=${args_json_file}'",
    ]
    assert _problems({**base, "command": ["run", "--home=${HOME}"]})[0].startswith("command[1]: unknown macro ${HOME}")
    assert validate({**base, "command": ["run", "${envvar:X}", "a${envvar:Y_2}b"]}).command[1] == "${envvar:X}"


def test_build_command_needs_a_program_only_when_the_command_uses_it():
    cfg = validate({"method": "grid", "parameters": {"a": {"value": 1}}})
    with pytest.raises(ValueError, match="no program"):
        build_command(cfg, {"a": 1}, interpreter="python")
    no_program = validate({**cfg.raw, "command": ["./run.sh", "${args}"]})
    assert build_command(no_program, {"a": 1}, interpreter="python") == ["./run.sh", "--a=1"]


def test_the_sdk_module_needs_no_numpy_or_optuna():
    code = "import sys, runstream.sweep_config; print([m for m in ('numpy', 'optuna') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
