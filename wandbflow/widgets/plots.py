"""The monitor's plots, drawn with matplotlib's object API (no pyplot, so any thread may draw) into PNG bytes.

Left: the best value of the metric so far, by trial. Right: parallel coordinates, one axis per parameter and one
for the metric, each trial a line colored by its value.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from wandbflow.sweeps.engines import TrialRecord
from wandbflow.sweeps.spec import Metric


def sweep_png(records: Sequence[TrialRecord], metric: Metric) -> bytes | None:
    """Both plots side by side as PNG bytes; None while no trial has a value of the metric."""
    scored = [r for r in records if r.value is not None and math.isfinite(r.value)]
    if not scored:
        return None
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.2), layout="constrained")
    best_axes, coordinates_axes = figure.subplots(1, 2, width_ratios=(2, 3))
    _best_so_far(best_axes, scored, metric)
    _parallel_coordinates(coordinates_axes, figure, scored, metric)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _best_so_far(axes: Any, scored: Sequence[TrialRecord], metric: Metric) -> None:
    numbers = [r.number for r in scored]
    values = [float(r.value) for r in scored]  # type: ignore[arg-type]
    best: list[float] = []
    for value in values:
        best.append(value if not best or metric.better(value, best[-1]) else best[-1])
    axes.scatter(numbers, values, s=14, color="#9e9e9e", label="trial")
    axes.step(numbers, best, where="post", color="#1e88e5", label=f"best ({metric.goal})")
    axes.set_xlabel("trial")
    axes.set_ylabel(metric.name)
    axes.set_title("best so far", fontsize=10)
    axes.legend(fontsize=8)


def _parallel_coordinates(axes: Any, figure: Any, scored: Sequence[TrialRecord], metric: Metric) -> None:
    columns = _columns(scored)
    names = [*columns, metric.name]
    axis_values = [*columns.values(), [float(r.value) for r in scored]]  # type: ignore[arg-type]
    scaled, ticks = zip(*(_scale(values) for values in axis_values), strict=True)
    from matplotlib import colormaps, colors
    from matplotlib.cm import ScalarMappable

    values = axis_values[-1]
    norm = colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1)
    cmap = colormaps["viridis_r" if metric.goal == "minimize" else "viridis"]
    xs = list(range(len(names)))
    for index, value in enumerate(values):
        axes.plot(xs, [column[index] for column in scaled], color=cmap(norm(value)), alpha=0.8, linewidth=1.2)
    for x, labels in zip(xs, ticks, strict=True):
        axes.axvline(x, color="#616161", linewidth=0.8)
        for y, label in labels:
            axes.text(x, y, f" {label}", fontsize=7, va="center")
    axes.set_xticks(xs, names, fontsize=8, rotation=15)
    axes.set_yticks([])
    axes.set_ylim(-0.05, 1.05)
    axes.set_title("parameters vs metric", fontsize=10)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=metric.name)


def _columns(scored: Sequence[TrialRecord]) -> dict[str, list[Any]]:
    """Each parameter (dotted name) and its value per trial, in the order the parameters first appear."""
    flat = [_flatten(r.params) for r in scored]
    names = list(dict.fromkeys(name for params in flat for name in params))
    return {name: [params.get(name) for params in flat] for name in names}


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _scale(values: Sequence[Any]) -> tuple[list[float], list[tuple[float, str]]]:
    """Values mapped to [0, 1] and the axis's tick labels: numbers linearly, anything else by category."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        low, high = min(values), max(values)
        span = high - low or 1
        return [(v - low) / span for v in values], [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
    categories = list(dict.fromkeys(map(str, values)))
    step = 1 / max(1, len(categories) - 1)
    scaled = [categories.index(str(v)) * step if len(categories) > 1 else 0.5 for v in values]
    spots = [i * step if len(categories) > 1 else 0.5 for i in range(len(categories))]
    return scaled, list(zip(spots, categories, strict=True))
