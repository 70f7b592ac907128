"""The sweep config: W&B's format as parsed data, and the session's current sweep config.

One format for both engines: ``method`` (grid, random, bayes), ``metric`` (name, goal, target), ``parameters``
(``value``, ``values`` with optional ``probabilities``, ``min``/``max``, a ``distribution`` with ``q``, ``mu``,
``sigma``, ``a``, ``b``, or nested ``parameters``), ``early_terminate`` (hyperband: ``min_iter`` or ``max_iter``
with ``s``, ``eta``, ``strict``), ``run_cap``, ``name``, ``description``, ``program``, ``command``, ``project``,
``entity``. :mod:`wandbflow.sweeps.validate` checks a config and builds the :class:`SweepConfig` defined here.

Pure: imports neither wandb nor optuna.
"""

from __future__ import annotations

import contextvars
import copy
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

METHODS = ("grid", "random", "bayes")
GOALS = ("minimize", "maximize")
TOP_KEYS = (
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "name",
    "description",
    "program",
    "command",
    "project",
    "entity",
)
METRIC_KEYS = ("name", "goal", "target")
HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")
PARAM_KEYS = ("value", "values", "probabilities", "distribution", "min", "max", "q", "mu", "sigma", "a", "b")

RANGE = ("min", "max")
# Each distribution and the keys it takes (besides ``distribution``).
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values", "probabilities"),
    "int_uniform": RANGE,
    "uniform": RANGE,
    "q_uniform": (*RANGE, "q"),
    "log_uniform": RANGE,
    "log_uniform_values": RANGE,
    "q_log_uniform_values": (*RANGE, "q"),
    "inv_log_uniform": RANGE,
    "inv_log_uniform_values": RANGE,
    "normal": ("mu", "sigma"),
    "q_normal": ("mu", "sigma", "q"),
    "log_normal": ("mu", "sigma"),
    "q_log_normal": ("mu", "sigma", "q"),
    "beta": ("a", "b"),
    "q_beta": ("a", "b", "q"),
}
POSITIVE_VALUES = ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values")
# What a grid can enumerate; every other distribution is continuous.
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
MAX_GRID_POINTS = 1_000_000


@dataclass(frozen=True)
class Param:
    """One leaf of the parameter tree, after validation and defaults.

    Attributes:
        path: The parameter's place in the run config: ``("optimizer", "momentum")`` is ``config.optimizer.momentum``.
        distribution: The distribution, given or inferred (``values`` → categorical, int ``min``/``max`` →
            int_uniform, float → uniform, ``value`` → constant).
        value: The constant's value.
        values: The categorical's values.
        probabilities: The categorical's probabilities, if given.
        min: Lower bound of a range distribution.
        max: Upper bound of a range distribution.
        q: Quantization step of a ``q_`` distribution (default 1).
        mu: Mean of a normal-family distribution (default 0).
        sigma: Standard deviation of a normal-family distribution (default 1).
        a: First shape of a beta distribution (default 1).
        b: Second shape of a beta distribution (default 1).
    """

    path: tuple[str, ...]
    distribution: str
    value: Any = None
    values: tuple[Any, ...] = ()
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    q: float = 1
    mu: float = 0.0
    sigma: float = 1.0
    a: float = 1.0
    b: float = 1.0

    @property
    def name(self) -> str:
        """The dotted name (``optimizer.momentum``), unique in the sweep."""
        return ".".join(self.path)

    @property
    def key(self) -> str:
        """The key path in the sweep config (``parameters.optimizer.parameters.momentum``)."""
        return "parameters." + ".parameters.".join(self.path)

    def grid_values(self) -> list[Any]:
        """Every value a grid visits for this parameter, in order."""
        if self.distribution == "constant":
            return [self.value]
        if self.distribution == "categorical":
            return list(self.values)
        assert self.min is not None and self.max is not None
        if self.distribution == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))
        first, last = math.ceil(self.min / self.q - 1e-9), math.floor(self.max / self.q + 1e-9)
        return [quantize(k * self.q, self.q) for k in range(first, last + 1)]


@dataclass(frozen=True)
class Metric:
    """The metric a sweep optimizes: its name in ``run.log``, the goal, and an optional target that stops it."""

    name: str
    goal: str = "minimize"
    target: float | None = None

    def reached(self, value: float) -> bool:
        """True when ``value`` meets the target (``<=`` when minimizing, ``>=`` when maximizing)."""
        if self.target is None:
            return False
        return value <= self.target if self.goal == "minimize" else value >= self.target

    def better(self, value: float, than: float) -> bool:
        """True when ``value`` is strictly better than ``than`` for the goal."""
        return value < than if self.goal == "minimize" else value > than

    def read(self, summary: Mapping[str, Any]) -> float | None:
        """This metric's value in a run's summary; None when it is missing or not a number."""
        found = summary.get(self.name)
        return float(found) if isinstance(found, int | float) and not isinstance(found, bool) else None


@dataclass(frozen=True)
class Hyperband:
    """W&B's hyperband early termination: ``min_iter`` or ``max_iter`` with ``s`` brackets, ``eta``, ``strict``."""

    min_iter: int | None = None
    max_iter: int | None = None
    s: int | None = None
    eta: int = 3
    strict: bool = False


class SweepConfig(Mapping[str, Any]):
    """A validated sweep config: the W&B sweep dict as a read-only mapping, with its parsed parts.

    Made by ``wandb_sweep_config``, ``validate`` or ``load_config`` (:mod:`wandbflow.sweeps.validate`). As a
    mapping it is the config as given (what ``wandb.sweep`` receives). Used as ``with config:`` it is the sweep
    config of ``@wandb_sweep`` steps called in the block.

    Attributes:
        method: grid, random or bayes.
        metric: The metric, or None.
        params: Every leaf parameter, in config order.
        early_terminate: The hyperband settings, or None.
        run_cap: The most trials the sweep runs, or None.
    """

    def __init__(
        self,
        data: dict[str, Any],
        *,
        params: tuple[Param, ...],
        metric: Metric | None,
        early_terminate: Hyperband | None,
    ) -> None:
        self._data = data
        self.method: str = data["method"]
        self.metric = metric
        self.params = params
        self.early_terminate = early_terminate
        self.run_cap: int | None = data.get("run_cap")
        self._previous_default: SweepConfig | None = None
        self._replaces_default = False
        self._tokens: list[contextvars.Token[tuple[SweepConfig, ...]]] = []

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"wandb_sweep_config({', '.join(f'{k}={v!r}' for k, v in self._data.items())})"

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokens": [], "_previous_default": None, "_replaces_default": False}

    @property
    def name(self) -> str | None:
        """The sweep's name (the trials' W&B group), if the config gives one."""
        return self._data.get("name")

    @property
    def project(self) -> str | None:
        """The W&B project the config names, if any."""
        return self._data.get("project")

    @property
    def entity(self) -> str | None:
        """The W&B entity the config names, if any."""
        return self._data.get("entity")

    @property
    def grid_size(self) -> int | None:
        """How many points a grid sweep has; None for random and bayes."""
        if self.method != "grid":
            return None
        return math.prod(len(p.grid_values()) for p in self.params)

    @property
    def max_trials(self) -> int | None:
        """The most trials this sweep hands out: ``run_cap``, and for a grid its size; None when unbounded."""
        caps = [c for c in (self.run_cap, self.grid_size) if c is not None]
        return min(caps) if caps else None

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the config as a plain dict."""
        return copy.deepcopy(self._data)

    def to_yaml(self) -> str:
        """The config as YAML, in the order it was given (``load_config`` reads it back unchanged)."""
        from wandbflow.sweeps import yamlio

        return yamlio.dump(self.to_dict())

    def apply(self) -> SweepConfig:
        """Make this the session's sweep config (what calling ``wandb_sweep_config`` does) and return it.

        Using it afterwards as ``with config:`` puts the session's previous sweep config back.
        """
        self._previous_default = _set_default(self)
        self._replaces_default = True
        return self

    def __enter__(self) -> SweepConfig:
        if self._replaces_default:
            _set_default(self._previous_default)
            self._replaces_default = False
        self._tokens.append(_blocks.set((*_blocks.get(), self)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _blocks.reset(self._tokens.pop())


_default_lock = threading.Lock()
_default: SweepConfig | None = None
_blocks: contextvars.ContextVar[tuple[SweepConfig, ...]] = contextvars.ContextVar(
    "wandbflow_sweep_config_blocks", default=()
)


def _set_default(config: SweepConfig | None) -> SweepConfig | None:
    global _default
    with _default_lock:
        previous, _default = _default, config
    return previous


def current_config() -> SweepConfig | None:
    """The sweep config ``@wandb_sweep`` uses here: the innermost ``with`` block's, else the session's, else None."""
    blocks = _blocks.get()
    if blocks:
        return blocks[-1]
    with _default_lock:
        return _default


def reset_session_config() -> None:
    """Forget the session's sweep config."""
    _set_default(None)


def quantize(value: float, q: float) -> float:
    """``round(value / q) * q``, as W&B's ``q_`` distributions define it, without binary noise (0.30000000000000004).

    An integer ``q`` gives an integer.
    """
    steps = round(value / q)
    if isinstance(q, int) and not isinstance(q, bool):
        return int(steps * q)
    decimals = max(0, 6 - math.floor(math.log10(abs(q))))
    return round(steps * q, decimals)
