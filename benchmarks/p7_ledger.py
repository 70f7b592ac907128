"""P7: the ledger with 8 writer processes x 500 records: records/s and records lost (target 0 lost, >= 2000/s).

A record is one run: ``record_start`` then ``record_finish`` (two transactions). The writers are started first and
released together, so the time is the ledger's, not process start-up's; the rate is the records found finished
afterwards over the time from release until the last writer exits.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure, spread


def _writer(path: str, writer: int, count: int, start: Any) -> None:
    from wandbflow.ledger import Ledger, RunRecord

    ledger = Ledger(path)
    ledger.records(run_id="")  # open the connection before the clock starts
    start.wait()
    for i in range(count):
        run_id = f"w{writer}-{i}"
        ledger.record_start(RunRecord(run_id=run_id, project="p7", config={"writer": writer, "i": i}))
        ledger.record_finish(run_id, state="finished", exit_code=0, summary={"loss": 1.0 / (i + 1)})


def _once(writers: int, records: int) -> tuple[float, int, bool]:
    """One round: records/s, records lost, whether the file passed ``PRAGMA integrity_check``."""
    from wandbflow.ledger import Ledger

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with tempfile.TemporaryDirectory() as root:
        path = str(Path(root) / "ledger.db")
        Ledger(path).records()  # create the file and schema outside the timed part
        start = ctx.Barrier(writers + 1)
        procs = [ctx.Process(target=_writer, args=(path, w, records, start)) for w in range(writers)]
        for p in procs:
            p.start()
        start.wait(timeout=120)
        began = time.perf_counter()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - began
        found = len(Ledger(path).records(state="finished"))
        with sqlite3.connect(path) as conn:
            intact = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if any(p.exitcode != 0 for p in procs):
            intact = False
    return found / elapsed, writers * records - found, intact


def measure(smoke: bool) -> Figure:
    writers, records, repeats = (2, 20, 1) if smoke else (8, 500, 5)
    rates: list[float] = []
    lost = 0
    intact = True
    for _ in range(repeats):
        rate, missing, ok = _once(writers, records)
        rates.append(rate)
        lost += missing
        intact = intact and ok
    median, low, high = spread(rates)
    return Figure(
        id="P7",
        title=f"ledger, {writers} writer processes x {records} runs (start + finish)",
        value=median,
        unit="records/s",
        low=low,
        high=high,
        n=repeats,
        target=">= 2000/s, 0 lost",
        passed=median >= 2000 and lost == 0 and intact,
        details={
            "lost": lost,
            "integrity_ok": intact,
            "writers": writers,
            "records_per_writer": records,
            "transactions_per_record": 2,
        },
    )
