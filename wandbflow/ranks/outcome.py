"""What the launcher reads back once the ranks end: results, the first failure, crashed runs, the runs' cards."""

from __future__ import annotations

import logging
import pickle
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.multiprocessing.spawn import ProcessException, ProcessRaisedException

from wandbflow import display, naming
from wandbflow.errors import LaunchError
from wandbflow.ranks.process import Spec

if TYPE_CHECKING:
    from wandbflow.ledger import Ledger, RunRecord

logger = logging.getLogger("wandbflow")


def failure(error: ProcessException, processes: list[Any], spec: Spec) -> LaunchError:
    """The launch's error for torch's ``error``: the rank that failed first, with its own traceback when it raised."""
    first = int(getattr(error, "error_index", 0))
    records = {i: r for i in range(len(processes)) if (r := _error_record(spec, i)) is not None}
    if isinstance(error, ProcessRaisedException) and records:
        first = min(records, key=lambda i: records[i]["time"])  # the others may only have lost their peer
    process = processes[first]
    rank = spec.options.first_rank + first
    others = ", ".join(
        f"rank {spec.options.first_rank + i} {_ending(p.exitcode)}" for i, p in enumerate(processes) if i != first
    )
    record = records.get(first)
    if record is not None:
        return LaunchError(
            f"rank {rank} (pid {process.pid}) raised {record['type']}: {record['message']}\n"
            f"(other ranks: {others})\n\nTraceback on rank {rank}:\n{record['traceback']}",
            rank=rank,
            pid=process.pid,
            exit_code=process.exitcode,
            error_type=record["type"],
            traceback=record["traceback"],
        )
    code = process.exitcode
    signal_name = _signal_name(code)
    return LaunchError(
        f"rank {rank} (pid {process.pid}) {_ending(code)} (other ranks: {others})",
        rank=rank,
        pid=process.pid,
        exit_code=None if signal_name else code,
        signal=signal_name,
    )


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _ending(exitcode: int | None) -> str:
    name = _signal_name(exitcode)
    return f"was killed by {name}" if name else f"exited with code {exitcode}"


def result(spec: Spec, index: int, process: Any) -> Any:
    """What rank ``index`` returned.

    A rank that ended quietly without returning (``sys.exit(0)``, a KeyboardInterrupt of its own) fails the launch.
    """
    path = Path(spec.workdir) / f"result-{index}.pkl"
    if not path.exists():
        rank = spec.options.first_rank + index
        raise LaunchError(
            f"rank {rank} (pid {process.pid}) ended without returning (exit code 0: sys.exit or an interrupt)",
            rank=rank,
            pid=process.pid,
            exit_code=process.exitcode,
        )
    return _load(path)


def _error_record(spec: Spec, index: int) -> dict[str, Any] | None:
    path = Path(spec.workdir) / f"error-{index}.pkl"
    return _load(path) if path.exists() else None


def _load(path: Path) -> Any:
    with path.open("rb") as source:
        return pickle.load(source)


def runs_of(path: Path, pids: list[int]) -> tuple[Ledger, list[RunRecord]]:
    """The ledger at ``path`` and the runs that this session's ranks ``pids`` opened (none without a ledger)."""
    from wandbflow.ledger import Ledger

    ledger = Ledger(path)
    if not path.exists():
        return ledger, []
    return ledger, [r for r in ledger.records(session=naming.session_id()) if r.pid in pids]


def mark_crashed(processes: list[Any], path: Path) -> None:
    """Record as crashed the runs of ranks that died without finishing them (a signal, ``os._exit``)."""
    ended = {p.pid: p.exitcode for p in processes if p.exitcode not in (0, None)}
    if not ended:
        return
    try:
        ledger, rows = runs_of(path, list(ended))
        for row in rows:
            if row.state != "running":
                continue
            code = ended[row.pid]
            ledger.mark_crashed(
                row.run_id,
                exit_code=code if code >= 0 else None,
                signal=-code if code < 0 else None,
                error=f"rank {row.rank} {_ending(code)}",
            )
    except Exception:  # the ledger is a record; the launch's own error matters more
        logger.exception("wandbflow: could not record the crashed ranks' runs in the ledger")


def cards(ledger: Path, pids: list[int]) -> list[display.RunCard]:
    """A card per run the ranks opened, as the ledger recorded it."""
    _, rows = runs_of(ledger, pids)
    cards = []
    for row in sorted(rows, key=lambda r: (r.started_at or 0.0, r.run_id)):
        duration = None
        if row.finished_at is not None and row.started_at is not None:
            duration = row.finished_at - row.started_at
        cards.append(
            display.RunCard(
                name=row.name or row.run_id,
                run_id=row.run_id,
                mode=row.mode or "offline",
                project=row.project,
                group=row.group,
                url=row.url,
                run_dir=None if row.url else row.dir,
                state=row.state,
                exit_code=row.exit_code,
                duration=duration,
                summary=row.summary,
            )
        )
    return cards
