"""Module-level functions the launch tests run on ranks (importable by spawned ranks and by ``torchrun``).

Run as a script under ``torchrun``, it runs :func:`every_mode` and writes each rank's result as JSON to the
directory given as its argument.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import wandbflow as wf
from wandbflow import naming

MODES = ("auto", "shared", "new")
SCOPES = ("global", "worker")


def _ensure_process_group() -> None:
    # wandbflow.launch initializes it; under torchrun the script does, as any torchrun script would.
    if not dist.is_initialized():
        dist.init_process_group("gloo")


def _step(run_mode: str, rank_scope: str):
    def step() -> dict:
        run = wf.get_wandb_run()
        info = wf.get_distributed_info()
        if run is not None:
            for i in range(3):
                run.log({"loss": info["rank"] + i / 10})
        return {"id": None if run is None else run.id, "label": getattr(run, "label", None)}

    step.__name__ = step.__qualname__ = f"{run_mode}_{rank_scope}"
    return wf.wandb_init(run_mode=run_mode, rank_scope=rank_scope, project="launch-test")(step)


STEPS = {f"{m}_{s}": _step(m, s) for m in MODES for s in SCOPES}


def every_mode() -> dict:
    """All six run_mode x rank_scope steps in turn, after an all_reduce; this rank's view of each."""
    _ensure_process_group()
    total = torch.ones(1)
    dist.all_reduce(total)
    info = wf.get_distributed_info()
    print(f"rank {info['rank']} of {int(total.item())} ready", flush=True)
    steps = {name: step() for name, step in STEPS.items()}
    return {"info": info, "session": naming.session_id(), "steps": steps}


@wf.wandb_init(run_mode="new", project="launch-test")
def raise_on_rank_1(message: str) -> int:
    """Rank 1 raises after logging; the others wait to be stopped."""
    rank = dist.get_rank()
    wf.get_wandb_run().log({"before": rank})
    if rank == 1:
        raise ValueError(message)
    time.sleep(60)
    return rank


@wf.wandb_init(run_mode="new", project="launch-test")
def kill_rank_1() -> int:
    """Rank 1 kills itself with SIGKILL while its run is open; the others wait to be stopped."""
    rank = dist.get_rank()
    wf.get_wandb_run().log({"before": rank})
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return rank


def sleep_after_writing_pid(folder: str) -> None:
    """Write this rank's pid to ``folder/<rank>.pid`` and sleep (until stopped)."""
    Path(folder, f"{dist.get_rank()}.pid").write_text(str(os.getpid()))
    time.sleep(60)


@wf.wandb_init(run_mode="new", project="launch-test")
def sleep_in_a_run(folder: str) -> None:
    """The same, inside a run of this rank's own."""
    sleep_after_writing_pid(folder)


def where_am_i() -> dict:
    """This rank's topology and the sum of all ranks' (rank + 1), through an all_reduce."""
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    return {**wf.get_distributed_info(), "sum": total.item()}


def exit_quietly_on_rank_1() -> int:
    """Rank 1 leaves with ``sys.exit(0)``, so it returns nothing (no process group needed)."""
    if os.environ["RANK"] == "1":
        sys.exit(0)
    return 0


def main(out: str) -> None:
    result = every_mode()
    Path(out, f"{result['info']['rank']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
