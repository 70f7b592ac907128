"""The local (Optuna) engine with real offline runs: grids, caps, hyperband, targets, several processes, resume."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sweep_workers
import wandb
from conftest import leet_records, leet_summary, run_record

import wandbflow as wf
from wandbflow.errors import ConfigError, SweepError, TrialPruned
from wandbflow.ledger import Ledger, default_path
from wandbflow.sweeps import TrialAssignment, attach, get_engine, should_prune
from wandbflow.sweeps.local import LocalEngine
from wandbflow.sweeps.remote import WandbEngine
from wandbflow.sweeps.spec import reset_session_config

TESTS = Path(__file__).resolve().parent
WANDBFLOW = os.path.join(os.path.dirname(sys.executable), "wandbflow")
GRID = {
    "a": {"values": [1, 2, 3]},
    "n": {"distribution": "int_uniform", "min": 1, "max": 4},
    "opt": {"parameters": {"name": {"values": ["adam", "sgd"]}, "beta": {"value": 0.9}}},
}


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


def ledger(root) -> Ledger:
    return Ledger(default_path(root))


def good() -> None:
    run = wf.get_wandb_run()
    for epoch in range(10):
        run.log({"loss": 1.0 / (epoch + 1)})


def cli(*args: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([WANDBFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_grid_visits_every_point_exactly_once_then_completes(wandb_env):
    sweep = wf.sweep({"method": "grid", "parameters": GRID, "run_cap": 100})
    seen = []
    while (assignment := sweep.ask()) is not None:
        seen.append(assignment)
        sweep.tell(assignment, "finished")
    expected = [
        {"a": a, "n": n, "opt": {"name": name, "beta": 0.9}}
        for a, n, name in itertools.product([1, 2, 3], [1, 2, 3, 4], ["adam", "sgd"])
    ]
    assert sorted(map(json.dumps, (a.params for a in seen))) == sorted(map(json.dumps, expected))
    assert [a.number for a in seen] == list(range(24))
    assert sweep.state == "complete" and sweep.ask() is None
    assert [r.state for r in sweep.records()] == ["finished"] * 24


def test_agent_runs_each_trial_as_a_scoped_run(wandb_env):
    seen = {}

    @wf.wandb_init
    def objective():
        run = wf.get_wandb_run()
        seen[run.id] = wf.get_wandb_sweep_id()
        run.log({"loss": run.config["a"] * 0.5})

    sweep = wf.sweep({"method": "grid", "metric": {"name": "loss"}, "parameters": {"a": {"values": [1, 2, 3]}}})
    assert wf.agent(sweep, objective, progress=False) == 3
    trials = sweep.trials()
    assert list(trials["trial"]) == [0, 1, 2] and set(trials["state"]) == {"finished"}
    assert sorted(trials["value"]) == [0.5, 1.0, 1.5]
    assert sweep.best().value == 0.5 and sweep.best().params == {"a": 1}
    for row in trials.itertuples():
        assert seen[row.run_id] == sweep.id, "get_wandb_sweep_id() inside a trial"
        summary, record = leet_summary(row.dir), run_record(row.dir)
        assert summary["state"] == "finished" and summary["exit_code"] == 0
        assert summary["config"] == row.params and summary["summary"]["loss"] == row.value
        assert summary["tags"] == [sweep.id]
        assert record["run_group"] == sweep.name and record["job_type"] == "sweep-trial"
        assert record["run_id"] == row.run_id == f"{sweep.id}-trial-{row.trial}"
        entry = ledger(wandb_env).get(row.run_id)
        assert (entry.sweep_id, entry.trial_id, entry.state) == (sweep.id, str(row.trial), "finished")


def test_agent_progress_bar_counts_trials_and_shows_the_best_metric_for_its_goal(wandb_env, capfd):
    @wf.wandb_init
    def objective():
        run = wf.get_wandb_run()
        run.log({"acc": {1: 0.7, 2: 0.9, 3: 0.8}[run.config["a"]]})

    sweep = wf.sweep(
        {"method": "grid", "metric": {"name": "acc", "goal": "maximize"}, "parameters": {"a": {"values": [1, 2, 3]}}}
    )
    assert wf.agent(sweep, objective) == 3
    bar = capfd.readouterr().err.rsplit("\r", 1)[-1]
    assert f"sweep {sweep.id}" in bar and "3/3" in bar and "#2 finished, best acc=0.9" in bar


def test_trial_progress_from_many_threads_counts_every_trial_and_keeps_the_best(wandb_env, capfd):
    from concurrent.futures import ThreadPoolExecutor

    from wandbflow.sweeps.progress import TrialProgress

    space = {"a": {"min": 0.0, "max": 1.0}}
    sweep = wf.sweep({"method": "random", "metric": {"name": "loss"}, "parameters": space, "run_cap": 40})
    bar = TrialProgress(sweep, count=None)  # the total is the sweep's cap
    values = [None if n % 7 == 0 else 10.0 - (n * 37 % 40) / 4 for n in range(40)]
    with ThreadPoolExecutor(max_workers=4) as lanes:
        list(lanes.map(lambda n: bar.ended(n, "finished" if values[n] is not None else "failed", values[n]), range(40)))
    bar.close()
    assert bar.best == min(v for v in values if v is not None)
    assert "40/40" in capfd.readouterr().err.rsplit("\r", 1)[-1]


def test_run_cap_is_honoured(wandb_env):
    sweep = wf.sweep({"method": "random", "parameters": {"a": {"min": 0.0, "max": 1.0}}, "run_cap": 3})
    assert wf.agent(sweep, sweep_workers.objective, count=10, progress=False) == 3
    assert [r.number for r in sweep.records()] == [0, 1, 2]
    assert wf.agent(sweep, sweep_workers.objective, progress=False) == 0
    assert sweep.state == "complete"


def test_hyperband_prunes_a_trial_whose_metric_is_bad(wandb_env):
    # min_iter 4, eta 3 and 10 logs: one bracket (10 / 4 < 3), whose first rung is the 4th log of the metric
    sweep = wf.sweep(
        {
            "method": "random",
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {"x": {"min": 0.0, "max": 1.0}},
            "early_terminate": {"type": "hyperband", "min_iter": 4, "eta": 3},
        }
    )
    wf.agent(sweep, good, count=2, progress=False)
    logged = []

    def bad():
        try:
            for _ in range(10):
                wandb.log({"loss": 100.0})  # the module-level log goes through the watch too
                logged.append(1)
        except TrialPruned as pruned:
            assert should_prune() and (pruned.trial, pruned.step) == (2, 4)
            raise

    wf.agent(sweep, bad, count=1, progress=False)
    assert len(logged) == 3, "the 4th log raised, after writing its value"
    assert [r.state for r in sweep.records()] == ["finished", "finished", "pruned"]
    row = sweep.trials().iloc[2]
    assert ledger(wandb_env).get(row.run_id).state == "pruned"
    summary = leet_summary(row.dir)
    assert summary["state"] == "finished" and summary["exit_code"] == 0, "pruned is not failed"
    assert "pruned" in summary["tags"]
    history = [r for r in leet_records(row.dir) if r["type"] == "history"]
    assert len(history) == 4


def test_target_stops_the_sweep(wandb_env):
    sweep = wf.sweep(
        {
            "method": "random",
            "metric": {"name": "loss", "goal": "maximize", "target": 0.9},
            "parameters": {"a": {"min": 0.0, "max": 1.0}},
        }
    )

    def reaches():
        wf.get_wandb_run().log({"loss": 0.95})

    assert wf.agent(sweep, reaches, count=5, progress=False) == 1
    assert sweep.state == "stopped" and sweep.ask() is None


def test_a_raising_trial_fails_and_the_sweep_goes_on(wandb_env):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("bad batch")
        wf.get_wandb_run().log({"loss": 1.0})

    sweep = wf.sweep({"method": "random", "metric": {"name": "loss"}, "parameters": {"a": {"values": [1]}}})
    assert wf.agent(sweep, flaky, count=2, progress=False) == 2
    first, second = sweep.trials().itertuples()
    assert (first.state, second.state) == ("failed", "finished")
    entry = ledger(wandb_env).get(first.run_id)
    assert entry.state == "failed" and entry.exit_code == 1 and entry.error == "ValueError: bad batch"
    assert leet_summary(first.dir)["exit_code"] == 1


def test_keyboard_interrupt_ends_the_trial_and_propagates(wandb_env):
    def interrupted():
        raise KeyboardInterrupt

    sweep = wf.sweep({"method": "random", "parameters": {"a": {"values": [1]}}})
    with pytest.raises(KeyboardInterrupt):
        wf.agent(sweep, interrupted, progress=False)
    (trial,) = sweep.records()
    assert trial.state == "interrupted" and ledger(wandb_env).get(trial.run_id).exit_code == 255


def test_a_trial_whose_run_cannot_start_is_failed_and_the_error_propagates(wandb_env, monkeypatch):
    def no_run(*args, **kwargs):
        raise RuntimeError("no run today")

    monkeypatch.setattr("wandbflow.scope._init_run", no_run)
    sweep = wf.sweep({"method": "random", "parameters": {"a": {"values": [1]}}})
    with pytest.raises(RuntimeError, match="no run today"):
        wf.agent(sweep, sweep_workers.objective, progress=False)
    assert [r.state for r in sweep.records()] == ["failed"]


@pytest.mark.timeout(180)
def test_processes_serving_one_sweep_never_pass_run_cap_nor_repeat_a_grid_point(wandb_env, tmp_path):
    grid = wf.sweep({"method": "grid", "parameters": GRID, "run_cap": 100})
    capped = wf.sweep({"method": "random", "parameters": {"a": {"min": 0.0, "max": 1.0}}, "run_cap": 15})
    ctx = mp.get_context("spawn")
    outputs = {}
    procs = []
    for target in (grid, capped):
        for worker in range(3):
            out = tmp_path / f"{target.id}-{worker}.jsonl"
            outputs.setdefault(target.id, []).append(out)
            procs.append(ctx.Process(target=sweep_workers.ask_tell, args=(target.ref, str(out), 0.01)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(150)
        assert proc.exitcode == 0
    for target, expected in ((grid, 24), (capped, 15)):
        got = [json.loads(line) for out in outputs[target.id] for line in out.read_text().splitlines()]
        assert sorted(g["number"] for g in got) == list(range(expected))
        assert len({json.dumps(g["params"], sort_keys=True) for g in got}) == expected
        assert all(sum(1 for line in out.read_text().splitlines()) > 0 for out in outputs[target.id]), "all served"
        assert len(target.records()) == expected and target.state == "complete"


@pytest.mark.timeout(240)
def test_resume_after_the_process_exits_continues_the_count(wandb_env):
    sweep = wf.sweep({"method": "random", "metric": {"name": "loss"}, "parameters": {"a": {"values": [1, 2]}}})
    sweep_id = sweep.id
    served = cli("agent", sweep_id, "--function", "sweep_workers:objective", "--count", "2", cwd=wandb_env)
    assert served.returncode == 0, served.stdout + served.stderr
    died = cli("agent", sweep_id, "--function", "sweep_workers:crash_on_second", "--no-progress", cwd=wandb_env)
    assert died.returncode == 3, "the process died in trial 2: " + died.stdout + died.stderr
    capped = LocalEngine().load(sweep_id)
    assert [r.state for r in LocalEngine().records(capped)] == ["finished", "finished", "running"]
    reattached = wf.sweep(sweep_id, engine="local")
    assert reattached.id == sweep_id
    states = [r.state for r in reattached.records()]
    assert states == ["finished", "finished", "crashed"], "the dead process's trial is reaped"
    assert ledger(wandb_env).get(f"{sweep_id}-trial-2").state == "crashed"
    assert wf.agent(reattached, sweep_workers.objective, count=2, progress=False) == 2
    assert [r.number for r in reattached.records()] == [0, 1, 2, 3, 4]


@pytest.mark.timeout(120)
def test_an_external_runner_drives_the_sweep_with_ask_tell_and_watch(wandb_env, tmp_path):
    sweep = wf.sweep(
        {
            "method": "random",
            "metric": {"name": "loss"},
            "parameters": {"a": {"values": [1.0]}},
            "early_terminate": {"type": "hyperband", "min_iter": 4, "eta": 3},
        }
    )
    wf.agent(sweep, good, count=2, progress=False)  # the first completes the pruner's setup, the second its rung
    assignment = sweep.ask()
    assert TrialAssignment.from_json(assignment.to_json()) == assignment
    context = assignment.context({"mode": "offline"})
    assert (context.run_id, context.sweep_id, context.trial_id) == (assignment.run_id, sweep.id, "2")
    assert context.settings["group"] == sweep.name and context.settings["config"] == {"a": 1.0}
    result = tmp_path / "result.json"
    proc = mp.get_context("spawn").Process(
        target=sweep_workers.external_trial, args=(assignment.to_json(), str(result), str(wandb_env))
    )
    proc.start()
    proc.join(100)
    assert proc.exitcode == 0
    assert json.loads(result.read_text()) == {"pruned_at": 4, "should_prune": True}
    assert sweep.tell(assignment, "failed") == "pruned", "a trial its pruner stopped is pruned, whatever was told"
    assert sweep.tell(assignment, "finished", 0.0) == "pruned", "the first tell counts"
    assert ledger(wandb_env).get(assignment.run_id).state == "pruned"


def test_tell_without_a_value_reads_the_metric_from_the_runs_ledger_summary(wandb_env):
    sweep = wf.sweep({"method": "random", "metric": {"name": "loss"}, "parameters": {"a": {"values": [1]}}})
    assignment = sweep.ask()
    with wf.task(f"trial-{assignment.number}", quiet=True, **assignment.settings()) as run:
        run.log({"loss": 0.75})
    assert sweep.tell(assignment, "finished") == "finished"
    assert sweep.records()[0].value == 0.75 and sweep.best().run_id == assignment.run_id


def test_reattach_by_id_and_reference_and_stop(wandb_env):
    sweep = wf.sweep({"method": "random", "parameters": {"a": {"values": [1]}}, "name": "my-sweep"})
    assert wf.sweep(sweep.id) is sweep, "this process's sweep"
    fresh = wf.sweep(sweep.id, storage=default_path().parent / "sweeps.db")
    assert fresh is not sweep and (fresh.id, fresh.name) == (sweep.id, "my-sweep")
    assert attach(sweep.ref).id == sweep.id
    sweep.stop()
    assert fresh.state == "stopped" and fresh.ask() is None
    with pytest.raises(SweepError, match="no sweep 'nosuch1'") as info:
        wf.sweep("nosuch1")
    assert info.value.sweep_id == "nosuch1"
    with pytest.raises(SweepError, match="not a sweep reference"):
        attach("nosuch1")
    with pytest.raises(ConfigError) as bad_state:
        sweep.tell(0, "done")
    assert bad_state.value.key == "state"
    with pytest.raises(SweepError, match="no trial 5"):
        sweep.tell(5, "finished")


def test_wandb_sweep_decorator_and_get_wandb_sweep_id(wandb_env):
    assert wf.get_wandb_sweep_id() is None

    @wf.wandb_sweep
    def inner():
        return wf.get_wandb_sweep_id()

    @wf.wandb_sweep
    def outer():
        return wf.get_wandb_sweep_id(), inner()

    with pytest.raises(SweepError, match="needs a sweep config"):
        outer()
    wf.wandb_sweep_config(method="random", parameters={"a": {"values": [1]}})
    first, nested = outer()
    assert first == nested, "a step inside the sweep reuses its id"
    assert wf.get_wandb_sweep_id() is None
    assert LocalEngine().load(first) is not None
    explicit = wf.wandb_sweep(config={"method": "grid", "parameters": {"b": {"values": [2]}}})(inner)
    assert wf.sweep(explicit()).config.method == "grid"


def test_engine_factory(wandb_env, monkeypatch):
    assert isinstance(get_engine(), LocalEngine), "offline without credentials"
    engine = LocalEngine(wandb_env / "other.db")
    assert get_engine(engine) is engine
    assert get_engine("local", storage="postgres://u@h/db").url == "postgresql+psycopg://u@h/db"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert isinstance(get_engine(), WandbEngine), "online with credentials"
    assert isinstance(get_engine(storage=wandb_env / "s.db"), LocalEngine), "a storage means the local engine"
    with pytest.raises(ConfigError) as info:
        get_engine("ray")
    assert info.value.key == "engine"
    with pytest.raises(ConfigError) as info:
        get_engine("wandb", storage="x.db")
    assert info.value.key == "storage"


def test_optuna_study_mirrors_the_trials(wandb_env):
    sweep = wf.sweep({"method": "bayes", "metric": {"name": "loss"}, "parameters": {"x": {"min": 0.0, "max": 1.0}}})
    first, second = sweep.ask(), sweep.ask()
    sweep.tell(first, "finished", 0.25)
    sweep.tell(second, "crashed")
    study = optuna.load_study(study_name=sweep.id, storage=sweep.info.location)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert study.best_value == 0.25 and study.trials[0].params == {"x": first.params["x"]}
