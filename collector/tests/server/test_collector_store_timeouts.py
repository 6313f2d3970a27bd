"""A store that stops answering (a frozen PostgreSQL, a lock held elsewhere, a SQLite file
locked by another process) under a running collector: every request answers 503 within the
store timeout, with the reason, instead of hanging; ``/metrics`` answers at once with the
collector's own counters; once the store answers again, so does the collector."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from collector.tests.server.test_collector_store_unavailable import _Proxy, proxied

from runcov_collector import cli
from runcov_collector.app import Collector
from runcov_collector.config import Config, ConfigError, from_sources
from runcov_collector.testing import coverage_span, file_hits, file_static, static_span
from runcov_collector.testing import trace_request as _trace_request

RELEASE = {"service": "shop", "version": "", "environment": "", "role": "baseline"}
QUERY_HEADERS = {"authorization": "Bearer query-secret-token"}
INGEST_HEADERS = {
    "authorization": "Bearer ingest-secret-token",
    "content-type": "application/x-protobuf",
}
TRACES_RPC = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# What a client waits at most in these tests: a request still unanswered then has hung.
CLIENT_TIMEOUT = 8.0


class _FreezingProxy(_Proxy):
    """A forwarder that can freeze like a server stopped by SIGSTOP, or a network that stops
    carrying packets: ``freeze()`` holds every byte in both directions and leaves new
    connections unanswered (the kernel still accepts them), without closing anything;
    ``thaw()`` forwards what was held and carries on."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._thawed = threading.Event()
        self._thawed.set()

    def freeze(self) -> None:
        self._thawed.clear()

    def thaw(self) -> None:
        self._thawed.set()

    def _held(self) -> bool:
        while not self._thawed.wait(0.05):
            if self._stop.is_set():
                return True
        return False


def _spans(lines: list[int]) -> Any:
    return _trace_request(
        [
            coverage_span("GET /", [file_hits("shop/views.py", lines, [(-1, 1)])]),
            static_span([file_static("shop/views.py", [1, 2, 3], [(-1, 1), (1, 2), (1, 3)])]),
        ]
    )


def _timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _http(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT)


def _metric(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.postgres
def test_a_frozen_postgresql_is_503_within_the_timeout_and_metrics_still_answer(
    pg_factory, start_collector
):
    """Ingests (HTTP and gRPC, more at once than the store has threads), queries and /readyz
    each answer 503 with the reason within the timeout (1 s, plus the grace before the
    connection is cut, plus connecting: at most 2 s); /metrics answers at once with the ingest
    counters and the release series of the last read; after the freeze the next requests
    succeed."""
    proxy = _FreezingProxy(*_target(pg_factory.url)).start()
    try:
        collector = start_collector(
            store_url=proxied(pg_factory.url, proxy),
            store_timeout_seconds=1,
            metrics_cache_seconds=0,
        )
        base = f"http://127.0.0.1:{collector.http_port}"
        with _http(base) as http:
            assert http.post("/v1/traces", content=_spans([1]).SerializeToString(),
                             headers=INGEST_HEADERS).status_code == 200
            before = http.get("/api/v1/coverage", params=RELEASE, headers=QUERY_HEADERS)
            assert before.status_code == 200
            line_ratio = 'runcov_collector_release_line_coverage_ratio{service="shop"'
            assert _metric(http.get("/metrics").text, line_ratio) == 1 / 3

            proxy.freeze()
            body = _spans([2]).SerializeToString()

            def ingest(_: int) -> tuple[httpx.Response, float]:
                with _http(base) as own:
                    return _timed(lambda: own.post("/v1/traces", content=body,
                                                   headers=INGEST_HEADERS))

            takes = {"/api/v1/coverage": RELEASE, "/api/v1/releases": {"service": "shop"}}

            def query(route: str) -> tuple[httpx.Response, float]:
                params = takes.get(route, {})
                with _http(base) as own:
                    return _timed(lambda: own.get(route, params=params, headers=QUERY_HEADERS))

            with ThreadPoolExecutor(16) as pool:
                ingests = list(pool.map(ingest, range(8)))  # the store has 4 threads
                queries = list(pool.map(query, ["/api/v1/coverage", "/api/v1/releases",
                                                "/api/v1/services", "/readyz"]))
            for response, took in ingests:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "2"
                assert took < 4.5, took
            for response, took in queries:
                assert response.status_code == 503, response.text
                assert response.headers.get("retry-after", "2") == "2"
                assert response.json()["error"].startswith(
                    "store unavailable: StoreTimeout: the database did not"
                ), response.text
                assert took < 4.5, took
            channel = grpc.insecure_channel(f"127.0.0.1:{collector.grpc_port}")
            try:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as failed:
                    channel.unary_unary(TRACES_RPC)(
                        body, metadata=(("authorization", "Bearer ingest-secret-token"),),
                        timeout=CLIENT_TIMEOUT,
                    )
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "StoreTimeout" in str(failed.value.details())
                assert time.monotonic() - started < 4.5
            finally:
                channel.close()
            assert http.get("/healthz").status_code == 200

            metrics, took = _timed(lambda: http.get("/metrics"))
            assert took < 2.5, took
            unavailable = (
                'runcov_collector_ingest_requests_total{transport="http",signal="traces",'
                'result="unavailable"}'
            )
            assert _metric(metrics.text, unavailable) == 8
            assert _metric(metrics.text, line_ratio) == 1 / 3  # the last read
            failures = _metric(metrics.text, "runcov_collector_release_series_read_failures_total")
            assert failures is not None and failures >= 1
            assert _metric(metrics.text, "runcov_collector_release_series_age_seconds") > 0

            proxy.thaw()
            deadline = time.monotonic() + 10
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "still not ready after the freeze"
                time.sleep(0.1)
            assert http.post("/v1/traces", content=body, headers=INGEST_HEADERS).status_code == 200
            after = http.get("/api/v1/coverage", params=RELEASE, headers=QUERY_HEADERS)
            assert after.status_code == 200
            assert after.json()["totals"]["lines_covered"] == 2
    finally:
        proxy.thaw()
        proxy.stop()


def _target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


@pytest.mark.postgres
def test_a_statement_waiting_for_a_lock_is_cut_at_the_timeout_as_unavailable(
    pg_factory, start_collector, make_client
):
    """A table locked by another session: the server itself cancels the statement at the
    timeout (statement_timeout), and that is an outage (503 with the reason), not an internal
    error; the pool is not poisoned, and the collector answers as soon as the lock goes."""
    import psycopg

    collector = start_collector(store_url=pg_factory.url, store_timeout_seconds=1)
    client = make_client(collector)
    assert client.send(_spans([1])).status_code == 200
    client.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    locker = psycopg.connect(pg_factory.url)
    try:
        locker.execute("LOCK TABLE releases IN ACCESS EXCLUSIVE MODE")
        response, took = _timed(lambda: client.get("/api/v1/coverage", **RELEASE))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == (
            "store unavailable: QueryCanceled: canceling statement due to statement timeout"
        )
        assert response.headers["retry-after"] == "2"
        assert 0.8 < took < 3, took
        response, took = _timed(lambda: client.send(_spans([2])))
        assert response.status_code == 503
        assert took < 3, took
        # The server answers: the replica stays ready, and nothing makes later requests fail.
        assert client.http.get("/readyz").status_code == 200
    finally:
        locker.rollback()
        locker.close()
    assert client.send(_spans([2])).status_code == 200
    assert client.query("/api/v1/coverage", **RELEASE)["totals"]["lines_covered"] == 2


@pytest.mark.postgres
def test_dead_pooled_connections_after_a_restart_fail_no_request(
    pg_factory, start_collector, make_client
):
    """A restarted server closed every pooled connection: the next request already succeeds,
    rather than one request per dead connection answering 503."""
    import psycopg

    collector = start_collector(store_url=pg_factory.url)
    client = make_client(collector)
    assert client.send(_spans([1])).status_code == 200
    db = collector.store.db
    ready = threading.Barrier(6)

    def hold(_: int) -> int:
        with db.transaction(write=False) as conn:
            ready.wait(10)
            return int(conn.query("SELECT pg_backend_pid()")[0][0])

    with ThreadPoolExecutor(6) as pool:
        pids = set(pool.map(hold, range(6)))
    assert len(pids) == 6 and db.open_connections == 6
    with psycopg.connect(pg_factory.url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
    for _ in range(8):
        assert client.http.get("/readyz").status_code == 200
        assert client.get("/api/v1/coverage", **RELEASE).status_code == 200
    assert client.send(_spans([2])).status_code == 200


def _lock_sqlite(path: str) -> subprocess.Popen[str]:
    """Another process holding the SQLite database's write lock until its stdin closes."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", code, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    return locker


def test_a_sqlite_file_locked_by_another_process_is_503_before_the_exporter_gives_up(
    start_collector, make_client
):
    """The ingest waits for the lock up to the store timeout, then answers 503 with
    Retry-After (nothing stored behind the exporter's back), well within an exporter's 10 s;
    queries still read; once the lock is gone the ingest succeeds."""
    collector = start_collector(store_timeout_seconds=1)
    client = make_client(collector)
    client.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    assert client.send(_spans([1])).status_code == 200
    locker = _lock_sqlite(collector.config.store_url[len("sqlite:///") :])
    try:
        response, took = _timed(lambda: client.send(_spans([2]), json_body=True))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"
        assert "database is locked" in response.json()["message"]
        assert 0.8 < took < 3, took
        assert client.get("/api/v1/coverage", **RELEASE).status_code == 200
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(10)
    assert client.send(_spans([2])).status_code == 200
    assert client.query("/api/v1/coverage", **RELEASE)["totals"]["lines_covered"] == 2


class _HangingReads:
    """Delegates to a real store; while ``hang`` is set, ``services()`` blocks until
    ``release`` is set (at most 10 s) and then fails like a store that timed out."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.hang = threading.Event()
        self.release = threading.Event()

    def services(self) -> Any:
        if self.hang.is_set():
            self.release.wait(10)
            raise TimeoutError("the database did not answer")
        return self._store.services()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_metrics_answer_at_once_while_the_store_read_hangs(
    make_store, start_collector, make_client
):
    """A scrape does not wait on a store that does not answer: it serves the collector's own
    counters and the release series of the last read, and counts the failed read."""
    store = _HangingReads(make_store())
    client = make_client(start_collector(store=store, metrics_cache_seconds=0))
    client.http.timeout = httpx.Timeout(CLIENT_TIMEOUT)
    assert client.send(_spans([1])).status_code == 200
    line_ratio = 'runcov_collector_release_line_coverage_ratio{service="shop"'
    assert _metric(client.get("/metrics", token=None).text, line_ratio) == 1 / 3
    store.hang.set()
    try:
        for _ in range(2):
            response, took = _timed(lambda: client.get("/metrics", token=None))
            assert response.status_code == 200
            assert took < 2.5, took
            text = response.text
            assert _metric(text, line_ratio) == 1 / 3
            ok = 'runcov_collector_ingest_requests_total{transport="http",signal="traces",'
            assert _metric(text, ok + 'result="ok"}') == 1
        assert _metric(text, "runcov_collector_release_series_read_failures_total") == 0
    finally:
        store.release.set()  # the read fails now, and the scrapes after it fail at once
    deadline = time.monotonic() + 5
    while True:
        text = client.get("/metrics", token=None).text
        failures = _metric(text, "runcov_collector_release_series_read_failures_total")
        if failures or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert failures is not None and failures >= 1
    assert _metric(text, line_ratio) == 1 / 3
    age = _metric(text, "runcov_collector_release_series_age_seconds")
    assert age is not None and age > 0.5
    store.hang.clear()
    text = client.get("/metrics", token=None).text
    assert _metric(text, "runcov_collector_release_series_age_seconds") < 0.5


def test_store_timeout_option_environment_and_validation(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("RUNCOV_COLLECTOR_"):
            monkeypatch.delenv(name)
    assert Config().store_timeout_seconds == 5.0
    env = {"RUNCOV_COLLECTOR_STORE_TIMEOUT": "2.5"}
    assert from_sources({}, env).store_timeout_seconds == 2.5
    args = cli.build_parser().parse_args(
        ["serve", "--no-auth", "--store", "sqlite:///x.db", "--store-timeout", "3"]
    )
    assert cli.config_from_args(args).store_timeout_seconds == 3.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        message = re.escape("--store-timeout (RUNCOV_COLLECTOR_STORE_TIMEOUT) must be > 0")
        with pytest.raises(ConfigError, match=message):
            Config(no_auth=True, store_timeout_seconds=bad).validate()
    config = Config(
        no_auth=True,
        http_port=0,
        grpc_port=-1,
        store_url=f"sqlite:///{tmp_path / 'c.db'}",
        store_timeout_seconds=2.5,
    )
    collector = Collector(config)
    try:
        assert collector.store.db.timeout == 2.5
    finally:
        collector.close()
