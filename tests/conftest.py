"""Shared fixtures: an isolated offline W&B environment and readers of what reached the run files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from wandbflow import config, inherit, naming

WANDB = shutil.which("wandb", path=os.path.dirname(sys.executable)) or "wandb"


def leet_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """State, exit code, summary and config of a run, as W&B's own reader sees the run file."""
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--summary", "--json", str(run_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return json.loads(out)


def leet_records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a run file."""
    out = subprocess.run(
        [WANDB, "leet", "inspect", "--json", str(run_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def run_record(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run record (id, group, job_type, project, config) of a run file."""
    return next(r["run"] for r in leet_records(run_dir) if r["type"] == "run")


def run_dirs(root: Path) -> dict[str, Path]:
    """Run id -> run directory, for every offline run under ``root``/wandb.

    Only directories holding a run file count: a plain ``wandb.init()`` that returns an open run (our scopes make it
    do that) still leaves an empty log directory behind, a wandb quirk.
    """
    found: dict[str, Path] = {}
    for path in sorted((root / "wandb").glob("offline-run-*")):
        if any(path.glob("run-*.wandb")):
            found[path.name.split("-", 3)[-1]] = path
    return found


def missing_service(reason: str) -> None:
    """A system service a test needs (PostgreSQL, chromium) is not installed: fail under ``.ci/run``, which
    installs them and sets ``WANDBFLOW_CI_SERVICES=1``; elsewhere (a fresh machine) skip with the reason shown."""
    if os.environ.get("WANDBFLOW_CI_SERVICES") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory holding this test's runs and ledger; no credentials, no WANDB_* settings."""
    for var in list(os.environ):
        if var.startswith(("WANDB_", "WANDBFLOW_")) or var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _fresh_settings():
    config.reset_session_default()
    inherit.adopt(None)
    naming._counts.clear()  # each test counts its tasks' executions from 1
    yield
    config.reset_session_default()
    inherit.adopt(None)
