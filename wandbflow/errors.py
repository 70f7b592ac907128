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


class LaunchError(WandbflowError, RuntimeError):
    """A launched rank failed, or the launch timed out; raised by :func:`wandbflow.launch` after every rank is gone.

    Also raised before any rank starts when something the ranks need cannot be pickled (the message names it).
    Fields: ``rank`` (global rank of the first rank that failed; None on a timeout or before the start), ``pid``,
    ``exit_code`` (the rank's exit status, None when it died of a signal), ``signal`` (the signal's name, e.g.
    ``SIGKILL``, when it died of one), ``error_type`` (the exception's class name when the rank raised) and
    ``traceback`` (the rank's own traceback text, also part of the message).
    """

    def __init__(
        self,
        message: str,
        *,
        rank: int | None = None,
        pid: int | None = None,
        exit_code: int | None = None,
        signal: str | None = None,
        error_type: str | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(
            message,
            rank=rank,
            pid=pid,
            exit_code=exit_code,
            signal=signal,
            error_type=error_type,
            traceback=traceback,
        )


class RelayError(WandbflowError, RuntimeError):
    """A rank logged to an offline shared run after its scope ended (its relay to the primary is closed).

    ``run_id`` is the shared run, ``label`` the rank's label in it (``rank-1``).
    """

    def __init__(self, message: str, *, run_id: str, label: str) -> None:
        super().__init__(message, run_id=run_id, label=label)


class SweepConfigError(ConfigError):
    """A sweep config is invalid: an unknown method or distribution, ``min >= max``, empty ``values``, ...

    Raised by ``wandb_sweep_config``, ``load_config``, ``sweep()`` and ``wandbflow sweep create`` before any sweep,
    study or run exists. ``key`` is the dotted path of the offending entry
    (``parameters.optimizer.parameters.momentum.max``), and the message starts with it.
    """


class SweepError(WandbflowError, RuntimeError):
    """A sweep cannot be found, created or served as asked.

    Raised for an unknown sweep id, a ``@wandb_sweep`` step with no sweep config, or an engine asked for something
    it does not do (the W&B engine hands trials only to its own agents). ``sweep_id`` names the sweep, None when
    there is none yet.
    """

    def __init__(self, message: str, *, sweep_id: str | None) -> None:
        super().__init__(message, sweep_id=sweep_id)


class TrialPruned(WandbflowError):
    """Raised by a sweep trial's ``run.log`` when the sweep's early termination (hyperband) stops the trial.

    The trial is recorded as pruned, not failed, and the sweep goes on. ``trial`` is the trial number, ``step``
    how many times the trial had logged the sweep's metric, ``value`` the value that decided it.
    """

    def __init__(self, message: str, *, trial: int, step: int, value: float) -> None:
        super().__init__(message, trial=trial, step=step, value=value)


class NotebookError(WandbflowError, ValueError):
    """A notebook cannot be run as asked.

    A missing file, no cell tagged ``parameters``, a parameter its parameters cell does not define, a secret passed
    as a parameter, a kernel that will not start. Raised before the notebook runs. ``path`` is the notebook,
    ``parameter`` the offending parameter, if any.
    """

    def __init__(self, message: str, *, path: str, parameter: str | None = None) -> None:
        super().__init__(message, path=path, parameter=parameter)


class NotebookExecutionError(WandbflowError, RuntimeError):
    """A notebook run did not finish: a cell raised, the kernel died, or it ran past its timeout.

    ``state`` is failed, interrupted or crashed; ``cell_index`` (0-based, in the executed notebook; None when no cell
    is to blame),
    ``ename`` and ``evalue`` say what failed; ``output`` is the executed notebook, saved also on failure;
    ``run_id`` is the run that recorded it.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        state: str,
        run_id: str | None = None,
        output: str | None = None,
        cell_index: int | None = None,
        ename: str | None = None,
        evalue: str | None = None,
    ) -> None:
        super().__init__(
            message,
            path=path,
            state=state,
            run_id=run_id,
            output=output,
            cell_index=cell_index,
            ename=ename,
            evalue=evalue,
        )
