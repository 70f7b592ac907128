"""The notebook commands of the CLI, run for real: wandbflow run, sweep run, agent --notebook."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import leet_summary, run_dirs

from wandbflow.cli import main

pytestmark = pytest.mark.timeout(600)
FIXTURES = Path(__file__).parent / "notebooks"
CONFIG = """\
method: grid
metric: {name: final, goal: minimize}
parameters:
  lr: {values: [0.1, 0.2, 0.3]}
  epochs: {value: 1}
"""


@pytest.fixture
def train(wandb_env):
    target = wandb_env / "nbs"
    shutil.copytree(FIXTURES, target)
    return target / "train.ipynb"


def test_run_executes_a_notebook_with_typed_parameters(train, wandb_env, capsys):
    assert main(["run", str(train), "-p", "lr", "0.5", "-p", "epochs", "2", "--project", "cli"]) == 0
    out = capsys.readouterr().out
    (run_dir,) = run_dirs(wandb_env).values()
    summary = leet_summary(run_dir)
    assert summary["config"] == {"lr": 0.5, "epochs": 2} and summary["project"] == "cli"
    assert "finished" in out and "executed notebook:" in out


def test_run_reports_a_failing_cell_with_exit_status_1(train, wandb_env, capsys):
    assert main(["run", str(train), "-p", "mode", "fail"]) == 1
    err = capsys.readouterr().err
    assert "raised ValueError: asked to fail" in err and "executed notebook saved to" in err


def test_run_rejects_an_unknown_parameter_before_running(train, wandb_env, capsys):
    assert main(["run", str(train), "-p", "learning_rate", "1"]) == 1
    assert "'learning_rate' is not defined" in capsys.readouterr().err
    assert run_dirs(wandb_env) == {}


def test_sweep_run_then_agent_notebook_complete_the_sweep(train, wandb_env, capsys):
    config = wandb_env / "sweep.yaml"
    config.write_text(CONFIG)
    assert main(["sweep", "run", str(train), "--config", str(config), "--count", "2", "--parallel", "2",
                 "--no-progress"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    sweep_id = out.splitlines()[0].split()[1]
    assert out.count("finished") == 2 and "best: trial" in out
    assert main(["agent", sweep_id, "--notebook", str(train), "--no-progress"]) == 0
    assert "3 finished" in capsys.readouterr().out
    assert len(run_dirs(wandb_env)) == 3
