"""The collector's own Prometheus metrics and their text exposition (format 0.0.4)."""

from __future__ import annotations

import math
import threading
from typing import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[str, ...]
GaugeCallback = Callable[[], Iterable[tuple[dict[str, str], float]]]
Sample = tuple[str, dict[str, str], float]
"""(suffixed metric name, labels, value) as produced by a gauge callback."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Labels = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = labelnames
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> Iterable[Sample]:
        return ()

    def render(self) -> list[str]:
        lines = self.header()
        for name, labels, value in self.samples():
            lines.append(f"{name}{_format_labels(labels)} {_format_value(value)}")
        return lines


class Counter(_Metric):
    """A monotonically increasing count per label set. Without labels its one series is
    there from the start, at 0; a labelled series appears when it is first incremented."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Labels = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[Labels, float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0) to the series of ``labels``."""
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """Current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}_total", dict(zip(self.labelnames, key)), value

    def header(self) -> list[str]:
        return [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, with sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, ())
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        index = len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                index = i
                break
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def samples(self) -> Iterable[Sample]:
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        running = 0
        for bound, count in zip((*self.buckets, math.inf), counts):
            running += count
            yield f"{self.name}_bucket", {"le": _format_value(bound)}, running
        yield f"{self.name}_sum", {}, total
        yield f"{self.name}_count", {}, running


class CallbackGauge(_Metric):
    """A gauge whose samples are computed when scraped."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, callback: GaugeCallback) -> None:
        super().__init__(name, help_text, ())
        self._callback = callback

    def samples(self) -> Iterable[Sample]:
        for labels, value in self._callback():
            yield self.name, labels, value


class CallbackCounter(_Metric):
    """A counter whose samples are computed when scraped (totals kept elsewhere, e.g. in the
    store); rendered with the ``_total`` suffix."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, callback: GaugeCallback) -> None:
        super().__init__(name, help_text, ())
        self._callback = callback

    def header(self) -> list[str]:
        return [f"# HELP {self.name}_total {self.help}", f"# TYPE {self.name}_total counter"]

    def samples(self) -> Iterable[Sample]:
        for labels, value in self._callback():
            yield f"{self.name}_total", labels, value


class Registry:
    """An ordered set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        """Add a metric; returns it."""
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole exposition, newline-terminated."""
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class CollectorMetrics:
    """The metrics the receivers, the store wrapper and the retention job update."""

    def __init__(self) -> None:
        self.registry = Registry()
        reg = self.registry
        self.requests = Counter(
            "runcov_collector_ingest_requests",
            "OTLP export requests by transport, signal and result.",
            ("transport", "signal", "result"),
        )
        self.spans = Counter(
            "runcov_collector_ingest_spans",
            "runcov spans (traces) or data points (metrics) by transport and result.",
            ("transport", "signal", "result"),
        )
        self.parts = Counter(
            "runcov_collector_ingest_parts",
            "Coverage parts, static parts and metric points by transport, kind and result: "
            "stored, or duplicate (a coverage part stored before, e.g. by a retried export).",
            ("transport", "kind", "result"),
        )
        self.rejections = Counter(
            "runcov_collector_rejections",
            "Rejected runcov spans and data points by reason.",
            ("reason",),
        )
        self.skipped = Counter(
            "runcov_collector_skipped",
            "Spans and metrics ignored without error (other instrumentation scopes...).",
            ("reason",),
        )
        self.store_latency = Histogram(
            "runcov_collector_store_ingest_seconds",
            "Time store.ingest took to commit one request's batch.",
        )
        self.expired = Counter(
            "runcov_collector_retention_expired",
            "Rows removed by the retention job.",
        )
        self.retention_failures = Counter(
            "runcov_collector_retention_failures",
            "Retention sweeps that failed (the store unavailable or not answering in time, or "
            "another error): the next interval's sweep goes on from where it stopped.",
        )
        self.header_timeouts = Counter(
            "runcov_collector_http_header_timeouts",
            "HTTP connections closed for not sending a complete request head in time "
            "(header_timeout_seconds).",
        )
        self.connections_refused = Counter(
            "runcov_collector_connections_refused",
            "HTTP connections answered 503 and closed because max_connections were open.",
        )
        for metric in (
            self.requests,
            self.spans,
            self.parts,
            self.rejections,
            self.skipped,
            self.store_latency,
            self.expired,
            self.retention_failures,
            self.header_timeouts,
            self.connections_refused,
        ):
            reg.register(metric)

    def add_gauge(self, name: str, help_text: str, callback: GaugeCallback) -> None:
        """Register a gauge computed at scrape time."""
        self.registry.register(CallbackGauge(name, help_text, callback))

    def add_counter(self, name: str, help_text: str, callback: GaugeCallback) -> None:
        """Register a counter (``name`` without ``_total``) computed at scrape time."""
        self.registry.register(CallbackCounter(name, help_text, callback))

    def render(self) -> str:
        """Prometheus text exposition of every metric."""
        return self.registry.render()
