"""P4: offline shared relay throughput vs one process's raw ``run.log`` rate (target >= 0.8x, 0 rows lost).

Relay: a forked rank logs N rows through a ``RelayRun``; the rate is N over the time from its first ``log`` until its
``close()`` returns, when the primary (this process, idle meanwhile) has logged every row into its offline run.
Raw: this process logs N rows with ``run.log`` into an offline run of its own. The two alternate in every round.
Lost rows are counted in the primary's run file with ``wandb leet inspect``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure, spread

ROW = {"loss": 0.5, "acc": 0.9}


def _raw_rate(root: str, rows: int) -> float:
    import wandb

    run = wandb.init(mode="offline", dir=root, project="p4", reinit="create_new")
    start = time.perf_counter()
    for i in range(rows):
        run.log({**ROW, "i": i})
    rate = rows / (time.perf_counter() - start)
    run.finish()
    return rate


def _sender(run_id: str, root: str, rows: int, out: Any) -> None:
    from wandbflow import relay

    rank = relay.RelayRun(
        run_id,
        "rank-1",
        path=relay.socket_path(run_id),
        fallback=relay.fallback_path(root, run_id, "rank-1"),
        wait=60,
    )
    start = time.perf_counter()
    for i in range(rows):
        rank.log({**ROW, "i": i})
    rank.close()
    out.send((rows / (time.perf_counter() - start), rank.fallback is not None))


def _relay_rate(root: str, rows: int, round_: int) -> tuple[float, int, bool]:
    """Rows/s through the relay, rows missing from the run file, whether anything went to a fallback file."""
    import wandb

    from wandbflow import relay

    run_id = f"p4-relay-{os.getpid()}-{round_}"
    run = wandb.init(mode="offline", dir=root, project="p4", id=run_id, reinit="create_new")
    server = relay.RelayServer(run, path=relay.socket_path(run_id), peers=1, wait=60)
    ctx = mp.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_sender, args=(run_id, root, rows, send))
    child.start()
    server.close()
    rate, fell_back = receive.recv()
    child.join()
    run_dir = str(run.settings.sync_dir)
    run.finish()
    return rate, rows - _rows_in(run_dir), fell_back


def _rows_in(run_dir: str) -> int:
    wandb_cli = shutil.which("wandb", path=os.path.dirname(sys.executable)) or "wandb"
    out = subprocess.run(
        [wandb_cli, "leet", "inspect", "--json", run_dir], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    records = (json.loads(line) for line in out.splitlines() if line.strip())
    return sum(1 for r in records if r["type"] == "history" and "rank-1/i" in r["history"]["item"])


def measure(smoke: bool) -> Figure:
    rows, rounds = (200, 1) if smoke else (5000, 5)
    ratios: list[float] = []
    rates: list[tuple[float, float]] = []
    lost = 0
    fell_back = False
    with tempfile.TemporaryDirectory() as root:
        os.environ["WANDB_SILENT"] = "true"
        _raw_rate(root, rows // 10)  # start wandb's service and warm both paths before timing
        for i in range(rounds):
            raw = _raw_rate(root, rows)
            relayed, missing, fallback = _relay_rate(root, rows, i)
            ratios.append(relayed / raw)
            rates.append((relayed, raw))
            lost += missing
            fell_back = fell_back or fallback
        shutil.rmtree(Path(root) / "wandb", ignore_errors=True)
    median, low, high = spread(ratios)
    return Figure(
        id="P4",
        title="offline shared relay throughput (a rank's rows into the primary's run) vs raw run.log",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=rounds,
        target=">= 0.8, 0 lost",
        passed=median >= 0.8 and lost == 0 and not fell_back,
        details={
            "rows": rows,
            "lost": lost,
            "fallback_used": fell_back,
            "relay_rows_per_s": [round(r) for r, _ in rates],
            "raw_rows_per_s": [round(r) for _, r in rates],
        },
    )
