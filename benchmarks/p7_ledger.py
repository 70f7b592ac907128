"""P7: the ledger with 8 writer processes x 500 records: records/s and records lost (target 0 lost, >= 2000/s)."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure, spread


def _writer(path: str, writer: int, count: int) -> None:
    from wandbflow.ledger import Ledger, RunRecord

    ledger = Ledger(path)
    for i in range(count):
        run_id = f"w{writer}-{i}"
        ledger.record_start(RunRecord(run_id=run_id, started_at=time.time(), config={"i": i}))
        ledger.record_finish(run_id, state="finished", exit_code=0, summary={"i": i})


def measure(smoke: bool) -> Figure:
    from wandbflow.ledger import Ledger

    writers, records, repeats = (2, 20, 1) if smoke else (8, 500, 3)
    rates: list[float] = []
    lost = 0
    ctx = mp.get_context("fork")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as root:
            path = str(Path(root) / "ledger.db")
            Ledger(path).records()  # create the schema outside the timed part
            procs = [ctx.Process(target=_writer, args=(path, w, records)) for w in range(writers)]
            start = time.perf_counter()
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            elapsed = time.perf_counter() - start
            found = len(Ledger(path).records(state="finished"))
            lost += writers * records - found
            rates.append(found / elapsed)
    median, low, high = spread(rates)
    return Figure(
        id="P7",
        title=f"ledger, {writers} writer processes x {records} records",
        value=median,
        unit="records/s",
        low=low,
        high=high,
        n=repeats,
        target=">= 2000/s, 0 lost",
        passed=median >= 2000 and lost == 0,
        details={"lost": lost, "writers": writers, "records_per_writer": records},
    )
