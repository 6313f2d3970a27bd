"""The retry loop both OTLP transports share (``transport._Retrying``): backoff until the
export timeout, with one last attempt before the deadline rather than none, so that a receiver
back before the deadline gets what was waiting for it."""

from __future__ import annotations

import time
from typing import Any, Optional

import pytest

from runcov.export import transport as transport_module
from runcov.export.transport import _Retrying


class Receiver:
    """An attempt function: a refused connection (retryable, no ``Retry-After``) until
    ``back_after`` seconds from the first attempt, then an accepted export."""

    def __init__(self, back_after: float, retry_after: Optional[float] = None) -> None:
        self.back_after = back_after
        self.retry_after = retry_after
        self.attempts: list[float] = []
        self.start: Optional[float] = None

    def __call__(self, timeout: float) -> tuple[bool, bool, Optional[float]]:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        self.attempts.append(now - self.start)
        if now - self.start >= self.back_after:
            return True, True, None
        return False, False, self.retry_after


@pytest.fixture
def slowest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff waits at the top of their jitter (1.0 s, then 2.0 s): the case where the next
    wait runs past the deadline soonest."""
    monkeypatch.setattr(transport_module.random, "random", lambda: 1.0)


def test_a_receiver_back_before_the_deadline_gets_the_export(slowest_jitter: None) -> None:
    """Timeout 2.5 s: attempts at 0 and 1.0 s fail; the next backoff (2.0 s) would run past
    the deadline, so the last attempt is made before it (at 1.75 s) and succeeds."""
    receiver = Receiver(back_after=1.5)
    started = time.monotonic()
    assert _Retrying(2.5).run(receiver) is True
    assert len(receiver.attempts) == 3
    assert 1.5 <= receiver.attempts[-1] < 2.5
    assert time.monotonic() - started < 2.5


def test_a_receiver_still_down_fails_by_the_deadline_after_one_last_attempt(
    slowest_jitter: None,
) -> None:
    receiver = Receiver(back_after=60.0)
    started = time.monotonic()
    assert _Retrying(2.5).run(receiver) is False
    elapsed = time.monotonic() - started
    assert len(receiver.attempts) == 3  # 0, 1.0 and the last one before the deadline
    assert receiver.attempts[-1] >= 1.5
    assert elapsed < 2.5 + 0.5


def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    """The receiver asked for a later retry than the deadline allows: it is not asked sooner."""
    receiver = Receiver(back_after=60.0, retry_after=30.0)
    started = time.monotonic()
    assert _Retrying(2.5).run(receiver) is False
    assert receiver.attempts == [pytest.approx(0.0, abs=0.05)]
    assert time.monotonic() - started < 0.5


class ExhaustedReceiver:
    """An OTLP/gRPC receiver on loopback that answers its first ``refusals`` exports with
    RESOURCE_EXHAUSTED, with a ``RetryInfo`` of ``retry_delay`` seconds in the status details
    when that is given (an overloaded receiver), without one otherwise (a message over its
    size limit), and accepts the others."""

    def __init__(self, refusals: int, retry_delay: Optional[float]) -> None:
        from concurrent import futures

        import grpc
        from google.protobuf import any_pb2, duration_pb2
        from google.rpc import error_details_pb2, status_pb2
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        receiver = self
        self.attempts = 0

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                receiver.attempts += 1
                if receiver.attempts <= refusals:
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    if retry_delay is not None:
                        nanos = int(retry_delay * 1e9)
                        info = error_details_pb2.RetryInfo(
                            retry_delay=duration_pb2.Duration(
                                seconds=nanos // 10**9, nanos=nanos % 10**9
                            )
                        )
                        detail = any_pb2.Any()
                        detail.Pack(info)
                        status = status_pb2.Status(
                            code=code.value[0], message="busy", details=[detail]
                        )
                        context.set_trailing_metadata(
                            (("grpc-status-details-bin", status.SerializeToString()),)
                        )
                    context.abort(code, "busy" if retry_delay is not None else "too large")
                return trace_service_pb2.ExportTraceServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        self.endpoint = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)


def _grpc_send(receiver: ExhaustedReceiver, timeout: float) -> tuple[bool, float]:
    from runcov.config import load_config
    from runcov.export.transport import GrpcTransport

    transport = GrpcTransport(
        load_config(
            exporter_endpoint=receiver.endpoint,
            exporter_protocol="grpc",
            exporter_timeout=timeout,
        )
    )
    started = time.monotonic()
    try:
        return transport.send(b""), time.monotonic() - started
    finally:
        transport.close()


def test_resource_exhausted_without_retry_info_is_final() -> None:
    """OTLP: RESOURCE_EXHAUSTED is retryable only with a RetryInfo. Without one (a receiver's
    size limit) the send fails at once, as an HTTP 413 does, instead of until the deadline."""
    receiver = ExhaustedReceiver(refusals=100, retry_delay=None)
    try:
        ok, elapsed = _grpc_send(receiver, timeout=5.0)
    finally:
        receiver.stop()
    assert ok is False
    assert receiver.attempts == 1
    assert elapsed < 2.0


def test_resource_exhausted_with_retry_info_is_retried_after_its_delay() -> None:
    receiver = ExhaustedReceiver(refusals=2, retry_delay=0.3)
    try:
        ok, elapsed = _grpc_send(receiver, timeout=5.0)
    finally:
        receiver.stop()
    assert ok is True
    assert receiver.attempts == 3
    assert 0.6 <= elapsed < 4.0  # the receiver's delay, twice (not the 1 s backoff and more)


@pytest.fixture
def small_collector(tmp_path: Any) -> Any:
    """The real collector, HTTP and gRPC on loopback, taking bodies of at most 2,000 bytes."""
    from runcov_collector.app import Collector
    from runcov_collector.config import Config

    config = Config(
        http_port=0, grpc_port=0, store_url=f"sqlite:///{tmp_path / 'store.db'}",
        retention_hours=0, max_body_bytes=2000, no_auth=True,
    ).validate()
    with Collector(config) as running:
        yield running


def _too_large_body() -> bytes:
    """A valid ``ExportTraceServiceRequest`` of ~14 KB that does not compress (random ids)."""
    import os

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    request = trace_service_pb2.ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for _ in range(400):
        span = spans.add()
        span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), "x"
    return request.SerializeToString()


def test_the_collectors_too_large_answers_are_final_and_read_as_text(
    small_collector: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Over HTTP the collector answers 413 with a protobuf ``google.rpc.Status``: the agent's
    warning carries its message, with no protobuf bytes (control characters) in the log line.
    Over gRPC it answers RESOURCE_EXHAUSTED without RetryInfo: final at once, not retried
    until the export timeout."""
    from runcov.config import load_config
    from runcov.export.transport import make_transport

    body = _too_large_body()
    for protocol, endpoint in (
        ("http/protobuf", f"http://127.0.0.1:{small_collector.http_port}"),
        ("grpc", f"http://127.0.0.1:{small_collector.grpc_port}"),
    ):
        transport = make_transport(
            load_config(
                environ={}, exporter_endpoint=endpoint, exporter_protocol=protocol,
                exporter_timeout=8.0, exporter_compression="none",
            )
        )
        caplog.clear()
        started = time.monotonic()
        try:
            with caplog.at_level("WARNING", logger="runcov"):
                assert transport.send(body) is False
        finally:
            transport.close()
        assert time.monotonic() - started < 3.0, protocol
        [warning] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert warning.isprintable(), warning
        if protocol == "http/protobuf":
            assert "HTTP 413 request body of" in warning, warning
            assert "exceeds the limit of 2000 bytes" in warning, warning
        else:
            assert "RESOURCE_EXHAUSTED" in warning, warning
            assert f"request message of {len(body)} bytes exceeds the limit of 2000" in warning
