"""runcov's middleware and OpenTelemetry's instrumentation on the same application: whichever
wraps the other, each request is counted as seen once and a sampled one is measured once.

runcov's WSGI/ASGI middleware outside OpenTelemetry's (the middleware claims the request: the
span processor steps aside for the server span started inside it), or inside it (the span
processor measures the request under its server span: the middleware steps aside). Real Flask
and FastAPI applications, the real OpenTelemetry instrumentations and middleware on the
application's SDK tracer provider (which runcov's span processor is attached to), coverage
exported over OTLP/HTTP to a real receiver.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

import httpx
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelASGIMiddleware
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGIMiddleware
from opentelemetry.trace import SpanKind

from runcov.middleware import RuncovASGIMiddleware, RuncovWSGIMiddleware
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.fastapi_app import create_app as create_fastapi_app
from tests.integration.apps.flask_app import create_app as create_flask_app
from tests.integration.conftest import (
    APPS,
    AgentFactory,
    Sets,
    exported,
    oracle,
    reported,
    traceparent,
)

#: The caller's span (the parent in every request's ``traceparent``).
CALLER = 0x00C0FFEE00C0FFEE
#: Trace ids whose randomness (low 56 bits) is above / below the threshold of a 50 % rate.
SAMPLED = [0x5EED00000000000000FFFFFFFFFFFFFF + (n << 100) for n in range(2)]
UNSAMPLED = [0x5EED0000000000000000000000000001 + 2 * n for n in range(2)]
#: Every request asks for the same item, so every sampled one runs the same lines.
URL = "/items/4?q=2"


@dataclass
class Setup:
    """An application wrapped by runcov's middleware and OpenTelemetry's instrumentation."""

    #: Sends the application a request (URL, trace id); returns its status code.
    send: Callable[[str, int], int]
    #: The lines and arcs the request runs under ``APPS``, measured by coverage.py.
    expected: tuple[Sets, Sets]
    #: The endpoint the request is counted under.
    endpoint: str
    #: True when runcov's middleware measures the request (coverage under the caller's span),
    #: False when the span processor does (coverage under the request's server span).
    by_middleware: bool


def _flask_route(app: Any) -> Callable[[dict[str, Any]], str]:
    """The Flask rule a request matches (the route resolver given to the WSGI middleware)."""

    def route(environ: dict[str, Any]) -> str:
        rule, _ = app.url_map.bind_to_environ(environ).match(return_rule=True)
        return str(rule.rule)

    return route


def _wsgi_setup(app: Any, by_middleware: bool, endpoint: str) -> Setup:
    client = app.test_client()
    plain = create_flask_app().test_client()

    def send(url: str, trace_id: int) -> int:
        response = client.get(url, headers={"traceparent": traceparent(trace_id, CALLER)})
        response.close()  # what a server does once the response is sent
        return int(response.status_code)

    expected = oracle(lambda: plain.get(URL).close())
    return Setup(send, expected, endpoint, by_middleware)


async def _asgi_get(app: Any, url: str, trace_id: int) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        response = await client.get(url, headers={"traceparent": traceparent(trace_id, CALLER)})
    return response.status_code


def _asgi_setup(app: Any, by_middleware: bool, endpoint: str) -> Setup:
    plain = create_fastapi_app()

    async def measure() -> tuple[Sets, Sets]:
        async with capture_coverage(source=[str(APPS)]) as cap:
            assert await _asgi_get(plain, URL, 0xABC) == 200
        return reported(cap)

    expected = asyncio.run(measure())
    return Setup(
        lambda url, trace_id: asyncio.run(_asgi_get(app, url, trace_id)),
        expected,
        endpoint,
        by_middleware,
    )


def flask_instrumented_inside_runcov(provider: Any) -> Setup:
    """``app.wsgi_app = RuncovWSGIMiddleware(app.wsgi_app)`` after ``instrument_app``: the
    Flask instrumentation's span starts (``before_request``) and ends (``teardown_request``)
    inside the middleware."""
    app = create_flask_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    wrapped = RuncovWSGIMiddleware(app.wsgi_app, route=_flask_route(app))
    app.wsgi_app = wrapped  # type: ignore[method-assign]
    return _wsgi_setup(app, True, "GET /items/<int:item_id>")


def wsgi_middleware_inside_runcov(provider: Any) -> Setup:
    """OpenTelemetry's WSGI middleware inside runcov's: its span ends when the server closes
    the response, after runcov's middleware returned."""
    app = create_flask_app()
    inner = OtelWSGIMiddleware(app.wsgi_app, tracer_provider=provider)
    wrapped = RuncovWSGIMiddleware(inner, route=_flask_route(app))
    app.wsgi_app = wrapped  # type: ignore[method-assign]
    return _wsgi_setup(app, True, "GET /items/<int:item_id>")


def runcov_inside_wsgi_middleware(provider: Any) -> Setup:
    """runcov's WSGI middleware inside OpenTelemetry's: the server span is current when it
    runs (OpenTelemetry's WSGI middleware knows no route: the endpoint is the method)."""
    app = create_flask_app()
    inner = RuncovWSGIMiddleware(app.wsgi_app, route=_flask_route(app))
    outer = OtelWSGIMiddleware(inner, tracer_provider=provider)
    app.wsgi_app = outer  # type: ignore[method-assign]
    return _wsgi_setup(app, False, "GET")


def fastapi_instrumented_inside_runcov(provider: Any) -> Setup:
    """A FastAPI app instrumented by ``FastAPIInstrumentor``, wrapped by runcov's ASGI
    middleware."""
    app = create_fastapi_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return _asgi_setup(RuncovASGIMiddleware(app), True, "GET /items/{item_id}")


def asgi_middleware_inside_runcov(provider: Any) -> Setup:
    """OpenTelemetry's ASGI middleware in a FastAPI app's stack, the app wrapped by runcov's
    middleware."""
    app = create_fastapi_app()
    app.add_middleware(OtelASGIMiddleware, tracer_provider=provider)
    return _asgi_setup(RuncovASGIMiddleware(app), True, "GET /items/{item_id}")


def fastapi_tracing_inside_runcov(provider: Any) -> Setup:
    """FastAPI's own tracing (on the global SDK tracer provider), the app wrapped by runcov's
    middleware."""
    return _asgi_setup(RuncovASGIMiddleware(create_fastapi_app()), True, "GET /items/{item_id}")


def runcov_inside_fastapi_instrumented(provider: Any) -> Setup:
    """runcov's ASGI middleware in the stack of a FastAPI app instrumented by
    ``FastAPIInstrumentor`` (whose middleware is the outermost): the server span is current
    when runcov's middleware runs."""
    app = create_fastapi_app()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    app.add_middleware(RuncovASGIMiddleware)
    return _asgi_setup(app, False, "GET /items/{item_id}")


def runcov_inside_fastapi_tracing(provider: Any) -> Setup:
    """runcov's ASGI middleware in the stack of a FastAPI app that traces itself."""
    app = create_fastapi_app()
    app.add_middleware(RuncovASGIMiddleware)
    return _asgi_setup(app, False, "GET /items/{item_id}")


def _counted_and_measured_once(
    agent: Any, sink: HTTPSink, endpoint: str, expected: tuple[Sets, Sets],
    parents: dict[int, int],
) -> None:
    """The four requests counted once under ``endpoint``; each sampled one exported once
    (every part, once), 2xx, with coverage.py's lines and arcs, under its parent span."""
    by_trace = exported(agent, sink, SAMPLED)
    assert agent._seen_totals() == {endpoint: 4}
    assert set(by_trace) == set(SAMPLED)
    for trace_id in SAMPLED:
        parts = [
            int(s.attributes["runcov.part"])
            for s in sink.coverage_spans()
            if s.trace_id == trace_id
        ]
        assert sorted(parts) == list(range(by_trace[trace_id].parts))  # measured once
        got = by_trace[trace_id]
        assert got.endpoint == endpoint
        assert got.status_class == "2xx"
        assert (got.lines, got.arcs) == expected
        assert got.parent_span_id == parents[trace_id]


@pytest.mark.parametrize(
    "build",
    [
        flask_instrumented_inside_runcov,
        wsgi_middleware_inside_runcov,
        runcov_inside_wsgi_middleware,
        fastapi_instrumented_inside_runcov,
        asgi_middleware_inside_runcov,
        fastapi_tracing_inside_runcov,
        runcov_inside_fastapi_instrumented,
        runcov_inside_fastapi_tracing,
    ],
)
@pytest.mark.parametrize("path", ["c", "python"])
def test_a_request_is_counted_and_measured_once_whichever_layer_is_outside(
    start_agent: AgentFactory,
    sink: HTTPSink,
    app_provider: Any,
    app_spans: Any,
    monkeypatch: pytest.MonkeyPatch,
    build: Callable[[Any], Setup],
    path: str,
) -> None:
    """Two sampled and two unsampled requests: four seen, one coverage span each for the
    sampled ones (the lines and arcs coverage.py measures), none for the others. The span
    processor's per-request path in C (``SpanGate``) and in Python alike."""
    if path == "python":
        monkeypatch.setenv("RUNCOV_ACCEL", "0")
    setup = build(app_provider)
    app_spans.clear()  # (a FastAPI app traces the oracle's request itself)
    agent = start_agent(sample_rate=0.5, metrics_interval=3600)
    processor = agent.processor
    gated = type(processor.on_start).__name__ == "builtin_function_or_method"
    assert gated is (path == "c")
    for trace_id in SAMPLED + UNSAMPLED:
        assert setup.send(URL, trace_id) == 200
    spans = [s for s in app_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    # OpenTelemetry traced every request, with one server span.
    assert sorted(s.context.trace_id for s in spans) == sorted(SAMPLED + UNSAMPLED)
    servers = {s.context.trace_id: s.context.span_id for s in spans}
    assert processor._in_flight == {}  # (no claimed span left behind)

    parents = {t: CALLER if setup.by_middleware else servers[t] for t in SAMPLED}
    _counted_and_measured_once(agent, sink, setup.endpoint, setup.expected, parents)


@pytest.mark.parametrize(
    "build", [runcov_inside_wsgi_middleware, runcov_inside_fastapi_instrumented]
)
@pytest.mark.parametrize("carries_runcov", [True, False])
@pytest.mark.parametrize("path", ["c", "python"])
def test_runcov_inside_opentelemetry_on_a_provider_of_its_own(
    start_agent: AgentFactory,
    sink: HTTPSink,
    monkeypatch: pytest.MonkeyPatch,
    build: Callable[[Any], Setup],
    carries_runcov: bool,
    path: str,
) -> None:
    """OpenTelemetry's instrumentation given a tracer provider that is not the global one (the
    global one carries runcov's span processor). When runcov's processor is attached to that
    provider too (``agent.attach``), runcov's middleware inside it steps aside and the
    processor measures each sampled request under its server span; when it is not, the
    processor never sees the request, and the middleware measures it, under the caller's
    span. Either way each request is counted once and a sampled one measured once."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if path == "python":
        monkeypatch.setenv("RUNCOV_ACCEL", "0")
    own = TracerProvider()
    spans_out = InMemorySpanExporter()
    own.add_span_processor(SimpleSpanProcessor(spans_out))
    setup = build(own)
    agent = start_agent(sample_rate=0.5, metrics_interval=3600)
    if carries_runcov:
        assert agent.attach(own)
    for trace_id in SAMPLED + UNSAMPLED:
        assert setup.send(URL, trace_id) == 200
    servers = {
        s.context.trace_id: s.context.span_id
        for s in spans_out.get_finished_spans()
        if s.kind == SpanKind.SERVER
    }
    assert sorted(servers) == sorted(SAMPLED + UNSAMPLED)

    # (OpenTelemetry's WSGI middleware knows no route; runcov's middleware is given one.)
    endpoint = setup.endpoint if carries_runcov or setup.endpoint != "GET" else (
        "GET /items/<int:item_id>"
    )
    parents = {t: servers[t] if carries_runcov else CALLER for t in SAMPLED}
    _counted_and_measured_once(agent, sink, endpoint, setup.expected, parents)
    own.shutdown()
