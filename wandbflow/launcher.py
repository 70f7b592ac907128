"""Run a function, or a cell's code, on several processes from a notebook: ``launch(train, nproc_per_node=2)``.

Each rank is a ``torch.multiprocessing`` process with torchrun's environment (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and, unless
``backend=None``, the default process group already initialized, so the same ``@wandb_init`` function behaves as
under ``torchrun``. Ranks inherit the notebook's session id and resolved settings (:mod:`wandbflow.inherit`), so
their run ids agree. ``nnodes > 1`` without ``node_rank`` simulates every node on this machine.

Processes follow torch's protocol: each rank writes its error (type, message, traceback) to its own file; on the
first failure the launcher waits a grace period, sends SIGTERM, waits again, sends SIGKILL and joins every rank,
then raises :class:`~wandbflow.errors.LaunchError`. Runs whose rank died without finishing them are recorded as
crashed in the ledger. No rank outlives the call, also on Ctrl-C and on ``timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch.multiprocessing.spawn import ProcessException, start_processes

from wandbflow import config, display, inherit, naming, scope
from wandbflow.errors import ConfigError, LaunchError
from wandbflow.ranks import outcome
from wandbflow.ranks.output import RankOutput
from wandbflow.ranks.process import Options, Spec, main
from wandbflow.ranks.tasks import CellTask, FunctionTask, Task, compile_cell, task_name

__all__ = ["CellResult", "launch", "launch_cell"]

logger = logging.getLogger("wandbflow")

START_METHODS = ("auto", "fork", "forkserver", "spawn")
GRACE_S = 3.0  # after a failure: wait this long for the other ranks, SIGTERM, wait again, SIGKILL
DEFAULT_MASTER_PORT = 29500  # torchrun's, for a multi-node job whose nodes must agree on it

_warned: set[str] = set()


def launch(
    fn: Callable[..., Any],
    /,
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    backend: str | None = "auto",
    start_method: str = "auto",
    run_mode: str | None = None,
    rank_scope: str | None = None,
    timeout: float | None = None,
) -> list[Any]:
    """Run ``fn(*args, **kwargs)`` on ``nproc_per_node`` processes per node and return every rank's result.

    A function decorated with ``@wandb_init`` keeps its own ``run_mode``/``rank_scope`` (those given here fill in
    what it leaves open); an undecorated function is scoped with ``run_mode`` when it is given, and opens no run
    otherwise. Functions defined in a notebook, lambdas and closures work (they travel with cloudpickle).

    Args:
        fn: The function each rank calls (a coroutine function is run with ``asyncio.run``).
        *args: Positional arguments for ``fn``.
        kwargs: Keyword arguments for ``fn``.
        nproc_per_node: Processes (ranks) per node; one GPU each where GPUs exist.
        nnodes: Nodes in the job.
        node_rank: This node's index in a real multi-node job (every node makes the same call); None simulates
            all ``nnodes`` nodes on this machine.
        master_addr: Address of node 0, where the ranks meet; ``127.0.0.1`` on one machine.
        master_port: A free port on ``master_addr``; chosen for you on one machine, 29500 across machines.
        backend: Process group backend: ``auto`` (nccl with GPUs, gloo without), a backend name, or None to leave
            ``torch.distributed`` uninitialized.
        start_method: ``auto`` (fork when safe, else forkserver or spawn), ``fork``, ``forkserver`` or ``spawn``.
        run_mode: ``auto``, ``new`` or ``shared`` for the ranks' runs.
        rank_scope: ``global`` or ``worker``.
        timeout: Seconds before every rank is stopped and :class:`LaunchError` raised; None waits forever.

    Returns:
        Each rank's return value in rank order (with ``node_rank`` given: this node's ranks).

    Raises:
        ConfigError: A bad option, before any process starts.
        LaunchError: Something ``fn`` needs cannot be sent to the ranks, a rank failed, or the launch timed out.
    """
    if not callable(fn):
        raise ConfigError(f"must be callable (got {type(fn).__name__})", key="fn")
    modes = config.check_fields({"run_mode": run_mode, "rank_scope": rank_scope})
    options = _options(nproc_per_node, nnodes, node_rank, master_addr, master_port, backend, start_method, timeout)
    task = FunctionTask(fn, args, dict(kwargs or {}), modes if run_mode is not None else None)
    return _launch(task, options, task_name(fn), modes).results


@dataclass
class CellResult:
    """What a launched cell hands back to the notebook.

    Attributes:
        variables: Rank 0's new or rebound variables (those that could be pickled).
        value: Rank 0's value of the cell's last expression (None when it has none).
        skipped: Names of rank 0's new variables that could not be pickled and stayed behind.
        runs: One card per run the ranks opened, in the state they ended in.
    """

    variables: dict[str, Any]
    value: Any
    skipped: list[str]
    runs: list[display.RunCard]


def launch_cell(
    source: str,
    namespace: Mapping[str, Any],
    *,
    name: str,
    nproc_per_node: int,
    nnodes: int = 1,
    settings: Mapping[str, Any] | None = None,
    save_code: bool = True,
    backend: str | None = "auto",
    start_method: str = "auto",
    timeout: float | None = None,
) -> CellResult:
    """Run a cell's code on every rank, each inside the cell's scope, and bring back rank 0's new variables.

    This is what ``%%wandb_task --nproc-per-node N`` calls. The ranks see the notebook's globals: forked ranks
    all of them, spawned ranks those the code uses (they must pickle).

    Args:
        source: The cell's Python code (IPython syntax already transformed).
        namespace: The notebook's globals.
        name: The task name: the runs' name and part of their id.
        nproc_per_node: Processes (ranks) per node.
        nnodes: Nodes, all simulated on this machine.
        settings: The scope's settings (project, run_mode, rank_scope, ... as for :func:`wandbflow.task`).
        save_code: Save the cell's source into each run as ``code/<name>.py``.
        backend: As for :func:`launch`.
        start_method: As for :func:`launch`.
        timeout: As for :func:`launch`.

    Returns:
        Rank 0's variables and last value, and a card per run opened (the ranks show none themselves).

    Raises:
        SyntaxError: The code does not compile; nothing starts.
        ConfigError: A bad option or setting, before any process starts.
        LaunchError: Globals the code uses cannot be pickled (each is named), a rank failed, or timed out.
    """
    checked = config.check_fields(settings or {})
    compile_cell(source, name)
    options = _options(nproc_per_node, nnodes, None, None, None, backend, start_method, timeout)
    task = CellTask(source, dict(namespace), name, checked, save_code)
    launched = _launch(task, options, name, {})
    variables, value, skipped = launched.results[0]
    if skipped:
        logger.warning("wandbflow: rank 0's %s cannot be pickled and stayed on the rank", ", ".join(skipped))
    return CellResult(
        variables={k: pickle.loads(v) for k, v in variables.items()},
        value=pickle.loads(value),
        skipped=skipped,
        runs=outcome.cards(launched.ledger, launched.pids),
    )


def _options(
    nproc_per_node: int,
    nnodes: int,
    node_rank: int | None,
    master_addr: str | None,
    master_port: int | None,
    backend: str | None,
    start_method: str,
    timeout: float | None,
) -> Options:
    for key, value in (("nproc_per_node", nproc_per_node), ("nnodes", nnodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"must be a positive integer (got {value!r})", key=key)
    if node_rank is not None and not (isinstance(node_rank, int) and 0 <= node_rank < nnodes):
        raise ConfigError(f"must be None or an integer in [0, {nnodes}) (got {node_rank!r})", key="node_rank")
    real_nodes = node_rank is not None and nnodes > 1
    if real_nodes and not master_addr:
        raise ConfigError("a multi-node job needs the address of node 0 on every node", key="master_addr")
    if master_port is not None and not (isinstance(master_port, int) and 0 < master_port < 65536):
        raise ConfigError(f"must be a port number (got {master_port!r})", key="master_port")
    if start_method not in START_METHODS:
        raise ConfigError(f"must be one of {', '.join(START_METHODS)} (got {start_method!r})", key="start_method")
    if start_method != "auto" and start_method not in multiprocessing.get_all_start_methods():
        raise ConfigError(f"{start_method!r} is not available on this platform", key="start_method")
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"must be a positive number of seconds (got {timeout!r})", key="timeout")
    if backend is not None and not isinstance(backend, str):
        raise ConfigError(f"must be a backend name, 'auto' or None (got {backend!r})", key="backend")
    return Options(
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr or "127.0.0.1",
        master_port=master_port or (DEFAULT_MASTER_PORT if real_nodes else None),
        backend=backend,
        start_method=start_method,
        timeout=timeout,
    )


def _choose_start_method(requested: str) -> str:
    """Fork when it is safe (fastest: nothing is pickled or imported again), else forkserver or spawn."""
    unsafe = _fork_hazard()
    if requested == "fork" and unsafe:
        raise ConfigError(f"cannot fork the ranks: {unsafe}; use start_method='spawn'", key="start_method")
    if requested != "auto":
        return requested
    available = multiprocessing.get_all_start_methods()
    fallback = "forkserver" if "forkserver" in available else "spawn"
    if sys.platform != "linux" or "fork" not in available:
        return fallback
    if unsafe is None:
        return "fork"
    _warn_once(f"wandbflow: starting the ranks with {fallback} instead of fork, which is not safe here: {unsafe}")
    return fallback


def _fork_hazard() -> str | None:
    """Why forking this process would break the ranks, or None."""
    if torch.cuda._is_in_bad_fork():
        return "this process is itself a fork of a process that had initialized CUDA"
    if torch.cuda.is_initialized():
        return "CUDA is already initialized in this process (a forked rank cannot use it)"
    return None


def _choose_backend(requested: str | None) -> str | None:
    if requested != "auto":
        return requested
    # device_count() asks NVML and does not initialize CUDA, so fork stays safe.
    return "nccl" if torch.cuda.device_count() > 0 and dist.is_nccl_available() else "gloo"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Launched:
    results: list[Any]  # in rank order
    pids: list[int]
    ledger: Path  # where the ranks record their runs


def _launch(task: Task, options: Options, name: str, modes: dict[str, Any]) -> _Launched:
    """Start the ranks, copy their output here, wait; return their results."""
    from wandbflow.ledger import default_path

    method = _choose_start_method(options.start_method)
    payload: Any = task if method == "fork" else task.shipped()
    context, resolved = _context(name)
    # run_mode/rank_scope set in this process (wandb_config) reach the ranks' scopes; the context does not carry them
    inherited_modes = {k: resolved.get(k) for k in ("run_mode", "rank_scope") if resolved.sources.get(k) != "default"}
    ledger = default_path(resolved.get("dir"))
    count = options.local_ranks
    ctx = torch_mp.get_context(method)
    pipes = [(ctx.Pipe(duplex=False), ctx.Pipe(duplex=False)) for _ in range(count)]
    workdir = tempfile.mkdtemp(prefix="wandbflow-launch-")
    spec = Spec(
        task=payload,
        options=options,
        modes={**inherited_modes, **modes},
        backend=_choose_backend(options.backend),
        master_port=options.master_port or _free_port(options.master_addr),
        context=context.to_json(),
        gpus=torch.cuda.device_count(),
        outputs=[(out[1], err[1]) for out, err in pipes],
        workdir=workdir,
    )
    output = RankOutput([(options.first_rank + i, out[0], err[0]) for i, (out, err) in enumerate(pipes)])
    try:
        processes = _start(spec, method, count)
        for out_end, err_end in spec.outputs:
            out_end.close()
            err_end.close()
        output.start()
        _watch(processes, spec, ledger)
        results = [outcome.result(spec, i, process) for i, process in enumerate(processes.processes)]
        return _Launched(results, processes.pids(), ledger)
    finally:
        output.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _context(name: str) -> tuple[inherit.InheritedContext, config.Resolved]:
    """What every rank inherits: this session, the resolved settings, a new base id for the launched task."""
    parent = scope.current_frame()
    resolved = config.resolve(
        parent=parent.resolved if parent is not None else None,
        parent_depth=parent.block_depth if parent is not None else 0,
    )
    own = inherit.current()
    context = inherit.make_context(
        resolved.values,
        session=naming.session_id(),
        base=naming.next_base(name),
        sweep_id=own.sweep_id if own else None,
        trial_id=own.trial_id if own else None,
        notebook=own.notebook if own else None,
    )
    return context, resolved


def _start(spec: Spec, method: str, count: int) -> Any:
    """Start the ranks; if starting fails half-way, the ranks already started are stopped."""
    before = set(multiprocessing.active_children())
    try:
        with _without_wandb_service():
            return start_processes(main, args=(spec,), nprocs=count, join=False, start_method=method)
    except BaseException:
        _stop([p for p in multiprocessing.active_children() if p not in before])
        raise


@contextlib.contextmanager
def _without_wandb_service() -> Iterator[None]:
    """Start the ranks without the notebook's W&B service in their environment; it is restored afterwards.

    Each rank starts its own service: W&B's shared mode fails when ranks use their common parent's, and a rank
    must not outlive, or be broken by, the notebook's.
    """
    saved = os.environ.pop("WANDB_SERVICE", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WANDB_SERVICE"] = saved


def _watch(processes: Any, spec: Spec, ledger: Path) -> None:
    """Wait for every rank; on a failure, timeout or Ctrl-C stop them all and say why."""
    limit = spec.options.timeout
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while not processes.join(
            timeout=None if deadline is None else max(0.0, deadline - time.monotonic()), grace_period=GRACE_S
        ):
            if deadline is not None and time.monotonic() >= deadline:
                _stop(processes.processes)
                outcome.mark_crashed(processes.processes, ledger)
                pids = ", ".join(str(p) for p in processes.pids())
                raise LaunchError(f"the launch timed out after {limit:g}s; every rank was stopped (pids {pids})")
    except ProcessException as failure:
        outcome.mark_crashed(processes.processes, ledger)
        raise outcome.failure(failure, processes.processes, spec) from None
    except BaseException:  # Ctrl-C in the cell (or any error here): no rank may outlive the call
        _stop(processes.processes)
        outcome.mark_crashed(processes.processes, ledger)
        raise


def _stop(processes: list[Any]) -> None:
    """SIGTERM every live rank, give them ``GRACE_S`` to finish their runs, SIGKILL the rest, join all."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
