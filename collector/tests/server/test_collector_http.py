"""OTLP/HTTP receiver status codes and messages, over real HTTP on loopback."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import sqlite3
import threading
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from runcov_collector.testing import (
    coverage_span,
    file_hits,
    file_static,
    static_span,
    to_otlp_json,
    trace_request,
)

RELEASE = {"service": "shop", "version": "", "environment": "", "role": "baseline"}


def _request(lines=(1, 2), path="shop/views.py", **kw: Any):
    return trace_request([coverage_span("GET /", [file_hits(path, lines)], **kw)])


def _status(response) -> status_pb2.Status:
    if response.headers["content-type"].startswith("application/json"):
        doc = response.json()
        return status_pb2.Status(code=doc.get("code", 0), message=doc.get("message", ""))
    status = status_pb2.Status()
    status.ParseFromString(response.content)
    return status


def _stored_lines(client) -> list[int]:
    response = client.get("/api/v1/file", **RELEASE, path="shop/views.py")
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    return [line for line, _, _ in response.json()["lines"]]


@pytest.mark.parametrize("json_body", [False, True])
@pytest.mark.parametrize("gzipped", [False, True])
def test_ok_answer_in_the_request_encoding(client, json_body, gzipped):
    response = client.send(_request(), json_body=json_body, gzipped=gzipped)
    assert response.status_code == 200
    if json_body:
        assert response.headers["content-type"] == "application/json"
        assert response.json() == {}
    else:
        assert response.headers["content-type"] == "application/x-protobuf"
        parsed = ExportTraceServiceResponse()
        parsed.ParseFromString(response.content)
        assert not parsed.HasField("partial_success")
    assert _stored_lines(client) == [1, 2]


@pytest.mark.parametrize("json_body", [False, True])
def test_partial_success_keeps_the_valid_spans(client, json_body):
    good = coverage_span("GET /", [file_hits("shop/views.py", [5])])
    bad = coverage_span("GET /", [file_hits("../../etc/passwd", [1])], span_id="ab" * 8)
    response = client.send(trace_request([good, bad]), json_body=json_body)
    assert response.status_code == 200
    if json_body:
        partial = response.json()["partialSuccess"]
        rejected, message = int(partial["rejectedSpans"]), partial["errorMessage"]
    else:
        parsed = ExportTraceServiceResponse()
        parsed.ParseFromString(response.content)
        rejected = parsed.partial_success.rejected_spans
        message = parsed.partial_success.error_message
    assert rejected == 1
    assert f"/{'ab' * 8} (runcov.coverage): files[0].path '../../etc/passwd'" in message
    assert "contains a '..' segment" in message
    assert _stored_lines(client) == [5]
    services = client.query("/api/v1/services")["services"]
    assert [s["service"] for s in services] == ["shop"]
    metrics = client.get("/metrics", token=None).text
    assert 'runcov_collector_rejections_total{reason="path"} 1' in metrics
    series = 'runcov_collector_ingest_requests_total{transport="http",signal="traces",'
    assert series + 'result="partial"} 1' in metrics


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b"\x0a\xff\xff\xff\xff\x0f",
            "application/x-protobuf",
            "not a valid ExportTraceServiceRequest",
        ),
        (b'{"resourceSpans": [', "application/json", "body is not valid JSON"),
        (b'"just a string"', "application/json", "must be a JSON object"),
        (b'{"resourceSpans": [{"resource": 3}]}', "application/json", "OTLP/JSON"),
    ],
)
def test_malformed_body_is_400_with_a_status_in_the_request_encoding(
    client, body, content_type, message
):
    response = client.post("/v1/traces", body, content_type)
    assert response.status_code == 400
    assert response.headers["content-type"] == content_type
    status = _status(response)
    assert status.code == 3  # INVALID_ARGUMENT
    assert message in status.message
    assert client.query("/api/v1/services") == {"services": []}


def test_bad_gzip_is_400(client):
    body = _request().SerializeToString()
    truncated = gzip.compress(body)[:-12]
    response = client.post(
        "/v1/traces",
        truncated,
        headers={"content-encoding": "gzip"},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "gzip body is truncated" in _status(response).message
    response = client.post("/v1/traces", b"plain bytes", headers={"content-encoding": "gzip"})
    assert response.status_code == 400
    assert "body is not valid gzip" in _status(response).message


def test_concatenated_gzip_members_are_one_body(client):
    body = to_otlp_json(_request(lines=[7]))
    half = len(body) // 2
    joined = gzip.compress(body[:half]) + gzip.compress(body[half:])
    response = client.post(
        "/v1/traces", joined, "application/json", headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert _stored_lines(client) == [7]


def test_a_deflate_body_is_read_and_a_bad_one_is_400(client):
    body = to_otlp_json(_request(lines=[7]))
    response = client.post(
        "/v1/traces", zlib.compress(body), "application/json",
        headers={"content-encoding": "deflate"},
    )
    assert response.status_code == 200, response.text
    assert _stored_lines(client) == [7]
    for bad, message in (
        (zlib.compress(body)[:-6], "deflate body is truncated"),
        (gzip.compress(body), "body is not valid deflate"),
        (zlib.compress(body) + b"more", "data follows the end of the deflate stream"),
    ):
        response = client.post(
            "/v1/traces", bad, "application/json", headers={"content-encoding": "deflate"}
        )
        assert response.status_code == 400, message
        assert message in _status(response).message


@pytest.mark.parametrize(
    ("content_type", "encoding", "message"),
    [
        ("text/plain", None, "unsupported Content-Type 'text/plain'"),
        ("application/xml; charset=utf-8", None, "unsupported Content-Type 'application/xml'"),
        ("", None, "unsupported Content-Type '(none)'"),
        ("application/x-protobuf", "br", "unsupported Content-Encoding 'br'"),
    ],
)
def test_unknown_media_is_415(client, content_type, encoding, message):
    headers = {"content-encoding": encoding} if encoding else {}
    response = client.post(
        "/v1/traces", _request().SerializeToString(), content_type, headers=headers
    )
    assert response.status_code == 415
    assert message in _status(response).message
    assert client.query("/api/v1/services") == {"services": []}


@pytest.mark.parametrize(
    "token", [None, "wrong", "ingest-secret-token-but-longer", "ingest-secret-toke"]
)
def test_ingest_without_the_right_token_is_401(client, token):
    response = client.send(_request(), token=token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert _status(response).message == "missing or invalid bearer token"
    assert _status(response).code == 16
    # The query token does not grant ingestion.
    assert client.send(_request(), token="query-secret-token").status_code == 401
    assert client.query("/api/v1/services") == {"services": []}


def test_query_and_dashboard_need_the_query_token(client):
    for token in (None, "wrong", "ingest-secret-token"):
        response = client.get("/api/v1/services", token=token)
        assert response.status_code == 401
        assert response.json() == {"error": "missing or invalid bearer token"}
    dashboard = client.http.get("/")
    assert dashboard.status_code == 401
    assert dashboard.headers["www-authenticate"].startswith('Basic realm="runcov"')
    assert client.http.get("/", auth=("anyone", "query-secret-token")).status_code != 401
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert client.http.get(open_path).status_code == 200


def test_no_auth_accepts_requests_without_tokens(start_collector, make_client):
    client = make_client(start_collector(no_auth=True, ingest_token=None, query_token=None))
    assert client.send(_request(), token=None).status_code == 200
    assert client.get("/api/v1/services", token=None).status_code == 200


def test_body_over_the_limit_is_413(start_collector, make_client):
    client = make_client(start_collector(max_body_bytes=4096))
    big = _request(lines=range(1, 3000)).SerializeToString()
    assert len(big) > 4096
    response = client.post("/v1/traces", big)
    assert response.status_code == 413
    assert _status(response).message == (
        f"request body of {len(big)} bytes exceeds the limit of 4096 bytes"
    )
    # Without Content-Length (chunked upload) the streaming cap answers the same.
    chunks = iter([big[i : i + 1000] for i in range(0, len(big), 1000)])
    response = client.http.post(
        "/v1/traces",
        content=chunks,
        headers={
            "content-type": "application/x-protobuf",
            "authorization": "Bearer ingest-secret-token",
        },
    )
    assert response.status_code == 413
    assert "exceeds the limit of 4096 bytes" in _status(response).message
    assert client.query("/api/v1/services") == {"services": []}


def test_gzip_bomb_is_413_without_inflating_it(start_collector, make_client):
    limit = 1024 * 1024
    client = make_client(start_collector(max_body_bytes=limit))
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()
    assert len(bomb) < limit  # the compressed body itself is within the limit
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        response = client.post("/v1/traces", bomb, headers={"content-encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413
    assert _status(response).message == (
        f"request body exceeds the limit of {limit} bytes after decompression"
    )
    # 256 MiB inflated would show here; the capped decompressor stays near the limit.
    assert peak < 24 * 1024 * 1024, peak
    assert client.get("/healthz", token=None).status_code == 200


def test_overloaded_store_is_429_with_retry_after_and_nothing_acknowledged(
    start_collector, make_client, tmp_path
):
    client = make_client(
        start_collector(max_inflight_ingests=1, store_url=f"sqlite:///{tmp_path / 'busy.db'}")
    )
    # Another writer holds SQLite's write lock: the first ingest waits for it.
    blocker = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    ingestor = client.collector.ingestor
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.send, _request(lines=[1]))
        entered = threading.Event()
        while not entered.wait(0.01):
            if ingestor.inflight == 1:
                entered.set()
        second = client.send(_request(lines=[2]))
        assert second.status_code == 429
        assert second.headers["retry-after"] == "2"
        assert _status(second).message == (
            "collector is busy: 1 ingests already in flight; retry later"
        )
        assert not first.done()  # no answer before the store committed
        blocker.execute("COMMIT")
        assert first.result().status_code == 200
    blocker.close()
    assert _stored_lines(client) == [1]
    metrics = client.get("/metrics", token=None).text
    assert 'result="overloaded"} 1' in metrics


class _Records(logging.Handler):
    """Keeps the records a logger handles."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_that_disconnects_mid_upload_is_counted_without_a_traceback(client, caplog):
    """An exporter that gives up during an upload (at its deadline) closes the connection with
    the body half sent: the request is counted as disconnected and logged in one INFO line,
    without uvicorn's "Exception in ASGI application" traceback."""
    server_errors = _Records()
    logging.getLogger("uvicorn.error").addHandler(server_errors)
    disconnected = (
        'runcov_collector_ingest_requests_total{transport="http",signal="traces",'
        'result="disconnected"} 1'
    )
    try:
        with caplog.at_level(logging.INFO, logger="runcov_collector"):
            with socket.create_connection(("127.0.0.1", client.collector.http_port)) as sock:
                sock.sendall(
                    b"POST /v1/traces HTTP/1.1\r\nHost: collector\r\n"
                    b"Content-Type: application/x-protobuf\r\n"
                    b"Authorization: Bearer ingest-secret-token\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 50000
                )
            deadline = time.monotonic() + 5
            while disconnected not in client.get("/metrics", token=None).text:
                assert time.monotonic() < deadline, [r.getMessage() for r in server_errors.records]
                time.sleep(0.05)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(server_errors)
    assert server_errors.records == []
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.INFO, None)]
    assert lines[0].getMessage() == (
        "OTLP/HTTP client disconnected from /v1/traces after sending 50000 of 100000 bytes; "
        "nothing was stored"
    )
    assert client.query("/api/v1/services") == {"services": []}


def test_unavailable_store_is_503_with_retry_after(make_store, start_collector, make_client):
    store = make_store()
    client = make_client(start_collector(store=store))
    assert client.send(_request(lines=[1])).status_code == 200
    store.close()  # the database goes away under the running collector
    response = client.send(_request(lines=[2]), json_body=True)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    status = _status(response)
    assert status.code == 14  # UNAVAILABLE
    assert "the store is closed" in status.message
    assert client.http.get("/readyz").status_code == 503


class _FailingStore:
    """Delegates to a real store but fails ingest like a database that lost its disk."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def ingest(self, batch: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_operational_store_error_is_503_and_not_stored(make_store, start_collector, make_client):
    store = make_store()
    client = make_client(start_collector(store=_FailingStore(store)))
    response = client.send(_request())
    assert response.status_code == 503
    assert _status(response).message == "store unavailable: OperationalError: disk I/O error"
    assert store.services() == {"services": []}


def test_otlp_routes_are_post_only(client):
    headers = {"authorization": "Bearer ingest-secret-token"}
    assert client.http.get("/v1/traces", headers=headers).status_code == 405


def test_json_error_bodies_are_valid_json(client):
    response = client.post("/v1/metrics", b"nope", "application/json")
    assert response.status_code == 400
    assert json.loads(response.text)["message"].startswith("body is not valid JSON")


def _partial(response) -> tuple[int, str]:
    if response.headers["content-type"].startswith("application/json"):
        partial = response.json().get("partialSuccess", {})
        return int(partial.get("rejectedSpans", 0)), partial.get("errorMessage", "")
    parsed = ExportTraceServiceResponse()
    parsed.ParseFromString(response.content)
    return parsed.partial_success.rejected_spans, parsed.partial_success.error_message


@pytest.mark.parametrize("json_body", [False, True])
def test_a_time_beyond_64_bits_rejects_its_span_and_keeps_the_rest(client, json_body):
    good = coverage_span("GET /", [file_hits("shop/views.py", [7])])
    poison = static_span(
        [file_static("shop/views.py", [7, 8])], span_id="ef" * 8, end_time_unix_nano=2**64 - 1
    )
    response = client.send(trace_request([good, poison]), json_body=json_body)
    assert response.status_code == 200, response.text
    rejected, message = _partial(response)
    assert rejected == 1
    assert f"/{'ef' * 8} (runcov.static): end_time_unix_nano 18446744073709551615" in message
    assert _stored_lines(client) == [7]
    metrics = client.get("/metrics", token=None).text
    assert 'runcov_collector_rejections_total{reason="time"} 1' in metrics


class _PoisonStore:
    """A real store that, like a database refusing one value, fails any batch holding a part of
    the endpoint ``GET /poison`` (with a non-operational error)."""

    def __init__(self, store: Any, error: Exception) -> None:
        self._store = store
        self.error = error
        self.calls = 0

    def ingest(self, batch: Any) -> Any:
        self.calls += 1
        if any(part.endpoint == "GET /poison" for part in batch.coverage):
            raise self.error
        return self._store.ingest(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize(
    "error",
    [
        OverflowError("Python int too large to convert to SQLite INTEGER"),
        sqlite3.IntegrityError("NOT NULL constraint failed"),
    ],
)
def test_a_value_the_store_cannot_keep_is_rejected_not_retried_forever(
    make_store, start_collector, make_client, error
):
    store = _PoisonStore(make_store(), error)
    client = make_client(start_collector(store=store))
    spans = [
        coverage_span("GET /", [file_hits("shop/views.py", [n])], span_id=f"{n:016x}")
        for n in range(1, 6)
    ]
    spans.insert(3, coverage_span("GET /poison", [file_hits("x.py", [1])], span_id="ab" * 8))
    response = client.send(trace_request(spans))
    assert response.status_code == 200, response.text
    rejected, message = _partial(response)
    assert rejected == 1
    assert message == (
        f"span {spans[3].trace_id}/{'ab' * 8} (runcov.coverage): the store cannot keep it: "
        f"{type(error).__name__}: {error}"
    )
    assert _stored_lines(client) == [1, 2, 3, 4, 5]
    assert store.calls < 10  # halved down to the one item, not stored item by item
    # Alone, the value is rejected as well: the answer is final, not "retry".
    alone = client.send(trace_request([coverage_span("GET /poison", [file_hits("x.py", [1])])]))
    assert alone.status_code == 200
    assert _partial(alone)[0] == 1
    # Sent again, the storable parts are told apart as duplicates after the split as well.
    assert _partial(client.send(trace_request(spans)))[0] == 1
    metrics = client.get("/metrics", token=None).text
    assert 'runcov_collector_rejections_total{reason="store"} 3' in metrics
    parts = 'runcov_collector_ingest_parts_total{transport="http",kind="coverage",result='
    assert f'{parts}"stored"}} 5' in metrics
    assert f'{parts}"duplicate"}} 5' in metrics


def test_json_item_that_is_not_an_object_is_400(client):
    body = b'{"resourceSpans": [{"scopeSpans": [{"scope": {"name": "runcov"}, "spans": ["x"]}]}]}'
    response = client.post("/v1/traces", body, "application/json")
    assert response.status_code == 400
    assert _status(response).message.endswith(
        "resourceSpans[0].scopeSpans[0].spans[0] must be a JSON object, not a string"
    )
