"""The run lifecycle against real offline W&B runs, checked with ``wandb leet inspect``."""

from __future__ import annotations

import asyncio
import threading

import pytest
import wandb
from conftest import leet_records, leet_summary, run_dirs, run_record

import wandbflow as wf
from wandbflow import naming
from wandbflow.errors import ConfigError, ScopeError
from wandbflow.ledger import Ledger, default_path


def ledger(root) -> Ledger:
    return Ledger(default_path(root))


def only_run(root):
    dirs = run_dirs(root)
    assert len(dirs) == 1, dirs
    return next(iter(dirs.values()))


def test_step_success_reaches_the_run_file(wandb_env):
    @wf.wandb_init(project="demo", job_type="prep", config={"rows": 10})
    def prepare(n: int) -> int:
        run = wf.get_wandb_run()
        run.log({"rows": n})
        return n

    assert prepare(10) == 10
    run_dir = only_run(wandb_env)
    summary = leet_summary(run_dir)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    assert summary["project"] == "demo"
    assert summary["config"]["rows"] == 10
    assert summary["summary"]["rows"] == 10
    record = run_record(run_dir)
    assert record["job_type"] == "prep"
    assert record["run_id"] == f"{naming.session_id()}-prepare-1"
    row = ledger(wandb_env).get(record["run_id"])
    assert row.state == "finished" and row.exit_code == 0 and row.source_kind == "function"
    assert row.summary == {"rows": 10}


def test_a_raising_step_fails_with_exit_code_1_and_reraises_unchanged(wandb_env):
    error = ValueError("boom")

    @wf.wandb_init
    def step():
        wandb.log({"before": 1})
        raise error

    with pytest.raises(ValueError) as info:
        step()
    assert info.value is error
    summary = leet_summary(only_run(wandb_env))
    assert summary["state"] == "failed" and summary["exit_code"] == 1
    row = ledger(wandb_env).records()[0]
    assert row.state == "failed" and row.error == "ValueError: boom"
    assert wf.get_wandb_run() is None and wandb.run is None


def test_keyboard_interrupt_finishes_with_255_and_ledger_says_interrupted(wandb_env):
    with pytest.raises(KeyboardInterrupt), wf.task("cell"):
        raise KeyboardInterrupt
    summary = leet_summary(only_run(wandb_env))
    assert summary["exit_code"] == 255 and summary["state"] == "failed"
    assert ledger(wandb_env).records()[0].state == "interrupted"


def test_nested_auto_logs_into_the_parent_run(wandb_env):
    @wf.wandb_init
    def prepare(n):
        assert wf.get_wandb_run() is outer["run"]
        wandb.log({"rows": n})

    outer = {}

    @wf.wandb_init
    def pipeline():
        outer["run"] = wf.get_wandb_run()
        prepare(10)
        wandb.log({"done": 1})

    pipeline()
    summary = leet_summary(only_run(wandb_env))
    assert summary["summary"]["rows"] == 10 and summary["summary"]["done"] == 1
    assert summary["state"] == "finished"


def test_nested_new_opens_a_grouped_child_and_restores_the_parent(wandb_env):
    seen = {}

    @wf.wandb_init(run_mode="new", job_type="train")
    def train():
        seen["child"] = wf.get_wandb_run()
        assert wandb.run is seen["child"]
        wandb.log({"loss": 0.5})

    @wf.wandb_init(project="p1")
    def pipeline():
        seen["parent"] = wf.get_wandb_run()
        train()
        assert wandb.run is seen["parent"] and wf.get_wandb_run() is seen["parent"]
        wandb.log({"after": 1})

    pipeline()
    dirs = run_dirs(wandb_env)
    parent_id, child_id = seen["parent"].id, seen["child"].id
    assert set(dirs) == {parent_id, child_id}
    child = run_record(dirs[child_id])
    assert child["run_group"] == parent_id and child["job_type"] == "train"
    assert child["project"] == "p1", "decorator project must reach child steps"
    assert leet_summary(dirs[child_id])["summary"]["loss"] == 0.5
    assert "loss" not in leet_summary(dirs[parent_id])["summary"]
    assert leet_summary(dirs[parent_id])["summary"]["after"] == 1


def test_new_child_of_a_grouped_parent_joins_its_group(wandb_env):
    with wf.task("outer", group="etl"), wf.task("inner", run_mode="new") as inner:
        inner_id = inner.id
    assert run_record(run_dirs(wandb_env)[inner_id])["run_group"] == "etl"


def test_shared_child_logs_into_the_parent(wandb_env):
    with wf.task("outer") as outer, wf.task("inner", run_mode="shared") as inner:
        assert inner is outer
        wandb.log({"x": 1})
    assert len(run_dirs(wandb_env)) == 1


def test_shared_without_parent_is_an_error_before_any_run(wandb_env):
    with pytest.raises(ScopeError, match="no parent run") as info, wf.task("lonely", run_mode="shared"):
        pytest.fail("the body must not run")
    assert info.value.task == "lonely"
    assert run_dirs(wandb_env) == {}


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"run_mode": "sometimes"}, "run_mode"),
        ({"rank_scope": "node"}, "rank_scope"),
        ({"id": "a/b"}, "id"),
        ({"id": "x" * 65}, "id"),
        ({"mode": "cloud"}, "mode"),
        ({"tags": "a,b"}, "tags"),
        ({"config": [1, 2]}, "config"),
        ({"projekt": "typo"}, "projekt"),
        ({"project": 3}, "project"),
    ],
)
def test_bad_settings_fail_before_any_run(wandb_env, settings, key):
    with pytest.raises(ConfigError) as info, wf.task("t", **settings):
        pytest.fail("the body must not run")
    assert info.value.key == key
    with pytest.raises(ConfigError):
        wf.wandb_init(**settings)
    assert run_dirs(wandb_env) == {}


def test_decorating_a_non_callable_is_an_error():
    with pytest.raises(ConfigError, match="can only decorate a function"):
        wf.wandb_init(42)


def test_precedence_and_merge(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_JOB_TYPE", "env-job")
    wf.wandb_config(project="from-session", tags=["s"], config={"a": 1}, run_mode="new")
    with (
        wf.wandb_config(group="block-group", config={"b": 2}),
        wf.wandb_config(project="inner-block"),
        wf.task("t", config={"c": 3}) as run,
    ):
        run_id = run.id
    record = run_record(run_dirs(wandb_env)[run_id])
    assert record["project"] == "inner-block"
    assert record["run_group"] == "block-group", "an inner block overrides only the fields it names"
    assert record["job_type"] == "env-job"
    summary = leet_summary(run_dirs(wandb_env)[run_id])
    assert summary["config"] == {"a": 1, "b": 2, "c": 3}
    assert summary["tags"] == ["s"]


def test_explicit_argument_beats_blocks_and_a_block_does_not_reset_run_mode(wandb_env):
    wf.wandb_config(run_mode="new")
    with wf.wandb_config(project="blk"), wf.task("outer"), wf.task("inner", project="arg") as inner:
        inner_id = inner.id
    dirs = run_dirs(wandb_env)
    assert len(dirs) == 2, "run_mode=new from the session default survives a nested wandb_config"
    assert run_record(dirs[inner_id])["project"] == "arg"


def test_with_block_is_undone_and_call_applies_for_the_session(wandb_env):
    from wandbflow.config import resolve

    with wf.wandb_config(project="temp"):
        assert resolve().values["project"] == "temp"
    assert "project" not in resolve().values
    wf.wandb_config(project="kept")
    assert resolve().values["project"] == "kept"
    assert resolve().sources["project"] == "session"


def test_string_fields_stay_strings(wandb_env):
    with wf.task("t", id="123", config={"id": "123", "seed": "7"}) as run:
        assert run.id == "123"
    summary = leet_summary(run_dirs(wandb_env)["123"])
    assert summary["run_id"] == "123"
    assert summary["config"] == {"id": "123", "seed": "7"}


def test_secret_config_values_are_redacted(wandb_env):
    with wf.task("t", config={"wandb_api_key": "k" * 40, "nested": {"token": "t"}, "lr": 0.1}) as run:
        run_id = run.id
    summary = leet_summary(run_dirs(wandb_env)[run_id])
    assert summary["config"] == {"wandb_api_key": "***", "nested": {"token": "***"}, "lr": 0.1}
    assert ledger(wandb_env).get(run_id).config["wandb_api_key"] == "***"


def test_each_execution_gets_a_new_id(wandb_env):
    @wf.wandb_init
    def step():
        return wf.get_wandb_run().id

    first, second = step(), step()
    prefix = f"{naming.session_id()}-step-"
    assert first.startswith(prefix) and second == f"{prefix}{int(first.removeprefix(prefix)) + 1}"
    assert set(run_dirs(wandb_env)) == {first, second}


def test_long_names_give_valid_ids_of_at_most_64_characters(wandb_env):
    with wf.task("a very/long name " * 6) as run:
        run_id = run.id
    assert len(run_id) <= 64
    naming.check_id(run_id)


def test_wandb_globals_address_the_scope_and_are_restored(wandb_env):
    with wf.task("outer") as outer:
        with wf.task("inner", run_mode="new") as inner:
            assert wandb.run is inner
            wandb.config.update({"inner_only": 1})
            wandb.summary["inner_summary"] = 2
        assert wandb.run is outer
        wandb.log({"outer_metric": 1})
    assert wandb.run is None
    dirs = run_dirs(wandb_env)
    assert leet_summary(dirs[inner.id])["config"] == {"inner_only": 1}
    assert leet_summary(dirs[inner.id])["summary"]["inner_summary"] == 2
    assert leet_summary(dirs[outer.id])["summary"]["outer_metric"] == 1


def test_plain_wandb_init_inside_a_scope_returns_the_scope_run(wandb_env):
    with wf.task("t") as run:
        assert wandb.init() is run
        wandb.log({"x": 1})
    assert len(run_dirs(wandb_env)) == 1
    assert leet_summary(only_run(wandb_env))["state"] == "finished"


def test_wandb_finish_inside_a_scope_is_not_finished_twice(wandb_env):
    with wf.task("t"):
        wandb.log({"x": 1})
        wandb.finish(exit_code=3)
    records = leet_records(only_run(wandb_env))
    exits = [r for r in records if r["type"] == "exit"]
    assert [e["exit"]["exit_code"] for e in exits] == [3]


def test_private_wandb_global_setter_is_still_what_we_rely_on(wandb_env):
    """wandbflow points wandb.run/log/config/summary at a scope's run through wandb's private setter."""
    from wandb.sdk.lib import module
    from wandb.sdk.wandb_init import _set_global_run

    run = wandb.init(mode="offline", reinit="create_new")
    try:
        assert wandb.run is None, "reinit='create_new' leaves the globals alone"
        _set_global_run(run)
        assert wandb.run is run and wandb.config is run.config and wandb.summary is run.summary
        assert wandb.log == run.log
        module.unset_globals()
        assert wandb.run is None
    finally:
        run.finish()


def test_threads_do_not_see_each_other_runs(wandb_env):
    barrier = threading.Barrier(2, timeout=60)
    seen: dict[str, tuple] = {}
    errors: list[BaseException] = []

    def worker(name):
        try:
            with wf.task(name, run_mode="new") as run:
                barrier.wait()
                seen[name] = (run.id, wf.get_wandb_run().id)
                wf.get_wandb_run().log({name: 1})
                barrier.wait()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert seen["left"][0] == seen["left"][1] and seen["right"][0] == seen["right"][1]
    assert seen["left"][0] != seen["right"][0]
    dirs = run_dirs(wandb_env)
    assert "right" not in leet_summary(dirs[seen["left"][0]])["summary"]


def test_async_steps_each_see_their_own_run(wandb_env):
    @wf.wandb_init
    async def step(name):
        run = wf.get_wandb_run()
        await asyncio.sleep(0.05)
        assert wf.get_wandb_run() is run
        run.log({name: 1})
        return run.id

    async def main():
        return await asyncio.gather(step("a"), step("b"))

    a, b = asyncio.run(main())
    assert a != b
    assert set(run_dirs(wandb_env)) == {a, b}


def test_async_step_failure_is_recorded(wandb_env):
    @wf.wandb_init
    async def step():
        raise RuntimeError("async boom")

    with pytest.raises(RuntimeError, match="async boom"):
        asyncio.run(step())
    assert leet_summary(only_run(wandb_env))["exit_code"] == 1


def test_methods_can_be_steps(wandb_env):
    class Model:
        @wf.wandb_init(job_type="fit")
        def fit(self, x):
            return wf.get_wandb_run().job_type, x

    assert Model().fit(2) == ("fit", 2)


def test_host_is_a_setting_not_an_init_argument(wandb_env):
    with wf.task("t", host="https://wandb.example.invalid") as run:
        assert run.settings.base_url == "https://wandb.example.invalid"
    assert leet_summary(only_run(wandb_env))["state"] == "finished"


def test_offline_by_default_is_said_once_with_the_sync_command(wandb_env, capsys):
    with wf.task("a"):
        pass
    with wf.task("b"):
        pass
    out = capsys.readouterr().out
    assert out.count("no W&B credentials") <= 1
    assert "wandb sync" in out


def test_disabled_mode_runs_the_body_and_records_nothing(wandb_env):
    with wf.task("t", mode="disabled") as run:
        run.log({"x": 1})
        assert wf.get_wandb_run_dir() is None
    assert run_dirs(wandb_env) == {}


def test_run_dir_is_the_directory_leet_reads(wandb_env):
    with wf.task("t"):
        run_dir = wf.get_wandb_run_dir()
    assert leet_summary(run_dir)["state"] == "finished"


def test_an_ambient_scope_parents_later_scopes_until_it_ends(wandb_env):
    pipeline = wf.Scope("etl", {"group": "etl"}, source_kind="block", quiet=True)
    outer = pipeline.start(ambient=True)
    try:
        with wf.task("step") as step_run:
            assert step_run is outer, "auto reuses the ambient parent"
        seen = {}
        thread = threading.Thread(target=lambda: seen.update(run=wf.get_wandb_run()))
        thread.start()
        thread.join()
        assert seen["run"] is outer, "the ambient scope spans threads (and cells)"
        with wf.task("child", run_mode="new") as child:
            child_id = child.id
    finally:
        pipeline.end()
    assert wf.get_wandb_run() is None
    dirs = run_dirs(wandb_env)
    assert run_record(dirs[child_id])["run_group"] == "etl"
    assert leet_summary(dirs[outer.id])["state"] == "finished"


def test_online_shared_mode_settings_need_no_server():
    """Server-free check of the settings a shared online rank gets (W&B's shared mode cannot run here)."""
    from wandbflow.policy import plan
    from wandbflow.scope import _run_settings

    topology = {"rank": 1, "local_rank": 1, "world_size": 2, "local_world_size": 2, "worker_index": 0, "num_workers": 1}
    secondary = plan("shared", "global", topology=topology, parent=None, base="b")
    settings = _run_settings({"mode": "online", "host": "https://w.acme"}, secondary)
    assert (settings.mode, settings.x_primary, settings.x_label, settings.x_update_finish_state) == (
        "shared",
        False,
        "rank-1",
        False,
    )
    assert settings.base_url == "https://w.acme"


def test_the_ledger_keeps_the_config_a_run_ends_with(wandb_env):
    with wf.task("grows", config={"a": 1}) as run:
        run.config["b"] = 2
        run.config["api_key"] = "hidden"
    row = ledger(wandb_env).get(run.id)
    assert row.config == {"a": 1, "b": 2, "api_key": "***"}
