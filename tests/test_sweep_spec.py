"""Sweep configs: W&B's format, every bad one rejected with its key path before any sweep, study or run exists."""

from __future__ import annotations

import pickle

import pytest
from conftest import run_dirs

import wandbflow as wf
from wandbflow.errors import ConfigError, SweepConfigError, SweepError, TrialPruned
from wandbflow.sweeps import load_config
from wandbflow.sweeps.spec import current_config, reset_session_config
from wandbflow.sweeps.validate import validate


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


P = {"lr": {"min": 0.001, "max": 0.1}}
M = {"name": "loss", "goal": "minimize"}

INVALID = [
    ("not a mapping", ["method", "grid"], "config"),
    ("unknown top-level key", {"method": "random", "parameters": P, "metrics": M}, "metrics"),
    ("no method", {"parameters": P}, "method"),
    ("unknown method", {"method": "hyperopt", "parameters": P}, "method"),
    ("no parameters", {"method": "random"}, "parameters"),
    ("empty parameters", {"method": "random", "parameters": {}}, "parameters"),
    ("parameter not a mapping", {"method": "random", "parameters": {"lr": 0.1}}, "parameters.lr"),
    ("parameter with nothing to sample", {"method": "random", "parameters": {"lr": {}}}, "parameters.lr"),
    ("unknown parameter key", {"method": "random", "parameters": {"lr": {"mn": 0, "max": 1}}}, "parameters.lr.mn"),
    ("min >= max", {"method": "random", "parameters": {"lr": {"min": 0.1, "max": 0.01}}}, "parameters.lr.max"),
    ("min == max", {"method": "random", "parameters": {"n": {"min": 3, "max": 3}}}, "parameters.n.max"),
    ("min without max", {"method": "random", "parameters": {"lr": {"min": 0.1}}}, "parameters.lr.max"),
    ("min not a number", {"method": "random", "parameters": {"lr": {"min": "a", "max": 1}}}, "parameters.lr.min"),
    ("bool is not a number", {"method": "random", "parameters": {"lr": {"min": True, "max": 2}}}, "parameters.lr.min"),
    ("empty values", {"method": "random", "parameters": {"bs": {"values": []}}}, "parameters.bs.values"),
    ("values not a list", {"method": "random", "parameters": {"bs": {"values": 16}}}, "parameters.bs.values"),
    (
        "probabilities not summing to 1",
        {"method": "random", "parameters": {"bs": {"values": [1, 2], "probabilities": [0.5, 0.4]}}},
        "parameters.bs.probabilities",
    ),
    (
        "probabilities of the wrong length",
        {"method": "random", "parameters": {"bs": {"values": [1, 2], "probabilities": [1.0]}}},
        "parameters.bs.probabilities",
    ),
    (
        "negative probability",
        {"method": "random", "parameters": {"bs": {"values": [1, 2], "probabilities": [1.5, -0.5]}}},
        "parameters.bs.probabilities",
    ),
    (
        "unknown distribution",
        {"method": "random", "parameters": {"lr": {"distribution": "loguniform", "min": 1, "max": 2}}},
        "parameters.lr.distribution",
    ),
    (
        "log distribution with min <= 0",
        {"method": "random", "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}},
        "parameters.lr.min",
    ),
    (
        "int_uniform with a float bound",
        {"method": "random", "parameters": {"n": {"distribution": "int_uniform", "min": 1, "max": 2.5}}},
        "parameters.n.max",
    ),
    (
        "key the distribution does not use",
        {"method": "random", "parameters": {"lr": {"distribution": "normal", "min": 0, "max": 1}}},
        "parameters.lr.min",
    ),
    (
        "values with a range key",
        {"method": "random", "parameters": {"bs": {"values": [1, 2], "max": 3}}},
        "parameters.bs.max",
    ),
    (
        "non-positive sigma",
        {"method": "random", "parameters": {"x": {"distribution": "normal", "sigma": 0}}},
        "parameters.x.sigma",
    ),
    (
        "non-positive q",
        {"method": "random", "parameters": {"x": {"distribution": "q_uniform", "min": 0, "max": 1, "q": -1}}},
        "parameters.x.q",
    ),
    (
        "beta shape not positive",
        {"method": "random", "parameters": {"x": {"distribution": "beta", "a": -1}}},
        "parameters.x.a",
    ),
    (
        "constant without value",
        {"method": "random", "parameters": {"x": {"distribution": "constant"}}},
        "parameters.x.value",
    ),
    (
        "grid with a continuous parameter",
        {"method": "grid", "parameters": {"bs": {"values": [1, 2]}, "lr": {"min": 0.1, "max": 1.0}}},
        "parameters.lr",
    ),
    ("bayes without metric", {"method": "bayes", "parameters": P}, "metric"),
    ("metric without name", {"method": "bayes", "parameters": P, "metric": {"goal": "minimize"}}, "metric.name"),
    ("unknown goal", {"method": "bayes", "parameters": P, "metric": {"name": "l", "goal": "min"}}, "metric.goal"),
    ("target not a number", {"method": "random", "parameters": P, "metric": {**M, "target": "0.1"}}, "metric.target"),
    ("unknown metric key", {"method": "random", "parameters": P, "metric": {**M, "mode": "min"}}, "metric.mode"),
    (
        "nested parameter error",
        {
            "method": "random",
            "parameters": {"optimizer": {"parameters": {"momentum": {"min": 0.9, "max": 0.0}}}},
        },
        "parameters.optimizer.parameters.momentum.max",
    ),
    (
        "nested parameters mixed with values",
        {"method": "random", "parameters": {"opt": {"parameters": {"m": {"value": 1}}, "values": [1]}}},
        "parameters.opt",
    ),
    (
        "empty nested parameters",
        {"method": "random", "parameters": {"opt": {"parameters": {}}}},
        "parameters.opt.parameters",
    ),
    (
        "deeply nested unknown distribution",
        {
            "method": "random",
            "parameters": {"a": {"parameters": {"b": {"parameters": {"c": {"distribution": "gauss"}}}}}},
        },
        "parameters.a.parameters.b.parameters.c.distribution",
    ),
    (
        "names colliding once nested",
        {"method": "random", "parameters": {"a.b": {"value": 1}, "a": {"parameters": {"b": {"value": 2}}}}},
        "parameters.a.parameters.b",
    ),
    ("run_cap zero", {"method": "random", "parameters": P, "run_cap": 0}, "run_cap"),
    ("run_cap a float", {"method": "random", "parameters": P, "run_cap": 2.5}, "run_cap"),
    ("name not a string", {"method": "random", "parameters": P, "name": 3}, "name"),
    ("command a string", {"method": "random", "parameters": P, "command": "python train.py"}, "command"),
    (
        "early_terminate without metric",
        {"method": "random", "parameters": P, "early_terminate": {"type": "hyperband", "min_iter": 1}},
        "metric",
    ),
    (
        "early_terminate of an unknown type",
        {"method": "random", "parameters": P, "metric": M, "early_terminate": {"type": "median", "min_iter": 1}},
        "early_terminate.type",
    ),
    (
        "hyperband without min_iter or max_iter",
        {"method": "random", "parameters": P, "metric": M, "early_terminate": {"type": "hyperband"}},
        "early_terminate",
    ),
    (
        "hyperband max_iter without s",
        {"method": "random", "parameters": P, "metric": M, "early_terminate": {"type": "hyperband", "max_iter": 27}},
        "early_terminate.s",
    ),
    (
        "hyperband eta below 2",
        {
            "method": "random",
            "parameters": P,
            "metric": M,
            "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1},
        },
        "early_terminate.eta",
    ),
    (
        "hyperband min_iter not an integer",
        {"method": "random", "parameters": P, "metric": M, "early_terminate": {"type": "hyperband", "min_iter": "3"}},
        "early_terminate.min_iter",
    ),
]


def test_there_are_at_least_25_invalid_configs():
    assert len(INVALID) >= 25


@pytest.mark.parametrize(("config", "key"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_config_is_rejected_with_its_key_path_and_nothing_created(wandb_env, config, key):
    with pytest.raises(SweepConfigError) as info:
        wf.sweep(config)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert isinstance(info.value, ConfigError)
    assert not (wandb_env / "wandb" / "sweeps.db").exists(), "no study is created"
    assert run_dirs(wandb_env) == {}, "no run is started"
    with pytest.raises(SweepConfigError) as again:
        validate(config)
    assert again.value.key == key


def test_the_issue_message_format():
    bad = {"method": "random", "parameters": {"optimizer": {"parameters": {"momentum": {"min": 0.9, "max": 0.0}}}}}
    with pytest.raises(SweepConfigError, match=r"^parameters\.optimizer\.parameters\.momentum\.max: must be > min"):
        validate(bad)


def test_a_valid_config_is_parsed_with_inferred_distributions():
    space = wf.wandb_sweep_config(
        method="bayes",
        metric={"name": "val/loss", "goal": "minimize"},
        parameters={
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            "batch_size": {"values": [16, 32, 64]},
            "layers": {"min": 1, "max": 4},
            "dropout": {"min": 0.0, "max": 0.5},
            "optimizer": {"parameters": {"name": {"values": ["adam", "sgd"]}, "momentum": {"value": 0.9}}},
        },
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
        run_cap=20,
    )
    kinds = {p.name: p.distribution for p in space.params}
    assert kinds == {
        "lr": "log_uniform_values",
        "batch_size": "categorical",
        "layers": "int_uniform",
        "dropout": "uniform",
        "optimizer.name": "categorical",
        "optimizer.momentum": "constant",
    }
    assert space["method"] == "bayes" and dict(space)["run_cap"] == 20, "a mapping of the config as given"
    assert space.metric.name == "val/loss" and space.early_terminate.min_iter == 2 and space.early_terminate.eta == 3
    assert space.max_trials == 20 and space.grid_size is None
    assert validate(space) is space
    assert load_config(dict(space)).to_dict() == space.to_dict()


def test_grid_size_and_cap():
    grid = validate(
        {
            "method": "grid",
            "parameters": {
                "a": {"values": [1, 2, 3]},
                "n": {"distribution": "int_uniform", "min": 1, "max": 4},
                "q": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
                "c": {"value": "x"},
            },
            "run_cap": 100,
        }
    )
    assert grid.grid_size == 3 * 4 * 5 and grid.max_trials == 60
    assert grid.params[2].grid_values() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_yaml_files_load_like_wandb_reads_them(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "method: random\n"
        "metric: {name: loss, goal: minimize}\n"
        "parameters:\n"
        "  lr: {distribution: log_uniform_values, min: 1e-4, max: 1e-1}\n"
        "  wd: {values: [0, 1e-5]}\n"
    )
    config = load_config(path)
    assert config.params[0].min == 1e-4 and isinstance(config.params[0].min, float), "1e-4 is a number"
    assert config.params[1].values == (0, 1e-5)


def test_yaml_errors_name_the_key_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: grid\nparameters:\n  opt:\n    parameters:\n      lr: {min: 0.1, max: 1.0}\n")
    with pytest.raises(SweepConfigError) as info:
        load_config(path)
    assert info.value.key == "parameters.opt.parameters.lr"
    broken = tmp_path / "broken.yaml"
    broken.write_text("method: [grid\n")
    with pytest.raises(SweepConfigError, match="not valid YAML") as info:
        load_config(broken)
    assert info.value.key == "config"
    with pytest.raises(SweepConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_calling_sets_the_session_config_and_with_scopes_it():
    assert current_config() is None
    session = wf.wandb_sweep_config(method="random", parameters=P)
    assert current_config() is session
    with wf.wandb_sweep_config(method="grid", parameters={"a": {"values": [1]}}) as block:
        assert current_config() is block
    assert current_config() is session, "a with-block leaves the session config as it was"
    with pytest.raises(SweepConfigError):
        wf.wandb_sweep_config(method="grid", parameters=P)
    assert current_config() is session, "an invalid config applies nothing"


def test_configs_and_errors_pickle():
    config = wf.wandb_sweep_config(method="random", parameters=P, metric=M)
    with config:
        copied = pickle.loads(pickle.dumps(config))
    assert copied.to_dict() == config.to_dict() and copied.metric == config.metric
    errors = [
        SweepConfigError("must be > min", key="parameters.lr.max"),
        SweepError("no sweep 'x'", sweep_id="x"),
        TrialPruned("trial 3 pruned at step 2", trial=3, step=2, value=9.5),
    ]
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert back._fields == error._fields
    assert pickle.loads(pickle.dumps(errors[0])).key == "parameters.lr.max"
    assert pickle.loads(pickle.dumps(errors[2])).step == 2


def test_to_yaml_quotes_strings_the_loader_would_read_as_numbers(tmp_path):
    config = validate(
        {"method": "grid", "parameters": {"tag": {"values": ["1e-4", "x"]}, "lr": {"values": [1e-4, 0.1]}}}
    )
    path = tmp_path / "sweep.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path).to_dict()
    assert again["parameters"]["tag"]["values"] == ["1e-4", "x"]
    assert again["parameters"]["lr"]["values"] == [1e-4, 0.1]
