"""P1: an empty ``%%wandb_task`` cell (code saving on) vs raw ``wandb.init`` + ``finish`` in the same shell.

The cells run in one IPython shell, taking turns; the figure is the ratio of medians, measured in two rounds to
show the noise (target <= 1.05). Both runs save the installed-package list (``requirements.txt``): W&B scans
every package at each init, wandbflow keeps the scan per process (:mod:`wandbflow.packages`). The details also
hold the ratio against a raw run that saves no package list at all, which is wandbflow's own overhead.
"""

from __future__ import annotations

import os
import statistics
import tempfile

from benchmarks.harness import Figure, spread, take_turns

RAW_CELL = "_run = wandb.init(mode='offline', project='bench', reinit='create_new')\n_run.finish()"
BARE_CELL = (
    "_run = wandb.init(mode='offline', project='bench', reinit='create_new', "
    "settings=wandb.Settings(x_save_requirements=False))\n_run.finish()"
)
TASK_CELL = "%%wandb_task --name p1 --mode offline --project bench --quiet\npass"


def measure(smoke: bool) -> Figure:
    from IPython.core.interactiveshell import InteractiveShell

    turns, rounds = (3, 1) if smoke else (60, 2)
    shell = InteractiveShell.instance()
    ratios: list[float] = []
    bare_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root)
        shell.run_cell("import wandb\n%load_ext wandbflow", store_history=False)

        def cell(source: str) -> None:
            result = shell.run_cell(source, store_history=True)
            result.raise_error()

        cell(RAW_CELL)  # start wandb's service once, outside the timing
        contenders = {"raw": lambda: cell(RAW_CELL), "bare": lambda: cell(BARE_CELL), "ours": lambda: cell(TASK_CELL)}
        for _ in range(rounds):
            medians = {name: statistics.median(t) for name, t in take_turns(contenders, turns).items()}
            ratios.append(medians["ours"] / medians["raw"])
            bare_ratios.append(medians["ours"] / medians["bare"])
        shell.run_cell("%unload_ext wandbflow", store_history=False)
    median, low, high = spread(ratios)
    return Figure(
        id="P1",
        title="empty %%wandb_task cell vs raw wandb.init + finish",
        value=median,
        unit="x",
        low=low,
        high=high,
        n=rounds,
        target="<= 1.05",
        passed=median <= 1.05,
        details={"turns_per_round": turns, "round_ratios": ratios, "vs_raw_without_package_list": bare_ratios},
    )
