"""Tests that need system services skip on a fresh machine, and must run under .ci/run, which installs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import missing_service

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_service_skips_with_its_reason_on_a_fresh_machine(monkeypatch):
    monkeypatch.delenv("WANDBFLOW_CI_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is missing"):
        missing_service("chromium is missing")


def test_a_missing_service_fails_under_ci(monkeypatch):
    monkeypatch.setenv("WANDBFLOW_CI_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="chromium is missing"):
        missing_service("chromium is missing")


def test_ci_installs_the_services_and_requires_their_tests_before_running_the_suite():
    script = (ROOT / ".ci" / "run").read_text()
    requires = script.index("export WANDBFLOW_CI_SERVICES=1")
    assert script.index("postgresql") < requires and script.index("chromium") < requires
    assert requires < script.index(".venv/bin/pytest")
