"""The magics in real Jupyter kernels: the HTML card, Ctrl-C mid-cell, papermill's path, and a 300-cell soak."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import leet_summary, run_dirs
from jupyter_client.manager import KernelManager

from wandbflow.ledger import Ledger, default_path

pytestmark = pytest.mark.timeout(600)


class Kernel:
    """A real IPython kernel with a blocking client; ``execute`` returns the reply and the cell's outputs."""

    def __init__(self, cwd: Path) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd), env=dict(os.environ))
        self.client = self.manager.blocking_client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def submit(self, code: str) -> str:
        return self.client.execute(code, store_history=True)

    def outputs(self, msg_id: str, *, until_idle: bool = True, timeout: float = 120) -> Iterator[dict[str, Any]]:
        """IOPub messages of one execution, as they arrive, until the kernel is idle again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.get_iopub_msg(timeout=deadline - time.monotonic())
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and until_idle:
                return
            yield msg
        raise TimeoutError(f"no idle status for {msg_id}")

    def execute(self, code: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        msg_id = self.submit(code)
        outputs = list(self.outputs(msg_id))
        reply = self.client.get_shell_msg(timeout=120)
        return reply["content"], outputs

    def value(self, expression: str) -> Any:
        reply, outputs = self.execute(f"import json as _j; print(_j.dumps({expression}))")
        assert reply["status"] == "ok", reply
        text = "".join(m["content"]["text"] for m in outputs if m["msg_type"] == "stream")
        return json.loads(text.strip().splitlines()[-1])

    def shutdown(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(wandb_env) -> Iterator[Kernel]:
    k = Kernel(wandb_env)
    reply, _ = k.execute("%load_ext wandbflow")
    assert reply["status"] == "ok"
    yield k
    k.shutdown()


def html_of(outputs: list[dict[str, Any]]) -> list[str]:
    return [m["content"]["data"]["text/html"] for m in outputs if "text/html" in m["content"].get("data", {})]


def test_cell_shows_an_html_card_at_start_and_end(kernel, wandb_env):
    reply, outputs = kernel.execute("%%wandb_task --name hello\nimport wandb\nwandb.log({'acc': 0.9})")
    assert reply["status"] == "ok"
    cards = [h for h in html_of(outputs) if "hello" in h]
    assert len(cards) == 2, outputs
    (run_id,) = run_dirs(wandb_env)
    assert run_id in cards[0] and "wandb sync" in cards[0] and "offline" in cards[0]
    assert "finished" in cards[1] and "acc" in cards[1] and "0.9" in cards[1]


def test_interrupting_the_kernel_mid_cell_finishes_the_run_as_interrupted(kernel, wandb_env):
    msg_id = kernel.submit("%%wandb_task --name sleepy\nimport time\nfor _ in range(600):\n    time.sleep(0.1)")
    for msg in kernel.outputs(msg_id, until_idle=False):
        if msg["msg_type"] == "display_data":  # the start card: the run is open and the body is running
            break
    time.sleep(0.5)
    kernel.manager.interrupt_kernel()
    reply = kernel.client.get_shell_msg(timeout=120)["content"]
    assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
    assert kernel.value("1 + 1") == 2, "the kernel stays usable"
    (run_dir,) = run_dirs(wandb_env).values()
    assert leet_summary(run_dir)["exit_code"] == 255
    (row,) = Ledger(default_path(wandb_env)).records()
    assert row.state == "interrupted" and row.exit_code == 255


def test_under_papermill_the_notebook_path_is_recorded(wandb_env):
    import papermill

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("PAPERMILL_INPUT_PATH = None", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("%load_ext wandbflow"),
        nbformat.v4.new_code_cell("%%wandb_task --name step --quiet\nx = 1"),
    ]
    source = wandb_env / "train.ipynb"
    nbformat.write(notebook, source)
    papermill.execute_notebook(
        str(source),
        str(wandb_env / "out.ipynb"),
        parameters={"PAPERMILL_INPUT_PATH": str(source)},
        cwd=str(wandb_env),
        kernel_name="python3",
        language="python",
        progress_bar=False,
    )
    (row,) = Ledger(default_path(wandb_env)).records()
    assert row.notebook == str(source) and row.state == "finished"


SOAK_CELLS = 300
PROBE = """
def _resources():
    import os, threading, psutil
    me = psutil.Process()
    return [threading.active_count(), len(os.listdir("/proc/self/fd")), len(me.children(recursive=True))]
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts open files through /proc")
def test_soak_300_task_cells_leave_no_growth(kernel, wandb_env):
    kernel.execute(PROBE)
    warmup = 20
    for i in range(SOAK_CELLS):
        if i == warmup:
            threads, files, children = kernel.value("_resources()")
        reply, _ = kernel.execute(f"%%wandb_task --name soak --quiet\nimport wandb\nwandb.log({{'i': {i}}})")
        assert reply["status"] == "ok", reply
    threads_after, files_after, children_after = kernel.value("_resources()")
    assert threads_after <= threads + 2, (threads, threads_after)
    assert files_after <= files + 8, (files, files_after)
    assert children_after <= children, (children, children_after)
    assert len(run_dirs(wandb_env)) == SOAK_CELLS
