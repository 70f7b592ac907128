"""P6: ``sweep_notebook`` throughput with parallel=2 vs parallel=1 on CPU-light trial notebooks (target >= 1.7x).

Each trial sleeps, so two at a time should take about half as long, less the kernels' own start-up work.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure, spread
from benchmarks.notebook_fixtures import grid, write_notebook


def _throughput(notebook: Path, out: Path, trials: int, parallel: int) -> float:
    from wandbflow.notebook_sweep import sweep_notebook

    start = time.perf_counter()
    sweep_notebook(notebook, grid(list(range(trials))), parallel=parallel, output_dir=out, progress=False)
    return trials / (time.perf_counter() - start)


def measure(smoke: bool) -> Figure:
    trials, sleep, rounds = (2, 0.5, 1) if smoke else (6, 3.0, 2)
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root, WANDB_MODE="offline")
        notebook = write_notebook(Path(root) / "trial.ipynb", f"import time\ntime.sleep({sleep})")
        out = Path(root) / "out"
        for i in range(rounds):
            one, two = (1, 2) if i % 2 == 0 else (2, 1)
            first = _throughput(notebook, out, trials, one)
            second = _throughput(notebook, out, trials, two)
            sequential, parallel = (first, second) if one == 1 else (second, first)
            ratios.append(parallel / sequential)
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
        details={"trials": trials, "sleep_s": sleep},
    )
