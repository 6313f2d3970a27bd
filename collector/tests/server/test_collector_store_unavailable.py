"""A store that goes away under a running collector: the query API and the dashboard answer 503
(``store unavailable``, with Retry-After) like ingest does, and recover once it is back; any
other failure of a query stays a 500."""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from runcov_collector.testing import coverage_span, file_hits, file_static, static_span
from runcov_collector.testing import trace_request as _trace_request

RELEASE = {"service": "shop", "version": "", "environment": "", "role": "baseline"}
QUERIES = [
    ("/api/v1/services", {}),
    ("/api/v1/releases", {"service": "shop"}),
    ("/api/v1/endpoints", RELEASE),
    ("/api/v1/coverage", RELEASE),
    ("/api/v1/file", {**RELEASE, "path": "shop/views.py"}),
    ("/api/v1/series", RELEASE),
    ("/api/v1/agent", RELEASE),
    ("/api/v1/diff", {"service": "shop", "a_role": "baseline", "b_role": "baseline"}),
]
PAGES = [("/", {}), ("/ui/service", {"service": "shop"}), ("/ui/release", {"service": "shop"})]


def _seed(client: Any) -> None:
    spans = [
        coverage_span("GET /", [file_hits("shop/views.py", [1, 2], [(-1, 1), (1, 2)])]),
        static_span([file_static("shop/views.py", [1, 2, 3], [(-1, 1), (1, 2), (1, 3)])]),
    ]
    assert client.send(_trace_request(spans)).status_code == 200


def _assert_unavailable(client: Any, reason_start: str) -> None:
    for route, params in QUERIES:
        response = client.get(route, **params)
        assert response.status_code == 503, (route, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.headers["retry-after"] == "2"
        message = response.json()["error"]
        assert message.startswith(f"store unavailable: {reason_start}"), (route, message)
        assert "\n" not in message and len(message) < 260
    for page, params in PAGES:
        response = client.get(page, **params)
        assert response.status_code == 503, (page, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["retry-after"] == "2"
        assert "<h1>Store unavailable</h1>" in response.text
        assert "The coverage store is unavailable (" in response.text
    ingest = client.send(_trace_request([coverage_span("GET /", [file_hits("a.py", [1])])]))
    assert (ingest.status_code, ingest.headers["retry-after"]) == (503, "2")
    assert client.http.get("/readyz").status_code == 503


def test_closed_store_is_503_for_queries_and_pages(make_store, start_collector, make_client):
    store = make_store()
    client = make_client(start_collector(store=store))
    _seed(client)
    assert client.get("/api/v1/coverage", **RELEASE).status_code == 200
    store.close()  # the database goes away under the running collector
    _assert_unavailable(client, "StoreClosed: the store is closed")


class _FailingQueries:
    """Delegates to a real store, but every query raises ``error``."""

    QUERY_METHODS = ("services", "releases", "endpoints", "coverage", "file", "series", "agent",
                     "diff")

    def __init__(self, store: Any, error: BaseException) -> None:
        self._store = store
        self.error = error

    def __getattr__(self, name: str) -> Any:
        if name in self.QUERY_METHODS:

            def fail(*args: Any, **kwargs: Any) -> Any:
                raise self.error

            return fail
        return getattr(self._store, name)


def _programming_error() -> BaseException:
    import psycopg

    return psycopg.errors.UndefinedTable('relation "metrics" does not exist')


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (sqlite3.OperationalError("database is locked"), 503,
         "store unavailable: OperationalError: database is locked"),
        (sqlite3.OperationalError("disk I/O error\nmore detail"), 503,
         "store unavailable: OperationalError: disk I/O error"),
        (ConnectionRefusedError(111, "Connection refused"), 503,
         "store unavailable: ConnectionRefusedError: [Errno 111] Connection refused"),
        (RuntimeError("a bug"), 500, "internal error (RuntimeError); the collector's log has it"),
        (KeyError("lines"), 500, "internal error (KeyError); the collector's log has it"),
        # A query the database's schema does not support is no outage (a replica older than
        # the schema, a bug): retrying it elsewhere later would not help.
        (_programming_error(), 500, "internal error (UndefinedTable); the collector's log has it"),
    ],
    ids=["locked", "disk", "refused", "runtime", "keyerror", "programming"],
)
def test_query_failures_are_503_only_when_the_store_is_unavailable(
    make_store, start_collector, make_client, caplog, error, status, message
):
    client = make_client(start_collector(store=_FailingQueries(make_store(), error)))
    with caplog.at_level(logging.WARNING):
        for route, params in QUERIES:
            response = client.get(route, **params)
            assert response.status_code == status, (route, response.text)
            assert response.json() == {"error": message}
            assert ("retry-after" in response.headers) == (status == 503)
    failures = [r for r in caplog.records if r.name == "runcov_collector.api"]
    assert len(failures) == len(QUERIES)
    # An outage is one warning line per request; anything else is logged with its traceback.
    assert all((r.exc_info is not None) == (status == 500) for r in failures)
    page = client.get("/ui/release", service="shop")
    assert page.status_code == status
    if status == 503:
        assert "Store unavailable" in page.text


def test_one_scrape_reads_the_store_once_while_it_refuses(
    make_store, start_collector, make_client, caplog
):
    """A store that refuses at once (a stopped PostgreSQL): the per-release series of one
    scrape share one read, so each scrape counts one failed read and logs one warning."""
    error = ConnectionRefusedError(111, "Connection refused")
    store = _FailingQueries(make_store(), error)
    client = make_client(start_collector(store=store, metrics_cache_seconds=0))
    failures = "runcov_collector_release_series_read_failures_total"
    with caplog.at_level(logging.WARNING, logger="runcov_collector"):
        for scrape in (1, 2):
            response = client.get("/metrics", token=None)
            assert response.status_code == 200
            assert f"\n{failures} {scrape}\n" in response.text
    warnings = [r for r in caplog.records if "cannot read releases" in r.getMessage()]
    assert [r.getMessage() for r in warnings] == [
        "cannot read releases for /metrics: store unavailable: "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    ] * 2


class _Proxy:
    """A TCP forwarder to the test PostgreSQL server, so that the database can go away under a
    running collector without stopping the server other tests use: ``stop()`` refuses new
    connections and cuts the open ones, as a stopped server does; ``start()`` brings it back
    on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> _Proxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stop.clear()
        self._spawn(self._accept, listener)
        return self

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                downstream, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            downstream.settimeout(None)
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [downstream, upstream]
            self._spawn(self._pump, downstream, upstream)
            self._spawn(self._pump, upstream, downstream)

    def _held(self) -> bool:
        """Called with each chunk before it is forwarded; True drops the connection's
        forwarding (a subclass may hold the chunk here meanwhile)."""
        return False

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self._held():
                    return
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads[:1]:
            thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)
        self._threads = []


def proxied(url: str, proxy: _Proxy) -> str:
    """The store URL ``url`` (with its credentials) pointed at ``proxy``."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.postgres
def test_postgresql_going_away_under_a_running_replica_is_503_until_it_is_back(
    pg_factory, start_collector, make_client, caplog
):
    parts = urlsplit(pg_factory.url)
    proxy = _Proxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        client = make_client(start_collector(store_url=proxied(pg_factory.url, proxy)))
        _seed(client)
        before = client.query("/api/v1/coverage", **RELEASE)
        proxy.stop()
        with caplog.at_level(logging.WARNING):
            # Pooled connections break first, then new ones are refused: both are the outage.
            _assert_unavailable(client, "OperationalError: ")
            _assert_unavailable(client, "OperationalError: connection failed")
        assert not [r for r in caplog.records if r.exc_info is not None], "a traceback was logged"
        assert all(parts.password not in r.getMessage() for r in caplog.records)
        proxy.start()
        assert client.query("/api/v1/coverage", **RELEASE) == before
        assert client.get("/ui/release", service="shop").status_code == 200
        assert client.http.get("/readyz").status_code == 200
    finally:
        proxy.stop()
