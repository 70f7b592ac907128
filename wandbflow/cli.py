"""The ``wandbflow`` command line: a thin adapter over the Python API.

Each subcommand is a pair of functions, one declaring its arguments and one running it (returning the exit status),
registered in :data:`COMMANDS`. Handlers import what they use, so ``wandbflow --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

from wandbflow import __version__
from wandbflow.errors import WandbflowError

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


# Every subcommand, in the order ``--help`` lists them. Add one with a line here.
COMMANDS: dict[str, Command] = {
    "runs": Command("print the runs the ledger knows, newest first", _declare_runs, _runs),
    "demo": Command("run the demo on the embedded default (offline W&B, no account)", _declare_demo, _demo),
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
