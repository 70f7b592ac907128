"""The ledger: real SQLite, real writer processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pytest
from ledger_workers import write_forever, write_records

from wandbflow.errors import ConfigError, LedgerError
from wandbflow.ledger import Ledger, RunRecord, default_path


def test_start_finish_round_trip_and_filters(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="a", project="p", started_at=1.0, config={"lr": 0.1, "id": "123"}))
    ledger.record_start(RunRecord(run_id="b", project="q", started_at=2.0))
    ledger.record_finish("a", state="failed", exit_code=1, summary={"loss": 0.5}, error="ValueError: x")
    a = ledger.get("a")
    assert (a.state, a.exit_code, a.summary, a.error) == ("failed", 1, {"loss": 0.5}, "ValueError: x")
    assert a.config == {"lr": 0.1, "id": "123"} and a.finished_at is not None
    assert [r.run_id for r in ledger.records()] == ["b", "a"], "newest first"
    assert [r.run_id for r in ledger.records(project="q")] == ["b"]
    assert ledger.get("missing") is None


def test_restart_of_an_id_replaces_its_row(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="a", state="running", started_at=1.0))
    ledger.record_finish("a", state="finished", exit_code=0)
    ledger.record_start(RunRecord(run_id="a", started_at=5.0))
    assert len(ledger.records()) == 1 and ledger.get("a").state == "running"


def test_mark_crashed_changes_only_running_rows(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="done"))
    ledger.record_finish("done", state="finished", exit_code=0)
    ledger.record_start(RunRecord(run_id="dead"))
    assert ledger.mark_crashed("dead", signal=9, error="killed") is True
    assert ledger.mark_crashed("done", signal=9) is False
    assert ledger.get("dead").state == "crashed" and ledger.get("dead").signal == 9
    assert ledger.get("done").state == "finished"


def test_unknown_filter_is_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        Ledger(tmp_path / "l.db").records(colour="red")
    assert info.value.key == "colour"


def test_dataframe(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="a", started_at=10.0, config={"x": 1}))
    ledger.record_finish("a", state="finished", exit_code=0, finished_at=12.5)
    frame = ledger.runs()
    assert list(frame["run_id"]) == ["a"] and frame["duration"].iloc[0] == 2.5
    assert frame["config"].iloc[0] == {"x": 1}
    assert ledger.runs(state="failed").empty


def test_default_path(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDBFLOW_LEDGER", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wd"))
    assert default_path() == tmp_path / "wd" / "wandb" / "wandbflow.db"
    assert default_path(tmp_path) == tmp_path / "wandb" / "wandbflow.db"
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(tmp_path / "x.db"))
    assert default_path(tmp_path) == tmp_path / "x.db"


def test_unwritable_location_is_a_ledger_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError) as info:
        Ledger(blocker / "sub" / "l.db").record_start(RunRecord(run_id="a"))
    assert info.value.path.endswith("l.db")


@pytest.mark.timeout(180)
def test_eight_writer_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "l.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_records, args=(path, w, 500)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(170)
    assert [p.exitcode for p in procs] == [0] * 8
    rows = Ledger(path).records()
    assert len(rows) == 4000
    assert {r.state for r in rows} == {"finished"}
    assert all(r.summary == r.config for r in rows)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.timeout(120)
def test_a_writer_killed_mid_write_loses_at_most_its_own_record(tmp_path):
    path = str(tmp_path / "l.db")
    ctx = mp.get_context("spawn")
    committed = ctx.Value("i", 0)
    proc = ctx.Process(target=write_forever, args=(path, committed))
    proc.start()
    deadline = time.time() + 90
    while committed.value < 200 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    reported = committed.value
    assert reported >= 200
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    present = {r.run_id for r in Ledger(path).records()}
    assert {f"k-{i}" for i in range(reported)} <= present
    assert len(present) <= reported + 1
