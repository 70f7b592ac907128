"""W&B's search space and early termination, in Optuna's terms.

How each W&B distribution becomes an Optuna distribution (the value Optuna stores, then the value the run gets):

==========================  =================================================  ===================================
W&B                         Optuna                                             run config value
==========================  =================================================  ===================================
values                      ``CategoricalDistribution(values)`` (indices when  the value
                            a value is not a scalar)
values + probabilities      ``FloatDistribution(0, 1)`` = u                    the value whose cumulative
                                                                               probability interval holds u
int_uniform                 ``IntDistribution(min, max)``                      int
uniform                     ``FloatDistribution(min, max)``                    float
q_uniform                   ``FloatDistribution(min, max)`` = x                ``round(x / q) * q``
log_uniform_values,         ``FloatDistribution(min, max, log=True)``          float (the reciprocal of a
inv_log_uniform_values                                                         log-uniform value is log-uniform)
q_log_uniform_values        ``FloatDistribution(min, max, log=True)`` = x      ``round(x / q) * q``
log_uniform (exponents)     ``FloatDistribution(e^min, e^max, log=True)``      float
inv_log_uniform             ``FloatDistribution(e^-max, e^-min, log=True)``    float
normal, q_normal            ``FloatDistribution(0, 1)`` = u                    ``mu + sigma * Φ⁻¹(u)`` (then q)
log_normal, q_log_normal    ``FloatDistribution(0, 1)`` = u                    ``exp(mu + sigma * Φ⁻¹(u))`` (then q)
beta, q_beta                ``FloatDistribution(0, 1)`` = u                    ``Beta(a, b)⁻¹(u)`` (then q)
value                       not sampled                                        the value
==========================  =================================================  ===================================

``q`` rounds as W&B does (``round(x / q) * q``; an integer ``q`` gives integers). The inverse-CDF transforms turn
Optuna's uniform draw into exactly the W&B distribution; TPE then models the draw, which is monotone in the value.
A grid uses ``GridSampler`` over every value of every parameter (``int_uniform`` and ``q_uniform`` enumerated).

Hyperband (W&B) → ``HyperbandPruner`` (Optuna): ``eta`` → ``reduction_factor``; ``min_iter`` → ``min_resource``
with ``max_resource="auto"`` (the longest completed trial); ``max_iter`` with ``s`` → ``max_resource=max_iter``,
``min_resource=max_iter / eta**s``. An iteration is one ``log`` of the metric (the first is step 1). ``strict`` has
no Optuna counterpart and changes nothing.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from wandbflow.sweeps.spec import Param, SweepConfig, quantize

_U_EPSILON = 1e-12  # keeps an inverse CDF finite at Optuna's closed bounds 0 and 1
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Dimension:
    """One sampled parameter: its Optuna name and distribution, and how Optuna's value becomes the run's."""

    param: Param
    distribution: optuna.distributions.BaseDistribution
    decode: Callable[[Any], Any]

    @property
    def name(self) -> str:
        """The Optuna parameter name: the dotted path (``optimizer.momentum``)."""
        return self.param.name


def dimensions(config: SweepConfig) -> list[Dimension]:
    """The sampled parameters of a sweep (constants are not sampled), each as an Optuna distribution."""
    grid = config.method == "grid"
    return [_dimension(p, grid=grid) for p in config.params if p.distribution != "constant"]


def grid_space(dims: Sequence[Dimension]) -> dict[str, list[Any]]:
    """The search space ``GridSampler`` takes: every Optuna choice of every dimension."""
    return {d.name: list(d.distribution.choices) for d in dims}  # type: ignore[attr-defined]


def suggest(trial: optuna.Trial, config: SweepConfig, dims: Sequence[Dimension]) -> dict[str, Any]:
    """Sample one trial's parameters and return them as the nested run config W&B would give the run."""
    sampled: dict[str, Any] = {}
    for dim in dims:
        dist = dim.distribution
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            raw: Any = trial.suggest_categorical(dim.name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            raw = trial.suggest_int(dim.name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            assert isinstance(dist, optuna.distributions.FloatDistribution)
            raw = trial.suggest_float(dim.name, dist.low, dist.high, step=dist.step, log=dist.log)
        sampled[dim.name] = dim.decode(raw)
    return nest(config, sampled)


def nest(config: SweepConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """The nested run config from sampled values by dotted name, constants added, in the config's order."""
    params: dict[str, Any] = {}
    for param in config.params:
        node = params
        for part in param.path[:-1]:
            node = node.setdefault(part, {})
        node[param.path[-1]] = param.value if param.distribution == "constant" else sampled[param.name]
    return params


def sampler_for(config: SweepConfig, *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of a sweep's method: grid → ``GridSampler``, random → ``RandomSampler``, bayes → TPE."""
    if config.method == "grid":
        return SweepGridSampler(grid_space(dimensions(config)))
    if config.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(config: SweepConfig) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a sweep: ``HyperbandPruner`` for W&B's hyperband, else none."""
    hyperband = config.early_terminate
    if hyperband is None:
        return optuna.pruners.NopPruner()
    if hyperband.max_iter is not None:
        assert hyperband.s is not None
        low = max(1, round(hyperband.max_iter / hyperband.eta**hyperband.s))
        return optuna.pruners.HyperbandPruner(
            min_resource=low, max_resource=hyperband.max_iter, reduction_factor=hyperband.eta
        )
    assert hyperband.min_iter is not None
    return optuna.pruners.HyperbandPruner(
        min_resource=hyperband.min_iter, max_resource="auto", reduction_factor=hyperband.eta
    )


class SweepGridSampler(optuna.samplers.GridSampler):
    """``GridSampler`` that leaves ending the sweep to the slot table.

    It samples as ``GridSampler`` does (trial ``k`` gets grid point ``k``); it only does not call ``Study.stop``
    after the last point, which raises outside ``Study.optimize``: the slot table knows when the grid is handed out.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Do nothing (see the class docstring)."""


def _dimension(param: Param, *, grid: bool) -> Dimension:
    dist = param.distribution
    if grid:
        values = param.grid_values()
        return _categorical(param, values)
    if dist == "categorical":
        if param.probabilities is not None:
            return Dimension(param, optuna.distributions.FloatDistribution(0.0, 1.0), _weighted(param))
        return _categorical(param, list(param.values))
    assert dist != "constant"
    low, high = param.min, param.max
    if dist == "int_uniform":
        assert low is not None and high is not None
        return Dimension(param, optuna.distributions.IntDistribution(int(low), int(high)), int)
    if dist in ("uniform", "q_uniform", "log_uniform_values", "inv_log_uniform_values", "q_log_uniform_values"):
        assert low is not None and high is not None
        log = dist != "uniform" and dist != "q_uniform"
        return Dimension(
            param, optuna.distributions.FloatDistribution(float(low), float(high), log=log), _then_q(param, float)
        )
    if dist in ("log_uniform", "inv_log_uniform"):
        assert low is not None and high is not None
        bounds = (math.exp(low), math.exp(high)) if dist == "log_uniform" else (math.exp(-high), math.exp(-low))
        return Dimension(param, optuna.distributions.FloatDistribution(*bounds, log=True), float)
    return Dimension(param, optuna.distributions.FloatDistribution(0.0, 1.0), _then_q(param, _inverse_cdf(param)))


def _categorical(param: Param, values: list[Any]) -> Dimension:
    if all(isinstance(v, _SCALARS) for v in values):
        return Dimension(param, optuna.distributions.CategoricalDistribution(values), _identity)
    return Dimension(param, optuna.distributions.CategoricalDistribution(list(range(len(values)))), lambda i: values[i])


def _identity(value: Any) -> Any:
    return value


def _weighted(param: Param) -> Callable[[float], Any]:
    assert param.probabilities is not None
    cumulative = list(itertools.accumulate(param.probabilities))
    values = param.values

    def decode(u: float) -> Any:
        return values[min(bisect.bisect_right(cumulative, u), len(values) - 1)]

    return decode


def _then_q(param: Param, decode: Callable[[Any], float]) -> Callable[[Any], Any]:
    if not param.distribution.startswith("q_"):
        return decode
    return lambda raw: quantize(decode(raw), param.q)


def _inverse_cdf(param: Param) -> Callable[[float], float]:
    dist = param.distribution.removeprefix("q_")
    if dist == "beta":
        return lambda u: beta_ppf(u, param.a, param.b)
    normal = statistics.NormalDist(param.mu, param.sigma)

    def draw(u: float) -> float:
        return normal.inv_cdf(min(max(u, _U_EPSILON), 1.0 - _U_EPSILON))

    if dist == "log_normal":
        return lambda u: math.exp(draw(u))
    return draw


def beta_ppf(u: float, a: float, b: float) -> float:
    """The inverse CDF of Beta(a, b) at ``u`` (bisection on the regularized incomplete beta function)."""
    if u <= 0.0:
        return 0.0
    if u >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if _betainc(a, b, middle) < u:
            low = middle
        else:
            high = middle
        if high - low < 1e-15:
            break
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300

    def guard(value: float) -> float:
        return tiny if abs(value) < tiny else value

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result
