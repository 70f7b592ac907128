"""Validating a sweep config in full before anything runs, and loading one from YAML.

Every error is a :class:`~wandbflow.errors.SweepConfigError` whose message starts with the dotted key path of what
is wrong (``parameters.optimizer.parameters.momentum.max: must be > min (got max 0.0 <= min 0.9)``).

Pure: imports neither wandb nor optuna.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from wandbflow.errors import SweepConfigError
from wandbflow.sweeps import yamlio
from wandbflow.sweeps.spec import (
    DISTRIBUTIONS,
    GOALS,
    GRID_DISTRIBUTIONS,
    HYPERBAND_KEYS,
    MAX_GRID_POINTS,
    METHODS,
    METRIC_KEYS,
    PARAM_KEYS,
    POSITIVE_VALUES,
    RANGE,
    TOP_KEYS,
    Hyperband,
    Metric,
    Param,
    SweepConfig,
)


def wandb_sweep_config(
    *,
    method: str,
    parameters: Mapping[str, Any],
    metric: Mapping[str, Any] | None = None,
    early_terminate: Mapping[str, Any] | None = None,
    run_cap: int | None = None,
    name: str | None = None,
    description: str | None = None,
    program: str | None = None,
    command: Sequence[str] | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> SweepConfig:
    """Make a W&B sweep config, validated, and make it this session's sweep config.

    Like ``wandb_config``: calling it makes it the config ``@wandb_sweep`` steps use for the rest of the session;
    used as ``with wandb_sweep_config(...):`` it applies only inside the block and the session's is left as it was.

    Args:
        method: ``grid`` (every combination once), ``random`` or ``bayes``.
        parameters: The search space, in W&B's format (see the module docstring).
        metric: ``{"name": ..., "goal": "minimize" | "maximize", "target": ...}``; required by bayes and
            early_terminate.
        early_terminate: ``{"type": "hyperband", "min_iter": ..., "eta": ...}`` (or ``max_iter`` with ``s``).
        run_cap: The most trials the sweep runs, across all its agents.
        name: The sweep's name, also the trials' W&B group.
        description: Free text.
        program: The training script of a W&B CLI agent (kept for ``wandb.sweep``).
        command: The W&B CLI agent's command (kept for ``wandb.sweep``).
        project: The W&B project of the sweep and its trials.
        entity: The W&B entity of the sweep and its trials.

    Returns:
        The validated config (a mapping, and a context manager).

    Raises:
        SweepConfigError: Naming the key path of the first invalid entry; nothing is applied then.
    """
    given = {
        "method": method,
        "metric": metric,
        "parameters": parameters,
        "early_terminate": early_terminate,
        "run_cap": run_cap,
        "name": name,
        "description": description,
        "program": program,
        "command": command,
        "project": project,
        "entity": entity,
    }
    return validate({k: v for k, v in given.items() if v is not None}).apply()


def load_config(source: str | os.PathLike[str] | Mapping[str, Any]) -> SweepConfig:
    """Read and validate a sweep config from a YAML file (or take a mapping), as ``wandb sweep`` does.

    YAML floats written without a dot (``1e-4``) are read as numbers, as W&B reads them.

    Args:
        source: A path to a YAML file, or a mapping.

    Returns:
        The validated config; it does not become the session's sweep config.

    Raises:
        SweepConfigError: The file cannot be read or parsed (key ``config``), or an entry is invalid.
    """
    if isinstance(source, Mapping):
        return validate(source)
    import yaml

    try:
        with open(source, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=yamlio.loader())  # a SafeLoader
    except OSError as error:
        raise SweepConfigError(f"cannot read {os.fspath(source)}: {error.strerror}", key="config") from error
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{os.fspath(source)} is not valid YAML: {error}", key="config") from error
    return validate(data)


def validate(data: Any) -> SweepConfig:
    """Check a sweep config in full and return it parsed; a :class:`SweepConfig` is returned as is.

    Raises:
        SweepConfigError: Naming the key path of the first invalid entry.
    """
    if isinstance(data, SweepConfig):
        return data
    if not isinstance(data, Mapping):
        raise SweepConfigError(f"a sweep config must be a mapping (got {_describe(data)})", key="config")
    for key in data:
        if key not in TOP_KEYS:
            raise SweepConfigError(f"unknown key (known: {', '.join(TOP_KEYS)})", key=str(key))
    method = data.get("method")
    if method is None:
        raise SweepConfigError(f"required: one of {', '.join(METHODS)}", key="method")
    if method not in METHODS:
        raise SweepConfigError(f"must be one of {', '.join(METHODS)} (got {method!r})", key="method")
    metric = _metric(data["metric"]) if data.get("metric") is not None else None
    if "parameters" not in data:
        raise SweepConfigError("required: the search space", key="parameters")
    params = tuple(_parameters(data["parameters"], (), "parameters"))
    _check_unique(params)
    early_terminate = _hyperband(data["early_terminate"]) if data.get("early_terminate") is not None else None
    if metric is None and method == "bayes":
        raise SweepConfigError("required by method bayes", key="metric")
    if metric is None and early_terminate is not None:
        raise SweepConfigError("required by early_terminate", key="metric")
    if method == "grid":
        _check_grid(params)
    run_cap = data.get("run_cap")
    if run_cap is not None and not (_is_int(run_cap) and run_cap > 0):
        raise SweepConfigError(f"must be a positive integer (got {_describe(run_cap)})", key="run_cap")
    for key in ("name", "description", "program", "project", "entity"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise SweepConfigError(f"must be a string (got {_describe(data[key])})", key=key)
    command = data.get("command")
    if command is not None and (isinstance(command, str) or not _is_list(command, str)):
        raise SweepConfigError(f"must be a list of strings (got {_describe(command)})", key="command")
    plain = {k: copy.deepcopy(_plain(v)) for k, v in data.items() if v is not None}
    return SweepConfig(plain, params=params, metric=metric, early_terminate=early_terminate)


def _metric(data: Any) -> Metric:
    if not isinstance(data, Mapping):
        raise SweepConfigError(f"must be a mapping with name and goal (got {_describe(data)})", key="metric")
    for key in data:
        if key not in METRIC_KEYS:
            raise SweepConfigError(f"unknown key (known: {', '.join(METRIC_KEYS)})", key=f"metric.{key}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SweepConfigError(f"required: the logged metric's name (got {_describe(name)})", key="metric.name")
    goal = data.get("goal", "minimize")
    if goal not in GOALS:
        raise SweepConfigError(f"must be one of {', '.join(GOALS)} (got {goal!r})", key="metric.goal")
    target = data.get("target")
    if target is not None and not _is_number(target):
        raise SweepConfigError(f"must be a number (got {_describe(target)})", key="metric.target")
    return Metric(name=name, goal=goal, target=None if target is None else float(target))


def _hyperband(data: Any) -> Hyperband:
    key = "early_terminate"
    if not isinstance(data, Mapping):
        raise SweepConfigError(f"must be a mapping with type hyperband (got {_describe(data)})", key=key)
    for name in data:
        if name not in HYPERBAND_KEYS:
            raise SweepConfigError(f"unknown key (known: {', '.join(HYPERBAND_KEYS)})", key=f"{key}.{name}")
    if data.get("type") != "hyperband":
        raise SweepConfigError(f"must be hyperband (got {data.get('type')!r})", key=f"{key}.type")
    for name, low in (("min_iter", 1), ("max_iter", 1), ("s", 1), ("eta", 2)):
        value = data.get(name)
        if value is not None and not (_is_int(value) and value >= low):
            raise SweepConfigError(f"must be an integer >= {low} (got {_describe(value)})", key=f"{key}.{name}")
    if data.get("min_iter") is None and data.get("max_iter") is None:
        raise SweepConfigError("needs min_iter or max_iter", key=key)
    if data.get("min_iter") is not None and data.get("max_iter") is not None:
        raise SweepConfigError("give min_iter or max_iter, not both", key=f"{key}.max_iter")
    if data.get("max_iter") is not None and data.get("s") is None:
        raise SweepConfigError("required with max_iter (the number of brackets)", key=f"{key}.s")
    strict = data.get("strict", False)
    if not isinstance(strict, bool):
        raise SweepConfigError(f"must be true or false (got {_describe(strict)})", key=f"{key}.strict")
    return Hyperband(
        min_iter=data.get("min_iter"), max_iter=data.get("max_iter"), s=data.get("s"), eta=data.get("eta", 3)
    )


def _parameters(data: Any, path: tuple[str, ...], key: str) -> Iterator[Param]:
    if not isinstance(data, Mapping) or not data:
        raise SweepConfigError(f"must be a non-empty mapping of parameter names (got {_describe(data)})", key=key)
    for name, spec in data.items():
        if not isinstance(name, str) or not name:
            raise SweepConfigError(f"parameter names must be non-empty strings (got {name!r})", key=key)
        here = f"{key}.{name}"
        if isinstance(spec, Mapping) and "parameters" in spec:
            extra = sorted(k for k in spec if k != "parameters")
            if extra:
                raise SweepConfigError(f"a nested parameter takes only 'parameters' (got {', '.join(extra)})", key=here)
            yield from _parameters(spec["parameters"], (*path, name), f"{here}.parameters")
        else:
            yield _param(spec, (*path, name), here)


def _param(spec: Any, path: tuple[str, ...], key: str) -> Param:
    if not isinstance(spec, Mapping):
        raise SweepConfigError(
            f"must be a mapping with value, values, min and max, or parameters (got {_describe(spec)})", key=key
        )
    for name in spec:
        if name not in PARAM_KEYS:
            raise SweepConfigError(f"unknown key (known: {', '.join(PARAM_KEYS)}, parameters)", key=f"{key}.{name}")
    distribution = _distribution(spec, key)
    allowed = DISTRIBUTIONS[distribution]
    for name in spec:
        if name != "distribution" and name not in allowed:
            raise SweepConfigError(f"not used by distribution {distribution}", key=f"{key}.{name}")
    fields: dict[str, Any] = {}
    if distribution == "constant":
        if "value" not in spec:
            raise SweepConfigError("required by distribution constant", key=f"{key}.value")
        fields["value"] = _plain(spec["value"])
    elif distribution == "categorical":
        fields.update(_categorical(spec, key))
    elif "min" in allowed:
        fields.update(_range(spec, distribution, key))
    elif "mu" in allowed:
        fields["mu"] = _number(spec, "mu", key, default=0.0)
        fields["sigma"] = _number(spec, "sigma", key, default=1.0, positive=True)
    else:
        fields["a"] = _number(spec, "a", key, default=1.0, positive=True)
        fields["b"] = _number(spec, "b", key, default=1.0, positive=True)
    if "q" in allowed:
        fields["q"] = _number(spec, "q", key, default=1, positive=True)
    return Param(path=path, distribution=distribution, **fields)


def _distribution(spec: Mapping[str, Any], key: str) -> str:
    given = spec.get("distribution")
    if given is not None:
        if given not in DISTRIBUTIONS:
            known = ", ".join(DISTRIBUTIONS)
            raise SweepConfigError(f"unknown distribution {given!r} (known: {known})", key=f"{key}.distribution")
        return str(given)
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec or "max" in spec:
        missing = "max" if "max" not in spec else "min" if "min" not in spec else None
        if missing:
            raise SweepConfigError("required: a range needs both min and max", key=f"{key}.{missing}")
        return "int_uniform" if _is_int(spec["min"]) and _is_int(spec["max"]) else "uniform"
    raise SweepConfigError("needs value, values, min and max, a distribution, or parameters", key=key)


def _categorical(spec: Mapping[str, Any], key: str) -> dict[str, Any]:
    values = spec.get("values")
    if not _is_list(values) or not values:
        raise SweepConfigError(f"must be a non-empty list (got {_describe(values)})", key=f"{key}.values")
    fields: dict[str, Any] = {"values": tuple(_plain(v) for v in values)}
    probabilities = spec.get("probabilities")
    if probabilities is not None:
        where = f"{key}.probabilities"
        if not _is_list(probabilities) or not all(_is_number(p) for p in probabilities):
            raise SweepConfigError(f"must be a list of numbers (got {_describe(probabilities)})", key=where)
        if len(probabilities) != len(values):
            raise SweepConfigError(
                f"must have one entry per value ({len(values)}, got {len(probabilities)})", key=where
            )
        if any(p < 0 for p in probabilities):
            raise SweepConfigError(f"must not be negative (got {list(probabilities)})", key=where)
        total = float(sum(probabilities))
        if abs(total - 1.0) > 1e-6:
            raise SweepConfigError(f"must sum to 1 (got {total:g})", key=where)
        fields["probabilities"] = tuple(float(p) for p in probabilities)
    return fields


def _range(spec: Mapping[str, Any], distribution: str, key: str) -> dict[str, Any]:
    for name in RANGE:
        if name not in spec:
            raise SweepConfigError(f"required by distribution {distribution}", key=f"{key}.{name}")
        if not _is_number(spec[name]):
            raise SweepConfigError(f"must be a number (got {_describe(spec[name])})", key=f"{key}.{name}")
        if distribution == "int_uniform" and not _is_int(spec[name]):
            raise SweepConfigError(
                f"must be an integer for int_uniform (got {_describe(spec[name])})", key=f"{key}.{name}"
            )
    low, high = spec["min"], spec["max"]
    if not low < high:
        raise SweepConfigError(f"must be > min (got max {high!r} <= min {low!r})", key=f"{key}.max")
    if distribution in POSITIVE_VALUES and low <= 0:
        raise SweepConfigError(f"must be > 0 for {distribution} (got {low!r})", key=f"{key}.min")
    return {"min": low, "max": high}


def _number(spec: Mapping[str, Any], name: str, key: str, *, default: float, positive: bool = False) -> float:
    value = spec.get(name, default)
    if not _is_number(value):
        raise SweepConfigError(f"must be a number (got {_describe(value)})", key=f"{key}.{name}")
    if positive and not value > 0:
        raise SweepConfigError(f"must be > 0 (got {value!r})", key=f"{key}.{name}")
    return value  # type: ignore[no-any-return]


def _check_unique(params: tuple[Param, ...]) -> None:
    seen: set[str] = set()
    for param in params:
        if param.name in seen:
            raise SweepConfigError(f"the name {param.name!r} is used twice (dots join nested names)", key=param.key)
        seen.add(param.name)


def _check_grid(params: tuple[Param, ...]) -> None:
    size = 1
    for param in params:
        if param.distribution not in GRID_DISTRIBUTIONS:
            raise SweepConfigError(
                "grid search needs discrete values: use values, value, int_uniform or q_uniform "
                f"(got distribution {param.distribution})",
                key=param.key,
            )
        size *= len(param.grid_values())
        if size > MAX_GRID_POINTS:
            raise SweepConfigError(f"the grid has more than {MAX_GRID_POINTS:,} points", key="parameters")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_list(value: Any, item_type: type | None = None) -> bool:
    if not isinstance(value, list | tuple):
        return False
    return item_type is None or all(isinstance(v, item_type) for v in value)


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, so configs compare, copy and serialize as plain data."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing"
