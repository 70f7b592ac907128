"""``wandbflow sweep create``, ``wandbflow agent`` and ``wandbflow sync``."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap

import pytest

import wandbflow as wf
from wandbflow import cli
from wandbflow.ledger import Ledger, default_path
from wandbflow.sweeps.spec import reset_session_config

WANDBFLOW = os.path.join(os.path.dirname(sys.executable), "wandbflow")
SWEEP_YAML = """\
method: grid
metric: {name: loss, goal: minimize}
parameters:
  a: {values: [1, 2, 3]}
  lr: {values: [1e-3, 1e-2]}
"""


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


def test_sweep_create_prints_only_the_id_and_agent_serves_it(wandb_env, capsys):
    (wandb_env / "sweep.yaml").write_text(SWEEP_YAML)
    created = subprocess.run(
        [WANDBFLOW, "sweep", "create", "sweep.yaml"], cwd=wandb_env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    sweep_id = created.stdout.strip()
    assert len(sweep_id) == 8 and sweep_id.isalnum(), "stdout is the id alone: ID=$(wandbflow sweep create ...)"
    assert cli.main(["agent", sweep_id, "--function", "sweep_workers:objective", "--count", "2", "--no-progress"]) == 0
    assert f"sweep {sweep_id}: 2 trials run by this agent; all trials: 2 finished" in capsys.readouterr().out
    rows = Ledger(default_path(wandb_env)).records(sweep_id=sweep_id)
    assert sorted(r.trial_id for r in rows) == ["0", "1"] and {r.state for r in rows} == {"finished"}
    assert cli.main(["agent", sweep_id, "--function", "sweep_workers:objective", "--no-progress"]) == 0
    assert "4 trials run by this agent; all trials: 6 finished" in capsys.readouterr().out, "until the grid is done"


def test_sweep_create_rejects_a_bad_config_with_its_key_path(wandb_env, capsys):
    (wandb_env / "bad.yaml").write_text("method: random\nparameters:\n  lr: {min: 0.1, max: 0.01}\n")
    assert cli.main(["sweep", "create", "bad.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wandbflow: error: parameters.lr.max: must be > min") and err.count("\n") == 1
    assert not (wandb_env / "wandb" / "sweeps.db").exists()
    assert cli.main(["sweep", "create", "missing.yaml"]) == 1
    assert "config: cannot read missing.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("sweep_workers", "--function: must be MODULE:FUNCTION"),
        ("no_such_module:objective", "--function: cannot import no_such_module:objective"),
        ("sweep_workers:nothing", "--function: cannot import sweep_workers:nothing"),
        ("sweep_workers:os.sep", "--function: sweep_workers:os.sep is not callable"),
    ],
)
def test_agent_reports_a_bad_function(wandb_env, capsys, function, message):
    sweep = wf.sweep({"method": "random", "parameters": {"a": {"values": [1]}}})
    assert cli.main(["agent", sweep.id, "--function", function]) == 1
    assert message in capsys.readouterr().err
    assert sweep.records() == [], "no trial was handed out"


def test_agent_reports_an_unknown_sweep_and_needs_a_function(wandb_env, capsys):
    assert cli.main(["agent", "nosuch12", "--function", "sweep_workers:objective"]) == 1
    assert "no sweep 'nosuch12'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["agent", "nosuch12"])
    assert info.value.code == 2
    assert "--function" in capsys.readouterr().err


@pytest.fixture
def fake_wandb(tmp_path, monkeypatch):
    """A clearly fake ``wandb`` first on PATH: it records its arguments instead of uploading (no server here)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    calls = tmp_path / "fake-wandb-calls.txt"
    script = bin_dir / "wandb"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import shlex, sys
            with open({str(calls)!r}, "a") as handle:
                handle.write(shlex.join(sys.argv[1:]) + "\\n")
            """
        )
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_sync_hands_the_ledgers_offline_runs_to_wandb_sync(wandb_env, fake_wandb, capsys):
    sweep = wf.sweep({"method": "grid", "parameters": {"a": {"values": [1, 2]}}})
    wf.agent(sweep, lambda: None, progress=False)
    with wf.task("outside", quiet=True) as run:
        outside = run.settings.sync_dir
    trial_dirs = list(sweep.trials()["dir"])
    capsys.readouterr()

    assert cli.main(["sync", "--sweep", sweep.id, "--dry-run"]) == 0
    assert capsys.readouterr().out.split()[1:] == ["sync", *trial_dirs]
    assert not fake_wandb.exists(), "a dry run runs nothing"

    assert cli.main(["sync", "--sweep", sweep.id]) == 0
    assert shlex.split(fake_wandb.read_text()) == ["sync", *trial_dirs], "only the sweep's runs, oldest first"
    fake_wandb.unlink()
    assert cli.main(["sync"]) == 0
    assert shlex.split(fake_wandb.read_text()) == ["sync", *trial_dirs, str(outside)]
    assert cli.main(["sync", "--session", "no-such-session"]) == 0
    assert "no offline runs to sync" in capsys.readouterr().out
