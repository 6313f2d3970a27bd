"""Small real OTLP receivers for tests: an HTTP one and a gRPC one, both on loopback.

They decode ``ExportTraceServiceRequest``/``ExportMetricsServiceRequest`` with opentelemetry-proto,
keep every raw body (to search exported bytes for secrets), and can be told to fail or to hang.

Usage::

    with HTTPSink() as sink:                 # or GRPCSink()
        exporter = CoverageExporter(load_config(exporter_endpoint=sink.endpoint, ...), resource)
        ...
        sink.wait_for(lambda: sink.coverage_spans())
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = ["GRPCSink", "HTTPSink", "ReceivedSpan", "attributes"]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    """A protobuf ``KeyValue`` list as a plain dict."""
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class ReceivedSpan:
    """One received span with its resource and instrumentation scope, decoded."""

    resource: dict[str, Any]
    scope: str
    scope_version: str
    name: str
    trace_id: int
    span_id: int
    parent_span_id: Optional[int]
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]

    @property
    def payload(self) -> dict[str, Any]:
        """The decoded ``runcov.payload`` JSON."""
        return json.loads(self.attributes["runcov.payload"])


class _Sink:
    """State shared by both receivers: what arrived, and how to answer."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: Raw request bodies as received (after transport decompression), in order.
        self.raw: list[bytes] = []
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        #: ``ok``, ``fail`` (reject every export) or ``hang`` (block until :meth:`release`).
        self.behaviour = "ok"
        #: Answer this many export requests "busy, retry" (HTTP 429 with ``Retry-After: 0``,
        #: gRPC UNAVAILABLE) before the behaviour above applies.
        self.throttle = 0
        self.release_event = threading.Event()
        self.attempts = 0
        #: Request headers (HTTP) or metadata (gRPC) of each export request, in order.
        self.headers: list[dict[str, str]] = []

    def release(self) -> None:
        """Let hanging requests finish (and fail) and answer normally from now on."""
        self.behaviour = "ok"
        self.release_event.set()

    def _record(self, body: bytes, signal: str) -> None:
        with self.lock:
            self.raw.append(body)
            if signal == "traces":
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                self.trace_requests.append(req)
            else:
                mreq = metrics_service_pb2.ExportMetricsServiceRequest()
                mreq.ParseFromString(body)
                self.metric_requests.append(mreq)

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, flattened."""
        out = []
        with self.lock:
            requests = list(self.trace_requests)
        for req in requests:
            for rs in req.resource_spans:
                res = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        out.append(
                            ReceivedSpan(
                                resource=res,
                                scope=ss.scope.name,
                                scope_version=ss.scope.version,
                                name=s.name,
                                trace_id=int.from_bytes(s.trace_id, "big"),
                                span_id=int.from_bytes(s.span_id, "big"),
                                parent_span_id=int.from_bytes(s.parent_span_id, "big")
                                if s.parent_span_id
                                else None,
                                kind=s.kind,
                                start_ns=s.start_time_unix_nano,
                                end_ns=s.end_time_unix_nano,
                                attributes=attributes(s.attributes),
                            )
                        )
        return out

    def coverage_spans(self) -> list[ReceivedSpan]:
        """Received ``runcov.coverage`` spans."""
        return [s for s in self.spans() if s.name == "runcov.coverage"]

    def static_spans(self) -> list[ReceivedSpan]:
        """Received ``runcov.static`` spans."""
        return [s for s in self.spans() if s.name == "runcov.static"]

    def metric_points(self) -> dict[str, list[tuple[dict[str, Any], Any, list[Any]]]]:
        """``name -> [(attributes, value, exemplars)]`` over every metrics request received."""
        out: dict[str, list[tuple[dict[str, Any], Any, list[Any]]]] = {}
        with self.lock:
            requests = list(self.metric_requests)
        for req in requests:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        for p in getattr(m, kind).data_points:
                            value = p.as_int if p.WhichOneof("value") == "as_int" else p.as_double
                            out.setdefault(m.name, []).append(
                                (attributes(p.attributes), value, list(p.exemplars))
                            )
        return out

    def metric_scopes(self) -> set[str]:
        """Instrumentation scope names of received metrics."""
        with self.lock:
            return {
                sm.scope.name
                for req in self.metric_requests
                for rm in req.resource_metrics
                for sm in rm.scope_metrics
            }

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll ``predicate`` until it is truthy; returns its value or raises AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the OTLP sink")
            time.sleep(0.02)


class _Handler(BaseHTTPRequestHandler):
    sink: HTTPSink

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        sink = self.server.sink  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with sink.lock:
            sink.attempts += 1
            sink.headers.append(dict(self.headers))
            throttled = sink.throttle > 0
            sink.throttle -= throttled
        if throttled:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if sink.behaviour == "hang":
            sink.release_event.wait(60)
            self._answer(503, b"")
            return
        if sink.behaviour == "fail":
            self._answer(400, b"rejected by test")
            return
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if self.path == "/v1/traces":
            sink._record(body, "traces")
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        elif self.path == "/v1/metrics":
            sink._record(body, "metrics")
            reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        else:
            self._answer(404, b"")
            return
        self._answer(200, reply)

    def _answer(self, status: int, body: bytes) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass


class HTTPSink(_Sink):
    """An OTLP/HTTP (protobuf) receiver on ``127.0.0.1``; ``endpoint`` is its base URL."""

    def __init__(self) -> None:
        super().__init__()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.sink = self  # type: ignore[attr-defined]
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> HTTPSink:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (releasing any hanging request first)."""
        self.release_event.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> HTTPSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GRPCSink(_Sink):
    """An OTLP/gRPC receiver on ``127.0.0.1``; ``endpoint`` is ``http://127.0.0.1:<port>``."""

    def __init__(self) -> None:
        super().__init__()
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        sink = self

        def handle(request: Any, context: Any, signal: str) -> bool:
            with sink.lock:
                sink.attempts += 1
                sink.headers.append(dict(context.invocation_metadata()))
                throttled = sink.throttle > 0
                sink.throttle -= throttled
            if throttled:
                context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
            if sink.behaviour == "hang":
                sink.release_event.wait(60)
                context.abort(grpc.StatusCode.UNAVAILABLE, "released")
            if sink.behaviour == "fail":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rejected by test")
            sink._record(request.SerializeToString(), signal)
            return True

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                handle(request, context, "traces")
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                handle(request, context, "metrics")
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)],
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"

    def start(self) -> GRPCSink:
        """Start serving."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving (releasing any hanging request first)."""
        self.release_event.set()
        self._server.stop(grace=None)

    def __enter__(self) -> GRPCSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
