"""Agent metrics end to end: OpenTelemetry SDK meter providers with the agent's instruments
export over OTLP to a running collector; the query API, /metrics and the dashboard show them."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from runcov_collector.store import agent

RELEASE = {"service": "shop", "version": "1.4.0", "environment": "prod", "role": "canary"}
ITEMS = "GET /items/{item_id}"
CHECKOUT = "POST /checkout"
TOKEN = "ingest-secret-token"


class AgentProcess:
    """One agent's metrics pipeline as runcov sets it up: its own meter provider (scope
    ``runcov``, cumulative temporality) exporting over OTLP to the collector."""

    def __init__(self, client: Any, instance: str, transport: str) -> None:
        cumulative = dict.fromkeys(
            (Counter, ObservableCounter, ObservableGauge), AggregationTemporality.CUMULATIVE
        )
        if transport == "http":
            exporter: Any = HttpMetricExporter(
                endpoint=f"{client.base}/v1/metrics",
                headers={"authorization": f"Bearer {TOKEN}"},
                preferred_temporality=cumulative,
            )
        else:
            exporter = GrpcMetricExporter(
                endpoint=f"127.0.0.1:{client.collector.grpc_port}",
                insecure=True,
                headers=(("authorization", f"Bearer {TOKEN}"),),
                preferred_temporality=cumulative,
            )
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        resource = {
            "service.name": "shop",
            "service.version": "1.4.0",
            "deployment.environment.name": "prod",
            "runcov.deployment.role": "canary",
            "service.instance.id": instance,
        }
        self.provider = MeterProvider(resource=Resource(resource), metric_readers=[reader])
        self.stopped = False
        meter = self.provider.get_meter("runcov", "0.1.0")
        self.seen_counts: dict[str, int] = {}
        meter.create_observable_counter(
            "runcov.requests.seen", callbacks=[self._seen], unit="{request}"
        )
        self.sampled = meter.create_counter("runcov.requests.sampled", "{request}")
        self.dropped = meter.create_counter("runcov.requests.dropped", "{request}")
        self.lines = meter.create_counter("runcov.lines.new", "{line}")
        self.arcs = meter.create_counter("runcov.arcs.new", "{arc}")
        self.overhead = meter.create_counter("runcov.overhead", "s")
        self.rate = meter.create_gauge("runcov.sample_rate", "1")
        self.expired = meter.create_counter("runcov.scopes.expired", "{request}")

    def _seen(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"runcov.endpoint": e}) for e, n in self.seen_counts.items()]

    def requests(self, endpoint: str, seen: int, sampled: int, mode: str = "exact") -> None:
        self.seen_counts[endpoint] = self.seen_counts.get(endpoint, 0) + seen
        self.sampled.add(sampled, {"runcov.endpoint": endpoint, "runcov.mode": mode})

    def drop(self, endpoint: str, reason: str, count: int = 1) -> None:
        self.dropped.add(count, {"runcov.endpoint": endpoint, "runcov.reason": reason})

    def export(self) -> None:
        assert self.provider.force_flush(30_000)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.provider.shutdown()


@pytest.fixture(params=["http", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_agent_metrics_of_processes_and_restarts_add_up(
    client: Any, transport: str, make_agent: Callable[..., AgentProcess]
) -> None:
    """Two processes of one release, one of which restarts its counters under the same
    ``service.instance.id`` (the agent stopped and started again in one process): every
    count is there once, broken down by drop reason, endpoint and mode."""
    first = make_agent(client, "pod-7", transport)
    first.requests(ITEMS, seen=100, sampled=4)
    first.drop(ITEMS, "rate_cap", 3)
    first.overhead.add(0.2)
    first.rate.set(0.05, {"runcov.endpoint": ITEMS})
    first.export()
    first.requests(ITEMS, seen=50, sampled=2)
    first.drop(ITEMS, "queue_full")
    first.lines.add(30, {"runcov.endpoint": ITEMS})
    first.arcs.add(35, {"runcov.endpoint": ITEMS})
    first.export()  # cumulative: 150 seen, 6 sampled so far
    first.stop()

    again = make_agent(client, "pod-7", transport)  # same process, counters from 0
    again.requests(ITEMS, seen=20, sampled=1)
    again.drop("", "census_unclaimed", 2)
    again.overhead.add(0.05)
    again.rate.set(0.02, {"runcov.endpoint": ITEMS})
    again.export()

    other = make_agent(client, "pod-8", transport)
    other.requests(CHECKOUT, seen=40, sampled=3, mode="census")
    other.drop(CHECKOUT, "export_failed")
    other.overhead.add(0.15)
    other.rate.set(0.1, {"runcov.endpoint": CHECKOUT})
    other.export()
    other.stop()
    again.stop()

    answer = client.query("/api/v1/agent", **RELEASE)
    reasons = dict.fromkeys(agent.DROP_REASONS, 0)
    assert answer["release"] == RELEASE
    assert answer["processes"] == 2
    assert (answer["requests_seen"], answer["requests_sampled"]) == (150 + 20 + 40, 6 + 1 + 3)
    assert answer["requests_dropped"] == 3 + 1 + 2 + 1
    assert answer["dropped_by_reason"] == {
        **reasons,
        "rate_cap": 3,
        "queue_full": 1,
        "census_unclaimed": 2,
        "export_failed": 1,
    }
    assert answer["sampled_by_mode"] == {"exact": 7, "census": 3}
    assert (answer["lines_new"], answer["arcs_new"]) == (30, 35)
    assert answer["overhead_seconds"] == pytest.approx(0.4)
    assert answer["overhead_per_sampled_request_seconds"] == pytest.approx(0.04)
    items, checkout = sorted(answer["endpoints"], key=lambda e: e["endpoint"])
    assert (items["endpoint"], checkout["endpoint"]) == (ITEMS, CHECKOUT)
    assert (items["requests_seen"], items["requests_sampled"]) == (170, 7)
    assert items["dropped_by_reason"] == {**reasons, "rate_cap": 3, "queue_full": 1}
    # The restarted process's rate replaced its earlier one (a gauge has no runs).
    assert items["sample_rate"]["rate"] == 0.02
    assert items["sample_rate"]["processes"] == 1
    assert checkout["sample_rate"]["rate"] == 0.1
    assert checkout["dropped_by_reason"] == {**reasons, "export_failed": 1}

    (release,) = client.query("/api/v1/releases", service="shop")["releases"]
    assert (release["requests_seen"], release["requests_dropped"]) == (210, 7)
    assert release["requests_dropped_by_reason"] == answer["dropped_by_reason"]

    text = client.get("/metrics", token=None).text
    labels = 'environment="prod",role="canary",service="shop",version="1.4.0"'

    def sample(name: str, extra: str = "") -> float:
        pattern = rf"^runcov_collector_release_agent_{name}_total{{(.*)}} (\S+)$"
        for found in re.finditer(pattern, text, re.M):
            got = ",".join(sorted(found.group(1).split(",")))
            if got == ",".join(sorted((labels + extra).split(","))):
                return float(found.group(2))
        raise AssertionError(f"no {name}{{{labels}{extra}}} in\n{text}")

    assert sample("requests_seen") == 210
    assert sample("requests_sampled") == 10
    assert sample("requests_dropped", ',reason="rate_cap"') == 3
    assert sample("requests_dropped", ',reason="tracer_busy"') == 0
    assert sample("overhead_seconds") == pytest.approx(0.4)


def test_requests_cut_at_the_maximum_scope_age_are_counted(
    client: Any, make_agent: Callable[..., AgentProcess]
) -> None:
    """``runcov.scopes.expired`` (sampled requests still running at ``max_scope_seconds``)
    shows as ``requests_expired``, per release and per endpoint."""
    process = make_agent(client, "pod-1", "http")
    process.requests(ITEMS, seen=10, sampled=3)
    process.expired.add(2, {"runcov.endpoint": ITEMS})
    process.export()
    answer = client.query("/api/v1/agent", **RELEASE)
    assert answer["requests_expired"] == 2
    (items,) = answer["endpoints"]
    assert (items["endpoint"], items["requests_expired"]) == (ITEMS, 2)


def test_agent_view_rejects_a_window_and_unknown_releases(client: Any) -> None:
    response = client.get("/api/v1/agent", service="shop", since="1h")
    assert response.status_code == 400
    assert "since/until do not apply" in response.json()["error"]
    assert client.get("/api/v1/agent", service="shop").status_code == 404
    assert client.get("/api/v1/agent").status_code == 400


@pytest.fixture
def make_agent() -> Any:
    started: list[AgentProcess] = []

    def make(client: Any, instance: str, transport: str) -> AgentProcess:
        process = AgentProcess(client, instance, transport)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()
