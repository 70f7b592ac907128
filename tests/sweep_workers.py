"""Trial functions and module-level workers for the sweep tests (importable by spawned children and the CLI agent)."""

from __future__ import annotations

import json
import os
import time

import wandbflow as wf
from wandbflow.errors import TrialPruned
from wandbflow.sweeps import TrialAssignment, attach, should_prune, watch


def objective() -> None:
    """A short trial: three logs of a loss that falls with ``a`` (or ``lr``) and the epoch."""
    run = wf.get_wandb_run()
    base = float(run.config.get("a", run.config.get("lr", 1.0)))
    for epoch in range(3):
        run.log({"loss": base / (epoch + 1)})


def crash_on_second() -> None:
    """Log once, then kill this process on its second trial as a dead kernel would (no finish, no ledger update)."""
    run = wf.get_wandb_run()
    run.log({"loss": 1.0})
    if run.id.endswith("-trial-2"):
        os._exit(3)


def ask_tell(ref: str, out: str, pause: float) -> None:
    """Serve a sweep by ask/tell only (no runs) until it has nothing left; write the trials it got as JSON lines."""
    sweep = attach(ref)
    with open(out, "w") as handle:
        while (assignment := sweep.ask()) is not None:
            time.sleep(pause)
            sweep.tell(assignment, "finished", float(assignment.number))
            handle.write(json.dumps({"number": assignment.number, "params": assignment.params}) + "\n")
            handle.flush()


def external_trial(assignment_json: str, result: str, wandb_dir: str) -> None:
    """Run one trial as an external runner's process would: its own scope, ``watch`` by reference, bad values."""
    os.environ["WANDB_DIR"] = wandb_dir
    os.environ["WANDB_SILENT"] = "true"
    assignment = TrialAssignment.from_json(assignment_json)
    outcome = {"pruned_at": None, "should_prune": False}
    with wf.task(f"trial-{assignment.number}", quiet=True, **assignment.settings()) as run:
        watch(run, assignment.sweep_ref, assignment.number)
        try:
            for _ in range(10):
                run.log({"loss": 100.0})
        except TrialPruned as pruned:
            outcome = {"pruned_at": pruned.step, "should_prune": should_prune()}
    with open(result, "w") as handle:
        json.dump(outcome, handle)
