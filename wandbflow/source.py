"""Where a run's code came from: the notebook's path, and the cell source saved into the run.

The notebook path is, first found: ``WANDB_NOTEBOOK_NAME``; ``PAPERMILL_INPUT_PATH`` (a variable papermill
injects with ``--inject-paths``, or the same name in the environment); what W&B's own detection found for the run.
W&B's detection asks the Jupyter server and fails for kernels started with a temporary connection file; then the
path stays unknown and a notebook user is told so once, rather than given a guess.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wandb import Settings
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger("wandbflow")

_notice_lock = threading.Lock()
_unknown_notice_shown = False


def notebook_from_environment() -> str | None:
    """The notebook path named by ``WANDB_NOTEBOOK_NAME``, else by ``PAPERMILL_INPUT_PATH`` (variable or env)."""
    named = os.environ.get("WANDB_NOTEBOOK_NAME")
    if named:
        return named
    ipython_module = sys.modules.get("IPython")
    shell = ipython_module.get_ipython() if ipython_module is not None else None
    injected = shell.user_ns.get("PAPERMILL_INPUT_PATH") if shell is not None else None
    if isinstance(injected, str) and injected and injected != "-":
        return injected
    return os.environ.get("PAPERMILL_INPUT_PATH") or None


def notebook_path(run_settings: Settings | None = None) -> str | None:
    """The path of the notebook the code runs in, or None outside a notebook or when it cannot be told.

    Args:
        run_settings: A run's settings (``run.settings``), holding what W&B's own detection found.
    """
    from wandbflow.display import in_notebook

    found = notebook_from_environment()
    if found is None and run_settings is not None:
        found = getattr(run_settings, "x_jupyter_path", None) or getattr(run_settings, "notebook_name", None) or None
    if found is None and in_notebook():  # not on launched ranks: in_notebook() is False there
        _say_unknown_once()
    return found


def _say_unknown_once() -> None:
    global _unknown_notice_shown
    with _notice_lock:
        if _unknown_notice_shown:
            return
        _unknown_notice_shown = True
    logger.warning(
        "wandbflow: cannot tell this notebook's path (the kernel's Jupyter server does not say); set "
        "WANDB_NOTEBOOK_NAME to record it. Each task still saves its cell source into its run."
    )


def save_file(run: Run, relative: str, text: str) -> Path:
    """Write ``text`` to ``relative`` (e.g. ``code/prepare.py``) in the run's files and record it in the run.

    Recorded files are uploaded with the run (offline: when it is synced).
    """
    path = Path(run.dir) / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    run.save(str(path), base_path=run.dir, policy="now")
    return path
