"""The magics in a real IPython shell, against real offline runs read back with ``wandb leet inspect``."""

from __future__ import annotations

import pytest
from conftest import leet_records, leet_summary, run_dirs, run_record
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import wandbflow as wf
from wandbflow import naming
from wandbflow.ledger import Ledger, RunRecord, default_path
from wandbflow.magics import WandbMagics, _resume_settings, parse_assignments, parse_value


@pytest.fixture
def shell(wandb_env):
    ip = InteractiveShell.instance()
    ip.run_cell("%load_ext wandbflow", store_history=False)
    ip.user_ns.pop("PAPERMILL_INPUT_PATH", None)
    yield ip
    WandbMagics.end_pipeline()
    ip.run_cell("%unload_ext wandbflow", store_history=False)


def run(shell, source):
    """Run a cell; return (result, error raised in it)."""
    result = shell.run_cell(source, store_history=True)
    return result.result, result.error_in_exec or result.error_before_exec


def ledger(root):
    return Ledger(default_path(root))


def only_run(root):
    dirs = run_dirs(root)
    assert len(dirs) == 1, dirs
    return next(iter(dirs.values()))


@pytest.mark.parametrize(
    ("text", "value"),
    [("1000", 1000), ("0.1", 0.1), ("1e-3", 1e-3), ("true", True), ("False", False), ("none", None),
     ("adam", "adam"), ("'123'", "123"), ('"1.5"', "1.5"), ("a=b", "a=b")],
)  # fmt: skip
def test_flag_values_are_typed(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_assignments_keep_everything_after_the_first_equals_sign():
    assert parse_assignments(["rows=1000", "expr=a=b"], flag="--config") == {"rows": 1000, "expr": "a=b"}


def test_task_cell_runs_in_the_notebook_namespace_and_records_its_run(shell, wandb_env):
    source = (
        "%%wandb_task --name prepare --job-type data --tags a,b --notes first "
        "--config rows=1000 lr=0.1 flag=true opt=adam\n"
        "import wandb\n"
        "rows = 1000\n"
        "wandb.log({'rows': rows})\n"
        "assert wf.get_wandb_run() is wandb.run and wf.run is wandb.run\n"
        "rows * 2"
    )
    shell.user_ns["wf"] = wf
    value, error = run(shell, source)
    assert error is None and value == 2000
    assert shell.user_ns["rows"] == 1000
    run_dir = only_run(wandb_env)
    summary = leet_summary(run_dir)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["summary"]["rows"] == 1000
    assert summary["config"] == {"rows": 1000, "lr": 0.1, "flag": True, "opt": "adam"}
    record = run_record(run_dir)
    assert record["job_type"] == "data" and record["tags"] == ["a", "b"] and record["notes"] == "first"
    assert record["run_id"] == f"{naming.session_id()}-prepare-1"
    saved = [f["path"] for r in leet_records(run_dir) if r["type"] == "files" for f in r["files"]["files"]]
    assert "code/prepare.py" in saved
    assert (run_dir / "files" / "code" / "prepare.py").read_text().rstrip().endswith("rows * 2")
    row = ledger(wandb_env).get(record["run_id"])
    assert row.source_kind == "cell" and row.source.startswith("import wandb")
    assert wf.get_wandb_run() is None


def test_no_save_code_saves_no_source(shell, wandb_env):
    _, error = run(shell, "%%wandb_task --name quiet --no-save-code --quiet\nx = 1")
    assert error is None
    assert not (only_run(wandb_env) / "files" / "code").exists()


def test_default_task_name_is_the_execution_count_and_reruns_get_new_ids(shell, wandb_env):
    run(shell, "%%wandb_task --quiet\npass")
    count = shell.execution_count  # IPython counts the cell before running it
    run(shell, "%%wandb_task --quiet --name again\npass")
    run(shell, "%%wandb_task --quiet --name again\npass")
    session = naming.session_id()
    assert set(run_dirs(wandb_env)) == {f"{session}-cell{count}-1", f"{session}-again-1", f"{session}-again-2"}


def test_failing_cell_fails_the_run_and_the_next_cell_works(shell, wandb_env):
    _, error = run(shell, "%%wandb_task --name bad\nx = 1\nraise ValueError('boom')")
    assert isinstance(error, ValueError) and str(error) == "boom"
    summary = leet_summary(only_run(wandb_env))
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    assert ledger(wandb_env).records()[0].error == "ValueError: boom"
    value, error = run(shell, "x + 1")
    assert error is None and value == 2


def test_keyboard_interrupt_in_a_cell_finishes_the_run_with_255(shell, wandb_env):
    _, error = run(shell, "%%wandb_task --name stop\nraise KeyboardInterrupt")
    assert isinstance(error, KeyboardInterrupt)
    assert leet_summary(only_run(wandb_env))["exit_code"] == 255
    assert ledger(wandb_env).records()[0].state == "interrupted"
    assert wf.get_wandb_run() is None


def test_syntax_error_creates_no_run(shell, wandb_env):
    _, error = run(shell, "%%wandb_task --name broken\nx = (")
    assert isinstance(error, SyntaxError)
    assert run_dirs(wandb_env) == {}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--no-such-flag", "unrecognized arguments: --no-such-flag"),
        ("--run-mode foo", "argument --run-mode: invalid choice: 'foo'"),
        ("--config lr=", "--config: expected key=value, got 'lr='"),
        ("--config =1", "--config: expected key=value, got '=1'"),
        ("--mode sideways", "argument --mode: invalid choice"),
        ("--id bad/id", "id:"),
        ("--run-mode shared", "no parent run to share"),
        ("--resume", "--resume: W&B cannot resume a run in offline mode"),
    ],
)
def test_bad_input_is_a_usage_error_and_the_body_does_not_run(shell, wandb_env, line, message, capsys):
    shell.user_ns["ran"] = False
    _, error = run(shell, f"%%wandb_task {line}\nran = True")
    assert isinstance(error, UsageError) and message in str(error)
    assert shell.user_ns["ran"] is False
    assert run_dirs(wandb_env) == {}


def test_config_magic_sets_the_session_default_and_shows_its_sources(shell, wandb_env, capsys):
    run(shell, "%wandb_config project=demo tags=baseline,x mode=offline")
    _, error = run(shell, "%wandb_config")
    assert error is None
    table = capsys.readouterr().out
    assert "project" in table and "'demo'" in table and "session" in table
    assert "run_mode" in table and "default" in table
    run(shell, "%%wandb_task --name t --quiet\npass")
    record = run_record(only_run(wandb_env))
    assert record["project"] == "demo" and record["tags"] == ["baseline", "x"]


def test_config_magic_bad_input_is_a_usage_error_and_changes_nothing(shell, wandb_env):
    run(shell, "%wandb_config project=kept")
    for line in ("colour=red", "mode=sideways", "project", "run_mode=foo"):
        _, error = run(shell, f"%wandb_config {line}")
        assert isinstance(error, UsageError), line
    from wandbflow import config

    assert config.resolve().values["project"] == "kept"
    run(shell, "%wandb_config --reset")
    assert "project" not in config.resolve().values


def test_pipeline_is_the_parent_of_following_task_cells(shell, wandb_env):
    shell.user_ns["wf"] = wf
    run(shell, "%wandb_pipeline etl --quiet --config source=csv")
    pipeline_id = shell.user_ns["pipeline_id"] = wf.get_wandb_run().id
    source = "%%wandb_task --name extract --quiet\nimport wandb\nwandb.log({'extracted': 3})\n"
    source += "assert wf.run.id == pipeline_id"
    _, error = run(shell, source)
    assert error is None
    _, error = run(shell, "%%wandb_task --name train --run-mode new --quiet\nwandb.log({'loss': 0.5})")
    assert error is None
    run(shell, "%wandb_pipeline --end")
    assert wf.get_wandb_run() is None
    dirs = run_dirs(wandb_env)
    assert set(dirs) == {pipeline_id, f"{naming.session_id()}-train-1"}
    assert leet_summary(dirs[pipeline_id])["summary"]["extracted"] == 3
    assert leet_summary(dirs[pipeline_id])["state"] == "finished"
    assert leet_summary(dirs[pipeline_id])["config"] == {"source": "csv"}
    assert run_record(dirs[f"{naming.session_id()}-train-1"])["run_group"] == "etl"


def test_pipeline_misuse_is_a_usage_error(shell, wandb_env):
    _, error = run(shell, "%wandb_pipeline --end")
    assert isinstance(error, UsageError) and "no pipeline is open" in str(error)
    _, error = run(shell, "%wandb_pipeline")
    assert isinstance(error, UsageError)
    assert run_dirs(wandb_env) == {}


def test_a_new_pipeline_ends_the_open_one(shell, wandb_env):
    run(shell, "%wandb_pipeline first --quiet")
    first = wf.get_wandb_run().id
    run(shell, "%wandb_pipeline second --quiet")
    assert leet_summary(run_dirs(wandb_env)[first])["state"] == "finished"
    run(shell, "%wandb_pipeline --end")


def test_unload_ends_the_pipeline_and_removes_the_magics_and_reload_is_harmless(shell, wandb_env):
    run(shell, "%wandb_pipeline etl --quiet")
    pipeline_id = wf.get_wandb_run().id
    run(shell, "%unload_ext wandbflow")
    assert leet_summary(run_dirs(wandb_env)[pipeline_id])["state"] == "finished"
    assert "wandb_task" not in shell.magics_manager.magics["cell"]
    run(shell, "%load_ext wandbflow")
    run(shell, "%reload_ext wandbflow")
    _, error = run(shell, "%%wandb_task --name after --quiet\npass")
    assert error is None


def test_notebook_path_comes_from_papermill_then_wandb_notebook_name(shell, wandb_env, monkeypatch):
    shell.user_ns["PAPERMILL_INPUT_PATH"] = "/work/train.ipynb"
    run(shell, "%%wandb_task --name a --quiet\npass")
    monkeypatch.setenv("WANDB_NOTEBOOK_NAME", "named.ipynb")
    run(shell, "%%wandb_task --name b --quiet\npass")
    notebooks = {r.name: r.notebook for r in ledger(wandb_env).records()}
    assert notebooks == {"a": "/work/train.ipynb", "b": "named.ipynb"}


def test_resume_takes_the_last_online_run_of_the_task(wandb_env, monkeypatch):
    # Resuming needs a W&B server; this checks which run is chosen, from the ledger, without one.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    target = ledger(wandb_env)
    for run_id, started, mode in (("old", 1.0, "online"), ("last", 2.0, "online"), ("offline", 3.0, "offline")):
        target.record_start(RunRecord(run_id=run_id, name="train", mode=mode, started_at=started))
    assert _resume_settings("train", {}) == {"id": "last", "resume": "must"}
    with pytest.raises(UsageError, match="no earlier online run of task 'prep'"):
        _resume_settings("prep", {})


def test_task_help_lists_the_flags(shell, capsys):
    shell.run_cell("%%wandb_task?\npass")
    shown = capsys.readouterr().out
    for flag in ("--name", "--job-type", "--config", "--run-mode", "--resume", "--no-save-code", "--quiet"):
        assert flag in shown


@pytest.mark.timeout(300)
def test_a_cell_on_two_ranks_brings_back_rank_0s_variables_and_one_card_per_run(shell, wandb_env, capsys):
    shell.user_ns["base"] = 10
    source = (
        "%%wandb_task --name ddp --nproc-per-node 2 --run-mode new\n"
        "import torch.distributed as dist\nimport wandb\n"
        "t = dist.get_rank() + base\nwandb.log({'t': t})\nt * 2"
    )
    value, error = run(shell, source)
    assert error is None and value == 20 and shell.user_ns["t"] == 10
    dirs = run_dirs(wandb_env)
    session = naming.session_id()
    assert set(dirs) == {f"{session}-ddp-1-rank-0", f"{session}-ddp-1-rank-1"}
    assert sorted(leet_summary(d)["summary"]["t"] for d in dirs.values()) == [10, 11]
    assert capsys.readouterr().out.count("finished (exit 0)") == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("--nproc-per-node 0", "must be at least 1"),
        ("--nproc-per-node 2 --resume", "--resume cannot be combined with --nproc-per-node"),
        ("--nproc-per-node 2 --run-mode sometimes", "invalid choice"),
    ],
)
def test_bad_multi_rank_cells_are_usage_errors(shell, wandb_env, line, message):
    _, error = run(shell, f"%%wandb_task {line}\nx = 1")
    assert isinstance(error, UsageError) and message in str(error)
    assert run_dirs(wandb_env) == {}
