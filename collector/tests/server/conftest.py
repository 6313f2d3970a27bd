"""Fixtures for the collector service tests: real collectors on loopback, HTTP helpers."""

from __future__ import annotations

import gzip
from typing import Any, Callable, Iterator

import httpx
import pytest

from runcov_collector.app import Collector
from runcov_collector.config import Config
from runcov_collector.model import Store
from runcov_collector.store import open_store
from runcov_collector.testing import to_otlp_json

INGEST_TOKEN = "ingest-secret-token"
QUERY_TOKEN = "query-secret-token"


class Client:
    """Talks to one running collector over real HTTP on loopback."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.base = f"http://127.0.0.1:{collector.http_port}"
        self.http = httpx.Client(base_url=self.base, timeout=30.0)

    def post(
        self,
        path: str,
        body: bytes,
        content_type: str = "application/x-protobuf",
        token: str | None = INGEST_TOKEN,
        gzipped: bool = False,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST raw bytes (optionally gzip-compressing them)."""
        all_headers = {"content-type": content_type, **(headers or {})}
        if token is not None:
            all_headers["authorization"] = f"Bearer {token}"
        if gzipped:
            body = gzip.compress(body)
            all_headers["content-encoding"] = "gzip"
        return self.http.post(path, content=body, headers=all_headers)

    def send(self, request: Any, json_body: bool = False, **kw: Any) -> httpx.Response:
        """POST an ExportTraceServiceRequest to ``/v1/traces`` as protobuf or OTLP/JSON."""
        if json_body:
            return self.post("/v1/traces", to_otlp_json(request), "application/json", **kw)
        return self.post("/v1/traces", request.SerializeToString(), **kw)

    def get(self, route: str, token: str | None = QUERY_TOKEN, **params: Any) -> httpx.Response:
        """GET a query endpoint with the query token."""
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(route, params=params, headers=headers)

    def query(self, route: str, **params: Any) -> Any:
        """GET and return the JSON body, asserting 200."""
        response = self.get(route, **params)
        assert response.status_code == 200, response.text
        return response.json()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def make_store(tmp_path: Any) -> Iterator[Callable[..., Store]]:
    """Opens real SQLite stores under ``tmp_path``; closes them afterwards."""
    opened: list[Store] = []

    def make(name: str = "collector.db") -> Store:
        store = open_store(f"sqlite:///{tmp_path / name}")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def start_collector(tmp_path: Any) -> Iterator[Callable[..., Collector]]:
    """Starts in-process collectors on free ports (real SQLite store unless one is given)."""
    started: list[Collector] = []

    def start(store: Store | None = None, **overrides: Any) -> Collector:
        values: dict[str, Any] = {
            "http_port": 0,
            "grpc_port": 0,
            "store_url": f"sqlite:///{tmp_path / f'collector-{len(started)}.db'}",
            "ingest_token": INGEST_TOKEN,
            "query_token": QUERY_TOKEN,
            "retention_hours": 0,
        }
        values.update(overrides)
        collector = Collector(Config(**values), store).start()
        started.append(collector)
        return collector

    yield start
    for collector in started:
        collector.stop()


@pytest.fixture
def client(start_collector: Callable[..., Collector]) -> Iterator[Client]:
    """A client of a fresh collector with default settings."""
    c = Client(start_collector())
    yield c
    c.close()


@pytest.fixture
def make_client() -> Iterator[Callable[[Collector], Client]]:
    """Wraps collectors in clients; closes them afterwards."""
    clients: list[Client] = []

    def make(collector: Collector) -> Client:
        c = Client(collector)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()
