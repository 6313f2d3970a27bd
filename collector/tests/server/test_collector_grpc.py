"""OTLP/gRPC receiver status codes and messages, with a real grpc client on loopback."""

from __future__ import annotations

import gzip
import socket
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from runcov_collector.testing import coverage_span, file_hits, trace_request

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
AUTH = (("authorization", "Bearer ingest-secret-token"),)
RELEASE = {"service": "shop", "version": "", "environment": "", "role": "baseline"}


class Rpc:
    """Raw unary calls (bytes in, bytes out) so tests can send anything."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
        )

    def call(
        self,
        method: str,
        body: bytes,
        metadata: Any = AUTH,
        compression: grpc.Compression = grpc.Compression.NoCompression,
    ) -> bytes:
        stub = self.channel.unary_unary(method)
        return stub(body, metadata=metadata, timeout=30, compression=compression)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def rpc_for():
    made: list[Rpc] = []

    def make(collector: Any) -> Rpc:
        rpc = Rpc(collector.grpc_port)
        made.append(rpc)
        return rpc

    yield make
    for rpc in made:
        rpc.close()


def _request(lines=(1, 2), path="shop/views.py", **kw: Any):
    return trace_request([coverage_span("GET /", [file_hits(path, lines)], **kw)])


def _stored_lines(client) -> list[int]:
    response = client.get("/api/v1/file", **RELEASE, path="shop/views.py")
    if response.status_code == 404:
        return []
    return [line for line, _, _ in response.json()["lines"]]


def _retry_delay(error: grpc.RpcError) -> int:
    trailers = dict(error.trailing_metadata())
    status = status_pb2.Status()
    status.ParseFromString(trailers["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    direct = error_details_pb2.RetryInfo()
    direct.ParseFromString(trailers["google.rpc.retryinfo-bin"])
    assert direct == info
    return info.retry_delay.seconds


@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
def test_export_and_partial_success(client, rpc_for, compression):
    rpc = rpc_for(client.collector)
    good = coverage_span("GET /", [file_hits("shop/views.py", [3, 4])])
    bad = coverage_span("GET /", [file_hits("shop/views.py", [0])], span_id="cd" * 8)
    raw = rpc.call(TRACES, trace_request([good, bad]).SerializeToString(), compression=compression)
    response = ExportTraceServiceResponse()
    response.ParseFromString(raw)
    assert response.partial_success.rejected_spans == 1
    assert f"/{'cd' * 8} (runcov.coverage): files[0].lines has line '0' outside" in (
        response.partial_success.error_message
    )
    assert _stored_lines(client) == [3, 4]


def test_metrics_service_answers(client, rpc_for):
    raw = rpc_for(client.collector).call(METRICS, ExportMetricsServiceRequest().SerializeToString())
    response = ExportMetricsServiceResponse()
    response.ParseFromString(raw)
    assert not response.HasField("partial_success")


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer nope"),), (("authorization", "query-secret-token"),)],
)
def test_missing_or_wrong_token_is_unauthenticated(client, rpc_for, metadata):
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(client.collector).call(TRACES, _request().SerializeToString(), metadata)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.value.details() == "missing or invalid bearer token"
    assert client.query("/api/v1/services") == {"services": []}


def test_garbage_is_invalid_argument(client, rpc_for):
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(client.collector).call(TRACES, b"\x0a\xff\xff\xff\xff\x0f")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportTraceServiceRequest protobuf" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(client.collector).call(METRICS, b"\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ExportMetricsServiceRequest protobuf" in info.value.details()


def test_message_over_the_limit_is_resource_exhausted(start_collector, make_client, rpc_for):
    collector = start_collector(max_body_bytes=4096)
    client = make_client(collector)
    big = _request(lines=range(1, 3000)).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    # The limit holds after decompression too: a small gzip body inflating past it fails.
    bomb = bytes(1024 * 1024)
    assert len(gzip.compress(bomb)) < 4096
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, bomb, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.query("/api/v1/services") == {"services": []}


def test_overload_is_resource_exhausted_with_retry_info(
    start_collector, make_client, rpc_for, tmp_path
):
    db = tmp_path / "busy.db"
    collector = start_collector(max_inflight_ingests=1, store_url=f"sqlite:///{db}")
    client = make_client(collector)
    rpc = rpc_for(collector)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(rpc.call, TRACES, _request(lines=[1]).SerializeToString())
        seen = threading.Event()
        while not seen.wait(0.01):
            if collector.ingestor.inflight == 1:
                seen.set()
        with pytest.raises(grpc.RpcError) as info:
            rpc.call(TRACES, _request(lines=[2]).SerializeToString())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.details() == "collector is busy: 1 ingests already in flight; retry later"
        assert _retry_delay(info.value) == 2
        assert not first.done()
        blocker.execute("COMMIT")
        ExportTraceServiceResponse().ParseFromString(first.result())
    blocker.close()
    assert _stored_lines(client) == [1]


def test_closed_store_is_unavailable_with_retry_info(
    make_store, start_collector, make_client, rpc_for
):
    store = make_store()
    collector = start_collector(store=store)
    store.close()
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, _request().SerializeToString())
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the store is closed" in info.value.details()
    assert _retry_delay(info.value) == 2
    metrics = make_client(collector).get("/metrics", token=None).text
    series = 'runcov_collector_ingest_requests_total{transport="grpc",signal="traces",'
    assert series + 'result="unavailable"} 1' in metrics


def test_a_time_beyond_64_bits_rejects_its_span_and_keeps_the_rest(client, rpc_for):
    request = trace_request(
        [
            coverage_span("GET /", [file_hits("shop/views.py", [3])]),
            coverage_span("GET /", [file_hits("shop/views.py", [4])], span_id="cd" * 8),
        ]
    )
    bad = request.resource_spans[0].scope_spans[0].spans[1]
    bad.end_time_unix_nano, bad.start_time_unix_nano = 0, 2**64 - 1
    raw = rpc_for(client.collector).call(TRACES, request.SerializeToString())
    response = ExportTraceServiceResponse()
    response.ParseFromString(raw)
    assert response.partial_success.rejected_spans == 1
    assert f"/{'cd' * 8} (runcov.coverage): start_time_unix_nano 18446744073709551615" in (
        response.partial_success.error_message
    )
    assert _stored_lines(client) == [3]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
@pytest.mark.parametrize("host", ["::1", "::"])
def test_ipv6_host_serves_both_receivers(start_collector, host):
    collector = start_collector(host=host)
    line = collector.listening()
    assert f"http=[{host}]:{collector.http_port} grpc=[{host}]:{collector.grpc_port} " in line
    channel = grpc.insecure_channel(f"[::1]:{collector.grpc_port}")
    try:
        stub = channel.unary_unary(TRACES)
        raw = stub(_request(lines=[9]).SerializeToString(), metadata=AUTH, timeout=30)
    finally:
        channel.close()
    ExportTraceServiceResponse().ParseFromString(raw)
    with httpx.Client(base_url=f"http://[::1]:{collector.http_port}", timeout=30) as http:
        response = http.get(
            "/api/v1/file",
            params={**RELEASE, "path": "shop/views.py"},
            headers={"authorization": "Bearer query-secret-token"},
        )
    assert [line for line, _, _ in response.json()["lines"]] == [9]
