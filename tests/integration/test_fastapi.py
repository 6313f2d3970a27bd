"""runcov inside a FastAPI service instrumented by opentelemetry-instrumentation-fastapi."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.fastapi_app import create_app
from tests.integration.conftest import (
    APPS,
    AgentFactory,
    exported,
    reported,
    traceparent,
)

# (url, expected endpoint)
REQUESTS = [
    ("/items/3?q=1", "GET /items/{item_id}"),
    ("/items/4?q=12", "GET /items/{item_id}"),
    ("/items/13", "GET /items/{item_id}"),
    ("/health", "GET /health"),
]

#: A sync endpoint: FastAPI runs it in anyio's worker threads (``anyio.to_thread.run_sync``).
SYNC_REQUEST = ("/sync/items/5?q=2", "GET /sync/items/{item_id}")


@pytest.fixture
def app(app_provider: Any, semconv: str) -> Any:
    application = create_app()
    FastAPIInstrumentor.instrument_app(application, tracer_provider=app_provider)
    return application


async def _get(app: Any, url: str, trace_id: int) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        response = await client.get(url, headers={"traceparent": traceparent(trace_id)})
    return response.status_code


def _oracle(app: Any, url: str) -> tuple[dict[str, set[Any]], dict[str, set[Any]]]:
    async def measure() -> Any:
        async with capture_coverage(source=[str(APPS)]) as cap:
            assert await _get(app, url, 0xABC) == 200
        return cap

    cap = asyncio.run(measure())
    return reported(cap)


def _check_matches_oracle(
    agent: Any, sink: HTTPSink, app: Any, requests: list[tuple[str, str]]
) -> None:
    trace_ids = [0xFA57A000 + i for i in range(len(requests))]

    async def drive() -> None:
        for (url, _), trace_id in zip(requests, trace_ids):
            assert await _get(app, url, trace_id) == 200

    asyncio.run(drive())
    by_trace = exported(agent, sink, trace_ids)
    for (url, endpoint), trace_id in zip(requests, trace_ids):
        lines, arcs = _oracle(app, url)
        assert "shop/logic.py" in lines
        assert by_trace[trace_id].lines == lines, url
        assert by_trace[trace_id].arcs == arcs, url
        assert by_trace[trace_id].endpoint == endpoint
        assert by_trace[trace_id].status_class == "2xx"


def test_async_endpoints_match_the_oracle(
    start_agent: AgentFactory, sink: HTTPSink, app: Any
) -> None:
    _check_matches_oracle(start_agent(), sink, app, REQUESTS)


def test_sync_endpoints_in_the_thread_pool_match_the_oracle(
    start_agent: AgentFactory, sink: HTTPSink, app: Any
) -> None:
    _check_matches_oracle(start_agent(), sink, app, [SYNC_REQUEST])


def test_concurrent_requests_keep_their_own_coverage(
    start_agent: AgentFactory, sink: HTTPSink, app: Any
) -> None:
    """Interleaved requests on one event loop: each trace gets only its own lines."""
    agent = start_agent()
    urls = ["/items/4?q=12", "/items/13", "/health"] * 4
    trace_ids = [0xC0C0000 + i for i in range(len(urls))]

    async def drive() -> None:
        results = await asyncio.gather(
            *(_get(app, url, t) for url, t in zip(urls, trace_ids))
        )
        assert results == [200] * len(urls)

    asyncio.run(drive())
    by_trace = exported(agent, sink, trace_ids)
    expected = {url: _oracle(app, url) for url in set(urls)}
    for url, trace_id in zip(urls, trace_ids):
        assert (by_trace[trace_id].lines, by_trace[trace_id].arcs) == expected[url], url


@pytest.mark.usefixtures("fresh_core_after")
def test_census_by_span_attributes_each_first_hit_to_the_request_that_made_it(
    start_agent: AgentFactory, sink: HTTPSink, app: Any
) -> None:
    """Census of interleaved requests on one event loop, async and sync (thread pool)
    endpoints: every line the requests ran is reported exactly once, by a request that ran it
    (as the oracle measures each request alone)."""
    from tests.integration.otlp import coverage_by_trace

    agent = start_agent(endpoints=["*#census"])
    if not agent.census_by_span:
        assert agent.core.name == "settrace"
        return
    urls = ["/items/4?q=12", "/items/13", "/health", SYNC_REQUEST[0]] * 3
    oracle = {url: _oracle(app, url)[0] for url in set(urls)}
    everything: dict[str, set[int]] = {}
    for lines in oracle.values():
        for path, found in lines.items():
            everything.setdefault(path, set()).update(found)
    agent.core.new_epoch()
    trace_ids = [0xCE0500 + i for i in range(len(urls))]

    async def drive() -> None:
        results = await asyncio.gather(*(_get(app, url, t) for url, t in zip(urls, trace_ids)))
        assert results == [200] * len(urls)

    asyncio.run(drive())
    assert agent.flush(10.0)

    def reported() -> dict[int, Any] | None:
        by_trace = coverage_by_trace(sink.coverage_spans())
        union: dict[str, set[int]] = {}
        for coverage in by_trace.values():
            for path, lines in coverage.lines.items():
                union.setdefault(path, set()).update(lines)
        return by_trace if union == everything else None

    by_trace = sink.wait_for(reported, timeout=30.0)
    seen: dict[str, set[int]] = {}
    for trace_id, coverage in by_trace.items():
        url = urls[trace_ids.index(trace_id)]
        assert coverage.mode == "census"
        for path, lines in coverage.lines.items():
            assert lines <= oracle[url].get(path, set()), (url, path)  # it ran them
            assert not lines & seen.get(path, set())  # nobody else reported them
            seen.setdefault(path, set()).update(lines)


@pytest.fixture
def uvicorn_url(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = threading.Event()
        for _ in range(400):
            if server.started:
                break
            deadline.wait(0.025)
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_uvicorn_on_loopback_exports_over_otlp_grpc(
    start_agent: AgentFactory, grpc_sink: Any, app: Any, uvicorn_url: str
) -> None:
    agent = start_agent(exporter_endpoint=grpc_sink.endpoint, exporter_protocol="grpc")
    trace_ids = [0x0E1C0000 + i for i in range(len(REQUESTS))]
    with httpx.Client(base_url=uvicorn_url) as client:
        for (url, _), trace_id in zip(REQUESTS, trace_ids):
            response = client.get(url, headers={"traceparent": traceparent(trace_id)})
            assert response.status_code == 200
    by_trace = exported(agent, grpc_sink, trace_ids)
    for (url, endpoint), trace_id in zip(REQUESTS, trace_ids):
        lines, arcs = _oracle(app, url)
        assert by_trace[trace_id].lines == lines, url
        assert by_trace[trace_id].arcs == arcs, url
        assert by_trace[trace_id].endpoint == endpoint


def test_a_route_selector_under_double_instrumentation_is_warned_about(
    start_agent: AgentFactory,
    app: Any,
    app_provider: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OpenTelemetry's ASGI middleware wrapped around an app FastAPI's instrumentation also
    traces makes FastAPI's span, the one with the route, INTERNAL: every request reaches
    runcov as a server span without a route, and a route selector selects nothing. The
    selector check names the selector and says why routes are missing."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    import runcov.agent

    monkeypatch.setattr(runcov.agent, "UNMATCHED_AFTER", 30)
    caplog.set_level("WARNING", logger="runcov")
    start_agent(endpoints=["GET /items/*"], sample_rate=0.0, metrics_interval=3600)
    outer = OpenTelemetryMiddleware(app, tracer_provider=app_provider)

    async def drive() -> None:
        for i in range(30):
            assert await _get(outer, f"/items/{i}", 0xD0B1E000 + i) == 200

    asyncio.run(drive())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        warned = [r.getMessage() for r in caplog.records if "matched none" in r.getMessage()]
        if warned:
            break
        time.sleep(0.1)
    assert len(warned) == 1
    assert warned[0].startswith("runcov: the endpoint selector 'GET /items/*' has matched none")
    assert "The busiest endpoints seen: 'GET'. Most requests came without a route" in warned[0]
    assert "internal span" in warned[0]
