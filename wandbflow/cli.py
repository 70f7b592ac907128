"""The ``wandbflow`` command line: a thin adapter over the Python API.

Each subcommand is one function taking the parsed arguments and returning an exit status, registered in
:data:`COMMANDS` with the function that declares its arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from wandbflow import __version__
from wandbflow.errors import WandbflowError

Handler = Callable[[argparse.Namespace], int]
Declare = Callable[[argparse.ArgumentParser], None]


def _declare_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="only runs of this project")
    parser.add_argument("--state", help="only runs in this state (running, finished, failed, interrupted, crashed)")
    parser.add_argument("--sweep", dest="sweep_id", help="only trials of this sweep")
    parser.add_argument("--limit", type=int, default=50, help="at most this many runs, newest first (default 50)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")


def _runs(args: argparse.Namespace) -> int:
    from wandbflow.ledger import Ledger, default_path

    filters = {k: v for k in ("project", "state", "sweep_id") if (v := getattr(args, k)) is not None}
    ledger = Ledger(default_path())
    records = ledger.records(**filters)[: args.limit]
    if args.json:
        from dataclasses import asdict

        for record in records:
            print(json.dumps(asdict(record), default=str, sort_keys=True))
        return 0
    if not records:
        print(f"no runs recorded in {ledger.path}")
        return 0
    table = ledger.runs(**filters).head(args.limit)
    columns = ["run_id", "state", "exit_code", "project", "group", "job_type", "mode", "duration", "dir"]
    table["duration"] = table["duration"].round(1)
    print(table[columns].to_string(index=False))
    return 0


def _declare_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="wandbflow-demo", help="where the demo's runs and ledger go")


def _demo(args: argparse.Namespace) -> int:
    from wandbflow.demo import run_demo

    return run_demo(args.dir)


COMMANDS: dict[str, tuple[str, Declare, Handler]] = {
    "runs": ("print the runs the ledger knows", _declare_runs, _runs),
    "demo": ("run the demo on the embedded default (offline W&B, no account)", _declare_demo, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="wandbflow", description="W&B tracking for notebook work.")
    parser.add_argument("--version", action="version", version=f"wandbflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, declare, handler) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        declare(sub)
        sub.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        status: int = args.handler(args)
    except WandbflowError as error:
        print(f"wandbflow: error: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
