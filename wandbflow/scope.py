"""The run lifecycle: the one place that calls ``wandb.init`` and ``Run.finish``.

A :class:`Scope` opens (or reuses, or skips) the run that the policy plans for one cell, step call or block,
makes ``wandb.run``/``wandb.log``/``wandb.config``/``wandb.summary`` address it while it is open, and finishes
it with the right exit code: 0 on success, 1 when the body raised, 255 on KeyboardInterrupt.

Open scopes are context-local (a ``contextvars`` stack), so threads and async tasks do not see each other's runs.
An *ambient* scope (a pipeline, a trial notebook's run) spans cells: it is the parent of every scope opened after
it in this process until it ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from wandbflow import config as settings_module
from wandbflow import display, inherit, links, naming, packages, policy, relay, source
from wandbflow.errors import ConfigError
from wandbflow.redact import redact
from wandbflow.topology import DistributedInfo, get_distributed_info

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

    from wandbflow.ledger import Ledger

logger = logging.getLogger("wandbflow")

F = TypeVar("F", bound=Callable[..., Any])
SourceKind = Literal["cell", "function", "block", "notebook"]

EXIT_SUCCESS, EXIT_FAILURE, EXIT_INTERRUPTED = 0, 1, 255


@dataclass
class Frame:
    """One open scope: its plan and the run it logs to (None on a rank that does not log)."""

    task: str
    plan: policy.RunPlan
    resolved: settings_module.Resolved
    run: Run | None
    owns: bool
    started: float
    previous_global: Run | None
    source_kind: SourceKind
    block_depth: int
    quiet: bool = False
    ledger: Ledger | None = None
    card: display.RunCard | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_stack: contextvars.ContextVar[tuple[Frame, ...]] = contextvars.ContextVar("wandbflow_scopes", default=())
_ambient: list[Frame] = []
_ambient_lock = threading.Lock()
_init_lock = threading.Lock()
_open_owned = 0
_saved_process_settings: dict[str, Any] = {}


def current_frame() -> Frame | None:
    """The innermost open scope visible here: this context's stack, else the ambient (pipeline/trial) scope."""
    stack = _stack.get()
    if stack:
        return stack[-1]
    with _ambient_lock:
        return _ambient[-1] if _ambient else None


def forget_parent_scopes() -> None:
    """Drop the open scopes a forked process inherited: their runs belong to the process it was forked from.

    ``wandbflow.launch`` calls it first thing in a forked rank, which then starts, like a spawned one, with no
    scope open.
    """
    global _open_owned
    _ambient.clear()
    _stack.set(())
    _open_owned = 0


def get_wandb_run() -> Run | None:
    """The run of the innermost open scope, or None (no scope, or a rank that does not log)."""
    frame = current_frame()
    return frame.run if frame is not None else None


def get_wandb_run_dir() -> str | None:
    """The local directory of the current scope's run (what ``wandb sync`` and ``wandb leet`` take), or None."""
    run = get_wandb_run()
    if run is None or isinstance(run, relay.RelayRun) or run.settings.mode == "disabled":
        return None
    return str(run.settings.sync_dir)


class Scope:
    """A run scope for one cell, step call or block; use :func:`task` or :func:`wandb_init` to make one.

    As a context manager it yields the scope's run (or None on a rank that does not log). :meth:`start` and
    :meth:`end` do the same for scopes that span cells (``ambient=True``).
    """

    def __init__(
        self,
        name: str,
        settings: Mapping[str, Any],
        *,
        source_kind: SourceKind = "block",
        source: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.name = name
        self.settings = settings_module.check_fields(settings)
        self.source_kind: SourceKind = source_kind
        self.source = source
        self.quiet = quiet
        self.frame: Frame | None = None
        self._token: contextvars.Token[tuple[Frame, ...]] | None = None
        self._ambient = False

    @property
    def run(self) -> Run | None:
        """The scope's run once started."""
        return self.frame.run if self.frame is not None else None

    def start(self, *, ambient: bool = False) -> Run | None:
        """Open the scope's run (or reuse the parent's) and make it current.

        Args:
            ambient: Make it the parent of later scopes in this process, across cells, until :meth:`end`.

        Returns:
            The run, or None on a rank that does not log.

        Raises:
            ConfigError: A bad setting; no run is started.
            ScopeError: ``run_mode="shared"`` with nothing to share; no run is started.
        """
        self.frame = _open(self)
        if ambient:
            with _ambient_lock:
                _ambient.append(self.frame)
            self._ambient = True
        else:
            self._token = _stack.set((*_stack.get(), self.frame))
        return self.frame.run

    def end(self, error: BaseException | None = None) -> None:
        """Finish the scope: exit code from ``error`` (None: success), globals restored."""
        frame = self.frame
        if frame is None:
            return
        self.frame = None
        if self._ambient:
            with _ambient_lock:
                if frame in _ambient:
                    _ambient.remove(frame)
        elif self._token is not None:
            _stack.reset(self._token)
            self._token = None
        _close(frame, error)

    def save_file(self, relative: str, text: str) -> None:
        """Save ``text`` (a cell's source, an executed notebook) into the scope's run at ``relative``.

        Nothing happens on a rank that does not log.

        A failure to save is logged, never raised: the record of the code must not stop the code.
        """
        run = self.run
        if run is None or isinstance(run, relay.RelayRun) or run.settings.mode == "disabled":
            return
        try:
            source.save_file(run, relative, text)
        except Exception:
            logger.exception("wandbflow: could not save %s into run %s", relative, run.id)

    def __enter__(self) -> Run | None:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(exc)


def task(
    name: str | None = None,
    *,
    quiet: bool = False,
    **settings: Any,
) -> Scope:
    """A scope for a block of code: ``with wandbflow.task("prepare", job_type="prep") as run: ...``.

    Args:
        name: The task name used in the run id (``{session}-{name}-{n}``) and as the run's display name.
        quiet: Show no run card.
        **settings: Any ``wandb_config`` field; these take precedence over every other tier.

    Returns:
        The scope, to use with ``with``.
    """
    return Scope(name or "task", settings, source_kind="block", quiet=quiet)


@overload
def wandb_init(fn: F, /) -> F: ...


@overload
def wandb_init(fn: None = None, /, **settings: Any) -> Callable[[F], F]: ...


def wandb_init(fn: Any = None, /, **settings: Any) -> Any:
    """Run each call of a function inside its own scope (a pipeline step).

    Usable bare (``@wandb_init``) or with settings (``@wandb_init(run_mode="new", job_type="prep")``), on sync and
    async functions and methods. The step's name is the function's name.

    Raises:
        ConfigError: Applied to something that is not callable, or given an invalid setting.
    """
    checked = settings_module.check_fields(settings)
    if fn is None:
        return lambda f: _decorate(f, checked)
    return _decorate(fn, checked)


def _decorate(fn: Any, settings: dict[str, Any]) -> Any:
    if not callable(fn):
        raise ConfigError(f"can only decorate a function (got {type(fn).__name__} {fn!r})", key="wandb_init")
    name = getattr(fn, "__name__", type(fn).__name__)
    source = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', name)}"

    def scope() -> Scope:
        return Scope(name, settings, source_kind="function", source=source)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_step(*args: Any, **kwargs: Any) -> Any:
            with scope():
                return await fn(*args, **kwargs)

        wrapper: Any = async_step
    else:

        @functools.wraps(fn)
        def step(*args: Any, **kwargs: Any) -> Any:
            with scope():
                return fn(*args, **kwargs)

        wrapper = step
    wrapper.__wandbflow_settings__ = dict(settings)
    return wrapper


def exit_code_for(error: BaseException | None) -> int:
    """The run exit code for how a scope ended: 0, 1, or 255 for KeyboardInterrupt/cancellation."""
    if error is None:
        return EXIT_SUCCESS
    if isinstance(error, KeyboardInterrupt | asyncio.CancelledError):
        return EXIT_INTERRUPTED
    if isinstance(error, SystemExit):
        return EXIT_SUCCESS if error.code in (None, 0) else EXIT_FAILURE
    return EXIT_FAILURE


def state_for(exit_code: int) -> str:
    """The ledger state for an exit code."""
    return {EXIT_SUCCESS: "finished", EXIT_INTERRUPTED: "interrupted"}.get(exit_code, "failed")


def _open(scope: Scope) -> Frame:
    parent = current_frame()
    resolved = settings_module.resolve(
        scope.settings,
        parent=parent.resolved if parent is not None else None,
        parent_depth=parent.block_depth if parent is not None else 0,
    )
    parent_run = parent.run if parent is not None else None
    topology = get_distributed_info()
    user_id = resolved.get("id") if resolved.sources.get("id") in ("argument", "block") else None
    base = user_id or (inherit.take_base() if parent is None else None) or naming.next_base(scope.name)
    plan = policy.plan(
        resolved.values["run_mode"],
        resolved.values["rank_scope"],
        topology=topology,
        parent=policy.ParentRun(parent_run.id, parent_run.group or None) if parent_run is not None else None,
        base=base,
        task=scope.name,
    )
    previous_global = _global_run()
    frame = Frame(
        task=scope.name,
        plan=plan,
        resolved=resolved,
        run=None,
        owns=False,
        started=time.time(),
        previous_global=previous_global,
        source_kind=scope.source_kind,
        block_depth=settings_module.block_depth(),
        quiet=scope.quiet,
    )
    offline_shared = plan.shared and resolved.values["mode"] == "offline"
    if plan.reuse_parent:
        frame.run = parent_run
    elif plan.initialize and offline_shared and not plan.primary:
        frame.run = _relay_sender(resolved, plan)
        frame.extra["relay"] = frame.run
    elif plan.initialize:
        frame.run = _init_run(scope, resolved, plan, topology)
        if offline_shared:
            try:
                frame.extra["relay"] = _relay_server(frame.run, resolved, topology)
            except OSError:  # the other ranks then write to their fallback files; this rank's run goes on
                logger.exception("wandbflow: could not serve the relay of run %s", frame.run.id)
        frame.owns = True
        run_settings = frame.run.settings  # a deep copy at each access: take it once
        try:
            frame.ledger = _record_start(scope, frame, topology, run_settings)
        except Exception:  # the ledger is a record, never a reason to stop the user's work
            logger.exception("wandbflow: could not record run %s in the ledger", frame.run.id)
        if not scope.quiet:
            frame.card = _card(scope.name, frame.run, resolved, run_settings)
            display.show(frame.card)
    if frame.run is not None:
        _set_global_run(frame.run)
    return frame


def _init_run(
    scope: Scope, resolved: settings_module.Resolved, plan: policy.RunPlan, topology: DistributedInfo | None
) -> Run:
    import wandb

    values = resolved.values
    assert plan.id is not None
    if values.get("resume") and values["mode"] == "offline":
        raise ConfigError("W&B cannot resume an offline run; use mode='online'", key="resume")
    settings = _run_settings(values, plan)
    save_requirements = bool(settings.x_save_requirements)
    settings.x_save_requirements = False  # saved below from a cache: W&B would rescan every package at each init
    kwargs: dict[str, Any] = {
        "id": naming.fit(plan.id),
        "name": values.get("name") or (scope.name if topology is None else _rank_run_name(plan.id)),
        "project": values.get("project"),
        "entity": values.get("entity"),
        "group": naming.fit(plan.group) if plan.group else values.get("group"),
        "job_type": values.get("job_type"),
        "tags": values.get("tags"),
        "notes": values.get("notes"),
        "config": redact(dict(values.get("config") or {})),
        "dir": values.get("dir"),
        "mode": values["mode"],
        "reinit": "create_new",
        "settings": settings,
        **{k: v for k, v in resolved.init_extras().items() if k != "settings"},
    }
    _hold_process_settings(values["mode"])
    try:
        run = wandb.init(**kwargs)
    except BaseException:
        _release_process_settings()
        raise
    if save_requirements and values["mode"] != "disabled":
        try:
            source.save_file(run, "requirements.txt", packages.requirements())
        except Exception:  # a record of the environment, never a reason to stop the user's work
            logger.exception("wandbflow: could not save the package list into run %s", run.id)
    if resolved.sources.get("mode") == "default" and values["mode"] == "offline":
        display.offline_notice(os.path.dirname(str(run.settings.sync_dir)))
    return run


def _rank_run_name(run_id: str) -> str:
    """A rank's run name: its id without the session prefix (``train-1-rank-0``), so runs of one launch differ."""
    session = naming.session_id()
    return run_id[len(session) + 1 :] if run_id.startswith(f"{session}-") else run_id


def _run_settings(values: Mapping[str, Any], plan: policy.RunPlan) -> Any:
    import wandb

    given = values.get("settings")
    if given is None:
        # The run card says what wandb's own banner would (link or run dir and sync command).
        settings = wandb.Settings(silent=True)
    else:
        settings = given.model_copy() if isinstance(given, wandb.Settings) else wandb.Settings(**dict(given))
    if values.get("host"):
        settings.base_url = values["host"]
    if plan.shared and values["mode"] != "offline":
        settings.mode = "shared"
        settings.x_primary = plan.primary
        settings.x_label = plan.label
        settings.x_update_finish_state = plan.finishes
    return settings


def _hold_process_settings(mode: str) -> None:
    """Point W&B's process settings at the open scopes while any scope owns a run.

    With ``reinit="return_previous"`` and the scope's mode, a plain ``wandb.init()`` returns the scope's run
    instead of finishing it or asking for a login.
    """
    import wandb

    global _open_owned, _saved_process_settings
    with _init_lock:
        if _open_owned == 0:
            current = wandb.setup().settings
            _saved_process_settings = {"reinit": current.reinit, "mode": current.mode}
        _open_owned += 1
        wandb.setup(settings=wandb.Settings(reinit="return_previous", mode=mode))  # type: ignore[arg-type]


def _release_process_settings() -> None:
    global _open_owned
    with _init_lock:
        _open_owned -= 1
        if _open_owned == 0:
            import wandb

            wandb.setup(settings=wandb.Settings(**_saved_process_settings))


def _global_run() -> Run | None:
    import sys

    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


def _set_global_run(run: Run) -> None:
    # wandb's module-global setter is private; tests/test_scope.py pins its behaviour.
    from wandb.sdk.lib import module
    from wandb.sdk.wandb_init import _set_global_run as set_global

    if isinstance(run, relay.RelayRun):
        module.set_global(log=run.log)  # a relaying rank has no run of its own, only ``log``
    else:
        set_global(run)


def _restore_globals(frame: Frame) -> None:
    from wandb.sdk.lib import module

    parent = current_frame()
    for candidate in (parent.run if parent else None, frame.previous_global):
        if candidate is not None and not _finished(candidate):
            _set_global_run(candidate)
            return
    module.unset_globals()


def _finished(run: Run) -> bool:
    return run.closed if isinstance(run, relay.RelayRun) else run._is_finished


def _close(frame: Frame, error: BaseException | None) -> None:
    run = frame.run
    if run is None:
        return
    try:
        transport = frame.extra.pop("relay", None)
        try:
            if transport is not None:  # the relayed rows reach the run before it finishes
                transport.close(error)
        finally:
            if frame.owns:
                _finish_owned(frame, run, exit_code_for(error), error)
    finally:
        _restore_globals(frame)


def _relay_sender(resolved: settings_module.Resolved, plan: policy.RunPlan) -> Run:
    """A non-primary rank's stand-in run: its ``log`` calls go to the primary (W&B has no offline shared mode)."""
    assert plan.id is not None and plan.label is not None
    run_id = naming.fit(plan.id)
    root = resolved.get("dir") or os.environ.get("WANDB_DIR") or os.getcwd()
    sender = relay.RelayRun(
        run_id,
        plan.label,
        path=relay.socket_path(run_id),
        fallback=relay.fallback_path(root, run_id, plan.label),
        wait=relay.timeout(),
    )
    return cast("Run", sender)


def _relay_server(run: Run, resolved: settings_module.Resolved, topology: DistributedInfo | None) -> relay.RelayServer:
    """The primary's relay: it logs what the scope's other ranks send, before the run finishes."""
    assert topology is not None
    per_worker = resolved.values["rank_scope"] == "worker"
    peers = (topology["local_world_size"] if per_worker else topology["world_size"]) - 1
    return relay.RelayServer(run, path=relay.socket_path(run.id), peers=peers, wait=relay.timeout())


def _finish_owned(frame: Frame, run: Run, exit_code: int, error: BaseException | None) -> None:
    summary = _summary(run)
    final_config = _config(run)
    try:
        if not run._is_finished:
            run.finish(exit_code=exit_code)
    except Exception:  # never replace the body's own exception with a finishing problem
        logger.exception("wandbflow: could not finish run %s", run.id)
    finally:
        _release_process_settings()
    _record_finish(frame, exit_code, summary, error, final_config)
    if frame.card is not None:
        frame.card.state = state_for(exit_code)
        frame.card.exit_code = exit_code
        frame.card.duration = time.time() - frame.started
        frame.card.summary = summary
        if not frame.quiet:
            display.show(frame.card)


def _config(run: Run) -> dict[str, Any] | None:
    """The run's config as it ends (a run may add to it while it runs); None when it cannot be read."""
    try:
        return dict(run.config)
    except Exception:  # a broken run: the ledger keeps the config recorded at the start
        return None


def _summary(run: Run) -> dict[str, Any]:
    try:
        return {k: v for k, v in dict(run.summary).items() if not k.startswith("_")}
    except Exception:  # a finished or broken run has no readable summary; the card and ledger do without
        return {}


def _card(name: str, run: Run, resolved: settings_module.Resolved, run_settings: Any) -> display.RunCard:
    mode = str(run_settings.mode)
    online = mode in ("online", "shared") and not run.offline
    host = resolved.get("host")
    return display.RunCard(
        name=name,
        run_id=run.id,
        mode=mode,
        project=run.project,
        group=run.group or None,
        url=links.run_url(host, run.entity, run.project, run.id) if online else None,
        group_url=links.group_url(host, run.entity, run.project, run.group) if online and run.group else None,
        run_dir=None if mode == "disabled" else str(run_settings.sync_dir),
    )


def _record_start(scope: Scope, frame: Frame, topology: DistributedInfo | None, run_settings: Any) -> Ledger | None:
    from wandbflow.ledger import Ledger, RunRecord, default_path

    run = frame.run
    assert run is not None
    if run_settings.mode == "disabled":
        return None
    ledger = Ledger(default_path(os.path.dirname(os.path.dirname(str(run_settings.sync_dir)))))
    context = inherit.current()
    card_url = None
    if not run.offline:
        card_url = links.run_url(frame.resolved.get("host"), run.entity, run.project, run.id)
    ledger.record_start(
        RunRecord(
            run_id=run.id,
            name=run.name,
            project=run.project,
            entity=run.entity or None,
            group=run.group or None,
            job_type=run.job_type or None,
            mode=str(run_settings.mode),
            dir=str(run_settings.sync_dir),
            url=card_url,
            started_at=frame.started,
            config=redact(dict(run.config)),
            source_kind=scope.source_kind,
            source=scope.source,
            notebook=source.notebook_path(run_settings),
            session=naming.session_id(),
            rank=topology["rank"] if topology else None,
            local_rank=topology["local_rank"] if topology else None,
            world_size=topology["world_size"] if topology else None,
            worker_index=topology["worker_index"] if topology else None,
            sweep_id=context.sweep_id if context else None,
            trial_id=context.trial_id if context else None,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
    )
    return ledger


def _record_finish(
    frame: Frame,
    exit_code: int,
    summary: dict[str, Any],
    error: BaseException | None,
    final_config: dict[str, Any] | None,
) -> None:
    if frame.ledger is None or frame.run is None:
        return
    try:
        frame.ledger.record_finish(
            frame.run.id,
            state=state_for(exit_code),
            exit_code=exit_code,
            summary=redact(summary),
            error=f"{type(error).__name__}: {error}" if error is not None and exit_code else None,
            config=redact(final_config) if final_config is not None else None,
        )
    except Exception:  # the ledger is a record, never a reason to lose the user's exception
        logger.exception("wandbflow: could not record the end of run %s in the ledger", frame.run.id)
