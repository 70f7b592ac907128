"""P5: per-trial overhead of ``sweep_notebook`` vs papermill's own API loop and CLI loop on the same notebook.

A trial's overhead is its time beyond the notebook's own compute: the time between one trial's end and the next's,
less the cells' run time papermill records in the executed notebook. The notebook sleeps (a trial whose work is on
a GPU or elsewhere, leaving the CPU free), long enough for wandbflow's pool to have the next kernel warm: the
target (ours <= 0.5x papermill's API loop) is for a warm kernel with wandb imported and its service up, so ours is
the steady state, from the first trial's end to the last one's. Its first trial waits for a cold kernel; that
figure is in the details, with a notebook that computes nothing. The three loops take turns, round by round.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nbformat

from benchmarks.harness import Figure, spread
from benchmarks.notebook_fixtures import grid, write_notebook


def _compute(output: Path) -> float:
    """The seconds the executed notebook's cells ran, as papermill recorded them."""
    notebook = nbformat.read(output, as_version=4)
    return sum(cell.metadata.get("papermill", {}).get("duration") or 0.0 for cell in notebook.cells)


def _loop(run_one: Callable[[int, Path], None], out: Path, trials: int, tag: str) -> float:
    """Overhead per trial of a loop that runs trials one after another, from one trial's end to the next's."""
    ends = []
    outputs = []
    for i in range(trials):
        output = out / f"{tag}-{i}.ipynb"
        run_one(i, output)
        ends.append(time.perf_counter())
        outputs.append(output)
    cycle = (ends[-1] - ends[0]) / (trials - 1)
    return cycle - statistics.mean(_compute(o) for o in outputs[1:])


def _api(notebook: Path, out: Path, trials: int) -> float:
    import papermill

    def run_one(i: int, output: Path) -> None:
        papermill.execute_notebook(
            str(notebook), str(output), parameters={"x": i}, kernel_name="python3", progress_bar=False
        )

    return _loop(run_one, out, trials, "api")


def _cli(notebook: Path, out: Path, trials: int) -> float:
    papermill = shutil.which("papermill", path=os.path.dirname(sys.executable)) or "papermill"

    def run_one(i: int, output: Path) -> None:
        command = [papermill, str(notebook), str(output), "-p", "x", str(i), "-k", "python3", "--no-progress-bar"]
        subprocess.run(command, check=True, capture_output=True, timeout=300)

    return _loop(run_one, out, trials, "cli")


def _ours(notebook: Path, out: Path, trials: int) -> tuple[float, float]:
    """Steady-state overhead per trial, and the first trial's (a cold kernel), in seconds."""
    from wandbflow.notebook_sweep import sweep_notebook

    ends: list[float] = []
    outputs: list[Path] = []

    def on_result(assignment: object, result: object, state: str) -> None:
        ends.append(time.perf_counter())
        outputs.append(Path(result.output))  # type: ignore[attr-defined]

    start = time.perf_counter()
    sweep_notebook(notebook, grid(list(range(trials))), output_dir=out, progress=False, on_result=on_result)
    steady = (ends[-1] - ends[0]) / (trials - 1) - statistics.mean(_compute(o) for o in outputs[1:])
    return steady, ends[0] - start - _compute(outputs[0])


def measure(smoke: bool) -> Figure:
    trials, rounds, sleep = (2, 1, 0.5) if smoke else (6, 2, 3.0)
    ours: list[float] = []
    ours_first: list[float] = []
    api: list[float] = []
    cli: list[float] = []
    idle: dict[str, list[float]] = {"wandbflow": [], "papermill_api": []}
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root, WANDB_MODE="offline")
        notebook = write_notebook(Path(root) / "trial.ipynb", f"import time\ntime.sleep({sleep})\ny = x * 2")
        empty = write_notebook(Path(root) / "empty.ipynb", "y = x * 2")
        out = Path(root) / "out"
        out.mkdir()
        for _ in range(rounds):
            api.append(_api(notebook, out, trials))
            steady, first = _ours(notebook, out, trials)
            ours.append(steady)
            ours_first.append(first)
            cli.append(_cli(notebook, out, trials))
            idle["papermill_api"].append(_api(empty, out, trials))
            idle["wandbflow"].append(_ours(empty, out, trials)[0])
    ratios = [o / a for o, a in zip(ours, api, strict=True)]
    median, low, high = spread(ratios)
    return Figure(
        id="P5",
        title=f"per-trial overhead: sweep_notebook (warm pool) vs papermill API loop, {sleep:g} s trials",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=rounds,
        target="<= 0.5",
        passed=median <= 0.5,
        details={
            "trials_per_round": trials,
            "trial_compute_s": sleep,
            "overhead_s_per_trial": {"wandbflow": ours, "papermill_api": api, "papermill_cli": cli},
            "vs_papermill_cli": [o / c for o, c in zip(ours, cli, strict=True)],
            "wandbflow_first_trial_overhead_s": ours_first,
            "no_compute_overhead_s_per_trial": idle,
            "no_compute_vs_papermill_api": [
                o / a for o, a in zip(idle["wandbflow"], idle["papermill_api"], strict=True)
            ],
        },
    )
