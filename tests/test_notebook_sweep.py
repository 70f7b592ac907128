"""sweep_notebook against real kernels, real Optuna and real offline runs: trials, failures, GPUs, Ctrl-C."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
import wandb
from conftest import leet_summary, run_dirs, run_record

from wandbflow import kernels
from wandbflow.errors import ConfigError, NotebookError
from wandbflow.ledger import Ledger, default_path
from wandbflow.notebook_sweep import sweep_notebook

pytestmark = pytest.mark.timeout(600)
FIXTURES = Path(__file__).parent / "notebooks"


def grid(**values):
    return {
        "method": "grid",
        "metric": {"name": "final", "goal": "minimize"},
        "parameters": {name: {"values": list(v)} for name, v in values.items()},
    }


@pytest.fixture
def train(wandb_env):
    target = wandb_env / "nbs"
    shutil.copytree(FIXTURES, target)
    return target / "train.ipynb"


def test_a_grid_sweep_runs_every_point_once_in_parallel_kernels(train, wandb_env, capfd):
    sweep = sweep_notebook(train, grid(lr=[0.1, 0.2, 0.3]), parameters={"epochs": 2}, parallel=2)
    bar = capfd.readouterr().err.rsplit("\r", 1)[-1]  # the progress bar as it ended: the best final so far
    assert f"sweep {sweep.id}" in bar and "3/3" in bar and "best final=0.05" in bar
    trials = sweep.trials()
    assert sorted(p["lr"] for p in trials["params"]) == [0.1, 0.2, 0.3]
    assert set(trials["state"]) == {"finished"}
    assert sweep.best().params["lr"] == 0.1 and sweep.best().value == pytest.approx(0.05)
    dirs = run_dirs(wandb_env)
    ledger = Ledger(default_path(wandb_env))
    for trial in sweep.records():
        summary = leet_summary(dirs[trial.run_id])
        assert summary["state"] == "finished" and summary["config"] == {"lr": trial.params["lr"], "epochs": 2}
        assert run_record(dirs[trial.run_id])["run_group"] == sweep.info.name
        row = ledger.get(trial.run_id)
        assert row.sweep_id == sweep.id and row.trial_id == str(trial.number)
        assert row.output == str(wandb_env / "wandb" / "notebooks" / sweep.id / f"trial-{trial.number}.ipynb")
        assert Path(row.output).exists()


def test_pooled_kernels_are_warmed_outside_the_notebook_and_own_their_service(train, wandb_env, monkeypatch):
    wandb.setup().ensure_service()
    monkeypatch.setenv("WANDB_SERVICE", "3-1-unix-/this-process-service")  # what a process with a service holds
    sweep = sweep_notebook(train, grid(lr=[0.1, 0.2]), parallel=2, progress=False)
    ledger = Ledger(default_path(wandb_env))
    for trial in sweep.records():
        summary = ledger.get(trial.run_id).summary
        assert summary["preloaded"] == "none", "warming left names in the notebook's namespace"
        assert summary["service"] != "3-1-unix-/this-process-service"  # a dead kernel's run must stay unfinished


def test_failed_crashed_and_timed_out_trials_never_stop_the_sweep(train, wandb_env):
    sweep = sweep_notebook(train, grid(mode=["fail", "die", "hang", "ok"]), timeout=10, progress=False)
    states = {r.params["mode"]: r.state for r in sweep.records()}
    assert states == {"fail": "failed", "die": "crashed", "hang": "failed", "ok": "finished"}
    ledger = Ledger(default_path(wandb_env))
    rows = {r.config.get("mode"): r for r in ledger.records(sweep_id=sweep.id)}
    assert rows["fail"].state == "failed" and "asked to fail" in rows["fail"].error
    assert rows["die"].state == "crashed"
    wandb.teardown()  # a service this process holds must not close the dead kernel's run as finished
    assert leet_summary(run_dirs(wandb_env)[rows["die"].run_id])["state"] != "finished"
    assert rows["hang"].state == "failed" and "timeout" in rows["hang"].error.lower()
    assert all(Path(r.output).exists() for r in rows.values()), "the executed notebook is kept, also on failure"


def test_each_parallel_trial_gets_its_own_gpu(train, wandb_env, monkeypatch):
    monkeypatch.setattr(kernels, "visible_gpus", lambda: ["0", "1"])
    sweep = sweep_notebook(train, grid(lr=[0.1, 0.2]), count=2, parallel=2, progress=False)
    ledger = Ledger(default_path(wandb_env))
    assert sorted(ledger.get(r.run_id).summary["gpu"] for r in sweep.records()) == ["0", "1"]


def test_count_limits_this_worker_and_a_second_worker_continues_the_sweep(train, wandb_env):
    sweep = sweep_notebook(train, grid(lr=[0.1, 0.2, 0.3]), count=1, progress=False)
    assert len(sweep.records()) == 1
    sweep_notebook(train, sweep.id, progress=False)
    assert sorted(r.params["lr"] for r in sweep.records()) == [0.1, 0.2, 0.3]


def wait_for_running(root, n, timeout=120.0):
    """Block until ``n`` trial runs are open (their cells running)."""
    ledger = Ledger(default_path(root))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if default_path(root).exists() and len(ledger.records(state="running")) >= n:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{n} trial runs never started")


def test_cancel_interrupts_running_trials_and_starts_no_more(train, wandb_env):
    cancel = threading.Event()

    def cancel_once_running():
        wait_for_running(wandb_env, 1)
        time.sleep(1.0)
        cancel.set()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    sweep = sweep_notebook(train, grid(mode=["hang"], lr=[0.1, 0.2, 0.3]), cancel=cancel, progress=False)
    (trial,) = sweep.records()
    assert trial.state == "interrupted"
    assert leet_summary(run_dirs(wandb_env)[trial.run_id])["exit_code"] == 255


@pytest.mark.parametrize(
    ("config", "kwargs", "error", "message"),
    [
        (grid(learning_rate=[1, 2]), {}, NotebookError, "'learning_rate' is not defined"),
        (grid(lr=[1, 2]), {"parallel": 0}, ConfigError, "parallel"),
        (grid(lr=[1, 2]), {"parameters": {"token": "x"}}, NotebookError, "looks like a secret"),
    ],
)
def test_bad_input_fails_before_any_trial(train, wandb_env, config, kwargs, error, message):
    with pytest.raises(error, match=message):
        sweep_notebook(train, config, progress=False, **kwargs)
    assert run_dirs(wandb_env) == {}


CTRL_C = """
import sys
from wandbflow.notebook_sweep import sweep_notebook

config = {"method": "grid", "parameters": {"mode": {"values": ["hang", "hang"]}}}
try:
    sweep_notebook(sys.argv[1], config, parallel=2, progress=False)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_stops_the_sweep_and_leaves_no_kernel_behind(train, wandb_env):
    script = wandb_env / "ctrl_c.py"
    script.write_text(textwrap.dedent(CTRL_C))
    proc = subprocess.Popen([sys.executable, str(script), str(train)], cwd=wandb_env, stdout=subprocess.PIPE, text=True)
    ledger = Ledger(default_path(wandb_env))
    wait_for_running(wandb_env, 2)
    kernels_before = [p for p in psutil.Process(proc.pid).children(recursive=True)]
    assert len(kernels_before) >= 2
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in out
    assert not [p for p in kernels_before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert {r.state for r in ledger.records()} == {"interrupted"}
    assert all(leet_summary(d)["exit_code"] == 255 for d in run_dirs(wandb_env).values())


def test_no_gpus_without_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert kernels.visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert kernels.visible_gpus() == ["2", "3"]


def test_six_trials_on_two_kernels_and_no_secret_in_any_file_they_leave(train, wandb_env, monkeypatch):
    secret = "s3cr3t" * 7
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = sweep_notebook(
        train, grid(lr=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), parameters={"epochs": 1}, parallel=2, progress=False
    )
    assert sorted(r.state for r in sweep.records()) == ["finished"] * 6
    assert len(run_dirs(wandb_env)) == 6
    leaked = [
        path
        for path in wandb_env.rglob("*")
        if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes()
    ]
    assert not leaked, leaked
