"""A papermill engine that brackets a notebook's cells with the trial's run.

Before the first cell it runs the prologue silently in the kernel (the kernel opens the trial's run); after the last
cell, or the cell that failed, it saves the executed notebook and runs the epilogue silently (the kernel saves the
notebook into the run and finishes it with the cells' outcome). Silent executions leave no trace in the notebook.
It runs in a kernel started by the caller (``km``), so kernels can be started ahead of time and without port races.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jupyter_core.utils import ensure_async, run_sync
from nbclient.util import run_hook
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine

from wandbflow import kernels
from wandbflow.errors import NotebookExecutionError

SILENT_TIMEOUT_S = 120.0


def first_failure(nb: Any) -> dict[str, Any] | None:
    """The first failed cell of an executed notebook: its index, exception name and value; None if none failed."""
    for index, cell in enumerate(nb.cells):
        if not cell.get("metadata", {}).get("papermill", {}).get("exception"):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return {"cell_index": index, "ename": output.get("ename"), "evalue": output.get("evalue")}
        return {"cell_index": index, "ename": "CellExecutionError", "evalue": "the cell failed"}
    return None


class TrialClient(PapermillNotebookClient):  # type: ignore[misc]
    """papermill's client, with the silent prologue and epilogue around the cells."""

    def __init__(
        self,
        nb_man: Any,
        *,
        prologue: str,
        epilogue_for: Callable[[dict[str, Any] | None, str], str],
        **kwargs: Any,
    ) -> None:
        super().__init__(nb_man, **kwargs)
        self.prologue = prologue
        self.epilogue_for = epilogue_for

    async def async_start_new_kernel_client(self) -> Any:
        """A client of the caller's started kernel, ready once the kernel answers it (:func:`kernels.answer`).

        nbclient's own ends with ``wait_for_ready``'s 0.2 s of IOPub silence, paid by every trial.
        """
        self.kc = self.km.client()
        await ensure_async(self.kc.start_channels())
        try:
            await kernels.answer(self.kc, timeout=self.startup_timeout)
        except Exception:
            await ensure_async(self.kc.stop_channels())
            self.kc = None
            raise
        self.kc.allow_stdin = False
        await run_hook(self.on_notebook_start, notebook=self.nb)
        return self.kc

    start_new_kernel_client = run_sync(async_start_new_kernel_client)  # nbclient binds its own at class creation

    def papermill_execute_cells(self) -> None:
        """Prologue, the cells (papermill stops at the first failure), the notebook saved, epilogue."""
        self._silent(self.prologue, what="open the run")
        super().papermill_execute_cells()
        self.nb_man.save()
        self._silent(self.epilogue_for(first_failure(self.nb), self.nb_man.output_path), what="finish the run")

    def _silent(self, code: str, *, what: str) -> None:
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        reply = self.wait_for_reply(msg_id)
        content = reply["content"] if reply else {"status": "error", "ename": "Timeout", "evalue": "no reply"}
        if content["status"] != "ok":
            raise NotebookExecutionError(
                f"the kernel could not {what}: {content.get('ename')}: {content.get('evalue')}",
                path=str(self.nb_man.output_path),
                state="crashed",
                ename=content.get("ename"),
                evalue=content.get("evalue"),
            )


class TrialEngine(NBClientEngine):  # type: ignore[misc]
    """The ``wandbflow`` papermill engine: papermill's nbclient engine running :class:`TrialClient` in ``km``."""

    @classmethod
    def execute_managed_notebook(
        cls,
        nb_man: Any,
        kernel_name: str,
        *,
        km: Any,
        prologue: str,
        epilogue_for: Callable[[dict[str, Any] | None, str], str],
        **kwargs: Any,
    ) -> Any:
        """Execute ``nb_man``'s notebook in the started kernel ``km`` (which stays up: the caller owns it)."""
        client = TrialClient(
            nb_man,
            km=km,
            prologue=prologue,
            epilogue_for=epilogue_for,
            kernel_name=kernel_name,
            timeout=None,
            startup_timeout=kwargs.get("start_timeout", 60),
        )
        return client.execute()
