"""The run card: what a scope shows when its run starts and ends.

In a notebook, a compact HTML card in the cell output; in a terminal, one plain line. This is user-facing output,
the one place where wandbflow writes to stdout.
"""

from __future__ import annotations

import html
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from wandbflow import links
from wandbflow.topology import get_distributed_info

_notice_lock = threading.Lock()
_offline_notice_shown = False


@dataclass
class RunCard:
    """What a card shows of one run."""

    name: str
    run_id: str
    mode: str
    project: str | None = None
    group: str | None = None
    url: str | None = None
    group_url: str | None = None
    run_dir: str | None = None
    state: str | None = None
    exit_code: int | None = None
    duration: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """The link online, the run directory and sync command offline."""
        if self.url:
            return self.url
        if self.run_dir:
            return f"{self.run_dir} (sync: {links.sync_command(self.run_dir)})"
        return "not recorded (mode=disabled)"

    def text(self) -> str:
        """One plain line."""
        head = f"wandbflow: run {self.name} [{self.run_id}] {self.mode}"
        if self.state is None:
            return f"{head} -> {self.where}"
        metrics = ", ".join(f"{k}={_short(v)}" for k, v in self.summary.items())
        tail = f" in {self.duration:.1f}s" if self.duration is not None else ""
        return f"{head} {self.state} (exit {self.exit_code}){tail}" + (f": {metrics}" if metrics else "")

    def html(self) -> str:
        """A compact HTML card."""
        esc = html.escape
        link = (
            f'<a href="{esc(self.url)}" target="_blank">{esc(self.url)}</a>'
            if self.url
            else f"<code>{esc(self.run_dir or 'disabled')}</code>"
        )
        rows = [("run", f"<b>{esc(self.name)}</b> <code>{esc(self.run_id)}</code>"), ("mode", esc(self.mode))]
        if self.group:
            group = esc(self.group)
            if self.group_url:
                group = f'<a href="{esc(self.group_url)}" target="_blank">{group}</a>'
            rows.append(("group", group))
        rows.append(("link" if self.url else "dir", link))
        if not self.url and self.run_dir:
            rows.append(("sync", f"<code>{esc(links.sync_command(self.run_dir))}</code>"))
        if self.state is not None:
            color = {"finished": "#2e7d32", "interrupted": "#ef6c00"}.get(self.state, "#c62828")
            duration = f" in {self.duration:.1f}s" if self.duration is not None else ""
            rows.append(("state", f'<b style="color:{color}">{esc(self.state)}</b> (exit {self.exit_code}){duration}'))
            if self.summary:
                rows.append(("summary", esc(", ".join(f"{k}={_short(v)}" for k, v in self.summary.items()))))
        body = "".join(
            f'<tr><td style="padding:0 8px 0 0;color:#666;text-align:left">{k}</td>'
            f'<td style="text-align:left">{v}</td></tr>'
            for k, v in rows
        )
        return (
            '<div class="wandbflow-card" style="border-left:3px solid #ffbe00;padding:2px 8px;margin:2px 0;'
            f'font-size:12px"><table style="border:none">{body}</table></div>'
        )


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where HTML output renders), not in a rank launched from one."""
    ipython_module = sys.modules.get("IPython")
    if ipython_module is None:
        return False
    shell = ipython_module.get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    # A rank forked from a kernel inherits its shell but cannot talk to the kernel: its output goes through stdout.
    return get_distributed_info() is None


def show(card: RunCard) -> None:
    """Show a card: HTML in a notebook, one line elsewhere."""
    if in_notebook():
        from IPython.display import HTML, display

        display(HTML(card.html()))
    else:
        print(card.text(), flush=True)


def offline_notice(wandb_dir: str) -> None:
    """Say once per process that runs are offline and how to sync them."""
    global _offline_notice_shown
    with _notice_lock:
        if _offline_notice_shown:
            return
        _offline_notice_shown = True
    print(
        "wandbflow: no W&B credentials, so runs are saved offline under "
        f"{wandb_dir}; upload them later with: {links.sync_command(wandb_dir)}/offline-run-*",
        flush=True,
    )
