"""The coverage exporter against real OTLP receivers (HTTP and gRPC) on loopback."""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

from runcov.config import Config, load_config
from runcov.errors import ConfigError
from runcov.export.exporter import CoverageExporter, RequestRecord
from runcov.export.wire import MAX_PAYLOAD_BYTES, decode
from runcov.resource import build_resource
from runcov.tracing._base import CoverageData
from tests.agent.otlp_sink import GRPCSink, HTTPSink

VIEWS = '''\
def checkout(cart):
    total = 0
    for item in cart:
        if item > 3:
            total += item
    return total


def customer_acme_report():
    return 1
'''

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


class RecordingMetrics:
    """Collects ``dropped`` calls (the real AgentMetrics is covered by test_metrics)."""

    def __init__(self) -> None:
        self.drops: list[tuple[str, str]] = []

        self.overheads: list[float] = []

    def dropped(self, endpoint: str, reason: str, **_: Any) -> None:
        self.drops.append((endpoint, reason))

    def overhead(self, seconds: float) -> None:
        self.overheads.append(seconds)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "srv" / "app"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "views.py").write_text(VIEWS)
    (root / "shop" / "secret_settings.py").write_text("KEY = 1\n")
    (tmp_path / "elsewhere.py").write_text("x = 1\n")
    return root


@pytest.fixture(params=["http/protobuf", "grpc"])
def sink(request: pytest.FixtureRequest) -> Iterator[Any]:
    cls = GRPCSink if request.param == "grpc" else HTTPSink
    with cls() as s:
        s.protocol = request.param
        yield s


@pytest.fixture
def http_sink() -> Iterator[HTTPSink]:
    with HTTPSink() as s:
        yield s


def make_config(sink: Any, src: Path, **kw: Any) -> Config:
    kw.setdefault("exporter_protocol", getattr(sink, "protocol", "http/protobuf"))
    kw.setdefault("exporter_timeout", 2)
    return load_config(
        environ={},
        source=[str(src)],
        exporter_endpoint=sink.endpoint,
        service_name="shop",
        service_version="2.0",
        environment="prod",
        role="canary",
        **kw,
    )


def record(src: Path, **kw: Any) -> RequestRecord:
    views = str(src / "shop" / "views.py")
    data = kw.pop(
        "data",
        CoverageData(
            lines={views: {1, 2, 3, 4, 5, 6}},
            arcs={views: {(-1, 2), (2, 3), (3, 4), (4, 5), (5, 3), (4, 3), (3, 6), (6, -1)}},
        ),
    )
    fields: dict[str, Any] = {
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
        "endpoint": "POST /checkout",
        "method": "POST",
        "route": "/checkout",
        "status_class": "2xx",
        "mode": "exact",
        "data": data,
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_000_005_000_000,
    }
    fields.update(kw)
    return RequestRecord(**fields)


def export_once(config: Config, rec: RequestRecord, **kw: Any) -> tuple[CoverageExporter, bool]:
    """Submit ``rec`` to a new exporter, flush and shut it down: (the exporter, flushed)."""
    exporter = CoverageExporter(config, build_resource(config), **kw)
    try:
        assert exporter.submit(rec)
        flushed = exporter.flush(20)
    finally:
        exporter.shutdown(5)
    return exporter, flushed


def test_coverage_span_is_a_child_of_the_request_span(sink: Any, src: Path) -> None:
    config = make_config(sink, src)
    exporter, flushed = export_once(config, record(src))
    assert flushed
    [cov] = sink.coverage_spans()
    assert cov.trace_id == TRACE_ID
    assert cov.parent_span_id == SPAN_ID
    assert cov.span_id != SPAN_ID
    assert cov.scope == "runcov"
    assert cov.kind == 1  # SPAN_KIND_INTERNAL
    assert (cov.start_ns, cov.end_ns) == (1_700_000_000_000_000_000, 1_700_000_000_005_000_000)
    assert cov.resource["service.name"] == "shop"
    assert cov.resource["service.version"] == "2.0"
    assert cov.resource["deployment.environment.name"] == "prod"
    assert cov.resource["runcov.deployment.role"] == "canary"
    assert cov.resource["service.instance.id"]
    attrs = dict(cov.attributes)
    payload = attrs.pop("runcov.payload")
    assert attrs == {
        "runcov.wire_version": 1,
        "runcov.mode": "exact",
        "runcov.endpoint": "POST /checkout",
        "http.request.method": "POST",
        "http.route": "/checkout",
        "runcov.status_class": "2xx",
        "runcov.part": 0,
        "runcov.parts": 1,
    }
    sha = hashlib.sha256(VIEWS.encode()).hexdigest()[:16]
    assert decode([payload]) == {
        "v": 1,
        "files": [
            {
                "path": "shop/views.py",
                "sha": sha,
                "lines": [1, 2, 3, 4, 5, 6],
                "arcs": [[-1, 2], [2, 3], [3, 4], [3, 6], [4, 3], [4, 5], [5, 3], [6, -1]],
            }
        ],
    }
    counters = exporter.counters()
    assert counters["requests_exported"] == 1
    assert counters["export_failed"] == 0


def test_static_sent_once_per_file_and_content(
    sink: Any, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runcov.static

    config = make_config(sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        for i in range(3):
            assert exporter.submit(record(src, trace_id=TRACE_ID + i))
        assert exporter.flush(20)
        [static] = sink.static_spans()
        assert static.parent_span_id is None
        assert static.trace_id not in {TRACE_ID, TRACE_ID + 1, TRACE_ID + 2}
        assert static.attributes["runcov.wire_version"] == 1
        assert (static.attributes["runcov.part"], static.attributes["runcov.parts"]) == (0, 1)
        [entry] = static.payload["files"]
        assert entry["path"] == "shop/views.py"
        assert entry["lines"] == [1, 2, 3, 4, 5, 6, 9, 10]
        assert [4, 5] in entry["arcs"] and [4, 3] in entry["arcs"]
        assert entry["functions"] == [
            {"name": "checkout", "start": 1, "end": 6},
            {"name": "customer_acme_report", "start": 9, "end": 10},
        ]
        # The denominators arrived no later than the first coverage that needs them.
        assert len(sink.coverage_spans()) == 3
        # A new version of the file is new content: its denominators are sent too (the disk
        # is looked at again once the re-check period is over; here at once).
        monkeypatch.setattr(runcov.static, "RECHECK_SECONDS", 0.0)
        (src / "shop" / "views.py").write_text(VIEWS + "\n\nZ = 3\n")
        assert exporter.submit(record(src))
        assert exporter.flush(20)
        shas = {s.payload["files"][0]["sha"] for s in sink.static_spans()}
        assert len(shas) == 2
    finally:
        exporter.shutdown(5)


def test_only_relative_paths_under_roots_leave_the_process(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(
        http_sink,
        src,
        exclude=["secret_*.py"],
        redact=[r"customer_[a-z]+", r"acct-\d+"],
    )
    exporter = CoverageExporter(config, build_resource(config))
    data = CoverageData(
        lines={
            str(src / "shop" / "views.py"): {9, 10},
            str(src / "shop" / "secret_settings.py"): {1},
            str(src.parent.parent / "elsewhere.py"): {1},
            "<string>": {1},
            "/usr/lib/python3/os.py": {1},
        }
    )
    try:
        assert exporter.submit(
            record(src, data=data, endpoint="GET /acct-991/{id}", route="/acct-991/{id}",
                   method="GET")
        )
        assert exporter.flush(20)
    finally:
        exporter.shutdown(5)
    [cov] = http_sink.coverage_spans()
    assert [f["path"] for f in cov.payload["files"]] == ["shop/views.py"]
    assert cov.attributes["runcov.endpoint"] == "GET /[REDACTED]/{id}"
    assert cov.attributes["http.route"] == "/[REDACTED]/{id}"
    [static] = http_sink.static_spans()
    names = [f["name"] for f in static.payload["files"][0]["functions"]]
    assert names == ["checkout", "[REDACTED]_report"]
    raw = b"".join(http_sink.raw)
    for secret in (str(src).encode(), b"secret_settings", b"elsewhere", b"acct-991",
                   b"customer_acme", os.path.expanduser("~").encode() + b"/"):
        assert secret not in raw


def test_census_mode_sends_lines_without_arcs(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    _, flushed = export_once(config, record(src, mode="census"))
    assert flushed
    [cov] = http_sink.coverage_spans()
    assert cov.attributes["runcov.mode"] == "census"
    assert cov.payload["files"][0]["lines"] == [1, 2, 3, 4, 5, 6]
    assert cov.payload["files"][0]["arcs"] == []


def test_job_endpoints_carry_no_http_attributes(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    _, flushed = export_once(
        config, record(src, endpoint="job billing.run", method=None, route=None, status_class="ok")
    )
    assert flushed
    [cov] = http_sink.coverage_spans()
    assert cov.attributes["runcov.endpoint"] == "job billing.run"
    assert cov.attributes["runcov.status_class"] == "ok"
    assert "http.request.method" not in cov.attributes
    assert "http.route" not in cov.attributes


def test_websocket_endpoints_carry_their_route_and_no_http_method(
    http_sink: HTTPSink, src: Path
) -> None:
    config = make_config(http_sink, src)
    _, flushed = export_once(
        config,
        record(src, endpoint="WEBSOCKET /ws/{room}", method="WEBSOCKET", route="/ws/{room}"),
    )
    assert flushed
    [cov] = http_sink.coverage_spans()
    assert cov.attributes["runcov.endpoint"] == "WEBSOCKET /ws/{room}"
    assert cov.attributes["http.route"] == "/ws/{room}"
    assert "http.request.method" not in cov.attributes


def test_large_coverage_is_split_into_parts(sink: Any, src: Path) -> None:
    # Coverage of one file larger than a payload (line numbers are not checked against the
    # file's statements by the exporter, so a small file stands in for a huge one).
    views = str(src / "shop" / "views.py")
    lines = set(range(1, 120_001))
    arcs = {(i, i + 1) for i in range(1, 40_000)}
    config = make_config(sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        data = CoverageData(lines={views: lines}, arcs={views: arcs})
        assert exporter.submit(record(src, data=data))
        assert exporter.flush(30)
    finally:
        exporter.shutdown(5)
    parts = sink.coverage_spans()
    assert len(parts) >= 3
    assert sorted(p.attributes["runcov.part"] for p in parts) == list(range(len(parts)))
    assert {p.attributes["runcov.parts"] for p in parts} == {len(parts)}
    assert {p.trace_id for p in parts} == {TRACE_ID}
    assert {p.parent_span_id for p in parts} == {SPAN_ID}
    assert len({p.span_id for p in parts}) == len(parts)
    for p in parts:
        assert len(p.attributes["runcov.payload"].encode()) <= MAX_PAYLOAD_BYTES
    [merged] = decode(p.attributes["runcov.payload"] for p in parts)["files"]
    assert set(merged["lines"]) == lines
    assert {tuple(a) for a in merged["arcs"]} == arcs


def test_application_span_limits_and_sampler_do_not_apply(
    http_sink: HTTPSink, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    config = make_config(http_sink, src)
    _, flushed = export_once(config, record(src))
    assert flushed
    [cov] = http_sink.coverage_spans()
    assert len(cov.attributes) == 9
    assert cov.payload["files"][0]["lines"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("compression", "encoding"), [("gzip", "gzip"), ("deflate", "deflate"), ("none", None)]
)
def test_requests_are_gzip_compressed_by_default(
    http_sink: HTTPSink, src: Path, compression: str, encoding: object
) -> None:
    config = make_config(http_sink, src, exporter_compression=compression)
    _, flushed = export_once(config, record(src))
    assert flushed
    assert {h.get("Content-Encoding") for h in http_sink.headers} == {encoding}
    assert len(http_sink.coverage_spans()) == 1


def test_deflate_compressed_spans_reach_both_receivers(sink: Any, src: Path) -> None:
    config = make_config(sink, src, exporter_compression="deflate")
    _, flushed = export_once(config, record(src))
    assert flushed
    assert len(sink.coverage_spans()) == 1


def test_worker_cpu_is_reported_as_overhead(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    metrics = RecordingMetrics()
    _, flushed = export_once(config, record(src), metrics=metrics)
    assert flushed
    assert metrics.overheads and all(s >= 0 for s in metrics.overheads)
    assert sum(metrics.overheads) > 0


def test_headers_reach_the_receiver(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src, exporter_headers={"Authorization": "Bearer t0k"})
    _, flushed = export_once(config, record(src))
    assert flushed
    assert any(h.get("authorization") == "Bearer t0k" for h in http_sink.headers)


def test_signal_headers_variable_applies_when_none_are_configured(
    sink: Any, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OTEL_EXPORTER_OTLP_TRACES_HEADERS, as the SDK's exporters read it, over HTTP and gRPC.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=blue%20team")
    config = make_config(sink, src)
    _, flushed = export_once(config, record(src))
    assert flushed
    assert any(h.get("x-tenant") == "blue team" for h in sink.headers)


def test_a_refused_export_is_not_retried(sink: Any, src: Path) -> None:
    # HTTP 400 / gRPC INVALID_ARGUMENT are final: one attempt, the spans counted as failed.
    sink.behaviour = "fail"
    config = make_config(sink, src, exporter_timeout=10)
    exporter, flushed = export_once(config, record(src))
    assert flushed is False
    assert sink.attempts == 1
    assert exporter.counters()["spans_failed"] >= 1


def test_files_nothing_reportable_sends_nothing(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        data = CoverageData(lines={"/nonexistent/x.py": {1}})
        assert exporter.submit(record(src, data=data))
        assert exporter.flush(20)
    finally:
        exporter.shutdown(5)
    assert http_sink.spans() == []
    assert exporter.counters()["no_known_files"] == 1


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_endpoint_down_drops_are_counted(
    src: Path, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    with HTTPSink() as probe:  # take a free port, then close it: nothing listens there
        endpoint = probe.endpoint
    config = load_config(
        environ={}, source=[str(src)], exporter_endpoint=endpoint, exporter_protocol=protocol,
        exporter_timeout=0.5,
    )
    metrics = RecordingMetrics()
    exporter = CoverageExporter(config, build_resource(config), metrics=metrics)
    try:
        with caplog.at_level("WARNING", logger="runcov"):
            assert all(exporter.submit(record(src, trace_id=TRACE_ID + i)) for i in range(3))
            assert exporter.flush(30) is False
            assert exporter.submit(record(src, trace_id=TRACE_ID + 3))
            assert exporter.flush(30) is False
    finally:
        exporter.shutdown(5)
    counters = exporter.counters()
    assert counters["export_failed"] == 4
    assert counters["requests_exported"] == 0
    assert metrics.drops == [("POST /checkout", "export_failed")] * 4
    # Said once (at most once a minute), with where and how it tried to send.
    warnings = [r.getMessage() for r in caplog.records if "could not export" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert config.traces_endpoint() in warnings[0] and f"over {protocol}" in warnings[0]
    # With the cause, and the hint that fits it: nothing answered, perhaps another protocol.
    assert ("refused" in warnings[0]) if protocol == "http/protobuf" else (
        "UNAVAILABLE" in warnings[0]
    )
    assert "speaks this protocol" in warnings[0]


def test_messages_never_show_the_endpoints_credentials(
    src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in the endpoint URL (sent as basic authentication) or a token in its query
    string is never printed: not in the warning, not at DEBUG."""
    with HTTPSink() as probe:  # a free port that nothing listens on
        port = probe.endpoint.rsplit(":", 1)[1].split("/")[0]
    endpoint = f"http://user:pw-SECRET1@127.0.0.1:{port}/v1/traces?key=tok-SECRET2"
    config = load_config(
        environ={}, source=[str(src)], exporter_traces_endpoint=endpoint, exporter_timeout=0.5
    )
    exporter = CoverageExporter(config, build_resource(config))
    try:
        with caplog.at_level("DEBUG", logger="runcov"):
            assert exporter.submit(record(src))
            assert exporter.flush(30) is False
    finally:
        exporter.shutdown(5)
    messages = [r.getMessage() for r in caplog.records]
    [warning] = [m for m in messages if "could not export" in m]
    assert f"http://***@127.0.0.1:{port}/v1/traces?***" in warning
    assert any("span export to" in m for m in messages)  # the DEBUG line is there too
    assert not [m for m in messages if "SECRET" in m]
    with pytest.raises(ConfigError) as bad:
        load_config(environ={}, exporter_endpoint="ftp://user:pw-SECRET3@host/")
    assert "SECRET" not in str(bad.value) and "ftp://***@host/" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        load_config(environ={}, exporter_headers="authorization=Bearer SECRET4,Bearer SECRET5")
    assert "SECRET" not in str(bad.value) and "item 2 is not 'name=value'" in str(bad.value)


def _failed_export_warning(
    src: Path, caplog: pytest.LogCaptureFixture, endpoint: str, protocol: str, flush: float
) -> str:
    """Export one request to ``endpoint`` (export timeout 2 s), which must fail within
    ``flush`` seconds; the exporter's one "could not export" warning (those of exporters
    that earlier tests left retrying elsewhere, which name their own endpoints, aside)."""
    config = load_config(
        environ={}, source=[str(src)], exporter_protocol=protocol, exporter_timeout=2,
        exporter_endpoint=endpoint,
    )
    exporter = CoverageExporter(config, build_resource(config))
    try:
        with caplog.at_level("WARNING", logger="runcov"):
            assert exporter.submit(record(src))
            assert exporter.flush(flush) is False
    finally:
        exporter.shutdown(5)
    host = endpoint.split("//")[-1].split("/")[0]
    [warning] = [
        m for r in caplog.records
        if "could not export" in (m := r.getMessage()) and host in m
    ]
    return warning


def test_a_refusal_is_warned_with_the_receivers_answer(
    sink: Any, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink.behaviour = "fail"
    warning = _failed_export_warning(src, caplog, sink.endpoint, sink.protocol, flush=30)
    answer = "HTTP 400 rejected by test" if sink.protocol == "http/protobuf" else "INVALID_ARGUMENT"
    assert answer in warning and "rejected by test" in warning
    assert "speaks this protocol" not in warning and "receiver refused them" in warning


def test_endpoint_hanging_keeps_submit_non_blocking(sink: Any, src: Path) -> None:
    http_sink = sink
    http_sink.behaviour = "hang"
    config = make_config(http_sink, src, queue_size=4, exporter_timeout=30)
    metrics = RecordingMetrics()
    exporter = CoverageExporter(config, build_resource(config), metrics=metrics)
    try:
        assert exporter.submit(record(src))
        assert exporter.flush(0.2) is False  # the worker is now stuck in a hanging export...
        http_sink.wait_for(lambda: http_sink.attempts >= 1)
        # ...and submitting more never waits for it: the queue fills, then drops are counted.
        results = [exporter.submit(record(src, trace_id=TRACE_ID + i)) for i in range(1, 51)]
        assert results.count(True) == 4
        assert results.count(False) == 46
        assert exporter.counters()["queue_full"] == 46
        assert metrics.drops.count(("POST /checkout", "queue_full")) == 46
    finally:
        http_sink.release()
        exporter.shutdown(5)


def test_rejected_export_is_counted_and_denominators_are_sent_again(
    http_sink: HTTPSink, src: Path
) -> None:
    http_sink.behaviour = "fail"
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src))
        assert exporter.flush(20) is False
        assert exporter.counters()["export_failed"] == 1
        http_sink.behaviour = "ok"
        assert exporter.submit(record(src, trace_id=TRACE_ID + 1))
        assert exporter.flush(20)
    finally:
        exporter.shutdown(5)
    assert [s.trace_id for s in http_sink.coverage_spans()] == [TRACE_ID + 1]
    assert len(http_sink.static_spans()) == 1


def test_a_busy_receiver_is_retried_until_it_accepts(sink: Any, src: Path) -> None:
    # OTLP's throttling answers (HTTP 429 with Retry-After, gRPC UNAVAILABLE) are retried
    # within the export timeout; the spans arrive once.
    sink.throttle = 2
    config = make_config(sink, src, exporter_timeout=10)
    exporter, flushed = export_once(config, record(src))
    assert flushed
    assert sink.attempts >= 3
    assert [s.trace_id for s in sink.coverage_spans()] == [TRACE_ID]
    counters = exporter.counters()
    assert counters["requests_exported"] == 1 and counters["export_failed"] == 0


def test_a_receiver_busy_past_the_timeout_fails_the_export(http_sink: HTTPSink, src: Path) -> None:
    http_sink.throttle = 10**6
    config = make_config(http_sink, src, exporter_timeout=1)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src))
        assert exporter.flush(20) is False
        assert exporter.counters()["export_failed"] == 1
        assert http_sink.attempts >= 2  # retried, then given up at the timeout
    finally:
        exporter.shutdown(5)
    assert http_sink.coverage_spans() == []


def test_submit_never_raises_and_bad_records_are_counted(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    metrics = RecordingMetrics()
    exporter = CoverageExporter(config, build_resource(config), metrics=metrics)
    try:
        assert exporter.submit(record(src, data=None))  # queued; fails in the worker
        assert exporter.submit(None)  # type: ignore[arg-type]
        assert exporter.submit(record(src))
        assert exporter.flush(20)
    finally:
        exporter.shutdown(5)
    assert exporter.counters()["internal_error"] == 2
    assert ("POST /checkout", "internal_error") in metrics.drops
    assert len(http_sink.coverage_spans()) == 1


def test_shutdown_flushes_and_then_refuses(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    assert exporter.submit(record(src))
    assert exporter.shutdown(10)
    assert len(http_sink.coverage_spans()) == 1
    assert exporter.submit(record(src)) is False
    assert exporter.counters()["closed"] == 1
    assert exporter.shutdown(1)  # idempotent
    assert exporter.flush(1)


def test_forked_child_exports_with_its_own_instance(http_sink: HTTPSink, src: Path) -> None:
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src))
        assert exporter.flush(20)
        with warnings.catch_warnings():
            # CPython warns that forking a threaded process may deadlock; the exporter's
            # fork hooks exist precisely for this.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                ok = exporter.submit(record(src, trace_id=TRACE_ID + 7))
                code = 0 if ok and exporter.flush(20) else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert done == pid and os.waitstatus_to_exitcode(status) == 0
        # The parent still works after the fork.
        assert exporter.submit(record(src, trace_id=TRACE_ID + 8))
        assert exporter.flush(20)
    finally:
        exporter.shutdown(5)
    by_trace = {s.trace_id: s for s in http_sink.coverage_spans()}
    assert set(by_trace) == {TRACE_ID, TRACE_ID + 7, TRACE_ID + 8}
    parent_instance = by_trace[TRACE_ID].resource["service.instance.id"]
    assert by_trace[TRACE_ID + 8].resource["service.instance.id"] == parent_instance
    assert by_trace[TRACE_ID + 7].resource["service.instance.id"] != parent_instance
    # The child sends the denominators again under its own instance.
    assert len(http_sink.static_spans()) == 2


def measured(src: Path, cart: list[int]) -> CoverageData:
    """What a real scope records for ``checkout(cart)`` in the test's views module."""
    import importlib.util

    from runcov.tracing import get_core

    path = src / "shop" / "views.py"
    spec = importlib.util.spec_from_file_location(f"views_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scope = get_core().open_scope(roots=[str(src)])
    try:
        module.checkout(cart)
    finally:
        data = scope.close()
    return data  # type: ignore[no-any-return]


def test_a_request_that_repeats_an_earlier_one_reuses_its_encoding(
    sink: Any, src: Path
) -> None:
    config = make_config(sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    carts = [[1, 5], [1, 5], [2], [1, 5], [1, 5]]
    expected = []
    try:
        for i, cart in enumerate(carts):
            data = measured(src, cart)
            expected.append((data.lines, data.arcs))  # built here, independently of the cache
            data = measured(src, cart)  # a fresh record of the same run for the exporter
            endpoint = "GET /other" if i == 4 else "POST /checkout"
            assert exporter.submit(record(src, trace_id=TRACE_ID + i, data=data,
                                          endpoint=endpoint))
            assert exporter.flush(20)
        counters = exporter.counters()
    finally:
        exporter.shutdown(5)
    # The 2nd and 4th requests repeat the 1st on the same endpoint; the 3rd differs; the 5th
    # runs the same code on another endpoint, where it is new.
    assert counters["repeats"] == 2
    assert counters["requests_exported"] == 5
    spans = {s.trace_id: s for s in sink.coverage_spans()}
    assert sorted(spans) == [TRACE_ID + i for i in range(5)]
    views = os.path.realpath(src / "shop" / "views.py")
    for i, (lines, arcs) in enumerate(expected):
        span = spans[TRACE_ID + i]
        assert span.parent_span_id == SPAN_ID
        [entry] = span.payload["files"]
        assert entry["path"] == "shop/views.py"
        assert entry["lines"] == sorted(lines[views])
        assert [tuple(a) for a in entry["arcs"]] == sorted(arcs[views])
    assert expected[0] != expected[2]
    assert spans[TRACE_ID + 4].attributes["runcov.endpoint"] == "GET /other"
    assert len(sink.static_spans()) == 1


def test_a_repeat_is_encoded_again_when_its_file_changed(
    http_sink: HTTPSink, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runcov.static

    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src, data=measured(src, [5])))
        assert exporter.flush(20)
        data = measured(src, [5])
        monkeypatch.setattr(runcov.static, "RECHECK_SECONDS", 0.0)
        (src / "shop" / "views.py").write_text(VIEWS + "\n\nZ = 3\n")
        assert exporter.submit(record(src, trace_id=TRACE_ID + 1, data=data))
        assert exporter.flush(20)
        assert exporter.counters()["repeats"] == 0
    finally:
        exporter.shutdown(5)
    shas = [s.payload["files"][0]["sha"] for s in http_sink.coverage_spans()]
    assert len(set(shas)) == 2
    assert {s.payload["files"][0]["sha"] for s in http_sink.static_spans()} == set(shas)


def test_a_repeat_whose_denominators_were_lost_sends_them_again(
    http_sink: HTTPSink, src: Path
) -> None:
    http_sink.behaviour = "fail"
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        assert exporter.submit(record(src, data=measured(src, [5])))
        assert exporter.flush(20) is False
        http_sink.behaviour = "ok"
        assert exporter.submit(record(src, trace_id=TRACE_ID + 1, data=measured(src, [5])))
        assert exporter.flush(20)
        assert exporter.submit(record(src, trace_id=TRACE_ID + 2, data=measured(src, [5])))
        assert exporter.flush(20)
        assert exporter.counters()["repeats"] == 1
    finally:
        exporter.shutdown(5)
    assert [s.trace_id for s in http_sink.coverage_spans()] == [TRACE_ID + 1, TRACE_ID + 2]
    assert len(http_sink.static_spans()) == 1


def test_kept_encodings_are_bounded_in_count_and_bytes(
    http_sink: HTTPSink, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runcov.export.exporter as exporter_module

    monkeypatch.setattr(exporter_module, "REPEAT_CACHE_SIZE", 2)
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    carts = [[1], [5], [1, 5], [1], [1, 5]]  # [1] is forgotten by the time it comes again
    try:
        for i, cart in enumerate(carts):
            assert exporter.submit(record(src, trace_id=TRACE_ID + i, data=measured(src, cart)))
            assert exporter.flush(20)
        assert exporter.counters()["repeats"] == 1  # the last: [1, 5] was still kept
        assert len(exporter._repeats) == 2
        # A byte budget too small for any encoding keeps none.
        monkeypatch.setattr(exporter_module, "REPEAT_CACHE_BYTES", 64)
        exporter._repeats.clear()
        exporter._repeats_bytes = 0
        for i in range(2):
            assert exporter.submit(record(src, trace_id=TRACE_ID + 10 + i, data=measured(src, [5])))
            assert exporter.flush(20)
        assert exporter.counters()["repeats"] == 1
        assert not exporter._repeats and exporter._repeats_bytes == 0
    finally:
        exporter.shutdown(5)
    assert len(http_sink.coverage_spans()) == 7


WITH_BLOCKS = '''\
import threading

_lock = threading.Lock()


def find(items, wanted):
    with _lock:
        for item in items:
            if item == wanted:
                return item
    return None


def tally(items):
    with _lock:
        total = sum(items)
    return total


def check(x, y):
    total = (x +
             1)
    if (x and
            y):
        return total
    return [
        y,
    ]
'''


def test_lines_and_arcs_are_sent_as_coverage_py_reports_them(
    http_sink: HTTPSink, src: Path
) -> None:
    """Python reports the lines it runs, coverage.py the statements: a statement over several
    lines runs on its later lines too (a multi-line condition, a list literal), which
    coverage.py counts as its first line. And leaving a ``with`` block jumps back to its
    ``with`` line before going on, which coverage.py reports as one arc from the block's last
    line onward. The exported lines and arcs are coverage.py's, measured and reported by
    coverage.py itself on the same calls, in the terms of the statements and possible arcs
    sent with them."""
    import importlib.util

    import coverage
    from coverage.parser import PythonParser

    from runcov.testing import capture_coverage

    path = src / "shop" / "stock.py"
    path.write_text(WITH_BLOCKS)
    spec = importlib.util.spec_from_file_location("runcov_test_stock", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def calls() -> None:
        module.find([1, 2], 5)  # the loop runs out inside the with block
        module.find([1, 2], 2)  # returns from inside it
        module.tally([1, 2])  # the block ends and the function goes on
        module.check(1, 1)
        module.check(1, 0)
        module.check(0, 1)

    cov = coverage.Coverage(branch=True, data_file=None, source=[str(src)])
    cov.start()
    try:
        calls()
    finally:
        cov.stop()
    measured_lines = set(cov.get_data().lines(str(path.resolve())) or ())
    measured_arcs = set(cov.get_data().arcs(str(path.resolve())) or ())
    parser = PythonParser(filename=str(path))
    parser.parse_source()
    parser.arcs()  # the analysis, which also finds where the with blocks are left
    lines = parser.translate_lines(measured_lines)
    arcs = parser.translate_arcs(measured_arcs)
    assert lines != measured_lines and arcs != measured_arcs, "nothing reported differently"

    with capture_coverage(source=[str(src)]) as cap:
        calls()
    key = next(p for p in cap.arcs if p.endswith("stock.py"))
    assert cap.arcs[key] == measured_arcs  # the core measures what coverage.py measures
    data = CoverageData(lines={key: cap.lines[key]}, arcs={key: cap.arcs[key]})
    _, flushed = export_once(make_config(http_sink, src), record(src, data=data))
    assert flushed
    [span] = http_sink.coverage_spans()
    [sent] = decode([dict(span.attributes)["runcov.payload"]])["files"]
    assert sent["path"] == "shop/stock.py"
    assert set(sent["lines"]) == lines
    assert {tuple(arc) for arc in sent["arcs"]} == arcs


def test_a_records_own_attributes_go_on_each_of_its_coverage_spans(
    http_sink: HTTPSink, src: Path
) -> None:
    """``RequestRecord.attributes`` (the agent's mark of a request measured only until its
    scope expired) is on every coverage span of that request, its parts included, and on no
    other request's spans."""
    views = str(src / "shop" / "views.py")
    big = CoverageData(lines={views: set(range(1, 120_001))}, arcs={})
    config = make_config(http_sink, src)
    exporter = CoverageExporter(config, build_resource(config))
    try:
        marked = record(src, data=big, attributes={"runcov.scope.expired": True})
        assert exporter.submit(marked)
        assert exporter.submit(record(src, trace_id=TRACE_ID + 1))
        assert exporter.flush(30)
    finally:
        exporter.shutdown(5)
    spans = http_sink.coverage_spans()
    by_trace: dict[int, set[Any]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, set()).add(
            span.attributes.get("runcov.scope.expired")
        )
    assert len([s for s in spans if s.trace_id == TRACE_ID]) >= 2
    assert by_trace == {TRACE_ID: {True}, TRACE_ID + 1: {None}}


def test_a_shutdown_that_runs_out_of_time_says_what_it_leaves_undelivered(
    src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that is down, an export timeout longer than the shutdown's budget (the 5 s
    at exit against 10 s): the send is still retrying when the budget ends, and the shutdown
    itself says what is lost (the worker's own warning would come after the process ended)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = load_config(
        environ={}, source=[str(src)], exporter_endpoint=f"http://127.0.0.1:{port}",
        exporter_timeout=30,
    )
    exporter = CoverageExporter(config, build_resource(config))
    assert exporter.submit(record(src))
    with caplog.at_level("WARNING", logger="runcov"):
        started = time.monotonic()
        assert exporter.shutdown(1.0) is False
        assert time.monotonic() - started < 5.0
    [warning] = [
        r.getMessage() for r in caplog.records if "stopping with coverage" in r.getMessage()
    ]
    assert "not delivered after 1.0 s" in warning and "they are lost" in warning
    assert f"127.0.0.1:{port}" in warning


def test_a_tls_handshake_with_a_plaintext_grpc_receiver_is_named_in_the_warning(
    src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC endpoint written without a scheme means TLS; a receiver without TLS fails the
    handshake, and the warning says so and how to write a plaintext endpoint."""
    with GRPCSink() as plain:
        target = plain.endpoint.removeprefix("http://")
        warning = _failed_export_warning(src, caplog, target, "grpc", flush=20)
    assert "The TLS handshake failed" in warning and "http://host:port" in warning, warning
    assert plain.raw == []
