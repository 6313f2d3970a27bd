"""The collector's one configuration object: arguments, then environment, then defaults."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from runcov_collector import limits
from runcov_collector.auth import token_problem
from runcov_collector.store.database import (
    DEFAULT_MIGRATION_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_MIGRATION_TIMEOUT,
    MAX_TIMEOUT,
)

DEFAULT_STORE_URL = "sqlite:///runcov-collector.db"
DEFAULT_RETENTION_HOURS = 24 * 90
"""Hourly buckets are kept 90 days by default; cumulative coverage is never expired."""
MAX_RETENTION_HOURS = 100 * 365 * 24
"""100 years: longer is "forever", which 0 says. (An unbounded value would make the sweep's
cutoff, ``now - hours * 3600``, infinite, and every sweep fail.)"""
MAX_BODY_BYTES_LIMIT = 1 << 30
"""Largest ``max_body_bytes``, 1 GiB: gRPC takes its message limit as a C int (2 GiB - 1, a
larger one fails the gRPC server's creation), and protobuf cannot parse messages of 2 GiB."""
MAX_RETRY_AFTER_SECONDS = 3600
"""Largest ``retry_after_seconds``, as the agent's export timeout: a client told to wait longer
has given up long before."""
MAX_INTERVAL_SECONDS = 24 * 3600
"""Largest ``retention_interval_seconds`` and ``metrics_cache_seconds`` (a day): waits longer
than ``threading.TIMEOUT_MAX`` overflow, and a sweep less often than daily leaves hourly data
past the retention for long."""

ENV_PREFIX = "RUNCOV_COLLECTOR_"


class ConfigError(ValueError):
    """The configuration is invalid or incomplete (the server refuses to start)."""


class ListenError(ConfigError):
    """A listener cannot listen where the configuration says: the port is in use, the host is
    not an address of this machine or does not resolve, the port needs privileges."""


@dataclass
class Config:
    """Everything ``runcov-collector serve`` needs. ``create_app``/``serve`` take one of these.

    Ports may be 0 (pick a free port; the running server reports the actual one) or -1 for the
    gRPC port to turn the gRPC receiver off.
    """

    host: str = "127.0.0.1"
    http_port: int = 4318
    grpc_port: int = 4317
    store_url: str = DEFAULT_STORE_URL
    store_timeout_seconds: float = DEFAULT_TIMEOUT
    """How long one store transaction of a request may take in all (waiting for a connection
    or a lock, connecting, its statements) before the request answers 503 / UNAVAILABLE: below
    the 10 s after which OTLP exporters give up. The retention sweep runs in batches, each
    bounded by it; the schema migration at start has its own limit. At most ``MAX_TIMEOUT``
    (an hour)."""
    migration_timeout_seconds: float = DEFAULT_MIGRATION_TIMEOUT
    """How long the schema migration at start may take in all (0: no limit): long, as it may
    rewrite a large database, but bounded, so that a collector starting against a database
    that does not answer exits with a message instead of hanging. At most
    ``MAX_MIGRATION_TIMEOUT`` (7 days)."""
    ingest_token: str | None = None
    query_token: str | None = None
    no_auth: bool = False
    max_body_bytes: int = limits.MAX_BODY_BYTES
    max_inflight_ingests: int = limits.MAX_INFLIGHT_INGESTS
    retry_after_seconds: int = limits.RETRY_AFTER_SECONDS
    header_timeout_seconds: float = limits.HEADER_TIMEOUT_SECONDS
    """An HTTP connection that has not sent a complete request line and headers this long after
    it opened (or after its previous response) is closed: a client that sends nothing, or a
    header line now and then, holds no connection for long. At most
    ``limits.MAX_HEADER_TIMEOUT_SECONDS``."""
    max_connections: int = limits.MAX_CONNECTIONS
    """Open HTTP connections at most; one opened past it is answered 503 and closed. Keep it
    below the process's open files limit (``ulimit -n``)."""
    store_threads: int = 4
    retention_hours: float = DEFAULT_RETENTION_HOURS
    """Hourly data older than this is expired; 0 keeps it forever. At most
    ``MAX_RETENTION_HOURS``."""
    retention_interval_seconds: float = 600.0
    metrics_cache_seconds: float = 15.0
    """How long the per-release coverage gauges of ``/metrics`` are reused before re-querying."""
    metrics_max_releases: int = limits.METRICS_MAX_RELEASES
    """How many releases have per-release series on ``/metrics``: those seen last (latest span
    time; releases that sent only agent metrics last). The others are counted by
    ``runcov_collector_release_series_omitted``."""
    source_dir: str | None = None
    """Passed to the dashboard: where to read source files for annotated views."""
    trace_url_template: str | None = None
    """Passed to the dashboard: e.g. ``https://tracing.example/trace/{trace_id}``."""
    log_level: str = "INFO"
    """The ``logging`` level ``runcov-collector serve`` logs at (a name, any case); code that
    runs a ``Collector`` configures logging itself."""
    extra: dict[str, Any] = field(default_factory=dict)

    environment: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The values ``from_sources`` took from ``RUNCOV_COLLECTOR_*`` variables, by field: an error
    about a value still the environment's says that it came from there (``setting_name``)."""

    def validate(self) -> Config:
        """Check the values; raise ``ConfigError`` with a precise message, which names each
        value by its option and variable (``setting_name``). Returns ``self``.

        Numbers are bounded above too: a value past what the waits it flows into can take
        (``threading``'s, libpq's, SQLite's, gRPC's) would otherwise be accepted here and fail
        later, in every request or every retention sweep, instead of at start.
        """
        named = self._named
        if self.no_auth and (self.ingest_token or self.query_token):
            given = [named(name) for name in ("ingest_token", "query_token") if getattr(self, name)]
            raise ConfigError(
                f"{named('no_auth')} cannot be combined with {' and '.join(given)}: require "
                "tokens or run without them, not both"
            )
        if not self.no_auth and not (self.ingest_token and self.query_token):
            raise ConfigError(
                "refusing to start without authentication: set --ingest-token and --query-token "
                f"(or {ENV_PREFIX}INGEST_TOKEN / {ENV_PREFIX}QUERY_TOKEN), or pass --no-auth "
                f"({ENV_PREFIX}NO_AUTH=1) explicitly"
            )
        for name in ("ingest_token", "query_token"):
            problem = token_problem(getattr(self, name) or "")
            if problem is not None:  # the token itself is never printed
                raise ConfigError(f"{named(name)} {problem}")
        self._check("http_port", _whole(self.http_port, 0, 65535), "a port number from 0 to 65535")
        self._check(
            "grpc_port",
            _whole(self.grpc_port, -1, 65535),
            "-1 (off) or a port number from 0 to 65535",
        )
        if self.grpc_port > 0 and self.grpc_port == self.http_port:
            raise ConfigError(
                f"{named('http_port')} and {named('grpc_port')} are both {self.http_port}: the "
                "HTTP and gRPC listeners need a port each (--grpc-port -1 turns gRPC off)"
            )
        self._check(
            "max_body_bytes",
            _whole(self.max_body_bytes, 1, MAX_BODY_BYTES_LIMIT),
            f"from 1 to {MAX_BODY_BYTES_LIMIT} (1 GiB)",
        )
        for name in ("max_inflight_ingests", "store_threads"):
            self._check(name, _whole(getattr(self, name), 1, None), "at least 1")
        self._check(
            "retry_after_seconds",
            _whole(self.retry_after_seconds, 0, MAX_RETRY_AFTER_SECONDS),
            f"a whole number of seconds from 0 to {MAX_RETRY_AFTER_SECONDS}",
        )
        self._check(
            "header_timeout_seconds",
            _number(self.header_timeout_seconds, 0, limits.MAX_HEADER_TIMEOUT_SECONDS,
                    above=True),
            f"> 0 seconds and at most {limits.MAX_HEADER_TIMEOUT_SECONDS:g}",
        )
        self._check("max_connections", _whole(self.max_connections, 1, None), "at least 1")
        self._check(
            "metrics_max_releases", _whole(self.metrics_max_releases, 0, None), "at least 0"
        )
        self._check(
            "retention_hours",
            _number(self.retention_hours, 0, MAX_RETENTION_HOURS),
            f">= 0 hours (0: keep everything) and at most {MAX_RETENTION_HOURS} (100 years)",
        )
        self._check(
            "retention_interval_seconds",
            _number(self.retention_interval_seconds, 0, MAX_INTERVAL_SECONDS, above=True),
            f"> 0 seconds and at most {MAX_INTERVAL_SECONDS}",
        )
        self._check(
            "metrics_cache_seconds",
            _number(self.metrics_cache_seconds, 0, MAX_INTERVAL_SECONDS),
            f">= 0 seconds and at most {MAX_INTERVAL_SECONDS}",
        )
        self._check(
            "store_timeout_seconds",
            _number(self.store_timeout_seconds, 0, MAX_TIMEOUT, above=True),
            f"> 0 seconds and at most {MAX_TIMEOUT:g}",
        )
        self._check(
            "migration_timeout_seconds",
            _number(self.migration_timeout_seconds, 0, MAX_MIGRATION_TIMEOUT),
            f">= 0 seconds (0: no limit) and at most {MAX_MIGRATION_TIMEOUT:g} (7 days)",
        )
        if not self.store_url:
            raise ConfigError(f"{named('store_url')} is empty")
        if self.source_dir and not os.path.isdir(self.source_dir):
            raise ConfigError(f"{named('source_dir')} {self.source_dir!r} is not a directory")
        self._check(
            "log_level",
            isinstance(self.log_level, str) and self.log_level.strip().upper() in LOG_LEVELS,
            f"one of {', '.join(LOG_LEVELS)}",
        )
        return self

    @property
    def log_level_number(self) -> int:
        """``log_level`` as a ``logging`` level (``validate`` checked the name)."""
        return int(getattr(logging, self.log_level.strip().upper()))

    def _named(self, name: str) -> str:
        """``setting_name`` of field ``name``, saying whether its value is the environment's."""
        given = self.environment.get(name, _UNSET)
        value = getattr(self, name)
        return setting_name(name, from_environment=given is value or given == value)

    def _check(self, name: str, ok: bool, requirement: str) -> None:
        """Refuse field ``name`` unless ``ok``: "<its name> must be <requirement>, not <value>"."""
        if not ok:
            value = _show(getattr(self, name))
            raise ConfigError(f"{self._named(name)} must be {requirement}, not {value}")


LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")

_UNSET = object()

_OPTIONS: dict[str, tuple[str, str]] = {
    "host": ("--host", "HOST"),
    "http_port": ("--http-port", "HTTP_PORT"),
    "grpc_port": ("--grpc-port", "GRPC_PORT"),
    "store_url": ("--store", "STORE"),
    "store_timeout_seconds": ("--store-timeout", "STORE_TIMEOUT"),
    "migration_timeout_seconds": ("--migration-timeout", "MIGRATION_TIMEOUT"),
    "ingest_token": ("--ingest-token", "INGEST_TOKEN"),
    "query_token": ("--query-token", "QUERY_TOKEN"),
    "no_auth": ("--no-auth", "NO_AUTH"),
    "max_body_bytes": ("--max-body-bytes", "MAX_BODY_BYTES"),
    "max_inflight_ingests": ("--max-inflight-ingests", "MAX_INFLIGHT_INGESTS"),
    "header_timeout_seconds": ("--header-timeout", "HEADER_TIMEOUT"),
    "max_connections": ("--max-connections", "MAX_CONNECTIONS"),
    "retention_hours": ("--retention-hours", "RETENTION_HOURS"),
    "metrics_max_releases": ("--metrics-max-releases", "METRICS_MAX_RELEASES"),
    "source_dir": ("--source-dir", "SOURCE_DIR"),
    "trace_url_template": ("--trace-url-template", "TRACE_URL_TEMPLATE"),
    "log_level": ("--log-level", "LOG_LEVEL"),
}
"""The fields that ``runcov-collector serve`` options set: each one's option and environment
variable (after ``ENV_PREFIX``). The other fields are set by code only."""

OPTION_FIELDS = tuple(_OPTIONS)
"""Fields with an option of ``runcov-collector serve`` (whose argparse ``dest`` is the field)."""


def setting_name(name: str, from_environment: bool = False) -> str:
    """How a message names the value of field ``name``: by its option and variable,
    ``--http-port (RUNCOV_COLLECTOR_HTTP_PORT)``, or, for a value taken from the environment,
    ``RUNCOV_COLLECTOR_HTTP_PORT in the environment (--http-port)``; a field only code sets by
    its own name."""
    if name not in _OPTIONS:
        return name
    option, variable = _OPTIONS[name]
    if from_environment:
        return f"{ENV_PREFIX}{variable} in the environment ({option})"
    return f"{option} ({ENV_PREFIX}{variable})"


def _whole(value: Any, low: int, high: int | None) -> bool:
    """An integer (not a bool) from ``low`` to ``high`` (None: no bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return low <= value and (high is None or value <= high)


def _number(value: Any, low: float, high: float, above: bool = False) -> bool:
    """A finite number from ``low`` (excluded when ``above``) to ``high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value > low if above else value >= low) and value <= high


def _show(value: Any) -> str:
    """A refused value as a message shows it: numbers as typed (``3601``, ``1e+10``), text
    quoted."""
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return repr(value) if isinstance(value, str) else str(value)


_KINDS = {
    "bool": "1, true, yes or on (0, false, no, off or empty: off)",
    "int": "an integer",
    "float": "a number",
}


def _convert(name: str, raw: str, kind: str) -> Any:
    text = raw.strip()
    try:
        if kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError as exc:
        raise ConfigError(
            f"{setting_name(name, from_environment=True)} must be {_KINDS[kind]}, not {raw!r}"
        ) from exc
    return raw


def from_sources(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build a ``Config``: explicit ``overrides`` (non-None values) > environment > defaults.

    The values taken from the environment are kept in ``Config.environment``, so that an
    error about one says where it came from.
    """
    environ = os.environ if environ is None else environ
    types = {f.name: f.type for f in fields(Config)}
    from_environment: dict[str, Any] = {}
    for name, (_, suffix) in _OPTIONS.items():
        raw = environ.get(ENV_PREFIX + suffix)
        if raw is not None:
            base = str(types[name]).split("|")[0].strip()
            from_environment[name] = _convert(name, raw, base)
    values = dict(from_environment)
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"unknown option {name}")
        if value is not None:
            values[name] = value
            from_environment.pop(name, None)
    return replace(Config(), **values, environment=from_environment)
