"""The kernel's side of a notebook run: it owns the trial's run.

:mod:`wandbflow.notebooks` calls :func:`begin` silently in the kernel before the first cell and :func:`end` after
the last one. ``begin`` adopts the context the orchestrating process chose (run id, project, group, config: never a
secret), sets W&B's own ``WANDB_*`` variables so a plain ``wandb.init()`` joins the trial's run, and opens the run as
the ambient scope: ``%%wandb_task`` cells and ``@wandb_init`` steps in the notebook are its children. ``end`` saves the
executed notebook into the run and finishes it with the state the cells ended in.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

from wandbflow import inherit
from wandbflow.errors import NotebookExecutionError
from wandbflow.scope import Scope

_trial: Scope | None = None


def warm(*, torch: bool = False, sweep_ref: str | None = None) -> None:
    """Get this kernel ready for a trial, off the trial's clock.

    W&B's service up, its first-run imports done, the package list scanned, the sweep attached (its storage
    opened when it prunes) and torch imported when asked. A pooled kernel runs it while the previous trial still
    runs.
    """
    import wandb

    from wandbflow import packages

    wandb.setup().ensure_service()
    packages.requirements()
    with contextlib.suppress(ImportError):  # what wandb imports at its first init in a process (about 0.6 s)
        importlib.import_module("wandb.sdk.launch")
    if sweep_ref is not None:
        from wandbflow.sweeps.sweep import attach

        attach(sweep_ref).connect()
    if torch:
        importlib.import_module("torch")


def begin(context_json: str, parameters_json: str, sweep_ref: str | None = None) -> None:
    """Open the trial's run in this kernel (called by the orchestrating process, before the first cell).

    Args:
        context_json: The :class:`~wandbflow.inherit.InheritedContext` the orchestrator chose, as JSON.
        parameters_json: The notebook's parameters, as JSON: the run's config.
        sweep_ref: For a sweep trial, the sweep's reference: the run's ``log`` then feeds the sweep's pruner.
    """
    global _trial
    context = inherit.InheritedContext.from_json(context_json)
    inherit.adopt(context)
    os.environ.update(inherit.child_environment(context))
    name = Path(context.notebook).stem if context.notebook else "notebook"
    settings: dict[str, Any] = {"id": context.run_id, "config": json.loads(parameters_json)}
    _trial = Scope(name, settings, source_kind="notebook", source=context.notebook, quiet=True)
    _trial.start(ambient=True)
    if sweep_ref is not None and context.trial_id is not None and _trial.run is not None:
        from wandbflow.sweeps import watch

        watch(_trial.run, sweep_ref, int(context.trial_id))


def end(failure_json: str | None, output: str | None) -> None:
    """Save the executed notebook into the trial's run and finish it (called after the last cell ran).

    Args:
        failure_json: The failed cell as JSON (``cell_index``, ``ename``, ``evalue``), or None when every cell ran.
        output: The executed notebook's path, saved into the run as ``notebook/<name>``.
    """
    global _trial
    scope, _trial = _trial, None
    if scope is None:
        return
    if output is not None and os.path.exists(output):
        scope.save_file(f"notebook/{Path(output).name}", Path(output).read_text(encoding="utf-8"))
    scope.end(_error(json.loads(failure_json), scope) if failure_json else None)


def _error(failure: dict[str, Any], scope: Scope) -> BaseException | None:
    """The exception that finishes the run with the right exit code: 255 for an interrupt, 1 for a failure.

    None for a trial its sweep's pruner stopped: it finishes, tagged ``pruned``, and the sweep records it pruned.
    """
    if failure.get("ename") == "TrialPruned":
        if scope.run is not None:
            scope.run.tags = (*(scope.run.tags or ()), "pruned")
        return None
    if failure.get("ename") == "KeyboardInterrupt":
        return KeyboardInterrupt()
    return NotebookExecutionError(
        f"cell {failure.get('cell_index')} raised {failure.get('ename')}: {failure.get('evalue')}",
        path=str(scope.source),
        state="failed",
        run_id=scope.run.id if scope.run is not None else None,
        cell_index=failure.get("cell_index"),
        ename=failure.get("ename"),
        evalue=failure.get("evalue"),
    )
