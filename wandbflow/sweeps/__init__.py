"""Sweeps: W&B sweep configs validated in code, served by Optuna locally or by W&B's controller online.

``wandb_sweep_config(...)`` (or a YAML file, ``load_config``) declares the search; ``sweep(config)`` creates it on an
engine (``local`` Optuna, the offline default, or ``wandb``), ``sweep("ID")`` re-attaches; ``agent(sweep, fn)``
serves it with a function. External runners (a notebook per trial) drive the same sweep with ``Sweep.ask`` /
``Sweep.tell`` and, in the trial's process, ``watch(run, assignment.sweep_ref, assignment.number)``.
"""

from wandbflow.sweeps.decorator import get_wandb_sweep_id, wandb_sweep
from wandbflow.sweeps.engines import (
    TRIAL_STATES,
    SweepEngine,
    SweepInfo,
    TrialAssignment,
    TrialMonitor,
    TrialRecord,
    get_engine,
)
from wandbflow.sweeps.spec import SweepConfig
from wandbflow.sweeps.sweep import Sweep, agent, attach, load, sweep
from wandbflow.sweeps.trial import TrialWatch, should_prune, watch
from wandbflow.sweeps.validate import load_config, wandb_sweep_config

__all__ = [
    "TRIAL_STATES",
    "Sweep",
    "SweepConfig",
    "SweepEngine",
    "SweepInfo",
    "TrialAssignment",
    "TrialMonitor",
    "TrialRecord",
    "TrialWatch",
    "agent",
    "attach",
    "get_engine",
    "get_wandb_sweep_id",
    "load",
    "load_config",
    "should_prune",
    "sweep",
    "wandb_sweep",
    "wandb_sweep_config",
    "watch",
]
