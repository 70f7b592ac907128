"""P3: ``launch(fn, nproc_per_node=2)`` until both ranks are past a first all_reduce, vs torchrun and vs accelerate's
``notebook_launcher`` on the same undecorated function (gloo, CPU).

Whole process (a fresh ``python`` per launch, what a script user waits for): ours / torchrun <= 0.5 and ours /
notebook_launcher <= 1.0. Warm (this process, torch imported, each launcher used once before timing: what a
notebook user feels): ours / notebook_launcher <= 0.7 and ours / a bare ``torch.multiprocessing`` fork <= 1.5. The
launchers take turns in every round so drift hits all of them. Reported without a target: the warm launch of the
same function under ``@wandb_init(run_mode="new")`` (each rank opens and finishes an offline run).

Run as ``python -m benchmarks.p3_launch`` (what torchrun starts) it is one rank of the function.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure, spread, take_turns

ROOT = Path(__file__).resolve().parent.parent


def past_first_all_reduce() -> None:
    import torch
    import torch.distributed as dist

    owned = not dist.is_initialized()  # launch() has done it; torchrun and notebook_launcher leave it to the function
    if owned:
        dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    if owned:  # a group left for interpreter exit can abort the process in gloo's teardown
        dist.destroy_process_group()


def _bare_rank(index: int, port: int, fn: Callable[[], None]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), LOCAL_RANK=str(index), WORLD_SIZE="2"
    )
    fn()


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{command} failed:\n{done.stdout}\n{done.stderr}")


def _whole_process() -> dict[str, Callable[[], Any]]:
    fn = "from benchmarks.p3_launch import past_first_all_reduce as fn"

    def python(code: str) -> Callable[[], Any]:
        return lambda: _run([sys.executable, "-c", code])

    def torchrun() -> Any:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        return _run([*command, "--master-port", str(_port()), "-m", "benchmarks.p3_launch"])

    contenders = {
        "launch": python(f"import wandbflow as wf\n{fn}\nwf.launch(fn, nproc_per_node=2)"),
        "torchrun": torchrun,
    }
    if HAS_ACCELERATE:
        contenders["notebook_launcher"] = lambda: python(
            f"from accelerate import notebook_launcher\n{fn}\n"
            f"notebook_launcher(fn, num_processes=2, use_port='{_port()}')"
        )()
    return contenders


def _warm(fn: Callable[[], None]) -> dict[str, Callable[[], Any]]:
    import torch.multiprocessing as torch_mp

    import wandbflow as wf

    def accelerate() -> None:
        from accelerate import notebook_launcher

        with contextlib.redirect_stdout(io.StringIO()):  # it announces every launch
            notebook_launcher(fn, num_processes=2, use_port=str(_port()))

    contenders: dict[str, Callable[[], Any]] = {
        "launch": lambda: wf.launch(fn, nproc_per_node=2),
        "bare_fork": lambda: torch_mp.start_processes(_bare_rank, args=(_port(), fn), nprocs=2, start_method="fork"),
    }
    if HAS_ACCELERATE:
        contenders["notebook_launcher"] = accelerate
    return contenders


def _median(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


HAS_ACCELERATE = importlib.util.find_spec("accelerate") is not None  # pip install -e '.[bench]'
TARGETS = {
    "whole_vs_torchrun": 0.5,
    "whole_vs_notebook_launcher": 1.0,
    "warm_vs_notebook_launcher": 0.7,
    "warm_vs_bare_fork": 1.5,
}


def measure(smoke: bool) -> Figure:
    import wandbflow as wf

    whole_rounds, warm_rounds, decorated_rounds = (1, 2, 1) if smoke else (5, 20, 5)
    whole = _median(take_turns(_whole_process(), whole_rounds))
    contenders = _warm(past_first_all_reduce)
    for run in contenders.values():  # gloo, the fork paths and accelerate's imports are warm before timing
        run()
    warm_times = take_turns(contenders, warm_rounds)
    warm = _median(warm_times)
    with tempfile.TemporaryDirectory() as root:
        os.environ.update(WANDB_SILENT="true", WANDB_DIR=root)
        decorated = wf.wandb_init(run_mode="new", project="p3", mode="offline")(past_first_all_reduce)
        with contextlib.redirect_stdout(io.StringIO()):  # the ranks' run cards
            decorated_warm = _median(take_turns(_warm(decorated), decorated_rounds))
    ratios = {
        f"{setting}_vs_{other}": times["launch"] / times[other]
        for setting, times in (("whole", whole), ("warm", warm))
        for other in times
        if other != "launch"
    }
    # The headline, round by round: what a notebook user feels (vs a bare fork when accelerate is not installed).
    other = "notebook_launcher" if HAS_ACCELERATE else "bare_fork"
    per_round = [a / b for a, b in zip(warm_times["launch"], warm_times[other], strict=True)]
    _, low, high = spread(per_round)
    return Figure(
        id="P3",
        title=f"launch() warm, to both ranks past an all_reduce, vs {other} (every ratio in details)",
        value=ratios[f"warm_vs_{other}"],
        unit="x",
        low=low,
        high=high,
        n=warm_rounds,
        target="warm <= 0.7 notebook_launcher, <= 1.5 fork; whole process <= 0.5 torchrun, <= 1.0 notebook_launcher",
        passed=HAS_ACCELERATE and all(ratios[k] <= TARGETS[k] for k in ratios),
        details={
            "accelerate": "installed" if HAS_ACCELERATE else "not installed (pip install -e '.[bench]'): not compared",
            "ratios": ratios,
            "targets": TARGETS,
            "whole_process_s": whole,
            "warm_s": warm,
            "warm_decorated_new_s": decorated_warm,
            "decorated_vs_undecorated_launch": decorated_warm["launch"] / warm["launch"],
            "rounds": {"whole": whole_rounds, "warm": warm_rounds, "decorated": decorated_rounds},
        },
    )


if __name__ == "__main__":
    past_first_all_reduce()
