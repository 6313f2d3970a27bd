"""Fixtures for the CLI tests: a real collector on loopback with a temporary SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runcov_collector.app import Collector
from runcov_collector.config import Config

TOKEN = "query-token-for-tests"
INGEST = "ingest-token-for-tests"


@dataclass
class RunningCollector:
    """A collector serving HTTP on 127.0.0.1 and its store (for direct ingestion)."""

    url: str
    store: Any
    token: str

    def args(self) -> list[str]:
        """``--collector URL --token T`` for the CLI."""
        return ["--collector", self.url, "--token", self.token]


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[RunningCollector]:
    """A fresh collector per test."""
    config = Config(
        http_port=0, grpc_port=-1, store_url=f"sqlite:///{tmp_path / 'store.db'}",
        ingest_token=INGEST, query_token=TOKEN, retention_hours=0,
    ).validate()
    with Collector(config) as running:
        yield RunningCollector(f"http://127.0.0.1:{running.http_port}", running.store, TOKEN)
