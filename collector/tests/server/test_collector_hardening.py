"""Hardening of the collector against hostile network clients, over real sockets on loopback:
invisible and reordering characters in names, which files the dashboard shows, slow or idle
connections, the number of connections, and the dashboard's security headers."""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from collector.tests.server.conftest import INGEST_TOKEN, QUERY_TOKEN
from collector.tests.server.test_collector_http import _partial as partial_success

from runcov_collector.testing import (
    coverage_span,
    file_hits,
    file_static,
    static_span,
    trace_request,
)

# -- C1 and bidirectional controls --------------------------------------------------------------

#: C1 controls (U+009B is the 8-bit CSI: ``\x9b31m`` colours a terminal red), then every
#: Unicode Bidi_Control character (the overrides reorder how a name is displayed).
HOSTILE = ["\x80", "\x85", "\x9b", "\x9f", "\u061c", "\u200e", "\u200f",
           "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068",
           "\u2069"]


def _partial(response: Any) -> tuple[int, str]:
    """An accepted export's partial success: (rejected spans, error message)."""
    assert response.status_code == 200, response.text
    return partial_success(response)


@pytest.mark.parametrize("json_body", [False, True], ids=["protobuf", "json"])
def test_c1_and_bidi_controls_reject_their_span_with_a_reason(client, json_body):
    for char in HOSTILE:
        good = coverage_span("GET /", [file_hits("shop/views.py", [1])])
        cases = {
            "path": coverage_span("GET /", [file_hits(f"pkg/adm{char}nig.py", [1])]),
            "endpoint": coverage_span(f"GET /a{char}31m", [file_hits("shop/views.py", [2])]),
            "function": static_span(
                [file_static("shop/views.py", [1], functions=[(f"bidi{char}evil", 1, 1)])]
            ),
        }
        for what, bad in cases.items():
            rejected, message = _partial(client.send(trace_request([good, bad]),
                                                     json_body=json_body))
            assert rejected == 1, (what, repr(char))
            assert f"/{bad.span_id} " in message
            assert "contains" in message and "control characters" in message, message
            # The character is shown escaped in the message, never raw.
            assert char not in message
        # In a resource attribute, every runcov span of the resource is rejected.
        resource = {"service.name": f"shop{char}", "service.version": "1"}
        rejected, message = _partial(client.send(trace_request([good], resource),
                                                 json_body=json_body))
        assert rejected == 1, repr(char)
        assert "resource attribute service.name" in message and "control characters" in message
    services = client.query("/api/v1/services")["services"]
    assert [s["service"] for s in services] == ["shop"]
    paths = {f["path"] for f in client.query("/api/v1/coverage", service="shop")["files"]}
    assert paths == {"shop/views.py"}
    metrics = client.get("/metrics", token=None).text
    assert f'runcov_collector_rejections_total{{reason="path"}} {len(HOSTILE)}' in metrics


def test_printable_unicode_names_are_still_accepted(client):
    """Letters of any script, and format characters that are not controls (the zero-width
    joiner of emoji sequences), stay valid."""
    name = "GET /caf\u00e9/\u65e5\u672c/\U0001f469\u200d\U0001f4bb"
    rejected, _ = _partial(client.send(trace_request(
        [coverage_span(name, [file_hits("sh\u00f6p/\u00a0v.py", [1])])]
    )))
    assert rejected == 0
    endpoints = client.query("/api/v1/endpoints", service="shop")["endpoints"]
    assert [e["endpoint"] for e in endpoints] == [name]


# -- which files the dashboard shows ------------------------------------------------------------


def _file_page(client: Any, path: str) -> tuple[int, str]:
    response = client.get("/ui/file", service="travsvc", version="1", environment="prod",
                          role="baseline", path=path)
    return response.status_code, response.text


def test_the_file_page_shows_python_sources_only(tmp_path: Path, start_collector, make_client):
    """An ingest client names files it wants disclosed: repository metadata, secrets, keys.
    The coverage is stored (it is only numbers), but the dashboard reads no such file."""
    root = tmp_path / "src"
    secrets = {
        ".git/config": "[remote]\n url = https://user:SEKRITGITPW@host/x\n",
        ".env": "DB_PASSWORD=SEKRITENV\n",
        "keys/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nSEKRITKEY\n",
        "config/settings.toml": "token = 'SEKRITTOML'\n",
        ".secrets/settings.py": "PASSWORD = 'SEKRITDOTPY'\n",
        "pkg/.hidden.py": "PASSWORD = 'SEKRITHIDDENPY'\n",
    }
    shown = {"pkg/app.py": "def handler():\n    return 'VISIBLE-PY'\n",
             "pkg/gui.pyw": "TITLE = 'VISIBLE-PYW'\n"}
    for rel, text in {**secrets, **shown}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    client = make_client(start_collector(source_dir=str(root)))
    files = [file_hits(rel, [1]) for rel in [*secrets, *shown]]
    resource = {"service.name": "travsvc", "service.version": "1",
                "deployment.environment.name": "prod"}
    rejected, _ = _partial(client.send(trace_request([coverage_span("GET /", files)], resource)))
    assert rejected == 0
    for rel in secrets:
        status, page = _file_page(client, rel)
        assert status == 200, page
        assert "SEKRIT" not in page, rel
        assert 'id="source-note"' in page
        why = ("a path segment starts with" if "/." in "/" + rel
               else "not a Python source file")
        assert why in page, (rel, page)
    for rel, text in shown.items():
        status, page = _file_page(client, rel)
        assert status == 200, page
        assert text.split("'")[1] in page, rel
        assert 'id="source-note"' not in page


# -- slow and idle connections ------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), None if still open after
    ``seconds``. Whatever the server sends before closing is read and dropped."""
    start = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - start < seconds:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def _http_get(port: int, path: str = "/healthz") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_a_connection_that_does_not_finish_its_headers_is_closed(start_collector):
    collector = start_collector(header_timeout_seconds=1.0)
    port = collector.http_port
    silent = _connect(port)
    partial = _connect(port)
    partial.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
    trickle = _connect(port)
    trickle.sendall(b"POST /v1/traces HTTP/1.1\r\n")
    # Without a token the answer is 401 before the body is read; a body that never ends
    # keeps the connection no longer than missing headers would.
    endless = _connect(port)
    endless.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
    # One header line every 0.3 s: every byte restarts no clock.
    stop = threading.Event()

    def drip() -> None:
        for n in range(20):
            if stop.wait(0.3):
                return
            try:
                trickle.sendall(f"X-{n}: y\r\n".encode())
                endless.sendall(b"body")
            except OSError:
                return

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        for sock in (silent, partial, trickle, endless):
            elapsed = _closed_within(sock, 4.0)
            assert elapsed is not None, "the server kept a connection without a request open"
        stop.set()
        # After one complete request, the next request's headers are bounded the same way.
        with _connect(port) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert again.recv(4096).startswith(b"HTTP/1.1 200")
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            assert _closed_within(again, 4.0) is not None
        # Normal requests are unaffected.
        assert _http_get(port).startswith(b"HTTP/1.1 200")
        metrics = _http_get(port, "/metrics").decode()
        assert "runcov_collector_http_header_timeouts_total 5" in metrics
    finally:
        stop.set()
        dripper.join(5)
        for sock in (silent, partial, trickle, endless):
            sock.close()


def test_the_header_bound_does_not_cut_a_request_being_served(start_collector):
    """Once the headers are in, the request is the application's: a body that takes longer
    than the header bound to arrive is still received and stored."""
    collector = start_collector(header_timeout_seconds=1.0)
    body = trace_request([coverage_span("GET /", [file_hits("shop/views.py", [3])])])
    data = body.SerializeToString()
    head = (
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        f"Authorization: Bearer {INGEST_TOKEN}\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with _connect(collector.http_port) as sock:
        # Headers in two pieces within the bound, then the body after more than the bound.
        sock.sendall(head[:20])
        time.sleep(0.5)
        sock.sendall(head[20:])
        time.sleep(1.5)
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_connections_past_the_cap_are_refused_until_one_closes(start_collector):
    collector = start_collector(max_connections=3, header_timeout_seconds=30.0)
    port = collector.http_port
    held = [_connect(port) for _ in range(3)]
    try:
        time.sleep(0.2)  # let the server accept all three
        with _connect(port) as extra:
            assert _closed_within(extra, 3.0) is not None
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the server sees the close on its next loop iteration
            answer = _http_get(port)
            if answer.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for sock in held:
            sock.close()
    metrics = _http_get(port, "/metrics").decode()
    assert "runcov_collector_connections_refused_total 1" in metrics


# -- security headers ---------------------------------------------------------------------------


def test_dashboard_pages_send_security_headers(tmp_path: Path, start_collector, make_client):
    root = tmp_path / "src"
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "views.py").write_text("x = 1\n")
    client = make_client(start_collector(source_dir=str(root)))
    _partial(client.send(trace_request([coverage_span("GET /", [file_hits("shop/views.py",
                                                                          [1])])])))
    pages = ["/", "/ui/service?service=shop",
             "/ui/release?service=shop&version=&environment=&role=baseline",
             "/ui/file?service=shop&version=&environment=&role=baseline&path=shop/views.py",
             "/ui/service", "/ui/file?service=nope&path=x.py"]
    for page in pages:
        response = client.http.get(page, headers={"authorization": f"Bearer {QUERY_TOKEN}"})
        assert response.status_code in (200, 400, 404), (page, response.status_code)
        assert response.headers["content-type"].startswith("text/html")
        headers = response.headers
        csp = {d.strip().split(" ", 1)[0]: d.strip() for d in
               headers["content-security-policy"].split(";")}
        assert csp["default-src"] == "default-src 'self'", page
        assert csp["script-src"] == "script-src 'self'"
        assert csp["style-src"] == "style-src 'self'"
        assert csp["frame-ancestors"] == "frame-ancestors 'none'"
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
    static = client.get("/ui/static/dashboard.js")
    assert static.status_code == 200
    assert static.headers["x-content-type-options"] == "nosniff"


def test_a_python_named_symlink_to_a_hidden_or_other_file_is_not_shown(tmp_path: Path):
    from runcov_collector.dashboard.source import read_source

    (tmp_path / "pkg").mkdir()
    (tmp_path / ".env").write_text("DB_PASSWORD=SEKRITENV\n")
    (tmp_path / "notes.txt").write_text("SEKRITNOTES\n")
    (tmp_path / "pkg" / "views.py").symlink_to(tmp_path / ".env")
    (tmp_path / "pkg" / "notes.py").symlink_to(tmp_path / "notes.txt")
    (tmp_path / "pkg" / "real.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "alias.py").symlink_to(tmp_path / "pkg" / "real.py")
    assert read_source(str(tmp_path), "pkg/views.py")[0] is None
    assert read_source(str(tmp_path), "pkg/notes.py")[0] is None
    assert read_source(str(tmp_path), "pkg/alias.py")[0] == "x = 1\n"


# -- /metrics per-release series ----------------------------------------------------------------


def test_per_release_series_are_capped_to_the_most_recently_seen(start_collector, make_client):
    """Releases an ingest client invents (or a version per process) do not grow every scrape
    without bound: the ``metrics_max_releases`` most recently seen get series, and a gauge
    counts those left out."""
    client = make_client(start_collector(metrics_cache_seconds=0, metrics_max_releases=2))
    now = time.time_ns()
    for age, service in enumerate(["newest", "middle", "oldest"]):
        spans = [
            static_span([file_static("shop/views.py", [1, 2])]),
            coverage_span("GET /", [file_hits("shop/views.py", [1])],
                          end_time_unix_nano=now - age * 3600 * 10**9),
        ]
        resource = {"service.name": service, "service.version": "1"}
        assert _partial(client.send(trace_request(spans, resource)))[0] == 0
    text = client.get("/metrics", token=None).text
    series = re.findall(r'^runcov_collector_release_line_coverage_ratio\{service="(\w+)"', text,
                        re.M)
    assert sorted(series) == ["middle", "newest"]
    assert re.search(r"^runcov_collector_release_series_omitted 1$", text, re.M), text


def test_the_grpc_listener_has_the_same_bounds(start_collector):
    """A connection to the gRPC port that never completes gRPC's HTTP/2 handshake is closed
    after the header timeout; connections past the cap are closed at once; an export over a
    real channel still works."""
    collector = start_collector(header_timeout_seconds=1.0, max_connections=2)
    port = collector.grpc_port
    with _connect(port) as silent:
        took = _closed_within(silent, 6.0)
    assert took is not None and 0.5 < took < 4.0, took
    with _connect(port) as preface_only:
        preface_only.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # then nothing
        assert _closed_within(preface_only, 6.0) is not None

    held = [_connect(port) for _ in range(2)]
    try:
        time.sleep(0.2)
        with _connect(port) as extra:
            assert _closed_within(extra, 0.8) is not None  # (before any handshake timeout)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    import grpc
    from collector.tests.server.test_collector_grpc import TRACES, Rpc, _request

    rpc = Rpc(port)
    try:
        rpc.call(TRACES, _request().SerializeToString())
    except grpc.RpcError as exc:  # pragma: no cover - the assertion below says why
        raise AssertionError(f"export refused: {exc.code()} {exc.details()}") from exc
    finally:
        rpc.close()
