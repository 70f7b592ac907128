"""The ledger: a local record of every run wandbflow opens, in SQLite (WAL mode).

Safe with many writer processes: each write is one short ``BEGIN IMMEDIATE`` transaction, retried while another
process holds the write lock, so a writer killed mid-write loses at most its own unfinished record and never corrupts
the file. ``synchronous=NORMAL`` keeps every commit through a process crash (only a power loss may drop the last
ones). Each process opens its own connection (a connection inherited through ``fork`` is never used), shared by its
threads under a lock.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from wandbflow.errors import ConfigError, LedgerError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Ledger", "RunRecord", "default_path", "runs"]

ENV_VAR = "WANDBFLOW_LEDGER"
BUSY_TIMEOUT_S = 30.0
RETRY_FOR_S = 120.0  # how long a write keeps retrying "database is locked" beyond the busy timeout

_T = TypeVar("_T")


@dataclass
class RunRecord:
    """One row of the runs table.

    ``mode`` is online, offline or disabled; ``state`` one of running, finished, failed, interrupted, crashed,
    pruned; times are unix seconds; ``source_kind`` is cell, function, block or notebook and ``source`` the cell's
    code, the function's qualified name or the notebook's path.
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
    output: str | None = None


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRecord))
_JSON_COLUMNS = frozenset({"config", "summary"})
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
# Annotations are strings here (``from __future__ import annotations``); every other column is TEXT.
_SQL_TYPES = {"int | None": "INTEGER", "float | None": "REAL"}
_RUN_COLUMNS = {f.name: _SQL_TYPES.get(str(f.type), "TEXT") for f in fields(RunRecord)}

# The schema: (table, column -> SQL type, further statements). Later tables (sweeps, trials) are appended here;
# a column added to a table later is added to existing databases when they are opened (see ``_migrate``).
SCHEMA: list[tuple[str, dict[str, str], list[str]]] = [
    (
        "runs",
        {**_RUN_COLUMNS, "run_id": "TEXT PRIMARY KEY"},
        [
            "CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at)",
            "CREATE INDEX IF NOT EXISTS runs_sweep_id ON runs (sweep_id)",
        ],
    ),
]

_UPSERT = (
    f"INSERT INTO runs ({_QUOTED}) VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT (run_id) DO UPDATE SET "
    + ", ".join(f'"{c}" = excluded."{c}"' for c in COLUMNS if c != "run_id")
)


def default_path(root: str | os.PathLike[str] | None = None) -> Path:
    """Where the ledger lives.

    Args:
        root: The directory holding the ``wandb`` dir; defaults to ``WANDB_DIR``, else the working directory.

    Returns:
        ``WANDBFLOW_LEDGER`` if set, else ``<root>/wandb/wandbflow.db``.
    """
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    base = root if root is not None else os.environ.get("WANDB_DIR") or os.getcwd()
    return Path(base) / "wandb" / "wandbflow.db"


class Ledger:
    """A ledger database file: cheap to create, it opens the file and creates the schema on first use.

    Args:
        path: The database file (kept as an absolute path); its directory is created when missing.
    """

    # (pid, path) -> (connection, the lock its users hold). Keyed on the pid so a forked child opens its own.
    _connections: dict[tuple[int, str], tuple[sqlite3.Connection, threading.Lock]] = {}
    _lock = threading.Lock()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()

    def record_start(self, record: RunRecord) -> None:
        """Record a run that started; a run id already recorded (a resumed run) has its row replaced.

        ``started_at`` defaults to now.

        Raises:
            LedgerError: The ledger cannot be opened or written.
        """
        values = {c: getattr(record, c) for c in COLUMNS}  # not asdict: it deep-copies, and some values will not copy
        if values["started_at"] is None:
            values["started_at"] = time.time()
        self._write(_UPSERT, tuple(_encode(values[c]) if c in _JSON_COLUMNS else values[c] for c in COLUMNS))

    def record_finish(
        self,
        run_id: str,
        *,
        state: str,
        exit_code: int | None,
        summary: Mapping[str, Any] | None = None,
        error: str | None = None,
        finished_at: float | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Record how a run ended: its state, exit code, final summary and error (``ExceptionName: message``).

        ``finished_at`` defaults to now; ``config``, when given, replaces the config recorded at the start (a run may
        add to its config while it runs). A run id the ledger does not know changes nothing.

        Raises:
            LedgerError: The ledger cannot be opened or written.
        """
        ended = time.time() if finished_at is None else finished_at
        values: tuple[Any, ...] = (state, exit_code, _encode(dict(summary or {})), error, ended)
        sets = "state = ?, exit_code = ?, summary = ?, error = ?, finished_at = ?"
        if config is not None:
            sets, values = f"{sets}, config = ?", (*values, _encode(dict(config)))
        self._write(f"UPDATE runs SET {sets} WHERE run_id = ?", (*values, run_id))

    def mark_crashed(
        self, run_id: str, *, exit_code: int | None = None, signal: int | None = None, error: str | None = None
    ) -> bool:
        """Record that the process owning a run died without finishing it; only a row still running changes.

        Returns:
            True when a running row was marked crashed.

        Raises:
            LedgerError: The ledger cannot be opened or written.
        """
        changed = self._write(
            "UPDATE runs SET state = 'crashed', exit_code = ?, signal = ?, error = ?, finished_at = ? "
            "WHERE run_id = ? AND state = 'running'",
            (exit_code, signal, error, time.time(), run_id),
        )
        return changed > 0

    def set_output(self, run_id: str, output: str) -> None:
        """Link a run to the executed notebook it produced (a notebook trial's output).

        Raises:
            LedgerError: The ledger cannot be opened or written.
        """
        self._write("UPDATE runs SET output = ? WHERE run_id = ?", (output, run_id))

    def get(self, run_id: str) -> RunRecord | None:
        """The record of one run, or None when the ledger does not know it."""
        found = self.records(run_id=run_id)
        return found[0] if found else None

    def records(self, **filters: Any) -> list[RunRecord]:
        """The runs matching every ``column=value`` filter (``None`` matches a missing value), newest first.

        Raises:
            ConfigError: A filter names no column.
            LedgerError: The ledger cannot be opened or read.
        """
        for name in filters:
            if name not in COLUMNS:
                raise ConfigError(f"no such ledger column (columns: {', '.join(COLUMNS)})", key=name)
        where = " AND ".join(f'"{name}" IS ?' for name in filters)
        sql = f"SELECT {_QUOTED} FROM runs {'WHERE ' + where if where else ''} ORDER BY started_at DESC, rowid DESC"
        params = tuple(_encode(v) if k in _JSON_COLUMNS else v for k, v in filters.items())
        rows = self._run(lambda conn: conn.execute(sql, params).fetchall(), "read")
        return [_decode(row) for row in rows]

    def runs(self, **filters: Any) -> pd.DataFrame:
        """The matching runs as a pandas DataFrame, newest first.

        One column per :class:`RunRecord` field (``config`` and ``summary`` hold dicts, integer columns are
        nullable ``Int64``) and ``duration``, in seconds (NaN while running).

        Raises:
            ConfigError: A filter names no column.
            LedgerError: The ledger cannot be opened or read.
        """
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.records(**filters)], columns=list(COLUMNS))
        for column, sql_type in _RUN_COLUMNS.items():
            if sql_type != "TEXT":
                frame[column] = frame[column].astype("Int64" if sql_type == "INTEGER" else "float64")
        frame["duration"] = frame["finished_at"] - frame["started_at"]
        return frame

    def _connection(self) -> tuple[sqlite3.Connection, threading.Lock]:
        key = (os.getpid(), str(self.path))
        with Ledger._lock:
            found = Ledger._connections.get(key)
            if found is None:
                found = (self._open(), threading.Lock())
                Ledger._connections[key] = found
            return found

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as error:
            raise LedgerError(f"cannot open the ledger {self.path}: {error}", path=str(self.path)) from error
        try:
            _retry(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            conn.execute("PRAGMA synchronous=NORMAL")
            _retry(lambda: _transaction(conn, _migrate))
        except sqlite3.Error as error:
            conn.close()
            raise LedgerError(f"cannot open the ledger {self.path}: {error}", path=str(self.path)) from error
        return conn

    def _run(self, action: Callable[[sqlite3.Connection], _T], what: str) -> _T:
        conn, lock = self._connection()
        try:
            with lock:
                return _retry(lambda: action(conn))
        except sqlite3.Error as error:
            raise LedgerError(f"cannot {what} the ledger {self.path}: {error}", path=str(self.path)) from error

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        return self._run(lambda conn: _transaction(conn, lambda c: c.execute(sql, params).rowcount), "write")


def runs(**filters: Any) -> pd.DataFrame:
    """The runs the default ledger knows, as a DataFrame (``wandbflow.runs(state="failed")``).

    See :meth:`Ledger.runs` and :func:`default_path`.
    """
    return Ledger(default_path()).runs(**filters)


def _migrate(conn: sqlite3.Connection) -> None:
    """Create missing tables and indexes; add the columns a newer wandbflow defines to tables an older one made."""
    for table, columns, statements in SCHEMA:
        definitions = ", ".join(f'"{column}" {sql_type}' for column, sql_type in columns.items())
        conn.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({definitions})')
        present = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        for column, sql_type in columns.items():
            if column not in present:
                conn.execute(f'ALTER TABLE "{table}" ADD COLUMN "{column}" {sql_type}')
        for statement in statements:
            conn.execute(statement)


def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``body`` in one ``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, so it never deadlocks."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _retry(action: Callable[[], _T]) -> _T:
    """Run ``action``, retrying with jittered backoff while the database is busy or locked."""
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.005
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def _encode(value: Any) -> str:
    """JSON text of ``value``; values JSON cannot hold are stringified, and so are keys that are not strings."""
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return json.dumps(_plain(value), default=str, sort_keys=True)


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 64:  # a container that holds itself
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in value]
    return value


def _decode(row: tuple[Any, ...]) -> RunRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column]) if values[column] else {}
    return RunRecord(**values)


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at the fork; the inherited connections stay referenced (never closed:
    # closing a connection a parent still uses may checkpoint or delete its WAL) but are never used, being keyed by pid.
    Ledger._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
