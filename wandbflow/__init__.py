"""wandbflow: Weights & Biases tracking as part of how notebook work runs.

Declare intent once (project, entity, run_mode, sweep space); wandbflow opens, links, scopes and finishes the runs
of notebook cells, pipeline steps, multi-process training and notebook sweep trials.

``import wandbflow`` stays light: wandb, torch, optuna, papermill and ipywidgets are imported where they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

from wandbflow.config import wandb_config
from wandbflow.errors import (
    ConfigError,
    LaunchError,
    LedgerError,
    NotebookError,
    NotebookExecutionError,
    ScopeError,
    SweepConfigError,
    SweepError,
    TrialPruned,
    WandbflowError,
)
from wandbflow.scope import Scope, get_wandb_run, get_wandb_run_dir, task, wandb_init
from wandbflow.topology import get_distributed_info

__version__ = "0.1.0"

# Public names whose modules import heavy dependencies: loaded on first access.
_LAZY: dict[str, str] = {
    "runs": "wandbflow.ledger",
    "launch": "wandbflow.launcher",
    "run_notebook": "wandbflow.notebooks",
    "sweep_notebook": "wandbflow.notebook_sweep",
    "NotebookResult": "wandbflow.notebooks",
    "wandb_sweep_config": "wandbflow.sweeps",
    "wandb_sweep": "wandbflow.sweeps",
    "get_wandb_sweep_id": "wandbflow.sweeps",
    "sweep": "wandbflow.sweeps",
    "agent": "wandbflow.sweeps",
    "SweepBuilder": "wandbflow.widgets",
    "SweepMonitor": "wandbflow.widgets",
}

__all__ = [
    "ConfigError",
    "LaunchError",
    "LedgerError",
    "NotebookError",
    "NotebookExecutionError",
    "NotebookResult",
    "Scope",
    "ScopeError",
    "SweepBuilder",
    "SweepConfigError",
    "SweepError",
    "SweepMonitor",
    "TrialPruned",
    "WandbflowError",
    "agent",
    "get_distributed_info",
    "get_wandb_run",
    "get_wandb_run_dir",
    "get_wandb_sweep_id",
    "launch",
    "load_ipython_extension",
    "run_notebook",
    "runs",
    "sweep",
    "sweep_notebook",
    "task",
    "wandb_config",
    "wandb_init",
    "wandb_sweep",
    "wandb_sweep_config",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext wandbflow``: register the magics (``%%wandb_task``, ``%wandb_config``, ``%wandb_pipeline``)."""
    from wandbflow import magics

    magics.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext wandbflow``: remove every hook the extension registered."""
    from wandbflow import magics

    magics.unload_ipython_extension(ipython)


def __getattr__(name: str) -> Any:
    if name == "run":  # ``wandbflow.run``: the current scope's run, looked up on every access
        return get_wandb_run()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wandbflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
