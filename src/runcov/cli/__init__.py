"""The ``runcov`` command line: run a service under runcov, and report on what it covered."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Optional, Sequence

from runcov import __version__
from runcov.cli._common import EXIT_USAGE, run_guarded

# Each module registers one subcommand with ``add_parser(subparsers)``, which sets ``func``
# (``func(args) -> exit code``) as the subparser's default.
_REPORT_COMMANDS = ("report", "export", "diff", "gate", "compare_tests", "agent")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with ``run`` when that subcommand is installed."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, Any]:
    """The parser and its subcommands (``choices``: name -> subparser)."""
    parser = argparse.ArgumentParser(
        prog="runcov",
        description="Production runtime coverage: run services under runcov, and query the "
                    "collector for reports, exports, diffs and CI gates.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"runcov {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    try:
        run = importlib.import_module("runcov.cli.run")
    except ModuleNotFoundError as exc:
        if exc.name != "runcov.cli.run":
            raise
    else:
        run.add_parser(sub)
    for name in _REPORT_COMMANDS:
        importlib.import_module(f"runcov.cli.{name}").add_parser(sub)
    return parser, sub


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``runcov`` console script; returns the exit code."""
    parser, sub = _build()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Said by the subcommand's parser: its usage is the one that lists its options. (The
        # subcommand is the first word naming one: ``run`` keeps its command in ``command``.)
        words = sys.argv[1:] if argv is None else list(argv)
        name = next((word for word in words if word in sub.choices), None)
        command = parser if name is None else sub.choices[name]
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # ``run`` owns its own exit code (the child's); report commands map errors to codes.
    result = func(args) if args.command == "run" else run_guarded(func, args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
