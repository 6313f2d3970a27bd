"""Websocket connections: measured as requests named ``WEBSOCKET <route>``, selected by selectors
that name that method or only the route, through the span processor (with OpenTelemetry's ASGI
instrumentation, or FastAPI's own tracing) and through runcov's ASGI middleware."""

from __future__ import annotations

import html
import json
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import SpanKind

import runcov
from runcov.middleware import RuncovASGIMiddleware
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.fastapi_app import create_app
from tests.integration.apps.shop import logic
from tests.integration.conftest import APPS, AgentFactory, Sets, exported, reported, traceparent

#: The websocket route of the FastAPI service, a URL of it and the endpoint it names.
ROUTE = "/ws/items/{room}"
URL = "/ws/items/lobby"
ENDPOINT = "WEBSOCKET /ws/items/{room}"
#: The item ids a conversation sends (13 is sold out: another branch of the shop's logic).
ITEMS = (3, 13, 4)


def _client(app: Any) -> Any:
    """Starlette's test client, which opens websockets to ``app`` over ASGI."""
    with warnings.catch_warnings():
        # Recent Starlette warns when its test client is imported with httpx (not httpx2).
        warnings.filterwarnings("ignore", message=r".*starlette\.testclient")
        from starlette.testclient import TestClient
    return TestClient(app)


def _converse(app: Any, trace_id: int, url: str = URL) -> None:
    """One websocket connection: the item ids, each answered, then ``bye`` (the server closes)."""
    headers = {"traceparent": traceparent(trace_id)}
    with _client(app).websocket_connect(url, headers=headers) as ws:
        for item in ITEMS:
            ws.send_text(str(item))
            assert ws.receive_json() == {"room": url.rsplit("/", 1)[1], **logic.describe(item, 1)}
        ws.send_text("bye")


def _get(app: Any, url: str, trace_id: int) -> int:
    response = _client(app).get(url, headers={"traceparent": traceparent(trace_id)})
    return int(response.status_code)


def _oracle(app: Any) -> tuple[Sets, Sets]:
    """What the same conversation runs, measured by ``capture_coverage`` in the task that
    serves it (a runcov agent does not sample inside it)."""
    caps: list[Any] = []

    async def measured(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async with capture_coverage(source=[str(APPS)]) as cap:
            await app(scope, receive, send)
        caps.append(cap)

    _converse(measured, 0xABC)
    [cap] = caps
    assert cap.traced
    return reported(cap)


def _server_span(app_spans: Any, trace_id: int) -> Any:
    """The application's one SERVER span of the trace ``trace_id``."""
    [span] = [
        s for s in app_spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and s.context.trace_id == trace_id
    ]
    return span


#: The websocket span of each tracing, at its end: (name, route), and no HTTP method.
WEBSOCKET_SPANS = {
    "instrumentation": ("HTTP /ws/items/{room}", ROUTE),
    "native": ("WS /ws/items/{room}", ROUTE),
}
#: The status class each tracing's websocket span gives (200 once it sends, or none).
STATUS = {"instrumentation": "2xx", "native": "ok"}


@pytest.fixture(params=["instrumentation", "native"])
def tracing(request: pytest.FixtureRequest) -> str:
    """Who makes the FastAPI service's request spans: OpenTelemetry's FastAPI instrumentation,
    or FastAPI itself (its own tracing, on when an SDK tracer provider is set, without it)."""
    if request.param == "native":
        pytest.importorskip("fastapi.telemetry", reason="a FastAPI without its own tracing")
    return str(request.param)


@pytest.fixture
def app(app_provider: Any, semconv: str, tracing: str) -> Any:
    application = create_app()
    if tracing == "instrumentation":
        FastAPIInstrumentor.instrument_app(application, tracer_provider=app_provider)
    return application


@pytest.mark.parametrize("selector", ["WEBSOCKET /ws/*", "/ws/*", "* /ws/items/*"])
def test_a_websocket_is_measured_under_its_route_and_matches_the_oracle(
    start_agent: AgentFactory, sink: HTTPSink, app: Any, tracing: str, app_spans: Any,
    selector: str
) -> None:
    """A websocket's span has no HTTP method: runcov names it ``WEBSOCKET <route>``, and
    selectors naming that method or only the route select it."""
    agent = start_agent(endpoints=[selector], metrics_interval=3600)
    _converse(app, 0x50C4E7)
    span = _server_span(app_spans, 0x50C4E7)
    assert (span.name, span.attributes.get("http.route")) == WEBSOCKET_SPANS[tracing]
    assert not {"http.request.method", "http.method"} & set(span.attributes)
    assert _get(app, "/items/3", 0x50C4E8) == 200  # an HTTP request no selector names
    by_trace = exported(agent, sink, [0x50C4E7])
    assert 0x50C4E8 not in by_trace
    coverage = by_trace[0x50C4E7]
    assert coverage.endpoint == ENDPOINT
    assert coverage.status_class == STATUS[tracing]
    assert agent._seen_totals() == {ENDPOINT: 1}
    lines, arcs = _oracle(app)
    assert "shop/logic.py" in lines
    assert coverage.lines == lines
    assert coverage.arcs == arcs
    [exported_span] = [s for s in sink.coverage_spans() if s.trace_id == 0x50C4E7]
    assert exported_span.attributes["http.route"] == ROUTE
    assert "http.request.method" not in exported_span.attributes  # WEBSOCKET is no HTTP method


def test_selectors_of_http_methods_do_not_select_websockets(
    start_agent: AgentFactory, sink: HTTPSink, app: Any
) -> None:
    """The handshake is a GET, but ``GET`` selectors are for HTTP requests: a websocket is
    measured only when a selector names its method, or no method."""
    agent = start_agent(endpoints=["GET /ws/*", "GET /items/*"], metrics_interval=3600)
    _converse(app, 0x6E7001)
    assert _get(app, "/items/3", 0x6E7002) == 200
    by_trace = exported(agent, sink, [0x6E7002])
    assert by_trace[0x6E7002].endpoint == "GET /items/{item_id}"
    assert 0x6E7001 not in by_trace
    assert agent._seen_totals() == {"GET /items/{item_id}": 1}


def _starlette_feed() -> Any:
    """A Starlette service with a websocket route, without OpenTelemetry's Starlette
    instrumentation: its spans then carry no route."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def feed(websocket: Any) -> None:
        await websocket.accept()
        while (message := await websocket.receive_text()) != "bye":
            room = websocket.path_params["room"]
            await websocket.send_json({"room": room, **logic.describe(int(message), 1)})
        await websocket.close()

    return Starlette(routes=[WebSocketRoute(ROUTE, feed)])


def test_a_websocket_span_without_a_route_is_never_named_by_its_url_path(
    start_agent: AgentFactory, sink: HTTPSink, app_provider: Any, app_spans: Any, semconv: str
) -> None:
    """OpenTelemetry's plain ASGI middleware names a websocket's span by its URL path and sets
    no route: the endpoint is ``WEBSOCKET`` alone, and the path (ids...) is never exported."""
    agent = start_agent()
    app = OpenTelemetryMiddleware(_starlette_feed(), tracer_provider=app_provider)
    _converse(app, 0x9A7801, url="/ws/items/room-123456")
    span = _server_span(app_spans, 0x9A7801)
    assert span.name == "HTTP /ws/items/room-123456"
    assert "http.route" not in span.attributes
    by_trace = exported(agent, sink, [0x9A7801])
    assert by_trace[0x9A7801].endpoint == "WEBSOCKET"
    assert "shop/logic.py" in by_trace[0x9A7801].lines
    assert b"123456" not in b"".join(sink.raw)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda: RuncovASGIMiddleware(create_app()), id="fastapi"),
        pytest.param(lambda: RuncovASGIMiddleware(_starlette_feed()), id="starlette"),
    ],
)
def test_the_asgi_middleware_measures_websockets_as_the_span_processor_names_them(
    start_agent: AgentFactory, sink: HTTPSink, wrap: Callable[[], Any]
) -> None:
    """Without OpenTelemetry: the same endpoint, selector and status class as with it."""
    agent = start_agent(endpoints=["WEBSOCKET /ws/*"])
    app = wrap()
    _converse(app, 0x3D1601)
    _get(app, "/items/3", 0x3D1602)  # an HTTP request (FastAPI's endpoint, Starlette's 404)
    by_trace = exported(agent, sink, [0x3D1601])
    assert set(by_trace) == {0x3D1601}
    assert by_trace[0x3D1601].endpoint == ENDPOINT
    assert by_trace[0x3D1601].status_class == "2xx"
    assert by_trace[0x3D1601].parent_span_id == 0x1234567890ABCDEF  # the caller's span
    assert (by_trace[0x3D1601].lines, by_trace[0x3D1601].arcs) == _oracle(app.app)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Any]:
    from runcov_collector.app import Collector
    from runcov_collector.config import Config as CollectorConfig

    config = CollectorConfig(
        http_port=0,
        grpc_port=0,
        store_url=f"sqlite:///{tmp_path / 'collector.db'}",
        no_auth=True,
        retention_hours=0,
    )
    with Collector(config).start() as running:
        yield running


def _fetch(collector: Any, path: str, **params: str) -> bytes:
    url = f"http://127.0.0.1:{collector.http_port}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_the_collector_stores_queries_and_shows_websocket_endpoints(
    collector: Any, app_provider: Any
) -> None:
    """Over OTLP into the real collector: the websocket's endpoint is listed, its coverage is
    selected by it and is what ``capture_coverage`` measures, its agent metrics name it, and
    the dashboard shows it."""
    app = create_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=app_provider)
    agent = runcov.start(
        source=[str(APPS)],
        endpoints=["WEBSOCKET /ws/*@1", "GET /items/*@1"],
        exporter_endpoint=f"http://127.0.0.1:{collector.http_port}",
        max_per_second=0,
        saturation=False,
        metrics_interval=3600,
        service_name="chat",
        service_version="1.0",
    )
    try:
        _converse(app, 0x3E2E01)
        assert _get(app, "/items/3", 0x3E2E02) == 200
        assert agent.flush(15.0)
    finally:
        runcov.stop(timeout=10.0)
    lines, arcs = _oracle(app)

    release = {"service": "chat", "version": "1.0"}
    listed = json.loads(_fetch(collector, "/api/v1/endpoints", **release))["endpoints"]
    assert {e["endpoint"]: e["requests"] for e in listed} == {
        ENDPOINT: 1,
        "GET /items/{item_id}": 1,
    }
    answer = json.loads(
        _fetch(collector, "/api/v1/coverage", detail="1", endpoint=ENDPOINT, **release)
    )
    assert answer["totals"]["requests"] == 1
    got_lines = {f["path"]: {line for line, _, _ in f["lines"]} for f in answer["files"]}
    got_arcs = {f["path"]: {(a, b) for a, b, _, _ in f["arcs"]} for f in answer["files"]}
    assert {p: v for p, v in got_lines.items() if v} == lines
    assert {p: v for p, v in got_arcs.items() if v} == arcs
    metrics = json.loads(_fetch(collector, "/api/v1/agent", endpoint=ENDPOINT, **release))
    [entry] = metrics["endpoints"]
    assert (entry["endpoint"], entry["requests_seen"], entry["requests_sampled"]) == (
        ENDPOINT, 1, 1,
    )
    page = _fetch(collector, "/ui/release", endpoint=ENDPOINT, **release).decode()
    assert html.escape(ENDPOINT) in page
