"""Several machines on one sweep, for real: the sweep in PostgreSQL, served by two agent processes.

The test starts Debian's PostgreSQL server itself, on 127.0.0.1 in a temporary directory (``.ci/run`` installs it),
as ``nobody`` when the tests run as root, since the server refuses to run as root.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import missing_service

import wandbflow as wf
from wandbflow.sweeps.spec import reset_session_config

TESTS = Path(__file__).resolve().parent
WANDBFLOW = os.path.join(os.path.dirname(sys.executable), "wandbflow")


def find_initdb() -> str | None:
    """Debian keeps the server's programs out of PATH, under /usr/lib/postgresql/VERSION/bin."""
    return shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )


def unprivileged() -> tuple[Callable[[], None] | None, int | None, int | None]:
    """How to run the server: as ourselves, or, as root, as ``nobody`` (preexec function, uid, gid)."""
    if os.geteuid() != 0:
        return None, None, None
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return drop, nobody.pw_uid, nobody.pw_gid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of our own on 127.0.0.1; yields its SQLAlchemy URL."""
    initdb = find_initdb()
    if initdb is None:
        missing_service("PostgreSQL's initdb was not found: .ci/run installs Debian's postgresql")
    drop, uid, gid = unprivileged()
    base = Path(tempfile.mkdtemp(prefix="wandbflow-pg-"))
    try:
        if uid is not None:
            os.chown(base, uid, gid)
        data, port = base / "data", free_port()
        subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8"],
            preexec_fn=drop,
            check=True,
            capture_output=True,
            timeout=120,
        )
        postgres_bin = os.path.join(os.path.dirname(initdb), "postgres")
        options = ["-h", "127.0.0.1", "-p", str(port), "-k", str(base), "-c", "fsync=off", "-c", "max_connections=50"]
        with open(base / "server.log", "w") as log:
            server = subprocess.Popen(
                [postgres_bin, "-D", str(data), *options], preexec_fn=drop, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                wait_for_server(server, port, base / "server.log")
                yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            finally:
                server.send_signal(signal.SIGINT)  # a fast shutdown: this process still holds pooled connections
                try:
                    server.wait(60)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def wait_for_server(server: subprocess.Popen, port: int, log: Path) -> None:
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{log.read_text()}") from None
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def _no_session_sweep_config():
    reset_session_config()
    yield
    reset_session_config()


@pytest.mark.timeout(300)
def test_two_agent_processes_on_a_postgres_sweep_reach_the_count_without_repeating_a_grid_point(wandb_env, postgres):
    grid = {"a": {"values": [1, 2, 3]}, "lr": {"values": [0.1, 0.01]}}
    sweep = wf.sweep({"method": "grid", "metric": {"name": "loss"}, "parameters": grid}, storage=postgres)
    assert sweep.info.location == postgres
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    command = ["agent", sweep.id, "--storage", postgres, "--function", "sweep_workers:objective", "--count", "3"]
    machines = [wandb_env / "machine-1", wandb_env / "machine-2"]  # each with its own wandb dir and ledger
    for machine in machines:
        machine.mkdir()
    agents = [
        subprocess.Popen(
            [WANDBFLOW, *command, "--no-progress"],
            cwd=machine,
            env={**env, "WANDB_DIR": str(machine)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for machine in machines
    ]
    outputs = [agent.communicate(timeout=240) for agent in agents]
    for agent, (out, err) in zip(agents, outputs, strict=True):
        assert agent.returncode == 0, out + err
        assert "3 trials run by this agent" in out
    records = sweep.records()
    assert [r.number for r in records] == list(range(6))
    assert {r.state for r in records} == {"finished"}
    assert len({r.worker for r in records}) == 2, "both agents served"
    assert len({json.dumps(r.params, sort_keys=True) for r in records}) == 6, "no grid point twice"
    assert sweep.state == "complete" and sweep.ask() is None
