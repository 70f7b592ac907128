"""P6: ``sweep_notebook`` throughput with parallel=2 vs parallel=1 on CPU-light trial notebooks (target >= 1.7x).

Each trial sleeps, so two at a time should take about half as long, less what the sweep pays once (its first
kernels' start) and the kernels' own start-up work. Throughput is the whole sweep's, from the call to its return,
first kernels included. An untimed sweep first does this process's one-time imports, which would otherwise be
charged to whichever contender ran first; the two then take turns, round by round.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from benchmarks.harness import Figure, spread, take_turns
from benchmarks.notebook_fixtures import grid, write_notebook


def _sweep(notebook: Path, out: Path, trials: int, parallel: int) -> None:
    from wandbflow.notebook_sweep import sweep_notebook

    sweep_notebook(notebook, grid(list(range(trials))), parallel=parallel, output_dir=out, progress=False)


def measure(smoke: bool) -> Figure:
    trials, sleep, rounds = (2, 0.5, 1) if smoke else (6, 3.0, 3)
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root, WANDB_MODE="offline")
        notebook = write_notebook(Path(root) / "trial.ipynb", f"import time\ntime.sleep({sleep})")
        out = Path(root) / "out"
        _sweep(notebook, out, 2, 2)  # untimed: this process's first imports
        seconds = take_turns(
            {
                "parallel=1": lambda: _sweep(notebook, out, trials, 1),
                "parallel=2": lambda: _sweep(notebook, out, trials, 2),
            },
            rounds,
        )
    ratios = [one / two for one, two in zip(seconds["parallel=1"], seconds["parallel=2"], strict=True)]
    median, low, high = spread(ratios)
    return Figure(
        id="P6",
        title="sweep_notebook parallel=2 vs parallel=1 throughput (CPU-light trials)",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=rounds,
        target=">= 1.7",
        passed=median >= 1.7,
        details={"trials": trials, "sleep_s": sleep, "sweep_seconds": seconds},
    )
