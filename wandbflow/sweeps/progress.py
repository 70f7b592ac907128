"""The progress bar over a sweep's trials: how many ended, how the last one ended, and the best metric so far.

One bar for every runner (:func:`~wandbflow.sweeps.agent` with a function, ``sweep_notebook`` with parallel
kernels), safe to update from several threads. tqdm's ``auto`` bar: a widget in a notebook, text elsewhere.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wandbflow.sweeps.sweep import Sweep


class TrialProgress:
    """A bar over the trials a runner may still run of ``sweep``; disabled, it shows nothing.

    Its total is the smaller of ``count`` (the runner's own limit; None: none) and what the sweep has left to hand
    out (``run_cap``, a grid's size, less the trials it already handed out); open-ended when neither is known.
    """

    def __init__(self, sweep: Sweep, *, count: int | None, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        cap = sweep.config.max_trials
        limits = [n for n in (count, None if cap is None else max(0, cap - len(sweep.records()))) if n is not None]
        total = min(limits) if limits else None
        self.metric = sweep.config.metric
        self.best: float | None = None
        self._bar = tqdm(total=total, desc=f"sweep {sweep.id}", unit="trial", disable=not enabled)
        self._lock = threading.Lock()

    def ended(self, number: int, state: str, value: float | None) -> None:
        """Count trial ``number`` as ended in ``state``, with its final metric ``value`` (None: none)."""
        with self._lock:
            metric = self.metric
            if metric is not None and value is not None and (self.best is None or metric.better(value, self.best)):
                self.best = value
            best = f", best {metric.name}={self.best:.4g}" if metric is not None and self.best is not None else ""
            self._bar.set_postfix_str(f"#{number} {state}{best}")
            self._bar.update(1)

    def close(self) -> None:
        """Leave the bar as it ended."""
        self._bar.close()
