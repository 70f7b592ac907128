"""Where a run can be seen: W&B URLs online, the run directory and ``wandb sync`` command offline."""

from __future__ import annotations

import shlex
from urllib.parse import urlparse

from wandbflow.config import DEFAULT_HOST


def app_url(host: str | None) -> str:
    """The W&B web app's base URL for an API host (``https://api.wandb.ai`` -> ``https://wandb.ai``)."""
    parsed = urlparse(host or DEFAULT_HOST)
    netloc = parsed.netloc[4:] if parsed.netloc.startswith("api.") else parsed.netloc
    return f"{parsed.scheme or 'https'}://{netloc}{parsed.path.rstrip('/')}"


def run_url(host: str | None, entity: str, project: str, run_id: str) -> str:
    """The page of one run."""
    return f"{app_url(host)}/{entity}/{project}/runs/{run_id}"


def group_url(host: str | None, entity: str, project: str, group: str) -> str:
    """The page of a run group."""
    return f"{app_url(host)}/{entity}/{project}/groups/{group}"


def sweep_url(host: str | None, entity: str, project: str, sweep_id: str) -> str:
    """The page of a sweep."""
    return f"{app_url(host)}/{entity}/{project}/sweeps/{sweep_id}"


def sync_command(*run_dirs: str) -> str:
    """The exact command that uploads offline runs once credentials exist."""
    return " ".join(["wandb", "sync", *(shlex.quote(d) for d in run_dirs)])
