"""One ingest pipeline behind both receivers: admit, decode, store durably, answer, count."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from runcov_collector import decode
from runcov_collector.metrics import CollectorMetrics
from runcov_collector.model import Store

log = logging.getLogger(__name__)

TRACES = "traces"
METRICS = "metrics"


class IngestError(Exception):
    """Base of the failures a receiver turns into a non-200 answer."""


class Overloaded(IngestError):
    """Too many ingests in flight (HTTP 429, gRPC RESOURCE_EXHAUSTED); retry later."""


class StoreUnavailable(IngestError):
    """The store failed to commit (HTTP 503, gRPC UNAVAILABLE); nothing was acknowledged."""


def _operational_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error, OSError, TimeoutError]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:  # pragma: no cover - psycopg is a dependency, but stay usable without
        pass
    return tuple(errors)


OPERATIONAL_ERRORS = _operational_errors()


@dataclass
class Outcome:
    """What one export request came to; the receiver renders ``response``."""

    response: Message
    result: decode.DecodeResult


class Ingestor:
    """Admission control plus the decode → ``store.ingest`` → response pipeline.

    ``admit()`` is non-blocking: beyond ``max_inflight`` concurrent ingests it raises
    ``Overloaded`` at once rather than queueing without bound. The response is built only after
    ``store.ingest`` returned, i.e. after the batch is durable.
    """

    def __init__(self, store: Store, metrics: CollectorMetrics, max_inflight: int) -> None:
        self.store = store
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._slots = threading.BoundedSemaphore(max_inflight)
        self._lock = threading.Lock()
        self._inflight = 0

    @property
    def inflight(self) -> int:
        """Ingests admitted and not yet finished."""
        return self._inflight

    def admit(self) -> None:
        """Take an in-flight slot or raise ``Overloaded``; pair with ``release()``."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded(
                f"collector is busy: {self.max_inflight} ingests already in flight; retry later"
            )
        with self._lock:
            self._inflight += 1

    def release(self) -> None:
        """Give back a slot taken by ``admit()``."""
        with self._lock:
            self._inflight -= 1
        self._slots.release()

    def handle(self, signal: str, transport: str, body: bytes, json_body: bool) -> Outcome:
        """Parse ``body``, then ``process`` it (blocking; run it off the event loop)."""
        if signal == TRACES:
            request: Message = decode.parse_traces(body, json_body)
        else:
            request = decode.parse_metrics(body, json_body)
        return self.process(signal, transport, request)

    def process(self, signal: str, transport: str, request: Message) -> Outcome:
        """Decode a parsed export request, store what is valid, and build the OTLP response.

        Raises ``decode.MalformedRequest`` or ``StoreUnavailable``.
        """
        if signal == TRACES:
            result = decode.decode_traces(request)
        else:
            result = decode.decode_metrics(request)
        batch = result.batch
        if batch.coverage or batch.static or batch.metrics:
            started = time.perf_counter()
            try:
                self.store.ingest(batch)
            except OPERATIONAL_ERRORS as exc:
                raise StoreUnavailable(f"store unavailable: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:
                log.exception("store.ingest failed")
                raise StoreUnavailable(f"store failed: {type(exc).__name__}: {exc}") from exc
            self.metrics.store_latency.observe(time.perf_counter() - started)
        self._count(signal, transport, result)
        return Outcome(response=self._response(signal, result), result=result)

    def _count(self, signal: str, transport: str, result: decode.DecodeResult) -> None:
        m = self.metrics
        m.spans.inc(result.accepted, transport=transport, signal=signal, result="accepted")
        m.spans.inc(result.rejected, transport=transport, signal=signal, result="rejected")
        for reason, count in result.reasons.items():
            m.rejections.inc(count, reason=reason)
        for reason, count in result.skipped.items():
            m.skipped.inc(count, reason=reason)
        batch = result.batch
        m.parts.inc(len(batch.coverage), transport=transport, kind="coverage")
        m.parts.inc(len(batch.static), transport=transport, kind="static")
        m.parts.inc(len(batch.metrics), transport=transport, kind="metric")

    @staticmethod
    def _response(signal: str, result: decode.DecodeResult) -> Message:
        if signal == TRACES:
            trace_response = ExportTraceServiceResponse()
            if result.rejected:
                trace_response.partial_success.rejected_spans = result.rejected
                trace_response.partial_success.error_message = result.error_message
            return trace_response
        metrics_response = ExportMetricsServiceResponse()
        if result.rejected:
            metrics_response.partial_success.rejected_data_points = result.rejected
            metrics_response.partial_success.error_message = result.error_message
        return metrics_response

    def run_admitted(self, signal: str, transport: str, body: bytes, json_body: bool) -> Outcome:
        """``handle`` for a request that already holds a slot; releases it when done."""
        try:
            return self.handle(signal, transport, body, json_body)
        finally:
            self.release()
