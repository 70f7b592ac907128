"""Notebook sweeps: each trial is one execution of a notebook, its run owned by the trial's kernel.

``sweep_notebook`` asks the sweep for trials (:meth:`Sweep.ask`), executes the notebook for each in a kernel from a
warm pool (:mod:`wandbflow.kernels`), ``parallel`` at a time, one GPU per lane where GPUs exist, and tells the sweep
how each ended. The kernel hooks its run's ``log`` to the sweep's pruner (:func:`wandbflow.sweeps.watch`), so
hyperband works inside notebooks too. A failed, crashed or timed-out trial never stops the sweep; Ctrl-C does:
running trials end interrupted, every kernel is shut down, and the KeyboardInterrupt propagates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wandbflow import config as settings_module
from wandbflow import kernels, naming
from wandbflow.errors import ConfigError, SweepError
from wandbflow.ledger import default_path
from wandbflow.notebooks import NotebookResult, TrialSpec, check_notebook, execute, kernel_environment

if TYPE_CHECKING:
    from wandbflow.sweeps.engines import TrialAssignment
    from wandbflow.sweeps.progress import TrialProgress
    from wandbflow.sweeps.sweep import Sweep

logger = logging.getLogger("wandbflow")

OnResult = Callable[["TrialAssignment", NotebookResult, str], None]


def sweep_notebook(
    notebook: str | os.PathLike[str],
    sweep: Sweep | Mapping[str, Any] | str | os.PathLike[str],
    *,
    count: int | None = None,
    parallel: int = 1,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    strict: bool = True,
    kernel_name: str = "python3",
    progress: bool = True,
    on_result: OnResult | None = None,
    cancel: threading.Event | None = None,
) -> Sweep:
    """Run a notebook as the trials of a sweep; blocks until ``count`` trials ran or the sweep is done.

    Args:
        notebook: The trial template: a notebook whose cell tagged ``parameters`` defines the swept names.
        sweep: A sweep, a sweep config (dict, ``wandb_sweep_config(...)``, or a YAML file's path), or the id of an
            existing sweep (to add workers to it, here or on another machine).
        count: The most trials to run here; None: until the sweep has nothing more to hand out.
        parallel: How many trials run at once, each in its own kernel (and on its own GPU where GPUs exist).
        parameters: Fixed parameters given to every trial, besides the swept ones.
        output_dir: Where executed notebooks go, as ``<output_dir>/<sweep id>/trial-<n>.ipynb`` (default
            ``notebooks`` beside the ledger).
        timeout: Seconds after which a trial's kernel is interrupted (and killed if it does not stop).
        strict: Require the parameters cell to define every parameter.
        kernel_name: The Jupyter kernel trials run in.
        progress: Show a progress bar over the trials, with the best value of the metric so far.
        on_result: Called after each trial with its assignment, result and the state the sweep recorded.
        cancel: Set it to stop: no new trials start and running ones are interrupted.

    Returns:
        The sweep (``sweep.trials()``, ``sweep.best()``).

    Raises:
        ConfigError: ``count`` or ``parallel`` is not a positive integer.
        NotebookError: The notebook or its parameters are wrong; found before any trial runs.
        SweepConfigError: An invalid sweep config.
        SweepError: The sweep cannot hand out trials here (the W&B engine serves only its own agents).
        KeyboardInterrupt: Ctrl-C; running trials were finished as interrupted and their kernels shut down.
    """
    for key, value in (("count", count), ("parallel", parallel)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"must be a positive integer (got {value!r})", key=key)
    path = str(Path(notebook).absolute())
    fixed = dict(parameters or {})
    swept = _config(sweep).get("parameters", {})  # validated before anything is created
    check_notebook(path, {**dict.fromkeys(swept), **fixed}, strict=strict)
    target = _sweep(sweep)
    if target.engine.name != "local":
        raise SweepError(
            f"notebook trials are scheduled by the local engine; sweep {target.id} uses the {target.engine.name!r} "
            "engine (create it with engine='local')",
            sweep_id=target.id,
        )
    resolved = settings_module.resolve({})
    ledger = str(default_path(resolved.get("dir")))
    outputs = Path(output_dir).absolute() if output_dir else Path(ledger).parent / "notebooks"
    (outputs / target.id).mkdir(parents=True, exist_ok=True)
    runner = _Runner(target, path, fixed, outputs / target.id, ledger, timeout, resolved.values, on_result)
    stop = cancel or threading.Event()
    budget = _Budget(count)
    gpus = kernels.visible_gpus()
    if gpus:
        logger.info("wandbflow: trials get one GPU each, from %s", ", ".join(gpus))
    from wandbflow.sweeps.progress import TrialProgress

    bar = TrialProgress(target, count=count, enabled=progress)
    pool = kernels.KernelPool(
        parallel,
        kernel_name=kernel_name,
        cwd=str(Path(path).parent),
        env=kernel_environment(ledger),
        gpus=gpus,
        warm=kernels.warm_code(path, target.ref),
    )
    try:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="wandbflow-trial") as lanes:
            futures = [lanes.submit(runner.lane, lane, pool, budget, stop, bar) for lane in range(parallel)]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                stop.set()  # Ctrl-C (or a bug): interrupt the running trials; their kernels end their runs
                raise
    finally:
        pool.close()
        bar.close()
    return target


def _is_file(given: object) -> bool:
    return isinstance(given, os.PathLike) or (isinstance(given, str) and given.endswith((".yaml", ".yml", ".json")))


def _config(given: Sweep | Mapping[str, Any] | str | os.PathLike[str]) -> Mapping[str, Any]:
    """The sweep config ``given`` is, names or holds, validated (no sweep is created)."""
    from wandbflow.sweeps import Sweep, load, load_config

    if isinstance(given, Sweep):
        return given.config
    if _is_file(given) or not isinstance(given, str):
        return load_config(given)
    return load(given).config


def _sweep(given: Sweep | Mapping[str, Any] | str | os.PathLike[str]) -> Sweep:
    from wandbflow.sweeps import Sweep, load_config, sweep

    if isinstance(given, Sweep):
        return given
    if _is_file(given) or not isinstance(given, str):
        return sweep(load_config(given), engine="local")
    return sweep(given)


class _Budget:
    """How many trials may still start here (thread-safe); None: no limit but the sweep's."""

    def __init__(self, count: int | None) -> None:
        self.left = count
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left is None:
                return True
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def more(self) -> bool:
        with self._lock:
            return self.left is None or self.left > 0


class _Runner:
    """Runs trials lane by lane: ask, execute in a pooled kernel, tell."""

    def __init__(
        self,
        target: Sweep,
        path: str,
        fixed: dict[str, Any],
        outputs: Path,
        ledger: str,
        timeout: float | None,
        settings: dict[str, Any],
        on_result: OnResult | None,
    ) -> None:
        self.sweep = target
        self.path = path
        self.fixed = fixed
        self.outputs = outputs
        self.ledger = ledger
        self.timeout = timeout
        self.settings = settings
        self.on_result = on_result

    def lane(
        self, lane: int, pool: kernels.KernelPool, budget: _Budget, stop: threading.Event, bar: TrialProgress
    ) -> None:
        pool.prepare(lane)
        while not stop.is_set() and budget.take():
            assignment = self.sweep.ask()
            if assignment is None:
                return
            kernel = pool.acquire(lane, prepare_next=budget.more())
            if stop.is_set():  # cancelled while the kernel started: the reserved trial never ran
                kernels.shutdown(kernel)
                self.sweep.tell(assignment, "interrupted")
                return
            result = execute(self.spec(assignment), kernel, cancel=stop, retire=pool.retire)
            state = self.sweep.tell(assignment, _state(result), None)
            metric = self.sweep.config.metric
            bar.ended(assignment.number, state, metric.read(result.summary) if metric and state == "finished" else None)
            if self.on_result is not None:
                self.on_result(assignment, result, state)

    def spec(self, assignment: TrialAssignment) -> TrialSpec:
        return TrialSpec(
            path=self.path,
            output=str(self.outputs / f"trial-{assignment.number}.ipynb"),
            parameters={**self.fixed, **assignment.params},
            context=assignment.context(self.settings, session=naming.session_id(), notebook=self.path),
            ledger=self.ledger,
            timeout=self.timeout,
            sweep_ref=assignment.sweep_ref,
        )


def _state(result: NotebookResult) -> str:
    """The state to tell the sweep: a ``TrialPruned`` cell is pruned, a timeout failed, else the run's state."""
    if result.ename == "TrialPruned":
        return "pruned"
    return result.state if result.state in ("finished", "failed", "interrupted", "crashed", "pruned") else "failed"
