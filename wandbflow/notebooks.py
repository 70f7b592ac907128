"""Notebooks as runs: ``run_notebook`` executes a parameterized copy with papermill, as one W&B run the kernel owns.

The run is opened in the kernel (see :mod:`wandbflow.trial`) by a silent call before the first cell, with the id,
project, group and config chosen here, and finished by a silent call after the last cell, which also saves the
executed notebook into the run. Parameters are injected by papermill after the cell tagged ``parameters``. A dead
kernel cannot finish its run: it is recorded as crashed in the ledger. The outcome is read back from the ledger.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandbflow import config as settings_module
from wandbflow import inherit, kernels, naming
from wandbflow.errors import NotebookError, NotebookExecutionError
from wandbflow.ledger import Ledger, default_path
from wandbflow.redact import is_secret_key

logger = logging.getLogger("wandbflow")

ENGINE = "wandbflow"
EPILOGUE_TIMEOUT_S = 60.0
TIMEOUT_GRACE_S = 10.0


@dataclass
class NotebookResult:
    """How one notebook run ended.

    Its run, state (finished, failed, interrupted, crashed, pruned), exit code, final summary, the executed
    notebook, and what failed (cell index in the executed notebook, exception name and value).
    """

    run_id: str
    state: str
    exit_code: int | None
    output: str
    parameters: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    duration: float = 0.0
    cell_index: int | None = None
    ename: str | None = None
    evalue: str | None = None

    @property
    def ok(self) -> bool:
        """True when every cell ran."""
        return self.state == "finished"


def check_notebook(path: str | os.PathLike[str], parameters: Mapping[str, Any], *, strict: bool = True) -> None:
    """Check a notebook and its parameters before anything runs.

    Raises:
        NotebookError: The notebook is missing or unreadable; a parameter looks like a secret; with ``strict``, the
            notebook has no cell tagged ``parameters`` or that cell does not define a given parameter.
    """
    import nbformat
    import papermill

    where = str(path)
    for name in parameters:
        if is_secret_key(name):
            raise NotebookError(
                f"parameter {name!r} looks like a secret: pass secrets through the environment, never as "
                "parameters (they would be written into the notebook)",
                path=where,
                parameter=name,
            )
    try:
        notebook = nbformat.read(where, as_version=4)
    except (OSError, ValueError) as error:
        raise NotebookError(f"cannot read notebook {where}: {error}", path=where) from error
    if not strict:
        return
    if not any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in notebook.cells):
        raise NotebookError(
            f"{where} has no cell tagged 'parameters': tag the cell that defines the defaults (or pass strict=False)",
            path=where,
        )
    defined = papermill.inspect_notebook(where)
    for name in parameters:
        if name not in defined:
            known = ", ".join(defined) or "none"
            raise NotebookError(
                f"{where}: parameter {name!r} is not defined in its parameters cell (defined: {known})",
                path=where,
                parameter=name,
            )


@dataclass
class TrialSpec:
    """Everything one execution needs: what to run, where its output goes, and the context its run gets."""

    path: str
    output: str
    parameters: dict[str, Any]
    context: inherit.InheritedContext
    ledger: str
    timeout: float | None = None
    sweep_ref: str | None = None


def execute(
    spec: TrialSpec,
    kernel: Any,
    *,
    cancel: threading.Event | None = None,
    retire: Callable[[Any], None] = kernels.shutdown,
) -> NotebookResult:
    """Execute one notebook in a started kernel and return how it ended.

    Never raises for what happens in the notebook: a failing cell, a dead kernel, a timeout or a cancellation is
    in the result. ``cancel`` set interrupts the kernel (the run ends interrupted). Once the kernel's run is
    finished the kernel is handed to ``retire`` (default: shut down now); on Ctrl-C it is shut down here.
    """
    import papermill
    from papermill.engines import papermill_engines
    from papermill.exceptions import PapermillExecutionError

    from wandbflow.papermill_engine import TrialEngine

    papermill_engines.register(ENGINE, TrialEngine)
    run_id = spec.context.run_id
    assert run_id is not None
    started = time.time()
    watchdog = _Watchdog(kernel, spec.timeout, cancel)
    failure: dict[str, Any] = {}
    try:
        with watchdog:
            papermill.execute_notebook(
                spec.path,
                spec.output,
                parameters=spec.parameters,
                engine_name=ENGINE,
                kernel_name=kernel.kernel_name,
                language="python",
                progress_bar=False,
                km=kernel,
                prologue=_prologue(spec),
                epilogue_for=watchdog.epilogue_for,
            )
    except KeyboardInterrupt:
        watchdog.finish_in_kernel(_INTERRUPTED, spec.output)
        kernels.shutdown(kernel)
        raise
    except PapermillExecutionError as error:
        failure = {"cell_index": error.cell_index, "ename": error.ename, "evalue": error.evalue}
    except Exception as error:  # the kernel died (DeadKernelError), or an interrupt hit the prologue or epilogue
        failure = {"cell_index": None, "ename": type(error).__name__, "evalue": str(error)}
    if watchdog.reason is not None:
        failure = {**failure, "ename": watchdog.reason, "evalue": watchdog.detail}
    ledger = Ledger(spec.ledger)
    unfinished = ledger.get(run_id)
    if unfinished is not None and unfinished.state == "running" and _alive(kernel):
        watchdog.finish_in_kernel(failure, spec.output)  # the epilogue did not run: run it now
    retire(kernel)
    if failure:
        ledger.mark_crashed(run_id, error=f"{failure['ename']}: {failure['evalue']}")  # only if still running
    ledger.set_output(run_id, spec.output)
    record = ledger.get(run_id)
    if record is not None:
        state = record.state
    else:  # the run never opened: stopped before or during the prologue, or the kernel died there
        state = "interrupted" if failure.get("ename") == "KeyboardInterrupt" else "crashed"
    if watchdog.reason == "TimeoutError" and state != "finished":
        state = "failed"
    return NotebookResult(
        run_id=run_id,
        state=state,
        exit_code=record.exit_code if record is not None else None,
        output=spec.output,
        parameters=dict(spec.parameters),
        summary=dict(record.summary) if record is not None else {},
        duration=time.time() - started,
        cell_index=failure.get("cell_index"),
        ename=failure.get("ename"),
        evalue=failure.get("evalue"),
    )


def _prologue(spec: TrialSpec) -> str:
    context = json.dumps(spec.context.to_json())
    parameters = json.dumps(json.dumps(spec.parameters, default=str))
    return f"__import__('wandbflow.trial').trial.begin({context}, {parameters}, {spec.sweep_ref!r})"


def _epilogue(failure: dict[str, Any] | None, output: str) -> str:
    failure_json = json.dumps(json.dumps(failure)) if failure else "None"
    return f"__import__('wandbflow.trial').trial.end({failure_json}, {json.dumps(output)})"


_INTERRUPTED: dict[str, Any] = {"cell_index": None, "ename": "KeyboardInterrupt", "evalue": "stopped by the user"}


def _alive(kernel: Any) -> bool:
    try:
        return bool(kernel.is_alive())
    except Exception:  # a manager whose process is gone
        return False


class _Watchdog:
    """Interrupts the kernel at the timeout or on cancel; kills it if it does not yield within a grace period."""

    def __init__(self, kernel: Any, timeout: float | None, cancel: threading.Event | None) -> None:
        self.kernel = kernel
        self.timeout = timeout
        self.cancel = cancel or threading.Event()
        self.reason: str | None = None
        self.detail = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="wandbflow-watchdog", daemon=True)

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        while not self._done.is_set():
            if self.cancel.is_set():
                self.reason, self.detail = "KeyboardInterrupt", "cancelled"
            elif deadline is not None and time.monotonic() >= deadline:
                self.reason, self.detail = "TimeoutError", f"ran past its timeout of {self.timeout:g}s"
            if self.reason is not None:
                self._stop()
                return
            self._done.wait(0.1)

    def epilogue_for(self, failure: dict[str, Any] | None, output: str) -> str:
        """The epilogue for how the cells ended; a timeout fails the run rather than marking it interrupted."""
        if self.reason == "TimeoutError":
            failure = {**(failure or {}), "ename": self.reason, "evalue": self.detail}
        return _epilogue(failure, output)

    def finish_in_kernel(self, failure: dict[str, Any], output: str) -> None:
        """Make the kernel finish its run now (Ctrl-C here, or an interrupt that hit the prologue or epilogue).

        Interrupts the kernel first when Ctrl-C stopped this process; best effort: a run that stays open is then
        recorded as crashed by the caller.
        """
        self._done.set()
        try:
            if failure is _INTERRUPTED:
                self.kernel.interrupt_kernel()
            with kernels.ready_client(self.kernel, timeout=EPILOGUE_TIMEOUT_S) as client:
                client.execute_interactive(
                    self.epilogue_for(failure, output), silent=True, store_history=False, timeout=EPILOGUE_TIMEOUT_S
                )
        except Exception:  # best effort, see above
            logger.warning("wandbflow: the kernel did not finish its run", exc_info=True)

    def _stop(self) -> None:
        try:
            self.kernel.interrupt_kernel()
        except Exception:  # the kernel may already be gone
            logger.debug("wandbflow: interrupt failed", exc_info=True)
        if not self._done.wait(TIMEOUT_GRACE_S + EPILOGUE_TIMEOUT_S):
            logger.warning("wandbflow: the kernel did not stop after an interrupt; killing it")
            kernels.shutdown(self.kernel)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def run_notebook(
    path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    strict: bool = True,
    timeout: float | None = None,
    kernel_name: str = "python3",
    cwd: str | os.PathLike[str] | None = None,
    **settings: Any,
) -> NotebookResult:
    """Execute a notebook with papermill as one W&B run owned by its kernel.

    Args:
        path: The notebook.
        parameters: Values injected after the cell tagged ``parameters``; they are the run's config.
        output: Where the executed notebook is saved (default ``<wandb dir>/notebooks/<run id>.ipynb``); it is
            also saved into the run.
        strict: Require a parameters cell that defines every parameter.
        timeout: Seconds after which the kernel is interrupted (and killed if it does not stop).
        kernel_name: The Jupyter kernel to run it in.
        cwd: The kernel's working directory (default: the notebook's directory).
        **settings: ``wandb_config`` fields for the run (project, group, tags, id, mode, ...).

    Returns:
        How the run ended; ``result.state == "finished"`` when every cell ran.

    Raises:
        NotebookError: Bad input, found before the notebook runs (see :func:`check_notebook`).
        NotebookExecutionError: A cell raised, the kernel died or the timeout passed; the run is finished with that
            state and the executed notebook is saved (``output``).
        KeyboardInterrupt: Ctrl-C: the run is finished as interrupted and the kernel shut down first.
    """
    params = dict(parameters or {})
    source = str(Path(path).absolute())
    check_notebook(source, params, strict=strict)
    settings_module.check_fields(settings)
    resolved = settings_module.resolve(settings)
    run_id = resolved.get("id") or naming.fit(naming.next_base(naming.sanitize(Path(source).stem)))
    ledger = str(default_path(resolved.get("dir")))
    out = str(Path(output).absolute()) if output else str(Path(ledger).parent / "notebooks" / f"{run_id}.ipynb")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    context = inherit.make_context(resolved.values, session=naming.session_id(), run_id=run_id, notebook=source)
    spec = TrialSpec(source, out, params, context, ledger, timeout)
    kernel = kernels.start_kernel(
        kernel_name=kernel_name, cwd=str(cwd or Path(source).parent), env=kernel_environment(ledger)
    )
    cancel = threading.Event()
    try:
        result = execute(spec, kernel, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        kernels.shutdown(kernel)
        Ledger(ledger).mark_crashed(run_id, exit_code=255, error="KeyboardInterrupt: stopped by the user")
        raise
    if not result.ok:
        raise NotebookExecutionError(
            f"{source}: {_describe(result)}; executed notebook saved to {result.output}",
            path=source,
            state=result.state,
            run_id=result.run_id,
            output=result.output,
            cell_index=result.cell_index,
            ename=result.ename,
            evalue=result.evalue,
        )
    return result


def _describe(result: NotebookResult) -> str:
    if result.cell_index is not None:
        return f"cell {result.cell_index} raised {result.ename}: {result.evalue} (run {result.state})"
    return f"{result.ename}: {result.evalue} (run {result.state})"


def kernel_environment(ledger: str) -> dict[str, str]:
    """The environment a trial kernel starts with: this process's, minus its inherited context, plus the ledger.

    The trial's own context is handed over by the prologue, not the environment, so a kernel started ahead of time
    can take any trial. Each kernel starts its own W&B service rather than sharing this process's
    (``WANDB_SERVICE``): a shared service would close a dead kernel's run as finished when this process exits.
    """
    env = {k: v for k, v in os.environ.items() if k not in (inherit.ENV_VAR, "WANDB_RUN_ID", "WANDB_SERVICE")}
    env["WANDBFLOW_LEDGER"] = ledger
    env.setdefault("WANDB_SILENT", "true")
    return env
