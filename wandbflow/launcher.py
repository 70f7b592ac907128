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

import asyncio
import builtins
import contextlib
import contextvars
import inspect
import io
import logging
import multiprocessing
import os
import pickle
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch.multiprocessing.spawn import ProcessException, ProcessRaisedException, start_processes

from wandbflow import config, display, inherit, naming, scope
from wandbflow.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from wandbflow.ledger import Ledger, RunRecord

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
    task = _FunctionTask(fn, args, dict(kwargs or {}), modes if run_mode is not None else None)
    return _launch(task, options, _name(fn), modes).results


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
    _compile(source, name)
    options = _options(nproc_per_node, nnodes, None, None, None, backend, start_method, timeout)
    task = _CellTask(source, dict(namespace), name, checked, save_code)
    launched = _launch(task, options, name, {})
    variables, value, skipped = launched.results[0]
    if skipped:
        logger.warning("wandbflow: rank 0's %s cannot be pickled and stayed on the rank", ", ".join(skipped))
    return CellResult(
        variables={k: pickle.loads(v) for k, v in variables.items()},
        value=pickle.loads(value),
        skipped=skipped,
        runs=_cards(launched),
    )


# --- what a rank runs -------------------------------------------------------------------------------------------


class _Task(Protocol):
    def run(self, rank: int) -> Any:
        """Run on one rank (inside ``torch.distributed`` when initialized); return what goes back."""

    def shipped(self) -> bytes:
        """This task pickled for a spawned rank; :class:`LaunchError` names what cannot be pickled."""


@dataclass
class _FunctionTask:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    scope_with: dict[str, Any] | None  # settings to scope an undecorated function with; None: no scope of its own

    def run(self, rank: int) -> Any:
        if self.scope_with is None or hasattr(self.fn, "__wandbflow_settings__"):
            return _call(self.fn, self.args, self.kwargs)
        source = f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', _name(self.fn))}"
        with scope.Scope(_name(self.fn), self.scope_with, source_kind="function", source=source):
            return _call(self.fn, self.args, self.kwargs)

    def shipped(self) -> bytes:
        parts = {"the function": self.fn}
        parts.update({f"argument {i}": a for i, a in enumerate(self.args)})
        parts.update({f"keyword argument {k!r}": v for k, v in self.kwargs.items()})
        return _pickle_or_name(self, parts)


@dataclass
class _CellTask:
    source: str
    namespace: dict[str, Any]
    name: str
    settings: dict[str, Any]
    save_code: bool

    def run(self, rank: int) -> tuple[dict[str, bytes], bytes, list[str]] | None:
        body, last = _compile(self.source, self.name)
        names = {**self.namespace, "__name__": "__main__", "__builtins__": builtins}
        before = dict(names)
        value = None
        cell = scope.Scope(self.name, self.settings, source_kind="cell", source=self.source, quiet=True)
        with cell:
            if self.save_code:
                cell.save_file(f"code/{self.name}.py", self.source)
            exec(body, names)
            if last is not None:
                value = eval(last, names)
        if rank != 0:
            return None
        changed = {k: v for k, v in names.items() if not k.startswith("__") and before.get(k, _MISSING) is not v}
        kept: dict[str, bytes] = {}
        skipped: list[str] = []
        for key, item in changed.items():
            try:
                kept[key] = cloudpickle.dumps(item)
            except Exception:  # any object may refuse pickling in its own way; it stays behind, named
                skipped.append(key)
        try:
            shipped_value = cloudpickle.dumps(value)
        except Exception:
            shipped_value, skipped = cloudpickle.dumps(None), [*skipped, "(the cell's value)"]
        return kept, shipped_value, skipped

    def shipped(self) -> bytes:
        used = _global_names(_compile(self.source, self.name))
        sent = {k: v for k, v in self.namespace.items() if k in used}
        task = _CellTask(self.source, sent, self.name, self.settings, self.save_code)
        return _pickle_or_name(task, {f"global {k!r}": v for k, v in sent.items()})


_MISSING = object()


def _call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args, **kwargs))
    return fn(*args, **kwargs)


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _compile(source: str, name: str) -> tuple[Any, Any]:
    """The code as (body, last expression or None), like a notebook cell."""
    import ast

    tree = ast.parse(source, filename=f"<{name}>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = compile(ast.Expression(tree.body[-1].value), f"<{name}>", "eval")
        tree.body.pop()
    return compile(tree, f"<{name}>", "exec"), last


def _global_names(code: tuple[Any, Any]) -> set[str]:
    """Every global name the code (and the functions and classes it defines) may read."""
    names: set[str] = set()
    stack = [c for c in code if c is not None]
    while stack:
        current = stack.pop()
        names.update(current.co_names)
        stack.extend(c for c in current.co_consts if inspect.iscode(c))
    return names


def _pickle_or_name(task: Any, parts: Mapping[str, Any]) -> bytes:
    try:
        shipped: bytes = cloudpickle.dumps(task)
        return shipped
    except Exception as error:
        culprits = []
        for label, value in parts.items():
            try:
                cloudpickle.dumps(value)
            except Exception as reason:
                culprits.append(f"{label} ({type(value).__name__}: {type(reason).__name__}: {reason})")
        what = "; ".join(culprits) or f"{type(error).__name__}: {error}"
        raise LaunchError(
            f"cannot send to the ranks, because it cannot be pickled: {what}. Create it inside the function or "
            "cell instead, or launch with start_method='fork' (Linux), where ranks inherit it"
        ) from error


# --- starting and watching the ranks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
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
        return 0 if self.node_rank is None else self.node_rank * self.nproc_per_node


def _options(
    nproc_per_node: int,
    nnodes: int,
    node_rank: int | None,
    master_addr: str | None,
    master_port: int | None,
    backend: str | None,
    start_method: str,
    timeout: float | None,
) -> _Options:
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
    return _Options(
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
class _Spec:
    """Everything a rank needs; the same object for every rank (``index`` tells them apart)."""

    task: Any  # the task itself (fork) or its cloudpickle bytes
    options: _Options
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


@dataclass
class _Launched:
    results: list[Any]  # in rank order
    pids: list[int]
    ledger: Path  # where the ranks record their runs


def _launch(task: _Task, options: _Options, name: str, modes: dict[str, Any]) -> _Launched:
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
    spec = _Spec(
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
    output = _Output([(options.first_rank + i, out[0], err[0]) for i, (out, err) in enumerate(pipes)])
    try:
        processes = _start(spec, method, count)
        for out_end, err_end in spec.outputs:
            out_end.close()
            err_end.close()
        output.start()
        _watch(processes, spec, ledger)
        results = [_result(spec, i, process) for i, process in enumerate(processes.processes)]
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


def _start(spec: _Spec, method: str, count: int) -> Any:
    """Start the ranks; if starting fails half-way, the ranks already started are stopped."""
    before = set(multiprocessing.active_children())
    try:
        with _without_wandb_service():
            return start_processes(_rank_main, args=(spec,), nprocs=count, join=False, start_method=method)
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


def _watch(processes: Any, spec: _Spec, ledger: Path) -> None:
    """Wait for every rank; on a failure, timeout or Ctrl-C stop them all and say why."""
    limit = spec.options.timeout
    deadline = None if limit is None else time.monotonic() + limit
    try:
        while not processes.join(
            timeout=None if deadline is None else max(0.0, deadline - time.monotonic()), grace_period=GRACE_S
        ):
            if deadline is not None and time.monotonic() >= deadline:
                _stop(processes.processes)
                _mark_crashed(processes.processes, ledger)
                pids = ", ".join(str(p) for p in processes.pids())
                raise LaunchError(f"the launch timed out after {limit:g}s; every rank was stopped (pids {pids})")
    except ProcessException as failure:
        _mark_crashed(processes.processes, ledger)
        raise _failure(failure, processes.processes, spec) from None
    except BaseException:  # Ctrl-C in the cell (or any error here): no rank may outlive the call
        _stop(processes.processes)
        _mark_crashed(processes.processes, ledger)
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


def _failure(failure: Exception, processes: list[Any], spec: _Spec) -> LaunchError:
    """The launch's error: the rank that failed first, with its own traceback when it raised."""
    first = int(getattr(failure, "error_index", 0))
    records = {i: r for i in range(len(processes)) if (r := _error_record(spec, i)) is not None}
    if isinstance(failure, ProcessRaisedException) and records:
        first = min(records, key=lambda i: records[i]["time"])  # the others may only have lost their peer
    process = processes[first]
    rank = spec.options.first_rank + first
    others = ", ".join(
        f"rank {spec.options.first_rank + i} {_ending(p.exitcode)}" for i, p in enumerate(processes) if i != first
    )
    record = records.get(first)
    if record is not None:
        return LaunchError(
            f"rank {rank} (pid {process.pid}) raised {record['type']}: {record['message']}\n"
            f"(other ranks: {others})\n\nTraceback on rank {rank}:\n{record['traceback']}",
            rank=rank,
            pid=process.pid,
            exit_code=process.exitcode,
            error_type=record["type"],
            traceback=record["traceback"],
        )
    code = process.exitcode
    signal_name = _signal_name(code)
    return LaunchError(
        f"rank {rank} (pid {process.pid}) {_ending(code)} (other ranks: {others})",
        rank=rank,
        pid=process.pid,
        exit_code=None if signal_name else code,
        signal=signal_name,
    )


def _signal_name(exitcode: int | None) -> str | None:
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _ending(exitcode: int | None) -> str:
    name = _signal_name(exitcode)
    return f"was killed by {name}" if name else f"exited with code {exitcode}"


def _result(spec: _Spec, index: int, process: Any) -> Any:
    """What rank ``index`` returned.

    A rank that ended quietly without returning (``sys.exit(0)``, a KeyboardInterrupt of its own) fails the launch.
    """
    path = Path(spec.workdir) / f"result-{index}.pkl"
    if not path.exists():
        rank = spec.options.first_rank + index
        raise LaunchError(
            f"rank {rank} (pid {process.pid}) ended without returning (exit code 0: sys.exit or an interrupt)",
            rank=rank,
            pid=process.pid,
            exit_code=process.exitcode,
        )
    return _load(path)


def _error_record(spec: _Spec, index: int) -> dict[str, Any] | None:
    path = Path(spec.workdir) / f"error-{index}.pkl"
    return _load(path) if path.exists() else None


def _load(path: Path) -> Any:
    with path.open("rb") as source:
        return pickle.load(source)


def _runs_of(path: Path, pids: list[int]) -> tuple[Ledger, list[RunRecord]]:
    """The ledger at ``path`` and the runs that this session's ranks ``pids`` opened (none without a ledger)."""
    from wandbflow.ledger import Ledger

    ledger = Ledger(path)
    if not path.exists():
        return ledger, []
    return ledger, [r for r in ledger.records(session=naming.session_id()) if r.pid in pids]


def _mark_crashed(processes: list[Any], path: Path) -> None:
    """Record as crashed the runs of ranks that died without finishing them (a signal, ``os._exit``)."""
    ended = {p.pid: p.exitcode for p in processes if p.exitcode not in (0, None)}
    if not ended:
        return
    try:
        ledger, rows = _runs_of(path, list(ended))
        for row in rows:
            if row.state != "running":
                continue
            code = ended[row.pid]
            ledger.mark_crashed(
                row.run_id,
                exit_code=code if code >= 0 else None,
                signal=-code if code < 0 else None,
                error=f"rank {row.rank} {_ending(code)}",
            )
    except Exception:  # the ledger is a record; the launch's own error matters more
        logger.exception("wandbflow: could not record the crashed ranks' runs in the ledger")


def _cards(launched: _Launched) -> list[display.RunCard]:
    """A card per run the ranks opened, as the ledger recorded it."""
    _, rows = _runs_of(launched.ledger, launched.pids)
    cards = []
    for row in sorted(rows, key=lambda r: (r.started_at or 0.0, r.run_id)):
        duration = None
        if row.finished_at is not None and row.started_at is not None:
            duration = row.finished_at - row.started_at
        cards.append(
            display.RunCard(
                name=row.name or row.run_id,
                run_id=row.run_id,
                mode=row.mode or "offline",
                project=row.project,
                group=row.group,
                url=row.url,
                run_dir=None if row.url else row.dir,
                state=row.state,
                exit_code=row.exit_code,
                duration=duration,
                summary=row.summary,
            )
        )
    return cards


class _Output:
    """Copies each rank's stdout and stderr into this process's, live, every line prefixed ``[rank N]``."""

    def __init__(self, ranks: list[tuple[int, Any, Any]]) -> None:
        self._ranks = ranks  # (rank, stdout read end, stderr read end)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, name="wandbflow-rank-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Copy what the ranks wrote before they ended, then stop."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for _, out, err in self._ranks:
            out.close()
            err.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _copy(self) -> None:
        partial: dict[int, bytes] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            for rank, out, err in self._ranks:
                for reader, target in ((out, sys.stdout), (err, sys.stderr)):
                    os.set_blocking(reader.fileno(), False)
                    selector.register(reader.fileno(), selectors.EVENT_READ, (f"[rank {rank}] ", target))
            stopping = False
            while not stopping:
                events = selector.select()
                stopping = any(key.fd == self._wake_r for key, _ in events)
                if stopping:  # one last pass over what the ranks wrote before they ended
                    events = [(key, 0) for key in selector.get_map().values() if key.fd != self._wake_r]
                for key, _ in events:
                    if key.fd != self._wake_r:
                        self._forward(key, partial, selector)
            for fd, rest in partial.items():
                prefix, target = selector.get_key(fd).data
                target.write(f"{prefix}{rest.decode(errors='replace')}\n")

    @staticmethod
    def _forward(key: selectors.SelectorKey, partial: dict[int, bytes], selector: selectors.BaseSelector) -> None:
        """Write the complete lines the stream has now, prefixed; keep a partial line for later."""
        chunk = _read(key.fd)
        if chunk is None:
            return
        if not chunk:  # the rank (and everything it started) closed the stream
            selector.unregister(key.fd)
            chunk = b"\n" if partial.get(key.fd) else b""
        lines = (partial.pop(key.fd, b"") + chunk).split(b"\n")
        if chunk and lines[-1]:
            partial[key.fd] = lines[-1]
        if lines[:-1]:
            prefix, target = key.data
            target.write("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines[:-1]))
            target.flush()


def _read(fd: int) -> bytes | None:
    """What the stream has now: None when nothing yet, empty at its end."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


# --- inside a rank ----------------------------------------------------------------------------------------------


def _rank_main(index: int, spec: _Spec) -> None:
    """A rank: torchrun's environment, a clean slate of wandb state, the task, its result or error to a file."""
    rank = spec.options.first_rank + index
    _own_output(spec, index)
    scope.forget_parent_scopes()
    _forget_parent_wandb()
    context = inherit.InheritedContext.from_json(spec.context)
    os.environ.update({**inherit.child_environment(context), **spec.environment(rank)})
    inherit.adopt(context)
    signal.signal(signal.SIGTERM, _interrupted)
    workdir = Path(spec.workdir)
    try:
        task: _Task = pickle.loads(spec.task) if isinstance(spec.task, bytes) else spec.task
        _join_process_group(spec, rank)
        # A fresh context: the notebook's open ``wandb_config`` blocks reached the rank through ``context``. The
        # process group is left to the rank's exit (destroying it costs more than the whole launch of a small task).
        result = contextvars.Context().run(_run_task, task, rank, spec.modes)
        _dump(workdir / f"result-{index}.pkl", cloudpickle.dumps(result))
    except Exception as error:
        record = {"type": type(error).__qualname__, "message": str(error), "time": time.time()}
        _dump(workdir / f"error-{index}.pkl", pickle.dumps({**record, "traceback": traceback.format_exc()}))
        raise


def _run_task(task: _Task, rank: int, modes: dict[str, Any]) -> Any:
    with config.wandb_config(**modes):
        return task.run(rank)


def _own_output(spec: _Spec, index: int) -> None:
    """Send this rank's stdout and stderr (Python's and the file descriptors) to the launcher, line by line."""
    for i, (out, err) in enumerate(spec.outputs):
        if i != index:
            out.close()
            err.close()
    out, err = spec.outputs[index]
    for conn, fd in ((out, 1), (err, 2)):
        os.dup2(conn.fileno(), fd)
        conn.close()
    sys.stdout = _line_stream(1)
    sys.stderr = _line_stream(2)


def _line_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )


def _forget_parent_wandb() -> None:
    """A forked rank must not use the notebook's runs or W&B service: it starts its own."""
    os.environ.pop("WANDB_SERVICE", None)
    if "wandb" in sys.modules:
        from wandb.sdk.lib import module

        module.unset_globals()


def _interrupted(signum: int, frame: Any) -> None:
    # SIGTERM from the launcher: end like Ctrl-C, so open runs finish as interrupted (exit code 255).
    raise KeyboardInterrupt(f"stopped by the launcher ({signal.Signals(signum).name})")


def _join_process_group(spec: _Spec, rank: int) -> None:
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
