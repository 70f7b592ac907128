"""IPython magics: ``%%wandb_task``, ``%wandb_config`` and ``%wandb_pipeline``.

Thin adapters over the Python API: each magic parses its line with ``magic_arguments`` and makes one call into
:mod:`wandbflow.scope` or :mod:`wandbflow.config`. Bad input is an IPython ``UsageError`` (one line, no traceback),
raised before the cell body runs or any run starts. The extension registers no event hooks, so it can never make
an unrelated cell fail; unloading it ends an open pipeline.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, argument_group, magic_arguments, parse_argstring

from wandbflow import config as settings_module
from wandbflow.errors import WandbflowError
from wandbflow.redact import redact
from wandbflow.scope import Scope, current_frame

_TRUE, _FALSE, _NONE = ("true", "yes", "on"), ("false", "no", "off"), ("none", "null")


def parse_value(text: str) -> Any:
    """A typed value from a ``key=value`` flag: bool, None, int, float, else the string (quotes keep a string)."""
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    if lowered in _NONE:
        return None
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Iterable[str], *, flag: str) -> dict[str, Any]:
    """``["rows=1000", "lr=0.1"]`` -> ``{"rows": 1000, "lr": 0.1}``.

    Raises:
        UsageError: An item that is not ``key=value`` with both parts present, naming the flag and the item.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value:
            raise UsageError(f"{flag}: expected key=value, got {item!r}")
        parsed[key.strip()] = parse_value(value)
    return parsed


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def run_settings(args: Any) -> dict[str, Any]:
    """The scope settings named by the shared run flags (only those given)."""
    settings: dict[str, Any] = {
        "project": args.project,
        "entity": args.entity,
        "job_type": args.job_type,
        "group": args.group,
        "notes": args.notes,
        "run_mode": args.run_mode,
        "rank_scope": args.rank_scope,
        "id": args.id,
        "mode": args.mode,
        "tags": _tags(args.tags) if args.tags is not None else None,
        "config": parse_assignments(args.config, flag="--config") if args.config else None,
    }
    return {key: value for key, value in settings.items() if value is not None}


def _run_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The run options shared by ``%%wandb_task`` and ``%wandb_pipeline``, declared once."""
    for decorator in reversed(
        (
            argument_group("run"),
            argument("--project", help="W&B project."),
            argument("--entity", help="W&B entity (user or team)."),
            argument("--job-type", dest="job_type", help="The run's job type."),
            argument("--group", help="The run's group."),
            argument("--tags", help="Comma-separated tags: --tags a,b."),
            argument("--notes", help="Notes for the run."),
            argument("--config", nargs="+", metavar="KEY=VALUE", help="Run config, typed: --config rows=1000 lr=0.1."),
            argument(
                "--run-mode",
                dest="run_mode",
                choices=("auto", "new", "shared"),
                help="auto: reuse an enclosing run, else open one; new: always its own run; shared: log into the "
                "enclosing run.",
            ),
            argument("--rank-scope", dest="rank_scope", choices=("global", "worker"), help="For multi-rank runs."),
            argument("--id", help="Use this run id as is."),
            argument("--mode", choices=settings_module.MODES, help="online, offline or disabled."),
            argument("--quiet", action="store_true", help="Show no run card."),
        )
    ):
        fn = decorator(fn)
    return fn


@magics_class
class WandbMagics(Magics):
    """``%%wandb_task``, ``%wandb_config`` and ``%wandb_pipeline``."""

    pipeline: Scope | None = None

    @magic_arguments()
    @argument("--name", help="Task name: the run's name and part of its id (default: cell<execution count>).")
    @argument("--resume", action="store_true", help="Continue the last run of this task name (online only).")
    @argument("--no-save-code", dest="save_code", action="store_false", help="Do not save the cell source.")
    @argument(
        "--nproc-per-node",
        dest="nproc_per_node",
        type=int,
        help="Run the cell on this many ranks (torch.multiprocessing); rank 0's new variables come back.",
    )
    @argument("--nnodes", type=int, default=1, help="With --nproc-per-node: nodes, simulated on this machine.")
    @argument("--timeout", type=float, help="With --nproc-per-node: stop every rank after this many seconds.")
    @_run_flags
    @cell_magic
    def wandb_task(self, line: str, cell: str) -> Any:
        """Run the cell as one W&B task: a scoped run opened before the body and finished after it.

        The body runs in the notebook's namespace exactly as without the magic; its last expression is displayed.
        An exception finishes the run with exit code 1, Ctrl-C with 255; either is re-raised as usual.
        """
        __tracebackhide__ = True
        args = parse_argstring(self.wandb_task, line)
        shell: Any = self.shell
        name = args.name or f"cell{shell.execution_count}"
        settings = run_settings(args)
        if args.nproc_per_node is not None:
            return _launch_cell(shell, cell, name, settings, args)
        if args.resume:
            settings.update(_resume_settings(name, settings))
        code = _compile_cell(shell, cell)
        scope = _call(lambda: Scope(name, settings, source_kind="cell", source=cell, quiet=args.quiet))
        _call(scope.start)
        try:
            if args.save_code:
                scope.save_file(f"code/{name}.py", cell)
            result = _execute(shell, code)
        except BaseException as error:
            scope.end(error)
            raise
        scope.end()
        return result

    @magic_arguments()
    @argument("assignments", nargs="*", metavar="KEY=VALUE", help="Settings: project=demo mode=offline tags=a,b.")
    @argument("--reset", action="store_true", help="Forget the session-wide settings first.")
    @line_magic
    def wandb_config(self, line: str) -> None:
        """Set session-wide W&B settings (``project=demo entity=me mode=offline tags=a,b``).

        With no settings, print the resolved configuration and where each value came from.
        """
        args = parse_argstring(self.wandb_config, line)
        if args.reset:
            settings_module.reset_session_default()
        fields = parse_assignments(args.assignments, flag="%wandb_config")
        if "tags" in fields:
            fields["tags"] = _tags(str(fields["tags"]))
        if fields:
            _call(lambda: settings_module.wandb_config(**fields))
        elif not args.reset:
            print(describe(settings_module.resolve()))

    @magic_arguments()
    @argument("name", nargs="?", help="The pipeline's name: its run's name and group.")
    @argument("--end", action="store_true", help="End the open pipeline.")
    @_run_flags
    @line_magic
    def wandb_pipeline(self, line: str) -> None:
        """Open a pipeline run that the following task cells belong to, until ``%wandb_pipeline --end``.

        Task cells inside it follow the parent/child rules: ``auto`` logs into the pipeline's run, ``new`` opens its
        own run in the pipeline's group, ``shared`` logs into the pipeline's run.
        """
        args = parse_argstring(self.wandb_pipeline, line)
        if args.end:
            if type(self).pipeline is None:
                raise UsageError("%wandb_pipeline --end: no pipeline is open")
            self.end_pipeline()
            return
        if not args.name:
            raise UsageError("%wandb_pipeline: give the pipeline a name, or --end")
        self.end_pipeline()
        settings = {"group": args.name, **run_settings(args)}
        scope = _call(lambda: Scope(args.name, settings, source_kind="cell", quiet=args.quiet))
        _call(lambda: scope.start(ambient=True))
        type(self).pipeline = scope

    @classmethod
    def end_pipeline(cls) -> None:
        """Finish the open pipeline's run, if any."""
        scope, cls.pipeline = cls.pipeline, None
        if scope is not None:
            scope.end()


def describe(resolved: settings_module.Resolved) -> str:
    """The resolved settings as an aligned table of field, value and source (secrets masked)."""
    values = redact(resolved.values)
    width = max(len(key) for key in values)
    lines = [f"{'field'.ljust(width)}  {'value':<30}  source"]
    for key in sorted(values):
        lines.append(f"{key.ljust(width)}  {values[key]!r:<30}  {resolved.sources.get(key, '?')}")
    frame = current_frame()
    if frame is not None and frame.run is not None:
        lines.append(f"(inside {frame.task}: run {frame.run.id})")
    return "\n".join(lines)


def _call(action: Callable[[], Any]) -> Any:
    """Run ``action``, turning a wandbflow error about the user's input into a one-line usage error."""
    try:
        return action()
    except WandbflowError as error:
        raise UsageError(str(error)) from None


def _launch_cell(shell: Any, cell: str, name: str, settings: dict[str, Any], args: Any) -> Any:
    """Run the cell on ``--nproc-per-node`` ranks: one card per run, rank 0's variables and value come back."""
    from wandbflow import display
    from wandbflow.errors import LaunchError
    from wandbflow.launcher import launch_cell

    if args.resume:
        raise UsageError("--resume cannot be combined with --nproc-per-node")
    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise UsageError("--nproc-per-node and --nnodes must be at least 1")
    try:
        result = launch_cell(
            shell.transform_cell(cell),
            shell.user_ns,
            name=name,
            nproc_per_node=args.nproc_per_node,
            nnodes=args.nnodes,
            settings=settings,
            save_code=args.save_code,
            timeout=args.timeout,
        )
    except LaunchError as error:
        if getattr(error, "rank", None) is None:  # found before any rank started: the cell's globals cannot travel
            raise UsageError(str(error)) from None
        raise
    except WandbflowError as error:
        raise UsageError(str(error)) from None
    shell.user_ns.update(result.variables)
    if not args.quiet:
        for card in result.runs:
            display.show(card)
    return result.value


def _resume_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The id of the last run of task ``name`` and ``resume="must"``; online only (W&B cannot resume offline)."""
    from wandbflow.ledger import Ledger, default_path

    resolved = _call(lambda: settings_module.resolve(settings))
    if resolved.values["mode"] != "online":
        raise UsageError(
            f"--resume: W&B cannot resume a run in {resolved.values['mode']} mode; use --mode online (or log in)"
        )
    project = resolved.get("project")
    earlier = [r for r in Ledger(default_path(resolved.get("dir"))).records(name=name) if r.mode == "online"]
    earlier = [r for r in earlier if project is None or r.project == project]
    if not earlier:
        raise UsageError(f"--resume: no earlier online run of task {name!r} in the ledger")
    last = max(earlier, key=lambda r: r.started_at or 0.0)
    return {"id": last.run_id, "resume": "must"}


def _compile_cell(shell: Any, cell: str) -> tuple[Any, Any]:
    """The cell as (body, last expression or None), compiled like IPython compiles a cell.

    Raises:
        SyntaxError: Before any run starts, so a cell that cannot run creates no run.
    """
    source = shell.transform_cell(cell)
    tree = shell.compile.ast_parse(source)
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    filename = shell.compile.cache(cell, shell.execution_count)
    body = shell.compile(tree, filename, "exec")
    return body, (shell.compile(last, filename, "eval") if last is not None else None)


def _execute(shell: Any, code: tuple[Any, Any]) -> Any:
    """Run a compiled cell in the notebook's namespace; return its last expression's value (None if it has none)."""
    __tracebackhide__ = True
    body, last = code
    exec(body, shell.user_global_ns, shell.user_ns)
    return eval(last, shell.user_global_ns, shell.user_ns) if last is not None else None


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics; loading again is harmless (the same magics are registered again)."""
    ipython.register_magics(WandbMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """End an open pipeline and remove the magics (nothing else was registered)."""
    WandbMagics.end_pipeline()
    manager = ipython.magics_manager
    manager.registry.pop(WandbMagics.__name__, None)
    for kind, names in WandbMagics.magics.items():
        for name in names:
            manager.magics[kind].pop(name, None)
