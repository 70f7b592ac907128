"""The trial slot table: which trial numbers a local sweep has handed out, reserved atomically.

Optuna's ``GridSampler`` may hand two workers the same point, and counting trials before creating one is not atomic,
so a sweep's trials are reserved here first, in the sweep's own database (SQLite or any RDB Optuna uses), each in
one transaction that locks the sweep: SQLite's ``BEGIN IMMEDIATE`` takes the write lock up front; other databases
lock the sweep's row (``SELECT ... FOR UPDATE``). So trial numbers are 0, 1, 2, ... with none repeated and none past
the cap (for a grid: its size), and every trial creates at most one Optuna trial.

That also reserves each grid point: ``GridSampler`` gives Optuna trial ``k`` grid point ``k`` while ``k`` is below
the grid size, Optuna numbers its trials under a lock on the study, and there are never more Optuna trials than
grid points. The unique key on (sweep, grid point) makes any repeat fail loudly instead of running twice.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

_metadata = sa.MetaData()
SWEEPS = sa.Table(
    "wandbflow_sweeps",
    _metadata,
    sa.Column("sweep_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(512), nullable=False),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("project", sa.String(512)),
    sa.Column("entity", sa.String(512)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stop_reason", sa.String(64)),
    sa.Column("created_at", sa.Float, nullable=False),
)
TRIALS = sa.Table(
    "wandbflow_trials",
    _metadata,
    sa.Column("sweep_id", sa.String(64), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(128), nullable=False),
    sa.Column("grid_index", sa.Integer),
    sa.Column("optuna_number", sa.Integer),
    sa.Column("params", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("pruned_step", sa.Integer),
    sa.Column("worker", sa.String(256)),
    sa.Column("reserved_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.UniqueConstraint("sweep_id", "grid_index", name="wandbflow_trials_grid_point"),
)


@dataclass(frozen=True)
class Slot:
    """A reserved trial: its number and run id."""

    number: int
    run_id: str


class SlotStore:
    """The sweeps and trials tables of one database.

    Args:
        url: A SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://...``); tables are created on first use.
    """

    # (pid, url) -> engine: a forked child opens its own connections.
    _engines: dict[tuple[int, str], sa.Engine] = {}
    _lock = threading.Lock()

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine for this process, tables created."""
        key = (os.getpid(), self.url)
        with SlotStore._lock:
            engine = SlotStore._engines.get(key)
            if engine is None:
                engine = _make_engine(self.url)
                _metadata.create_all(engine)
                SlotStore._engines[key] = engine
            return engine

    def add_sweep(
        self, sweep_id: str, *, name: str, config: Mapping[str, Any], project: str | None, entity: str | None
    ) -> bool:
        """Record a new sweep; False when the id is taken."""
        row = {
            "sweep_id": sweep_id,
            "name": name,
            "config": json.dumps(dict(config)),
            "project": project,
            "entity": entity,
            "state": "running",
            "created_at": time.time(),
        }
        with self.engine.begin() as conn:
            if conn.execute(sa.select(SWEEPS.c.sweep_id).where(SWEEPS.c.sweep_id == sweep_id)).first():
                return False
            conn.execute(SWEEPS.insert().values(**row))
        return True

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        """The sweep's row (config decoded), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(SWEEPS).where(SWEEPS.c.sweep_id == sweep_id)).mappings().first()
        if row is None:
            return None
        return {**row, "config": json.loads(row["config"])}

    def reserve(self, sweep_id: str, *, cap: int | None, worker: str) -> Slot | None:
        """Reserve the sweep's next trial number, or return None when the sweep is not running or is full.

        A sweep that reaches its cap is marked complete in the same transaction.
        """
        with self.engine.begin() as conn:
            state = conn.execute(
                sa.select(SWEEPS.c.state).where(SWEEPS.c.sweep_id == sweep_id).with_for_update()
            ).scalar_one()
            if state != "running":
                return None
            taken = conn.execute(
                sa.select(sa.func.count()).select_from(TRIALS).where(TRIALS.c.sweep_id == sweep_id)
            ).scalar_one()
            slot = Slot(number=taken, run_id=f"{sweep_id}-trial-{taken}")
            conn.execute(
                TRIALS.insert().values(
                    sweep_id=sweep_id,
                    number=slot.number,
                    run_id=slot.run_id,
                    state="running",
                    worker=worker,
                    reserved_at=time.time(),
                )
            )
            if cap is not None and taken + 1 >= cap:
                self._set_state(conn, sweep_id, "complete", "all trials handed out")
        return slot

    def assign(
        self, sweep_id: str, number: int, *, optuna_number: int, grid_index: int | None, params: Mapping[str, Any]
    ) -> None:
        """Record the Optuna trial, grid point and parameters of a reserved trial.

        Raises:
            sqlalchemy.exc.IntegrityError: The grid point was handed out before (never, by the argument above).
        """
        with self.engine.begin() as conn:
            conn.execute(
                TRIALS.update()
                .where(TRIALS.c.sweep_id == sweep_id, TRIALS.c.number == number)
                .values(optuna_number=optuna_number, grid_index=grid_index, params=json.dumps(dict(params)))
            )

    def finish(
        self, sweep_id: str, number: int, *, state: str, value: float | None, stop_reason: str | None
    ) -> tuple[str, int | None] | None:
        """Record how a running trial ended; a pruned mark turns failed into pruned.

        Args:
            sweep_id: The sweep.
            number: The trial.
            state: How it ended.
            value: The metric's final value.
            stop_reason: Stop the sweep for this reason in the same transaction (its target was reached).

        Returns:
            The state recorded and the Optuna trial number, or None when the trial had already ended.
        """
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(TRIALS.c.state, TRIALS.c.pruned_step, TRIALS.c.optuna_number).where(
                    TRIALS.c.sweep_id == sweep_id, TRIALS.c.number == number
                )
            ).one()
            if row.state != "running":
                return None
            if state == "failed" and row.pruned_step is not None:
                state = "pruned"
            conn.execute(
                TRIALS.update()
                .where(TRIALS.c.sweep_id == sweep_id, TRIALS.c.number == number)
                .values(state=state, value=value, finished_at=time.time())
            )
            if stop_reason is not None:
                self._set_state(conn, sweep_id, "stopped", stop_reason)
        return state, row.optuna_number

    def mark_pruned(self, sweep_id: str, number: int, step: int) -> None:
        """Record that a trial's pruner stopped it at ``step``."""
        with self.engine.begin() as conn:
            conn.execute(
                TRIALS.update().where(TRIALS.c.sweep_id == sweep_id, TRIALS.c.number == number).values(pruned_step=step)
            )

    def set_state(self, sweep_id: str, state: str, reason: str) -> None:
        """Set the sweep's state (an earlier stop is kept)."""
        with self.engine.begin() as conn:
            self._set_state(conn, sweep_id, state, reason)

    def trials(self, sweep_id: str, *, running_on: str | None = None) -> list[dict[str, Any]]:
        """The sweep's trial rows by number (params decoded); only running ones of ``host:`` when ``running_on``."""
        query = sa.select(TRIALS).where(TRIALS.c.sweep_id == sweep_id).order_by(TRIALS.c.number)
        if running_on is not None:
            query = query.where(TRIALS.c.state == "running", TRIALS.c.worker.startswith(running_on))
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [{**row, "params": json.loads(row["params"]) if row["params"] else {}} for row in rows]

    @staticmethod
    def _set_state(conn: sa.Connection, sweep_id: str, state: str, reason: str) -> None:
        conn.execute(
            SWEEPS.update()
            .where(SWEEPS.c.sweep_id == sweep_id, SWEEPS.c.state != "stopped")
            .values(state=state, stop_reason=reason)
        )


def _make_engine(url: str) -> sa.Engine:
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.make_url(url).database
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 60})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), not the sqlite3 module
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
