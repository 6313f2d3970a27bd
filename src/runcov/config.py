"""runcov's configuration: one object, read from arguments, then ``RUNCOV_*``, then defaults.

Precedence for every field: keyword argument > ``RUNCOV_<FIELD>`` environment variable >
(for exporter and resource settings) the standard OpenTelemetry variables > default. Lists in
environment variables are comma-separated. Everything is validated when the configuration is
loaded, so a bad value fails loudly at start and never later on a request.

Standard variables honoured: ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name``,
``service.version``, ``deployment.environment.name`` / ``deployment.environment``),
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_COMPRESSION`` and
``OTEL_EXPORTER_OTLP_TIMEOUT`` (seconds, as the Python OTLP exporters read it).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import unquote, urlsplit

from runcov.errors import ConfigError
from runcov.selectors import MODES, parse_selector

__all__ = ["COMPRESSIONS", "PROTOCOLS", "ROLES", "Config", "header_pairs", "load_config"]

#: Deployment roles; the collector keeps each role's coverage apart.
ROLES = ("baseline", "canary", "shadow", "game-day")
#: OTLP protocols the agent can export with.
PROTOCOLS = ("http/protobuf", "grpc")
#: Compression of OTLP requests.
COMPRESSIONS = ("gzip", "deflate", "none")

_DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
_DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
#: The words of a boolean setting (compared lower-cased); an empty one is off too.
ON_WORDS = ("1", "true", "yes", "on")
OFF_WORDS = ("0", "false", "no", "off")


@dataclass
class Config:
    """Every setting of the agent. Build it with :func:`load_config` to get env and validation."""

    #: Source roots (directories or files); only code under them is measured and reported.
    source: list[str] = field(default_factory=lambda: [os.getcwd()])
    #: Endpoint selectors (see :mod:`runcov.selectors`), e.g. ``["POST /checkout@0.5", "*"]``.
    endpoints: list[str] = field(default_factory=lambda: ["*"])
    #: Probability that a matched request is sampled, unless its selector says otherwise.
    sample_rate: float = 0.01
    #: ``exact`` (per-request line and arc sets) or ``census`` (first hits, ~zero cost).
    mode: str = "exact"
    #: Cap of sampled requests per second per process; 0 means no cap.
    max_per_second: float = 10.0
    #: Sample more while an endpoint still finds new arcs, less once it stops.
    saturation: bool = True
    service_name: str = "unknown_service"
    service_version: str = ""
    environment: str = ""
    #: ``baseline``, ``canary``, ``shadow`` or ``game-day``.
    role: str = "baseline"
    #: Base URL of the OTLP receiver (``/v1/traces`` and ``/v1/metrics`` are appended for HTTP).
    exporter_endpoint: str = _DEFAULT_HTTP_ENDPOINT
    #: Full URL for coverage spans / for metrics when they differ from ``exporter_endpoint``'s
    #: ``/v1/traces`` / ``/v1/metrics`` (``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``).
    exporter_traces_endpoint: Optional[str] = None
    exporter_metrics_endpoint: Optional[str] = None
    exporter_protocol: str = "http/protobuf"
    exporter_headers: dict[str, str] = field(default_factory=dict)
    #: ``gzip`` (default: coverage shrinks several-fold), ``deflate`` or ``none``.
    exporter_compression: str = "gzip"
    #: Seconds one export attempt (retries included) may take before it is given up.
    exporter_timeout: float = 10.0
    #: Requests waiting for export; more are dropped and counted.
    queue_size: int = 2048
    #: Regular expressions; every match in any string runcov emits becomes ``[REDACTED]``.
    redact: list[str] = field(default_factory=list)
    #: Globs of files never reported (matched against the path relative to its source root,
    #: or against the absolute path when the glob is absolute).
    exclude: list[str] = field(default_factory=list)
    enabled: bool = True
    #: Seconds between metric exports; 0 turns agent metrics off.
    metrics_interval: float = 60.0
    #: Seconds a sampled request is measured at most (exact mode): a request still running
    #: then (a websocket, a stuck handler, a span never ended) stops being measured, so that
    #: the code it armed runs unarmed for everyone else again; 0 means no limit.
    max_scope_seconds: float = 60.0
    #: Send what was measured when the process gets SIGTERM and nothing handles it (the
    #: default action ends a process without its exit hooks; uvicorn and waitress leave it so).
    flush_on_sigterm: bool = True

    def traces_endpoint(self) -> str:
        """Where coverage spans go: the URL (HTTP) or target (gRPC)."""
        return self._signal_endpoint("traces")

    def metrics_endpoint(self) -> str:
        """Where agent metrics go: the URL (HTTP) or target (gRPC)."""
        return self._signal_endpoint("metrics")

    def exporter_insecure(self, signal: str = "traces") -> Optional[bool]:
        """gRPC security of ``signal``'s endpoint (``"traces"`` or ``"metrics"``): plaintext
        for ``http://``, TLS for ``https://``, else None (the exporter's own default)."""
        endpoint = self._signal_endpoint(signal)
        if endpoint.startswith("http://"):
            return True
        if endpoint.startswith("https://"):
            return False
        return None

    def _signal_endpoint(self, signal: str) -> str:
        override = (
            self.exporter_traces_endpoint if signal == "traces" else self.exporter_metrics_endpoint
        )
        if override:
            return override
        if self.exporter_protocol == "grpc":
            return self.exporter_endpoint
        return self.exporter_endpoint.rstrip("/") + "/v1/" + signal


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_LIST_FIELDS = ("source", "endpoints", "redact", "exclude")


def _bad(option: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{option}={value!r}: {why}")


def split_list(text: str, *, regex: bool = False) -> list[str]:
    """Split a comma-separated list; for regexes, commas inside ``{}``/``[]``/``()`` are kept."""
    if not regex:
        return [item.strip() for item in text.split(",") if item.strip()]
    items: list[str] = []
    depth = 0
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            current.append(ch)
            continue
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def header_pairs(text: str) -> tuple[dict[str, str], list[str]]:
    """The headers of an OTLP ``name=value,...`` string (names lower-cased, %-escapes
    decoded), and the non-empty items that are not ``name=value``."""
    headers: dict[str, str] = {}
    bad: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            bad.append(item.strip())
            continue
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers, bad


#: An HTTP header name (RFC 9110 ``token``).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _parse_headers(option: str, value: Any) -> dict[str, str]:
    """The exporter's headers from a ``name=value,...`` string or a mapping; a name that is not
    an HTTP token, or a value with a line break or other control character (which would end
    the header early, or let a header be injected), is refused."""
    shown = _masked_headers(value)
    if isinstance(value, str):
        headers, bad = header_pairs(value)
        if bad:
            items = [item.strip() for item in value.split(",") if item.strip()]
            raise _bad(option, shown, f"item {items.index(bad[0]) + 1} is not 'name=value'")
    elif isinstance(value, Mapping):
        headers = {str(k).lower(): str(v) for k, v in value.items()}
    else:
        raise _bad(option, shown, "not a mapping or 'name=value,...' string")
    for name, text in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise _bad(option, shown, f"header name {name!r} is not a valid HTTP header name")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
            raise _bad(option, shown, f"the value of header {name!r} has a control character")
    return headers


def _masked_headers(value: Any) -> Any:
    """Headers as an error message shows them: names, never values (they carry credentials)."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        return ",".join(
            f"{item.partition('=')[0].strip()}=***" if "=" in item else "***" for item in items
        )
    if isinstance(value, Mapping):
        return {str(k): "***" for k in value}
    return "***"


def _parse_resource_attributes(text: str) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[unquote(key.strip())] = unquote(value.strip())
    return attrs


#: The shortest metrics interval (seconds): shorter ones would spend the process exporting.
_MIN_METRICS_INTERVAL = 0.1
#: The shortest maximum scope age (seconds).
_MIN_SCOPE_SECONDS = 0.01


def _to_float(option: str, value: Any, low: float, high: float, why: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(option, value, why) from None
    if isinstance(value, bool) or math.isnan(number) or not low <= number <= high:
        raise _bad(option, value, why)
    return number


def _to_bool(option: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ON_WORDS:
        return True
    if text in OFF_WORDS or not text:
        return False
    raise _bad(option, value, "not a boolean (true/false, 1/0, yes/no, on/off)")


def _to_list(option: str, value: Any, *, regex: bool = False) -> list[str]:
    if isinstance(value, str):
        return split_list(value, regex=regex) if option.startswith("RUNCOV_") else [value]
    if isinstance(value, os.PathLike):
        return [os.fspath(value)]
    try:
        items = list(value)
    except TypeError:
        raise _bad(option, value, "not a list of strings") from None
    out: list[str] = []
    for item in items:
        if isinstance(item, os.PathLike):
            item = os.fspath(item)
        if not isinstance(item, str):
            raise _bad(option, value, f"item {item!r} is not a string")
        out.append(item)
    return out


_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#@\s]*@")


def shown_endpoint(url: str) -> str:
    """``url`` as runcov's messages show it: credentials (``user:password@``) and the query
    string, which may carry secrets, replaced by ``***``."""
    text = _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", str(url), count=1)
    head, query, _ = text.partition("?")
    return head + "?***" if query else head.partition("#")[0]


def _validate_url(option: str, value: str, protocol: str) -> str:
    text = value.strip()
    shown = shown_endpoint(value)
    try:
        parts = urlsplit(text if "://" in text else "//" + text)
        host = parts.hostname
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise _bad(option, shown, f"not a URL ({exc})") from None
    if not host or any(c.isspace() for c in text):
        raise _bad(option, shown, "not a URL with a host")
    if protocol != "grpc" and parts.scheme not in ("http", "https"):
        raise _bad(option, shown, "an OTLP/HTTP endpoint must be an http:// or https:// URL")
    if protocol == "grpc" and parts.scheme not in ("", "http", "https"):
        raise _bad(option, shown, "an OTLP/gRPC endpoint is host:port or an http(s):// URL")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise _bad(option, shown, "the port is not a number between 0 and 65535") from None
    return text


def load_config(environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> Config:
    """Build a validated :class:`Config` from keyword arguments, ``RUNCOV_*`` and OTel variables.

    ``environ`` defaults to ``os.environ``. Raises :class:`ConfigError` naming the option, its
    value and why it is wrong.
    """
    env = os.environ if environ is None else environ
    unknown = sorted(set(kwargs) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}={kwargs[unknown[0]]!r}: unknown option "
            f"(known: {', '.join(sorted(_FIELDS))})"
        )

    def raw(name: str, otel: Optional[str] = None) -> tuple[str, Any]:
        """(option label, value) for a field, or (label, None) when not given; ``otel`` names
        the standard variable that applies when runcov's own argument and variable are not
        given."""
        if kwargs.get(name) is not None:
            return name, kwargs[name]
        var = "RUNCOV_" + name.upper()
        if var in env and env[var].strip() != "":
            return var, env[var]
        if otel is not None and env.get(otel, "").strip():
            return otel, env[otel]
        return var, None

    resource_attrs = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    values: dict[str, Any] = {}

    # Lists.
    for name in _LIST_FIELDS:
        option, value = raw(name)
        if value is not None:
            values[name] = _to_list(option, value, regex=(name == "redact"))
    option = raw("source")[0]
    if "source" in values:
        if not values["source"]:
            raise _bad(option, values["source"], "at least one source root is needed")
        for root in values["source"]:
            if not root.strip():
                raise _bad(option, values["source"], "a source root is an empty string")
    for root in values.get("source") or [os.getcwd()]:
        real = os.path.realpath(os.path.abspath(root))
        if os.path.dirname(real) == real:
            why = (
                "the filesystem root as a source root would measure every file of the machine "
                "and report its path; name the directory of the service's own code"
            )
            if "source" in values:
                raise _bad(option, values["source"], why)
            raise ConfigError(
                f"{option} not given and the working directory, the default root, is {real!r}: "
                + why
            )
    if "source" in values:
        missing = [root for root in values["source"] if not os.path.exists(root)]
        if len(missing) == len(values["source"]):
            raise _bad(
                option,
                values["source"],
                "no such file or directory (relative roots are taken from the working directory, "
                f"{os.getcwd()!r}): nothing could be measured",
            )
        if missing:
            logging.getLogger("runcov").warning(
                "runcov: %s: no such file or directory: %s; measuring the other source roots",
                option,
                ", ".join(repr(root) for root in missing),
            )
    for selector in values.get("endpoints", []):
        parse_selector(selector, option=raw("endpoints")[0])
    if "endpoints" in values and not values["endpoints"]:
        raise _bad(raw("endpoints")[0], values["endpoints"], "no endpoint selector given")
    for pattern in values.get("redact", []):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _bad(raw("redact")[0], pattern, f"not a regular expression ({exc})") from None

    # Numbers.
    option, value = raw("sample_rate")
    if value is not None:
        values["sample_rate"] = _to_float(
            option, value, 0.0, 1.0, "not a number between 0 and 1"
        )
    option, value = raw("max_per_second")
    if value is not None:
        values["max_per_second"] = _to_float(
            option, value, 0.0, sys.float_info.max, "not a finite number >= 0 (0 means no cap)"
        )
    option, value = raw("metrics_interval")
    if value is not None:
        why = "not 0 (metrics off) or a number of seconds between 0.1 and 86400"
        values["metrics_interval"] = interval = _to_float(option, value, 0.0, 86400.0, why)
        if 0 < interval < _MIN_METRICS_INTERVAL:
            raise _bad(option, value, why)
    option, value = raw("max_scope_seconds")
    if value is not None:
        values["max_scope_seconds"] = _to_float(
            option,
            value,
            0.0,
            sys.float_info.max,  # (not inf)
            "not a number of seconds >= 0 (0 means no limit)",
        )
        if 0 < values["max_scope_seconds"] < _MIN_SCOPE_SECONDS:
            raise _bad(
                option,
                value,
                f"not 0 (no limit) or a number of seconds >= {_MIN_SCOPE_SECONDS} (a request "
                "would be cut before its first lines)",
            )
    option, value = raw("queue_size")
    if value is not None:
        number = _to_float(option, value, 1, 10_000_000, "not a whole number >= 1")
        if number != int(number):
            raise _bad(option, value, "not a whole number >= 1")
        values["queue_size"] = int(number)

    # Booleans.
    for name in ("saturation", "enabled", "flush_on_sigterm"):
        option, value = raw(name)
        if value is not None:
            values[name] = _to_bool(option, value)

    # Choices.
    option, value = raw("mode")
    if value is not None:
        mode = str(value).strip().lower()
        if mode not in MODES:
            raise _bad(option, value, f"not one of {', '.join(MODES)}")
        values["mode"] = mode
    option, value = raw("role")
    if value is not None:
        role = str(value).strip().lower()
        if role not in ROLES:
            raise _bad(option, value, f"not one of {', '.join(ROLES)}")
        values["role"] = role

    # Resource.
    for name, otel in (
        ("service_name", ("service.name",)),
        ("service_version", ("service.version",)),
        ("environment", ("deployment.environment.name", "deployment.environment")),
    ):
        option, value = raw(name)
        if value is None and name == "service_name" and env.get("OTEL_SERVICE_NAME", "").strip():
            option, value = "OTEL_SERVICE_NAME", env["OTEL_SERVICE_NAME"].strip()
        if value is None:
            for key in otel:
                if resource_attrs.get(key):
                    option, value = "OTEL_RESOURCE_ATTRIBUTES", resource_attrs[key]
                    break
        if value is not None:
            if not isinstance(value, str):
                raise _bad(option, value, "not a string")
            values[name] = value.strip()

    # Exporter.
    option, value = raw("exporter_protocol", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = "http/protobuf"
    if value is not None:
        protocol = str(value).strip().lower()
        if protocol not in PROTOCOLS:
            raise _bad(option, value, f"not one of {', '.join(PROTOCOLS)}")
    values["exporter_protocol"] = protocol
    option, value = raw("exporter_endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if value is None:
        value = _DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else _DEFAULT_HTTP_ENDPOINT
    if not isinstance(value, str):
        raise _bad(option, value, "not a URL string")
    values["exporter_endpoint"] = _validate_url(option, value, protocol)
    # Signal-specific endpoints: runcov's own settings, else the standard per-signal variables
    # unless runcov was given its own base endpoint (which then applies to both signals).
    runcov_base = raw("exporter_endpoint")[1] is not None
    for name, otel_var in (
        ("exporter_traces_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ("exporter_metrics_endpoint", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
    ):
        sig_option, sig_value = raw(name, None if runcov_base else otel_var)
        if sig_value is not None:
            if not isinstance(sig_value, str):
                raise _bad(sig_option, sig_value, "not a URL string")
            values[name] = _validate_url(sig_option, sig_value, protocol)
    option, value = raw("exporter_headers", "OTEL_EXPORTER_OTLP_HEADERS")
    if value is not None:
        values["exporter_headers"] = _parse_headers(option, value)
    option, value = raw("exporter_compression", "OTEL_EXPORTER_OTLP_COMPRESSION")
    if value is not None:
        compression = str(value).strip().lower()
        if compression not in COMPRESSIONS:
            raise _bad(option, value, f"not one of {', '.join(COMPRESSIONS)}")
        values["exporter_compression"] = compression
    option, value = raw("exporter_timeout", "OTEL_EXPORTER_OTLP_TIMEOUT")
    if value is not None:
        why = "not a number of seconds above 0 and at most 3600"
        timeout = _to_float(option, value, 0.0, 3600.0, why)
        if timeout <= 0:
            raise _bad(option, value, why)
        values["exporter_timeout"] = timeout

    # Switches of the tracing core, which reads them from the process environment when it
    # starts: checked here so that a bad one fails the start, not the core later.
    core = env.get("RUNCOV_CORE", "").strip().lower()
    if core not in ("", "sysmon", "settrace"):
        raise _bad("RUNCOV_CORE", env["RUNCOV_CORE"], "not one of sysmon, settrace")
    if core == "sysmon" and sys.version_info < (3, 12):
        raise _bad("RUNCOV_CORE", env["RUNCOV_CORE"], "sys.monitoring needs Python 3.12 or later")
    for name in ("RUNCOV_ACCEL", "RUNCOV_EXACT_PROBES"):
        if name in env:
            _to_bool(name, env[name])

    return Config(**values)
