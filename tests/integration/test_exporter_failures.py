"""An OTLP endpoint that is down or hangs costs the service nothing: requests are answered,
runcov's losses are counted."""

from __future__ import annotations

import socket
from typing import Any

from opentelemetry.instrumentation.flask import FlaskInstrumentor

from tests.agent.otlp_sink import HTTPSink
from tests.integration.apps.flask_app import create_app
from tests.integration.conftest import AgentFactory


def _client(app_provider: Any) -> Any:
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    return app.test_client()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_endpoint_down(start_agent: AgentFactory, app_provider: Any) -> None:
    agent = start_agent(
        exporter_endpoint=f"http://127.0.0.1:{_closed_port()}", exporter_timeout=1.0
    )
    client = _client(app_provider)
    statuses = [client.get(f"/items/{i}").status_code for i in range(40)]
    assert statuses == [200] * 40
    assert not agent.flush(5.0)
    counters = agent.exporter.counters()
    assert counters["submitted"] == 40
    assert counters["export_failed"] == 40
    assert counters["requests_exported"] == 0


def test_endpoint_hanging(start_agent: AgentFactory, sink: HTTPSink, app_provider: Any) -> None:
    sink.behaviour = "hang"
    agent = start_agent(queue_size=4, exporter_timeout=2.0)
    unmeasured: list[str] = []
    dropped = agent.metrics.dropped

    def count(endpoint: str, reason: str, **ids: Any) -> None:
        if reason == "queue_full" and not ids:  # turned away before it was measured
            unmeasured.append(endpoint)
        dropped(endpoint, reason, **ids)

    agent.metrics.dropped = count
    client = _client(app_provider)
    try:
        statuses = [client.get(f"/items/{i}?q=2").status_code for i in range(300)]
        assert statuses == [200] * 300
        assert sink.wait_for(lambda: sink.attempts >= 1)
        assert not agent.flush(1.0)  # cannot complete while the endpoint hangs
        counters = agent.exporter.counters
        # Every request is accounted for: queued, or dropped and counted when the queue was
        # full (most of them before they were measured: no cost for what cannot leave).
        assert counters()["submitted"] + counters()["queue_full"] + len(unmeasured) == 300
        assert len(unmeasured) > 250
        # What was queued is lost once the hanging export times out, and counted as such.
        sink.wait_for(lambda: counters()["export_failed"] > 0)
        assert not sink.coverage_spans()
    finally:
        sink.release()
