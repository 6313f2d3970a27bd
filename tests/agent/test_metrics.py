"""Agent metrics over real OTLP receivers: names, units, attributes, temporality, exemplars."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import TracerProvider

from runcov.config import load_config
from runcov.metrics import AgentMetrics
from runcov.resource import build_resource
from tests.agent.otlp_sink import GRPCSink, HTTPSink

EXPECTED = {
    # name: (kind, unit)
    "runcov.requests.seen": ("sum", "{request}"),
    "runcov.requests.sampled": ("sum", "{request}"),
    "runcov.requests.dropped": ("sum", "{request}"),
    "runcov.lines.new": ("sum", "{line}"),
    "runcov.arcs.new": ("sum", "{arc}"),
    "runcov.scopes.expired": ("sum", "{request}"),
    "runcov.overhead": ("sum", "s"),
    "runcov.sample_rate": ("gauge", "1"),
}


@pytest.fixture(params=["http/protobuf", "grpc"])
def sink(request: pytest.FixtureRequest) -> Iterator[Any]:
    cls = GRPCSink if request.param == "grpc" else HTTPSink
    with cls() as s:
        s.protocol = request.param
        yield s


def make(sink: Any, tmp_path: Path, **kw: Any) -> AgentMetrics:
    config = load_config(
        environ={},
        source=[str(tmp_path)],
        exporter_endpoint=sink.endpoint,
        exporter_protocol=getattr(sink, "protocol", "http/protobuf"),
        service_name="shop",
        metrics_interval=kw.pop("metrics_interval", 3600),
        exporter_timeout=2,
        **kw,
    )
    return AgentMetrics(config, build_resource(config))


def latest_metrics(sink: Any) -> dict[str, metrics_pb2.Metric]:
    out = {}
    for req in sink.metric_requests:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "runcov"
                for m in sm.metrics:
                    out[m.name] = m
    return out


def test_instruments_as_documented(sink: Any, tmp_path: Path) -> None:
    metrics = make(sink, tmp_path)
    try:
        metrics.seen_source = lambda: {"GET /items/{id}": 2}
        metrics.sampled("GET /items/{id}", "exact", trace_id=0xABC, span_id=0xDEF)
        metrics.dropped("GET /items/{id}", "queue_full")
        metrics.dropped("GET /items/{id}", "rate_cap")
        metrics.new_coverage("GET /items/{id}", 12, 30, trace_id=0xABC, span_id=0xDEF)
        metrics.new_coverage("GET /items/{id}", 0, 0)
        metrics.scope_expired("GET /items/{id}", trace_id=0xABC)
        metrics.overhead(0.25)
        metrics.overhead(0.5)
        metrics.rate("GET /items/{id}", 0.1)
        metrics.rate("GET /items/{id}", 0.05)
        assert metrics.flush(10)
        points = sink.metric_points()
    finally:
        metrics.shutdown(5)
    got = latest_metrics(sink)
    assert set(got) == set(EXPECTED)
    for name, (kind, unit) in EXPECTED.items():
        m = got[name]
        assert m.WhichOneof("data") == kind, name
        assert m.unit == unit, name
        if kind == "sum":
            assert m.sum.is_monotonic, name
            assert (
                m.sum.aggregation_temporality
                == metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
            ), name
    assert [p[:2] for p in points["runcov.requests.seen"]] == [
        ({"runcov.endpoint": "GET /items/{id}"}, 2)
    ]
    assert [p[:2] for p in points["runcov.requests.sampled"]] == [
        ({"runcov.endpoint": "GET /items/{id}", "runcov.mode": "exact"}, 1)
    ]
    dropped = {a["runcov.reason"]: v for a, v, _ in points["runcov.requests.dropped"]}
    assert dropped == {"queue_full": 1, "rate_cap": 1}
    assert [p[:2] for p in points["runcov.lines.new"]] == [
        ({"runcov.endpoint": "GET /items/{id}"}, 12)
    ]
    assert [p[:2] for p in points["runcov.arcs.new"]] == [
        ({"runcov.endpoint": "GET /items/{id}"}, 30)
    ]
    assert [p[:2] for p in points["runcov.scopes.expired"]] == [
        ({"runcov.endpoint": "GET /items/{id}"}, 1)
    ]
    assert [p[:2] for p in points["runcov.overhead"]] == [({}, 0.75)]
    assert [p[:2] for p in points["runcov.sample_rate"]] == [
        ({"runcov.endpoint": "GET /items/{id}"}, 0.05)
    ]
    resource = {
        kv.key: kv.value.string_value for kv in sink.metric_requests[-1].resource_metrics[0]
        .resource.attributes
    }
    assert resource["service.name"] == "shop"
    assert resource["runcov.deployment.role"] == "baseline"


def test_exemplars_carry_the_sampled_trace(sink: Any, tmp_path: Path) -> None:
    metrics = make(sink, tmp_path)
    try:
        metrics.sampled("POST /pay", "exact", trace_id=0x1234, span_id=0x5678)
        metrics.dropped("POST /pay", "queue_full")  # no trace given, no current span
        assert metrics.flush(10)
        points = sink.metric_points()
    finally:
        metrics.shutdown(5)
    [(_, _, exemplars)] = points["runcov.requests.sampled"]
    assert [
        (int.from_bytes(e.trace_id, "big"), int.from_bytes(e.span_id, "big")) for e in exemplars
    ] == [(0x1234, 0x5678)]
    [(_, _, none)] = points["runcov.requests.dropped"]
    assert none == []


def test_deferred_counts_are_recorded_once_per_endpoint_with_the_same_totals(
    sink: Any, tmp_path: Path
) -> None:
    metrics = make(sink, tmp_path)
    try:
        with metrics.deferred():
            for i in range(3):
                metrics.sampled("POST /pay", "exact", trace_id=0x100 + i, span_id=0x200 + i)
                metrics.rate("POST /pay", 0.5 - i / 10)
            metrics.sampled("GET /items", "exact", trace_id=0x300, span_id=0x400)
            metrics.sampled("GET /items", "census")
            assert metrics.flush(10)
            held = sink.metric_points()
        metrics.sampled("GET /items", "exact", trace_id=0x500, span_id=0x600)  # not deferred
        assert metrics.flush(10)
        points = sink.metric_points()
    finally:
        metrics.shutdown(5)
    assert "runcov.requests.sampled" not in held and "runcov.sample_rate" not in held
    sampled = {
        (a["runcov.endpoint"], a["runcov.mode"]): (v, ex)
        for a, v, ex in points["runcov.requests.sampled"]
    }
    assert {k: v for k, (v, _) in sampled.items()} == {
        ("POST /pay", "exact"): 3,
        ("GET /items", "exact"): 2,
        ("GET /items", "census"): 1,
    }
    # The exemplar of a held-back sum is the last request it counted.
    [pay] = sampled[("POST /pay", "exact")][1]
    assert (int.from_bytes(pay.trace_id, "big"), int.from_bytes(pay.span_id, "big")) == (
        0x102,
        0x202,
    )
    [(_, rate, _)] = points["runcov.sample_rate"]
    assert rate == pytest.approx(0.3)


def test_current_sampled_span_becomes_the_exemplar(tmp_path: Path) -> None:
    with HTTPSink() as sink:
        metrics = make(sink, tmp_path)
        tracer = TracerProvider().get_tracer("app")
        try:
            with tracer.start_as_current_span("request") as span:
                metrics.sampled("GET /", "exact")
                ctx = span.get_span_context()
            assert metrics.flush(10)
            [(_, _, exemplars)] = sink.metric_points()["runcov.requests.sampled"]
        finally:
            metrics.shutdown(5)
    assert [int.from_bytes(e.trace_id, "big") for e in exemplars] == [ctx.trace_id]
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_endpoints_are_scrubbed(tmp_path: Path) -> None:
    with HTTPSink() as sink:
        metrics = make(sink, tmp_path, redact=[r"tenant-\d+"])
        try:
            metrics.seen_source = lambda: {"GET /tenant-42/items": 1}
            metrics.start()
            assert metrics.flush(10)
            [(attrs, _, _)] = sink.metric_points()["runcov.requests.seen"]
        finally:
            metrics.shutdown(5)
        assert attrs == {"runcov.endpoint": "GET /[REDACTED]/items"}
        assert all(b"tenant-42" not in body for body in sink.raw)


def test_periodic_export(tmp_path: Path) -> None:
    with HTTPSink() as sink:
        metrics = make(sink, tmp_path, metrics_interval=0.2)
        try:
            metrics.seen_source = lambda: {"GET /": 1}
            metrics.start()
            sink.wait_for(lambda: "runcov.requests.seen" in sink.metric_points())
        finally:
            metrics.shutdown(5)


def test_disabled_metrics_are_a_no_op(tmp_path: Path) -> None:
    with HTTPSink() as sink:
        for metrics in (
            make(sink, tmp_path, metrics_interval=0),
            make(sink, tmp_path, enabled=False),
        ):
            assert metrics.enabled is False
            metrics.seen_source = lambda: {"GET /": 1}
            metrics.start()
            metrics.sampled("GET /", "exact")
            metrics.dropped("GET /", "queue_full")
            metrics.new_coverage("GET /", 1, 1)
            metrics.overhead(1.0)
            metrics.rate("GET /", 0.5)
            assert metrics.flush(1)
            assert metrics.shutdown(1)
            assert metrics._inst is None
        assert sink.attempts == 0


def test_bad_input_and_dead_endpoint_never_raise(tmp_path: Path) -> None:
    with HTTPSink() as probe:
        endpoint = probe.endpoint  # closed again: nothing listens there
    config = load_config(
        environ={}, source=[str(tmp_path)], exporter_endpoint=endpoint, exporter_timeout=0.5,
        metrics_interval=3600,
    )
    metrics = AgentMetrics(config, build_resource(config))
    metrics.sampled(None, "exact")  # type: ignore[arg-type]
    metrics.rate("GET /", "fast")  # type: ignore[arg-type]
    metrics.sampled("GET /", "exact")
    assert metrics.errors == 1  # the rate that is not a number
    assert metrics.flush(10) is False
    assert metrics.export_failures >= 1
    metrics.shutdown(5)


def test_the_pipeline_is_built_off_the_first_requests_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's first counted request starts the metrics pipeline on a thread of its own
    (building it takes a tenth of a second or more: not that request's time), and a stop
    right after it still exports what was counted."""
    from runcov import metrics as metrics_module
    from runcov.agent import Agent

    built_on: list[str] = []
    real = metrics_module._Instruments.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        built_on.append(threading.current_thread().name)
        time.sleep(0.3)  # a slow build, so that the stop below overtakes it
        real(self, *args, **kwargs)

    monkeypatch.setattr(metrics_module._Instruments, "__init__", recording)
    with HTTPSink() as sink:
        agent = Agent.start(
            source=[str(tmp_path)], endpoints=["GET /a"], sample_rate=0.0,
            exporter_endpoint=sink.endpoint, metrics_interval=3600, saturation=False,
            service_name="shop",
        )
        try:
            agent.seen("GET", "/a")
        finally:
            agent.stop(10)
        assert built_on == ["runcov-metrics-start"]
        seen = latest_metrics(sink)["runcov.requests.seen"]
        assert [p.as_int for p in seen.sum.data_points] == [1]


def test_the_collector_knows_every_drop_reason_the_agent_counts() -> None:
    """The collector lists every drop reason in its agent view (0 when none was counted):
    its list is the agent's, so a reason added to one must be added to the other."""
    from runcov.metrics import DROP_REASONS
    from runcov_collector.store import agent as collector_agent

    assert tuple(collector_agent.DROP_REASONS) == tuple(DROP_REASONS)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_failed_metric_exports_are_told_once_a_minute_not_at_each_retry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, protocol: str
) -> None:
    """OpenTelemetry's OTLP exporters log every attempt and retry of a failed export; for
    runcov's own metrics that would fill the application's log while the collector is down.
    Those records are kept out, and runcov says it once a minute with the exporter's first
    word on it. The same exporters, run for the application on another thread, still log."""
    port = _closed_port()
    config = load_config(
        environ={},
        source=[str(tmp_path)],
        exporter_endpoint=f"http://127.0.0.1:{port}",
        exporter_protocol=protocol,
        service_name="shop",
        metrics_interval=0.2,
        exporter_timeout=1.5,
    )
    metrics = AgentMetrics(config, build_resource(config))
    caplog.set_level(logging.DEBUG)
    try:
        metrics.dropped("GET /", "rate_cap")
        deadline = time.monotonic() + 30
        while metrics.export_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metrics.export_failures >= 2
        records = list(caplog.records)
    finally:
        metrics.shutdown(2)
    otlp = [r for r in records if r.name.startswith("opentelemetry.exporter.otlp")]
    assert otlp == []
    ours = [r for r in records if "could not export the agent's metrics" in r.getMessage()]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert ours[0].levelno == logging.WARNING
    assert f"127.0.0.1:{port}" in ours[0].getMessage()
    assert "(1 failed export(s): " in ours[0].getMessage()  # (the exporter's own words follow)

    # An application's exporter of the same kind, on its own thread: its records are its own.
    from runcov.metrics import _make_metric_exporter

    caplog.clear()
    app_exporter = _make_metric_exporter(config)
    data = MetricsData(resource_metrics=[])
    worker = threading.Thread(target=lambda: app_exporter.export(data, timeout_millis=1500))
    worker.start()
    worker.join(30)
    assert any(r.name.startswith("opentelemetry.exporter.otlp") for r in caplog.records)
