"""The ``runcov-collector`` command line: ``runcov-collector serve [options]``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from runcov_collector import __version__
from runcov_collector.app import Collector, redact_secrets, serve
from runcov_collector.config import (
    LOG_LEVELS,
    OPTION_FIELDS,
    Config,
    ConfigError,
    from_sources,
    setting_name,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each option's ``dest`` is the ``Config`` field it sets
    (``config.OPTION_FIELDS``), and no option has a default of its own: an option not given
    leaves the field to the environment, then to ``Config``'s default."""
    parser = argparse.ArgumentParser(
        prog="runcov-collector",
        description="Receive runcov coverage over OTLP and serve it per release.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("serve", help="run the collector (OTLP/HTTP, OTLP/gRPC, query API)")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--http-port", type=int, help="OTLP/HTTP + query API port (default 4318)")
    s.add_argument("--grpc-port", type=int, help="OTLP/gRPC port (default 4317; -1 disables)")
    s.add_argument(
        "--store",
        dest="store_url",
        help="store URL: sqlite:///path.db (default sqlite:///runcov-collector.db) or "
        "postgresql://user:pass@host/db",
    )
    s.add_argument(
        "--store-timeout",
        dest="store_timeout_seconds",
        type=float,
        help="seconds a request waits for the store before answering 503 (default 5, at most 3600)",
    )
    s.add_argument(
        "--migration-timeout",
        dest="migration_timeout_seconds",
        type=float,
        help="seconds the schema migration at start may take before the collector exits "
        "(default 600; 0 = no limit; at most 604800, 7 days)",
    )
    auth = s.add_argument_group("authentication")
    auth.add_argument(
        "--no-auth", action="store_true", default=None, help="accept requests without tokens"
    )
    auth.add_argument("--ingest-token", help="bearer token required to send OTLP data")
    auth.add_argument("--query-token", help="bearer token required for the query API/dashboard")
    s.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest request body after decompression (default 16 MiB, at most 1 GiB)",
    )
    s.add_argument(
        "--max-inflight-ingests",
        type=int,
        help="concurrent store ingests before answering 429 (default 16)",
    )
    s.add_argument(
        "--header-timeout",
        dest="header_timeout_seconds",
        type=float,
        help="seconds an HTTP connection may take to send its request line and headers before "
        "it is closed (default 10, at most 3600)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        help="open connections of each listener at most; more are refused (default: half of "
        "what the open files limit leaves after 256)",
    )
    s.add_argument(
        "--retention-hours",
        type=float,
        help="keep hourly buckets this long (default 2160; 0 = forever; at most 876000)",
    )
    s.add_argument(
        "--metrics-max-releases",
        type=int,
        help="releases with per-release series on /metrics, those seen last (default 500)",
    )
    s.add_argument("--source-dir", help="source checkout the dashboard annotates")
    s.add_argument(
        "--trace-url-template",
        help="link from a first-hit trace id to a tracing UI, e.g. https://t.example/{trace_id}",
    )
    s.add_argument(
        "--log-level", help=f"logging level: {', '.join(LOG_LEVELS)} (default INFO)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Arguments > ``RUNCOV_COLLECTOR_*`` environment > defaults, validated: a bad value raises
    ``ConfigError`` naming its option and variable (and whether it came from the environment)."""
    return from_sources({name: getattr(args, name) for name in OPTION_FIELDS}).validate()


def log_level(name: str) -> int:
    """The ``logging`` level called ``name`` (any case); ``ConfigError`` for another word."""
    level = logging.getLevelName(name.strip().upper())
    if not isinstance(level, int) or name.strip().upper() not in LOG_LEVELS:
        raise ConfigError(
            f"{setting_name('log_level')} must be one of {', '.join(LOG_LEVELS)}, not {name!r}"
        )
    return level


def _announce(collector: Collector) -> None:
    print(collector.listening(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``runcov-collector`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"runcov-collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level_number, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(config, on_ready=_announce)
    except ValueError as exc:  # a store URL the store cannot open, a port in use (ListenError)
        # The store's and libpq's messages may quote the URL, or the part they cannot parse.
        print(f"runcov-collector: {redact_secrets(str(exc), config.store_url)}", file=sys.stderr)
        return 2
    except Exception as exc:  # the database is unreachable...
        message = redact_secrets(f"{type(exc).__name__}: {exc}", config.store_url)
        print(f"runcov-collector: cannot serve: {message}", file=sys.stderr)
        return 1
    return 0
