"""End to end: the real OpenTelemetry OTLP exporters send runcov spans to a running collector,
and the query API returns exactly those lines, arcs and first trace ids."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from runcov_collector.testing import (
    coverage_attributes,
    file_hits,
    file_static,
    static_attributes,
)

RESOURCE = {
    "service.name": "shop",
    "service.version": "1.4.0",
    "deployment.environment.name": "prod",
    "runcov.deployment.role": "canary",
    "service.instance.id": "pod-7",
}
RELEASE = {"service": "shop", "version": "1.4.0", "environment": "prod", "role": "canary"}
SHA = "3f1c9a0b2d4e6f70"

# Three sampled requests: (endpoint, lines, arcs) of shop/views.py.
REQUESTS = [
    ("GET /items/{item_id}", [11, 12, 13, 14, 20], [(-11, 12), (12, 13), (13, 14), (14, 20)]),
    ("POST /checkout", [11, 12, 13, 16, 20], [(-11, 12), (12, 13), (13, 16), (16, 20)]),
    ("GET /items/{item_id}", [11, 12, 13, 14, 20], [(-11, 12), (12, 13), (13, 14), (14, 20)]),
]
STATIC = file_static(
    "shop/views.py",
    [11, 12, 13, 14, 16, 20],
    [(-11, 12), (12, 13), (13, 14), (13, 16), (14, 20), (16, 20), (20, -11)],
    [("checkout", 11, 20)],
    SHA,
)


def _record_spans() -> tuple[list[Any], list[str]]:
    """Build the spans an instrumented service with the agent would produce."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    app_tracer = provider.get_tracer("opentelemetry.instrumentation.flask")
    runcov_tracer = provider.get_tracer("runcov", "0.1.0")
    with runcov_tracer.start_as_current_span(
        "runcov.static", attributes=static_attributes([STATIC])
    ):
        pass
    trace_ids = []
    for endpoint, lines, arcs in REQUESTS:
        with app_tracer.start_as_current_span(endpoint, kind=SpanKind.SERVER) as request_span:
            trace_ids.append(format(request_span.get_span_context().trace_id, "032x"))
        # The agent emits the coverage span as a child of the request span after it ended.
        from opentelemetry import trace

        ctx = trace.set_span_in_context(request_span)
        attrs = coverage_attributes(endpoint, [file_hits("shop/views.py", lines, arcs, SHA)])
        runcov_tracer.start_span("runcov.coverage", context=ctx, attributes=attrs).end()
    provider.shutdown()
    return list(memory.get_finished_spans()), trace_ids


def _expected_detail(trace_ids: list[str]) -> tuple[list[list[Any]], list[list[Any]]]:
    lines: dict[int, list[Any]] = {}
    arcs: dict[tuple[int, int], list[Any]] = {}
    for (_, req_lines, req_arcs), trace_id in zip(REQUESTS, trace_ids):
        for line in req_lines:
            entry = lines.setdefault(line, [line, 0, trace_id])
            entry[1] += 1
        for arc in req_arcs:
            entry = arcs.setdefault(arc, [arc[0], arc[1], 0, trace_id])
            entry[2] += 1
    return sorted(lines.values()), sorted(arcs.values())


def _http_exporter(client: Any, compression: bool) -> HttpSpanExporter:
    return HttpSpanExporter(
        endpoint=f"{client.base}/v1/traces",
        headers={"authorization": "Bearer ingest-secret-token"},
        compression=HttpCompression.Gzip if compression else HttpCompression.NoCompression,
        timeout=10,
    )


def _grpc_exporter(client: Any, compression: bool) -> GrpcSpanExporter:
    from grpc import Compression

    return GrpcSpanExporter(
        endpoint=f"127.0.0.1:{client.collector.grpc_port}",
        insecure=True,
        headers=(("authorization", "Bearer ingest-secret-token"),),
        compression=Compression.Gzip if compression else Compression.NoCompression,
        timeout=10,
    )


@pytest.mark.parametrize(
    ("transport", "compression"),
    [("http", False), ("http", True), ("grpc", False), ("grpc", True)],
)
def test_real_exporters_to_query_api(client, transport, compression):
    spans, trace_ids = _record_spans()
    make = _http_exporter if transport == "http" else _grpc_exporter
    exporter = make(client, compression)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        # A retry of the same spans (same trace and span ids) must not double count.
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    releases = client.query("/api/v1/releases", service="shop")["releases"]
    assert [{k: r[k] for k in RELEASE} for r in releases] == [RELEASE]
    assert releases[0]["requests"] == 3

    detail = client.query("/api/v1/file", **RELEASE, path="shop/views.py")
    want_lines, want_arcs = _expected_detail(trace_ids)
    assert sorted(detail["lines"]) == want_lines
    assert sorted(detail["arcs"]) == want_arcs
    assert detail["executable_lines"] == [11, 12, 13, 14, 16, 20]
    assert detail["functions"] == [{"name": "checkout", "start": 11, "end": 20}]

    coverage = client.query("/api/v1/coverage", **RELEASE)
    assert coverage["release"] == RELEASE
    assert coverage["totals"]["lines_covered"] == 6
    assert coverage["totals"]["lines_total"] == 6

    endpoints = client.query("/api/v1/endpoints", **RELEASE)["endpoints"]
    assert {e["endpoint"]: e["requests"] for e in endpoints} == {
        "GET /items/{item_id}": 2,
        "POST /checkout": 1,
    }
    only_checkout = client.query(
        "/api/v1/file", **RELEASE, path="shop/views.py", endpoint="POST /checkout"
    )
    assert sorted(line for line, _, _ in only_checkout["lines"]) == [11, 12, 13, 16, 20]

    metrics = client.get("/metrics", token=None).text
    # 1 static + 3 coverage spans accepted twice; the 3 request spans were skipped twice.
    assert (
        f'runcov_collector_ingest_spans_total{{transport="{transport}",signal="traces",'
        'result="accepted"} 8' in metrics
    )
    assert 'runcov_collector_skipped_total{reason="foreign_scope"} 6' in metrics
    assert (
        f'runcov_collector_ingest_requests_total{{transport="{transport}",signal="traces",'
        'result="ok"} 2' in metrics
    )
    assert (
        'runcov_collector_release_line_coverage_ratio{service="shop",version="1.4.0",'
        'environment="prod",role="canary"} 1' in metrics
    )


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_real_metric_exporters_deliver_agent_metrics(client, transport):
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=Resource.create(RESOURCE), metric_readers=[reader])
    meter = provider.get_meter("runcov", "0.1.0")
    sampled = meter.create_counter("runcov.requests.sampled", unit="{request}")
    sampled.add(3, {"runcov.endpoint": "GET /items/{item_id}", "runcov.mode": "exact"})
    sampled.add(1, {"runcov.endpoint": "POST /checkout", "runcov.mode": "exact"})
    provider.get_meter("flask").create_counter("http.server.requests").add(9)
    data = reader.get_metrics_data()
    provider.shutdown()
    if transport == "http":
        exporter: Any = HttpMetricExporter(
            endpoint=f"{client.base}/v1/metrics",
            headers={"authorization": "Bearer ingest-secret-token"},
        )
    else:
        exporter = GrpcMetricExporter(
            endpoint=f"127.0.0.1:{client.collector.grpc_port}",
            insecure=True,
            headers=(("authorization", "Bearer ingest-secret-token"),),
        )
    try:
        assert exporter.export(data) == MetricExportResult.SUCCESS
    finally:
        exporter.shutdown()
    metrics = client.get("/metrics", token=None).text
    stored = f'transport="{transport}",kind="metric",result="stored"'
    assert f"runcov_collector_ingest_parts_total{{{stored}}} 2" in metrics
    assert 'runcov_collector_skipped_total{reason="foreign_scope"} 1' in metrics


def test_exporter_with_a_wrong_token_fails_and_stores_nothing(client):
    spans, _ = _record_spans()
    exporter = HttpSpanExporter(
        endpoint=f"{client.base}/v1/traces", headers={"authorization": "Bearer wrong"}, timeout=5
    )
    try:
        assert exporter.export(spans) == SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert client.query("/api/v1/services") == {"services": []}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_batch_span_processor_pipeline_delivers(client, transport):
    """The deployment path: the exporter sits behind a BatchSpanProcessor in the provider."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = (_http_exporter if transport == "http" else _grpc_exporter)(client, True)
    provider = TracerProvider(resource=Resource.create(RESOURCE))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=7))
    tracer = provider.get_tracer("runcov", "0.1.0")
    trace_ids = []
    for n in range(1, 41):
        attrs = coverage_attributes("GET /n", [file_hits(f"shop/m{n % 4}.py", [n], [], SHA)])
        with tracer.start_as_current_span("runcov.coverage", attributes=attrs) as span:
            trace_ids.append(format(span.get_span_context().trace_id, "032x"))
    assert provider.force_flush(30_000)
    provider.shutdown()
    releases = client.query("/api/v1/releases", service="shop")["releases"]
    assert releases[0]["requests"] == 40
    for index in range(4):
        detail = client.query("/api/v1/file", **RELEASE, path=f"shop/m{index}.py")
        want = [[n, 1, trace_ids[n - 1]] for n in range(1, 41) if n % 4 == index]
        assert sorted(detail["lines"]) == want
