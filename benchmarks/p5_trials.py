"""P5: per-trial overhead of ``sweep_notebook`` vs papermill's own API loop and CLI loop on the same notebook.

The notebook computes nothing (``y = x * 2``), so a trial's time is all overhead: for papermill a kernel start and
the execution; for wandbflow also the trial's W&B run (opened and finished in the kernel) and the sweep's
bookkeeping, with the next kernel started ahead of time. Target: ours <= 0.5x papermill's API loop. The three loops
take turns, round by round.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure, spread
from benchmarks.notebook_fixtures import grid, write_notebook


def _api(notebook: Path, out: Path, trials: int) -> float:
    import papermill

    start = time.perf_counter()
    for i in range(trials):
        papermill.execute_notebook(
            str(notebook), str(out / f"api-{i}.ipynb"), parameters={"x": i}, kernel_name="python3", progress_bar=False
        )
    return (time.perf_counter() - start) / trials


def _cli(notebook: Path, out: Path, trials: int) -> float:
    papermill = shutil.which("papermill", path=os.path.dirname(sys.executable)) or "papermill"
    start = time.perf_counter()
    for i in range(trials):
        command = [papermill, str(notebook), str(out / f"cli-{i}.ipynb"), "-p", "x", str(i), "-k", "python3"]
        subprocess.run([*command, "--no-progress-bar"], check=True, capture_output=True, timeout=300)
    return (time.perf_counter() - start) / trials


def _ours(notebook: Path, out: Path, trials: int) -> float:
    from wandbflow.notebook_sweep import sweep_notebook

    start = time.perf_counter()
    sweep_notebook(notebook, grid(list(range(trials))), output_dir=out, progress=False)
    return (time.perf_counter() - start) / trials


def measure(smoke: bool) -> Figure:
    trials, rounds = (2, 1) if smoke else (6, 2)
    ours: list[float] = []
    api: list[float] = []
    cli: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root, WANDB_MODE="offline")
        notebook = write_notebook(Path(root) / "trial.ipynb", "y = x * 2")
        out = Path(root) / "out"
        out.mkdir()
        for _ in range(rounds):
            api.append(_api(notebook, out, trials))
            ours.append(_ours(notebook, out, trials))
            cli.append(_cli(notebook, out, trials))
    ratios = [o / a for o, a in zip(ours, api, strict=True)]
    median, low, high = spread(ratios)
    return Figure(
        id="P5",
        title="per-trial overhead: sweep_notebook vs papermill API loop",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=rounds,
        target="<= 0.5",
        passed=median <= 0.5,
        details={
            "trials_per_round": trials,
            "seconds_per_trial": {"wandbflow": ours, "papermill_api": api, "papermill_cli": cli},
            "vs_papermill_cli": [o / c for o, c in zip(ours, cli, strict=True)],
        },
    )
