"""Property tests: hostile bodies and attribute values over OTLP/HTTP and OTLP/gRPC.

Every answer is a proper OTLP answer (never a 500 or a dropped connection), hostile data is
refused with a message naming the problem, and nothing refused reaches the store.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import grpc
import httpx
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from runcov_collector.app import Collector
from runcov_collector.config import Config
from runcov_collector.testing import (
    SpanSpec,
    coverage_attributes,
    coverage_span,
    file_hits,
    to_otlp_json,
    trace_request,
)

TOKEN = "fuzz-ingest"
QUERY = "fuzz-query"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class Answer:
    """A transport-neutral view of one export answer."""

    def __init__(self, kind: str, message: str = "", rejected: int = 0) -> None:
        self.kind = kind  # "ok" | "invalid" | "too_large"
        self.message = message
        self.rejected = rejected


class Target:
    """One running collector, reachable over both transports."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{collector.http_port}", timeout=30)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
        self.export = self.channel.unary_unary(TRACES)

    def send_http(self, body: bytes, json_body: bool) -> Answer:
        media = "application/json" if json_body else "application/x-protobuf"
        response = self.http.post(
            "/v1/traces",
            content=body,
            headers={"content-type": media, "authorization": f"Bearer {TOKEN}"},
        )
        assert response.headers["content-type"] == media
        if response.status_code == 200:
            parsed = ExportTraceServiceResponse()
            if json_body:
                partial = response.json().get("partialSuccess", {})
                return Answer(
                    "ok", partial.get("errorMessage", ""), int(partial.get("rejectedSpans", 0))
                )
            parsed.ParseFromString(response.content)
            return Answer(
                "ok",
                parsed.partial_success.error_message,
                parsed.partial_success.rejected_spans,
            )
        assert response.status_code in (400, 413), (response.status_code, response.text)
        if json_body:
            message = response.json()["message"]
        else:
            status = status_pb2.Status()
            status.ParseFromString(response.content)
            message = status.message
        assert message
        return Answer("invalid" if response.status_code == 400 else "too_large", message)

    def send_grpc(self, body: bytes) -> Answer:
        try:
            raw = self.export(body, metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=30)
        except grpc.RpcError as exc:
            assert exc.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), (exc.code(), exc.details())
            assert exc.details()
            return Answer("invalid", exc.details())
        parsed = ExportTraceServiceResponse()
        parsed.ParseFromString(raw)
        return Answer(
            "ok", parsed.partial_success.error_message, parsed.partial_success.rejected_spans
        )

    def send(self, transport: str, request: Any) -> Answer:
        if transport == "grpc":
            return self.send_grpc(request.SerializeToString())
        if transport == "json":
            return self.send_http(to_otlp_json(request), True)
        return self.send_http(request.SerializeToString(), False)

    def releases(self, service: str) -> list[Any]:
        response = self.http.get(
            "/api/v1/releases",
            params={"service": service},
            headers={"authorization": f"Bearer {QUERY}"},
        )
        if response.status_code == 404:
            assert response.json() == {"error": f"unknown service {service!r}"}
            return []
        assert response.status_code == 200, response.text
        return list(response.json()["releases"])

    def lines(self, service: str, path: str) -> list[int]:
        response = self.http.get(
            "/api/v1/file",
            params={"service": service, "path": path},
            headers={"authorization": f"Bearer {QUERY}"},
        )
        assert response.status_code == 200, response.text
        return [line for line, _, _ in response.json()["lines"]]

    def alive(self) -> bool:
        return self.http.get("/healthz").status_code == 200

    def close(self) -> None:
        self.http.close()
        self.channel.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: Any) -> Any:
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    config = Config(
        http_port=0,
        grpc_port=0,
        store_url=f"sqlite:///{db}",
        ingest_token=TOKEN,
        query_token=QUERY,
        retention_hours=0,
        max_body_bytes=256 * 1024,
    )
    collector = Collector(config).start()
    t = Target(collector)
    yield t
    assert t.alive()
    # Nothing that was refused ever reached the store.
    assert t.releases("hostile") == []
    t.close()
    collector.stop()


TRANSPORTS = ["protobuf", "json", "grpc"]
HOSTILE = {"service.name": "hostile"}


def _valid_body(service: str = "hostile") -> bytes:
    spans = [coverage_span("GET /", [file_hits("a.py", [1, 2, 3], [(1, 2), (2, 3)])])]
    return trace_request(spans, {"service.name": service}).SerializeToString()


@FUZZ
@given(body=st.binary(max_size=2048))
def test_garbage_protobuf_bodies(target, body):
    for answer in (target.send_http(body, False), target.send_grpc(body)):
        assert answer.kind in ("ok", "invalid")
        if answer.kind == "invalid":
            assert "not a valid ExportTraceServiceRequest protobuf" in answer.message
    assert target.releases("hostile") == []


@FUZZ
@given(body=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_garbage_json_bodies(target, body):
    answer = target.send_http(body, True)
    assert answer.kind in ("ok", "invalid")
    if answer.kind == "invalid":
        assert answer.message.startswith("body is not") or "must be a JSON object" in answer.message


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=len(_valid_body()) - 1),
    transport=st.sampled_from(["protobuf", "grpc"]),
)
def test_truncated_bodies(target, cut, transport):
    body = _valid_body("truncated")[:cut]
    answer = target.send_grpc(body) if transport == "grpc" else target.send_http(body, False)
    assert answer.kind in ("ok", "invalid")
    # Whatever a truncated body left intact is a subset of what it held, never more.
    stored = target.releases("truncated")
    if stored:
        assert set(target.lines("truncated", "a.py")) <= {1, 2, 3}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceSpans",
                    "scopeSpans",
                    "spans",
                    "resource",
                    "attributes",
                    "key",
                    "value",
                    "stringValue",
                    "intValue",
                    "scope",
                    "name",
                    "traceId",
                    "spanId",
                    "kind",
                    "endTimeUnixNano",
                    "arrayValue",
                    "values",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)


@FUZZ
@given(
    doc=st.dictionaries(
        st.sampled_from(["resourceSpans", "resource_spans", "x"]), JSON_VALUES, max_size=2
    )
)
def test_wrong_types_anywhere_in_otlp_json(target, doc):
    answer = target.send_http(json.dumps(doc).encode(), True)
    assert answer.kind in ("ok", "invalid")
    assert target.releases("hostile") == []


SEGMENT = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_characters="/\\", exclude_categories=["Cc", "Cs"]
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))
SAFE_PATH = (
    st.lists(SEGMENT, min_size=1, max_size=4)
    .map("/".join)
    .filter(
        lambda p: (
            len(p.encode()) <= 1024
            and not (len(p) > 1 and p[1] == ":" and p[0].isascii() and p[0].isalpha())
        )
    )
)
HOSTILE_PATH = st.one_of(
    st.just("../../etc/passwd"),
    SAFE_PATH.map(lambda p: "../" + p),
    SAFE_PATH.map(lambda p: p + "/../../x"),
    SAFE_PATH.map(lambda p: "/" + p),
    SAFE_PATH.map(lambda p: p + "\x00"),
    st.tuples(SAFE_PATH, st.characters(codec="ascii", categories=["Cc"])).map("".join),
    st.just("a" * 1025),
    SAFE_PATH.map(lambda p: p.replace("/", "\\") + "\\x"),
    st.just(""),
)
PATH_REASONS = (
    "contains a '..' segment",
    "is absolute",
    "NUL or control characters",
    "more than 1024",
    "'/'-separated",
    "is empty",
)


def _one_span(
    transport: str, target: Target, attrs: dict[str, Any], resource: dict[str, Any]
) -> Answer:
    # Fresh ids each time: a repeated (trace_id, span_id) is a retry and is deduplicated.
    spec = SpanSpec("runcov.coverage", attrs)
    answer = target.send(transport, trace_request([spec], resource))
    if answer.rejected:
        assert f"span {spec.trace_id}/{spec.span_id} (runcov.coverage): " in answer.message
    return answer


@FUZZ
@given(path=HOSTILE_PATH, transport=st.sampled_from(TRANSPORTS))
def test_hostile_paths_are_refused_with_the_reason(target, path, transport):
    attrs = coverage_attributes("GET /", [file_hits(path, [1])])
    answer = _one_span(transport, target, attrs, HOSTILE)
    assert (answer.kind, answer.rejected) == ("ok", 1)
    assert "(runcov.coverage): files[0].path" in answer.message
    assert any(reason in answer.message for reason in PATH_REASONS), answer.message
    assert target.releases("hostile") == []


@FUZZ
@given(path=SAFE_PATH, transport=st.sampled_from(TRANSPORTS))
def test_unicode_safe_paths_are_stored_as_sent(target, path, transport):
    attrs = coverage_attributes("GET /", [file_hits(path, [7])])
    answer = _one_span(transport, target, attrs, {"service.name": "safe-paths"})
    assert (answer.kind, answer.rejected) == ("ok", 0), answer.message
    assert target.lines("safe-paths", path) == [7]


@FUZZ
@given(
    lines=st.lists(st.integers(min_value=-(10**30), max_value=10**30), min_size=1, max_size=5),
    transport=st.sampled_from(TRANSPORTS),
)
def test_line_numbers_outside_bounds_are_refused(target, lines, transport):
    valid = all(1 <= n <= 10_000_000 for n in lines)
    service = "lines-ok" if valid else "hostile"
    attrs = coverage_attributes("GET /", [file_hits("m.py", lines)])
    answer = _one_span(transport, target, attrs, {"service.name": service})
    assert answer.kind == "ok"
    if valid:
        assert answer.rejected == 0
        assert set(lines) <= set(target.lines("lines-ok", "m.py"))
    else:
        assert answer.rejected == 1
        assert (
            "files[0].lines has line" in answer.message and "outside 1..10000000" in answer.message
        )


WRONG_VALUES = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True),
    st.binary(max_size=8),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=20),
)
INT_KEYS = ("runcov.wire_version", "runcov.part", "runcov.parts")
STR_KEYS = ("runcov.mode", "runcov.endpoint", "runcov.payload", "runcov.status_class")


@FUZZ
@given(
    key=st.sampled_from(INT_KEYS + STR_KEYS),
    value=WRONG_VALUES,
    transport=st.sampled_from(TRANSPORTS),
)
def test_wrong_attribute_types_are_refused_with_the_key(target, key, value, transport):
    expects_int = key in INT_KEYS
    # Right types are covered by the value-specific tests.
    assume(
        not ((expects_int and type(value) is int) or (not expects_int and isinstance(value, str)))
    )
    attrs = coverage_attributes("GET /", [file_hits("a.py", [1])])
    attrs[key] = value
    answer = _one_span(transport, target, attrs, HOSTILE)
    assert (answer.kind, answer.rejected) == ("ok", 1)
    kind = "an int" if expects_int else "a string"
    assert f"attribute {key} must be {kind}" in answer.message


@FUZZ
@given(
    value=st.one_of(st.integers(), st.floats(), st.none(), st.text(max_size=5), st.booleans()),
    field=st.sampled_from(["path", "sha", "lines", "arcs", "files", "v"]),
    transport=st.sampled_from(TRANSPORTS),
)
def test_wrong_types_inside_the_payload_are_refused(target, value, field, transport):
    doc: dict[str, Any] = {
        "v": 1,
        "files": [{"path": "a.py", "sha": "0" * 16, "lines": [1], "arcs": []}],
    }
    if field in ("files", "v"):
        doc[field] = value
    else:
        doc["files"][0][field] = value
    # Right types are not this test's business (strings are valid paths and shas).
    assume(not (field == "v" and type(value) is int and value == 1))
    assume(not (field in ("path", "sha") and isinstance(value, str)))
    attrs = coverage_attributes("GET /", [])
    attrs["runcov.payload"] = json.dumps(doc)
    answer = _one_span(transport, target, attrs, HOSTILE)
    assert (answer.kind, answer.rejected) == ("ok", 1), answer.message
    assert "runcov.payload" in answer.message or "files[0]" in answer.message


def test_server_survives_a_burst_of_every_transport(target: Target) -> None:
    senders: list[Callable[[], Answer]] = [
        lambda: target.send_http(b"\x00" * 100, False),
        lambda: target.send_http(b"{}" * 1000, True),
        lambda: target.send_grpc(b"\xff" * 100),
    ]
    for send in senders * 5:
        assert send().kind in ("ok", "invalid")
    assert target.alive()
