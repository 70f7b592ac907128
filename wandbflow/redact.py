"""Secrets never leave the process: values under secret-looking keys become ``***``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_SECRET_KEY = re.compile(r"api_?key|token|secret|password|passwd|credential", re.IGNORECASE)
SECRET_ENV_VARS = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_CREDENTIALS_FILE")


def is_secret_key(key: object) -> bool:
    """True when ``key`` looks like it names a credential (``*api_key*``, ``*token*``, ``*secret*``, ...)."""
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def redact(value: Any) -> Any:
    """Return ``value`` with every entry under a secret-looking key replaced by ``***``, recursively."""
    if isinstance(value, Mapping):
        return {k: MASK if is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value
