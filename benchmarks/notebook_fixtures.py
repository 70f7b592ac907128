"""Small trial notebooks the notebook benchmarks (P5, P6) execute."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: Path, body: str) -> Path:
    """A notebook with a parameters cell (``x = 0``) and one cell of ``body``."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.write(notebook, path)
    return path


def grid(values: list[int]) -> dict:
    """A grid sweep over ``x``."""
    return {"method": "grid", "parameters": {"x": {"values": values}}}
