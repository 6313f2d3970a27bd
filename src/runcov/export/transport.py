"""Sends encoded OTLP trace export requests over HTTP or gRPC, with the OTLP retry rules.

runcov encodes its spans itself (:mod:`runcov.export.spans`), so it sends the bytes itself too;
the behaviour follows the OTLP specification
(https://opentelemetry.io/docs/specs/otlp/#otlphttp-throttling) and the SDK exporters'
configuration variables:

* HTTP: ``POST`` of ``application/x-protobuf`` to the traces URL, gzip-compressed unless
  compression is ``none``. 2xx is delivered (a ``partial_success`` in the answer is logged: the
  receiver has decided about those spans, sending them again would not change its mind).
  429, 502, 503 and 504 are retried after the ``Retry-After`` the server gave, else with
  exponential backoff and jitter; so is a connection that fails. Any other answer is final.
* gRPC: the ``TraceService/Export`` method with the request's bytes as they are. UNAVAILABLE,
  RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED, CANCELLED, OUT_OF_RANGE and DATA_LOSS are
  retried as above; other codes are final.
* Each attempt and all retries together stay within the configured timeout.
* TLS: ``OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE`` / ``OTEL_EXPORTER_OTLP_CERTIFICATE`` (trusted
  roots), ``..._CLIENT_KEY`` and ``..._CLIENT_CERTIFICATE`` (mutual TLS); headers from the
  configuration, else ``OTEL_EXPORTER_OTLP_TRACES_HEADERS``.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import threading
import time
from typing import Any, Callable, Optional, Protocol
from urllib.parse import urlparse

from runcov.config import Config, header_pairs

__all__ = ["GrpcTransport", "HttpTransport", "Transport", "make_transport"]

log = logging.getLogger("runcov.export")

#: gzip level of request bodies: coverage payloads (JSON of line numbers) compress about as
#: well at level 1 as at 9 (within 2 % on the Flask shop's spans), at a third of the CPU.
GZIP_LEVEL = 1
_RETRYABLE_HTTP = frozenset((429, 502, 503, 504))
_RETRYABLE_GRPC = frozenset(
    (
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "CANCELLED",
        "OUT_OF_RANGE",
        "DATA_LOSS",
    )
)
_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 32.0
_TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Transport(Protocol):
    """Delivers one encoded ``ExportTraceServiceRequest``."""

    def send(self, body: bytes) -> bool:
        """True when the receiver accepted the request (retries included), else False."""
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


def _env(name: str) -> Optional[str]:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    for key in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
        value = os.environ.get(key, "").strip()
        if value:
            return value
    return None


def _headers(config: Config) -> dict[str, str]:
    if config.exporter_headers:
        return dict(config.exporter_headers)
    # As the SDK's exporters read it: items that are not name=value are left out.
    return header_pairs(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS", ""))[0]


class _Retrying:
    """The retry loop both transports share: ``attempt(timeout)`` returns ``(done, ok, wait)``
    — done: no retry (ok tells the outcome); else retry after ``wait`` seconds if given."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._closed = threading.Event()

    def run(self, attempt: Callable[[float], tuple[bool, bool, Optional[float]]]) -> bool:
        deadline = time.monotonic() + self.timeout
        backoff = _FIRST_BACKOFF
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closed.is_set():
                return False
            done, ok, wait = attempt(remaining)
            if done:
                return ok
            if wait is None:
                wait = backoff * (0.5 + random.random() / 2)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            if wait >= deadline - time.monotonic():
                return False
            if self._closed.wait(wait):
                return False

    def stop(self) -> None:
        self._closed.set()


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class _Sender:
    """What both transports share: the retry loop, and closing."""

    _retry: _Retrying

    def _release(self) -> None:
        """Close the connection (session, channel)."""

    def close(self) -> None:
        self._retry.stop()
        try:
            self._release()
        except Exception:
            pass


class HttpTransport(_Sender):
    """OTLP/HTTP (protobuf) with ``requests``, one keep-alive session."""

    def __init__(self, config: Config) -> None:
        import requests

        self._requests = requests
        self.url = config.traces_endpoint()
        self._gzip = config.exporter_compression == "gzip"
        self._headers = {
            **_headers(config),
            "Content-Type": "application/x-protobuf",
            "User-Agent": "runcov",
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._session = requests.Session()
        certificate = _env("CERTIFICATE")
        self._session.verify = certificate if certificate else True
        client_cert, client_key = _env("CLIENT_CERTIFICATE"), _env("CLIENT_KEY")
        if client_cert:
            self._session.cert = (client_cert, client_key) if client_key else client_cert
        self._retry = _Retrying(config.exporter_timeout)

    def send(self, body: bytes) -> bool:
        data = gzip.compress(body, GZIP_LEVEL) if self._gzip else body

        def attempt(remaining: float) -> tuple[bool, bool, Optional[float]]:
            try:
                response = self._session.post(
                    self.url, data=data, headers=self._headers, timeout=remaining
                )
            except self._requests.exceptions.Timeout:
                log.debug("runcov: span export to %s timed out", self.url)
                return True, False, None
            except self._requests.exceptions.RequestException as error:
                log.debug("runcov: span export to %s failed: %s", self.url, error)
                return False, False, None  # connection refused or reset: retried
            status = response.status_code
            if 200 <= status < 300:
                _log_partial_success(response.content)
                return True, True, None
            if status in _RETRYABLE_HTTP:
                return False, False, _retry_after(response.headers.get("Retry-After"))
            log.warning(
                "runcov: the receiver at %s refused coverage spans: HTTP %d %s",
                self.url,
                status,
                response.text[:200],
            )
            return True, False, None

        return self._retry.run(attempt)

    def _release(self) -> None:
        self._session.close()


class GrpcTransport(_Sender):
    """OTLP/gRPC: the trace service's Export method, fed the encoded bytes unchanged."""

    def __init__(self, config: Config) -> None:
        import grpc

        self._grpc = grpc
        endpoint = config.traces_endpoint()
        parsed = urlparse(endpoint if "://" in endpoint else "//" + endpoint)
        target = parsed.netloc or endpoint
        insecure = config.exporter_insecure()
        if insecure is None:
            env = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or os.environ.get(
                "OTEL_EXPORTER_OTLP_INSECURE", ""
            )
            insecure = env.strip().lower() == "true"
        compression = (
            grpc.Compression.Gzip
            if config.exporter_compression == "gzip"
            else grpc.Compression.NoCompression
        )
        if insecure:
            self._channel = grpc.insecure_channel(target, compression=compression)
        else:
            self._channel = grpc.secure_channel(
                target, _grpc_credentials(grpc), compression=compression
            )
        self.target = target
        self._call = self._channel.unary_unary(
            _TRACE_EXPORT_METHOD,
            request_serializer=None,  # the request is already bytes
            response_deserializer=None,
        )
        self._metadata = tuple(_headers(config).items())
        self._retry = _Retrying(config.exporter_timeout)

    def send(self, body: bytes) -> bool:
        grpc = self._grpc

        def attempt(remaining: float) -> tuple[bool, bool, Optional[float]]:
            try:
                reply = self._call(body, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code() if hasattr(error, "code") else None
                name = getattr(code, "name", str(code))
                if name in _RETRYABLE_GRPC:
                    return False, False, None
                log.warning(
                    "runcov: the receiver at %s refused coverage spans: %s %s",
                    self.target,
                    name,
                    error.details() if hasattr(error, "details") else "",
                )
                return True, False, None
            _log_partial_success(reply)
            return True, True, None

        return self._retry.run(attempt)

    def _release(self) -> None:
        self._channel.close()


def _grpc_credentials(grpc: Any) -> Any:
    def read(name: str) -> Optional[bytes]:
        path = _env(name)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read("CERTIFICATE"),
        private_key=read("CLIENT_KEY"),
        certificate_chain=read("CLIENT_CERTIFICATE"),
    )


def _log_partial_success(reply: bytes) -> None:
    if not reply:
        return
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceResponse,
        )

        answer = ExportTraceServiceResponse.FromString(reply)
    except Exception:
        return
    partial = answer.partial_success
    if partial.rejected_spans or partial.error_message:
        log.warning(
            "runcov: the receiver rejected %d coverage span(s): %s",
            partial.rejected_spans,
            partial.error_message,
        )


def make_transport(config: Config) -> Transport:
    """The transport for the configured protocol and endpoint."""
    if config.exporter_protocol == "grpc":
        return GrpcTransport(config)
    return HttpTransport(config)
