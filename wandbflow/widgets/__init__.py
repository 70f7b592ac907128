"""Notebook widgets: a sweep builder that writes a valid W&B sweep config, and a live monitor of a running sweep.

Plain ipywidgets composition (no custom JavaScript), so they work in JupyterLab and in VS Code notebooks.
"""

from wandbflow.widgets.builder import SweepBuilder
from wandbflow.widgets.monitor import SweepMonitor, TrialCancelled

__all__ = ["SweepBuilder", "SweepMonitor", "TrialCancelled"]
