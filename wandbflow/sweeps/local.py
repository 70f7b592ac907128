"""The local sweep engine: Optuna, its study in SQLite beside the ledger, or in PostgreSQL for several machines.

The sweep id is the Optuna study's name. Trials are reserved in the slot table first (:mod:`wandbflow.sweeps.slots`)
and then sampled by Optuna: grid → ``GridSampler`` (trial ``k`` is grid point ``k``), random →
``RandomSampler``, bayes → ``TPESampler``, hyperband → ``HyperbandPruner`` fed by every ``log`` of the metric (see
:mod:`wandbflow.sweeps.space` for the exact mapping). ``metric.target`` reached by a finished trial stops the sweep.

Optuna reports each study and trial at INFO level; wandbflow's progress bar says the same, so the first local engine
lowers Optuna's verbosity to WARNING when it is still Optuna's default (``optuna.logging.set_verbosity`` restores it).
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import string
import threading
from pathlib import Path
from typing import Any

import optuna

from wandbflow.errors import SweepError
from wandbflow.ledger import default_path
from wandbflow.sweeps import space
from wandbflow.sweeps.engines import SweepEngine, SweepInfo, TrialAssignment, TrialMonitor, TrialRecord
from wandbflow.sweeps.slots import SlotStore
from wandbflow.sweeps.spec import SweepConfig
from wandbflow.sweeps.validate import validate

#: The environment variable naming the default storage of local sweeps (an RDB URL or an SQLite file).
STORAGE_ENV = "WANDBFLOW_SWEEP_STORAGE"
#: The SQLite file local sweeps use by default, in the ledger's directory.
DEFAULT_FILE = "sweeps.db"
_ID_ALPHABET = string.ascii_lowercase + string.digits


def storage_url(storage: str | os.PathLike[str] | None = None) -> str:
    """The SQLAlchemy URL of a local sweep storage.

    Args:
        storage: An RDB URL (``postgresql://`` is read as ``postgresql+psycopg://``) or an SQLite file path;
            None: ``WANDBFLOW_SWEEP_STORAGE``, else ``sweeps.db`` in the ledger's directory.
    """
    if storage is None:
        storage = os.environ.get(STORAGE_ENV) or default_path().parent / DEFAULT_FILE
    text = os.fspath(storage)
    if "://" not in text:
        return f"sqlite:///{Path(text).absolute()}"
    for prefix in ("postgresql://", "postgres://"):
        if text.startswith(prefix):
            return "postgresql+psycopg://" + text.removeprefix(prefix)
    return text


def new_sweep_id() -> str:
    """A new sweep id: 8 lowercase letters and digits, starting with a letter (W&B's sweep ids look alike)."""
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(_ID_ALPHABET) for _ in range(7))


class LocalEngine(SweepEngine):
    """Optuna sweeps in an RDB: any number of processes, on any number of machines when the RDB is a server.

    Args:
        storage: See :func:`storage_url`.
    """

    name = "local"
    # (pid, url) -> storage: one SQLAlchemy engine per process and database.
    _storages: dict[tuple[int, str], optuna.storages.RDBStorage] = {}
    _lock = threading.Lock()

    def __init__(self, storage: str | os.PathLike[str] | None = None) -> None:
        self.url = storage_url(storage)
        self.slots = SlotStore(self.url)
        self._studies: dict[str, optuna.Study] = {}

    def create(self, config: SweepConfig, *, project: str | None, entity: str | None) -> SweepInfo:
        """Create the sweep's row and Optuna study under a new id."""
        for _ in range(10):
            sweep_id = new_sweep_id()
            name = config.name or f"sweep-{sweep_id}"
            if self.slots.add_sweep(sweep_id, name=name, config=config, project=project, entity=entity):
                break
        else:  # pragma: no cover - ten collisions among 36**7 ids
            raise SweepError("could not find a free sweep id", sweep_id=None)
        goal = config.metric.goal if config.metric is not None else "minimize"
        optuna.create_study(storage=self.storage(), study_name=sweep_id, direction=goal)  # type: ignore[arg-type]
        return self._info(sweep_id, name, config, project, entity)

    def load(self, sweep_id: str) -> SweepInfo | None:
        """The sweep with this id in this storage, or None (an SQLite file that does not exist is not created)."""
        if self.url.startswith("sqlite:///") and not Path(self.url.removeprefix("sqlite:///")).exists():
            return None
        row = self.slots.sweep(sweep_id)
        if row is None:
            return None
        return self._info(sweep_id, row["name"], validate(row["config"]), row["project"], row["entity"])

    def ask(self, info: SweepInfo, *, worker: str) -> TrialAssignment | None:
        """Reserve the next trial number in one transaction, then let Optuna create and sample its trial."""
        config = info.config
        slot = self.slots.reserve(info.sweep_id, cap=config.max_trials, worker=worker)
        if slot is None:
            return None
        trial = self._study(info).ask()
        params = space.suggest(trial, config, space.dimensions(config))
        grid_index = trial.number if config.method == "grid" else None
        self.slots.assign(info.sweep_id, slot.number, optuna_number=trial.number, grid_index=grid_index, params=params)
        return TrialAssignment(
            sweep_id=info.sweep_id,
            number=slot.number,
            run_id=slot.run_id,
            params=params,
            sweep_ref=info.ref,
            group=info.name,
            project=info.project,
            entity=info.entity,
        )

    def tell(self, info: SweepInfo, number: int, state: str, value: float | None) -> str:
        """Record the trial in the slot table (stopping the sweep when it reached the target), then in Optuna."""
        metric = info.config.metric
        reached = state == "finished" and value is not None and metric is not None and metric.reached(value)
        reason = f"trial {number} reached the target {metric.target}" if reached and metric is not None else None
        result = self.slots.finish(info.sweep_id, number, state=state, value=value, stop_reason=reason)
        if result is None:
            return next(r.state for r in self.records(info) if r.number == number)
        recorded, optuna_number = result
        if optuna_number is not None:
            study = self._study(info)
            if recorded == "finished" and value is not None and math.isfinite(value):
                study.tell(optuna_number, value, skip_if_finished=True)
            else:
                fate = optuna.trial.TrialState.PRUNED if recorded == "pruned" else optuna.trial.TrialState.FAIL
                study.tell(optuna_number, state=fate, skip_if_finished=True)
        return recorded

    def records(self, info: SweepInfo) -> list[TrialRecord]:
        """Every trial in the slot table, by number."""
        return [_record(row) for row in self.slots.trials(info.sweep_id)]

    def status(self, info: SweepInfo) -> str:
        """running, complete or stopped, from the sweeps table."""
        row = self.slots.sweep(info.sweep_id)
        assert row is not None
        return str(row["state"])

    def stop(self, info: SweepInfo, *, reason: str) -> None:
        """Mark the sweep stopped: ask returns None from now on."""
        self.slots.set_state(info.sweep_id, "stopped", reason)

    def monitor(self, info: SweepInfo, number: int) -> TrialMonitor:
        """The Optuna trial behind trial ``number``, with the sweep's pruner.

        A sweep without a pruner gets a monitor that never prunes and needs no storage.
        """
        if info.config.early_terminate is None:
            return TrialMonitor()
        return _OptunaMonitor(self, info, number)

    def connect(self, info: SweepInfo) -> None:
        """Open this process's Optuna storage for a sweep with a pruner (the first opening takes about 0.5 s)."""
        if info.config.early_terminate is not None:
            self.storage()

    def reap(self, info: SweepInfo) -> list[TrialRecord]:
        """Tell crashed the running trials of processes on this host that no longer exist."""
        reaped = []
        for row in self.slots.trials(info.sweep_id, running_on=f"{socket.gethostname()}:"):
            if not _alive(int(str(row["worker"]).rpartition(":")[2])):
                self.tell(info, row["number"], "crashed", None)
                reaped.append(_record({**row, "state": "crashed"}))
        return reaped

    def storage(self) -> optuna.storages.RDBStorage:
        """This process's Optuna storage for the engine's database."""
        key = (os.getpid(), self.url)
        with LocalEngine._lock:
            found = LocalEngine._storages.get(key)
            if found is None:
                _quiet_optuna()
                kwargs: dict[str, Any] = {"pool_pre_ping": True}
                if self.url.startswith("sqlite"):
                    # Each write transaction takes the write lock up front, so concurrent writers wait instead of
                    # failing on a stale snapshot.
                    kwargs = {"connect_args": {"timeout": 60, "isolation_level": "IMMEDIATE"}}
                found = optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)
                LocalEngine._storages[key] = found
            return found

    def _info(
        self, sweep_id: str, name: str, config: SweepConfig, project: str | None, entity: str | None
    ) -> SweepInfo:
        return SweepInfo(
            sweep_id=sweep_id,
            name=name,
            config=config,
            engine=self.name,
            project=project,
            entity=entity,
            location=self.url,
        )

    def _study(self, info: SweepInfo) -> optuna.Study:
        study = self._studies.get(info.sweep_id)
        if study is None:
            study = optuna.load_study(
                study_name=info.sweep_id,
                storage=self.storage(),
                sampler=space.sampler_for(info.config),
                pruner=space.pruner_for(info.config),
            )
            self._studies[info.sweep_id] = study
        return study


class _OptunaMonitor(TrialMonitor):
    """Reports a trial's metric to its Optuna trial and asks the sweep's pruner."""

    def __init__(self, engine: LocalEngine, info: SweepInfo, number: int) -> None:
        row = next((r for r in engine.slots.trials(info.sweep_id) if r["number"] == number), None)
        if row is None or row["optuna_number"] is None:
            raise SweepError(f"sweep {info.sweep_id} has handed out no trial {number}", sweep_id=info.sweep_id)
        storage = engine.storage()
        study = optuna.load_study(
            study_name=info.sweep_id,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # this process samples nothing
            pruner=space.pruner_for(info.config),
        )
        study_id = storage.get_study_id_from_name(info.sweep_id)
        self._trial = optuna.Trial(
            study, storage.get_trial_id_from_study_id_trial_number(study_id, row["optuna_number"])
        )
        self._slots = engine.slots
        self._sweep_id = info.sweep_id
        self._number = number

    def report(self, step: int, value: float) -> bool:
        """Record the value as the trial's intermediate value at ``step``; True when the pruner stops it."""
        self._trial.report(value, step)
        return self._trial.should_prune()

    def mark_pruned(self, step: int) -> None:
        """Note in the slot table that the pruner stopped the trial, so a runner reporting failed records pruned."""
        self._slots.mark_pruned(self._sweep_id, self._number, step)


def _record(row: dict[str, Any]) -> TrialRecord:
    return TrialRecord(
        number=row["number"],
        run_id=row["run_id"],
        state=row["state"],
        value=row["value"],
        params=row["params"],
        worker=row["worker"],
        started_at=row["reserved_at"],
        finished_at=row["finished_at"],
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _quiet_optuna() -> None:
    if optuna.logging.get_verbosity() == optuna.logging.INFO:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
