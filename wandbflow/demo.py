"""The demo behind ``wandbflow demo``: a small tracked pipeline on the embedded default (offline, no account).

It runs in its own directory so its runs and ledger are easy to find, shows the runs table at the end, and says
how to upload the runs once you have an account.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from tqdm.auto import tqdm

from wandbflow import links
from wandbflow.config import wandb_config
from wandbflow.ledger import Ledger, default_path
from wandbflow.scope import get_wandb_run, task, wandb_init


@wandb_init(job_type="data")
def prepare(rows: int) -> list[tuple[float, float]]:
    """Make a small synthetic regression data set and log its size."""
    rng = random.Random(0)
    data = [(x, 3.0 * x + 0.5 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(rows))]
    run = get_wandb_run()
    assert run is not None
    run.log({"rows": len(data)})
    return data


@wandb_init(run_mode="new", job_type="train")
def train(data: list[tuple[float, float]], *, lr: float, epochs: int) -> tuple[float, float]:
    """Fit y = w x + b by gradient descent, logging the loss each epoch (its own run, grouped)."""
    w = b = 0.0
    run = get_wandb_run()
    assert run is not None
    for epoch in range(epochs):
        gw = gb = loss = 0.0
        for x, y in data:
            err = w * x + b - y
            gw, gb, loss = gw + 2 * err * x, gb + 2 * err, loss + err * err
        w, b = w - lr * gw / len(data), b - lr * gb / len(data)
        run.log({"epoch": epoch, "loss": loss / len(data)})
    return w, b


@wandb_init(job_type="eval")
def evaluate(model: tuple[float, float], data: list[tuple[float, float]]) -> float:
    """Log the root mean squared error of the model."""
    w, b = model
    rmse = math.sqrt(sum((w * x + b - y) ** 2 for x, y in data) / len(data))
    run = get_wandb_run()
    assert run is not None
    run.summary["rmse"] = rmse
    return rmse


@wandb_init
def pipeline(lr: float) -> float:
    """Prepare -> train (own run) -> evaluate, as one parent run."""
    data = prepare(256)
    model = train(data, lr=lr, epochs=20)
    return evaluate(model, data)


def run_demo(directory: str | os.PathLike[str] = "wandbflow-demo") -> int:
    """Run the demo in ``directory`` and print where its runs are.

    Returns:
        0 when every step behaved as the demo expects.
    """
    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DIR"] = str(root)
    wandb_config(project="wandbflow-demo")
    stages = tqdm(total=3, desc="wandbflow demo", unit="stage")
    rmse = {lr: pipeline(lr) for lr in (0.1, 0.5)}
    stages.update()
    try:
        with task("flaky-step", job_type="check"):
            raise RuntimeError("a step that fails: its run is finished with exit code 1")
    except RuntimeError:
        pass
    stages.update()
    ledger = Ledger(default_path(root))
    table = ledger.runs()
    stages.update()
    stages.close()
    columns = ["run_id", "state", "exit_code", "group", "job_type", "mode"]
    print("\nRuns recorded in", ledger.path)
    print(table[columns].to_string(index=False))
    print("\nRMSE by learning rate:", {lr: round(v, 4) for lr, v in rmse.items()})
    print(f"Runs are offline under {root / 'wandb'}.")
    print(f"Upload them once you have an account: {links.sync_command(str(root / 'wandb'))}/offline-run-*")
    failed = table[table["state"] == "failed"]
    return 0 if len(failed) == 1 and set(table["state"]) == {"finished", "failed"} else 1
