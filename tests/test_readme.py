"""The README's Quickstart is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quickstart\s*$(.*?)(?=^## )", text, re.M | re.S)
    assert section, "README.md has a Quickstart section"
    return [b.strip() for b in re.findall(r"^```[a-z]*\n(.*?)^```", section.group(1), re.M | re.S)]


def test_quickstart_has_exactly_two_commands():
    blocks = quickstart_blocks()
    assert len(blocks) == 2
    assert all("\n" not in b for b in blocks)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_blocks()[1] in ci
