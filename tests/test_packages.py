"""The package list each run saves (``requirements.txt``), from wandbflow's cache instead of W&B's per-init scan."""

from __future__ import annotations

import sys
from importlib.metadata import version

import wandb
from conftest import leet_records, run_dirs

import wandbflow as wf
from wandbflow import packages


def _saved_files(run_dir) -> list[str]:
    return [f["path"] for r in leet_records(run_dir) if r["type"] == "files" for f in r["files"]["files"]]


def test_every_run_saves_its_package_list_once(wandb_env):
    for name in ("first", "second"):
        with wf.task(name):
            pass
    dirs = run_dirs(wandb_env)
    assert len(dirs) == 2
    for run_dir in dirs.values():
        lines = (run_dir / "files" / "requirements.txt").read_text().splitlines()
        assert f"wandb=={version('wandb')}" in lines
        names = [line.partition("==")[0] for line in lines]
        assert names == sorted(names, key=str.lower)
        assert _saved_files(run_dir).count("requirements.txt") == 1  # W&B's own scan was off


def test_a_run_whose_settings_turn_the_list_off_saves_none(wandb_env):
    given = wandb.Settings(x_save_requirements=False)
    with wf.task("bare", settings=given):
        pass
    (run_dir,) = run_dirs(wandb_env).values()
    assert not (run_dir / "files" / "requirements.txt").exists()
    assert "requirements.txt" not in _saved_files(run_dir)


def test_the_callers_settings_object_is_not_changed(wandb_env):
    given = wandb.Settings(silent=True)
    with wf.task("mine", settings=given):
        pass
    assert given.x_save_requirements is True


def test_a_package_installed_mid_session_is_in_the_next_list(tmp_path, monkeypatch):
    before = packages.requirements()
    assert packages.requirements() is before  # cached: nothing changed
    site = tmp_path / "site-packages"
    info = site / "wandbflow_probe-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wandbflow-probe\nVersion: 1.2.3\n")
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    assert "wandbflow-probe==1.2.3" in packages.requirements().splitlines()
    other = site / "wandbflow_probe2-0.1.dist-info"  # installed into a directory already on the path
    other.mkdir()
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: wandbflow-probe2\nVersion: 0.1\n")
    assert "wandbflow-probe2==0.1" in packages.requirements().splitlines()
