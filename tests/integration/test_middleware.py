"""runcov's WSGI and ASGI middleware, for services without OpenTelemetry instrumentation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from werkzeug.test import Client

from runcov.middleware import RuncovASGIMiddleware, RuncovWSGIMiddleware
from runcov.testing import capture_coverage
from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.fastapi_app import create_app as create_fastapi_app
from tests.integration.apps.plain_apps import asgi_app, route_of, wsgi_app
from tests.integration.conftest import (
    APPS,
    AgentFactory,
    exported,
    oracle,
    reported,
    traceparent,
)
from tests.integration.otlp import coverage_by_trace


def _wsgi_route(environ: dict[str, Any]) -> str:
    return route_of(environ["PATH_INFO"])


def test_wsgi_middleware_joins_the_callers_trace_and_matches_the_oracle(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    client = Client(RuncovWSGIMiddleware(wsgi_app, route=_wsgi_route))
    parent = 0x00F0F0F0F0F0F0F1
    response = client.get("/items/4", headers={"traceparent": traceparent(0x5EED, parent)})
    assert response.status_code == 200
    assert response.json == {"item": 4, "stock": 96, "price": 14}
    missing = client.get("/nowhere", headers={"traceparent": traceparent(0x5EEE, parent)})
    assert missing.status_code == 404
    missing.close()  # what a server does once the response is sent
    by_trace = exported(agent, sink, [0x5EED, 0x5EEE])

    got = by_trace[0x5EED]
    assert got.endpoint == "GET /items/{item_id}"
    assert got.parent_span_id == parent
    assert got.status_class == "2xx"
    lines, arcs = oracle(lambda: Client(wsgi_app).get("/items/4").data)
    assert (got.lines, got.arcs) == (lines, arcs)
    assert by_trace[0x5EEE].status_class == "4xx"


def test_wsgi_without_traceparent_starts_a_trace_and_never_uses_raw_paths_by_default(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    assert Client(RuncovWSGIMiddleware(wsgi_app)).get("/items/123456").json["item"] == 123456
    assert Client(RuncovWSGIMiddleware(wsgi_app, raw_path=True)).get("/items/42").json

    assert agent.flush(10.0)
    by_trace = sink.wait_for(lambda: (t := coverage_by_trace(sink.coverage_spans()))
                             and len(t) == 2 and t)
    endpoints = sorted(t.endpoint for t in by_trace.values())
    # Without a resolver the endpoint is the method alone: the raw path needs an opt-in.
    assert endpoints == ["GET", "GET /items/42"]
    assert all(t.parent_span_id != 0 for t in by_trace.values())
    assert b"123456" not in b"".join(sink.raw)


def test_asgi_middleware_with_resolver_and_with_starlette_routes(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    plain = RuncovASGIMiddleware(asgi_app, route=lambda scope: route_of(scope["path"]))
    # A FastAPI app without OpenTelemetry: the route template comes from Starlette's routing.
    fastapi_app = create_fastapi_app()
    starlette = RuncovASGIMiddleware(fastapi_app)

    async def get(app: Any, url: str, trace_id: int) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            headers = {"traceparent": traceparent(trace_id)}
            return (await client.get(url, headers=headers)).status_code

    async def drive() -> None:
        assert await get(plain, "/items/3", 0xA5610) == 200
        assert await get(starlette, "/items/13", 0xA5611) == 200
        assert await get(starlette, "/items/4?q=12", 0xA5612) == 200

    asyncio.run(drive())
    by_trace = exported(agent, sink, [0xA5610, 0xA5611, 0xA5612])
    assert by_trace[0xA5610].endpoint == "GET /items/{item_id}"
    assert by_trace[0xA5611].endpoint == "GET /items/{item_id}"
    assert by_trace[0xA5612].endpoint == "GET /items/{item_id}"

    async def measure(app: Any, url: str) -> Any:
        async with capture_coverage(source=[str(APPS)]) as cap:
            await get(app, url, 0xABC)
        return reported(cap)

    assert (by_trace[0xA5610].lines, by_trace[0xA5610].arcs) == asyncio.run(
        measure(asgi_app, "/items/3")
    )
    assert (by_trace[0xA5612].lines, by_trace[0xA5612].arcs) == asyncio.run(
        measure(fastapi_app, "/items/4?q=12")
    )


def test_a_response_never_closed_does_not_stop_later_requests_being_measured(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    agent = start_agent()
    client = Client(RuncovWSGIMiddleware(wsgi_app, route=_wsgi_route))
    # A broken server: neither reads nor closes the body of the first response.
    first = client.get("/items/1", headers={"traceparent": traceparent(0xC105E1)})
    second = client.get("/items/2", headers={"traceparent": traceparent(0xC105E2)})
    assert second.json["item"] == 2
    by_trace = exported(agent, sink, [0xC105E1, 0xC105E2])
    assert by_trace[0xC105E2].lines == oracle(lambda: Client(wsgi_app).get("/items/2").data)[0]
    assert by_trace[0xC105E1].endpoint == "GET /items/{item_id}"
    first.close()


#: Trace ids whose randomness (low 56 bits) is below / above the threshold of any rate < 1.
UNSAMPLED = 0x5EED0000000000000000000000000001
SAMPLED = 0x5EED00000000000000FFFFFFFFFFFFFF


def test_requests_not_measured_are_counted_and_pass_through_untouched(
    start_agent: AgentFactory, sink: HTTPSink
) -> None:
    """A request that cannot be sampled is counted as seen, and the middleware steps aside:
    the application gets the server's own ``start_response`` / ``send`` and its response is
    not wrapped (ASGI: also when the route is learnt at the end). Sampled requests, and WSGI
    requests whose route is learnt at their end, go through the full path."""
    agent = start_agent(sample_rate=0.5, metrics_interval=3600)
    given: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        given.append(start_response)
        return wsgi_app(environ, start_response)

    client = Client(RuncovWSGIMiddleware(app, route=_wsgi_route))
    for trace_id in (UNSAMPLED, UNSAMPLED + 2, SAMPLED):
        response = client.get("/items/7", headers={"traceparent": traceparent(trace_id)})
        assert response.json["item"] == 7
        response.close()
    assert [f.__name__ for f in given] != ["record_status"] * 3
    assert [f.__name__ == "record_status" for f in given] == [False, False, True]
    # No resolver and no raw path: the endpoint is the method alone, final at the start.
    plain = Client(RuncovWSGIMiddleware(wsgi_app))
    assert plain.get("/health", headers={"traceparent": traceparent(UNSAMPLED)}).json

    # A route the application itself finds (None when the request starts): the full path,
    # and the request is counted under that route at its end.
    def routing_app(environ: dict[str, Any], start_response: Any) -> Any:
        environ["app.route"] = "/routed/{x}"
        return app(environ, start_response)

    routed = Client(RuncovWSGIMiddleware(routing_app, route=lambda env: env.get("app.route")))
    response = routed.get("/items/9", headers={"traceparent": traceparent(UNSAMPLED)})
    assert response.json["item"] == 9
    response.close()
    assert given[-1].__name__ == "record_status"

    sends: list[Any] = []

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        sends.append(send)
        await asgi_app(scope, receive, send)

    async def drive() -> None:
        resolved = RuncovASGIMiddleware(asgi, route=lambda scope: route_of(scope["path"]))
        late = RuncovASGIMiddleware(asgi)  # the route is read at the end (none here)
        for app_ in (resolved, late):
            transport = httpx.ASGITransport(app=app_)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                headers = {"traceparent": traceparent(UNSAMPLED)}
                assert (await c.get("/items/8", headers=headers)).status_code == 200

    asyncio.run(drive())
    assert [s.__name__ == "record_status" for s in sends] == [False, False]

    assert agent._seen_totals() == {
        "GET /items/{item_id}": 4,  # three WSGI requests, one ASGI with a resolver
        "GET": 2,  # the WSGI request without a resolver, the ASGI one without a route
        "GET /routed/{x}": 1,
    }
    by_trace = exported(agent, sink, [SAMPLED])
    assert set(by_trace) == {SAMPLED}
