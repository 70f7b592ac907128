"""The Sweep object, and ``sweep()`` and ``agent()``: create or re-attach a sweep, serve it with a function.

A :class:`Sweep` is the same for every runner: :meth:`Sweep.ask` hands out a :class:`TrialAssignment`, the runner
runs it as a W&B run with the assignment's settings (calling :func:`~wandbflow.sweeps.trial.watch` on the run so
its metric feeds the pruner), and :meth:`Sweep.tell` records how it ended. :func:`agent` is that loop with a
function as the trial; a notebook runner executes each trial in its own kernel on the same calls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from wandbflow.errors import ConfigError, SweepError
from wandbflow.sweeps.engines import (
    TRIAL_STATES,
    SweepEngine,
    SweepInfo,
    TrialAssignment,
    TrialMonitor,
    TrialRecord,
    get_engine,
    parse_ref,
    this_worker,
)
from wandbflow.sweeps.spec import SweepConfig
from wandbflow.sweeps.validate import validate

if TYPE_CHECKING:
    import pandas as pd

    from wandbflow.ledger import Ledger

logger = logging.getLogger("wandbflow")

#: The columns of :meth:`Sweep.trials`, in order.
TRIAL_COLUMNS = ["trial", "run_id", "state", "value", "params", "started_at", "finished_at", "duration", "dir"]

_known: dict[str, Sweep] = {}  # the sweeps this process created or attached, by id
_known_lock = threading.Lock()


class Sweep:
    """A sweep on an engine: ask for trials, tell how they ended, read the results.

    Made by :func:`sweep` (new, or attached by id) and :func:`attach` (by reference, in a trial's process).

    Attributes:
        id: The sweep id (what ``wandbflow agent`` takes).
        name: The sweep's name, also the W&B group of its trials.
        config: The validated sweep config.
        engine: The engine serving it.
        info: What the engine knows of it.
    """

    def __init__(self, info: SweepInfo, engine: SweepEngine) -> None:
        self.info = info
        self.engine = engine
        self.id = info.sweep_id
        self.name = info.name
        self.config: SweepConfig = info.config

    def __repr__(self) -> str:
        return f"Sweep(id={self.id!r}, name={self.name!r}, method={self.config.method!r}, engine={self.engine.name!r})"

    @property
    def ref(self) -> str:
        """The reference a trial's process attaches with (:func:`attach`, :func:`~wandbflow.sweeps.watch`)."""
        return self.info.ref

    @property
    def state(self) -> str:
        """The sweep's state: running, complete (all trials handed out) or stopped (target reached, :meth:`stop`)."""
        return self.engine.status(self.info)

    def ask(self, *, worker: str | None = None) -> TrialAssignment | None:
        """Reserve the next trial and sample its parameters; safe from any number of processes and machines.

        Args:
            worker: Who runs it (``host:pid``); this process by default. A dead local worker's trial is recorded
                as crashed when the sweep is next attached.

        Returns:
            The trial to run, or None when the sweep has nothing more to hand out (complete: ``run_cap`` reached or
            every grid point handed out; stopped: the metric's target reached or :meth:`stop`).

        Raises:
            SweepError: The engine hands trials only to its own agents (the W&B engine).
        """
        return self.engine.ask(self.info, worker=worker or this_worker())

    def tell(self, assignment: TrialAssignment | int, state: str, value: float | None = None) -> str:
        """Record how a trial ended; the first tell of a trial counts, later ones change nothing.

        Args:
            assignment: The trial, or its number.
            state: finished, failed, pruned, interrupted or crashed. A trial its pruner stopped is recorded pruned
                even when told failed (a notebook reports the ``TrialPruned`` cell as an error).
            value: The final value of the sweep's metric; when None for a finished trial, the value in the run's
                ledger summary.

        Returns:
            The state recorded. The trial's ledger row says the same: pruned, or crashed when it was still running.

        Raises:
            ConfigError: An unknown state.
            SweepError: The engine hands trials only to its own agents (the W&B engine).
        """
        if state not in TRIAL_STATES:
            raise ConfigError(f"must be one of {', '.join(TRIAL_STATES)} (got {state!r})", key="state")
        if isinstance(assignment, int):
            number = assignment
            run_id = next((r.run_id for r in self.records() if r.number == number), None)
            if run_id is None:
                raise SweepError(f"sweep {self.id} has handed out no trial {number}", sweep_id=self.id)
        else:
            number, run_id = assignment.number, assignment.run_id
        ledger = _ledger()
        if value is None and state == "finished" and ledger is not None and self.config.metric is not None:
            record = ledger.get(run_id)
            if record is not None:
                value = self.config.metric.read(record.summary)
        recorded = self.engine.tell(self.info, number, state, value)
        if ledger is not None:
            _record_end(ledger, run_id, recorded)
        return recorded

    def records(self) -> list[TrialRecord]:
        """Every trial, by number, as the engine recorded it."""
        return self.engine.records(self.info)

    def trials(self) -> pd.DataFrame:
        """The trials as a DataFrame: trial, run_id, state, value (of the metric), params, times and run dir.

        Runs are linked through the ledger (its rows carry the sweep id and trial number); ``attrs["metric"]`` and
        ``attrs["goal"]`` name what ``value`` is.
        """
        import pandas as pd

        ledger = _ledger()
        runs = {r.run_id: r for r in ledger.records(sweep_id=self.id)} if ledger is not None else {}
        rows = []
        for trial in self.records():
            run = runs.get(trial.run_id)
            rows.append(
                {
                    "trial": trial.number,
                    "run_id": trial.run_id,
                    "state": trial.state,
                    "value": trial.value,
                    "params": trial.params,
                    "started_at": run.started_at if run is not None else trial.started_at,
                    "finished_at": run.finished_at if run is not None else trial.finished_at,
                    "dir": run.dir if run is not None else None,
                }
            )
        frame = pd.DataFrame(rows, columns=[c for c in TRIAL_COLUMNS if c != "duration"])
        frame["value"] = frame["value"].astype("float64")
        frame["duration"] = frame["finished_at"].astype("float64") - frame["started_at"].astype("float64")
        frame = frame[TRIAL_COLUMNS]
        metric = self.config.metric
        frame.attrs.update(metric=metric.name if metric else None, goal=metric.goal if metric else None)
        return frame

    def best(self) -> TrialRecord | None:
        """The finished trial with the best value of the metric for its goal; None without a metric or such trial."""
        metric = self.config.metric
        if metric is None:
            return None
        best: TrialRecord | None = None
        for trial in self.records():
            if trial.state != "finished" or trial.value is None:
                continue
            if best is None or metric.better(trial.value, best.value):  # type: ignore[arg-type]
                best = trial
        return best

    def stop(self, reason: str = "stopped by the user") -> None:
        """Hand out no more trials; the running ones finish."""
        self.engine.stop(self.info, reason=reason)

    def connect(self) -> None:
        """Open the sweep's storage in this process now, so the first trial's monitor does not wait for it."""
        self.engine.connect(self.info)

    def monitor(self, number: int) -> TrialMonitor:
        """What trial ``number`` reports its metric to (used by :func:`~wandbflow.sweeps.watch`)."""
        return self.engine.monitor(self.info, number)


def sweep(
    config: Mapping[str, Any] | str,
    *,
    engine: SweepEngine | str | None = None,
    storage: str | os.PathLike[str] | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> Sweep:
    """Create a sweep from a config, or re-attach one by id: ``wf.sweep(space)``, ``wf.sweep("k3x9a2pq")``.

    Args:
        config: A sweep config (``wandb_sweep_config(...)``, a dict or a loaded YAML), or an existing sweep's id.
        engine: ``local`` (Optuna), ``wandb`` (W&B's controller), an engine, or None: ``wandb`` when runs go online,
            else ``local``. For an id, None looks in this process, then the local storage, then W&B when online.
        storage: Where the local engine keeps its sweeps: an RDB URL (PostgreSQL serves several machines) or an
            SQLite file; default ``WANDBFLOW_SWEEP_STORAGE``, else ``sweeps.db`` beside the ledger.
        project: The W&B project of the trials (default: the config's, else the run settings').
        entity: The W&B entity of the trials (default: the config's, else the run settings').

    Returns:
        The sweep.

    Raises:
        SweepConfigError: An invalid config; no sweep, study or run is created.
        SweepError: No sweep with that id.
    """
    if isinstance(config, str):
        return load(config, engine=engine, storage=storage)
    checked = validate(config)
    chosen = get_engine(engine, storage=storage)
    info = chosen.create(checked, project=project or checked.project, entity=entity or checked.entity)
    logger.info("wandbflow: created sweep %s (%s, %s engine)", info.sweep_id, info.name, chosen.name)
    return _remember(Sweep(info, chosen))


def load(
    sweep_id: str, *, engine: SweepEngine | str | None = None, storage: str | os.PathLike[str] | None = None
) -> Sweep:
    """Re-attach an existing sweep by id (after a kernel restart, from another process or machine).

    Attaching a local sweep records as crashed its running trials whose process on this host has exited.

    Args:
        sweep_id: The sweep id.
        engine: As for :func:`sweep`.
        storage: As for :func:`sweep`.

    Returns:
        The sweep.

    Raises:
        SweepError: No sweep with that id where it was looked for.
    """
    if engine is None and storage is None:
        with _known_lock:
            known = _known.get(sweep_id)
        if known is not None:
            return known
    if engine is not None:
        candidates = [get_engine(engine, storage=storage)]
    else:  # this storage first; W&B's server too when runs go online
        candidates = [get_engine("local", storage=storage)]
        if storage is None and (online := get_engine(None)).name != "local":
            candidates.append(online)
    for candidate in candidates:
        info = candidate.load(sweep_id)
        if info is not None:
            found = Sweep(info, candidate)
            ledger = _ledger()
            for trial in candidate.reap(info):
                logger.warning("wandbflow: trial %s of sweep %s crashed (its process exited)", trial.number, sweep_id)
                if ledger is not None:
                    _record_end(ledger, trial.run_id, "crashed")
            return _remember(found)
    where = ", ".join(getattr(c, "url", c.name) for c in candidates)
    raise SweepError(f"no sweep {sweep_id!r} in {where}", sweep_id=sweep_id)


def attach(ref: str) -> Sweep:
    """The sweep a reference names (``TrialAssignment.sweep_ref``), for the process that runs a trial.

    Raises:
        SweepError: Not a reference, or no such sweep.
    """
    engine_name, location, sweep_id = parse_ref(ref)
    with _known_lock:
        known = _known.get(sweep_id)
    if known is not None and known.ref == ref:
        return known
    return load(sweep_id, engine=engine_name, storage=location if engine_name == "local" else None)


def agent(sweep: Sweep | str, function: Callable[[], Any], *, count: int | None = None, progress: bool = True) -> int:
    """Serve a sweep with a function: each trial calls ``function()`` inside the trial's own run; blocks until done.

    The function reads its parameters from the run's config (``get_wandb_run().config``); a ``@wandb_init``
    function logs into the trial's run. Several agents, in this or other processes, may serve one sweep.

    Args:
        sweep: The sweep, or its id.
        function: The trial, called with no arguments.
        count: The most trials this agent runs; None: until the sweep has no more to hand out.
        progress: Show a progress bar over the trials, with the best value of the metric so far (tqdm; a widget in
            a notebook).

    Returns:
        How many trials this agent ran.

    Raises:
        ConfigError: ``count`` is not a positive integer.
        SweepError: No sweep with that id.
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"must be a positive integer or None (got {count!r})", key="count")
    target = sweep if isinstance(sweep, Sweep) else load(sweep)
    from wandbflow.sweeps.progress import TrialProgress

    bar = TrialProgress(target, count=count, enabled=progress)
    try:
        return target.engine.serve(target, function, count=count, on_trial=bar.ended)
    finally:
        bar.close()


def _remember(found: Sweep) -> Sweep:
    with _known_lock:
        _known[found.id] = found
    return found


def _ledger() -> Ledger | None:
    from wandbflow.ledger import Ledger, default_path

    path = default_path()
    return Ledger(path) if path.exists() else None


def _record_end(ledger: Ledger, run_id: str, state: str) -> None:
    """Make the ledger say what the sweep recorded when the run's own end cannot: pruned, or crashed."""
    try:
        if state == "crashed":
            ledger.mark_crashed(run_id, error="the process running the trial exited without finishing it")
            return
        record = ledger.get(run_id)
        if state == "pruned" and record is not None and record.state != "pruned":
            ledger.record_finish(
                run_id,
                state="pruned",
                exit_code=record.exit_code,
                summary=record.summary,
                error=None,
                finished_at=record.finished_at,
            )
    except Exception:  # the ledger is a record, never a reason to lose the sweep's own
        logger.exception("wandbflow: could not record trial run %s as %s in the ledger", run_id, state)
