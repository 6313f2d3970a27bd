"""The agent's own health as OTLP metrics: requests seen, sampled, dropped, new coverage, cost.

Instrument names, units and attributes are those of ``docs/wire-format.md`` ("Metrics"). runcov
uses its own ``MeterProvider`` (scope ``runcov``, cumulative temporality, trace-based exemplars),
exporting over the same protocol and endpoint as the coverage spans. With
``metrics_interval=0`` (or the agent disabled) every method is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    TraceBasedExemplarFilter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from runcov._fork import in_forked_child
from runcov.config import Config, shown_endpoint
from runcov.export.otlp import otlp_metric_exporter_options
from runcov.export.transport import shortened
from runcov.redaction import Redactor
from runcov.resource import with_new_instance

__all__ = ["DROP_REASONS", "AgentMetrics"]

log = logging.getLogger("runcov.metrics")

#: Values of the ``runcov.reason`` attribute of ``runcov.requests.dropped``.
DROP_REASONS = (
    "rate_cap",
    "queue_full",
    "tracer_busy",
    "export_failed",
    "internal_error",
    "route_mismatch",
    "census_unclaimed",
    "preparing",
)


def _cumulative() -> dict[type, AggregationTemporality]:
    try:
        from opentelemetry.sdk.metrics import _Gauge as Gauge

        extra: tuple[type, ...] = (Gauge,)
    except ImportError:  # pragma: no cover - older SDKs
        extra = ()
    kinds = (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
        *extra,
    )
    return dict.fromkeys(kinds, AggregationTemporality.CUMULATIVE)


#: The loggers through which OpenTelemetry's OTLP exporters tell of each failed attempt and
#: retry (shared with the application's own exporters).
_OTLP_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http._common",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
)

#: Seconds between two warnings that the agent's metrics could not be exported.
METRICS_WARNING_INTERVAL = 60.0

class _OwnExports(threading.local):
    """What the OTLP exporters log while runcov's metric exporter runs on this thread."""

    active = False
    first = ""


_own = _OwnExports()


class _QuietOwnExports(logging.Filter):
    """Keeps the OTLP exporters' records of runcov's own metric exports out of the
    application's log (they log every retry; runcov says it at most once a minute, see
    :meth:`_ProcessBoundExporter.export`), keeping the first one's text (the failure, where
    the last is often the retry given up) for that warning. The
    application's own exporters, which run on other threads, log as before."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _own.active:
            return True
        if record.levelno >= logging.WARNING and not _own.first:
            try:
                _own.first = record.getMessage()
            except Exception:
                pass
        return False


_quiet_filter = _QuietOwnExports()


def _quiet_own_exports() -> None:
    """Filter the OTLP exporters' loggers: those named, and any other of their modules
    (imported by now: the exporter exists), whatever a version of them calls its loggers."""
    names = set(_OTLP_LOGGERS)
    names.update(
        name
        for name, known in list(logging.root.manager.loggerDict.items())
        if name.startswith("opentelemetry.exporter.otlp") and isinstance(known, logging.Logger)
    )
    for name in sorted(names):
        target = logging.getLogger(name)
        if _quiet_filter not in target.filters:
            target.addFilter(_quiet_filter)


class _ProcessBoundExporter(MetricExporter):
    """Forwards to the OTLP metric exporter, only in the process that created it; never raises.

    A failed export is counted (:attr:`failures`) and told at most once a minute, with the
    exporter's first word on it, instead of the exporter's line per attempt."""

    def __init__(self, inner: MetricExporter, endpoint: str = "") -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._pid = os.getpid()
        self._endpoint = endpoint
        self.failures = 0
        self._told = 0  # failures already told of
        self._warned_at = -math.inf
        _quiet_own_exports()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if os.getpid() != self._pid:
            return MetricExportResult.SUCCESS
        _own.active, _own.first = True, ""
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.debug("runcov: metric export raised", exc_info=True)
            result = MetricExportResult.FAILURE
        finally:
            _own.active = False
        if result is not MetricExportResult.SUCCESS:
            self.failures += 1
            self._warn(_own.first)
        return result

    def _warn(self, cause: str) -> None:
        now = time.monotonic()
        if now - self._warned_at < METRICS_WARNING_INTERVAL:
            return
        self._warned_at = now
        failed, self._told = self.failures - self._told, self.failures
        cause = shortened(cause)
        log.warning(
            "runcov: could not export the agent's metrics to %s (%d failed export(s)%s); "
            "they are tried again at the next interval",
            self._endpoint or "the receiver",
            failed,
            f": {cause}" if cause else "",
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if os.getpid() != self._pid:
            return
        try:
            self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.debug("runcov: metric exporter shutdown raised", exc_info=True)


def _make_metric_exporter(config: Config) -> MetricExporter:
    options = otlp_metric_exporter_options(config)
    options["preferred_temporality"] = _cumulative()
    if config.exporter_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(**options)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(**options)


class _Instruments:
    """The provider and instruments of one process.

    ``runcov.requests.seen`` counts every request of a selected endpoint, so it is counted in a
    plain dict and read by an observable counter at collection time (a synchronous SDK counter
    costs microseconds per call); the other counters concern sampled requests only and are
    synchronous, so they can carry exemplars.
    """

    def __init__(
        self, config: Config, resource: Resource, seen: Callable[[], Any], periodic: bool = True
    ) -> None:
        self.exporter = _ProcessBoundExporter(
            _make_metric_exporter(config), shown_endpoint(config.metrics_endpoint())
        )
        #: False: no reader thread (none could start: the interpreter was exiting), so the
        #: values leave only when flushed, which shutdown does.
        self.periodic = periodic
        reader = PeriodicExportingMetricReader(
            self.exporter,
            export_interval_millis=config.metrics_interval * 1000 if periodic else math.inf,
            export_timeout_millis=config.exporter_timeout * 1000,
        )
        self.provider = MeterProvider(
            metric_readers=[reader],
            resource=resource,
            exemplar_filter=TraceBasedExemplarFilter(),
            shutdown_on_exit=False,
        )
        try:
            from runcov import __version__ as version
        except Exception:
            version = ""
        meter = self.provider.get_meter("runcov", str(version))
        meter.create_observable_counter(
            "runcov.requests.seen",
            callbacks=[lambda _options: seen()],
            unit="{request}",
            description="Requests of selected endpoints",
        )
        self.sampled = meter.create_counter(
            "runcov.requests.sampled", "{request}", "Requests whose coverage was measured"
        )
        self.dropped = meter.create_counter(
            "runcov.requests.dropped", "{request}", "Sampled requests whose coverage was lost"
        )
        self.lines = meter.create_counter(
            "runcov.lines.new", "{line}", "Lines covered for the first time in this process"
        )
        self.arcs = meter.create_counter(
            "runcov.arcs.new", "{arc}", "Arcs covered for the first time in this process"
        )
        self.expired = meter.create_counter(
            "runcov.scopes.expired",
            "{request}",
            "Sampled requests no longer measured: still running at max_scope_seconds",
        )
        self.overhead = meter.create_counter(
            "runcov.overhead", "s", "CPU time spent by the agent (request paths and export worker)"
        )
        self.rate = meter.create_gauge(
            "runcov.sample_rate", "1", "Current (saturation-adjusted) sampling rate"
        )


def _context(trace_id: Optional[int], span_id: Optional[int]) -> Optional[otel_context.Context]:
    """A context whose current span is the sampled request (for exemplars), or None."""
    if not trace_id or not span_id:
        return None
    span = NonRecordingSpan(
        SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    return trace.set_span_in_context(span, otel_context.Context())


class AgentMetrics:
    """Records the agent's metrics; every method is cheap and never raises.

    Methods accept optional ``trace_id``/``span_id`` of the request they concern so that the
    data point carries it as an exemplar; without them the current span (if sampled) is used.
    """

    def __init__(self, config: Config, resource: Resource) -> None:
        self.config = config
        self.enabled = bool(config.enabled) and config.metrics_interval > 0
        self._resource = resource
        self._scrubber = Redactor((), (), config.redact).scrub
        self._scrubbed: dict[str, str] = {}
        #: Per-endpoint totals of requests seen since start, read when the metrics are collected
        #: (the agent counts them without a lock on the request path).
        self.seen_source: Optional[Callable[[], dict[str, int]]] = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inst: Optional[_Instruments] = None
        self._stale: list[_Instruments] = []
        self._closed = False
        #: The process that started the pipeline in the background (:meth:`start_soon`).
        self._starting = 0
        #: Recording errors swallowed (never raised into the application).
        self.errors = 0
        #: Per thread: the values held back by :meth:`deferred` (None outside it).
        self._deferral = threading.local()
        in_forked_child(self._after_fork_in_child)

    def _scrub(self, text: str) -> str:
        out = self._scrubbed.get(text)
        if out is None:
            out = self._scrubber(text)
            if len(self._scrubbed) >= 4096:
                self._scrubbed.clear()
            self._scrubbed[text] = out
        return out

    def _observe_seen(self) -> Iterator[Observation]:
        counts: dict[str, int] = {}
        source = self.seen_source
        if source is not None:
            try:
                for endpoint, count in source().items():
                    key = self._scrub(endpoint)
                    counts[key] = counts.get(key, 0) + count
            except Exception:
                self.errors += 1
        for endpoint, count in counts.items():
            yield Observation(count, {"runcov.endpoint": endpoint})

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        if self._inst is not None:
            self._stale.append(self._inst)
        self._inst = None
        self._resource = with_new_instance(self._resource)

    def _instruments(self) -> Optional[_Instruments]:
        inst = self._inst
        if inst is not None:
            return inst
        if not self.enabled or self._closed:
            return None
        with self._lock:
            if self._inst is None and not self._closed:
                try:
                    self._inst = _Instruments(self.config, self._resource, self._observe_seen)
                except RuntimeError:
                    # No new thread for the reader: the interpreter is exiting (CPython 3.12+
                    # starts none then), and this is the last flush's pipeline.
                    self._inst = _Instruments(
                        self.config, self._resource, self._observe_seen, periodic=False
                    )
                stale, self._stale = self._stale, []
                if stale:  # the parent's provider: stop its reader thread in this process
                    threading.Thread(
                        target=lambda: [s.provider.shutdown(1000) for s in stale], daemon=True
                    ).start()
            return self._inst

    def _add(
        self,
        name: str,
        amount: float,
        attributes: Optional[dict[str, str]],
        trace_id: Optional[int],
        span_id: Optional[int],
    ) -> None:
        if not self.enabled:
            return
        try:
            inst = self._instruments()
            if inst is None:
                return
            getattr(inst, name).add(amount, attributes, context=_context(trace_id, span_id))
        except Exception:
            self.errors += 1

    def start(self) -> None:
        """Start the metrics pipeline now (it also starts with the first recorded value);
        idempotent, a no-op when metrics are disabled, never raises."""
        try:
            self._instruments()
        except Exception:
            self.errors += 1

    def start_soon(self) -> None:
        """Start the metrics pipeline on a thread of its own: building it (the OTLP exporter,
        the provider and its reader thread) takes a tenth of a second or more, which must not
        fall on the request that happens to be a process's first. Once per process; never
        raises."""
        if self._inst is not None or not self.enabled or self._closed:
            return
        pid = os.getpid()
        if self._starting == pid:
            return
        self._starting = pid
        try:
            # Not a daemon: a process that exits right after its first requests waits for the
            # build (bounded: no I/O) before its exit handlers, which could start no thread of
            # the pipeline's own any more (CPython 3.12+), flush the counts.
            threading.Thread(target=self.start, name="runcov-metrics-start", daemon=False).start()
        except Exception:  # no new thread (the interpreter is exiting): here, then
            self.start()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within the block, this thread's ``sampled`` counts and ``rate`` values are held back
        and recorded once per endpoint when it ends: one ``sampled`` addition of the summed
        count (its exemplar the last request counted) and the last rate. The exporter's worker
        handles its records this way, a batch at a time; totals are exactly the same.
        """
        if not self.enabled or getattr(self._deferral, "pending", None) is not None:
            yield
            return
        pending: dict[tuple[str, str, str], list[Any]] = {}
        self._deferral.pending = pending
        try:
            yield
        finally:
            self._deferral.pending = None
            for (kind, endpoint, mode), held in pending.items():
                if kind == "rate":
                    self.rate(endpoint, held[0])
                else:
                    attrs = {"runcov.endpoint": self._scrub(endpoint), "runcov.mode": mode}
                    self._add("sampled", held[0], attrs, held[1], held[2])

    def sampled(
        self,
        endpoint: str,
        mode: str,
        *,
        trace_id: Optional[int] = None,
        span_id: Optional[int] = None,
    ) -> None:
        """One request was measured in ``mode`` (``exact``/``census``)."""
        if self.enabled:
            pending = getattr(self._deferral, "pending", None)
            if pending is not None:
                held = pending.get(("sampled", endpoint, mode))
                if held is None:
                    pending[("sampled", endpoint, mode)] = [1, trace_id, span_id]
                else:
                    held[0] += 1
                    if trace_id and span_id:
                        held[1], held[2] = trace_id, span_id
                return
            attrs = {"runcov.endpoint": self._scrub(endpoint), "runcov.mode": mode}
            self._add("sampled", 1, attrs, trace_id, span_id)

    def dropped(
        self,
        endpoint: str,
        reason: str,
        *,
        trace_id: Optional[int] = None,
        span_id: Optional[int] = None,
        count: int = 1,
    ) -> None:
        """A sampled request's coverage was lost; ``reason`` is one of :data:`DROP_REASONS`."""
        if self.enabled:
            attrs = {"runcov.endpoint": self._scrub(endpoint), "runcov.reason": reason}
            self._add("dropped", count, attrs, trace_id, span_id)

    def new_coverage(
        self,
        endpoint: str,
        lines: int,
        arcs: int,
        *,
        trace_id: Optional[int] = None,
        span_id: Optional[int] = None,
    ) -> None:
        """A request covered ``lines`` lines and ``arcs`` arcs not seen before in this process."""
        if not self.enabled:
            return
        attrs = {"runcov.endpoint": self._scrub(endpoint)}
        if lines > 0:
            self._add("lines", int(lines), attrs, trace_id, span_id)
        if arcs > 0:
            self._add("arcs", int(arcs), attrs, trace_id, span_id)

    def scope_expired(
        self,
        endpoint: str,
        *,
        trace_id: Optional[int] = None,
        span_id: Optional[int] = None,
    ) -> None:
        """A sampled request of ``endpoint`` was still running at the maximum scope age: it is
        no longer measured (what it ran until then is exported when it ends)."""
        if self.enabled:
            attrs = {"runcov.endpoint": self._scrub(endpoint)}
            self._add("expired", 1, attrs, trace_id, span_id)

    def overhead(self, seconds: float) -> None:
        """The agent spent ``seconds`` of CPU (on request paths or in its export worker)."""
        if self.enabled and seconds > 0:
            self._add("overhead", float(seconds), None, None, None)

    def rate(self, endpoint: str, value: float) -> None:
        """The endpoint's current (saturation-adjusted) sampling rate."""
        if not self.enabled:
            return
        pending = getattr(self._deferral, "pending", None)
        if pending is not None:
            pending[("rate", endpoint, "")] = [value]
            return
        try:
            inst = self._instruments()
            if inst is not None:
                inst.rate.set(float(value), {"runcov.endpoint": self._scrub(endpoint)})
        except Exception:
            self.errors += 1

    @property
    def export_failures(self) -> int:
        """Metric exports that failed in this process."""
        inst = self._inst
        return inst.exporter.failures if inst is not None else 0

    def _built(self) -> Optional[_Instruments]:
        """The pipeline, waiting for a start of :meth:`start_soon` still under way."""
        if self._inst is None and self._starting == os.getpid() and not self._closed:
            try:
                self._instruments()
            except Exception:
                self.errors += 1
        return self._inst

    def flush(self, timeout: float = 10.0) -> bool:
        """Export the current values now; True when done within ``timeout`` seconds."""
        inst = self._built()
        if inst is None:
            return True
        failures = inst.exporter.failures
        ok = self._bounded(lambda: inst.provider.force_flush(timeout * 1000), timeout)
        return ok and inst.exporter.failures == failures

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Export the last values and stop; bounded by ``timeout`` seconds. Idempotent."""
        self._built()
        with self._lock:  # (a start under way sees it closed and builds nothing)
            self._closed = True
            inst, self._inst = self._inst, None
        if inst is None:
            return True
        millis = timeout * 1000

        def stop() -> Any:
            if not inst.periodic:  # (its reader has no thread to collect a last time)
                inst.provider.force_flush(millis)
            return inst.provider.shutdown(millis)

        return self._bounded(stop, timeout)

    @staticmethod
    def _bounded(fn: Any, timeout: float) -> bool:
        result: list[Any] = []

        def run() -> None:
            try:
                result.append(fn())
            except Exception:
                result.append(False)

        thread = threading.Thread(target=run, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            # The interpreter is exiting (an atexit hook on 3.12+ cannot start a thread): run
            # here, bounded only by the exporter's own timeout, rather than lose the last values
            # (unless the budget is spent already: the process would wait past it).
            if timeout > 0:
                run()
        else:
            thread.join(max(0.0, timeout))
        return bool(result and result[0] is not False)
