"""Ranks' output in the notebook: each rank's stdout and stderr go through a pipe, copied here line by line.

:func:`redirect` runs in the rank (Python's streams and the file descriptors both), :class:`RankOutput` in the
launcher, which prefixes every line with ``[rank N]``.
"""

from __future__ import annotations

import io
import os
import selectors
import sys
import threading
from typing import Any


class RankOutput:
    """Copies each rank's stdout and stderr into this process's, live, every line prefixed ``[rank N]``."""

    def __init__(self, ranks: list[tuple[int, Any, Any]]) -> None:
        self._ranks = ranks  # (rank, stdout read end, stderr read end)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._copy, name="wandbflow-rank-output", daemon=True)

    def start(self) -> None:
        """Start copying, in a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """Copy what the ranks wrote before they ended, then stop."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        for _, out, err in self._ranks:
            out.close()
            err.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _copy(self) -> None:
        partial: dict[int, bytes] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ)
            for rank, out, err in self._ranks:
                for reader, target in ((out, sys.stdout), (err, sys.stderr)):
                    os.set_blocking(reader.fileno(), False)
                    selector.register(reader.fileno(), selectors.EVENT_READ, (f"[rank {rank}] ", target))
            stopping = False
            while not stopping:
                events = selector.select()
                stopping = any(key.fd == self._wake_r for key, _ in events)
                if stopping:  # one last pass over what the ranks wrote before they ended
                    events = [(key, 0) for key in selector.get_map().values() if key.fd != self._wake_r]
                for key, _ in events:
                    if key.fd != self._wake_r:
                        self._forward(key, partial, selector)
            for fd, rest in partial.items():
                prefix, target = selector.get_key(fd).data
                target.write(f"{prefix}{rest.decode(errors='replace')}\n")

    @staticmethod
    def _forward(key: selectors.SelectorKey, partial: dict[int, bytes], selector: selectors.BaseSelector) -> None:
        """Write the complete lines the stream has now, prefixed; keep a partial line for later."""
        chunk = _read(key.fd)
        if chunk is None:
            return
        if not chunk:  # the rank (and everything it started) closed the stream
            selector.unregister(key.fd)
            chunk = b"\n" if partial.get(key.fd) else b""
        lines = (partial.pop(key.fd, b"") + chunk).split(b"\n")
        if chunk and lines[-1]:
            partial[key.fd] = lines[-1]
        if lines[:-1]:
            prefix, target = key.data
            target.write("".join(f"{prefix}{line.decode(errors='replace')}\n" for line in lines[:-1]))
            target.flush()


def _read(fd: int) -> bytes | None:
    """What the stream has now: None when nothing yet, empty at its end."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def redirect(outputs: list[tuple[Any, Any]], index: int) -> None:
    """Send this rank's stdout and stderr (Python's and the file descriptors) to the launcher, line by line.

    ``outputs`` holds every rank's (stdout, stderr) write ends; this rank's is ``index``, the others are closed.
    """
    for i, (out, err) in enumerate(outputs):
        if i != index:
            out.close()
            err.close()
    out, err = outputs[index]
    for conn, fd in ((out, 1), (err, 2)):
        os.dup2(conn.fileno(), fd)
        conn.close()
    sys.stdout = _line_stream(1)
    sys.stderr = _line_stream(2)


def _line_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
