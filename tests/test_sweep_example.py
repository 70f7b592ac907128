"""The issue's example, offline end to end: 20 bayes trials with hyperband, checked in the ledger and the run files."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import leet_summary, run_record

import wandbflow as wf
from wandbflow import cli
from wandbflow.ledger import Ledger, default_path
from wandbflow.sweeps.spec import reset_session_config


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


def train_epoch(cfg, epoch: int) -> float:
    """A loss that is lowest near lr=3e-3 with little momentum, and falls with the epochs."""
    lr_error = (math.log10(cfg["lr"]) + 2.5) ** 2
    return lr_error + cfg["optimizer"]["momentum"] + 0.1 * cfg["batch_size"] / 64 + 1.0 / (epoch + 1)


@pytest.mark.timeout(240)
def test_the_issue_example_runs_offline_end_to_end(wandb_env, capsys):
    space = wf.wandb_sweep_config(
        method="bayes",
        metric={"name": "val/loss", "goal": "minimize"},
        parameters={
            "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
            "batch_size": {"values": [16, 32, 64]},
            "optimizer": {"parameters": {"name": {"values": ["adam", "sgd"]}, "momentum": {"min": 0.0, "max": 0.9}}},
        },
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
        run_cap=20,
    )

    @wf.wandb_init
    def objective():
        cfg = wf.get_wandb_run().config
        for epoch in range(10):
            wf.get_wandb_run().log({"val/loss": train_epoch(cfg, epoch)})  # hyperband may stop the trial here

    sweep = wf.sweep(space)
    assert wf.agent(sweep, objective, count=20) == 20
    assert sweep.ask() is None and sweep.state == "complete", "run_cap reached"

    trials = sweep.trials()
    assert list(trials.columns[:5]) == ["trial", "run_id", "state", "value", "params"]
    assert list(trials["trial"]) == list(range(20))
    assert set(trials["state"]) <= {"finished", "pruned"} and "finished" in set(trials["state"])
    best = sweep.best()
    finished = trials[trials["state"] == "finished"]
    assert best.value == finished["value"].min() and best.state == "finished"

    ledger = Ledger(default_path(wandb_env))
    with ThreadPoolExecutor(4) as pool:  # each `wandb leet inspect` is a process of its own
        summaries = list(pool.map(leet_summary, trials["dir"]))
    for row, summary in zip(trials.itertuples(), summaries, strict=True):
        entry = ledger.get(row.run_id)
        assert (entry.state, entry.sweep_id, entry.trial_id) == (row.state, sweep.id, str(row.trial))
        assert (entry.group, entry.job_type) == (sweep.name, "sweep-trial")
        assert summary["config"] == row.params, "the trial's parameters are the run's config"
        assert summary["state"] == "finished" and summary["exit_code"] == 0
        assert summary["summary"]["val/loss"] == pytest.approx(row.value)
        assert sweep.id in summary["tags"] and (("pruned" in summary["tags"]) == (row.state == "pruned"))
        params = row.params
        assert 1e-4 <= params["lr"] <= 1e-1 and params["batch_size"] in (16, 32, 64)
        assert params["optimizer"]["name"] in ("adam", "sgd") and 0.0 <= params["optimizer"]["momentum"] <= 0.9

    for run_dir in trials["dir"].iloc[[0, -1]]:
        record = run_record(run_dir)
        assert record["run_group"] == sweep.name and record["job_type"] == "sweep-trial"

    capsys.readouterr()
    assert cli.main(["runs", "--sweep", sweep.id, "--limit", "100"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert sorted(line.split()[0] for line in listed) == sorted(trials["run_id"])
