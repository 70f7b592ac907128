"""The demo behind ``wandbflow demo``: each way of running tracked work, on the embedded default (offline, no account).

It runs in its own directory so its runs and ledger are easy to find, shows the runs table at the end, and says
how to upload the runs once you have an account.
"""

from __future__ import annotations

import math
import os
import random
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from wandbflow import links
from wandbflow.config import wandb_config
from wandbflow.ledger import Ledger, default_path
from wandbflow.scope import get_wandb_run, task, wandb_init

Data = list[tuple[float, float]]


def dataset(rows: int) -> Data:
    """A small synthetic regression data set: y = 3x + 0.5 plus noise."""
    rng = random.Random(0)
    return [(x, 3.0 * x + 0.5 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(rows))]


def fit(data: Data, *, lr: float, epochs: int, run: Any) -> tuple[float, float]:
    """Fit y = w x + b by gradient descent, logging the loss each epoch into ``run``."""
    w = b = 0.0
    for epoch in range(epochs):
        gw = gb = loss = 0.0
        for x, y in data:
            err = w * x + b - y
            gw, gb, loss = gw + 2 * err * x, gb + 2 * err, loss + err * err
        w, b = w - lr * gw / len(data), b - lr * gb / len(data)
        run.log({"epoch": epoch, "loss": loss / len(data)})
    return w, b


def rmse(model: tuple[float, float], data: Data) -> float:
    """Root mean squared error of ``model`` on ``data``."""
    w, b = model
    return math.sqrt(sum((w * x + b - y) ** 2 for x, y in data) / len(data))


@wandb_init(job_type="data")
def prepare(rows: int) -> Data:
    """Make the data set and log its size."""
    data = dataset(rows)
    _run().log({"rows": len(data)})
    return data


@wandb_init(run_mode="new", job_type="train")
def train(data: Data, *, lr: float, epochs: int) -> tuple[float, float]:
    """Fit the model in its own run, grouped under the pipeline's."""
    return fit(data, lr=lr, epochs=epochs, run=_run())


@wandb_init(job_type="eval")
def evaluate(model: tuple[float, float], data: Data) -> float:
    """Log the root mean squared error of the model."""
    error = rmse(model, data)
    _run().summary["rmse"] = error
    return error


def _run() -> Any:
    run = get_wandb_run()
    assert run is not None, "called outside a scope"
    return run


@wandb_init
def pipeline(lr: float) -> float:
    """Prepare -> train (own run) -> evaluate, as one parent run."""
    data = prepare(256)
    model = train(data, lr=lr, epochs=20)
    return evaluate(model, data)


def ranked_step() -> float:
    """One rank of the launch stage: an all_reduce of each rank's number, logged into the rank's own run."""
    import torch
    import torch.distributed as dist

    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    _run().log({"all_reduce": total.item()})
    return total.item()


def objective() -> None:
    """A sweep trial: fit and evaluate at the trial's learning rate, all in the trial's run."""
    run = _run()
    data = dataset(256)
    run.log({"rmse": rmse(fit(data, lr=run.config["lr"], epochs=20, run=run), data)})


TRIAL_NOTEBOOK = {
    "parameters": "lr = 0.1\nepochs = 20",
    "body": (
        "import wandb\n\nw = 0.0\nfor epoch in range(epochs):\n    w += lr * (3.0 - w)\n"
        '    wandb.log({"epoch": epoch, "gap": abs(3.0 - w)})'
    ),
}


def _trial_notebook(path: Path) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(TRIAL_NOTEBOOK["parameters"], metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(TRIAL_NOTEBOOK["body"]),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def run_demo(directory: str | os.PathLike[str] = "wandbflow-demo") -> int:
    """Run the demo in ``directory`` and print where its runs are.

    Stages: a pipeline of steps at two learning rates, a failing step, a function on two ranks, a local sweep of
    four trials, and a notebook executed as a run.

    Returns:
        0 when every stage behaved as the demo expects.
    """
    from wandbflow.launcher import launch
    from wandbflow.notebooks import run_notebook
    from wandbflow.sweeps import agent, sweep

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DIR"] = str(root)
    wandb_config(project="wandbflow-demo")
    stages = tqdm(total=5, desc="wandbflow demo", unit="stage")
    rmse = {lr: pipeline(lr) for lr in (0.1, 0.5)}
    stages.update()
    try:
        with task("flaky-step", job_type="check"):
            raise RuntimeError("a step that fails: its run is finished with exit code 1")
    except RuntimeError:
        pass
    stages.update()
    reduced = launch(ranked_step, nproc_per_node=2, run_mode="new")
    stages.update()
    space = {"method": "grid", "metric": {"name": "rmse", "goal": "minimize"},
             "parameters": {"lr": {"values": [0.05, 0.1, 0.3, 0.5]}}}  # fmt: skip
    study = sweep(space, engine="local")
    agent(study, objective, progress=False)
    stages.update()
    notebook = run_notebook(_trial_notebook(root / "demo-trial.ipynb"), {"lr": 0.2})
    stages.update()
    stages.close()
    ledger = Ledger(default_path(root))
    table = ledger.runs()
    columns = ["run_id", "state", "exit_code", "group", "job_type", "mode"]
    print("\nRuns recorded in", ledger.path)
    print(table[columns].to_string(index=False))
    print("\nPipeline RMSE by learning rate:", {lr: round(v, 4) for lr, v in rmse.items()})
    print("All-reduce on 2 ranks:", reduced)
    best = study.best()
    if best is not None:
        print(f"Sweep {study.id}: best lr {best.params['lr']} (rmse {best.value:.4f})")
    print(f"Notebook run {notebook.run_id}: {notebook.state}, executed copy at {notebook.output}")
    print(f"Runs are offline under {root / 'wandb'}.")
    print(f"Upload them once you have an account: {links.sync_command(str(root / 'wandb'))}/offline-run-*")
    failed = table[table["state"] == "failed"]
    return 0 if len(failed) == 1 and set(table["state"]) == {"finished", "failed"} else 1
