"""The trial side of a sweep: a run's ``log`` feeding the pruner, and a function trial as a scoped run.

:func:`watch` works in any process that runs a trial (the function agent's, or a notebook trial's kernel): given the
sweep reference and trial number of a :class:`~wandbflow.sweeps.engines.TrialAssignment`, it hooks the trial run's
``log`` so that each value of the sweep's metric is reported to the sweep's pruner (step = how many times the
metric has been logged, from 1) and, when the pruner says so, ``log`` raises :class:`~wandbflow.errors.TrialPruned`
once the values are written. Loops that prefer to ask call :func:`should_prune`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import numbers
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from wandbflow.errors import TrialPruned
from wandbflow.scope import Scope, get_wandb_run

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

    from wandbflow.sweeps.engines import TrialMonitor
    from wandbflow.sweeps.sweep import Sweep

logger = logging.getLogger("wandbflow")

_watches: dict[str, TrialWatch] = {}  # run id -> watch
_watches_lock = threading.Lock()
_active_sweep: contextvars.ContextVar[str | None] = contextvars.ContextVar("wandbflow_sweep_id", default=None)


class TrialWatch:
    """One trial run's link to its sweep's pruner; made by :func:`watch`.

    Attributes:
        number: The trial number.
        metric: The metric's name, None when the sweep has none (nothing is reported then).
        step: How many times the metric has been logged.
        last_value: Its last logged value.
        pruned: True once the pruner has stopped the trial.
    """

    def __init__(self, run: Run, monitor: TrialMonitor, *, number: int, metric: str | None) -> None:
        self.run = run
        self.number = number
        self.metric = metric
        self.step = 0
        self.last_value: float | None = None
        self.pruned = False
        self._monitor = monitor
        self._original_log = run.log

    def observe(self, data: Mapping[str, Any]) -> None:
        """Report the metric if ``data`` holds it; raise :class:`TrialPruned` when the pruner stops the trial."""
        if self.metric is None or self.metric not in data:
            return
        value = _number(data[self.metric])
        if value is None:
            return
        self.step += 1
        self.last_value = value
        if not self.pruned and self._monitor.report(self.step, value):
            self.pruned = True
            self._monitor.mark_pruned(self.step)
        if self.pruned:
            raise TrialPruned(
                f"trial {self.number} pruned at step {self.step} ({self.metric}={value:g})",
                trial=self.number,
                step=self.step,
                value=value,
            )

    def should_prune(self) -> bool:
        """True when the pruner has stopped the trial (the last report said so)."""
        return self.pruned

    def close(self) -> None:
        """Give the run its own ``log`` back and forget the watch."""
        with _watches_lock:
            if _watches.get(self.run.id) is self:
                del _watches[self.run.id]
        self.run.log = self._original_log  # type: ignore[method-assign]
        _repoint_global_log(self.run)


def watch(run: Run, sweep: Sweep | str, trial_number: int) -> TrialWatch:
    """Hook a trial run's ``log`` so the sweep's metric feeds its pruner; any process can call it.

    ``wandb.log``, ``run.log`` and ``get_wandb_run().log`` all go through the hook. After the values of a call are
    logged, the call raises :class:`~wandbflow.errors.TrialPruned` when the pruner stops the trial (and every later
    call that logs the metric does too). Only the metric's own key counts (``{"val/loss": 0.3}``), and values that
    are not finite numbers are not reported.

    Args:
        run: The trial's run (opened with the assignment's run id).
        sweep: The sweep, its reference (``TrialAssignment.sweep_ref``: it holds the storage URL, so a PostgreSQL
            URL should carry no password; use ``PGPASSFILE`` or ``PGPASSWORD``), or its id (looked up as
            :func:`~wandbflow.sweeps.load` does: the default storage, ``WANDBFLOW_SWEEP_STORAGE``).
        trial_number: ``TrialAssignment.number``.

    Returns:
        The watch; :meth:`TrialWatch.close` undoes the hook.

    Raises:
        SweepError: The sweep or the trial does not exist.
    """
    from wandbflow.sweeps.sweep import Sweep, attach, load

    target = sweep if isinstance(sweep, Sweep) else attach(sweep) if "#" in sweep else load(sweep)
    metric = target.config.metric
    trial = TrialWatch(
        run, target.monitor(trial_number), number=trial_number, metric=metric.name if metric is not None else None
    )
    original = run.log

    @functools.wraps(original)
    def log(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        original(data, *args, **kwargs)
        trial.observe(data)

    run.log = log  # type: ignore[method-assign]
    _repoint_global_log(run)
    with _watches_lock:
        _watches[run.id] = trial
    return trial


def should_prune(run: Run | None = None) -> bool:
    """True when the sweep's pruner has stopped this trial: for loops that check instead of letting ``log`` raise.

    Args:
        run: The trial's run; by default the current scope's run.

    Returns:
        False when the run is not a watched trial.
    """
    run = run if run is not None else get_wandb_run()
    if run is None:
        return False
    with _watches_lock:
        trial = _watches.get(run.id)
    return trial.should_prune() if trial is not None else False


def active_sweep_id() -> str | None:
    """The id of the sweep whose trial or ``@wandb_sweep`` step runs in this context, if any."""
    return _active_sweep.get()


@contextmanager
def using_sweep(sweep_id: str) -> Iterator[None]:
    """Make ``sweep_id`` this context's sweep (what ``get_wandb_sweep_id`` returns) inside the block."""
    token = _active_sweep.set(sweep_id)
    try:
        yield
    finally:
        _active_sweep.reset(token)


def run_trial(
    sweep: Sweep,
    number: int,
    settings: Mapping[str, Any],
    function: Callable[[], Any],
    *,
    watched: bool = True,
) -> tuple[str, float | None]:
    """Run one trial in this process: ``function()`` inside the trial's own scoped run.

    The run gets ``settings`` (:meth:`TrialAssignment.settings`: the trial's id, the sweep's name as group, the
    parameters as config, the sweep id as tag, job type ``sweep-trial``); its ledger row carries the sweep id and
    trial number. A trial that raises fails (exit code 1, logged here) and the sweep goes on; a pruned one finishes
    (exit code 0, tagged ``pruned``) and is recorded as pruned when told; KeyboardInterrupt ends the run (exit code
    255) and propagates.

    Args:
        sweep: The sweep.
        number: The trial number.
        settings: The trial run's settings.
        function: The trial.
        watched: Hook the run's ``log`` to the sweep's pruner (:func:`watch`); engines that prune on their server
            pass False.

    Returns:
        The state to tell (finished, failed or pruned) and the final value of the sweep's metric, if logged.
    """
    source = f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"
    scope = Scope(f"trial-{number}", settings, source_kind="function", source=source, quiet=True)
    with using_sweep(sweep.id):
        run = scope.start()
        _record_trial(scope, sweep.id, number)
        trial = watch(run, sweep, number) if run is not None and watched else None
        error: BaseException | None = None
        state = "finished"
        try:
            function()
        except TrialPruned:
            state = "pruned"
            if run is not None:
                run.tags = (*(run.tags or ()), "pruned")
        except Exception as raised:
            error, state = raised, "failed"
            logger.warning("wandbflow: trial %s of sweep %s failed", number, sweep.id, exc_info=True)
        except BaseException as raised:
            _end(scope, trial, raised)
            raise
        metric = sweep.config.metric
        value = _final_value(run, metric.name, trial) if metric is not None else None
        _end(scope, trial, error)
    return state, value


def _end(scope: Scope, trial: TrialWatch | None, error: BaseException | None) -> None:
    try:
        scope.end(error)
    finally:
        if trial is not None:
            trial.close()


def _record_trial(scope: Scope, sweep_id: str, number: int) -> None:
    """Write the sweep id and trial number into the run's ledger row (how ``Sweep.trials`` finds the run)."""
    frame = scope.frame
    if frame is None or frame.ledger is None or frame.run is None:
        return
    try:
        record = frame.ledger.get(frame.run.id)
        if record is not None:
            frame.ledger.record_start(replace(record, sweep_id=sweep_id, trial_id=str(number)))
    except Exception:  # the ledger is a record, never a reason to stop the trial
        logger.exception("wandbflow: could not record trial %s in the ledger", number)


def _final_value(run: Run | None, metric: str, trial: TrialWatch | None) -> float | None:
    """The metric's value in the run summary (the last logged), else the last value the watch saw."""
    try:
        found = _number(run.summary.get(metric)) if run is not None else None
    except Exception:  # an unreadable summary: fall back to what the watch saw
        found = None
    if found is None and trial is not None:
        return trial.last_value
    return found


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _repoint_global_log(run: Run) -> None:
    """Point ``wandb.log`` at the run's (hooked or restored) ``log`` when the run is wandb's global run."""
    import wandb
    from wandb.sdk.lib import module

    if wandb.run is run:
        module.set_global(log=run.log)
