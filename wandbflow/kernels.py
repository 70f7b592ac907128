"""Jupyter kernels for notebook trials: started without port races, warmed ahead of time, never orphaned.

Kernels that start at the same moment can pick the same ZMQ ports (papermill#511): a kernel's ports are chosen by
the parent and bound by the child later. On POSIX kernels talk over Unix sockets, each at its own path (no ports at
all), so they start at once; elsewhere starts are serialized, each held until its kernel answers, so a port is bound
before the next kernel chooses. A :class:`KernelPool` keeps the next trial's kernel starting (with wandb, wandbflow
and torch imported) while the current trial runs, so the per-trial overhead approaches zero.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from queue import Empty
from typing import Any

from wandbflow.errors import NotebookError

logger = logging.getLogger("wandbflow")

READY_TIMEOUT_S = 120.0
#: How long IOPub may stay silent after a kernel_info reply before the request is sent again (ZMQ's slow joiner).
IOPUB_WAIT_S = 0.2
_start_lock = threading.Lock()  # serializes kernel starts over TCP (papermill#511)


def warm_code(notebook: str | None = None, sweep_ref: str | None = None) -> str:
    """What a pooled kernel runs before its trial: :func:`wandbflow.trial.warm`.

    That is wandb's service up, the package list scanned, the sweep attached, torch imported when the notebook
    uses it. Nothing enters the notebook's namespace.
    """
    uses_torch = notebook is not None and _uses_torch(notebook) and importlib.util.find_spec("torch") is not None
    return f"__import__('wandbflow.trial').trial.warm(torch={uses_torch}, sweep_ref={sweep_ref!r})"


def _uses_torch(notebook: str) -> bool:
    try:
        text = Path(notebook).read_text(encoding="utf-8")
    except OSError:
        return False
    return "import torch" in text or "from torch" in text


def start_kernel(
    *, kernel_name: str, cwd: str, env: Mapping[str, str], warm: str | None = None
) -> Any:  # a started jupyter_client KernelManager
    """Start a kernel, wait until it answers, and run ``warm`` in it silently.

    Raises:
        NotebookError: The kernel could not be started or did not answer.
    """
    from jupyter_client.manager import KernelManager

    ipc = os.name == "posix"  # Unix sockets: no ports to race for at all
    manager = KernelManager(
        kernel_name=kernel_name,
        client_class="jupyter_client.asynchronous.AsyncKernelClient",
        transport="ipc" if ipc else "tcp",
        # an absolute socket path (the kernel's cwd differs from ours), short enough for a Unix socket
        **({"ip": os.path.join(tempfile.gettempdir(), f"wandbflow-{uuid.uuid4().hex[:12]}")} if ipc else {}),
    )
    with contextlib.ExitStack() as channels:
        with contextlib.nullcontext() if ipc else _start_lock:
            try:
                manager.start_kernel(cwd=cwd, env=dict(env))
                client = channels.enter_context(ready_client(manager, timeout=READY_TIMEOUT_S))
            except Exception as error:
                shutdown(manager)
                raise NotebookError(f"could not start kernel {kernel_name!r}: {error}", path=cwd) from error
        if warm:
            reply = client.execute_interactive(warm, silent=True, store_history=False, timeout=READY_TIMEOUT_S)
            if reply["content"]["status"] != "ok":
                logger.warning("wandbflow: warming a trial kernel failed: %s", reply["content"].get("evalue"))
    return manager


@contextlib.contextmanager
def ready_client(manager: Any, *, timeout: float) -> Iterator[Any]:
    """A blocking client of ``manager``'s kernel, once the kernel answers it (:func:`answer`); stopped after use.

    Raises:
        RuntimeError: The kernel died, or did not answer within ``timeout`` seconds.
    """
    from jupyter_core.utils import run_sync

    client = manager.blocking_client()  # made after the kernel started: it copies the kernel's connection info
    client.start_channels()
    try:
        run_sync(answer)(client, timeout=timeout)
        yield client
    finally:
        client.stop_channels()


async def answer(client: Any, *, timeout: float) -> None:
    """Wait until the kernel answers ``client`` on its shell channel and its IOPub channel is live.

    Takes a started client, blocking or asynchronous. jupyter_client's ``wait_for_ready`` also waits for an IOPub
    message after the shell reply (proof of the subscription: ZMQ's slow joiner), then for 0.2 s of IOPub silence;
    this ends at that first message. What is left on IOPub is harmless: readers match messages to their request.
    A request answered before the subscription was live is sent again.

    Raises:
        RuntimeError: The kernel died, or did not answer within ``timeout`` seconds.
    """
    from jupyter_core.utils import ensure_async

    deadline = time.monotonic() + timeout
    while True:
        request = client.kernel_info()
        replied = await _seen(client.shell_channel, _reply_to(request), until=min(deadline, time.monotonic() + 1.0))
        # the kernel's IOPub welcome (ipykernel 7) or the status of our request (older kernels)
        if replied and await _seen(client.iopub_channel, lambda msg: True, until=time.monotonic() + IOPUB_WAIT_S):
            return
        if not await ensure_async(client.is_alive()):
            raise RuntimeError("the kernel died before it answered")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the kernel did not answer within {timeout:g}s")


def _reply_to(request: str) -> Callable[[dict[str, Any]], bool]:
    return lambda msg: msg["parent_header"].get("msg_id") == request


async def _seen(channel: Any, wanted: Callable[[dict[str, Any]], bool], *, until: float) -> bool:
    """Whether a message ``wanted`` picks arrived on ``channel`` before ``until`` (others are dropped)."""
    from jupyter_core.utils import ensure_async

    while (left := until - time.monotonic()) > 0:
        try:
            msg = await ensure_async(channel.get_msg(timeout=left))
        except Empty:
            return False
        if wanted(msg):
            return True
    return False


def shutdown(manager: Any) -> None:
    """Stop a kernel now; a kernel that is already gone is fine."""
    try:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    except Exception:  # shutting down is best effort; the process may be gone already
        logger.debug("wandbflow: kernel shutdown raised", exc_info=True)
        try:
            manager.signal_kernel(getattr(signal, "SIGKILL", signal.SIGTERM))
        except Exception:
            logger.debug("wandbflow: kernel kill raised", exc_info=True)


def visible_gpus() -> list[str]:
    """The GPUs trials may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees; none without CUDA."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip() and d.strip() != "-1"]
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


class KernelPool:
    """One lane per parallel trial; each lane has its next kernel starting in the background.

    Lane ``i`` gets GPU ``gpus[i % len(gpus)]`` through ``CUDA_VISIBLE_DEVICES`` (set before the kernel starts, so
    before anything in it touches CUDA). Use as a context manager: leaving it shuts every kernel down.
    """

    def __init__(
        self,
        lanes: int,
        *,
        kernel_name: str,
        cwd: str,
        env: Mapping[str, str],
        gpus: list[str] | None = None,
        warm: str | None = None,
    ) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.env = dict(env)
        self.gpus = gpus or []
        self.warm = warm
        self._executor = ThreadPoolExecutor(max_workers=max(1, lanes), thread_name_prefix="wandbflow-kernel")
        self._retiring = ThreadPoolExecutor(max_workers=max(1, lanes), thread_name_prefix="wandbflow-kernel-stop")
        self._next: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _lane_env(self, lane: int) -> dict[str, str]:
        env = dict(self.env)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[lane % len(self.gpus)]
        return env

    def _start(self, lane: int) -> Future[Any]:
        return self._executor.submit(
            start_kernel, kernel_name=self.kernel_name, cwd=self.cwd, env=self._lane_env(lane), warm=self.warm
        )

    def prepare(self, lane: int) -> None:
        """Start lane ``lane``'s next kernel in the background (ahead of its first trial)."""
        with self._lock:
            if not self._closed and lane not in self._next:
                self._next[lane] = self._start(lane)

    def acquire(self, lane: int, *, prepare_next: bool = True) -> Any:
        """A started, warmed kernel for lane ``lane``; with ``prepare_next`` its successor starts right away.

        Raises:
            NotebookError: The kernel could not be started.
        """
        with self._lock:
            if self._closed:
                raise NotebookError("the kernel pool is closed", path=self.cwd)
            future = self._next.pop(lane, None) or self._start(lane)
            if prepare_next:
                self._next[lane] = self._start(lane)
        return future.result()

    def retire(self, kernel: Any) -> None:
        """Shut down a kernel whose trial is over, in the background (off the next trial's clock)."""
        with self._lock:
            if not self._closed:
                self._retiring.submit(shutdown, kernel)
                return
        shutdown(kernel)

    def close(self) -> None:
        """Shut down every kernel the pool started and has not handed out, and wait for the retired ones."""
        with self._lock:
            self._closed = True
            pending, self._next = list(self._next.values()), {}
        for future in pending:
            try:
                shutdown(future.result())
            except Exception:  # a kernel that failed to start has nothing to shut down
                logger.debug("wandbflow: pooled kernel had failed to start", exc_info=True)
        self._executor.shutdown(wait=True)
        self._retiring.shutdown(wait=True)

    def __enter__(self) -> KernelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
