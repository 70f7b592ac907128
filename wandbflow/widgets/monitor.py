"""The sweep monitor: progress, a trial table and plots of a sweep, updated live while it runs in the background.

A monitor watches any sweep (``SweepMonitor(sweep)`` or by id, also after a kernel restart: it reads the stored
study), and can run one itself: :meth:`SweepMonitor.serve` runs a function as the trials in a background thread of
this process (so it can use the notebook's state), :meth:`SweepMonitor.serve_notebook` runs a notebook per trial,
each in its own kernel. A poller thread re-reads the sweep while anything runs; the widgets are updated from it.
"""

from __future__ import annotations

import base64
import functools
import html
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import traitlets

from wandbflow.errors import ConfigError, SweepError
from wandbflow.scope import get_wandb_run
from wandbflow.sweeps.engines import TRIAL_STATES
from wandbflow.sweeps.trial import _repoint_global_log
from wandbflow.widgets.plots import _flatten, sweep_png

if TYPE_CHECKING:
    from wandbflow.ledger import RunRecord
    from wandbflow.sweeps.sweep import Sweep

logger = logging.getLogger("wandbflow")

_STATE_COLORS = {
    "running": "#1e88e5",
    "finished": "#2e7d32",
    "failed": "#c62828",
    "crashed": "#c62828",
    "pruned": "#f9a825",
    "interrupted": "#6d4c41",
}


class TrialCancelled(KeyboardInterrupt):
    """Raised by a function trial's ``log`` (or at its start) once its monitor was cancelled.

    A ``KeyboardInterrupt``, as a Ctrl-C would be, so an objective's ``except Exception`` does not swallow it: the
    trial's run ends interrupted (exit code 255) and the sweep records the trial as interrupted.
    """


class SweepMonitor(widgets.VBox):  # type: ignore[misc]  # ipywidgets has no type hints
    """A live view of a sweep: progress, trial table, best-so-far and parallel-coordinates plots, and Cancel.

    Example:
        >>> monitor = SweepMonitor("k3x9a2pq")  # doctest: +SKIP  re-attach after a kernel restart
        >>> SweepMonitor(wf.sweep(config)).serve(objective, count=20)  # doctest: +SKIP
    """

    records: traitlets.List[Any] = traitlets.List(
        read_only=True, help="Every trial of the sweep, as its engine recorded it (TrialRecord)."
    )
    state = traitlets.Unicode("running", read_only=True, help="The sweep's state: running, complete or stopped.")
    count = traitlets.Int(
        None, allow_none=True, help="The number of trials progress counts to; None: the sweep's own cap, if any."
    )
    error = traitlets.Unicode("", read_only=True, help="Why this monitor's runner stopped early, if it did.")

    def __init__(self, sweep: Sweep | str, *, count: int | None = None, interval: float = 1.0) -> None:
        """Watch a sweep.

        Args:
            sweep: The sweep, or its id (looked up as :func:`wandbflow.sweep` does: this process, the local
                storage, then W&B when online).
            count: The number of trials progress counts to; None: the sweep's ``run_cap`` or grid size.
            interval: Seconds between reads of the sweep while it runs.

        Raises:
            SweepError: No sweep with that id.
        """
        from wandbflow.sweeps import Sweep, load

        self.sweep = sweep if isinstance(sweep, Sweep) else load(sweep)
        self.interval = interval
        self._cancel = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._runner: threading.Thread | None = None
        self._poller: threading.Thread | None = None
        self._closed = False
        self._runs: dict[str, RunRecord] = {}
        self._plotted: tuple[tuple[int, float | None], ...] = ()
        self.title_html = widgets.HTML()
        self.progress_bar = widgets.IntProgress(0, min=0, max=1, layout={"width": "320px"})
        self.counts_html = widgets.HTML()
        self.cancel_button = widgets.Button(description="Cancel", button_style="danger", icon="stop")
        self.table_html = widgets.HTML()
        self.plot_output = widgets.Output()
        super().__init__()
        self.children = (
            self.title_html,
            widgets.HBox((self.progress_bar, self.counts_html, self.cancel_button)),
            self.plot_output,
            self.table_html,
        )
        self.count = count
        self.cancel_button.on_click(lambda _: self.cancel())
        self.refresh()
        self._ensure_polling()

    @traitlets.validate("count")
    def _check_count(self, proposal: Any) -> Any:
        value = proposal["value"]
        if value is not None and value < 1:
            raise traitlets.TraitError(f"count must be a positive integer or None (got {value!r})")
        return value

    # ---- reading the sweep ----------------------------------------------------------------------------------------

    @property
    def counts(self) -> dict[str, int]:
        """How many trials are running and how many ended in each state."""
        found = dict.fromkeys(("running", *TRIAL_STATES), 0)
        for record in self.records:
            found[record.state] = found.get(record.state, 0) + 1
        return found

    @property
    def total(self) -> int | None:
        """The number of trials progress counts to: ``count``, else the sweep's cap, else None."""
        return self.count if self.count is not None else self.sweep.config.max_trials

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        """True while this monitor's own runner (a function or notebook serving the sweep) runs."""
        return self._runner is not None and self._runner.is_alive()

    def rows(self) -> list[dict[str, Any]]:
        """The trial table: trial, state, params (dotted names), value, duration (s), run_id, link (URL or dir)."""
        now = time.time()
        table = []
        for record in self.records:
            run = self._runs.get(record.run_id)
            started = (run.started_at if run is not None else None) or record.started_at
            finished = (run.finished_at if run is not None else None) or record.finished_at
            if record.state == "running":
                finished = now
            table.append(
                {
                    "trial": record.number,
                    "state": record.state,
                    "params": _flatten(record.params),
                    "value": record.value,
                    "duration": finished - started if started is not None and finished is not None else None,
                    "run_id": record.run_id,
                    "link": (run.url or run.dir) if run is not None else None,
                }
            )
        return table

    def refresh(self) -> None:
        """Read the sweep's trials and state now (the poller does this while anything runs)."""
        with self._lock:
            records = self.sweep.records()
            state = self.sweep.state
            self._runs = _runs(self.sweep.id)
            with self.hold_trait_notifications():
                self.set_trait("state", state)
                self.set_trait("records", records)

    # ---- running it -----------------------------------------------------------------------------------------------

    def serve(self, function: Callable[[], Any], *, count: int | None = None) -> SweepMonitor:
        """Run ``function`` as the sweep's trials in a background thread of this process; returns at once.

        Each trial is a scoped run, as with :func:`wandbflow.agent`. After :meth:`cancel`, the trial running stops
        at its next ``log`` call (:class:`TrialCancelled`) and is recorded interrupted.

        Args:
            function: The objective, called with no arguments inside the trial's run.
            count: The most trials to run; None: until the sweep has no more to hand out.

        Returns:
            This monitor.

        Raises:
            SweepError: This monitor already runs trials.
        """
        from wandbflow.sweeps import agent

        trial = _cancellable(function, self._cancel)
        return self._start(lambda: agent(self.sweep, trial, count=count, progress=False), count)

    def serve_notebook(
        self, notebook: str | os.PathLike[str], *, count: int | None = None, parallel: int = 1
    ) -> SweepMonitor:
        """Run ``notebook`` as the sweep's trials (:func:`wandbflow.sweep_notebook`) from a background thread.

        After :meth:`cancel`, running trials are interrupted (their kernels shut down) and recorded interrupted.

        Args:
            notebook: The trial notebook; its cell tagged ``parameters`` defines the swept names.
            count: The most trials to run; None: until the sweep has no more to hand out.
            parallel: How many trials run at once, each in its own kernel.

        Returns:
            This monitor.

        Raises:
            SweepError: This monitor already runs trials.
        """
        from wandbflow.notebook_sweep import sweep_notebook

        def run() -> None:
            sweep_notebook(
                notebook,
                self.sweep,
                count=count,
                parallel=parallel,
                progress=False,
                cancel=self._cancel,
                on_result=lambda *_: self._wake.set(),
            )

        return self._start(run, count)

    def cancel(self) -> None:
        """Stop the sweep: no more trials are handed out, and the trials this monitor runs are interrupted."""
        self._cancel.set()
        self.sweep.stop(reason="cancelled from the sweep monitor")
        logger.info("wandbflow: sweep %s cancelled from its monitor", self.sweep.id)
        self._wake.set()
        self.refresh()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this monitor's runner ends (or ``timeout`` seconds pass), then read the sweep once more.

        Returns:
            True when nothing of this monitor's runs any more.
        """
        if self._runner is not None:
            self._runner.join(timeout)
        self.refresh()
        return not self.running

    def close(self) -> None:
        """Stop polling and close the widget (a runner goes on until its trials are done)."""
        self._closed = True
        self._wake.set()
        super().close()

    def _start(self, work: Callable[[], Any], count: int | None) -> SweepMonitor:
        if count is not None and (isinstance(count, bool) or count < 1):
            raise ConfigError(f"must be a positive integer or None (got {count!r})", key="count")
        with self._lock:
            if self.running:
                raise SweepError(f"this monitor already runs trials of sweep {self.sweep.id}", sweep_id=self.sweep.id)
            self._runner = threading.Thread(
                target=self._run, args=(work,), name=f"wandbflow-sweep-{self.sweep.id}", daemon=True
            )
            self._runner.start()
        self._ensure_polling()
        return self

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            work()
        except TrialCancelled:
            logger.info("wandbflow: sweep %s: the running trial was interrupted by Cancel", self.sweep.id)
        except Exception as error:  # shown in the monitor: the notebook it runs in must stay usable
            logger.exception("wandbflow: the runner of sweep %s stopped", self.sweep.id)
            self.set_trait("error", f"{type(error).__name__}: {error}")
        finally:
            self._wake.set()

    def _ensure_polling(self) -> None:
        with self._lock:
            if self._poller is None and self._busy():
                self._poller = threading.Thread(target=self._poll, name="wandbflow-sweep-monitor", daemon=True)
                self._poller.start()

    def _busy(self) -> bool:
        return not self._closed and (self.running or any(r.state == "running" for r in self.records))

    def _poll(self) -> None:
        while True:
            with self._lock:
                busy = self._busy()
            try:
                self.refresh()
            except Exception:  # a storage hiccup: try again next time rather than stop watching
                logger.exception("wandbflow: could not read sweep %s", self.sweep.id)
            with self._lock:
                if not busy or self._closed:
                    self._poller = None
                    return
            self._wake.wait(self.interval)
            self._wake.clear()

    # ---- showing it -----------------------------------------------------------------------------------------------

    @traitlets.observe("records", "state", "count", "error")
    def _render(self, change: Any) -> None:
        """Show progress, counts, the trial table and (when the scored trials changed) the plots."""
        counts = self.counts
        ended = sum(n for state, n in counts.items() if state != "running")
        total = self.total
        self.progress_bar.max = max(1, total or len(self.records))
        self.progress_bar.value = min(ended, self.progress_bar.max)
        state = "cancelled" if self.cancelled else self.state
        parts = [f"<b>{ended}</b>/{total if total is not None else '?'} done"]
        parts += [f"{n} {name}" for name, n in counts.items() if n or name in ("running", "failed", "pruned")]
        self.counts_html.value = " · ".join(parts) + f" · sweep <i>{html.escape(state)}</i>"
        title = (
            f"<b>sweep {html.escape(self.sweep.id)}</b> ({html.escape(self.sweep.name)}, {self.sweep.config.method})"
        )
        if self.error:
            title += f" <span style='color:#c62828'>runner stopped: {html.escape(self.error)}</span>"
        self.title_html.value = title
        self.cancel_button.disabled = self.cancelled or self.state != "running"
        self.table_html.value = _table(self.rows(), self.sweep.config.metric.name if self.sweep.config.metric else None)
        self._plot()

    def _plot(self) -> None:
        metric = self.sweep.config.metric
        scored = tuple((r.number, r.value) for r in self.records if r.state != "running")
        if metric is None or scored == self._plotted:
            return
        self._plotted = scored
        png = sweep_png([r for r in self.records if r.state != "running"], metric)
        if png is None:
            return
        # Replaced as a whole, not appended (``append_display_data`` would also need an IPython shell to format).
        self.plot_output.outputs = (
            {
                "output_type": "display_data",
                "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": "<sweep plots>"},
                "metadata": {},
            },
        )


def _cancellable(function: Callable[[], Any], cancel: threading.Event) -> Callable[[], Any]:
    """``function`` as a trial that raises :class:`TrialCancelled` at its start or next ``log`` once cancelled."""

    @functools.wraps(function)
    def trial() -> Any:
        if cancel.is_set():
            raise TrialCancelled("the sweep was cancelled before this trial started")
        run = get_wandb_run()
        if run is None:
            return function()
        original = run.log

        @functools.wraps(original)
        def log(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            original(data, *args, **kwargs)
            if cancel.is_set():
                raise TrialCancelled(f"the sweep was cancelled; run {run.id} stopped at its log call")

        run.log = log  # type: ignore[method-assign]
        _repoint_global_log(run)
        try:
            return function()
        finally:
            run.log = original  # type: ignore[method-assign]
            _repoint_global_log(run)

    return trial


def _runs(sweep_id: str) -> dict[str, RunRecord]:
    """The ledger's runs of a sweep, by run id (for durations and links); empty without a ledger."""
    from wandbflow.ledger import Ledger, default_path

    path = default_path()
    if not path.exists():
        return {}
    try:
        return {r.run_id: r for r in Ledger(path).records(sweep_id=sweep_id)}
    except Exception:  # the ledger only adds links and durations; the table stands without it
        logger.exception("wandbflow: could not read the ledger's runs of sweep %s", sweep_id)
        return {}


def _table(rows: list[dict[str, Any]], metric: str | None) -> str:
    header = ["#", "state", "parameters", metric or "value", "duration", "run"]
    lines = ["<tr>" + "".join(f"<th style='text-align:left;padding:0 8px'>{html.escape(h)}</th>" for h in header)]
    for row in reversed(rows):  # newest first
        color = _STATE_COLORS.get(row["state"], "inherit")
        params = ", ".join(f"{k}={v!r}" for k, v in row["params"].items())
        value = f"{row['value']:.4g}" if row["value"] is not None else ""
        duration = f"{row['duration']:.1f}s" if row["duration"] is not None else ""
        link = row["link"] or ""
        run = html.escape(row["run_id"])
        if link.startswith(("http://", "https://")):
            run = f"<a href='{html.escape(link)}' target='_blank'>{run}</a>"
        elif link:
            run = f"<span title='{html.escape(link)}'>{run}</span> <small>(offline: {html.escape(link)})</small>"
        cells = [str(row["trial"]), f"<span style='color:{color}'>{row['state']}</span>", html.escape(params)]
        cells += [value, duration, run]
        lines.append("<tr>" + "".join(f"<td style='padding:0 8px'>{c}</td>" for c in cells) + "</tr>")
    return "<table style='font-size:0.9em'>" + "".join(lines) + "</table>"
