"""Sweep engines: the small abstract base every backend implements, and the one factory that picks one.

Two engines are registered: ``local`` (Optuna, its study in SQLite beside the ledger or in any RDB, the offline
default) and ``wandb`` (W&B's server controller and ``wandb.agent``, the default when online). The registry names
where each lives, so nothing is imported until an engine is used.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from wandbflow import inherit, naming
from wandbflow.errors import ConfigError, SweepError

if TYPE_CHECKING:
    from wandbflow.sweeps.spec import SweepConfig
    from wandbflow.sweeps.sweep import Sweep

#: How a trial can end, as :meth:`SweepEngine.tell` and the ledger record it.
TRIAL_STATES = ("finished", "failed", "pruned", "interrupted", "crashed")
#: The job_type of every trial run.
TRIAL_JOB_TYPE = "sweep-trial"

# Engine name -> "module:class", imported on first use (papermill's engine registry, without I/O at import).
ENGINES: dict[str, str] = {
    "local": "wandbflow.sweeps.local:LocalEngine",
    "wandb": "wandbflow.sweeps.remote:WandbEngine",
}


@dataclass(frozen=True)
class SweepInfo:
    """What an engine knows of one sweep.

    Attributes:
        sweep_id: The sweep's id: short, stable, and what agents are given.
        name: The sweep's name, also the W&B group of its trials.
        config: The validated sweep config.
        engine: The engine's registered name.
        project: The W&B project of its trials, if fixed by the sweep.
        entity: The W&B entity of its trials, if fixed by the sweep.
        location: Where the engine keeps it: the storage URL (local) or ``entity/project`` (wandb).
    """

    sweep_id: str
    name: str
    config: SweepConfig
    engine: str
    project: str | None = None
    entity: str | None = None
    location: str | None = None

    @property
    def ref(self) -> str:
        """The reference another process attaches with: ``{engine}:{location}#{sweep_id}`` (see :func:`parse_ref`)."""
        return f"{self.engine}:{self.location or ''}#{self.sweep_id}"


@dataclass(frozen=True)
class TrialAssignment:
    """One trial handed out by :meth:`Sweep.ask`: what a runner needs to run it anywhere.

    Attributes:
        sweep_id: The sweep.
        number: The trial number, from 0, unique in the sweep.
        run_id: The W&B run id the trial's run must use.
        params: The trial's parameters, as the nested run config.
        sweep_ref: The sweep reference for :func:`wandbflow.sweeps.watch` in the process running the trial.
        group: The W&B group of the trial run (the sweep's name).
        project: The W&B project, if the sweep fixes one.
        entity: The W&B entity, if the sweep fixes one.
    """

    sweep_id: str
    number: int
    run_id: str
    params: dict[str, Any]
    sweep_ref: str
    group: str
    project: str | None = None
    entity: str | None = None

    def settings(self) -> dict[str, Any]:
        """The run settings of the trial's scope: id, group, config, tags (the sweep id), job_type, run_mode new."""
        settings: dict[str, Any] = {
            "id": self.run_id,
            "group": self.group,
            "config": self.params,
            "tags": [self.sweep_id],
            "job_type": TRIAL_JOB_TYPE,
            "run_mode": "new",
        }
        if self.project:
            settings["project"] = self.project
        if self.entity:
            settings["entity"] = self.entity
        return settings

    def context(
        self, settings: Mapping[str, Any] | None = None, *, session: str | None = None, notebook: str | None = None
    ) -> inherit.InheritedContext:
        """The context a process running this trial inherits (``inherit.child_environment`` or ``adopt`` it).

        Args:
            settings: The orchestrator's resolved settings (mode, dir, host, ...); the trial's own win.
            session: The session id; this process's by default.
            notebook: The notebook the trial executes, if any.

        Returns:
            A context with the trial's run id, sweep id, trial number and settings.
        """
        merged = {**(settings or {}), **{k: v for k, v in self.settings().items() if k != "id"}}
        return inherit.make_context(
            merged,
            session=session or naming.session_id(),
            run_id=self.run_id,
            sweep_id=self.sweep_id,
            trial_id=str(self.number),
            notebook=notebook,
        )

    def to_json(self) -> str:
        """This assignment as one JSON string."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrialAssignment:
        """Rebuild an assignment written by :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the engine recorded it.

    Attributes:
        number: The trial number.
        run_id: Its W&B run id.
        state: running, or how it ended (:data:`TRIAL_STATES`).
        value: The final value of the sweep's metric, if it was logged.
        params: The trial's parameters (nested run config).
        worker: ``host:pid`` of the process that asked for it, if known.
        started_at: When it was handed out (unix seconds).
        finished_at: When its end was told (unix seconds).
    """

    number: int
    run_id: str
    state: str
    value: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class TrialMonitor:
    """What a running trial reports its metric to; this base never prunes (engines that do, subclass it)."""

    def report(self, step: int, value: float) -> bool:
        """Record the metric's value at ``step`` (the number of times it was logged); True to prune the trial."""
        return False

    def mark_pruned(self, step: int) -> None:
        """Record that the trial stopped because it was pruned at ``step``."""


class SweepEngine(ABC):
    """A sweep backend (optuna's ``BaseStorage``/``BaseSampler`` shape).

    Contract: :meth:`create` takes an already validated config and returns the new sweep's info with a short id
    that is stable for the sweep's life; :meth:`load` finds a sweep by id, or returns None. :meth:`ask` hands out
    each trial number once across every process serving the sweep (atomically: never beyond ``run_cap``, never a
    grid point twice) and returns None once the sweep is complete, capped or stopped; :meth:`tell` records how a
    trial ended, at most once (a later tell of the same trial changes nothing). An engine that cannot hand trials
    to external runners raises :class:`SweepError` from ask and tell, and overrides :meth:`serve`.
    """

    name: str = ""

    @abstractmethod
    def create(self, config: SweepConfig, *, project: str | None, entity: str | None) -> SweepInfo:
        """Create a sweep and return its info."""

    @abstractmethod
    def load(self, sweep_id: str) -> SweepInfo | None:
        """The info of an existing sweep, or None when this engine does not know the id."""

    @abstractmethod
    def ask(self, info: SweepInfo, *, worker: str) -> TrialAssignment | None:
        """Reserve and sample the next trial for ``worker`` (``host:pid``), or None when there is none to run."""

    @abstractmethod
    def tell(self, info: SweepInfo, number: int, state: str, value: float | None) -> str:
        """Record how trial ``number`` ended; return the state recorded (a pruned trial reported failed: pruned)."""

    @abstractmethod
    def records(self, info: SweepInfo) -> list[TrialRecord]:
        """Every trial of the sweep, by number."""

    @abstractmethod
    def status(self, info: SweepInfo) -> str:
        """The sweep's state: running (handing out trials), complete (all handed out) or stopped."""

    @abstractmethod
    def stop(self, info: SweepInfo, *, reason: str) -> None:
        """Hand out no more trials; running ones finish."""

    def monitor(self, info: SweepInfo, number: int) -> TrialMonitor:
        """The monitor trial ``number`` reports its metric to; by default one that never prunes."""
        return TrialMonitor()

    def connect(self, info: SweepInfo) -> None:
        """Open what :meth:`monitor` needs in this process (a database connection), ahead of the first trial."""
        return None

    def reap(self, info: SweepInfo) -> list[TrialRecord]:
        """Record as crashed the running trials whose process on this host is gone; return them."""
        return []

    def serve(self, sweep: Sweep, function: Callable[[], Any], *, count: int | None, on_trial: OnTrial) -> int:
        """Run trials of ``sweep`` in this process, calling ``function`` once per trial, until ``count`` or the end.

        The default is the same path an external runner takes: :meth:`Sweep.ask`, the trial as a scoped run whose
        ``log`` feeds the pruner (:func:`wandbflow.sweeps.trial.run_trial`), :meth:`Sweep.tell`.

        Returns:
            How many trials this call ran.
        """
        from wandbflow.sweeps.trial import run_trial

        done = 0
        while count is None or done < count:
            assignment = sweep.ask()
            if assignment is None:
                break
            try:
                state, value = run_trial(sweep, assignment.number, assignment.settings(), function)
            except BaseException as error:  # the trial's run could not start, or KeyboardInterrupt
                sweep.tell(assignment, "interrupted" if isinstance(error, KeyboardInterrupt) else "failed")
                raise
            state = sweep.tell(assignment, state, value)
            done += 1
            on_trial(assignment.number, state, value)
        return done


#: Called after each trial an agent runs: (trial number, state, metric value).
OnTrial = Callable[[int, str, "float | None"], None]


def get_engine(
    engine: SweepEngine | str | None = None, *, storage: str | os.PathLike[str] | None = None
) -> SweepEngine:
    """The sweep engine to use.

    Args:
        engine: An engine, a registered name (``local``, ``wandb``), or None: ``wandb`` when runs would go online
            (``mode`` resolves to online: W&B credentials, or ``mode="online"``), else ``local``.
        storage: The local engine's storage: an RDB URL (``postgresql+psycopg://...``) or an SQLite file path;
            default ``WANDBFLOW_SWEEP_STORAGE``, else ``sweeps.db`` beside the ledger.

    Returns:
        The engine.

    Raises:
        ConfigError: An unknown engine name, or a storage given to an engine that keeps none.
    """
    if isinstance(engine, SweepEngine):
        return engine
    if engine is None:
        from wandbflow.config import resolve

        engine = "wandb" if resolve().values["mode"] == "online" and storage is None else "local"
    if engine not in ENGINES:
        raise ConfigError(f"unknown sweep engine {engine!r} (known: {', '.join(ENGINES)})", key="engine")
    module, _, cls = ENGINES[engine].partition(":")
    engine_cls = getattr(importlib.import_module(module), cls)
    if engine == "local":
        return engine_cls(storage)  # type: ignore[no-any-return]
    if storage is not None:
        raise ConfigError(f"the {engine} engine keeps no storage (got {storage!r})", key="storage")
    return engine_cls()  # type: ignore[no-any-return]


def parse_ref(ref: str) -> tuple[str, str, str]:
    """Split a sweep reference (:attr:`SweepInfo.ref`) into engine name, location and sweep id.

    Raises:
        SweepError: Not a sweep reference.
    """
    engine, colon, rest = ref.partition(":")
    location, hash_sign, sweep_id = rest.rpartition("#")
    if not colon or not hash_sign or engine not in ENGINES or not sweep_id:
        raise SweepError(f"not a sweep reference: {ref!r} (expected ENGINE:LOCATION#SWEEP_ID)", sweep_id=None)
    return engine, location, sweep_id


def this_worker() -> str:
    """``host:pid`` of this process, as trials record who asked for them."""
    return f"{socket.gethostname()}:{os.getpid()}"
