"""The Binder files parse, pin what they must, and point at notebooks that exist."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINDER = ROOT / "binder"


def requirements() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_pin_cpu_torch_from_pytorchs_cpu_index():
    reqs = requirements()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in reqs
    (torch,) = [r for r in reqs if re.match(r"torch\b", r)]
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+\+cpu", torch), torch
    assert any(r.startswith("jupyterlab") for r in reqs)


def test_every_requirement_parses():
    from packaging.requirements import Requirement

    for line in requirements():
        if not line.startswith("--"):
            Requirement(line)


def test_scripts_are_executable_bash_that_parses():
    for name in ("postBuild", "start"):
        path = BINDER / name
        assert os.access(path, os.X_OK), f"{name} must be executable"
        assert path.read_text().startswith("#!/usr/bin/env bash")
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_postbuild_installs_the_package_and_start_sets_offline_mode():
    assert "pip install" in (BINDER / "postBuild").read_text()
    start = (BINDER / "start").read_text()
    assert "WANDB_MODE=offline" in start and 'exec "$@"' in start


def test_binder_link_in_the_readme_opens_existing_notebooks():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"mybinder\.org/v2/[^\s)]*?urlpath=lab/tree/([\w./%-]+)", readme)
    assert links, "the README links the repository on mybinder"
    for target in links:
        assert (ROOT / target.replace("%2F", "/")).exists(), target
