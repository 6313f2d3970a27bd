"""How the span processor names a span's request: ``(method, route)``, endpoint ``METHOD route``."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from opentelemetry.trace import SpanKind

from runcov.otel.processor import request_identity

SERVER, CONSUMER = SpanKind.SERVER, SpanKind.CONSUMER


@pytest.mark.parametrize(
    ("kind", "name", "attributes", "identity"),
    [
        # HTTP, both generations of the conventions; a route learnt later is None until then.
        (SERVER, "GET /items/{id}", {"http.request.method": "GET", "http.route": "/items/{id}"},
         ("GET", "/items/{id}")),
        (SERVER, "GET", {"http.method": "GET", "http.route": "items/<id>"}, ("GET", "/items/<id>")),
        (SERVER, "GET", {"http.request.method": "GET", "url.scheme": "http"}, ("GET", None)),
        (SERVER, "x", {"http.method": "ECRYVR"}, ("_OTHER", None)),
        # Consumer spans and other server spans (gRPC...) are named by their span name.
        (CONSUMER, "orders process", {"messaging.system": "kafka"},
         ("consumer", "orders process")),
        (SERVER, "shop.Cart/Add", {"rpc.system": "grpc"}, (None, "shop.Cart/Add")),
        (SERVER, "thing", {"http.route": "/x", "url.scheme": "http"}, (None, "thing")),
        (SERVER, "thing", {"url.scheme": ["ws"]}, (None, "thing")),
        (SERVER, "thing", None, (None, "thing")),
        # Websockets. OpenTelemetry's FastAPI instrumentation: the route from the start, old
        # (http.scheme) or stable (url.scheme) conventions.
        (SERVER, "HTTP /ws/{room}", {"http.scheme": "ws", "http.target": "/ws/lobby",
                                     "http.route": "/ws/{room}"}, ("WEBSOCKET", "/ws/{room}")),
        (SERVER, "HTTP /ws/{room}", {"url.scheme": "wss", "url.path": "/ws/lobby",
                                     "http.route": "/ws/{room}"}, ("WEBSOCKET", "/ws/{room}")),
        # Its plain ASGI middleware: no route, the URL path in the span name (never used).
        (SERVER, "HTTP /ws/lobby-42", {"http.scheme": "ws", "http.target": "/ws/lobby-42"},
         ("WEBSOCKET", None)),
        # FastAPI's own tracing: "WS" at the start, the route set once routed.
        (SERVER, "WS", {"url.scheme": "ws", "network.protocol.name": "websocket"},
         ("WEBSOCKET", None)),
        (SERVER, "WS /ws/{room}", {"network.protocol.name": "websocket",
                                   "http.route": "ws/{room}"}, ("WEBSOCKET", "/ws/{room}")),
        # A method always names an HTTP request.
        (SERVER, "GET /ws", {"http.request.method": "GET", "url.scheme": "ws",
                             "http.route": "/ws"}, ("GET", "/ws")),
        (CONSUMER, "ws events", {"url.scheme": "ws"}, ("consumer", "ws events")),
    ],
)
def test_request_identity(
    kind: SpanKind,
    name: str,
    attributes: Optional[dict[str, Any]],
    identity: tuple[Optional[str], Optional[str]],
) -> None:
    assert request_identity(kind, name, attributes) == identity
