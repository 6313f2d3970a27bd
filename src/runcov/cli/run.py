"""``runcov run [options] -- command ...``: run a service with runcov started in it."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("runcov")

__all__ = ["BOOTSTRAP_DIR", "add_parser", "build_environment", "main"]

#: Directory put first on ``PYTHONPATH``: its ``sitecustomize`` starts runcov in every Python
#: process of the command (and then runs the ``sitecustomize`` it shadows).
BOOTSTRAP_DIR = str(Path(__file__).resolve().parent / "_bootstrap")

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127

# (option, Config field, help); list options may be repeated.
_LIST_OPTIONS = (
    ("--source", "source", "source root to measure (repeatable; default: current directory)"),
    ("--endpoint", "endpoints", 'endpoint selector, e.g. "POST /checkout@0.5" (repeatable)'),
    ("--redact", "redact", "regex whose matches are replaced by [REDACTED] (repeatable)"),
    ("--exclude", "exclude", "glob of files never reported (repeatable)"),
)
_VALUE_OPTIONS = (
    ("--sample-rate", "sample_rate",
     "probability a selected request is sampled (0..1); with saturation on (the default) an "
     "endpoint that stops finding new arcs is sampled less"),
    ("--mode", "mode", "exact or census"),
    ("--max-per-second", "max_per_second", "cap of sampled requests per second per process"),
    ("--service-name", "service_name", "service.name"),
    ("--service-version", "service_version", "service.version (the release)"),
    ("--environment", "environment", "deployment.environment.name"),
    ("--role", "role", "baseline, canary, shadow or game-day"),
    ("--exporter-endpoint", "exporter_endpoint", "OTLP endpoint (base URL)"),
    ("--exporter-protocol", "exporter_protocol", "http/protobuf or grpc"),
    ("--queue-size", "queue_size", "requests waiting for export before drops"),
    ("--metrics-interval", "metrics_interval", "seconds between metric exports (0: off)"),
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a command with runcov started in its Python processes",
        description="Run COMMAND with runcov started in every Python process it starts "
        "(through a sitecustomize on PYTHONPATH). Options become RUNCOV_* variables; "
        "unset ones keep the environment's values.",
        usage="runcov run [options] -- COMMAND [ARGS ...]",
    )
    for flag, field, text in _LIST_OPTIONS:
        parser.add_argument(flag, dest=field, action="append", default=None, help=text)
    for flag, field, text in _VALUE_OPTIONS:
        parser.add_argument(flag, dest=field, default=None, help=text)
    parser.add_argument(
        "--saturation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample more while endpoints find new arcs, less once they stop",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    parser.set_defaults(func=main)
    return parser


def build_environment(
    args: argparse.Namespace, environ: Optional[dict[str, str]] = None
) -> dict[str, str]:
    """The command's environment: ``RUNCOV_*`` from the options and the bootstrap path.

    Raises :class:`~runcov.errors.ConfigError` when the resulting configuration is invalid,
    naming the option as given on the command line (``--sample-rate``) when it came from one.
    """
    from runcov.config import load_config
    from runcov.errors import ConfigError

    env = dict(os.environ if environ is None else environ)
    given: dict[str, str] = {}  # RUNCOV_* variable -> the option that set it
    for flag, field, _ in _LIST_OPTIONS:
        values = getattr(args, field, None)
        if values:
            if field == "source":
                values = [os.path.abspath(v) for v in values]
            env["RUNCOV_" + field.upper()] = ",".join(values)
            given["RUNCOV_" + field.upper()] = flag
    for flag, field, _ in _VALUE_OPTIONS:
        value = getattr(args, field, None)
        if value is not None:
            env["RUNCOV_" + field.upper()] = str(value)
            given["RUNCOV_" + field.upper()] = flag
    if getattr(args, "saturation", None) is not None:
        env["RUNCOV_SATURATION"] = "true" if args.saturation else "false"
    if not env.get("RUNCOV_SOURCE"):
        # Fixed here: the command may change directory before Python starts.
        env["RUNCOV_SOURCE"] = os.getcwd()
    if not env.get("RUNCOV_ENABLED", "").strip():
        env["RUNCOV_ENABLED"] = "true"  # an explicit "false" stays: the kill switch
    try:
        load_config(environ=env)  # fail here, loudly, rather than in the service
    except ConfigError as exc:
        raise _as_option(exc, given, env) from None
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *parts])
    return env


def _as_option(exc: Exception, given: dict[str, str], env: dict[str, str]) -> Exception:
    """The configuration error in the terms of the command line.

    The agent reads the options as the ``RUNCOV_*`` variables they were turned into, and its
    errors name those (``RUNCOV_SAMPLE_RATE='abc': ...``): the option typed is named first,
    the variable after it.
    """
    from runcov.errors import ConfigError

    message = str(exc)
    for var, flag in given.items():
        if message.startswith(var + "="):
            return ConfigError(
                f"{flag} {message[len(var) + 1:]} (passed to the agent as {var}={env[var]!r})"
            )
    return exc


def main(args: argparse.Namespace) -> int:
    """Replace this process with the command, runcov bootstrapped into it."""
    from runcov.errors import ConfigError

    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("runcov run: no command (usage: runcov run [options] -- COMMAND)", file=sys.stderr)
        return EXIT_USAGE
    try:
        env = build_environment(args)
    except ConfigError as exc:
        print(f"runcov run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    executable = shutil.which(command[0], path=env.get("PATH"))
    if executable is None:
        print(f"runcov run: command not found: {command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(executable, command, env)
    return 0  # pragma: no cover - execve does not return
