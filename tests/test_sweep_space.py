"""W&B's search space in Optuna's terms: bounds and types over 200 samples, grids, hyperband's mapping."""

from __future__ import annotations

import itertools
import math
import statistics

import optuna
import pytest

from wandbflow.sweeps import space
from wandbflow.sweeps.validate import validate

PARAMETERS = {
    "const": {"value": "fixed"},
    "choice": {"values": [16, 32, 64]},
    "struct": {"values": [[1, 2], {"a": 1}]},
    "weighted": {"values": ["often", "rarely"], "probabilities": [0.8, 0.2]},
    "layers": {"min": 1, "max": 4},
    "dropout": {"min": 0.1, "max": 0.5},
    "quantized": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.1},
    "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
    "batch": {"distribution": "q_log_uniform_values", "min": 8, "max": 256, "q": 8},
    "inv": {"distribution": "inv_log_uniform_values", "min": 0.01, "max": 10.0},
    "exp": {"distribution": "log_uniform", "min": -3, "max": 0},
    "inv_exp": {"distribution": "inv_log_uniform", "min": 0, "max": 3},
    "noise": {"distribution": "normal", "mu": 5.0, "sigma": 2.0},
    "q_noise": {"distribution": "q_normal", "mu": 0.0, "sigma": 10.0, "q": 5},
    "scale": {"distribution": "log_normal", "mu": 0.0, "sigma": 0.5},
    "q_scale": {"distribution": "q_log_normal", "mu": 3.0, "sigma": 0.5, "q": 1},
    "share": {"distribution": "beta", "a": 2.0, "b": 5.0},
    "q_share": {"distribution": "q_beta", "a": 1.0, "b": 1.0, "q": 0.25},
    "optimizer": {"parameters": {"name": {"values": ["adam", "sgd"]}, "momentum": {"min": 0.0, "max": 0.9}}},
}


def sample(method: str, n: int = 200) -> list[dict]:
    config = validate({"method": method, "metric": {"name": "loss"}, "parameters": PARAMETERS})
    study = optuna.create_study(sampler=space.sampler_for(config, seed=1), direction="minimize")
    dims = space.dimensions(config)
    found = []
    for _ in range(n):
        trial = study.ask()
        params = space.suggest(trial, config, dims)
        study.tell(trial, params["dropout"] + params["optimizer"]["momentum"])
        found.append(params)
    return found


def is_multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q), abs_tol=1e-9)


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_200_samples_respect_bounds_and_types(method):
    found = sample(method)
    assert len(found) == 200
    for p in found:
        assert p["const"] == "fixed"
        assert p["choice"] in (16, 32, 64) and type(p["choice"]) is int
        assert p["struct"] in ([1, 2], {"a": 1})
        assert p["weighted"] in ("often", "rarely")
        assert type(p["layers"]) is int and 1 <= p["layers"] <= 4
        assert type(p["dropout"]) is float and 0.1 <= p["dropout"] <= 0.5
        assert 0.0 <= p["quantized"] <= 1.0 and is_multiple(p["quantized"], 0.1)
        assert p["quantized"] == round(p["quantized"], 1), "no binary noise"
        assert type(p["lr"]) is float and 1e-5 <= p["lr"] <= 1e-1
        assert type(p["batch"]) is int and 8 <= p["batch"] <= 256 and p["batch"] % 8 == 0
        assert 0.01 <= p["inv"] <= 10.0
        assert math.exp(-3) <= p["exp"] <= 1.0
        assert math.exp(-3) <= p["inv_exp"] <= 1.0
        assert type(p["noise"]) is float and math.isfinite(p["noise"])
        assert type(p["q_noise"]) is int and p["q_noise"] % 5 == 0
        assert p["scale"] > 0 and type(p["q_scale"]) is int and p["q_scale"] >= 0
        assert 0.0 <= p["share"] <= 1.0
        assert p["q_share"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert set(p["optimizer"]) == {"name", "momentum"}
        assert p["optimizer"]["name"] in ("adam", "sgd") and 0.0 <= p["optimizer"]["momentum"] <= 0.9
    assert {p["choice"] for p in found} == {16, 32, 64}, "every value is reached"


def test_random_samples_follow_the_distributions():
    found = sample("random", 400)
    assert 0.7 < sum(p["weighted"] == "often" for p in found) / len(found) < 0.9, "probabilities are honoured"
    noise = [p["noise"] for p in found]
    assert abs(statistics.fmean(noise) - 5.0) < 0.5 and 1.5 < statistics.stdev(noise) < 2.5
    scale = [math.log(p["scale"]) for p in found]
    assert abs(statistics.fmean(scale)) < 0.15 and 0.35 < statistics.stdev(scale) < 0.65
    share = [p["share"] for p in found]
    assert abs(statistics.fmean(share) - 2 / 7) < 0.04, "Beta(2, 5) has mean 2/7"
    lr = [math.log10(p["lr"]) for p in found]
    assert min(lr) < -4 and max(lr) > -2, "log-uniform spreads over the decades"


def test_grid_search_space_enumerates_every_discrete_parameter():
    config = validate(
        {
            "method": "grid",
            "parameters": {
                "a": {"values": [1, 2]},
                "n": {"distribution": "int_uniform", "min": 3, "max": 5},
                "nested": {"parameters": {"s": {"values": [[1], [2]]}, "k": {"value": 7}}},
            },
        }
    )
    assert space.grid_space(space.dimensions(config)) == {"a": [1, 2], "n": [3, 4, 5], "nested.s": [0, 1]}
    assert isinstance(space.sampler_for(config), optuna.samplers.GridSampler)
    study = optuna.create_study(sampler=space.sampler_for(config))
    points = []
    for _ in range(config.grid_size):
        trial = study.ask()
        points.append(space.suggest(trial, config, space.dimensions(config)))
        study.tell(trial, 0.0)
    expected = [
        {"a": a, "n": n, "nested": {"s": s, "k": 7}} for a, n, s in itertools.product([1, 2], [3, 4, 5], [[1], [2]])
    ]
    assert sorted(map(repr, points)) == sorted(map(repr, expected))


def test_samplers_per_method():
    def config(method):
        return validate({"method": method, "metric": {"name": "l"}, "parameters": {"x": {"min": 0.0, "max": 1.0}}})

    assert isinstance(space.sampler_for(config("random")), optuna.samplers.RandomSampler)
    assert isinstance(space.sampler_for(config("bayes")), optuna.samplers.TPESampler)
    assert isinstance(space.pruner_for(config("bayes")), optuna.pruners.NopPruner)


@pytest.mark.parametrize(
    ("early_terminate", "expected"),
    [
        ({"type": "hyperband", "min_iter": 2, "eta": 3}, (2, "auto", 3)),
        ({"type": "hyperband", "min_iter": 1}, (1, "auto", 3)),
        ({"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}, (3, 27, 3)),
        ({"type": "hyperband", "max_iter": 100, "s": 3, "eta": 2, "strict": True}, (12, 100, 2)),
    ],
)
def test_hyperband_maps_onto_optunas_pruner(early_terminate, expected):
    config = validate(
        {
            "method": "random",
            "metric": {"name": "loss"},
            "parameters": {"x": {"min": 0.0, "max": 1.0}},
            "early_terminate": early_terminate,
        }
    )
    pruner = space.pruner_for(config)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == expected


@pytest.mark.parametrize(
    ("a", "b", "x", "cdf"), [(2.0, 5.0, 0.3, 0.579825), (1.0, 1.0, 0.42, 0.42), (0.5, 0.5, 0.5, 0.5)]
)
def test_beta_inverse_cdf(a, b, x, cdf):
    assert space._betainc(a, b, x) == pytest.approx(cdf, abs=1e-6)
    assert space.beta_ppf(cdf, a, b) == pytest.approx(x, abs=1e-6)
    assert space.beta_ppf(0.0, a, b) == 0.0 and space.beta_ppf(1.0, a, b) == 1.0
