"""Settings resolution, the inherited context and redaction (pure: no runs)."""

from __future__ import annotations

import json
import pickle
import threading

import pytest

import wandbflow as wf
from wandbflow import config, inherit, naming
from wandbflow.config import has_credentials, resolve
from wandbflow.errors import ConfigError, LedgerError, ScopeError, WandbflowError
from wandbflow.redact import redact


def test_every_tier_in_order(monkeypatch):
    env = {"WANDB_PROJECT": "env", "WANDB_ENTITY": "env-e", "WANDB_RUN_GROUP": "env-g", "WANDB_TAGS": "a, b"}
    assert resolve(environ=env).sources["project"] == "environment"
    assert resolve(environ=env).values["tags"] == ["a", "b"]
    wf.wandb_config(project="session", entity="session-e")
    inherit.adopt(inherit.InheritedContext(session="s", settings={"project": "inherited"}))
    with wf.wandb_config(project="block"):
        got = resolve({"project": "arg"}, environ=env)
        assert (got.values["project"], got.sources["project"]) == ("arg", "argument")
        got = resolve(environ=env)
        assert (got.values["project"], got.sources["project"]) == ("block", "block")
    got = resolve(environ=env)
    assert got.values["project"] == "inherited" and got.sources["entity"] == "session"
    assert got.values["group"] == "env-g"
    assert got.sources["run_mode"] == "default" and got.values["rank_scope"] == "global"


def test_a_trial_notebooks_own_config_cannot_pull_it_out_of_the_sweep():
    inherit.adopt(inherit.InheritedContext(session="s", settings={"project": "sweep-project", "group": "sw"}))
    wf.wandb_config(project="mine")
    assert resolve().values["project"] == "sweep-project"


def test_parent_scope_tier_ranks_above_the_blocks_it_was_opened_in():
    with wf.wandb_config(project="outer-block"):
        parent = resolve({"project": "step-arg"})
        depth = config.block_depth()
        assert resolve(parent=parent, parent_depth=depth).values["project"] == "step-arg"
        with wf.wandb_config(project="inner-block"):
            assert resolve(parent=parent, parent_depth=depth).values["project"] == "inner-block"


def test_blocks_are_context_local_and_the_session_default_is_process_wide():
    seen = {}
    wf.wandb_config(entity="everyone")

    def other_thread():
        got = resolve()
        seen["project"], seen["entity"] = got.get("project"), got.get("entity")

    with wf.wandb_config(project="mine"):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert seen == {"project": None, "entity": "everyone"}


def test_wandb_config_is_a_mapping():
    cfg = wf.wandb_config(project="p", tags=("a",), run_mode="new")
    assert dict(cfg) == {"project": "p", "tags": ["a"], "run_mode": "new"}
    assert "wandb_config(project='p'" in repr(cfg)


def test_bad_field_applies_nothing():
    with pytest.raises(ConfigError) as info:
        wf.wandb_config(project="p", run_mode="often")
    assert info.value.key == "run_mode"
    assert "project" not in resolve().values


def test_mode_defaults_to_offline_without_credentials_and_online_with(tmp_path):
    env = {"NETRC": str(tmp_path / "none")}
    assert resolve(environ=env).values["mode"] == "offline"
    assert resolve(environ={**env, "WANDB_API_KEY": "x" * 40}).values["mode"] == "online"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    assert has_credentials(None, {"NETRC": str(netrc)})
    assert not has_credentials("https://other.example", {"NETRC": str(netrc)})
    assert resolve({"mode": "disabled"}, environ=env).values["mode"] == "disabled"
    assert resolve(environ={**env, "WANDB_MODE": "online"}).values["mode"] == "online"


def test_inherited_context_round_trip_keeps_no_secret():
    ctx = inherit.make_context(
        {
            "project": "p",
            "entity": "e",
            "mode": "offline",
            "tags": ["x"],
            "config": {"api_key": "s3cret", "lr": 1},
            "run_mode": "new",
        },
        session="sess",
        base="sess-train-3",
        run_id="trial-1",
        sweep_id="sw",
    )
    env = inherit.child_environment(ctx)
    assert "s3cret" not in json.dumps(env)
    assert env["WANDB_PROJECT"] == "p" and env["WANDB_TAGS"] == "x" and env["WANDB_RUN_ID"] == "trial-1"
    back = inherit.InheritedContext.from_json(env[inherit.ENV_VAR])
    assert back == ctx
    assert "run_mode" not in back.settings


def test_child_reads_the_context_from_its_environment(monkeypatch):
    ctx = inherit.make_context({"project": "p"}, session="parent-session", base="parent-session-fn-2")
    monkeypatch.setenv(inherit.ENV_VAR, ctx.to_json())
    monkeypatch.setattr(inherit, "_read", False)
    monkeypatch.setattr(inherit, "_adopted", None)
    assert inherit.current() == ctx
    assert inherit.take_base() == "parent-session-fn-2"
    assert inherit.take_base() is None


def test_ids():
    assert naming.check_id("abc-1_X") == "abc-1_X"
    assert naming.fit("a" * 64) == "a" * 64
    long = naming.fit("a" * 100)
    assert len(long) == 64 and long != naming.fit("a" * 99)
    assert naming.sanitize("my cell/1 (v2)") == "my-cell-1-v2"


def test_redact_is_recursive():
    assert redact({"db_password": "x", "inner": [{"github_token": "y"}], "n": 1}) == {
        "db_password": "***",
        "inner": [{"github_token": "***"}],
        "n": 1,
    }


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("must be one of auto", key="run_mode"),
        ScopeError("no parent", task="t"),
        LedgerError("locked", path="/x.db"),
    ],
)
def test_every_error_pickles_with_its_fields(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error) and back._fields == error._fields
    assert isinstance(back, WandbflowError)


def test_init_keywords_match_the_installed_wandb():
    import inspect

    import wandb

    params = set(inspect.signature(wandb.init).parameters)
    assert set(config.INIT_KEYWORDS) <= params
    owned = set(config.FIELDS) - {"host", "run_mode", "rank_scope"}
    assert owned <= params
    assert params - set(config.INIT_KEYWORDS) - set(config.FIELDS) == {"reinit"}, "a new wandb.init keyword"


def test_import_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, wandbflow; heavy = {'torch', 'wandb', 'optuna', 'papermill', 'ipywidgets', 'pandas'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
