"""The sweep monitor on real small local sweeps with real offline runs: counts, table, plots, cancel, re-attach."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import leet_summary

import wandbflow as wf
from wandbflow.ledger import Ledger, default_path
from wandbflow.sweeps.spec import reset_session_config
from wandbflow.sweeps.sweep import _known, _known_lock
from wandbflow.widgets import SweepBuilder, SweepMonitor

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
GRID = {
    "method": "grid",
    "metric": {"name": "loss", "goal": "minimize"},
    "parameters": {"lr": {"values": [0.1, 0.2, 0.3]}, "mode": {"values": ["ok", "fail"]}},
}


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


def objective() -> None:
    run = wf.get_wandb_run()
    if run.config["mode"] == "fail":
        raise ValueError("asked to fail")
    for epoch in range(3):
        run.log({"loss": run.config["lr"] / (epoch + 1)})


def until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_launch_from_the_builder_runs_in_the_background_and_fills_the_monitor(wandb_env):
    builder = SweepBuilder.from_config(GRID)
    builder.function = objective
    builder.count_input.value = 6
    builder.launch_button.click()
    monitor = builder.monitor
    assert isinstance(monitor, SweepMonitor) and builder.monitor_box.children == (monitor,)
    assert monitor.wait(120)
    assert monitor.counts == {"running": 0, "finished": 3, "failed": 3, "pruned": 0, "interrupted": 0, "crashed": 0}
    assert monitor.state == "complete" and monitor.error == ""
    assert monitor.progress_bar.value == monitor.progress_bar.max == 6
    assert "<b>6</b>/6 done" in monitor.counts_html.value
    rows = monitor.rows()
    assert [r["trial"] for r in rows] == list(range(6))
    assert sorted((r["params"]["lr"], r["params"]["mode"], r["state"]) for r in rows) == sorted(
        (lr, mode, "finished" if mode == "ok" else "failed") for lr in (0.1, 0.2, 0.3) for mode in ("ok", "fail")
    )
    for row in rows:
        assert row["duration"] is not None and row["duration"] >= 0
        assert Path(row["link"]).is_dir()  # offline: the run directory
        if row["state"] == "finished":
            assert row["value"] == pytest.approx(row["params"]["lr"] / 3)
    assert monitor.table_html.value.count("<tr>") == 7
    (plot,) = monitor.plot_output.outputs
    assert plot["data"]["image/png"].startswith("iVBORw0KGgo")  # a PNG, base64
    assert monitor.sweep.best().params["lr"] == 0.1


def test_cancel_stops_scheduling_and_interrupts_the_running_function_trial_at_its_log(wandb_env):
    started = threading.Event()
    caught: list[BaseException] = []

    def slow() -> None:
        run = wf.get_wandb_run()
        started.set()
        try:
            for step in range(10_000):
                run.log({"loss": 1.0 / (step + 1)})
                time.sleep(0.02)
        except Exception as error:  # a KeyboardInterrupt is not caught here, as with Ctrl-C
            caught.append(error)

    builder = SweepBuilder()
    builder.rows[0].name_text.value = "x"
    builder.rows[0].min_text.value, builder.rows[0].max_text.value = "0", "1"
    builder.rows[0].kind_select.value = "float"
    builder.metric_text.value = "loss"
    monitor = builder.launch(slow, count=5)
    assert started.wait(60)
    until(lambda: monitor.counts["running"] == 1)
    monitor.cancel_button.click()
    assert monitor.wait(60)
    assert not caught
    assert monitor.cancelled and monitor.state == "stopped" and monitor.cancel_button.disabled
    assert [r.state for r in monitor.records] == ["interrupted"]  # nothing scheduled after it
    assert monitor.sweep.ask() is None
    (record,) = Ledger(default_path(wandb_env)).records(sweep_id=monitor.sweep.id)
    assert (record.state, record.exit_code) == ("interrupted", 255)
    assert leet_summary(record.dir)["exit_code"] == 255
    assert "cancelled" in monitor.counts_html.value


def test_monitor_reattaches_by_id_after_a_restart(wandb_env):
    created = wf.sweep({**GRID, "parameters": {"lr": {"values": [0.1, 0.2]}, "mode": {"value": "ok"}}})
    wf.agent(created, objective, progress=False)
    with _known_lock:
        _known.clear()  # as after a kernel restart: only the stored study knows the sweep
    monitor = SweepMonitor(created.id)
    assert monitor.sweep is not created and monitor.sweep.id == created.id
    assert monitor.counts["finished"] == 2 and monitor.state == "complete"
    assert [r["run_id"] for r in monitor.rows()] == [r.run_id for r in created.records()]
    assert monitor.cancel_button.disabled  # nothing left to cancel
    assert monitor.wait(1) and not monitor.running


def test_monitor_counts_a_second_runner_and_refuses_two_at_once(wandb_env):
    created = wf.sweep({**GRID, "method": "random", "parameters": {"lr": {"value": 0.1}, "mode": {"value": "ok"}}})
    monitor = SweepMonitor(created, count=2, interval=0.1)

    def blocked() -> None:
        release.wait(30)

    release = threading.Event()
    monitor.serve(blocked, count=1)
    with pytest.raises(wf.SweepError):
        monitor.serve(objective, count=1)
    release.set()
    assert monitor.wait(60)
    monitor.serve(objective, count=1)
    assert monitor.wait(60)
    assert monitor.counts["finished"] == 2 and "<b>2</b>/2 done" in monitor.counts_html.value


def test_notebook_trials_from_the_builder_and_cancel_interrupts_them(wandb_env):
    builder = SweepBuilder.from_config(
        {
            "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"lr": {"values": [0.1, 0.2]}, "mode": {"values": ["ok", "hang"]}},
        }
    )
    builder.notebook_text.value = str(NOTEBOOKS / "train.ipynb")
    builder.count_input.value = 4
    builder.launch_button.click()
    monitor = builder.monitor
    try:
        until(lambda: any(r.state == "running" and r.params.get("mode") == "hang" for r in monitor.records), 120)
        time.sleep(2)  # let the hanging cell start
    finally:
        monitor.cancel()
    assert monitor.wait(120)
    counts = monitor.counts
    assert counts["interrupted"] == 1 and counts["running"] == 0 and counts["failed"] == 0
    assert sum(counts.values()) < 4  # nothing scheduled after the cancel
