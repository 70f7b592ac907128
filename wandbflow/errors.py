"""Every exception wandbflow raises.

All of them derive from :class:`WandbflowError`, carry the fields a caller may branch on, and pickle cleanly:
they cross process boundaries (a launched rank, a trial kernel) and must arrive intact.
"""

from __future__ import annotations

from typing import Any


class WandbflowError(Exception):
    """Base class of every wandbflow error.

    Subclasses pass their fields as keyword arguments; ``__reduce__`` rebuilds the exception from them, so an
    error raised in a child process is the same error in its parent.
    """

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self._fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._fields))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[WandbflowError], message: str, fields: dict[str, Any]) -> WandbflowError:
    error = cls.__new__(cls)
    WandbflowError.__init__(error, message, **fields)
    return error


class ConfigError(WandbflowError, ValueError):
    """A setting is invalid: unknown ``run_mode``/``rank_scope``, a bad id, a wrongly typed field.

    Raised before any run starts. ``key`` names the offending setting.
    """

    def __init__(self, message: str, *, key: str) -> None:
        super().__init__(f"{key}: {message}", key=key)


class ScopeError(WandbflowError, RuntimeError):
    """A scope cannot be opened as asked, e.g. ``run_mode="shared"`` with no parent run to share.

    Raised before any run starts. ``task`` names the step, cell or block.
    """

    def __init__(self, message: str, *, task: str) -> None:
        super().__init__(message, task=task)


class LedgerError(WandbflowError, RuntimeError):
    """The local ledger cannot be opened or written. ``path`` is the database file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message, path=path)
