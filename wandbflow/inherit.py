"""The context an orchestrating process hands to the processes it starts (ranks, trial kernels).

One function writes it (:func:`child_environment`), one reads it (:func:`current`). It travels as one JSON
environment variable, plus W&B's own ``WANDB_*`` variables so that a plain ``wandb.init()`` in the child lands in
the right project, group and run. A kernel started ahead of time receives it through :func:`adopt` instead.
Never a secret: settings pass through :func:`wandbflow.redact.redact` and credentials are not part of it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from wandbflow.redact import redact

ENV_VAR = "WANDBFLOW_CONTEXT"

# Settings a child inherits, and W&B's own variable for each (None: no W&B variable).
INHERITED_SETTINGS: dict[str, str | None] = {
    "project": "WANDB_PROJECT",
    "entity": "WANDB_ENTITY",
    "host": "WANDB_BASE_URL",
    "mode": "WANDB_MODE",
    "group": "WANDB_RUN_GROUP",
    "job_type": "WANDB_JOB_TYPE",
    "dir": "WANDB_DIR",
    "tags": "WANDB_TAGS",
    "notes": None,
    "config": None,
}


@dataclass(frozen=True)
class InheritedContext:
    """What a child process inherits from the process that started it.

    Attributes:
        session: The orchestrating kernel's session id, so run ids agree across processes.
        settings: Resolved settings (project, entity, host, mode, group, job_type, dir, tags, notes, config).
        base: The base id of the scope the child runs (a launched function or cell); consumed by its first scope.
        run_id: The run the child owns (a sweep trial's run), None when it derives its own.
        sweep_id: The sweep the child serves, if any.
        trial_id: The trial the child runs, if any.
        notebook: The notebook path the child executes, if any.
    """

    session: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    base: str | None = None
    run_id: str | None = None
    sweep_id: str | None = None
    trial_id: str | None = None
    notebook: str | None = None

    def to_json(self) -> str:
        """This context as one JSON string."""
        return json.dumps(asdict(self), default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InheritedContext:
        """Rebuild a context written by :meth:`to_json`; unknown keys are ignored."""
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


_lock = threading.Lock()
_adopted: InheritedContext | None = None
_read = False


def make_context(
    settings: Mapping[str, Any],
    *,
    session: str,
    base: str | None = None,
    run_id: str | None = None,
    sweep_id: str | None = None,
    trial_id: str | None = None,
    notebook: str | None = None,
) -> InheritedContext:
    """Build the context for a child from resolved settings; only inheritable, non-secret fields are kept."""
    kept = {k: settings[k] for k in INHERITED_SETTINGS if settings.get(k) is not None}
    return InheritedContext(
        session=session,
        settings=redact(kept),
        base=base,
        run_id=run_id,
        sweep_id=sweep_id,
        trial_id=trial_id,
        notebook=notebook,
    )


def child_environment(context: InheritedContext) -> dict[str, str]:
    """The environment variables that hand ``context`` to a child process.

    Includes W&B's own variables (project, entity, mode, group, run id, ...) so a plain ``wandb.init()`` in the
    child joins the same project and group, and the trial's run when ``context.run_id`` is set.
    """
    env = {ENV_VAR: context.to_json()}
    for key, var in INHERITED_SETTINGS.items():
        value = context.settings.get(key)
        if var is None or value is None:
            continue
        env[var] = ",".join(value) if isinstance(value, list | tuple) else str(value)
    if context.run_id:
        env["WANDB_RUN_ID"] = context.run_id
    if context.sweep_id:
        env["WANDBFLOW_SWEEP_ID"] = context.sweep_id
    if context.notebook:
        env["WANDB_NOTEBOOK_NAME"] = context.notebook
    return env


def current() -> InheritedContext | None:
    """The context this process inherited (adopted, or read once from the environment), or None."""
    global _read, _adopted
    with _lock:
        if not _read:
            _read = True
            text = os.environ.get(ENV_VAR)
            if text and _adopted is None:
                _adopted = InheritedContext.from_json(text)
        return _adopted


def adopt(context: InheritedContext | None) -> None:
    """Make ``context`` this process's inherited context (a pre-started kernel receiving its trial)."""
    global _adopted, _read
    with _lock:
        _adopted, _read = context, True


def take_base() -> str | None:
    """Return the inherited base id once; later calls return None (only the child's first scope uses it)."""
    global _adopted
    context = current()
    if context is None or context.base is None:
        return None
    with _lock:
        base = context.base
        _adopted = InheritedContext(**{**asdict(context), "base": None})
    return base
