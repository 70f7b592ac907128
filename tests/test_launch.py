"""``wandbflow.launch`` on real ranks: gloo on CPU, real offline runs read back with ``wandb leet inspect``."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from conftest import leet_records, leet_summary, run_dirs
from launch_workers import (
    every_mode,
    exit_quietly_on_rank_1,
    kill_rank_1,
    raise_on_rank_1,
    sleep_after_writing_pid,
    sleep_in_a_run,
)

import wandbflow as wf
from wandbflow import naming
from wandbflow.errors import ConfigError, LaunchError
from wandbflow.launcher import launch_cell
from wandbflow.ledger import Ledger, default_path

pytestmark = pytest.mark.timeout(180)
TESTS = Path(__file__).resolve().parent


def socket_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pids_in(folder: Path, count: int, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.glob("*.pid"))
        if len(found) == count and all(p.read_text() for p in found):
            return [int(p.read_text()) for p in found]
        time.sleep(0.05)
    raise TimeoutError(f"{count} ranks did not start")


def expected_runs(base: dict[str, str], nodes: int, per_node: int) -> dict[str, dict[str, str | None]]:
    """Run id -> group for each step, from the DESIGN.md table (``base`` maps step -> its base id)."""
    multi = nodes > 1
    runs: dict[str, dict[str, str | None]] = {name: {} for name in base}
    for worker in range(nodes):
        worker_id = f"-worker-{worker}" if multi else ""
        for local in range(per_node):
            rank = worker * per_node + local
            new_worker = f"{base['new_worker']}-worker-{worker}"
            for name, run_id, group in (
                ("auto_global", base["auto_global"], None),
                ("shared_global", base["shared_global"], None),
                ("auto_worker", base["auto_worker"] + worker_id, None),
                ("shared_worker", base["shared_worker"] + worker_id, None),
                ("new_global", f"{base['new_global']}-rank-{rank}", base["new_global"]),
                ("new_worker", f"{new_worker}-rank-{local}", new_worker),
            ):
                runs[name][naming.fit(run_id)] = naming.fit(group) if group else None
    return runs


def check_every_mode(root: Path, results: list[dict], nodes: int, per_node: int) -> None:
    """Every step's runs exist once, with the right ids and groups, finished; shared runs hold every rank."""
    session = results[0]["session"]
    assert all(r["session"] == session for r in results), "every rank shares the session id"
    # The launched function's first scope takes the launch's base id; later ones count their own task.
    bases = {name: f"{session}-{name}-1" for name in results[0]["steps"]}
    bases["auto_global"] = results[0]["steps"]["auto_global"]["id"]
    expected = expected_runs(bases, nodes, per_node)
    dirs = run_dirs(root)
    assert set(dirs) == {run_id for runs in expected.values() for run_id in runs}
    with ThreadPoolExecutor(4) as pool:  # one wandb CLI call per run, each mostly start-up time
        files = dict(zip(dirs, pool.map(leet_records, dirs.values()), strict=True))
    for name, runs in expected.items():
        for run_id, group in runs.items():
            records = files[run_id]
            run = next(r["run"] for r in records if r["type"] == "run")
            assert (run.get("run_group") or None) == group, run_id
            assert [r["exit"].get("exit_code", 0) for r in records if r["type"] == "exit"] == [0], run_id
            rows = [r["history"]["item"] for r in records if r["type"] == "history"]
            labels = {k.split("/")[0] for row in rows for k in row if k.endswith("/loss")}
            ranks_in_run = per_node * (nodes if name == "shared_global" else 1) if name.startswith("shared") else 1
            assert len(labels) == ranks_in_run - 1, "every other rank's rows reached the shared run"
            assert len(rows) == 3 * ranks_in_run, "no row lost"
    for result in results:
        for name, step in result["steps"].items():
            assert step["id"] is None or step["id"] in expected[name]


def test_every_mode_and_scope_on_two_simulated_nodes(wandb_env, capsys):
    results = wf.launch(every_mode, nproc_per_node=2, nnodes=2, timeout=150)

    assert [r["info"]["rank"] for r in results] == [0, 1, 2, 3], "results come back in rank order"
    assert [(r["info"]["worker_index"], r["info"]["local_rank"]) for r in results] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(r["info"]["world_size"] == 4 and r["info"]["num_workers"] == 2 for r in results)
    check_every_mode(wandb_env, results, nodes=2, per_node=2)
    session = naming.session_id()
    assert results[0]["session"] == session and results[0]["steps"]["auto_global"]["id"] == f"{session}-every_mode-1"
    shared = results[0]["steps"]["shared_global"]["id"]
    labels = leet_summary(run_dirs(wandb_env)[shared])["summary"]
    assert labels["worker-1-rank-1/loss"] == pytest.approx(3.2) and labels["worker-1-rank-1/step"] == 2
    assert labels["loss"] == pytest.approx(0.2), "the primary's own keys are not prefixed"
    rows = Ledger(default_path(wandb_env)).records(session=session)
    assert len(rows) == 14 and {r.state for r in rows} == {"finished"}
    assert {(r.rank, r.worker_index) for r in rows} == {(0, 0), (1, 0), (2, 1), (3, 1)}
    out = capsys.readouterr().out
    for rank in range(4):
        assert f"[rank {rank}] rank {rank} of 4 ready" in out


def test_the_same_function_under_torchrun(wandb_env):
    out = wandb_env / "results"
    out.mkdir()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*torchrun, str(TESTS / "launch_workers.py"), str(out)],
        cwd=wandb_env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads((out / f"{rank}.json").read_text()) for rank in range(2)]
    check_every_mode(wandb_env, results, nodes=1, per_node=2)


def test_one_node_of_a_real_multi_node_job_per_call(wandb_env):
    port = socket_port()
    code = (
        "import json, sys, wandbflow as wf\n"
        "from launch_workers import where_am_i\n"
        "node = int(sys.argv[1])\n"
        f"results = wf.launch(where_am_i, nproc_per_node=2, nnodes=2, node_rank=node, master_addr='127.0.0.1', "
        f"master_port={port}, timeout=120)\n"
        "print(json.dumps(results))"
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    nodes = [
        subprocess.Popen([sys.executable, "-c", code, str(n)], stdout=subprocess.PIPE, text=True, env=env)
        for n in (0, 1)
    ]
    outputs = [node.communicate(timeout=150)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0]
    results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert [[r["rank"] for r in node] for node in results] == [[0, 1], [2, 3]], "each call returns its node's ranks"
    assert {(r["worker_index"], r["local_rank"], r["world_size"], r["sum"]) for node in results for r in node} == {
        (0, 0, 4, 10.0),
        (0, 1, 4, 10.0),
        (1, 0, 4, 10.0),
        (1, 1, 4, 10.0),
    }


def test_spawned_ranks_run_a_closure(wandb_env, capsys):
    offset = 100

    def closure(scale: int) -> int:
        import torch.distributed as dist

        print("spawned", dist.get_rank())
        return offset + scale * dist.get_rank()

    assert wf.launch(closure, 10, nproc_per_node=2, start_method="spawn", timeout=150) == [100, 110]
    out = capsys.readouterr().out
    assert "[rank 0] spawned 0" in out and "[rank 1] spawned 1" in out


def test_fork_is_not_used_once_cuda_is_initialized(monkeypatch, caplog):
    from wandbflow import launcher

    monkeypatch.setattr(launcher.torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(launcher, "_warned", set())
    assert launcher._choose_start_method("auto") in ("forkserver", "spawn")
    assert launcher._choose_start_method("auto") in ("forkserver", "spawn")
    assert caplog.text.count("CUDA is already initialized") == 1, "said once"
    with pytest.raises(ConfigError, match="cannot fork") as info:
        launcher._choose_start_method("fork")
    assert info.value.key == "start_method"


def test_a_raising_rank_fails_the_launch_with_its_traceback(wandb_env):
    with pytest.raises(LaunchError) as info:
        wf.launch(raise_on_rank_1, "boom on rank 1", nproc_per_node=2, timeout=150)
    error = info.value
    assert error.rank == 1 and error.error_type == "ValueError" and error.exit_code == 1
    assert "boom on rank 1" in str(error) and "raise_on_rank_1" in error.traceback
    assert "Traceback on rank 1" in str(error)
    rows = {r.rank: r for r in Ledger(default_path(wandb_env)).records()}
    assert rows[1].state == "failed" and rows[1].exit_code == 1
    assert rows[0].state == "interrupted", "the other rank was stopped and finished its run itself"
    assert leet_summary(rows[1].dir)["exit_code"] == 1
    assert leet_summary(rows[0].dir)["exit_code"] == 255


def test_a_rank_killed_by_a_signal_is_reported_and_its_run_recorded_crashed(wandb_env):
    with pytest.raises(LaunchError) as info:
        wf.launch(kill_rank_1, nproc_per_node=2, timeout=150)
    error = info.value
    assert (error.rank, error.signal, error.exit_code) == (1, "SIGKILL", None)
    assert "SIGKILL" in str(error) and not alive(error.pid)
    rows = {r.rank: r for r in Ledger(default_path(wandb_env)).records()}
    assert rows[1].state == "crashed" and rows[1].signal == signal.SIGKILL
    assert rows[0].state == "interrupted"


def test_a_rank_that_returns_nothing_fails_the_launch(wandb_env):
    with pytest.raises(LaunchError, match=r"rank 1 .* ended without returning") as info:
        wf.launch(exit_quietly_on_rank_1, nproc_per_node=2, backend=None, timeout=150)
    assert (info.value.rank, info.value.exit_code) == (1, 0)


def test_timeout_stops_every_rank(wandb_env):
    started = time.monotonic()
    with pytest.raises(LaunchError, match="timed out after 3s"):
        wf.launch(sleep_after_writing_pid, str(wandb_env), nproc_per_node=2, timeout=3)
    assert time.monotonic() - started < 30
    pids = [int(p.read_text()) for p in wandb_env.glob("*.pid")]
    assert len(pids) == 2 and not any(alive(pid) for pid in pids)


def test_ctrl_c_stops_every_rank_and_their_runs_end_interrupted(wandb_env):
    main = threading.main_thread().ident
    seen: dict[str, list[int]] = {}

    def interrupt() -> None:
        seen["pids"] = pids_in(wandb_env, 2)
        time.sleep(0.5)  # let the ranks open their runs
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        wf.launch(sleep_in_a_run, str(wandb_env), nproc_per_node=2, timeout=150)
    assert not any(alive(pid) for pid in seen["pids"])
    rows = Ledger(default_path(wandb_env)).records()
    assert len(rows) == 2 and {r.state for r in rows} <= {"interrupted", "crashed"}


def test_a_notebook_defined_function_in_a_real_kernel(wandb_env):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import wandbflow as wf\n"
            "scale = 3.0\n"
            "@wf.wandb_init(run_mode='new', project='from-a-notebook')\n"
            "def train(offset):\n"
            "    import torch, torch.distributed as dist\n"
            "    t = torch.ones(1) * scale\n"
            "    dist.all_reduce(t)\n"
            "    print('sum', t.item())\n"
            "    return t.item() + offset + dist.get_rank()\n"
        ),
        nbformat.v4.new_code_cell("results = wf.launch(train, 1, nproc_per_node=2, timeout=120)\nprint(results)"),
    ]
    NotebookClient(nb, timeout=150, kernel_name="python3", resources={"metadata": {"path": str(wandb_env)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[1].outputs if o.output_type == "stream")
    assert "[rank 0] sum 6.0" in text and "[rank 1] sum 6.0" in text
    assert "[7.0, 8.0]" in text
    assert len(run_dirs(wandb_env)) == 2


def test_launch_cell_brings_back_rank_0_variables_and_a_card_per_run(wandb_env):
    source = (
        "import torch.distributed as dist\n"
        "rank = dist.get_rank()\n"
        "total = base + dist.get_world_size()\n"
        "def double(v):\n"
        "    return 2 * v\n"
        "double(total)"
    )
    result = launch_cell(
        source,
        {"base": 40, "untouched": object()},
        name="cell7",
        nproc_per_node=2,
        settings={"run_mode": "new", "project": "cells"},
        timeout=150,
    )
    assert result.value == 84 and result.skipped == []
    assert result.variables["rank"] == 0 and result.variables["total"] == 42
    assert result.variables["double"](4) == 8 and set(result.variables) == {"dist", "rank", "total", "double"}
    assert sorted(card.run_id[-6:] for card in result.runs) == ["rank-0", "rank-1"]
    assert all(card.state == "finished" for card in result.runs)
    assert {leet_summary(card.run_dir)["state"] for card in result.runs} == {"finished"}


def test_launch_cell_names_the_globals_that_cannot_be_sent(wandb_env):
    namespace = {"lock": threading.Lock(), "unused": threading.Lock(), "n": 1}
    with pytest.raises(LaunchError, match="global 'lock'") as info:
        launch_cell("with lock:\n    m = n", namespace, name="c", nproc_per_node=2, start_method="spawn")
    assert "unused" not in str(info.value)
    with pytest.raises(SyntaxError):
        launch_cell("x = (", {}, name="c", nproc_per_node=2)


def test_an_argument_that_cannot_be_sent_is_named_before_any_rank_starts(wandb_env):
    with pytest.raises(LaunchError, match="keyword argument 'guard'"):
        wf.launch(print, kwargs={"guard": threading.Lock()}, nproc_per_node=2, start_method="spawn")


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"nproc_per_node": 0}, "nproc_per_node"),
        ({"nproc_per_node": 2, "nnodes": 2, "node_rank": 2}, "node_rank"),
        ({"nproc_per_node": 2, "nnodes": 2, "node_rank": 1}, "master_addr"),
        ({"nproc_per_node": 2, "start_method": "thread"}, "start_method"),
        ({"nproc_per_node": 2, "timeout": 0}, "timeout"),
        ({"nproc_per_node": 2, "run_mode": "sometimes"}, "run_mode"),
    ],
)
def test_bad_options_fail_before_any_rank_starts(options, key):
    with pytest.raises(ConfigError) as info:
        wf.launch(print, **options)
    assert info.value.key == key


def test_launch_error_pickles_with_its_fields():
    error = LaunchError("rank 1 raised", rank=1, pid=42, exit_code=1, error_type="ValueError", traceback="tb")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is LaunchError and str(back) == "rank 1 raised"
    assert (back.rank, back.pid, back.exit_code, back.signal, back.error_type, back.traceback) == (
        1,
        42,
        1,
        None,
        "ValueError",
        "tb",
    )
