"""Run ids: the session id, per-task execution counters, and W&B id validity.

A scope's base id is ``{session}-{task}-{n}``: ``session`` is stable for one kernel (and handed to every rank and
trial it starts), ``task`` names the cell or step, ``n`` counts executions of that task in the session.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from collections import Counter

from wandbflow import inherit
from wandbflow.errors import ConfigError

MAX_ID_LENGTH = 64
_VALID_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_-]+")

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_session: str | None = None


def session_id() -> str:
    """The id of this session: inherited from the orchestrating process, derived from torchrun, or new."""
    global _session
    with _lock:
        if _session is None:
            _session = _initial_session()
        return _session


def _initial_session() -> str:
    context = inherit.current()
    if context is not None and context.session:
        return context.session
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id and run_id != "none":
        return sanitize(run_id)
    if run_id == "none":
        # torchrun without --rdzv-id: the agent is the ranks' common parent on one node.
        return f"tr{os.getppid()}"
    return secrets.token_hex(4)


def next_base(task: str) -> str:
    """Return a new base id for one execution of ``task``: ``{session}-{task}-{n}``."""
    name = sanitize(task) or "task"
    with _lock:
        _counts[name] += 1
        n = _counts[name]
    return fit(f"{session_id()}-{name}-{n}")


def sanitize(text: str) -> str:
    """Turn ``text`` into id characters (letters, digits, ``-``, ``_``)."""
    return _INVALID_CHARS.sub("-", text).strip("-")


def fit(run_id: str) -> str:
    """Shorten ``run_id`` to at most 64 characters, a short hash of the whole replacing the overflow."""
    if len(run_id) <= MAX_ID_LENGTH:
        return run_id
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]
    return f"{run_id[: MAX_ID_LENGTH - 9]}-{digest}"


def check_id(run_id: object, *, key: str = "id") -> str:
    """Return a user-given run id unchanged, or raise :class:`ConfigError` if W&B would reject it."""
    if not isinstance(run_id, str):
        raise ConfigError(f"must be a string (got {type(run_id).__name__} {run_id!r})", key=key)
    if not _VALID_ID.match(run_id):
        raise ConfigError(f"may hold only letters, digits, '-' and '_' (got {run_id!r})", key=key)
    if len(run_id) > MAX_ID_LENGTH:
        raise ConfigError(f"must be at most {MAX_ID_LENGTH} characters (got {len(run_id)})", key=key)
    return run_id
