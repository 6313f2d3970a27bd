"""runcov inside a Flask service instrumented by opentelemetry-instrumentation-flask."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.trace import SpanKind

from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.flask_app import create_app
from tests.integration.conftest import AgentFactory, exported, oracle, traceparent

# (method, url, json body, expected endpoint, expected status class)
REQUESTS = [
    ("GET", "/items/3?q=1", None, "GET /items/<int:item_id>", "2xx"),
    ("GET", "/items/4?q=12", None, "GET /items/<int:item_id>", "2xx"),
    ("GET", "/items/13", None, "GET /items/<int:item_id>", "2xx"),
    ("POST", "/orders", {"item": 5, "q": 2}, "POST /orders", "2xx"),
    ("GET", "/health", None, "GET /health", "2xx"),
    ("GET", "/boom", None, "GET /boom", "5xx"),
]


@pytest.fixture
def flask_client(app_provider: Any, semconv: str) -> Any:
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    return app.test_client()


def _send(client: Any, method: str, url: str, body: Any, trace_id: int) -> int:
    headers = {"traceparent": traceparent(trace_id)}
    response = client.open(url, method=method, json=body, headers=headers)
    return int(response.status_code)


def test_each_request_exports_exactly_its_own_lines_and_arcs(
    start_agent: AgentFactory, sink: HTTPSink, flask_client: Any, app_spans: Any
) -> None:
    agent = start_agent()
    trace_ids = [0xF1A5C000 + i for i in range(len(REQUESTS))]
    for (method, url, body, _, _), trace_id in zip(REQUESTS, trace_ids):
        _send(flask_client, method, url, body, trace_id)
    by_trace = exported(agent, sink, trace_ids)

    server_spans = {
        s.context.trace_id: s for s in app_spans.get_finished_spans() if s.kind == SpanKind.SERVER
    }
    for (method, url, body, endpoint, status), trace_id in zip(REQUESTS, trace_ids):
        got = by_trace[trace_id]
        lines, arcs = oracle(lambda: _send(flask_client, method, url, body, 0xABC))  # noqa: B023
        assert got.lines == lines, url
        assert got.arcs == arcs, url
        assert got.endpoint == endpoint
        assert got.status_class == status
        assert got.mode == "exact"
        # The coverage is a child of the request's server span, in the request's trace.
        assert got.parent_span_id == server_spans[trace_id].context.span_id
    # Different requests ran different code: the sets are per request, not per process.
    assert by_trace[trace_ids[0]].arcs != by_trace[trace_ids[1]].arcs
    assert "shop/logic.py" in by_trace[trace_ids[2]].lines
    health, item = by_trace[trace_ids[4]], by_trace[trace_ids[0]]
    assert health.lines["shop/logic.py"] != item.lines["shop/logic.py"]


def test_unselected_endpoints_are_not_exported(
    start_agent: AgentFactory, sink: HTTPSink, flask_client: Any
) -> None:
    agent = start_agent(endpoints=["GET /items/*"])
    _send(flask_client, "GET", "/health", None, 0x1001)
    _send(flask_client, "POST", "/orders", {"item": 1}, 0x1002)
    _send(flask_client, "GET", "/items/7", None, 0x1003)
    by_trace = exported(agent, sink, [0x1003])
    assert set(by_trace) == {0x1003}
    assert by_trace[0x1003].endpoint == "GET /items/<int:item_id>"


def test_the_request_span_is_left_untouched(
    start_agent: AgentFactory, sink: HTTPSink, flask_client: Any, app_spans: Any
) -> None:
    agent = start_agent()
    _send(flask_client, "GET", "/items/2", None, 0x2001)
    exported(agent, sink, [0x2001])
    (server,) = [s for s in app_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert not [k for k in (server.attributes or {}) if k.startswith("runcov")]
    # runcov's spans go through its own provider, never the application's.
    assert all(s.instrumentation_scope.name != "runcov" for s in app_spans.get_finished_spans())


def test_a_selector_that_matches_no_request_is_named_once(
    start_agent: AgentFactory,
    flask_client: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A selector written with a URL path instead of the route template, or misspelt, is
    logged once its kind of request has been seen often enough, with the endpoints seen; a
    selector that matches, and a job selector in a process that ran no job, are not."""
    import runcov.agent

    monkeypatch.setattr(runcov.agent, "UNMATCHED_AFTER", 40)
    caplog.set_level("WARNING", logger="runcov")
    start_agent(
        endpoints=["GET /items/7", "POST /order", "GET /health", "job billing.*"],
        sample_rate=0.0,
        metrics_interval=3600,
    )

    def warned() -> list[str]:
        return [r.getMessage() for r in caplog.records if "has matched none" in r.getMessage()]

    def send(count: int, base: int) -> None:
        for i in range(count):
            _send(flask_client, "GET", f"/items/{i}", None, base + 2 * i)
            _send(flask_client, "GET", "/health", None, base + 2 * i + 1)

    send(15, 0x5E1EC700)
    time.sleep(2.5)  # two rounds of the export worker, which checks the selectors
    assert warned() == []  # 30 HTTP requests: not enough to tell yet

    send(15, 0x5E1EC800)
    deadline = time.monotonic() + 10
    while len(warned()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    messages = warned()
    assert len(messages) == 2, messages
    by_selector = {m.split("'")[1]: m for m in messages}
    assert set(by_selector) == {"GET /items/7", "POST /order"}
    counted = int(by_selector["GET /items/7"].split("first ")[1].split()[0])
    assert 40 <= counted <= 60  # (as many as were counted at the worker's round)
    assert "'GET /items/<int:item_id>'" in by_selector["POST /order"]
    assert "'GET /health'" in by_selector["POST /order"]
    assert "without a route" not in by_selector["POST /order"]  # (Flask's spans carry it)

    send(15, 0x5E1EC900)  # more of the same: nothing said twice
    time.sleep(2.5)
    assert len(warned()) == 2
