"""runcov inside a Django service instrumented by opentelemetry-instrumentation-django.

Django's instrumentation sets ``http.route`` only after the span started, so runcov decides on
the method at start and checks the final route against the selectors at the end.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.agent.otlp_sink import HTTPSink
from tests.integration.conftest import AgentFactory, exported, oracle, traceparent

REQUESTS = [
    ("/items/3?q=1", "GET /items/<int:item_id>"),
    ("/items/4?q=12", "GET /items/<int:item_id>"),
    ("/items/13", "GET /items/<int:item_id>"),
    ("/health", "GET /health"),
]


@pytest.fixture
def client(app_provider: Any) -> Any:
    from tests.integration.apps.django_app import configure

    configure()
    from django.test import Client

    return Client()


def _get(client: Any, url: str, trace_id: int) -> int:
    return int(client.get(url, HTTP_TRACEPARENT=traceparent(trace_id)).status_code)


def test_late_routes_are_measured_like_the_oracle(
    start_agent: AgentFactory, sink: HTTPSink, client: Any
) -> None:
    agent = start_agent()
    trace_ids = [0xD1A6000 + i for i in range(len(REQUESTS))]
    for (url, _), trace_id in zip(REQUESTS, trace_ids):
        assert _get(client, url, trace_id) == 200
    by_trace = exported(agent, sink, trace_ids)
    for (url, endpoint), trace_id in zip(REQUESTS, trace_ids):
        lines, arcs = oracle(lambda: _get(client, url, 0xABC))  # noqa: B023
        assert "shop/logic.py" in lines
        assert by_trace[trace_id].lines == lines, url
        assert by_trace[trace_id].arcs == arcs, url
        assert by_trace[trace_id].endpoint == endpoint
        assert by_trace[trace_id].status_class == "2xx"


def test_a_late_route_outside_the_selectors_is_dropped_and_counted(
    start_agent: AgentFactory, sink: HTTPSink, client: Any
) -> None:
    agent = start_agent(endpoints=["GET /items/*"], metrics_interval=60)
    assert _get(client, "/health", 0xD00D1) == 200
    assert _get(client, "/items/8", 0xD00D2) == 200
    by_trace = exported(agent, sink, [0xD00D2])
    assert 0xD00D1 not in by_trace
    assert by_trace[0xD00D2].endpoint == "GET /items/<int:item_id>"

    def dropped() -> Any:
        points = sink.metric_points().get("runcov.requests.dropped", [])
        return [
            (attrs, value)
            for attrs, value, _ in points
            if attrs.get("runcov.reason") == "route_mismatch"
        ]

    points = sink.wait_for(dropped)
    assert points[-1] == ({"runcov.endpoint": "GET /health", "runcov.reason": "route_mismatch"}, 1)
    seen = {a["runcov.endpoint"]: v for a, v, _ in sink.metric_points()["runcov.requests.seen"]}
    assert seen == {"GET /items/<int:item_id>": 1}
