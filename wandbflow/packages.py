"""The installed-package list each run saves as ``requirements.txt``, scanned once per state of the environment.

W&B scans every installed distribution's metadata at each ``wandb.init`` (about 0.2 to 0.5 s for 170 packages),
which is most of what opening a run costs once the service is up. A notebook opens many runs in one process, so
wandbflow opens its runs with W&B's own scan off and saves the same list itself from a cache. The cache is keyed on
the import path and the modification times of its package directories: installing or removing a package
(``%pip install``) changes its site-packages directory, and the next run scans again.
"""

from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_cached: tuple[tuple[tuple[str, int], ...], str] | None = None


def _environment_key() -> tuple[tuple[str, int], ...]:
    """The import path, with the modification time of each of its package directories (``*-packages``).

    Other entries (the working directory, a project's source tree) change whenever a file is written there, so
    they count by name only: adding one to the path still rescans.
    """
    key = []
    for entry in sys.path:
        stamp = 0
        if entry.endswith(("site-packages", "dist-packages")):
            try:
                stamp = os.stat(entry).st_mtime_ns
            except OSError:  # a package directory that does not exist (yet)
                stamp = -1
        key.append((entry, stamp))
    return tuple(key)


def _scan() -> str:
    from importlib.metadata import distributions

    found: dict[str, str] = {}
    for distribution in distributions():
        try:
            name = distribution.metadata["Name"]
            version = distribution.version
        except (KeyError, UnicodeDecodeError, TypeError):  # malformed metadata: W&B skips these too
            continue
        if name:
            found.setdefault(name, version)  # the first on the path is the one imported
    return "".join(f"{name}=={found[name]}\n" for name in sorted(found, key=str.lower))


def requirements() -> str:
    """The installed distributions as ``name==version`` lines, sorted by name; rescanned only when they change."""
    global _cached
    key = _environment_key()
    with _lock:
        if _cached is None or _cached[0] != key:
            _cached = (key, _scan())
        return _cached[1]
