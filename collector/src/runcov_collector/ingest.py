"""One ingest pipeline behind both receivers: admit, decode, store durably, answer, count."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping

from google.protobuf.message import Message
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from runcov_collector import decode
from runcov_collector.metrics import CollectorMetrics
from runcov_collector.model import Batch, Store
from runcov_collector.store.errors import UNAVAILABLE_ERRORS, SchemaChanged

log = logging.getLogger(__name__)

TRACES = "traces"
METRICS = "metrics"


class IngestError(Exception):
    """Base of the failures a receiver turns into a non-200 answer."""


class Overloaded(IngestError):
    """Too many ingests in flight (HTTP 429, gRPC RESOURCE_EXHAUSTED); retry later."""


class StoreUnavailable(IngestError):
    """The store failed to commit (HTTP 503, gRPC UNAVAILABLE); nothing was acknowledged."""


class StoreSchemaChanged(StoreUnavailable):
    """A newer collector migrated the store's schema under this one (HTTP 503, gRPC
    UNAVAILABLE, the ``SchemaChanged`` message); nothing was written or acknowledged, so the
    exporter retries, against an upgraded replica."""


def _store_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    # The store being unavailable (as the query API judges it too), and any other database
    # error but those of the data's kind: a write another replica or a later try may commit.
    operational: list[type[BaseException]] = [*UNAVAILABLE_ERRORS, sqlite3.Error]
    data: list[type[BaseException]] = [
        ArithmeticError,
        ValueError,
        TypeError,
        sqlite3.DataError,
        sqlite3.IntegrityError,
    ]
    try:
        import psycopg

        operational.append(psycopg.Error)
        data += [psycopg.DataError, psycopg.IntegrityError]
    except ImportError:  # pragma: no cover - psycopg is a dependency, but stay usable without
        pass
    return tuple(operational), tuple(data)


OPERATIONAL_ERRORS, DATA_ERRORS = _store_errors()
"""Store failures that say the store cannot write now, and those that say a value cannot be
written at all (a database error of the data's kind is the second)."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed ``store.ingest`` is worth retrying as it is (HTTP 503, UNAVAILABLE).

    Anything else is taken as a value in the batch the store cannot keep: retrying it would
    fail again, forever.
    """
    return isinstance(exc, OPERATIONAL_ERRORS) and not isinstance(exc, DATA_ERRORS)


def _duplicates(counts: Mapping[str, int] | None) -> int:
    """Coverage parts a ``store.ingest`` answer says were stored before (0 when it cannot tell)."""
    return int(counts.get("duplicates", 0)) if counts else 0


_Item = tuple[str, Any, str]  # which list of a Batch, the item, how a rejection names it


def _items_of(batch: Batch) -> list[_Item]:
    def span(kind: str, part: Any) -> str:
        return f"span {part.trace_id}/{part.span_id} ({kind})"

    items: list[_Item] = [("coverage", p, span(decode.COVERAGE_SPAN, p)) for p in batch.coverage]
    items += [("static", p, span(decode.STATIC_SPAN, p)) for p in batch.static]
    items += [("metrics", m, f"metric {m.name[:60]!r}") for m in batch.metrics]
    return items


def _batch_of(items: list[_Item], received_unix_nano: int) -> Batch:
    batch = Batch(received_unix_nano=received_unix_nano)
    for kind, item, _what in items:
        getattr(batch, kind).append(item)
    return batch


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
        self._schema_logged = False

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
        id_errors: decode.IdErrors = {}
        if signal == TRACES:
            request: Message = decode.parse_traces(body, json_body, id_errors)
        else:
            request = decode.parse_metrics(body, json_body, id_errors)
        return self.process(signal, transport, request, id_errors)

    def process(
        self,
        signal: str,
        transport: str,
        request: Message,
        id_errors: decode.IdErrors | None = None,
    ) -> Outcome:
        """Decode a parsed export request, store what is valid, and build the OTLP response;
        ``id_errors`` are the OTLP/JSON ids ``parse_traces`` or ``parse_metrics`` could not read.

        Raises ``decode.MalformedRequest`` or ``StoreUnavailable`` (``StoreSchemaChanged``
        when a newer collector migrated the store's schema).
        """
        if signal == TRACES:
            result = decode.decode_traces(request, id_errors=id_errors)
        else:
            result = decode.decode_metrics(request, id_errors=id_errors)
        batch = result.batch
        duplicates = 0
        if batch.coverage or batch.static or batch.metrics:
            started = time.perf_counter()
            try:
                duplicates = _duplicates(self.store.ingest(batch))
            except SchemaChanged as exc:
                raise self._schema_changed(exc) from exc
            except Exception as exc:
                if is_transient(exc):
                    raise StoreUnavailable(
                        f"store unavailable: {type(exc).__name__}: {exc}"
                    ) from exc
                log.exception("store.ingest failed; looking for the items it cannot keep")
                duplicates = self._reject_unstorable(result)
            self.metrics.store_latency.observe(time.perf_counter() - started)
        self._count(signal, transport, result, duplicates)
        return Outcome(response=self._response(signal, result), result=result)

    def _schema_changed(self, exc: SchemaChanged) -> StoreSchemaChanged:
        """The ingest error for ``exc``; logged once per collector, as every ingest gets it
        from then on."""
        with self._lock:
            first, self._schema_logged = not self._schema_logged, True
        if first:
            log.warning("refusing ingests (503 / UNAVAILABLE): %s", exc)
        return StoreSchemaChanged(str(exc))

    def _reject_unstorable(self, result: decode.DecodeResult) -> int:
        """Store a batch the store refused in halves, down to the items it refuses on their own.

        Those are rejected through ``partial_success`` like invalid spans, and the rest is
        stored: one value the store cannot keep must not make the whole request fail, and be
        retried, forever. Stored items are idempotent, so a transient failure half way
        (``StoreUnavailable``) leaves nothing a retry would count twice. Returns how many of
        the coverage parts kept were duplicates.
        """
        received = result.batch.received_unix_nano
        kept: list[_Item] = []
        duplicates = 0
        items = _items_of(result.batch)
        pending = [items[len(items) // 2 :], items[: len(items) // 2]]
        while pending:
            group = pending.pop()
            if not group:
                continue
            try:
                duplicates += _duplicates(self.store.ingest(_batch_of(group, received)))
            except SchemaChanged as exc:
                raise self._schema_changed(exc) from exc
            except Exception as exc:
                if is_transient(exc):
                    raise StoreUnavailable(
                        f"store unavailable: {type(exc).__name__}: {exc}"
                    ) from exc
                if len(group) > 1:
                    pending += [group[len(group) // 2 :], group[: len(group) // 2]]
                    continue
                result.accepted -= 1
                message = f"the store cannot keep it: {type(exc).__name__}: {exc}"
                result.reject(group[0][2], decode.Rejected("store", message))
                log.warning("rejected %s: %s", group[0][2], message)
            else:
                kept += group
        result.batch = _batch_of(kept, received)
        return duplicates

    def _count(
        self, signal: str, transport: str, result: decode.DecodeResult, duplicates: int
    ) -> None:
        m = self.metrics
        m.spans.inc(result.accepted, transport=transport, signal=signal, result="accepted")
        m.spans.inc(result.rejected, transport=transport, signal=signal, result="rejected")
        for reason, count in result.reasons.items():
            m.rejections.inc(count, reason=reason)
        for reason, count in result.skipped.items():
            m.skipped.inc(count, reason=reason)
        batch = result.batch
        stored = len(batch.coverage) - duplicates
        m.parts.inc(stored, transport=transport, kind="coverage", result="stored")
        m.parts.inc(duplicates, transport=transport, kind="coverage", result="duplicate")
        m.parts.inc(len(batch.static), transport=transport, kind="static", result="stored")
        m.parts.inc(len(batch.metrics), transport=transport, kind="metric", result="stored")

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
