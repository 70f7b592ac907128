"""The W&B engine. Its controller lives on W&B's server, so this one test mocks the server calls only
(``wandb.sweep``, ``wandb.agent``, ``wandb.Api``); the trials it runs are real offline runs.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import wandb
from conftest import leet_summary, run_dirs, run_record

import wandbflow as wf
from wandbflow.errors import SweepError
from wandbflow.ledger import Ledger, default_path


def test_wandb_engine_with_the_server_calls_mocked(wandb_env, monkeypatch):
    created, served = [], []

    def server_sweep(config, entity=None, project=None):
        created.append((config, entity, project))
        return "srv12345"

    def server_agent(sweep_id, function=None, entity=None, project=None, count=None):
        served.append((sweep_id, entity, project, count))
        for n in range(count):
            monkeypatch.setenv("WANDB_RUN_ID", f"srv-run-{n}")  # what W&B's agent sets for the run it assigns
            function()

    runs = [SimpleNamespace(id="srv-run-0", state="finished", summary={"loss": 0.5}, config={"a": 1}, created_at="1")]
    server = SimpleNamespace(state="RUNNING", runs=runs, config={"method": "random", "parameters": {"a": {"value": 1}}})
    monkeypatch.setattr(wandb, "sweep", server_sweep)
    monkeypatch.setattr(wandb, "agent", server_agent)
    monkeypatch.setattr(wandb, "Api", lambda: SimpleNamespace(sweep=lambda path: server))

    space = {"method": "random", "metric": {"name": "loss"}, "parameters": {"a": {"values": [1, 2]}}, "name": "srv"}
    sweep = wf.sweep(space, engine="wandb", project="proj", entity="team")
    assert sweep.id == "srv12345" and sweep.engine.name == "wandb"
    assert created == [(space, "team", "proj")], "wandb.sweep gets the validated config as given"

    def objective():
        wf.get_wandb_run().log({"loss": 0.5})

    assert wf.agent(sweep, objective, count=2, progress=False) == 2
    assert served == [("srv12345", "team", "proj", 2)]
    dirs = run_dirs(wandb_env)
    assert set(dirs) == {"srv-run-0", "srv-run-1"}
    for run_id, run_dir in dirs.items():
        record = run_record(run_dir)
        assert (record["run_group"], record["job_type"], record["project"]) == ("srv", "sweep-trial", "proj")
        summary = leet_summary(run_dir)
        assert summary["tags"] == ["srv12345"] and summary["state"] == "finished"
        assert Ledger(default_path(wandb_env)).get(run_id).sweep_id == "srv12345"

    assert [(r.number, r.run_id, r.value) for r in sweep.records()] == [(0, "srv-run-0", 0.5)]
    assert sweep.state == "running"
    with pytest.raises(SweepError, match="hands trials only to W&B agents"):
        sweep.ask()
    with pytest.raises(SweepError, match="wandb sweep --stop team/proj/srv12345"):
        sweep.stop()
    again = wf.sweep("srv12345", engine="wandb")
    assert again.config.method == "random" and again.id == "srv12345"
