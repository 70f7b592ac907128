"""The benchmark harness produces every registered figure (smoke mode; timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_smoke_run_produces_every_figure(tmp_path, wandb_env):
    from benchmarks.__main__ import REGISTRY

    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)], cwd=ROOT, check=True, timeout=580
    )
    results = json.loads(out.read_text())
    assert [f["id"] for f in results["figures"]] == list(REGISTRY)
    for figure in results["figures"]:
        assert set(figure) >= {"id", "title", "value", "unit", "low", "high", "n", "target", "passed"}
        assert figure["low"] <= figure["value"] <= figure["high"]
    assert results["machine"]["smoke"] is True
    assert out.with_suffix(".md").read_text().count("| P") == len(REGISTRY)
