"""Decoding OTLP requests into batches: shapes, encodings, validation and its messages."""

from __future__ import annotations

import json
import re

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from runcov_collector import decode, limits
from runcov_collector.model import FunctionRange, Release
from runcov_collector.testing import (
    SpanSpec,
    any_value,
    coverage_attributes,
    coverage_span,
    file_hits,
    file_static,
    static_span,
    to_otlp_json,
    trace_request,
)

SHA = "3f1c9a0b2d4e6f70"
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def _decode(spans, resource=None, json_body=False):
    request = trace_request(spans, resource)
    body = to_otlp_json(request) if json_body else request.SerializeToString()
    return decode.decode_traces(decode.parse_traces(body, json_body))


@pytest.mark.parametrize("json_body", [False, True])
def test_coverage_and_static_spans_decode_the_same_from_protobuf_and_json(json_body):
    spans = [
        coverage_span(
            "GET /items/{item_id}",
            [file_hits("shop/views.py", [14, 12, 13, 13], [(-11, 12), (12, 13)], sha=SHA)],
            trace_id=TRACE,
            span_id=SPAN,
            end_time_unix_nano=1_764_064_800_000_000_000,
            status_class="2xx",
        ),
        static_span(
            [file_static("shop/views.py", [11, 12], [(-11, 12)], [("checkout", 11, 20)], SHA)],
            trace_id="1" * 32,
            span_id="2" * 16,
        ),
    ]
    resource = {
        "service.name": "shop",
        "service.version": "1.2",
        "deployment.environment.name": "prod",
        "runcov.deployment.role": "canary",
    }
    result = _decode(spans, resource, json_body)
    assert (result.accepted, result.rejected) == (2, 0)
    [part] = result.batch.coverage
    assert part.release == Release("shop", "1.2", "prod", "canary")
    assert (part.trace_id, part.span_id) == (TRACE, SPAN)
    assert part.endpoint == "GET /items/{item_id}"
    assert (part.mode, part.status_class, part.part, part.parts) == ("exact", "2xx", 0, 1)
    assert part.time_unix_nano == 1_764_064_800_000_000_000
    [hits] = part.files
    assert (hits.path, hits.sha) == ("shop/views.py", SHA)
    assert hits.lines == [12, 13, 14]  # sorted and unique
    assert hits.arcs == [(-11, 12), (12, 13)]
    [static] = result.batch.static
    assert static.trace_id == "1" * 32
    [fs] = static.files
    assert fs.lines == [11, 12]
    assert fs.functions == [FunctionRange("checkout", 11, 20)]


def test_resource_defaults_and_legacy_environment_key():
    result = _decode(
        [coverage_span("GET /", [file_hits("a.py", [1])])],
        {"deployment.environment": "staging"},
    )
    assert result.batch.coverage[0].release == Release("unknown_service", "", "staging", "baseline")


def test_spans_of_other_scopes_are_skipped_and_counted():
    foreign = SpanSpec("GET /checkout", {"http.route": "/checkout"}, scope="flask")
    foreign_named_like_ours = SpanSpec("runcov.coverage", {"x": 1}, scope="opentelemetry.sdk")
    unknown = SpanSpec("runcov.future", {}, scope="runcov")
    ok = coverage_span("GET /", [file_hits("a.py", [1])])
    result = _decode([foreign, foreign_named_like_ours, unknown, ok])
    assert result.skipped == {"foreign_scope": 2, "unknown_span": 1}
    assert (result.accepted, result.rejected) == (1, 0)
    assert len(result.batch.coverage) == 1


def _reject_one(attributes=None, files=None, resource=None, **span_kw):
    attrs = (
        attributes
        if attributes is not None
        else coverage_attributes("GET /", files if files is not None else [file_hits("a.py", [1])])
    )
    bad = SpanSpec("runcov.coverage", attrs, trace_id=TRACE, span_id=SPAN, **span_kw)
    good = coverage_span("GET /", [file_hits("a.py", [2])])
    result = _decode([bad, good], resource)
    assert result.accepted == (0 if resource else 1)
    assert result.rejected == (2 if resource else 1)
    assert f"span {TRACE}/{SPAN} (runcov.coverage)" in result.error_message
    return result


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../../etc/passwd", "contains a '..' segment"),
        ("shop/../../x.py", "contains a '..' segment"),
        ("/etc/passwd", "is absolute"),
        ("C:/Windows/x.py", "is absolute"),
        ("shop\\views.py", "'/'-separated"),
        ("shop/\x00views.py", "NUL or control characters"),
        ("shop/\nviews.py", "NUL or control characters"),
        ("shop//views.py", "empty or '.' segment"),
        ("./views.py", "empty or '.' segment"),
        ("", "is empty"),
        ("a" * 1025, "1025 bytes, more than 1024"),
        ("é" * 513, "1026 bytes, more than 1024"),
        ("\ud800.py", "not valid UTF-8"),
    ],
)
def test_hostile_paths_reject_the_span_with_a_precise_message(path, message):
    result = _reject_one(files=[file_hits(path, [1])])
    assert "files[0].path" in result.error_message
    assert message in result.error_message
    assert result.reasons == {"path": 1}


def test_unicode_paths_within_limits_are_kept():
    result = _decode([coverage_span("GET /", [file_hits("shöp/vïews_日本.py", [1])])])
    assert result.batch.coverage[0].files[0].path == "shöp/vïews_日本.py"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([0], "line '0' outside 1..10000000"),
        ([-3], "line '-3' outside"),
        ([limits.MAX_LINE + 1], "outside 1..10000000"),
        ([10**40], "outside"),
        ([1.5], "must hold integers only"),
        ([True], "must hold integers only"),
        (["7"], "must hold integers only"),
        ("1,2", "must be a list"),
    ],
)
def test_bad_line_numbers_are_rejected(lines, message):
    result = _reject_one(files=[{"path": "a.py", "sha": SHA, "lines": lines}])
    assert message in result.error_message


@pytest.mark.parametrize(
    ("arcs", "message"),
    [
        ([[0, 1]], "out of bounds"),
        ([[1, limits.MAX_LINE + 1]], "out of bounds"),
        ([[1, 2, 3]], "[from, to] integer pairs"),
        ([[1, "2"]], "[from, to] integer pairs"),
        ([5], "[from, to] integer pairs"),
    ],
)
def test_bad_arcs_are_rejected(arcs, message):
    result = _reject_one(files=[{"path": "a.py", "sha": SHA, "lines": [1], "arcs": arcs}])
    assert message in result.error_message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"runcov.wire_version": 2}, "runcov.wire_version 2 is not supported"),
        ({"runcov.wire_version": "1"}, "runcov.wire_version must be an int"),
        ({"runcov.mode": "full"}, "runcov.mode 'full' is not one of exact, census"),
        ({"runcov.endpoint": ""}, "runcov.endpoint is empty"),
        ({"runcov.endpoint": 5}, "runcov.endpoint must be a string"),
        ({"runcov.endpoint": "GET /\x1b[31m"}, "contains control characters"),
        ({"runcov.part": 3, "runcov.parts": 2}, "runcov.part 3 is out of range 0..1"),
        ({"runcov.parts": 0}, "runcov.parts 0 is out of range"),
        ({"runcov.payload": "{"}, "runcov.payload is not valid JSON"),
        ({"runcov.payload": "[]"}, "runcov.payload must be a JSON object"),
        ({"runcov.payload": '{"v":1,"files":{}}'}, "runcov.payload.files must be a list"),
        ({"runcov.payload": '{"v":2,"files":[]}'}, "v='2' is not 1"),
        ({"runcov.payload": '{"v":1,"files":[{"path":"a.py","sha":NaN}]}'}, "NaN is not allowed"),
        ({"runcov.payload": '{"v":1,"files":[{"path":"a.py","sha":"XYZ"}]}'}, "lowercase hex"),
        ({"runcov.payload": '{"v":1,"files":[7]}'}, "files[0] must be an object"),
        (
            {"runcov.payload": '{"v":1,"files":[{"path":"a.py","lines":[1' + "0" * 5000 + "]}]}"},
            "not valid JSON",
        ),
        ({"runcov.payload": 42}, "runcov.payload must be a string"),
    ],
)
def test_bad_attributes_are_rejected_with_the_reason(change, message):
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1], sha=SHA)])
    attrs.update(change)
    result = _reject_one(attributes=attrs)
    assert message in result.error_message


def test_missing_attributes_are_named():
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1])])
    del attrs["runcov.payload"]
    assert "missing attribute runcov.payload" in _reject_one(attributes=attrs).error_message
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1])])
    del attrs["runcov.wire_version"]
    assert "missing attribute runcov.wire_version" in _reject_one(attributes=attrs).error_message


def test_census_payload_with_arcs_is_rejected():
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1], [(1, 2)])], mode="census")
    assert "census payload must not carry arcs" in _reject_one(attributes=attrs).error_message


def test_too_many_attributes_rejects_the_span():
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1])])
    attrs.update({f"x.{i}": i for i in range(limits.MAX_ATTRIBUTES_PER_SPAN)})
    result = _reject_one(attributes=attrs)
    assert "more than the limit of 128" in result.error_message
    assert result.reasons == {"limit": 1}


def test_too_many_files_rejects_the_span(monkeypatch):
    monkeypatch.setattr(limits, "MAX_FILES_PER_PAYLOAD", 3)
    files = [file_hits(f"f{i}.py", [1]) for i in range(4)]
    assert "has 4 files, more than 3" in _reject_one(files=files).error_message


def test_too_many_lines_in_a_file_rejects_the_span(monkeypatch):
    monkeypatch.setattr(limits, "MAX_ITEMS_PER_FILE", 10)
    result = _reject_one(files=[file_hits("a.py", range(1, 12))])
    assert "files[0].lines has 11 items, more than 10" in result.error_message


def test_invalid_ids_reject_only_that_span():
    bad = coverage_span("GET /", [file_hits("a.py", [1])], trace_id="0" * 32)
    good = coverage_span("GET /", [file_hits("a.py", [2])])
    result = _decode([bad, good])
    assert (result.accepted, result.rejected) == (1, 1)
    assert "trace_id must be 16 bytes and not all zero" in result.error_message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "traceId",
            "zz-not-hex",
            f"span -/{SPAN} (runcov.coverage): trace_id 'zz-not-hex' is not hex",
        ),
        ("spanId", "not-hex!", f"span {TRACE}/- (runcov.coverage): span_id 'not-hex!' is not hex"),
        ("parentSpanId", "0123", None),  # hex: read as it is, like a protobuf parent id
        (
            "parentSpanId",
            "\x1b[2J" + "q" * 100,
            f"span {TRACE}/{SPAN} (runcov.coverage): parent_span_id '\\x1b[2J{'q' * 56}'... "
            "is not hex",
        ),
        # protobuf's JSON mapping writes bytes in base64; OTLP/JSON writes ids in hex.
        (
            "trace_id",
            "CvdlGRbNQ92ESOshHIAxnA==",
            f"span -/{SPAN} (runcov.coverage): trace_id 'CvdlGRbNQ92ESOshHIAxnA==' is not hex",
        ),
        # null reads as an absent id in protobuf's JSON mapping: named, not "must be 16 bytes".
        ("traceId", None, f"span -/{SPAN} (runcov.coverage): trace_id is null"),
    ],
    ids=["trace", "span", "parent-hex", "parent-hostile", "trace-base64-snake-case", "null"],
)
def test_non_hex_ids_in_json_reject_only_that_span_saying_so(key, value, message):
    request = trace_request(
        [
            coverage_span("GET /", [file_hits("a.py", [1])], trace_id=TRACE, span_id=SPAN),
            coverage_span("GET /", [file_hits("a.py", [2])]),
        ]
    )
    doc = json.loads(to_otlp_json(request))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span.pop("traceId" if key == "trace_id" else key, None)
    span[key] = value
    id_errors: decode.IdErrors = {}
    parsed = decode.parse_traces(json.dumps(doc).encode(), True, id_errors)
    result = decode.decode_traces(parsed, id_errors=id_errors)
    if message is None:
        assert (result.accepted, result.rejected) == (2, 0)
        return
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == {"ids": 1}
    assert result.error_message == message
    assert [part.files[0].lines for part in result.batch.coverage] == [[2]]


@pytest.mark.parametrize(
    ("where", "key", "also"),
    [("resource span", "scope_spans", "scopeSpans"), ("span", "trace_id", "traceId")],
)
def test_a_json_field_given_under_both_its_names_is_malformed(where, key, also):
    """``scopeSpans`` and ``scope_spans`` in one object: protobuf's JSON parser would keep one
    of the two lists without a word (and the id conversion read the other)."""
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [1])], trace_id=TRACE)])
    doc = json.loads(to_otlp_json(request))
    node = doc["resourceSpans"][0]
    if where == "span":
        node = node["scopeSpans"][0]["spans"][0]
    node[key] = node[also]
    with pytest.raises(decode.MalformedRequest, match=f"given twice, also as '{also}'"):
        decode.parse_traces(json.dumps(doc).encode(), True, {})


def test_invalid_role_rejects_every_runcov_span_of_the_resource():
    result = _reject_one(resource={"service.name": "shop", "runcov.deployment.role": "prod"})
    assert "runcov.deployment.role 'prod' is not one of baseline, canary, shadow, game-day" in (
        result.error_message
    )
    assert result.reasons == {"role": 2}


def test_error_message_lists_the_first_rejections_then_counts():
    spans = [
        coverage_span("GET /", [file_hits("/abs.py", [1])])
        for _ in range(decode.MAX_ERROR_MESSAGES + 3)
    ]
    result = _decode(spans)
    assert result.rejected == decode.MAX_ERROR_MESSAGES + 3
    assert result.error_message.count("is absolute") == decode.MAX_ERROR_MESSAGES
    assert result.error_message.endswith("; and 3 more rejected")


def test_request_over_the_span_limit_is_malformed(monkeypatch):
    monkeypatch.setattr(limits, "MAX_SPANS_PER_REQUEST", 2)
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [1])]) for _ in range(3)])
    with pytest.raises(
        decode.MalformedRequest, match="request has 3 spans, more than the limit of 2"
    ):
        decode.decode_traces(request)


@pytest.mark.parametrize(
    ("body", "json_body", "message"),
    [
        (b"\xff\xff\xff", False, "not a valid ExportTraceServiceRequest protobuf"),
        (b"{", True, "body is not valid JSON"),
        (b"[1, 2]", True, "must be a JSON object (ExportTraceServiceRequest), not list"),
        (b'{"resourceSpans": 5}', True, "not a valid OTLP/JSON ExportTraceServiceRequest"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 7}]}]}]}', True, "OTLP/JSON"),
        (b"\xff\xfe{}", True, "not valid JSON"),
        (b"[" * 100_000, True, "not valid JSON"),
    ],
)
def test_malformed_bodies(body, json_body, message):
    with pytest.raises(
        decode.MalformedRequest, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        decode.parse_traces(body, json_body)


def test_json_accepts_snake_case_field_names_and_ignores_unknown_fields():
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [3])], trace_id=TRACE)])
    doc = json.loads(to_otlp_json(request))
    rs = doc.pop("resourceSpans")
    rs[0]["scope_spans"] = rs[0].pop("scopeSpans")
    span = rs[0]["scope_spans"][0]["spans"][0]
    span["trace_id"] = span.pop("traceId")
    span["someFutureField"] = {"x": 1}
    doc["resource_spans"] = rs
    result = decode.decode_traces(decode.parse_traces(json.dumps(doc).encode(), True))
    assert result.batch.coverage[0].trace_id == TRACE
    assert result.batch.coverage[0].files[0].lines == [3]


CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


def _metrics_request(points, scope="runcov", resource=None, temporality=CUMULATIVE):
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    for key, value in (resource or {"service.name": "shop", "service.instance.id": "i-1"}).items():
        rm.resource.attributes.append(KeyValue(key=key, value=any_value(value)))
    sm = rm.scope_metrics.add()
    sm.scope.name = scope
    for name, kind, value, attrs in points:
        metric = sm.metrics.add()
        metric.name = name
        container = metric.sum if kind == "sum" else metric.gauge if kind == "gauge" else None
        if kind == "sum":
            metric.sum.aggregation_temporality = temporality
        if container is None:
            metric.histogram.data_points.add().count = 3
            continue
        point = container.data_points.add()
        point.time_unix_nano = 5
        if isinstance(value, int):
            point.as_int = value
        else:
            point.as_double = value
        for key, v in attrs.items():
            point.attributes.append(KeyValue(key=key, value=any_value(v)))
    return request


@pytest.mark.parametrize("json_body", [False, True])
def test_metrics_decode_counters_and_gauges_of_the_runcov_scope(json_body):
    request = _metrics_request(
        [
            (
                "runcov.requests.sampled",
                "sum",
                12,
                {"runcov.endpoint": "GET /", "runcov.mode": "exact"},
            ),
            ("runcov.sample_rate", "gauge", 0.25, {"runcov.endpoint": "GET /", "flag": True}),
            ("runcov.latency", "histogram", None, {}),
        ]
    )
    body = to_otlp_json(request) if json_body else request.SerializeToString()
    result = decode.decode_metrics(decode.parse_metrics(body, json_body))
    assert (result.accepted, result.rejected) == (2, 0)
    assert result.skipped == {"unsupported_metric": 1}
    sampled, rate = result.batch.metrics
    assert (sampled.name, sampled.value, sampled.instance) == (
        "runcov.requests.sampled",
        12.0,
        "i-1",
    )
    assert sampled.attributes == {"runcov.endpoint": "GET /", "runcov.mode": "exact"}
    assert sampled.release == Release("shop")
    assert (rate.value, rate.attributes["flag"], rate.time_unix_nano) == (0.25, "true", 5)


@pytest.mark.parametrize(
    ("temporality", "named"),
    [
        (AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA, "delta"),
        (AggregationTemporality.AGGREGATION_TEMPORALITY_UNSPECIFIED, "unspecified"),
        (7, "unknown aggregation temporality 7"),
    ],
)
@pytest.mark.parametrize("json_body", [False, True])
def test_sums_that_are_not_cumulative_are_rejected_per_point(temporality, named, json_body):
    """The store keeps a series' latest value: a delta sum would be stored as its last
    increment, so its points are rejected (gauges and cumulative sums of the request stay)."""
    request = _metrics_request(
        [
            ("runcov.requests.seen", "sum", 5, {"runcov.endpoint": "GET /x"}),
            ("runcov.sample_rate", "gauge", 0.5, {"runcov.endpoint": "GET /x"}),
        ],
        temporality=temporality,
    )
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points.add().as_int = 3
    kept = _metrics_request([("runcov.requests.sampled", "sum", 2, {})])
    request.resource_metrics[0].scope_metrics[0].metrics.extend(
        kept.resource_metrics[0].scope_metrics[0].metrics
    )
    body = to_otlp_json(request) if json_body else request.SerializeToString()
    result = decode.decode_metrics(decode.parse_metrics(body, json_body))
    assert (result.accepted, result.rejected) == (2, 2)
    assert result.reasons == {"temporality": 2}
    kept_names = [p.name for p in result.batch.metrics]
    assert kept_names == ["runcov.sample_rate", "runcov.requests.sampled"]
    assert result.error_message.startswith(f"metric 'runcov.requests.seen': sum with {named}")
    assert "keeps cumulative sums only" in result.error_message


def test_metrics_of_other_scopes_are_skipped_and_bad_points_rejected():
    foreign = _metrics_request([("http.server.duration", "sum", 1, {})], scope="flask")
    result = decode.decode_metrics(foreign)
    assert result.skipped == {"foreign_scope": 1} and not result.batch.metrics
    bad = _metrics_request(
        [("runcov.overhead", "sum", float("nan"), {}), ("runcov.x", "sum", 1, {})]
    )
    result = decode.decode_metrics(bad)
    assert (result.accepted, result.rejected) == (1, 1)
    assert "metric 'runcov.overhead': data point value is not finite" in result.error_message


def _monotonic(request):
    for metric in request.resource_metrics[0].scope_metrics[0].metrics:
        if metric.WhichOneof("data") == "sum":
            metric.sum.is_monotonic = True
    return request


def test_metric_values_beyond_2_53_and_negative_counters_are_rejected():
    """Values the store would sum to infinity over processes (failing every query of the
    service's agent counters), and negative values of a monotonic sum (no counter goes below
    0), are refused per point; the bound itself and a negative non-monotonic sum are kept."""
    big = 2.0**53  # the bound itself (limits.MAX_METRIC_VALUE) is kept
    request = _monotonic(
        _metrics_request(
            [
                ("runcov.requests.seen", "sum", 1e308, {}),
                ("runcov.requests.sampled", "sum", 2**63 - 1, {}),
                ("runcov.requests.dropped", "sum", -3, {}),
                ("runcov.overhead", "sum", big, {}),
                ("runcov.sample_rate", "gauge", -1e300, {}),
            ]
        )
    )
    result = decode.decode_metrics(request)
    assert (result.accepted, result.rejected) == (1, 4)
    assert [p.name for p in result.batch.metrics] == ["runcov.overhead"]
    assert result.reasons == {"value": 4}
    assert "metric 'runcov.requests.seen': data point value is beyond ±2**53" in (
        result.error_message
    )
    updown = decode.decode_metrics(_metrics_request([("runcov.queue", "sum", -3, {})]))
    assert (updown.accepted, updown.rejected) == (1, 0)
    assert "negative" in decode.decode_metrics(
        _monotonic(_metrics_request([("runcov.requests.dropped", "sum", -3, {})]))
    ).error_message


def test_oversized_ids_are_shown_truncated_in_the_message():
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [1])])])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.trace_id = b"\x01" * 100_000
    result = decode.decode_traces(request)
    assert result.rejected == 1
    assert result.error_message.startswith(f"span {'01' * 32}/")
    assert len(result.error_message) < 300


def test_metrics_with_a_hostile_instance_id_are_rejected():
    request = _metrics_request(
        [("runcov.overhead", "sum", 1.5, {})],
        resource={"service.name": "shop", "service.instance.id": "pod\x00evil"},
    )
    result = decode.decode_metrics(request)
    assert (result.accepted, result.rejected) == (0, 1)
    assert "resource attribute service.instance.id" in result.error_message
    assert "contains control characters" in result.error_message


def _span_with_times(end: int, start: int | None = None):
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [1])], trace_id=TRACE)])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.end_time_unix_nano = end
    if start is not None:
        span.start_time_unix_nano = start
    return request


@pytest.mark.parametrize(
    ("end", "start", "message"),
    [
        (2**63, None, "end_time_unix_nano 9223372036854775808 is not a time"),
        (2**64 - 1, None, "end_time_unix_nano 18446744073709551615 is not a time"),
        (0, 2**64 - 1, "start_time_unix_nano 18446744073709551615 is not a time"),
    ],
)
def test_times_beyond_64_bit_nanoseconds_reject_only_that_span(end, start, message):
    request = _span_with_times(end, start)
    good = trace_request([coverage_span("GET /", [file_hits("b.py", [2])])])
    request.resource_spans[0].scope_spans[0].spans.append(
        good.resource_spans[0].scope_spans[0].spans[0]
    )
    result = decode.decode_traces(request)
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == {"time": 1}
    assert f"span {TRACE}/" in result.error_message and message in result.error_message
    assert [p.files[0].path for p in result.batch.coverage] == ["b.py"]


def test_the_largest_64_bit_time_is_kept_as_the_receive_time():
    now = 1_764_064_800_000_000_000
    request = _span_with_times(limits.MAX_TIME_UNIX_NANO)
    result = decode.decode_traces(request, now_ns=now)
    assert result.rejected == 0
    assert result.batch.coverage[0].time_unix_nano == now


def test_span_times_after_the_receive_time_are_the_receive_time():
    now = 1_764_064_800_000_000_000
    future = 4_102_444_800_000_000_000  # 2100, a clock running ahead
    spans = [
        coverage_span("GET /", [file_hits("a.py", [1])], end_time_unix_nano=future),
        coverage_span("GET /", [file_hits("a.py", [2])], end_time_unix_nano=now - 5),
        static_span([file_static("a.py", [1, 2])], end_time_unix_nano=future),
    ]
    result = decode.decode_traces(trace_request(spans), now_ns=now)
    assert [p.time_unix_nano for p in result.batch.coverage] == [now, now - 5]
    assert result.batch.static[0].time_unix_nano == now
    assert result.batch.received_unix_nano == now


def test_metric_point_times_are_checked_and_clamped_to_the_receive_time():
    now = 1_764_064_800_000_000_000
    request = _metrics_request(
        [
            ("runcov.requests.seen", "sum", 1, {}),
            ("runcov.requests.sampled", "sum", 2, {}),
            ("runcov.requests.dropped", "sum", 3, {}),
        ]
    )
    points = [m.sum.data_points[0] for m in request.resource_metrics[0].scope_metrics[0].metrics]
    points[0].time_unix_nano = 2**63
    points[1].time_unix_nano = now + 10**9
    result = decode.decode_metrics(request, now_ns=now)
    assert (result.accepted, result.rejected) == (2, 1)
    assert "metric 'runcov.requests.seen': time_unix_nano 9223372036854775808 is not a time" in (
        result.error_message
    )
    assert [(p.name, p.time_unix_nano) for p in result.batch.metrics] == [
        ("runcov.requests.sampled", now),
        ("runcov.requests.dropped", 5),
    ]
    assert result.batch.received_unix_nano == now


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]},
            "resourceSpans[0].scopeSpans[0].spans[0] must be a JSON object, not a string",
        ),
        ({"resourceSpans": [7]}, "resourceSpans[0] must be a JSON object, not a number"),
        (
            {"resource_spans": [{"scope_spans": [{"spans": [{"attributes": [True]}]}]}]},
            "resource_spans[0].scope_spans[0].spans[0].attributes[0] must be a JSON object, "
            "not a boolean",
        ),
        (
            {"resourceSpans": [{"resource": "shop"}]},
            "resourceSpans[0].resource must be a JSON object, not a string",
        ),
        (
            {"resourceSpans": [{"scopeSpans": [{"scope": [], "spans": []}]}]},
            "resourceSpans[0].scopeSpans[0].scope must be a JSON object, not an array",
        ),
    ],
)
def test_json_values_where_messages_belong_are_malformed(doc, message):
    with pytest.raises(decode.MalformedRequest, match=re.escape(message)):
        decode.parse_traces(json.dumps(doc).encode(), True)


def test_json_metrics_with_a_non_object_data_point_are_malformed():
    doc = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"sum": {"dataPoints": [1]}}]}]}]}
    with pytest.raises(decode.MalformedRequest, match=re.escape("dataPoints[0] must be a JSON")):
        decode.parse_metrics(json.dumps(doc).encode(), True)


# ---------------------------------------------------------------------------------------------
# Ids of span links and metric exemplars in OTLP/JSON


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("traceId", "zz-not-hex", "links[1].trace_id 'zz-not-hex' is not hex"),
        ("spanId", "not-hex!", "links[1].span_id 'not-hex!' is not hex"),
        ("span_id", "CvdlGRbNQ92E", "links[1].span_id 'CvdlGRbNQ92E' is not hex"),
        ("traceId", None, "links[1].trace_id is null"),
        ("spanId", "0123", None),  # hex: read as it is, like a protobuf link id
        ("parentSpanId", "zz", None),  # not a field of links: ignored like any unknown one
    ],
    ids=["trace", "span", "span-snake-case", "null", "hex", "parent"],
)
def test_non_hex_link_ids_in_json_reject_their_span_saying_so(key, value, message):
    """A link id that is not hex is not read as empty: the span carrying it is rejected, as
    one with a span id that is not hex, and the message names the link."""
    request = trace_request(
        [
            coverage_span("GET /", [file_hits("a.py", [1])], trace_id=TRACE, span_id=SPAN),
            coverage_span("GET /", [file_hits("a.py", [2])]),
        ]
    )
    doc = json.loads(to_otlp_json(request))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    link = {"traceId": TRACE, "spanId": SPAN}
    bad = {**link, key: value}
    if key == "span_id":
        del bad["spanId"]
    span["links"] = [link, bad]
    id_errors: decode.IdErrors = {}
    parsed = decode.parse_traces(json.dumps(doc).encode(), True, id_errors)
    result = decode.decode_traces(parsed, id_errors=id_errors)
    if message is None:
        assert (result.accepted, result.rejected) == (2, 0)
        links = parsed.resource_spans[0].scope_spans[0].spans[0].links
        assert links[1].span_id == bytes.fromhex(value if key == "spanId" else SPAN)
        return
    assert (result.accepted, result.rejected) == (1, 1)
    assert result.reasons == {"ids": 1}
    assert result.error_message == f"span {TRACE}/{SPAN} (runcov.coverage): {message}"
    assert [part.files[0].lines for part in result.batch.coverage] == [[2]]


def test_a_bad_span_id_is_named_before_a_bad_link_id():
    request = trace_request([coverage_span("GET /", [file_hits("a.py", [1])], span_id=SPAN)])
    doc = json.loads(to_otlp_json(request))
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["traceId"] = "nope"
    span["links"] = [{"traceId": "zz", "spanId": SPAN}]
    id_errors: decode.IdErrors = {}
    result = decode.decode_traces(
        decode.parse_traces(json.dumps(doc).encode(), True, id_errors), id_errors=id_errors
    )
    assert result.error_message == f"span -/{SPAN} (runcov.coverage): trace_id 'nope' is not hex"


def _exemplar(**ids: str | None) -> dict[str, object]:
    return {"traceId": TRACE, "spanId": SPAN, "asInt": "1", "timeUnixNano": "5", **ids}


def test_non_hex_exemplar_ids_in_json_reject_their_data_point_saying_so():
    """An exemplar id that is not hex is not read as empty: its data point is rejected (the
    rest of the request is kept), the message naming the point and the exemplar. Metrics the
    collector skips are not looked at, as spans of other scopes."""
    request = _metrics_request(
        [
            ("runcov.requests.sampled", "sum", 2, {}),
            ("runcov.sample_rate", "gauge", 0.5, {}),
            ("runcov.latency", "histogram", None, {}),
        ]
    )
    request.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points.add().as_int = 3
    doc = json.loads(to_otlp_json(request))
    metrics = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    metrics[0]["sum"]["dataPoints"][1]["exemplars"] = [_exemplar(), _exemplar(spanId="zz")]
    metrics[1]["gauge"]["dataPoints"][0]["exemplars"] = [_exemplar()]
    metrics[2]["histogram"]["dataPoints"][0]["exemplars"] = [_exemplar(traceId="zz")]
    id_errors: decode.IdErrors = {}
    parsed = decode.parse_metrics(json.dumps(doc).encode(), True, id_errors)
    result = decode.decode_metrics(parsed, id_errors=id_errors)
    assert (result.accepted, result.rejected) == (2, 1)
    assert result.reasons == {"ids": 1}
    assert result.skipped == {"unsupported_metric": 1}
    assert result.error_message == (
        "metric 'runcov.requests.sampled': data_points[1].exemplars[1].span_id 'zz' is not hex"
    )
    assert [(p.name, p.value) for p in result.batch.metrics] == [
        ("runcov.requests.sampled", 2.0),
        ("runcov.sample_rate", 0.5),
    ]
    kept = parsed.resource_metrics[0].scope_metrics[0].metrics[1].gauge.data_points[0]
    assert kept.exemplars[0].span_id == bytes.fromhex(SPAN)


def test_a_bad_link_id_over_http_json_rejects_only_its_span(client):
    good = coverage_span("GET /", [file_hits("shop/views.py", [5])])
    bad = coverage_span(
        "GET /", [file_hits("shop/views.py", [6])], trace_id=TRACE, span_id="ab" * 8
    )
    doc = json.loads(to_otlp_json(trace_request([good, bad])))
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["links"] = [
        {"traceId": TRACE, "spanId": "not-hex"}
    ]
    response = client.post("/v1/traces", json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert partial["errorMessage"] == (
        f"span {TRACE}/{'ab' * 8} (runcov.coverage): links[0].span_id 'not-hex' is not hex"
    )
    release = {"service": "shop", "version": "", "environment": "", "role": "baseline"}
    answer = client.query("/api/v1/file", **release, path="shop/views.py")
    assert [line for line, _, _ in answer["lines"]] == [5]
    assert 'runcov_collector_rejections_total{reason="ids"} 1' in (
        client.get("/metrics", token=None).text
    )


def test_a_bad_exemplar_id_over_http_json_rejects_only_its_data_point(client):
    request = _metrics_request(
        [("runcov.requests.sampled", "sum", 2, {}), ("runcov.sample_rate", "gauge", 0.5, {})]
    )
    doc = json.loads(to_otlp_json(request))
    metrics = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    metrics[1]["gauge"]["dataPoints"][0]["exemplars"] = [_exemplar(traceId="not-hex")]
    response = client.post("/v1/metrics", json.dumps(doc).encode(), "application/json")
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedDataPoints"]) == 1
    assert partial["errorMessage"] == (
        "metric 'runcov.sample_rate': data_points[0].exemplars[0].trace_id 'not-hex' is not hex"
    )
    text = client.get("/metrics", token=None).text
    assert 'runcov_collector_rejections_total{reason="ids"} 1' in text
    accepted = 'signal="metrics",result="accepted"} 1'
    assert any(line.endswith(accepted) for line in text.splitlines()), text
