"""End to end: the real agent in a Flask service exports over loopback into the real collector.

The collector's query API must then hold, per file, exactly the union of the lines and arcs that
``runcov.testing.capture_coverage`` measures for the same requests — over OTLP/HTTP and OTLP/gRPC,
with denominators and per-endpoint data.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor

import runcov
from runcov_collector.app import Collector
from runcov_collector.config import Config as CollectorConfig
from tests.integration.apps.flask_app import create_app
from tests.integration.conftest import APPS, oracle, traceparent

REQUESTS = [
    ("GET", "/items/3?q=1", None),
    ("GET", "/items/4?q=12", None),
    ("GET", "/items/13", None),
    ("POST", "/orders", {"item": 5, "q": 2}),
    ("GET", "/health", None),
]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    config = CollectorConfig(
        http_port=0,
        grpc_port=0,
        store_url=f"sqlite:///{tmp_path / 'collector.db'}",
        no_auth=True,
        retention_hours=0,
    )
    with Collector(config).start() as running:
        yield running


def _query(collector: Collector, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{collector.http_port}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _send(client: Any, method: str, url: str, body: Any, trace_id: int) -> int:
    response = client.open(
        url, method=method, json=body, headers={"traceparent": traceparent(trace_id)}
    )
    return int(response.status_code)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_collector_holds_the_union_of_what_the_agent_measured(
    collector: Collector, app_provider: Any, protocol: str
) -> None:
    app = create_app()
    FlaskInstrumentor().instrument_app(app, tracer_provider=app_provider)
    client = app.test_client()
    port = collector.http_port if protocol == "http/protobuf" else collector.grpc_port
    service = "e2e-" + protocol.split("/")[0]
    agent = runcov.start(
        source=[str(APPS)],
        exporter_endpoint=f"http://127.0.0.1:{port}",
        exporter_protocol=protocol,
        sample_rate=1.0,
        max_per_second=0,
        saturation=False,
        metrics_interval=0,
        service_name=service,
        service_version="2.0",
        environment="test",
        role="canary",
    )
    try:
        for index, (method, url, body) in enumerate(REQUESTS * 2):
            assert _send(client, method, url, body, 0xE2E00000 + index) < 500
        assert agent.flush(15.0)
        stats = agent.exporter.counters()
    finally:
        runcov.stop(timeout=10.0)

    # The oracle: the same requests measured by capture_coverage (no agent running).
    want_lines: dict[str, set[int]] = {}
    want_arcs: dict[str, set[tuple[int, int]]] = {}
    for method, url, body in REQUESTS:
        lines, arcs = oracle(lambda: _send(client, method, url, body, 0xABC))  # noqa: B023
        for path, found in lines.items():
            want_lines.setdefault(path, set()).update(found)
        for path, found_arcs in arcs.items():
            want_arcs.setdefault(path, set()).update(found_arcs)

    release = {"service": service, "version": "2.0", "environment": "test", "role": "canary"}
    answer = _query(collector, "/api/v1/coverage", detail="1", **release)
    assert answer["release"] == release
    got_lines = {f["path"]: {line for line, _, _ in f["lines"]} for f in answer["files"]}
    got_arcs = {f["path"]: {(a, b) for a, b, _, _ in f["arcs"]} for f in answer["files"]}
    assert {p: v for p, v in got_lines.items() if v} == want_lines
    assert {p: v for p, v in got_arcs.items() if v} == want_arcs
    # Every request was sampled once; a retried or duplicated part would not count twice.
    assert answer["totals"]["requests"] == len(REQUESTS) * 2, stats
    # Denominators arrived: each file has executable lines, covering what ran.
    for entry in answer["files"]:
        assert entry["lines_total"] > 0, entry["path"]
        assert set(got_lines[entry["path"]]) <= set(entry["executable_lines"]), entry["path"]
    # Hit counts and first trace ids: each request ran twice, under two trace ids.
    health_lines = _query(
        collector, "/api/v1/coverage", detail="1", endpoint="GET /health", **release
    )
    assert health_lines["totals"]["requests"] == 2
    for entry in health_lines["files"]:
        for _line, hits, first_trace in entry["lines"]:
            assert hits == 2
            assert int(first_trace, 16) in (0xE2E00004,)
