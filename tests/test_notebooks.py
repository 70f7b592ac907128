"""Every example notebook runs top to bottom offline, as Run All would (real kernels, papermill)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Notebooks that are trial templates, executed by other notebooks rather than on their own.
TEMPLATES = {"train.ipynb"}
EXAMPLES = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if p.name not in TEMPLATES)


def test_outputs_are_stripped_in_git():
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("notebook", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_notebook_runs_offline(notebook, wandb_env):
    import papermill

    work = wandb_env / "notebooks"
    shutil.copytree(ROOT / "notebooks", work)
    output = wandb_env / f"out-{notebook.name}"
    papermill.execute_notebook(
        str(work / notebook.name), str(output), cwd=str(work), kernel_name="python3", progress_bar=False
    )
    executed = nbformat.read(output, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert os.listdir(wandb_env / "wandb"), "the notebook recorded runs offline"
