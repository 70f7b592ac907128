"""Settings resolution: ``wandb_config`` and the precedence of every field.

Highest first: explicit argument > innermost ``with wandb_config(...)`` block > context inherited from the
orchestrating process > notebook-wide default > ``WANDB_*`` environment variables > built-in default. Nested
configs merge: a tier overrides only the fields it names, and the ``config`` dicts of all tiers merge key by key.

Pure: imports neither wandb nor torch.
"""

from __future__ import annotations

import contextvars
import netrc
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from wandbflow import inherit, naming
from wandbflow.errors import ConfigError
from wandbflow.policy import check_rank_scope, check_run_mode

FIELDS: tuple[str, ...] = (
    "project",
    "entity",
    "host",
    "id",
    "name",
    "tags",
    "config",
    "notes",
    "mode",
    "group",
    "job_type",
    "dir",
    "run_mode",
    "rank_scope",
)

# Other ``wandb.init`` keywords a user may pass through; wandbflow owns ``reinit`` and ``settings``' base_url.
# A test pins this list against the installed wandb so an upgrade that changes it fails loudly.
INIT_KEYWORDS: frozenset[str] = frozenset(
    {
        "allow_val_change",
        "anonymous",
        "config_exclude_keys",
        "config_include_keys",
        "force",
        "fork_from",
        "monitor_gym",
        "resume",
        "resume_from",
        "save_code",
        "settings",
        "sync_tensorboard",
        "tensorboard",
    }
)

MODES = ("online", "offline", "disabled")
BUILTIN_DEFAULTS: dict[str, Any] = {"run_mode": "auto", "rank_scope": "global"}
ENV_VARS: dict[str, str] = {
    "project": "WANDB_PROJECT",
    "entity": "WANDB_ENTITY",
    "host": "WANDB_BASE_URL",
    "mode": "WANDB_MODE",
    "group": "WANDB_RUN_GROUP",
    "job_type": "WANDB_JOB_TYPE",
    "tags": "WANDB_TAGS",
    "notes": "WANDB_NOTES",
    "dir": "WANDB_DIR",
    "name": "WANDB_NAME",
}
DEFAULT_HOST = "https://api.wandb.ai"

# Where a resolved value came from, highest precedence first. "parent" is the enclosing scope in this process:
# its project, entity, host, mode, dir and tags reach child steps, ranking above the blocks it was opened in.
SOURCES = ("argument", "block", "parent", "inherited", "session", "environment", "default")
FROM_PARENT = ("project", "entity", "host", "mode", "dir", "tags")


class WandbConfig(Mapping[str, Any]):
    """Run settings returned by :func:`wandb_config`.

    Created by calling ``wandb_config(...)``, which applies the settings as the session-wide default at once.
    Used as ``with wandb_config(...):`` they apply only inside the block (context-local: other threads and async
    tasks do not see them) and the session default is left as it was.
    """

    def __init__(self, fields: Mapping[str, Any], *, previous_default: dict[str, Any] | None) -> None:
        self._fields = dict(fields)
        self._previous_default = previous_default
        self._tokens: list[contextvars.Token[tuple[dict[str, Any], ...]]] = []

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"wandb_config({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"

    def __enter__(self) -> WandbConfig:
        if self._previous_default is not None:
            _restore_default(self._previous_default)
            self._previous_default = None
        self._tokens.append(_blocks.set((*_blocks.get(), self._fields)))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _blocks.reset(self._tokens.pop())


@dataclass(frozen=True)
class Resolved:
    """Settings after precedence: ``values`` holds every field that has one, ``sources`` where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]

    def get(self, key: str, default: Any = None) -> Any:
        """The resolved value of ``key``, or ``default``."""
        return self.values.get(key, default)

    def init_extras(self) -> dict[str, Any]:
        """The pass-through ``wandb.init`` keywords among the values."""
        return {k: v for k, v in self.values.items() if k in INIT_KEYWORDS}


_default_lock = threading.Lock()
_session_default: dict[str, Any] = {}
_blocks: contextvars.ContextVar[tuple[dict[str, Any], ...]] = contextvars.ContextVar(
    "wandbflow_config_blocks", default=()
)


def wandb_config(**fields: Any) -> WandbConfig:
    """Set W&B run settings for this session, or, used with ``with``, for one block.

    Args:
        **fields: Any of project, entity, host (base URL), id, name, tags, config, notes, mode, group, job_type,
            dir, run_mode, rank_scope, or another ``wandb.init`` keyword (save_code, resume, settings, ...).

    Returns:
        The settings, as a mapping that is also a context manager.

    Raises:
        ConfigError: An unknown field or an invalid value; nothing is applied then.
    """
    checked = check_fields(fields)
    global _session_default
    with _default_lock:
        previous = dict(_session_default)
        _session_default = merge(_session_default, checked)
    return WandbConfig(checked, previous_default=previous)


def _restore_default(previous: dict[str, Any]) -> None:
    global _session_default
    with _default_lock:
        _session_default = previous


def reset_session_default() -> None:
    """Forget the session-wide default (``%wandb_config --reset``)."""
    _restore_default({})


def merge(lower: Mapping[str, Any], upper: Mapping[str, Any]) -> dict[str, Any]:
    """``upper`` over ``lower``: fields of ``upper`` win, ``config`` dicts merge key by key."""
    merged = dict(lower)
    for key, value in upper.items():
        if key == "config" and isinstance(merged.get("config"), Mapping):
            merged["config"] = {**merged["config"], **value}
        else:
            merged[key] = value
    return merged


def check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate settings given by a user; return them unchanged (a string id stays a string).

    Raises:
        ConfigError: naming the first bad field.
    """
    for key, value in fields.items():
        if key not in FIELDS and key not in INIT_KEYWORDS:
            known = ", ".join((*FIELDS, *sorted(INIT_KEYWORDS)))
            raise ConfigError(f"unknown setting (known: {known})", key=key)
        if value is None:
            continue
        if key == "run_mode":
            check_run_mode(value)
        elif key == "rank_scope":
            check_rank_scope(value)
        elif key == "id":
            naming.check_id(value)
        elif key == "mode" and value not in MODES:
            raise ConfigError(f"must be one of {', '.join(MODES)} (got {value!r})", key=key)
        elif key == "config" and not isinstance(value, Mapping):
            raise ConfigError(f"must be a mapping (got {type(value).__name__})", key=key)
        elif key == "tags" and (isinstance(value, str) or not all(isinstance(t, str) for t in value)):
            raise ConfigError(f"must be a list of strings (got {value!r})", key=key)
        elif key in {"project", "entity", "host", "name", "notes", "group", "job_type"} and not isinstance(value, str):
            raise ConfigError(f"must be a string (got {type(value).__name__} {value!r})", key=key)
    return {k: (list(v) if k == "tags" else v) for k, v in fields.items() if v is not None}


def _environment_tier(environ: Mapping[str, str]) -> dict[str, Any]:
    tier: dict[str, Any] = {}
    for key, var in ENV_VARS.items():
        value = environ.get(var)
        if value:
            tier[key] = [t.strip() for t in value.split(",") if t.strip()] if key == "tags" else value
    return tier


def block_depth() -> int:
    """How many ``with wandb_config`` blocks are open in this context (a scope remembers it when it opens)."""
    return len(_blocks.get())


def resolve(
    explicit: Mapping[str, Any] | None = None,
    *,
    parent: Resolved | None = None,
    parent_depth: int = 0,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Resolve every setting through the precedence tiers.

    Args:
        explicit: Settings given directly (decorator keywords, magic flags); validated here.
        parent: The enclosing scope's resolved settings, whose ``FROM_PARENT`` fields children inherit.
        parent_depth: ``block_depth()`` when the parent opened: blocks opened inside it rank above it.
        environ: The environment to read ``WANDB_*`` from; ``os.environ`` when None.

    Returns:
        The resolved values with the tier each came from. ``mode`` is always set: without one from any tier it is
        ``online`` when W&B credentials are present and ``offline`` otherwise.
    """
    env = os.environ if environ is None else environ
    context = inherit.current()
    with _default_lock:
        session = dict(_session_default)
    tiers: list[tuple[str, Mapping[str, Any]]] = [
        ("default", BUILTIN_DEFAULTS),
        ("environment", _environment_tier(env)),
        ("session", session),
        ("inherited", context.settings if context else {}),
    ]
    blocks = _blocks.get()
    depth = min(parent_depth, len(blocks))
    tiers += [("block", block) for block in blocks[:depth]]
    if parent is not None:
        tiers.append(("parent", {k: parent.values[k] for k in FROM_PARENT if k in parent.values}))
    tiers += [("block", block) for block in blocks[depth:]]
    tiers.append(("argument", check_fields(explicit or {})))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, tier in tiers:
        values = merge(values, tier)
        sources.update(dict.fromkeys(tier, source))
    if "mode" not in values:
        values["mode"] = "online" if has_credentials(values.get("host"), env) else "offline"
        sources["mode"] = "default"
    return Resolved(values=values, sources=sources)


def has_credentials(host: str | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when a W&B API key is available: ``WANDB_API_KEY`` or a netrc entry for the host."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_API_KEY"):
        return True
    machine = urlparse(host or env.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    path = env.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(machine) is not None
    except (OSError, netrc.NetrcParseError):
        return False
