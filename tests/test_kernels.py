"""Trial kernels (wandbflow.kernels) against real ipykernel processes: starts at once, readiness, dead kernels."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from jupyter_client.manager import KernelManager
from jupyter_core.utils import run_sync

from wandbflow import kernels
from wandbflow.errors import NotebookError

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.name != "posix", reason="kernels talk over Unix sockets on POSIX only"),
]


class _CountingLock:
    """Stands in for the TCP start lock and counts who took it."""

    def __init__(self) -> None:
        self.taken = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _value(manager, code: str) -> str:
    outputs: list[str] = []
    with kernels.ready_client(manager, timeout=60) as client:
        reply = client.execute_interactive(
            code, timeout=60, output_hook=lambda msg: outputs.append(msg["content"].get("text", ""))
        )
    assert reply["content"]["status"] == "ok"
    return "".join(outputs).strip()


def test_kernels_over_unix_sockets_start_at_once_each_at_its_own_path(tmp_path, monkeypatch):
    lock = _CountingLock()
    monkeypatch.setattr(kernels, "_start_lock", lock)
    env = {**os.environ, "MARK": "warmed"}
    warm = "import os; os.environ['MARK'] += '-and-run'"
    with ThreadPoolExecutor(max_workers=3) as starts:
        managers = list(
            starts.map(
                lambda _: kernels.start_kernel(kernel_name="python3", cwd=str(tmp_path), env=env, warm=warm), range(3)
            )
        )
    try:
        assert lock.taken == 0  # no port to race for: nothing serializes the starts
        assert {m.transport for m in managers} == {"ipc"}
        assert len({m.ip for m in managers}) == 3
        pids = {_value(m, "import os; print(os.getpid())") for m in managers}
        assert len(pids) == 3
        # the warm code ran, silently, and left no name behind in the notebook's namespace
        assert {_value(m, "print(os.environ['MARK'], 'warm' in dir())") for m in managers} == {"warmed-and-run False"}
    finally:
        for manager in managers:
            kernels.shutdown(manager)
    assert not any(m.is_alive() for m in managers)


def test_answer_returns_once_the_kernel_answers_and_its_iopub_is_live(tmp_path):
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(tmp_path))
    try:
        # right after the start: the first request is queued until the kernel listens, and answered then
        assert _value(manager, "print(6 * 7)") == "42"
    finally:
        kernels.shutdown(manager)


def test_answer_fails_fast_for_a_kernel_that_died(tmp_path):
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(tmp_path))
    client = manager.blocking_client()
    client.start_channels()
    try:
        manager.signal_kernel(signal.SIGKILL)
        manager.provisioner.process.wait(timeout=30)
        with pytest.raises(RuntimeError, match="died before it answered"):
            run_sync(kernels.answer)(client, timeout=60)
    finally:
        client.stop_channels()
        kernels.shutdown(manager)


def test_a_kernel_that_exits_at_start_is_a_notebook_error_naming_it(tmp_path, monkeypatch):
    # a kernelspec whose kernel exits at once: the start fails with the kernel's name, and nothing is left running
    spec = tmp_path / "kernels" / "broken"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", "raise SystemExit(3)", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "broken", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.raises(NotebookError, match="could not start kernel 'broken'"):
        kernels.start_kernel(kernel_name="broken", cwd=str(tmp_path), env=dict(os.environ))


def test_shutdown_kills_a_kernel_whose_shutdown_request_fails(tmp_path, monkeypatch):
    manager = kernels.start_kernel(kernel_name="python3", cwd=str(tmp_path), env=dict(os.environ))
    process = manager.provisioner.process

    def refuse(**_: object) -> None:
        raise RuntimeError("the kernel did not answer the shutdown request")

    monkeypatch.setattr(manager, "shutdown_kernel", refuse)
    kernels.shutdown(manager)
    assert process.wait(timeout=30) == -signal.SIGKILL
