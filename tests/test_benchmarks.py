"""The benchmark harness produces its figures (smoke mode; timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"id", "title", "value", "unit", "median", "min", "max", "low", "high", "n", "target", "passed", "details"}


@pytest.mark.timeout(300)
def test_smoke_run_produces_the_p7_figure(tmp_path):
    out = tmp_path / "out" / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "P7", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert set(results["machine"]) >= {"cpus", "python", "platform", "date"} and results["machine"]["smoke"] is True
    [figure] = results["figures"]
    assert figure["id"] == "P7" and set(figure) >= FIELDS
    assert figure["unit"] == "records/s" and figure["n"] == 1 and isinstance(figure["passed"], bool)
    assert figure["min"] <= figure["median"] <= figure["max"] and figure["median"] == figure["value"]
    assert figure["details"]["lost"] == 0 and figure["details"]["integrity_ok"] is True
    markdown = out.with_suffix(".md").read_text()
    assert markdown.count("| P7 |") == 1 and "| P7 |" in done.stdout


def test_an_unknown_figure_is_a_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "P7,P99", "--out", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "P99" in done.stderr
    assert not (tmp_path / "r.json").exists()
