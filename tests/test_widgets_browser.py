"""The sweep builder in a real browser: JupyterLab on 127.0.0.1, headless Chromium (Debian's) driven by Playwright.

A notebook that displays ``wandbflow.SweepBuilder()`` is run with Run All; the test then checks in the page's DOM that
the form renders with its fields, that an invalid value shows its error next to the field with Launch disabled, that
filling the form enables Launch, and that clicking it shows the monitor, which reaches its count. W&B runs offline.
Chromium comes from Debian (``.ci/run`` installs it), never from ``playwright install``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import missing_service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
COUNT = 3
# JupyterLab and a kernel on a small CI machine are slow: every wait is generous (milliseconds, as Playwright takes).
WAIT_MS = 120_000
NOTEBOOK_CELLS = [
    "import wandbflow as wf\n"
    "\n"
    "def objective():\n"
    "    run = wf.get_wandb_run()\n"
    "    for epoch in range(2):\n"
    '        run.log({"loss": run.config["lr"] / (epoch + 1)})',
    "builder = wf.SweepBuilder(function=objective)\nbuilder",
]


class Lab(NamedTuple):
    url: str
    token: str
    root: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_notebook(path: Path) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source}
        for source in NOTEBOOK_CELLS
    ]
    notebook = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab served on 127.0.0.1 from a temporary root, with offline W&B; stopped after the test."""
    root = tmp_path / "root"
    root.mkdir()
    _write_notebook(root / "builder.ipynb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "WANDBFLOW_", "JUPYTER"))}
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(root),
        WANDB_SILENT="true",
        NETRC=str(tmp_path / "no-netrc"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    # No "get Jupyter news?" toast over the page.
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}), encoding="utf-8"
    )
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyter-lab.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter",
                "lab",
                "--no-browser",
                "--ip",
                "127.0.0.1",
                "--port",
                str(port),
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",  # ServerApp.token, under its non-deprecated name
                f"--ServerApp.root_dir={root}",
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
            ],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in 120 s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.5)
        yield Lab(url, token, root)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)


@pytest.mark.timeout(300)
def test_builder_in_jupyterlab_fills_validates_launches_and_monitors(
    lab: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not os.path.exists(CHROMIUM):
        missing_service(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y --no-install-recommends chromium); "
            "this test never uses `playwright install`"
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    screenshot = tmp_path / "sweep-builder.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            try:
                _drive(page, lab, expect)
            finally:
                page.screenshot(path=str(screenshot), full_page=True)
                with capsys.disabled():
                    print(f"\nsweep builder screenshot: {screenshot}")
        finally:
            browser.close()


def _drive(page: Any, lab: Lab, expect: Any) -> None:
    page.goto(f"{lab.url}/lab/tree/builder.ipynb?token={lab.token}")
    # The notebook is open and its kernel is up (the status bar reads "Idle"), then Run All from the Run menu.
    expect(page.locator(".jp-Notebook .jp-Cell").first).to_be_visible()
    expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    # The form renders with its fields; a new form is invalid and cannot launch.
    # (The first output of the second cell: the monitor's plot is an Output widget, an output area of its own.)
    form = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".jp-OutputArea-output").first
    for label in ("method", "metric", "goal", "target", "min_iter", "eta", "run cap", "notebook", "count"):
        expect(form.locator("label.widget-label", has_text=label).first).to_be_visible()
    expect(form.get_by_text("parameters", exact=True)).to_be_visible()
    expect(form.get_by_placeholder("name (a.b nests b in a)")).to_have_count(1)
    launch = form.locator("button", has_text="Launch")
    expect(launch).to_be_disabled()
    expect(form.get_by_text("invalid", exact=True)).to_be_visible()

    # An invalid value shows its error next to its field (in the field's row), and Launch stays disabled.
    run_cap = form.locator(".widget-text", has_text="run cap").get_by_role("textbox")
    run_cap.fill("lots")
    run_cap_row = form.locator(".widget-hbox").filter(has=page.locator("label.widget-label", has_text="run cap"))
    expect(run_cap_row).to_contain_text("run_cap: must be an integer (got 'lots')")
    expect(launch).to_be_disabled()
    run_cap.fill("")
    expect(form.get_by_text("run_cap: must be an integer")).to_have_count(0)

    # A bad parameter value shows its error in the parameter's row.
    name = form.get_by_placeholder("name (a.b nests b in a)")
    values = form.get_by_placeholder("values, comma separated")
    name.fill("lr")
    values.fill("[0.1")
    row = form.locator(".widget-hbox").filter(has=page.get_by_placeholder("name (a.b nests b in a)"))
    expect(row).to_contain_text("parameters.lr.values: not valid YAML")
    expect(launch).to_be_disabled()

    # Filled in right, the form is valid and Launch is enabled.
    values.fill("0.1, 0.2, 0.3")
    form.get_by_placeholder("name as logged").fill("loss")
    count = form.locator(".widget-text", has_text="count").get_by_role("spinbutton")
    count.fill(str(COUNT))
    count.press("Enter")
    expect(form.get_by_text("valid", exact=True)).to_be_visible()
    expect(form.locator("pre")).to_contain_text("name: loss")
    expect(launch).to_be_enabled()

    # Launch shows the monitor under the form; it reaches its count (every trial finished, the bar full).
    launch.click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible()
    progress = form.locator(".widget-hbox").filter(has=cancel)
    expect(progress).to_contain_text(f"{COUNT}/{COUNT} done", timeout=180_000)
    expect(progress).to_contain_text(f"{COUNT} finished · 0 failed")
    expect(progress.locator(".progress-bar")).to_have_attribute("style", re.compile(r"width:\s*100%"))
    expect(form.locator("table tr")).to_have_count(COUNT + 1)  # the header and one row per trial
