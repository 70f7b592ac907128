"""Shared pieces of the benchmarks: the Figure record, timing, interleaved A/B pairs, summaries."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """One benchmark figure: ``value`` is the median ratio (or rate) of ``n`` repeats, ``low``/``high`` min and max.

    ``passed`` says whether ``value`` meets ``target``; ``details`` holds the figure's own counts (sizes, losses).
    """

    id: str
    title: str
    value: float
    unit: str
    low: float
    high: float
    n: int
    target: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The figure as results.json holds it: every field, and ``median``/``min``/``max`` spelled out."""
        return {**asdict(self), "median": self.value, "min": self.low, "max": self.high}


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, min and max."""
    return statistics.median(values), min(values), max(values)


def timed(action: Callable[[], Any]) -> float:
    """Seconds one call of ``action`` takes."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def take_turns(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each contender in each round, their order rotating every round so drift hits all of them."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(timed(contenders[name]))
    return times


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
