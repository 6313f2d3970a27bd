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

from runcov_collector.receiver_grpc import receive_bound
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


def _request(lines=(1, 2), path="shop/views.py", endpoint="GET /", **kw: Any):
    return trace_request([coverage_span(endpoint, [file_hits(path, lines)], **kw)])


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


def test_the_limit_holds_after_decompression(start_collector, make_client, rpc_for):
    collector = start_collector(max_body_bytes=4096)
    client = make_client(collector)
    # A small gzip message inflating past the limit is refused as too large...
    bomb = bytes(1024 * 1024)
    assert len(gzip.compress(bomb)) < 4096
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, bomb, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        "request message of 1048576 bytes exceeds the limit of 4096 bytes"
    )
    assert _counted(client, "too_large") == 1
    # ...and one inflating past gRPC's own bound is refused by gRPC itself.
    bomb = bytes(receive_bound(4096) + 1)
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, bomb, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
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


def _counted(client, result: str, signal: str = "traces") -> int:
    """``runcov_collector_ingest_requests_total`` of gRPC exports answered ``result``."""
    series = (
        f'runcov_collector_ingest_requests_total{{transport="grpc",signal="{signal}",'
        f'result="{result}"}} '
    )
    for line in client.get("/metrics", token=None).text.splitlines():
        if line.startswith(series):
            return int(float(line[len(series) :]))
    return 0


def _request_of_size(size: int) -> bytes:
    """A valid trace export of exactly ``size`` bytes (lines 1.., then a longer endpoint)."""
    lines = 1
    while len(_request(lines=range(1, lines + 1)).SerializeToString()) < size - 200:
        lines += 1
    for pad in range(400):
        body = _request(lines=range(1, lines + 1), endpoint=f"GET /{'x' * pad}")
        raw = body.SerializeToString()
        if len(raw) == size:
            return raw
    raise AssertionError(f"no request of exactly {size} bytes")


def test_message_over_the_limit_is_counted_and_final_like_http(
    start_collector, make_client, rpc_for
):
    """gRPC receives messages somewhat over ``max_body_bytes`` so that the receiver itself
    refuses them, as the HTTP receiver refuses a body over the limit: counted as
    ``too_large``, RESOURCE_EXHAUSTED naming the size and the limit, and no RetryInfo (the
    exporter must not retry it). A message of exactly the limit is still stored."""
    collector = start_collector(max_body_bytes=4096)
    client = make_client(collector)
    rpc = rpc_for(collector)
    big = _request(lines=range(1, 3000)).SerializeToString()
    assert len(big) > 4096
    with pytest.raises(grpc.RpcError) as info:
        rpc.call(TRACES, big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == (
        f"request message of {len(big)} bytes exceeds the limit of 4096 bytes"
    )
    trailers = dict(info.value.trailing_metadata() or ())
    assert "grpc-status-details-bin" not in trailers
    assert "google.rpc.retryinfo-bin" not in trailers
    assert _counted(client, "too_large") == 1
    with pytest.raises(grpc.RpcError) as info:
        rpc.call(METRICS, bytes(4097))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "request message of 4097 bytes exceeds the limit of 4096 bytes"
    assert _counted(client, "too_large", signal="metrics") == 1
    assert client.query("/api/v1/services") == {"services": []}
    # One byte less than the limit, and the limit itself, are stored.
    for size in (4095, 4096):
        ExportTraceServiceResponse().ParseFromString(rpc.call(TRACES, _request_of_size(size)))
    assert _counted(client, "ok") == 2
    assert _counted(client, "too_large") == 1
    assert _stored_lines(client)[:3] == [1, 2, 3]


def test_message_beyond_the_grpc_bound_is_refused_by_grpc_itself(start_collector, rpc_for):
    """Past ``receive_bound`` gRPC refuses the message itself, from its length prefix (unread):
    RESOURCE_EXHAUSTED too, without RetryInfo, so final as well."""
    collector = start_collector(max_body_bytes=4096)
    bound = receive_bound(4096)
    assert bound > 4096
    with pytest.raises(grpc.RpcError) as info:
        rpc_for(collector).call(TRACES, bytes(bound + 1))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()
    assert "grpc-status-details-bin" not in dict(info.value.trailing_metadata() or ())


@pytest.mark.parametrize(
    "limit, bound",
    [
        (4096, 4096 + 4 * 1024 * 1024),
        (16 * 1024 * 1024, 32 * 1024 * 1024),
        (1 << 30, 2**31 - 1),  # gRPC's C int
    ],
)
def test_receive_bound(limit, bound):
    assert receive_bound(limit) == bound


def test_the_largest_limit_serves(start_collector, make_client, rpc_for):
    """At the largest ``max_body_bytes`` gRPC's bound is its own largest, which it takes."""
    collector = start_collector(max_body_bytes=1 << 30)
    rpc_for(collector).call(TRACES, _request(lines=[5]).SerializeToString())
    assert _stored_lines(make_client(collector)) == [5]
