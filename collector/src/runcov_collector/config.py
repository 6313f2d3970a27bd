"""The collector's one configuration object: arguments, then environment, then defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from runcov_collector import limits
from runcov_collector.auth import token_problem
from runcov_collector.store.database import DEFAULT_MIGRATION_TIMEOUT, DEFAULT_TIMEOUT

DEFAULT_STORE_URL = "sqlite:///runcov-collector.db"
DEFAULT_RETENTION_HOURS = 24 * 90
"""Hourly buckets are kept 90 days by default; cumulative coverage is never expired."""

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
    bounded by it; the schema migration at start has its own limit."""
    migration_timeout_seconds: float = DEFAULT_MIGRATION_TIMEOUT
    """How long the schema migration at start may take in all (0: no limit): long, as it may
    rewrite a large database, but bounded, so that a collector starting against a database
    that does not answer exits with a message instead of hanging."""
    ingest_token: str | None = None
    query_token: str | None = None
    no_auth: bool = False
    max_body_bytes: int = limits.MAX_BODY_BYTES
    max_inflight_ingests: int = limits.MAX_INFLIGHT_INGESTS
    retry_after_seconds: int = limits.RETRY_AFTER_SECONDS
    store_threads: int = 4
    retention_hours: float = DEFAULT_RETENTION_HOURS
    """Hourly data older than this is expired; 0 keeps it forever."""
    retention_interval_seconds: float = 600.0
    metrics_cache_seconds: float = 15.0
    """How long the per-release coverage gauges of ``/metrics`` are reused before re-querying."""
    source_dir: str | None = None
    """Passed to the dashboard: where to read source files for annotated views."""
    trace_url_template: str | None = None
    """Passed to the dashboard: e.g. ``https://tracing.example/trace/{trace_id}``."""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> Config:
        """Check the values; raise ``ConfigError`` with a precise message. Returns ``self``."""
        if self.no_auth and (self.ingest_token or self.query_token):
            given = [
                f"--{name.replace('_', '-')} ({ENV_PREFIX}{_ENV_FIELDS[name]})"
                for name in ("ingest_token", "query_token")
                if getattr(self, name)
            ]
            raise ConfigError(
                f"--no-auth ({ENV_PREFIX}NO_AUTH) cannot be combined with "
                f"{' and '.join(given)}: require tokens or run without them, not both"
            )
        if not self.no_auth and not (self.ingest_token and self.query_token):
            raise ConfigError(
                "refusing to start without authentication: set --ingest-token and --query-token "
                f"(or {ENV_PREFIX}INGEST_TOKEN / {ENV_PREFIX}QUERY_TOKEN), or pass --no-auth "
                f"({ENV_PREFIX}NO_AUTH=1) explicitly"
            )
        for name in ("ingest_token", "query_token"):
            problem = token_problem(getattr(self, name) or "")
            if problem is not None:
                raise ConfigError(
                    f"--{name.replace('_', '-')} ({ENV_PREFIX}{_ENV_FIELDS[name]}) {problem}"
                )
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            low = -1 if name == "grpc_port" else 0
            if not low <= port <= 65535:
                raise ConfigError(f"{name} {port} is not a port number")
        if self.grpc_port > 0 and self.grpc_port == self.http_port:
            raise ConfigError(
                f"--http-port and --grpc-port are both {self.http_port} ({ENV_PREFIX}HTTP_PORT, "
                f"{ENV_PREFIX}GRPC_PORT): the HTTP and gRPC listeners need a port each "
                "(--grpc-port -1 turns gRPC off)"
            )
        positives = ("max_body_bytes", "max_inflight_ingests", "store_threads")
        for name in positives:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not (math.isfinite(self.retention_hours) and self.retention_hours >= 0):
            raise ConfigError(
                f"retention_hours must be >= 0 and finite (0 keeps everything), "
                f"not {self.retention_hours}"
            )
        interval = self.retention_interval_seconds
        if not (math.isfinite(interval) and interval > 0):
            raise ConfigError(f"retention_interval_seconds must be > 0, not {interval}")
        timeout = self.store_timeout_seconds
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError(
                f"--store-timeout ({ENV_PREFIX}STORE_TIMEOUT) must be > 0 seconds, not {timeout}"
            )
        migration = self.migration_timeout_seconds
        if not (math.isfinite(migration) and migration >= 0):
            raise ConfigError(
                f"--migration-timeout ({ENV_PREFIX}MIGRATION_TIMEOUT) must be >= 0 seconds "
                f"(0: no limit), not {migration}"
            )
        if not self.store_url:
            raise ConfigError("store_url is empty")
        if self.source_dir and not os.path.isdir(self.source_dir):
            raise ConfigError(
                f"source_dir {self.source_dir!r} (--source-dir, {ENV_PREFIX}SOURCE_DIR) "
                "is not a directory"
            )
        return self


_ENV_FIELDS = {
    "host": "HOST",
    "http_port": "HTTP_PORT",
    "grpc_port": "GRPC_PORT",
    "store_url": "STORE",
    "store_timeout_seconds": "STORE_TIMEOUT",
    "migration_timeout_seconds": "MIGRATION_TIMEOUT",
    "ingest_token": "INGEST_TOKEN",
    "query_token": "QUERY_TOKEN",
    "no_auth": "NO_AUTH",
    "max_body_bytes": "MAX_BODY_BYTES",
    "retention_hours": "RETENTION_HOURS",
    "source_dir": "SOURCE_DIR",
    "trace_url_template": "TRACE_URL_TEMPLATE",
}


def _convert(name: str, raw: str, kind: Any) -> Any:
    text = raw.strip()
    try:
        if kind is bool or kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(text)
        if kind in (float, "float"):
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{_ENV_FIELDS[name]}={raw!r} is not a valid {kind}") from exc
    return raw


def from_sources(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Config:
    """Build a ``Config``: explicit ``overrides`` (non-None values) > environment > defaults."""
    environ = os.environ if environ is None else environ
    types = {f.name: f.type for f in fields(Config)}
    values: dict[str, Any] = {}
    for name, suffix in _ENV_FIELDS.items():
        raw = environ.get(ENV_PREFIX + suffix)
        if raw is not None:
            kind = types[name]
            base = str(kind).split("|")[0].strip()
            values[name] = _convert(name, raw, base)
    for name, value in (overrides or {}).items():
        if name not in types:
            raise ConfigError(f"unknown option {name}")
        if value is not None:
            values[name] = value
    return replace(Config(), **values)
