"""The ``wandbflow`` command line: a thin adapter over the Python API.

Each subcommand is a pair of functions, one declaring its arguments and one running it (returning the exit status),
registered in :data:`COMMANDS`. Handlers import what they use, so ``wandbflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from wandbflow import __version__
from wandbflow.errors import ConfigError, WandbflowError

#: The columns ``wandbflow runs`` prints as a table.
RUNS_COLUMNS = ["run_id", "state", "exit_code", "project", "group", "job_type", "mode", "started", "duration", "dir"]


class Command(NamedTuple):
    """A subcommand: its one-line help, the function declaring its arguments and the one running it."""

    help: str
    declare: Callable[[argparse.ArgumentParser], None]
    handle: Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _declare_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="only runs of this project")
    parser.add_argument(
        "--state", help="only runs in this state (running, finished, failed, interrupted, crashed, pruned)"
    )
    parser.add_argument("--sweep", dest="sweep_id", metavar="ID", help="only the trials of this sweep")
    parser.add_argument(
        "--limit", type=_positive_int, default=50, help="at most this many runs, newest first (default 50)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per run and line instead of a table")


def _runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wandbflow.ledger import Ledger, default_path

    ledger = Ledger(default_path())
    if not ledger.path.exists():  # reading must not create a ledger where there was none
        print(f"no ledger at {ledger.path}", file=sys.stderr)
        return 0
    filters = {key: value for key in ("project", "state", "sweep_id") if (value := getattr(args, key)) is not None}
    if args.json:
        for record in ledger.records(**filters)[: args.limit]:
            print(json.dumps(asdict(record), default=str))
        return 0
    table = ledger.runs(**filters).head(args.limit).copy()
    if table.empty:
        print(f"no runs in {ledger.path} match the filters" if filters else f"no runs recorded in {ledger.path}")
        return 0
    table["started"] = [_local_time(t) for t in table["started_at"]]
    table["duration"] = table["duration"].round(1)
    shown = table[RUNS_COLUMNS].astype(object)
    print(shown.where(shown.notna(), "-").to_string(index=False))
    return 0


def _local_time(seconds: float) -> str | None:
    return None if math.isnan(seconds) else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _declare_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="wandbflow-demo", help="where the demo's runs and ledger go")


def _demo(args: argparse.Namespace) -> int:
    from wandbflow.demo import run_demo

    return run_demo(args.dir)


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["local", "wandb"],
        help="local (Optuna) or wandb (W&B's server); default: wandb when runs go online, else local",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="where local sweeps live: an RDB URL (postgresql://...) or an SQLite file "
        "(default: $WANDBFLOW_SWEEP_STORAGE, else sweeps.db beside the ledger)",
    )


def _declare_sweep(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, command in SWEEP_COMMANDS.items():
        command.declare(actions.add_parser(name, help=command.help, description=command.help))


def _sweep(args: argparse.Namespace) -> int:
    return SWEEP_COMMANDS[args.action].handle(args)


def _declare_sweep_create(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.yaml", help="a W&B sweep config")
    _engine_options(parser)
    parser.add_argument("--project", help="the W&B project of the trials (default: the config's)")
    parser.add_argument("--entity", help="the W&B entity of the trials (default: the config's)")


def _sweep_create(args: argparse.Namespace) -> int:
    from wandbflow.sweeps import load_config, sweep

    created = sweep(
        load_config(args.config), engine=args.engine, storage=args.storage, project=args.project, entity=args.entity
    )
    print(created.id)
    return 0


def _declare_agent(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_id", metavar="SWEEP_ID")
    trial = parser.add_mutually_exclusive_group(required=True)
    trial.add_argument(
        "--function",
        metavar="MODULE:FUNCTION",
        help="call this function once per trial (importable from the working directory)",
    )
    trial.add_argument("--notebook", metavar="NOTEBOOK", help="execute this notebook once per trial (papermill)")
    _trial_options(parser)


def _trial_options(parser: argparse.ArgumentParser) -> None:
    """The options of commands that run a sweep's trials here (``agent``, ``sweep run``), declared once."""
    parser.add_argument("--count", type=_positive_int, help="the most trials to run here (default: until done)")
    parser.add_argument("--parallel", type=_positive_int, default=1, help="notebook trials at once (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds after which a notebook trial is stopped")
    _engine_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _agent(args: argparse.Namespace) -> int:
    from collections import Counter

    from wandbflow.sweeps import agent, load

    target = load(args.sweep_id, engine=args.engine, storage=args.storage)
    if args.notebook:
        before = len(target.records())
        _sweep_notebook(args.notebook, target, args)
        ran = len(target.records()) - before
    else:
        ran = agent(target, _import_function(args.function), count=args.count, progress=not args.no_progress)
    states = Counter(trial.state for trial in target.records())
    tally = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    print(f"sweep {target.id}: {ran} trials run by this agent; all trials: {tally}")
    return 0


def _sweep_notebook(notebook: str, target: Any, args: argparse.Namespace) -> None:
    from wandbflow.notebook_sweep import sweep_notebook

    sweep_notebook(
        notebook,
        target,
        count=args.count,
        parallel=args.parallel,
        timeout=args.timeout,
        progress=not args.no_progress,
    )


def _declare_sweep_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK", help="the trial notebook (a cell tagged 'parameters')")
    parser.add_argument("--config", required=True, metavar="CONFIG.yaml", help="a W&B sweep config")
    _trial_options(parser)


def _sweep_run(args: argparse.Namespace) -> int:
    from wandbflow.sweeps import load_config, sweep

    target = sweep(load_config(args.config), engine=args.engine or "local", storage=args.storage)
    print(f"sweep {target.id}")
    _sweep_notebook(args.notebook, target, args)
    trials = target.trials()
    print(trials[["trial", "state", "value", "params"]].to_string(index=False) if len(trials) else "no trials ran")
    best = target.best()
    if best is not None:
        print(f"best: trial {best.number} value={best.value} params={best.params}")
    return 0


def _declare_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", metavar="NOTEBOOK")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a parameter; the value is read as YAML (0.01 is a float, true a bool)",
    )
    parser.add_argument("--output", help="where the executed notebook goes")
    parser.add_argument("--timeout", type=float, help="seconds after which the kernel is stopped")
    parser.add_argument("--project", help="the W&B project of the run")
    parser.add_argument("--group", help="the W&B group of the run")
    parser.add_argument("--no-strict", action="store_true", help="allow parameters the notebook does not define")


def _run(args: argparse.Namespace) -> int:
    import yaml

    from wandbflow.notebooks import run_notebook

    parameters = {name: yaml.safe_load(value) for name, value in args.parameter}
    settings = {k: v for k, v in (("project", args.project), ("group", args.group)) if v is not None}
    result = run_notebook(
        args.notebook,
        parameters,
        output=args.output,
        timeout=args.timeout,
        strict=not args.no_strict,
        **settings,
    )
    metrics = ", ".join(f"{k}={v}" for k, v in result.summary.items())
    print(f"run {result.run_id} {result.state} in {result.duration:.1f}s: {metrics or 'no summary'}")
    print(f"executed notebook: {result.output}")
    return 0


def _import_function(spec: str) -> Callable[[], Any]:
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise ConfigError(f"must be MODULE:FUNCTION (got {spec!r})", key="--function")
    if os.getcwd() not in sys.path:  # as `python -m` would
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
        for part in name.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"cannot import {spec}: {error}", key="--function") from error
    if not callable(found):
        raise ConfigError(f"{spec} is not callable", key="--function")
    return found  # type: ignore[no-any-return]


def _declare_sync(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", dest="sweep_id", metavar="ID", help="only the trials of this sweep")
    parser.add_argument("--session", metavar="ID", help="only the runs of this session")
    parser.add_argument("--dry-run", action="store_true", help="print the wandb sync command instead of running it")


def _sync(args: argparse.Namespace) -> int:
    from wandbflow.ledger import Ledger, default_path

    ledger = Ledger(default_path())
    if not ledger.path.exists():
        print(f"no ledger at {ledger.path}", file=sys.stderr)
        return 0
    filters = {key: value for key in ("sweep_id", "session") if (value := getattr(args, key)) is not None}
    records = reversed(ledger.records(mode="offline", **filters))  # oldest first
    dirs = [r.dir for r in records if r.dir and os.path.isdir(r.dir)]
    if not dirs:
        print("no offline runs to sync")
        return 0
    command = [_wandb_executable(), "sync", *dirs]
    print(shlex.join(command))
    if args.dry_run:
        return 0
    return subprocess.run(command, check=False).returncode


def _wandb_executable() -> str:
    """The ``wandb`` command: the one on PATH, else the one installed beside this Python."""
    return shutil.which("wandb") or os.path.join(os.path.dirname(sys.executable), "wandb")


# Every subcommand, in the order ``--help`` lists them. Add one with a line here.
COMMANDS: dict[str, Command] = {
    "runs": Command("print the runs the ledger knows, newest first", _declare_runs, _runs),
    "run": Command("execute a notebook as one run (wandbflow run NB -p lr 0.01)", _declare_run, _run),
    "sweep": Command("create sweeps, or create one and run a notebook's trials", _declare_sweep, _sweep),
    "agent": Command("serve a sweep: run its trials here until --count or the sweep is done", _declare_agent, _agent),
    "sync": Command("upload the offline runs the ledger knows with wandb sync", _declare_sync, _sync),
    "demo": Command("run the demo on the embedded default (offline W&B, no account)", _declare_demo, _demo),
}

# The actions of ``wandbflow sweep``.
SWEEP_COMMANDS: dict[str, Command] = {
    "create": Command("validate a sweep config, create the sweep, print its id", _declare_sweep_create, _sweep_create),
    "run": Command("create a sweep and run a notebook as its trials", _declare_sweep_run, _sweep_run),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="wandbflow", description="W&B tracking for notebook work.")
    parser.add_argument("--version", action="version", version=f"wandbflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.declare(sub)
        sub.set_defaults(handle=command.handle)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: The arguments after the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when wandbflow reports an error (argparse exits with 2 on bad usage).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        status: int = args.handle(args)
    except WandbflowError as error:
        print(f"wandbflow: error: {error}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
