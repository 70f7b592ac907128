"""The ledger: a local record of every run wandbflow opens, in SQLite (WAL mode).

Safe with many writer processes: each write is one short ``BEGIN IMMEDIATE`` transaction, so a writer killed mid-write
loses at most its own unfinished record and never corrupts the file. Connections are per process (re-opened after
a fork).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wandbflow.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    import pandas as pd

ENV_VAR = "WANDBFLOW_LEDGER"
BUSY_TIMEOUT_S = 30.0


@dataclass
class RunRecord:
    """One row of the runs table.

    ``state`` is one of running, finished, failed, interrupted, crashed, pruned.
    """

    run_id: str
    name: str | None = None
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    job_type: str | None = None
    mode: str | None = None
    dir: str | None = None
    url: str | None = None
    state: str = "running"
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    source_kind: str | None = None
    source: str | None = None
    notebook: str | None = None
    session: str | None = None
    rank: int | None = None
    local_rank: int | None = None
    world_size: int | None = None
    worker_index: int | None = None
    sweep_id: str | None = None
    trial_id: str | None = None
    pid: int | None = None
    host: str | None = None
    error: str | None = None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRecord))
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_JSON_COLUMNS = ("config", "summary")
_SQL_TYPES = {"int | None": "INTEGER", "float | None": "REAL"}

# The schema, one statement per table; later tables (sweeps, trials) are added to this list.
SCHEMA: list[str] = [
    "CREATE TABLE IF NOT EXISTS runs ("
    + ", ".join(
        f'"{f.name}" ' + _SQL_TYPES.get(str(f.type), "TEXT") + (" PRIMARY KEY" if f.name == "run_id" else "")
        for f in fields(RunRecord)
    )
    + ")",
    "CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at)",
]


def default_path(root: str | os.PathLike[str] | None = None) -> Path:
    """Where the ledger lives: ``WANDBFLOW_LEDGER``, else ``<root or WANDB_DIR or cwd>/wandb/wandbflow.db``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = root or os.environ.get("WANDB_DIR") or os.getcwd()
    return Path(base) / "wandb" / "wandbflow.db"


class Ledger:
    """A ledger database file; cheap to create, connects on first use."""

    _connections: dict[tuple[int, int, str], sqlite3.Connection] = {}
    _lock = threading.Lock()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        key = (os.getpid(), threading.get_ident(), str(self.path))
        with Ledger._lock:
            conn = Ledger._connections.get(key)
            if conn is not None:
                return conn
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for statement in SCHEMA:
                    _retry(lambda s=statement: conn.execute(s))
            except (OSError, sqlite3.Error) as error:
                raise LedgerError(f"cannot open the ledger {self.path}: {error}", path=str(self.path)) from error
            Ledger._connections[key] = conn
            return conn

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        conn = self._connect()

        def transaction() -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return count

        try:
            count: int = _retry(transaction)
        except sqlite3.Error as error:
            raise LedgerError(f"cannot write the ledger {self.path}: {error}", path=str(self.path)) from error
        return count

    def record_start(self, record: RunRecord) -> None:
        """Insert a run, or replace the row of a run with the same id."""
        values = asdict(record)
        row = tuple(_encode(values[c]) if c in _JSON_COLUMNS else values[c] for c in COLUMNS)
        placeholders = ", ".join("?" for _ in COLUMNS)
        self._write(f"INSERT OR REPLACE INTO runs ({_QUOTED}) VALUES ({placeholders})", row)

    def record_finish(
        self,
        run_id: str,
        *,
        state: str,
        exit_code: int | None,
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Record how a run ended."""
        self._write(
            "UPDATE runs SET state = ?, exit_code = ?, summary = ?, error = ?, finished_at = ? WHERE run_id = ?",
            (state, exit_code, _encode(dict(summary or {})), error, finished_at or time.time(), run_id),
        )

    def mark_crashed(
        self, run_id: str, *, exit_code: int | None = None, signal: int | None = None, error: str | None = None
    ) -> bool:
        """Record that the process owning a run died without finishing it; only a row still running changes.

        Returns:
            True when a running row was marked.
        """
        return (
            self._write(
                "UPDATE runs SET state = 'crashed', exit_code = ?, signal = ?, error = ?, finished_at = ? "
                "WHERE run_id = ? AND state = 'running'",
                (exit_code, signal, error, time.time(), run_id),
            )
            > 0
        )

    def get(self, run_id: str) -> RunRecord | None:
        """The record of one run, or None."""
        found = self.records(run_id=run_id)
        return found[0] if found else None

    def records(self, **filters: Any) -> list[RunRecord]:
        """Runs matching every ``column=value`` filter, newest first.

        Raises:
            ConfigError: A filter names no column.
        """
        for name in filters:
            if name not in COLUMNS:
                raise ConfigError(f"no such ledger column (columns: {', '.join(COLUMNS)})", key=name)
        where = " AND ".join(f'"{name}" = ?' for name in filters)
        sql = f"SELECT {_QUOTED} FROM runs" + (f" WHERE {where}" if where else "")
        conn = self._connect()
        try:
            rows = _retry(lambda: conn.execute(sql + " ORDER BY started_at DESC", tuple(filters.values())).fetchall())
        except sqlite3.Error as error:
            raise LedgerError(f"cannot read the ledger {self.path}: {error}", path=str(self.path)) from error
        return [_decode(row) for row in rows]

    def runs(self, **filters: Any) -> pd.DataFrame:
        """The matching runs as a pandas DataFrame, newest first, with a ``duration`` column in seconds."""
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.records(**filters)], columns=list(COLUMNS))
        frame["duration"] = frame["finished_at"] - frame["started_at"]
        return frame


def runs(**filters: Any) -> pd.DataFrame:
    """The runs this directory's ledger knows (``wandbflow.runs(state="failed")``), as a DataFrame."""
    return Ledger(default_path()).runs(**filters)


def _encode(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def _decode(row: tuple[Any, ...]) -> RunRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] else {}
    return RunRecord(**values)


def _retry(action: Any, attempts: int = 20) -> Any:
    """Run ``action``, retrying while another process holds the write lock beyond the busy timeout."""
    for attempt in range(attempts):
        try:
            return action()
        except sqlite3.OperationalError as error:
            if ("locked" not in str(error) and "busy" not in str(error)) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")
