"""``@wandb_sweep`` and ``get_wandb_sweep_id()``, as in Flyte's W&B plugin.

A step decorated with ``@wandb_sweep`` creates a sweep from the current sweep config when it is called and makes its
id available to the code it runs through :func:`get_wandb_sweep_id`; a ``@wandb_sweep`` step called inside another
one (or inside a sweep trial) reuses that sweep instead of creating a new one.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from wandbflow import inherit
from wandbflow.errors import ConfigError, SweepError
from wandbflow.sweeps.engines import SweepEngine
from wandbflow.sweeps.spec import SweepConfig, current_config
from wandbflow.sweeps.trial import active_sweep_id, using_sweep
from wandbflow.sweeps.validate import validate

F = TypeVar("F", bound=Callable[..., Any])


def get_wandb_sweep_id() -> str | None:
    """The id of the sweep this code runs in, or None.

    Inside a ``@wandb_sweep`` step or a trial run by :func:`~wandbflow.sweeps.agent`, that sweep's; in a process
    running a trial, the sweep it inherited; under W&B's own agent, ``WANDB_SWEEP_ID``.
    """
    found = active_sweep_id()
    if found is not None:
        return found
    context = inherit.current()
    if context is not None and context.sweep_id:
        return context.sweep_id
    return os.environ.get("WANDB_SWEEP_ID") or None


@overload
def wandb_sweep(fn: F, /) -> F: ...


@overload
def wandb_sweep(
    fn: None = None,
    /,
    *,
    config: Mapping[str, Any] | None = None,
    engine: SweepEngine | str | None = None,
    storage: str | os.PathLike[str] | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> Callable[[F], F]: ...


def wandb_sweep(
    fn: Any = None,
    /,
    *,
    config: Mapping[str, Any] | None = None,
    engine: SweepEngine | str | None = None,
    storage: str | os.PathLike[str] | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> Any:
    """Create a sweep each time a step is called, and give its id to the step (``get_wandb_sweep_id()``).

    Usable bare or with arguments, on sync and async functions. Inside an enclosing sweep (another
    ``@wandb_sweep`` step, a trial) the step reuses that sweep's id and creates none.

    Args:
        fn: The step.
        config: The sweep config; by default the current one (``with wandb_sweep_config(...):`` or the session's).
        engine: As for :func:`~wandbflow.sweeps.sweep`.
        storage: As for :func:`~wandbflow.sweeps.sweep`.
        project: As for :func:`~wandbflow.sweeps.sweep`.
        entity: As for :func:`~wandbflow.sweeps.sweep`.

    Raises:
        SweepConfigError: ``config`` is invalid (at decoration).
        SweepError: Called with no sweep config anywhere.
        ConfigError: Applied to something that is not callable.
    """
    checked = validate(config) if config is not None else None
    options = {"engine": engine, "storage": storage, "project": project, "entity": entity}
    if fn is None:
        return lambda f: _decorate(f, checked, options)
    return _decorate(fn, checked, options)


def _decorate(fn: Any, config: SweepConfig | None, options: dict[str, Any]) -> Any:
    if not callable(fn):
        raise ConfigError(f"can only decorate a function (got {type(fn).__name__} {fn!r})", key="wandb_sweep")

    def sweep_id() -> str | None:
        if get_wandb_sweep_id() is not None:
            return None
        space = config if config is not None else current_config()
        if space is None:
            raise SweepError(
                f"{getattr(fn, '__name__', 'the step')} needs a sweep config: call wandb_sweep_config(...) first, "
                "use it as `with wandb_sweep_config(...):`, or pass @wandb_sweep(config=...)",
                sweep_id=None,
            )
        from wandbflow.sweeps.sweep import sweep

        return sweep(space, **options).id

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_step(*args: Any, **kwargs: Any) -> Any:
            created = sweep_id()
            if created is None:
                return await fn(*args, **kwargs)
            with using_sweep(created):
                return await fn(*args, **kwargs)

        return async_step

    @functools.wraps(fn)
    def step(*args: Any, **kwargs: Any) -> Any:
        created = sweep_id()
        if created is None:
            return fn(*args, **kwargs)
        with using_sweep(created):
            return fn(*args, **kwargs)

    return step
