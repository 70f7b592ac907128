"""run_notebook against real kernels and real offline runs: parameters, joining the trial's run, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import leet_records, leet_summary, run_dirs, run_record

import wandbflow as wf
from wandbflow.errors import NotebookError, NotebookExecutionError
from wandbflow.ledger import Ledger, default_path
from wandbflow.notebooks import run_notebook

pytestmark = pytest.mark.timeout(300)
FIXTURES = Path(__file__).parent / "notebooks"


@pytest.fixture
def notebooks(wandb_env):
    target = wandb_env / "nbs"
    shutil.copytree(FIXTURES, target)
    return target


def row(root, run_id):
    return Ledger(default_path(root)).get(run_id)


def test_a_notebook_run_is_one_run_with_its_parameters_as_config(notebooks, wandb_env):
    result = run_notebook(notebooks / "train.ipynb", {"lr": 0.5, "epochs": 3}, project="nbs", group="g")
    assert result.ok and result.exit_code == 0
    run_dir = run_dirs(wandb_env)[result.run_id]
    summary = leet_summary(run_dir)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["config"] == {"lr": 0.5, "epochs": 3}
    assert summary["summary"]["final"] == pytest.approx(0.5 / 3)
    record = run_record(run_dir)
    assert record["project"] == "nbs" and record["run_group"] == "g"
    assert result.summary["final"] == pytest.approx(0.5 / 3), "the metric is read back from the run's summary"
    executed = nbformat.read(result.output, as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "__import__('wandbflow.trial')" not in Path(result.output).read_text(), "prologue leaves no trace"
    saved = [f["path"] for r in leet_records(run_dir) if r["type"] == "files" for f in r["files"]["files"]]
    assert f"notebook/{Path(result.output).name}" in saved
    ledger_row = row(wandb_env, result.run_id)
    assert ledger_row.output == result.output and ledger_row.notebook == str(notebooks / "train.ipynb")
    assert ledger_row.source_kind == "notebook"


def test_task_cells_steps_and_plain_wandb_init_join_the_run_and_config_cannot_move_it(notebooks, wandb_env):
    result = run_notebook(notebooks / "joins.ipynb", {"scale": 5}, project="trials")
    dirs = run_dirs(wandb_env)
    summary = leet_summary(dirs[result.run_id])["summary"]
    assert summary["from_task"] == 1 and summary["from_plain_init"] == 10
    assert run_record(dirs[result.run_id])["project"] == "trials", "%wandb_config in the trial cannot move it"
    (child_id,) = set(dirs) - {result.run_id}
    child = run_record(dirs[child_id])
    assert child["run_group"] == result.run_id and child["project"] == "trials"


def test_a_failing_cell_fails_the_run_and_keeps_the_executed_notebook(notebooks, wandb_env):
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook(notebooks / "train.ipynb", {"mode": "fail"})
    error = info.value
    assert error.state == "failed" and error.ename == "ValueError" and error.evalue == "asked to fail"
    assert error.cell_index == 4  # in the executed notebook: parameters, injected parameters, import, loop, fail
    summary = leet_summary(run_dirs(wandb_env)[error.run_id])
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    assert "asked to fail" in Path(error.output).read_text()
    ledger_row = row(wandb_env, error.run_id)
    assert ledger_row.state == "failed" and "ValueError: asked to fail" in ledger_row.error
    assert ledger_row.output == error.output


def test_a_dying_kernel_is_recorded_as_crashed(notebooks, wandb_env):
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook(notebooks / "train.ipynb", {"mode": "die"})
    assert info.value.state == "crashed"
    assert row(wandb_env, info.value.run_id).state == "crashed"
    assert Path(info.value.output).exists()


def test_a_hung_notebook_is_stopped_at_its_timeout(notebooks, wandb_env):
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook(notebooks / "train.ipynb", {"mode": "hang"}, timeout=8)
    assert info.value.state == "failed" and info.value.ename == "TimeoutError"
    assert leet_summary(run_dirs(wandb_env)[info.value.run_id])["exit_code"] == 1


@pytest.mark.parametrize(
    ("notebook", "parameters", "message"),
    [
        ("no_parameters.ipynb", {"x": 1}, "has no cell tagged 'parameters'"),
        ("train.ipynb", {"learning_rate": 1}, "parameter 'learning_rate' is not defined in its parameters cell"),
        ("train.ipynb", {"api_key": "abc"}, "looks like a secret"),
        ("missing.ipynb", {}, "cannot read notebook"),
    ],
)
def test_bad_input_is_refused_before_any_kernel_or_run(notebooks, wandb_env, notebook, parameters, message):
    with pytest.raises(NotebookError, match=message):
        run_notebook(notebooks / notebook, parameters)
    assert run_dirs(wandb_env) == {}


def test_strict_false_runs_a_notebook_without_parameters_cell(notebooks, wandb_env):
    result = run_notebook(notebooks / "no_parameters.ipynb", {"x": 2}, strict=False)
    assert result.ok and leet_summary(run_dirs(wandb_env)[result.run_id])["config"] == {"x": 2}


def test_secrets_in_the_environment_never_reach_the_output_notebook(notebooks, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    result = run_notebook(notebooks / "train.ipynb", {"epochs": 1}, mode="offline")
    assert "k" * 40 not in Path(result.output).read_text()
    assert "k" * 40 not in str(row(wandb_env, result.run_id))


def test_errors_pickle():
    import pickle

    error = NotebookExecutionError("m", path="p", state="failed", run_id="r", cell_index=2, ename="E", evalue="v")
    again = pickle.loads(pickle.dumps(error))
    assert (again.state, again.cell_index, again.ename) == ("failed", 2, "E") and str(again) == "m"
    assert pickle.loads(pickle.dumps(NotebookError("m", path="p", parameter="x"))).parameter == "x"


def test_run_notebook_is_public():
    assert wf.run_notebook is run_notebook
