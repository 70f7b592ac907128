"""Module-level worker functions for the ledger's multi-process tests (importable by a spawned child)."""

from __future__ import annotations

import time

from wandbflow.ledger import Ledger, RunRecord


def write_records(path: str, writer: int, count: int) -> None:
    """Record ``count`` runs, each started then finished, with its index as config and summary."""
    ledger = Ledger(path)
    for i in range(count):
        run_id = f"w{writer}-r{i}"
        ledger.record_start(RunRecord(run_id=run_id, project="load", started_at=time.time(), config={"i": i}))
        ledger.record_finish(run_id, state="finished", exit_code=0, summary={"i": i})


def write_forever(path: str, committed) -> None:
    """Record runs until killed; ``committed`` counts the records whose write has returned."""
    ledger = Ledger(path)
    i = 0
    while True:
        ledger.record_start(RunRecord(run_id=f"k-{i}", started_at=time.time(), config={"blob": "x" * 2000}))
        with committed.get_lock():
            committed.value = i + 1
        i += 1
