"""A rank's process: what every rank is told (:class:`Spec`) and what it does with it (:func:`main`).

``main`` is what ``torch.multiprocessing`` starts: torchrun's environment, a clean slate of the notebook's wandb
state, the process group joined, the task run inside the launch's context, and its result or error written to a
file the launcher reads (torch's protocol).
"""

from __future__ import annotations

import contextvars
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import torch
import torch.distributed as dist

from wandbflow import config, inherit, scope
from wandbflow.ranks.output import redirect
from wandbflow.ranks.tasks import Task


@dataclass(frozen=True)
class Options:
    """A launch's checked options (see :func:`wandbflow.launch`); ``master_addr`` is filled in."""

    nproc_per_node: int
    nnodes: int
    node_rank: int | None
    master_addr: str
    master_port: int | None
    backend: str | None
    start_method: str
    timeout: float | None

    @property
    def local_ranks(self) -> int:
        """Processes this call starts: every rank when nodes are simulated, else this node's."""
        return self.nproc_per_node * (self.nnodes if self.node_rank is None else 1)

    @property
    def first_rank(self) -> int:
        """The global rank of this call's first process."""
        return 0 if self.node_rank is None else self.node_rank * self.nproc_per_node


@dataclass
class Spec:
    """Everything a rank needs; the same object for every rank (``index`` tells them apart)."""

    task: Any  # the task itself (fork) or its cloudpickle bytes
    options: Options
    modes: dict[str, Any]  # run_mode/rank_scope for every scope the task opens, unless it names its own
    backend: str | None
    master_port: int
    context: str
    gpus: int
    outputs: list[tuple[Any, Any]]  # per index: the (stdout, stderr) write ends
    workdir: str

    def environment(self, rank: int) -> dict[str, str]:
        """The variables torchrun sets for ``rank``."""
        per_node, nodes = self.options.nproc_per_node, self.options.nnodes
        return {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank % per_node),
            "WORLD_SIZE": str(per_node * nodes),
            "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": str(rank // per_node),
            "GROUP_WORLD_SIZE": str(nodes),
            "ROLE_RANK": str(rank),
            "ROLE_WORLD_SIZE": str(per_node * nodes),
            "MASTER_ADDR": self.options.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def main(index: int, spec: Spec) -> None:
    """A rank: torchrun's environment, a clean slate of wandb state, the task, its result or error to a file."""
    rank = spec.options.first_rank + index
    redirect(spec.outputs, index)
    scope.forget_parent_scopes()
    _forget_parent_wandb()
    context = inherit.InheritedContext.from_json(spec.context)
    os.environ.update({**inherit.child_environment(context), **spec.environment(rank)})
    inherit.adopt(context)
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(spec.workdir)
    try:
        task: Task = pickle.loads(spec.task) if isinstance(spec.task, bytes) else spec.task
        _join_process_group(spec, rank)
        # A fresh context: the notebook's open ``wandb_config`` blocks reached the rank through ``context``. The
        # process group is left to the rank's exit (destroying it costs more than the whole launch of a small task).
        result = contextvars.Context().run(_run_task, task, rank, spec.modes)
        _dump(workdir / f"result-{index}.pkl", cloudpickle.dumps(result))
    except Exception as error:
        record = {"type": type(error).__qualname__, "message": str(error), "time": time.time()}
        _dump(workdir / f"error-{index}.pkl", pickle.dumps({**record, "traceback": traceback.format_exc()}))
        raise


def _run_task(task: Task, rank: int, modes: dict[str, Any]) -> Any:
    with config.wandb_config(**modes):
        return task.run(rank)


def _forget_parent_wandb() -> None:
    """A forked rank must not use the notebook's runs or W&B service: it starts its own."""
    os.environ.pop("WANDB_SERVICE", None)
    if "wandb" in sys.modules:
        from wandb.sdk.lib import module

        module.unset_globals()


def _interrupted(signum: int, frame: Any) -> None:
    # SIGTERM from the launcher: end like Ctrl-C, so open runs finish as interrupted (exit code 255).
    raise KeyboardInterrupt(f"stopped by the launcher ({signal.Signals(signum).name})")


def _join_process_group(spec: Spec, rank: int) -> None:
    if spec.gpus:  # one GPU per rank of this machine (with simulated nodes, every rank is on this machine)
        on_this_machine = rank if spec.options.node_rank is None else rank % spec.options.nproc_per_node
        torch.cuda.set_device(on_this_machine % spec.gpus)
    if spec.backend is None:
        return
    dist.init_process_group(spec.backend, rank=rank, world_size=spec.options.nproc_per_node * spec.options.nnodes)


def _dump(path: Path, data: bytes) -> None:
    """Write a file the launcher reads only once it is whole."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)
