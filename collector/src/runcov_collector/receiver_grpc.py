"""OTLP/gRPC receiver: TraceService/Export and MetricsService/Export on one grpc server."""

from __future__ import annotations

from concurrent import futures
from typing import Any, Callable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from runcov_collector import decode
from runcov_collector.auth import TokenCheck
from runcov_collector.ingest import (
    METRICS,
    TRACES,
    Ingestor,
    Overloaded,
    StoreSchemaChanged,
    StoreUnavailable,
)
from runcov_collector.metrics import CollectorMetrics

TRANSPORT = "grpc"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


def host_port(host: str, port: int | None) -> str:
    """``host:port``, with an IPv6 address in brackets (``[::1]:4317``) as gRPC and URLs need."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


GRPC_MAX_MESSAGE_LENGTH = 2**31 - 1
"""The largest message length gRPC takes (a C int)."""
RECEIVE_MARGIN = 4 * 1024 * 1024
"""The least that gRPC receives beyond the collector's own limit: gRPC's default message limit."""


def receive_bound(max_message_bytes: int) -> int:
    """The message size (after decompression) past which gRPC itself refuses a message.

    It is above ``max_message_bytes`` so that the receiver applies that limit itself, as the
    HTTP receiver does: a message over it is counted (``too_large``) and answered with its size
    and the limit, where gRPC's own refusal (RESOURCE_EXHAUSTED, "larger than max") is neither
    counted nor explained. It stays a bound so that gRPC's memory protection stays: twice the
    limit, or the limit plus ``RECEIVE_MARGIN`` when that is more (an export somewhat over a
    small limit is counted too), and never more than gRPC takes. A message the receiver
    refuses is held only while it is measured; gRPC refuses a larger one without handing it
    over (an uncompressed one from its length prefix, before reading it).
    """
    bound = max(2 * max_message_bytes, max_message_bytes + RECEIVE_MARGIN)
    return min(bound, GRPC_MAX_MESSAGE_LENGTH)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class GrpcReceiver:
    """Serves both OTLP export services; requests arrive as bytes and are parsed here so that a
    malformed message is answered with INVALID_ARGUMENT (not the INTERNAL a failing generated
    deserializer would give)."""

    def __init__(
        self,
        ingestor: Ingestor,
        metrics: CollectorMetrics,
        ingest_auth: TokenCheck,
        max_message_bytes: int,
        retry_after_seconds: int,
        workers: int = 8,
        header_timeout_seconds: float = 0,
        max_connections: int = 0,
    ) -> None:
        self.ingestor = ingestor
        self.metrics = metrics
        self.auth = ingest_auth
        self.retry_after_seconds = retry_after_seconds
        self.max_message_bytes = max_message_bytes
        options = [
            ("grpc.max_receive_message_length", receive_bound(max_message_bytes)),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ]
        # The HTTP listener's bounds on connections, for this one too: a connection that has
        # not completed gRPC's HTTP/2 handshake (the client's preface and settings) within
        # the header timeout is closed, and connections past the cap are closed as they come,
        # so that unauthenticated sockets that send nothing cannot hold file descriptors.
        if header_timeout_seconds > 0:
            options.append(
                ("grpc.server_handshake_timeout_ms", max(1, int(header_timeout_seconds * 1000)))
            )
        if max_connections > 0:
            options.append(("grpc.max_allowed_incoming_connections", max_connections))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="runcov-grpc"),
            options=options,
        )
        self.server.add_generic_rpc_handlers(
            (
                self._handler(TRACE_SERVICE, TRACES),
                self._handler(METRICS_SERVICE, METRICS),
            )
        )
        self.port: int | None = None

    def _handler(self, service: str, signal: str) -> grpc.GenericRpcHandler:
        def export(body: bytes, context: grpc.ServicerContext) -> Message:
            return self._export(signal, body, context)

        method = grpc.unary_unary_rpc_method_handler(
            export, request_deserializer=None, response_serializer=_serialize
        )
        return grpc.method_handlers_generic_handler(service, {"Export": method})

    def _abort(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str, retry: bool
    ) -> None:
        if retry:
            info = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
            # The status details are the standard place; the Python OTLP exporter reads the
            # RetryInfo from its own trailer key instead.
            context.set_trailing_metadata(
                (
                    ("grpc-status-details-bin", status.SerializeToString()),
                    ("google.rpc.retryinfo-bin", info.SerializeToString()),
                )
            )
        context.abort(code, message)

    def _export(self, signal: str, body: bytes, context: grpc.ServicerContext) -> Message:
        count: Callable[..., Any] = self.metrics.requests.inc
        metadata = dict(context.invocation_metadata())
        authorization = metadata.get("authorization")
        if not self.auth.allows(authorization if isinstance(authorization, str) else None):
            count(transport=TRANSPORT, signal=signal, result="unauthorized")
            self._abort(
                context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token", False
            )
        if len(body) > self.max_message_bytes:
            # Final, as HTTP's 413: no RetryInfo, so the exporter drops it rather than retry.
            count(transport=TRANSPORT, signal=signal, result="too_large")
            self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request message of {len(body)} bytes exceeds the limit of "
                f"{self.max_message_bytes} bytes",
                False,
            )
        try:
            self.ingestor.admit()
        except Overloaded as exc:
            count(transport=TRANSPORT, signal=signal, result="overloaded")
            self._abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), True)
        try:
            outcome = self.ingestor.handle(signal, TRANSPORT, body, json_body=False)
        except decode.MalformedRequest as exc:
            count(transport=TRANSPORT, signal=signal, result="invalid")
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc), False)
            raise  # unreachable: abort raises
        except StoreSchemaChanged as exc:
            count(transport=TRANSPORT, signal=signal, result="schema_changed")
            self._abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), True)
            raise
        except StoreUnavailable as exc:
            count(transport=TRANSPORT, signal=signal, result="unavailable")
            self._abort(context, grpc.StatusCode.UNAVAILABLE, str(exc), True)
            raise
        finally:
            self.ingestor.release()
        result = "partial" if outcome.result.rejected else "ok"
        count(transport=TRANSPORT, signal=signal, result=result)
        return outcome.response

    def start(self, host: str, port: int) -> int:
        """Bind and start; returns the actual port (useful with ``port=0``)."""
        address = host_port(host, port)
        bound = self.server.add_insecure_port(address)
        if bound == 0:
            raise OSError(f"cannot bind the gRPC receiver to {address}")
        self.server.start()
        self.port = bound
        return bound

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting RPCs, let running ones finish for up to ``grace`` seconds."""
        self.server.stop(grace).wait(grace + 1.0)
