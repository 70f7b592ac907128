"""Offline shared runs: the non-primary ranks' ``log`` calls carried to the primary's run.

W&B's shared mode needs its server. Offline, the primary rank alone opens the run and serves a :class:`RelayServer`
on a Unix socket named after the run id; every other rank of the scope logs through a :class:`RelayRun`, which
sends its rows there. The primary logs each row into its run with the keys prefixed by the sender's label
(``rank-1/loss``) and the sender's step as that label's own step axis (``rank-1/step``, set with ``define_metric``),
so the scope still yields one run.

No row is lost: a sender keeps each batch until the primary says it logged it. Rows the primary never acknowledged
(it could not be reached, or it closed first) are appended to a fallback file named after the run and the label
(``<wandb dir>/wandbflow-relay/<run id>.<label>.jsonl``), and the rank says so once. A row may then be both in the
run and in the fallback file (the acknowledgement was lost), never in neither.

Relayed rows advance the run's own step, as in W&B's online shared mode: the primary should not pass ``step=`` to
its own ``log`` calls (W&B drops a row whose step is behind the run's); like every rank, it can give its metrics
their own axis with ``define_metric`` instead.

The socket is local: a rank on another machine than its primary (``rank_scope="global"`` over real nodes) cannot
reach it and writes its fallback file. A sender waits for the primary, and the primary for a silent peer, up to
``WANDBFLOW_RELAY_TIMEOUT`` seconds (60 by default).

This module is transport only: the scope decides who serves, who sends, under which label, and where the fallback
goes. It imports neither wandb nor torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wandbflow.errors import RelayError

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

logger = logging.getLogger("wandbflow")

TIMEOUT_ENV_VAR = "WANDBFLOW_RELAY_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
# How long the primary waits for its peers when its own scope failed: the launcher stops the others anyway.
FAILED_WAIT_S = 2.0
_HEADER = struct.Struct("!I")
Row = tuple[int, dict[str, Any]]


def timeout() -> float:
    """Seconds a sender waits for the primary, and the primary for a silent peer (``WANDBFLOW_RELAY_TIMEOUT``)."""
    return float(os.environ.get(TIMEOUT_ENV_VAR) or DEFAULT_TIMEOUT_S)


def socket_path(run_id: str) -> str:
    """The Unix socket the primary of ``run_id`` serves on: in a directory only this user can enter."""
    directory = Path(tempfile.gettempdir()) / f"wandbflow-relay-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return str(directory / f"{hashlib.sha1(run_id.encode()).hexdigest()[:16]}.sock")


def fallback_path(wandb_root: str | os.PathLike[str], run_id: str, label: str) -> Path:
    """Where a rank's rows go when the primary cannot take them: ``<root>/wandb/wandbflow-relay/<id>.<label>.jsonl``."""
    return Path(wandb_root) / "wandb" / "wandbflow-relay" / f"{run_id}.{label}.jsonl"


class RelayRun:
    """What a non-primary rank of an offline shared scope gets as its run: ``log`` is carried to the primary.

    ``log`` follows ``wandb.Run.log`` (a row is committed when ``step`` is None and ``commit`` is not False, when
    ``commit=True``, or when a later ``log`` names another step) and never waits for the network: rows are sent
    in batches by a background thread.

    Args:
        run_id: The shared run's id.
        label: This rank's label in the run (``rank-1``); its keys arrive as ``rank-1/<key>``.
        path: The primary's socket (:func:`socket_path`).
        fallback: The file for rows the primary does not acknowledge (:func:`fallback_path`).
        wait: Seconds to keep trying to reach the primary, and to wait for each acknowledgement.
    """

    def __init__(self, run_id: str, label: str, *, path: str, fallback: Path, wait: float) -> None:
        self.id = run_id
        self.label = label
        self.name = f"{run_id} ({label})"
        self.group: str | None = None
        self._path = path
        self._fallback = fallback
        self._wait = wait
        self._step = 0
        self._pending: dict[str, Any] = {}
        self._rows: list[Row] = []
        self._closing = False
        self._closed = False
        self._sent = 0
        self._fallback_reason: str | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._send_all, name=f"wandbflow-relay-{label}", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: later ``log`` calls raise :class:`RelayError`."""
        return self._closed

    @property
    def fallback(self) -> Path | None:
        """The fallback file, once rows had to go there."""
        return self._fallback if self._fallback_reason is not None else None

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Log a row to the shared run, as ``rank-N/<key>`` with ``rank-N/step`` as its step axis.

        Raises:
            TypeError: ``data`` is not a mapping with string keys.
            RelayError: The scope has ended.
        """
        if not isinstance(data, Mapping) or any(not isinstance(k, str) for k in data):
            raise TypeError("log takes a dictionary with string keys")
        with self._cond:
            if self._closing:
                raise RelayError(
                    f"{self.label} logged to run {self.id} after its scope ended", run_id=self.id, label=self.label
                )
            if step is not None and step != self._step:
                self._commit()
                self._step = step
            self._pending.update(data)
            if commit or (commit is None and step is None):
                self._commit()
                self._step += 1

    def close(self, error: BaseException | None = None) -> None:
        """Send what is left and wait until the primary has logged it (or it is in the fallback file).

        Args:
            error: How the scope ended; unused by a sender, which delivers its rows either way.
        """
        with self._cond:
            if self._closing:
                return
            self._commit()
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._closed = True

    def _commit(self) -> None:
        if self._pending:
            self._rows.append((self._step, self._pending))
            self._pending = {}
            self._cond.notify()

    def _send_all(self) -> None:
        sock = self._connect()
        while True:
            with self._cond:
                while not self._rows and not self._closing:
                    self._cond.wait()
                batch, self._rows = self._rows, []
                last = self._closing  # log() takes no row after close()
            if batch:
                sock = self._deliver(sock, batch)
            if last:
                break
        if sock is not None:
            with contextlib.suppress(OSError, EOFError):
                _send(sock, ("end", self._sent))
                _receive(sock)
            sock.close()

    def _connect(self) -> socket.socket | None:
        deadline = time.monotonic() + self._wait
        reason = "it did not open its relay"
        while time.monotonic() < deadline:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self._path)
                sock.settimeout(self._wait)
                _send(sock, ("hello", self.label))
                return sock
            except OSError as error:
                sock.close()
                reason = f"{type(error).__name__}: {error}"
            time.sleep(0.05)
        self._use_fallback(f"no primary reachable at {self._path} within {self._wait:.0f}s ({reason})")
        return None

    def _deliver(self, sock: socket.socket | None, batch: list[Row]) -> socket.socket | None:
        if sock is not None:
            try:
                _send(sock, ("rows", batch))
                answer = _receive(sock)
                if answer == ("ack", len(batch)):
                    self._sent += len(batch)
                    return sock
                reason = f"the primary answered {answer!r}"
            except (OSError, EOFError, pickle.PicklingError, TypeError, AttributeError) as error:
                reason = f"{type(error).__name__}: {error}"
            sock.close()
            self._use_fallback(f"the primary did not acknowledge {len(batch)} rows ({reason})")
        self._write_fallback(batch)
        return None

    def _use_fallback(self, reason: str) -> None:
        if self._fallback_reason is None:
            self._fallback_reason = reason
            logger.warning(
                "wandbflow: %s could not relay its logs to the primary of run %s: %s; they are written to %s",
                self.label,
                self.id,
                reason,
                self._fallback,
            )

    def _write_fallback(self, batch: list[Row]) -> None:
        self._fallback.parent.mkdir(parents=True, exist_ok=True)
        with self._fallback.open("a", encoding="utf-8") as out:
            for step, data in batch:
                row = {"run_id": self.id, "label": self.label, "step": step, "data": data}
                out.write(json.dumps(row, default=_plain) + "\n")


class RelayServer:
    """The primary's side: log what the other ranks send into ``run``, keyed by their labels.

    Args:
        run: The primary's run.
        path: The socket to serve on (:func:`socket_path`); a stale file there is replaced.
        peers: How many other ranks share the run; :meth:`close` waits for each to finish sending.
        wait: Seconds :meth:`close` keeps waiting for its peers while none of them is heard from.
    """

    def __init__(self, run: Run, *, path: str, peers: int, wait: float) -> None:
        self._run = run
        self._path = path
        self._peers = peers
        self._wait = wait
        self._labels: dict[socket.socket, str] = {}
        self._done: set[str] = set()
        self._cond = threading.Condition()
        self._last_heard = time.monotonic()
        self._wake_r, self._wake_w = socket.socketpair()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(max(peers, 1))
        self._thread = threading.Thread(target=self._serve, name="wandbflow-relay-server", daemon=True)
        self._thread.start()

    def close(self, error: BaseException | None = None) -> None:
        """Wait for every peer to finish sending (briefly when ``error`` is set), then stop serving.

        Peers still connected afterwards are cut off; what they had not delivered goes to their fallback files.
        """
        patience = self._wait if error is None else min(self._wait, FAILED_WAIT_S)
        with self._cond:
            self._last_heard = time.monotonic()  # silence counts from now: peers may have been quiet all along
            while len(self._done) < self._peers and time.monotonic() - self._last_heard < patience:
                self._cond.wait(timeout=patience - (time.monotonic() - self._last_heard))
            missing = self._peers - len(self._done)
        self._wake_w.send(b"x")
        self._thread.join()
        for sock in (*self._labels, self._listener, self._wake_r, self._wake_w):
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        if missing > 0:
            logger.warning(
                "wandbflow: %d rank(s) did not finish relaying to run %s; what they did not deliver is in "
                "their fallback files",
                missing,
                self._run.id,
            )

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        conn, _ = sock.accept()
                        selector.register(conn, selectors.EVENT_READ)
                    elif not self._handle(sock):
                        selector.unregister(sock)
                        sock.close()
                        self._labels.pop(sock, None)

    def _handle(self, sock: socket.socket) -> bool:
        """Take one message from a peer; False when the peer is gone or done."""
        try:
            kind, body = _receive(sock)
        except (OSError, EOFError, pickle.UnpicklingError, ValueError):
            return False
        self._heard()
        if kind == "hello":
            self._labels[sock] = body
            self._run.define_metric(f"{body}/step")
            self._run.define_metric(f"{body}/*", step_metric=f"{body}/step")
            return True
        label = self._labels.get(sock)
        if label is None:
            return False
        if kind == "rows":
            for step, data in body:
                self._run.log({f"{label}/step": step, **{f"{label}/{k}": v for k, v in data.items()}})
        try:
            _send(sock, ("ack", len(body) if kind == "rows" else body))
        except OSError:
            return False
        if kind == "end":
            with self._cond:
                self._done.add(label)
                self._cond.notify_all()
            return False
        return True

    def _heard(self) -> None:
        with self._cond:
            self._last_heard = time.monotonic()


def _send(sock: socket.socket, message: tuple[str, Any]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _receive(sock: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    return pickle.loads(_exactly(sock, size))


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise EOFError("the relay connection closed")
        chunks += chunk
    return bytes(chunks)


def _plain(value: Any) -> Any:
    """A JSON stand-in for a value the fallback file cannot hold as is (tensors and arrays become lists)."""
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    return repr(value)
