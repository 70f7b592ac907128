"""P1: an empty ``%%wandb_task`` cell (code saving on) vs raw ``wandb.init`` + ``finish`` in the same shell.

Both run as cells of one IPython shell, interleaved A/B; the figure is the ratio of medians over the pairs, measured
in two rounds to show the noise (target <= 1.05).
"""

from __future__ import annotations

import os
import statistics
import tempfile

from benchmarks.harness import Figure, interleaved, spread

RAW_CELL = "_run = wandb.init(mode='offline', project='bench', reinit='create_new')\n_run.finish()"
TASK_CELL = "%%wandb_task --name p1 --mode offline --project bench --quiet\npass"


def measure(smoke: bool) -> Figure:
    from IPython.core.interactiveshell import InteractiveShell

    pairs, rounds = (3, 1) if smoke else (60, 2)
    shell = InteractiveShell.instance()
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root)
        shell.run_cell("import wandb\n%load_ext wandbflow", store_history=False)

        def cell(source: str) -> None:
            result = shell.run_cell(source, store_history=True)
            result.raise_error()

        cell(RAW_CELL)  # start wandb's service once, outside the timing
        for _ in range(rounds):
            raw, ours = interleaved(lambda: cell(RAW_CELL), lambda: cell(TASK_CELL), pairs)
            ratios.append(statistics.median(ours) / statistics.median(raw))
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
        details={"pairs_per_round": pairs, "round_ratios": ratios},
    )
