"""The command line, in process and as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import leet_summary

import wandbflow
from wandbflow import cli
from wandbflow.ledger import Ledger, RunRecord

WANDBFLOW = shutil.which("wandbflow", path=os.path.dirname(sys.executable))


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    path = tmp_path / "l.db"
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(path))
    ledger = Ledger(path)
    ledger.record_start(RunRecord(run_id="r-ok", project="p", group="g", mode="offline", started_at=1.0))
    ledger.record_finish("r-ok", state="finished", exit_code=0, finished_at=3.5)
    ledger.record_start(RunRecord(run_id="r-bad", project="p", job_type="eval", started_at=2.0, sweep_id="s1"))
    ledger.record_finish("r-bad", state="failed", exit_code=1, finished_at=2.5)
    ledger.record_start(RunRecord(run_id="r-live", project="other", started_at=3.0, dir="/runs/live"))
    return ledger


def test_runs_table(ledger, capsys):
    assert cli.main(["runs"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == cli.RUNS_COLUMNS
    assert [row.split()[0] for row in rows] == ["r-live", "r-bad", "r-ok"], "newest first"
    ok = rows[2].split()
    assert ok[:7] == ["r-ok", "finished", "0", "p", "g", "-", "offline"] and ok[-2:] == ["2.5", "-"]
    assert rows[0].split()[1:3] == ["running", "-"] and rows[0].endswith("/runs/live")


def test_runs_filters_and_limit(ledger, capsys):
    assert cli.main(["runs", "--project", "p", "--state", "failed", "--sweep", "s1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["r-bad"]
    assert cli.main(["runs", "--limit", "1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["r-live"]
    assert cli.main(["runs", "--project", "nope"]) == 0
    assert "match the filters" in capsys.readouterr().out


def test_runs_json(ledger, capsys):
    assert cli.main(["runs", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run_id"] for r in lines] == ["r-live", "r-bad", "r-ok"]
    assert lines[1] == {**vars(ledger.get("r-bad"))}, "every field of the record"
    assert cli.main(["runs", "--json", "--state", "failed", "--limit", "5"]) == 0
    assert [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()] == ["r-bad"]


def test_no_ledger_is_reported_and_not_created(tmp_path, monkeypatch, capsys):
    path = tmp_path / "wandb" / "wandbflow.db"
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(path))
    assert cli.main(["runs"]) == 0
    assert "no ledger at" in capsys.readouterr().err
    assert not path.exists() and not path.parent.exists()
    Ledger(path).records()
    assert cli.main(["runs"]) == 0
    assert "no runs recorded" in capsys.readouterr().out


def test_help_version_and_bad_usage(capsys):
    assert cli.main([]) == 0
    assert "runs" in capsys.readouterr().out, "no command prints the help"
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "runs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"wandbflow {wandbflow.__version__}"
    with pytest.raises(SystemExit) as info:
        cli.main(["runs", "--colour", "red"])
    assert info.value.code == 2
    assert "--colour" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["runs", "--limit", "0"])
    assert info.value.code == 2
    assert "--limit: must be >= 1 (got 0)" in capsys.readouterr().err


def test_a_ledger_error_is_one_line_and_status_1(tmp_path, monkeypatch, capsys):
    path = tmp_path / "not-a-db"
    path.write_text("this is not an SQLite file " * 100)
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(path))
    assert cli.main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wandbflow: error: cannot open the ledger") and err.count("\n") == 1


def test_console_script(ledger):
    assert WANDBFLOW, "the wandbflow console script is installed"
    done = subprocess.run([WANDBFLOW, "runs", "--json"], capture_output=True, text=True, check=True, timeout=60)
    assert [json.loads(line)["run_id"] for line in done.stdout.splitlines()] == ["r-live", "r-bad", "r-ok"]
    table = subprocess.run([WANDBFLOW, "runs"], capture_output=True, text=True, check=True, timeout=60).stdout
    assert table.split()[: len(cli.RUNS_COLUMNS)] == cli.RUNS_COLUMNS and "r-bad" in table
    assert subprocess.run([WANDBFLOW, "--help"], capture_output=True, text=True, timeout=60).returncode == 0
    version = subprocess.run([WANDBFLOW, "--version"], capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout.strip() == f"wandbflow {wandbflow.__version__}"


@pytest.mark.timeout(180)
def test_demo_runs_offline_and_records_its_runs(wandb_env):
    done = subprocess.run(
        [WANDBFLOW, "demo", "--dir", str(wandb_env / "demo")],
        capture_output=True,
        text=True,
        timeout=170,
        env={k: v for k, v in os.environ.items() if k != "WANDB_DIR"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wandb sync" in done.stdout
    rows = Ledger(wandb_env / "demo" / "wandb" / "wandbflow.db").records()
    # pipeline x2 (parent + grouped train child), the failing step, 2 ranks, 4 sweep trials, 1 notebook run
    assert sorted(r.state for r in rows) == ["failed"] + ["finished"] * 11
    assert {r.source_kind for r in rows} >= {"function", "block", "notebook"}
    assert len({r.sweep_id for r in rows if r.sweep_id}) == 1 and sum(r.rank is not None for r in rows) == 2
    for row in rows:
        assert leet_summary(row.dir)["exit_code"] == row.exit_code
