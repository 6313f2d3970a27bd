"""Fixtures for the CLI tests: a real collector on loopback with a temporary SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runcov_collector.app import Collector
from runcov_collector.config import Config
from tests.cli import support

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


@dataclass
class Sample:
    """The sample app, copied once per session and measured by coverage.py per input."""

    root: Path
    data: dict[str, Path]
    scratch: Path

    def requests(self, *names: str) -> list[Any]:
        """The requests an agent would report for these inputs."""
        return support.requests_from(self.root, {n: self.data[n] for n in names})

    def oracle(self, *names: str) -> Path:
        """coverage.py's combined data file for these inputs."""
        out = self.scratch / (".coverage.oracle." + "+".join(sorted(names)))
        if not out.exists():
            support.combine(self.root, out, [self.data[n] for n in names])
        return out

    def lines(self, *names: str) -> dict[str, set[int]]:
        """Executed lines per path for these inputs, per coverage.py."""
        measured = support.hits(self.oracle(*names), self.root)
        return {p: set(lines) for p, (lines, _) in measured.items()}

    def arcs(self, *names: str) -> dict[str, set[tuple[int, int]]]:
        """Executed arcs per path for these inputs, per coverage.py."""
        measured = support.hits(self.oracle(*names), self.root)
        return {p: set(arcs) for p, (_, arcs) in measured.items()}


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """Every input of the sample app measured once (each in its own process)."""
    base = tmp_path_factory.mktemp("sample")
    root = support.copy_app(base / "app")
    scratch = base / "data"
    scratch.mkdir()
    return Sample(root, support.measure_inputs(root, scratch, support.INPUTS), scratch)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout of the sample app: tag v1.0, then one commit with EDITS."""
    root = support.copy_app(tmp_path / "repo")
    support.git(root, "init", "-q", "-b", "main")
    support.git(root, "add", ".")
    support.git(root, "commit", "-q", "-m", "1.0")
    support.git(root, "tag", "v1.0")
    for rel, edits in support.EDITS.items():
        text = (root / rel).read_text()
        for old, new in edits:
            assert old in text
            text = text.replace(old, new, 1)
        (root / rel).write_text(text)
    (root / support.NEW_FILE[0]).write_text(support.NEW_FILE[1])
    support.git(root, "add", support.NEW_FILE[0])
    support.git(root, "commit", "-q", "-am", "1.1")
    return root
