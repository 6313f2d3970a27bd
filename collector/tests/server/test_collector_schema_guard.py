"""A running collector whose store a newer collector migrates (a rolling upgrade): OTLP ingest
over HTTP and gRPC answers 503 / UNAVAILABLE saying to upgrade it and acknowledges nothing, the
query API and the dashboard answer 503 with the same message, ``/readyz`` takes the replica out;
on SQLite and PostgreSQL (the newer collector: ``collector/tests/newer_schema.py``)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from collector.tests.newer_schema import COPIED, MESSAGE, RENAMED, open_newer, part_keys
from collector.tests.server.test_collector_store_unavailable import PAGES, QUERIES, RELEASE
from google.rpc import code_pb2, error_details_pb2, status_pb2
from markupsafe import escape
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from runcov_collector.testing import coverage_span, file_hits, file_static, static_span
from runcov_collector.testing import trace_request as _trace_request

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
AUTH = (("authorization", "Bearer ingest-secret-token"),)


def _traces() -> Any:
    return _trace_request([coverage_span("GET /", [file_hits("shop/views.py", [1, 2])])])


def _metrics(value: int = 3) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="shop")))
    sm = rm.scope_metrics.add()
    sm.scope.name = "runcov"
    metric = sm.metrics.add()
    metric.name = "runcov.requests.seen"
    metric.sum.is_monotonic = True
    metric.sum.aggregation_temporality = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    point = metric.sum.data_points.add()
    point.as_int = value
    point.start_time_unix_nano = 1_764_064_800 * 10**9
    point.time_unix_nano = point.start_time_unix_nano + 10**9
    return request


@pytest.fixture
def replica(store_factory, start_collector, make_client, monkeypatch):
    """(client, newer): a collector on the factory's database, seeded over HTTP, and a
    ``newer(steps)`` that migrates that database as a newer collector would."""
    client = make_client(start_collector(store_url=store_factory.url))
    seed = [
        coverage_span("GET /", [file_hits("shop/views.py", [1, 2], [(-1, 1), (1, 2)])]),
        static_span([file_static("shop/views.py", [1, 2, 3], [(-1, 1), (1, 2), (1, 3)])]),
    ]
    assert client.send(_trace_request(seed)).status_code == 200
    assert client.get("/api/v1/coverage", **RELEASE).status_code == 200
    assert client.http.get("/readyz").status_code == 200

    def newer(steps: list[Any]) -> Any:
        return open_newer(store_factory, monkeypatch, steps)

    return client, newer


def _assert_ingest_refused(client: Any) -> None:
    """Every OTLP export, HTTP (protobuf and JSON) and gRPC, traces and metrics: 503 /
    UNAVAILABLE with the message and a retry delay."""
    for path, request in (("/v1/traces", _traces()), ("/v1/metrics", _metrics())):
        response = client.post(path, request.SerializeToString())
        assert response.status_code == 503, (path, response.status_code)
        assert response.headers["retry-after"] == "2"
        status = status_pb2.Status()
        status.ParseFromString(response.content)
        assert (status.code, status.message) == (code_pb2.UNAVAILABLE, MESSAGE)
    response = client.send(_traces(), json_body=True)
    assert response.status_code == 503
    assert response.json() == {"code": code_pb2.UNAVAILABLE, "message": MESSAGE}
    channel = grpc.insecure_channel(f"127.0.0.1:{client.collector.grpc_port}")
    try:
        for method, request in ((TRACES, _traces()), (METRICS, _metrics())):
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(method)(
                    request.SerializeToString(), metadata=AUTH, timeout=30
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, method
            assert info.value.details() == MESSAGE
            trailers = dict(info.value.trailing_metadata())
            retry = error_details_pb2.RetryInfo()
            retry.ParseFromString(trailers["google.rpc.retryinfo-bin"])
            assert retry.retry_delay.seconds == 2
    finally:
        channel.close()


def _assert_out_of_service(client: Any) -> None:
    assert client.http.get("/readyz").status_code == 503
    assert client.http.get("/readyz").json() == {"status": "unavailable", "error": MESSAGE}
    assert client.http.get("/healthz").json() == {"status": "ok"}


def test_a_replica_older_than_its_store_refuses_ingest_and_queries(replica):
    client, newer = replica
    store = newer(RENAMED)
    kept = part_keys(store, "part_keys")
    _assert_ingest_refused(client)
    assert part_keys(store, "part_keys") == kept
    with store.db.transaction(write=False) as conn:
        assert conn.query("SELECT COUNT(*) FROM metric_values") == [(0,)]
    for route, params in QUERIES:
        response = client.get(route, **params)
        assert response.status_code == 503, (route, response.text)
        assert response.json() == {"error": MESSAGE}, route
        assert response.headers["retry-after"] == "2"
    for page, params in PAGES:
        response = client.get(page, **params)
        assert response.status_code == 503, (page, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["retry-after"] == "2"
        assert "<h1>Collector out of date</h1>" in response.text
        assert str(escape(MESSAGE)) in response.text
    _assert_out_of_service(client)
    metrics = client.http.get("/metrics").text
    for transport, signal, count in (
        ("http", "traces", 2),
        ("http", "metrics", 1),
        ("grpc", "traces", 1),
        ("grpc", "metrics", 1),
    ):
        line = (
            f'runcov_collector_ingest_requests_total{{transport="{transport}",'
            f'signal="{signal}",result="schema_changed"}} {count}'
        )
        assert line in metrics


def test_a_replica_older_than_its_store_acknowledges_nothing_it_could_still_write(replica):
    """The newer schema left the tables this replica writes in place: its exports would
    succeed, and be acknowledged, into a table no one reads any more."""
    client, newer = replica
    store = newer(COPIED)
    _assert_ingest_refused(client)
    assert part_keys(store, "seen_parts") == part_keys(store, "part_keys")
    _assert_out_of_service(client)
