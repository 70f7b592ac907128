"""The ledger: real SQLite files, real writer processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from ledger_workers import write_forever, write_records

from wandbflow.errors import ConfigError, LedgerError
from wandbflow.ledger import COLUMNS, Ledger, RunRecord, default_path


def integrity(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_start_finish_round_trip(tmp_path):
    ledger = Ledger(tmp_path / "sub" / "l.db")
    record = RunRecord(
        run_id="a",
        name="train",
        project="p",
        group="g",
        job_type="step",
        mode="offline",
        dir="/runs/a",
        started_at=1.0,
        config={"lr": 0.1, "id": "123", "nested": {"x": [1, 2]}},
        source_kind="function",
        source="pkg.train",
        rank=0,
        world_size=2,
        sweep_id="s",
        trial_id="t",
        pid=42,
    )
    ledger.record_start(record)
    assert ledger.get("a") == record, "every field comes back as written (the file and its directory are created)"
    ledger.record_finish(
        "a", state="failed", exit_code=1, summary={"loss": 0.5}, error="ValueError: x", finished_at=3.0
    )
    a = ledger.get("a")
    assert (a.state, a.exit_code, a.summary, a.error, a.finished_at) == (
        "failed",
        1,
        {"loss": 0.5},
        "ValueError: x",
        3.0,
    )
    assert a.config == {"lr": 0.1, "id": "123", "nested": {"x": [1, 2]}}, "string ids stay strings"
    assert ledger.get("missing") is None


def test_defaults_times_and_non_json_values(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    before = time.time()
    ledger.record_start(RunRecord(run_id="a", config={"path": tmp_path, (1, 2): "tuple key", "lock": threading.Lock()}))
    ledger.record_finish("a", state="finished", exit_code=0, summary={"obj": object()})
    a = ledger.get("a")
    assert before <= a.started_at <= a.finished_at <= time.time()
    assert a.config["path"] == str(tmp_path) and a.config["(1, 2)"] == "tuple key"
    assert a.config["lock"].startswith("<") and a.summary["obj"].startswith("<object")


def test_a_reopened_id_replaces_its_row(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="a", project="p", started_at=1.0))
    ledger.record_finish("a", state="failed", exit_code=1, summary={"loss": 1.0}, error="boom")
    ledger.record_start(RunRecord(run_id="a", project="p", started_at=5.0, config={"resumed": True}))
    [a] = ledger.records()
    assert (a.state, a.started_at, a.config) == ("running", 5.0, {"resumed": True})
    assert (a.exit_code, a.finished_at, a.summary, a.error) == (None, None, {}, None)


def test_filters_and_order(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    for run_id, project, started, sweep in [("a", "p", 1.0, None), ("b", "q", 3.0, "s1"), ("c", "p", 2.0, "s1")]:
        ledger.record_start(RunRecord(run_id=run_id, project=project, started_at=started, sweep_id=sweep))
    ledger.record_finish("c", state="failed", exit_code=1)
    assert [r.run_id for r in ledger.records()] == ["b", "c", "a"], "newest first"
    assert [r.run_id for r in ledger.records(project="p")] == ["c", "a"]
    assert [r.run_id for r in ledger.records(project="p", state="failed")] == ["c"]
    assert [r.run_id for r in ledger.records(sweep_id="s1")] == ["b", "c"]
    assert [r.run_id for r in ledger.records(sweep_id=None)] == ["a"], "None matches a missing value"
    assert ledger.records(project="nope") == []


def test_unknown_filter_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        Ledger(tmp_path / "l.db").records(colour="red")
    assert info.value.key == "colour" and "colour" in str(info.value)
    with pytest.raises(ConfigError):
        Ledger(tmp_path / "l.db").runs(project="p", colour="red")
    assert pickle.loads(pickle.dumps(info.value)).key == "colour"


def test_runs_dataframe(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    assert list(ledger.runs().columns) == [*COLUMNS, "duration"], "an empty ledger has the same columns"
    ledger.record_start(RunRecord(run_id="old", started_at=10.0, config={"x": 1}))
    ledger.record_finish("old", state="finished", exit_code=0, summary={"acc": 0.9}, finished_at=12.5)
    ledger.record_start(RunRecord(run_id="new", started_at=20.0, rank=1))
    frame = ledger.runs()
    assert list(frame.columns) == [*COLUMNS, "duration"]
    assert list(frame["run_id"]) == ["new", "old"], "newest first"
    assert frame["duration"].iloc[1] == 2.5 and frame["duration"].isna().iloc[0], "no duration while running"
    assert frame["config"].iloc[1] == {"x": 1} and frame["summary"].iloc[1] == {"acc": 0.9}
    assert str(frame["exit_code"].dtype) == "Int64" and frame["exit_code"].iloc[1] == 0
    assert list(ledger.runs(state="finished")["run_id"]) == ["old"]
    assert ledger.runs(state="failed").empty


def test_mark_crashed_changes_only_running_rows(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="done"))
    ledger.record_finish("done", state="finished", exit_code=0)
    ledger.record_start(RunRecord(run_id="dead"))
    assert ledger.mark_crashed("dead", signal=9, error="killed by SIGKILL") is True
    assert ledger.mark_crashed("done", exit_code=1) is False
    assert ledger.mark_crashed("dead", exit_code=3) is False, "a crashed row is no longer running"
    assert ledger.mark_crashed("unknown") is False
    dead, done = ledger.get("dead"), ledger.get("done")
    assert (dead.state, dead.signal, dead.exit_code, dead.error) == ("crashed", 9, None, "killed by SIGKILL")
    assert dead.finished_at is not None
    assert (done.state, done.exit_code, done.signal) == ("finished", 0, None)


def test_default_path(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDBFLOW_LEDGER", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_path() == tmp_path / "wandb" / "wandbflow.db", "the working directory by default"
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wd"))
    assert default_path() == tmp_path / "wd" / "wandb" / "wandbflow.db"
    assert default_path(tmp_path / "root") == tmp_path / "root" / "wandb" / "wandbflow.db", "root beats WANDB_DIR"
    monkeypatch.setenv("WANDBFLOW_LEDGER", str(tmp_path / "x.db"))
    assert default_path(tmp_path / "root") == tmp_path / "x.db", "WANDBFLOW_LEDGER beats everything"


def test_module_runs_reads_the_default_ledger(tmp_path, monkeypatch):
    import wandbflow

    monkeypatch.setenv("WANDBFLOW_LEDGER", str(tmp_path / "l.db"))
    Ledger(tmp_path / "l.db").record_start(RunRecord(run_id="a", state="failed"))
    assert list(wandbflow.runs(state="failed")["run_id"]) == ["a"]


def test_the_file_is_wal_and_an_unwritable_location_is_a_ledger_error(tmp_path):
    Ledger(tmp_path / "l.db").record_start(RunRecord(run_id="a"))
    with sqlite3.connect(tmp_path / "l.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError) as info:
        Ledger(blocker / "sub" / "l.db").record_start(RunRecord(run_id="a"))
    assert info.value.path == str(blocker / "sub" / "l.db")
    assert pickle.loads(pickle.dumps(info.value)).path == info.value.path


def test_an_older_file_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute('CREATE TABLE runs ("run_id" TEXT PRIMARY KEY, "state" TEXT, "started_at" REAL)')
        conn.execute("INSERT INTO runs VALUES ('legacy', 'finished', 1.0)")
    ledger = Ledger(path)
    ledger.record_start(RunRecord(run_id="new", sweep_id="s", started_at=2.0))
    assert [(r.run_id, r.state, r.sweep_id) for r in ledger.records()] == [
        ("new", "running", "s"),
        ("legacy", "finished", None),
    ]


def test_threads_share_one_ledger(tmp_path):
    ledger = Ledger(tmp_path / "l.db")

    def write(t: int) -> None:
        for i in range(50):
            ledger.record_start(RunRecord(run_id=f"t{t}-{i}"))
            ledger.record_finish(f"t{t}-{i}", state="finished", exit_code=0)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(ledger.records(state="finished")) == 200


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.timeout(60)
def test_a_forked_child_opens_its_own_connection(tmp_path):
    ledger = Ledger(tmp_path / "l.db")
    ledger.record_start(RunRecord(run_id="parent"))
    code = (
        "import os, sys\n"
        "from wandbflow.ledger import Ledger, RunRecord\n"
        "ledger = Ledger(sys.argv[1])\n"
        "ledger.record_start(RunRecord(run_id='before'))\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    ledger.record_start(RunRecord(run_id='child'))\n"
        "    os._exit(0)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "ledger.record_finish('before', state='finished', exit_code=os.waitstatus_to_exitcode(status))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "l.db")], check=True, timeout=50)
    assert {r.run_id for r in ledger.records()} == {"parent", "before", "child"}
    assert ledger.get("before").exit_code == 0
    assert integrity(tmp_path / "l.db") == "ok"


@pytest.mark.timeout(240)
def test_eight_writer_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "l.db")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=write_records, args=(path, w, 500)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(220)
    assert [p.exitcode for p in procs] == [0] * 8
    assert integrity(path) == "ok"
    rows = Ledger(path).records()
    assert len(rows) == 4000
    assert {r.run_id for r in rows} == {f"w{w}-r{i}" for w in range(8) for i in range(500)}
    assert {r.state for r in rows} == {"finished"} and {r.exit_code for r in rows} == {0}
    assert all(r.summary == r.config == {"i": int(r.run_id.split("-r")[1])} for r in rows), "no record corrupted"


@pytest.mark.timeout(120)
def test_a_writer_killed_mid_write_loses_at_most_its_own_record(tmp_path):
    path = str(tmp_path / "l.db")
    ctx = mp.get_context("spawn")
    committed = ctx.Value("i", 0)
    proc = ctx.Process(target=write_forever, args=(path, committed))
    proc.start()
    deadline = time.time() + 90
    while committed.value < 300 and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    reported = committed.value
    assert reported >= 300
    assert integrity(path) == "ok"
    present = {r.run_id for r in Ledger(path).records()}
    assert {f"k-{i}" for i in range(reported)} <= present, "every write that returned is in the file"
    assert len(present) <= reported + 1, "at most the write in flight when the kill came"
    Ledger(path).record_start(RunRecord(run_id="after"))
    assert Ledger(path).get("after") is not None, "the file stays writable"
