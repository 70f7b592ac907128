"""The command line, in process and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import leet_summary

from wandbflow import cli
from wandbflow.ledger import Ledger, RunRecord


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    path = tmp_path / "l.db"
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(path))
    ledger = Ledger(path)
    ledger.record_start(RunRecord(run_id="r-ok", project="p", started_at=1.0))
    ledger.record_finish("r-ok", state="finished", exit_code=0)
    ledger.record_start(RunRecord(run_id="r-bad", project="p", started_at=2.0))
    ledger.record_finish("r-bad", state="failed", exit_code=1)
    return ledger


def test_runs_table_and_json(ledger, capsys):
    assert cli.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "r-ok" in out and "r-bad" in out and "failed" in out
    assert cli.main(["runs", "--json", "--state", "failed"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run_id"] for r in lines] == ["r-bad"]


def test_empty_ledger_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(tmp_path / "empty.db"))
    assert cli.main(["runs"]) == 0
    assert "no runs recorded" in capsys.readouterr().out


def test_help_and_bad_flag(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        cli.main(["runs", "--colour", "red"])
    assert info.value.code == 2
    assert "--colour" in capsys.readouterr().err


def test_console_script(ledger):
    exe = shutil.which("wandbflow", path=os.path.dirname(sys.executable))
    assert exe, "the wandbflow console script is installed"
    out = subprocess.run([exe, "runs", "--json"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert {json.loads(line)["run_id"] for line in out.splitlines()} == {"r-ok", "r-bad"}
    assert subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.startswith(
        "wandbflow "
    )


@pytest.mark.timeout(180)
def test_demo_runs_offline_and_records_its_runs(wandb_env):
    exe = shutil.which("wandbflow", path=os.path.dirname(sys.executable))
    done = subprocess.run(
        [exe, "demo", "--dir", str(wandb_env / "demo")],
        capture_output=True,
        text=True,
        timeout=170,
        env={k: v for k, v in os.environ.items() if k != "WANDB_DIR"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wandb sync" in done.stdout
    rows = Ledger(wandb_env / "demo" / "wandb" / "wandbflow.db").records()
    assert sorted(r.state for r in rows) == ["failed"] + ["finished"] * 4
    for row in rows:
        assert leet_summary(row.dir)["exit_code"] == row.exit_code
