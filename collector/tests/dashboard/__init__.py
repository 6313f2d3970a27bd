"""Helpers for the dashboard tests: measure the sample with coverage.py, run a real collector."""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coverage import Coverage, CoverageData
from coverage.config import DEFAULT_EXCLUDE
from coverage.misc import join_regex
from coverage.python import PythonParser

from runcov_collector.app import Collector
from runcov_collector.config import Config
from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    FunctionRange,
    Release,
    StaticPart,
)

SAMPLE = Path(__file__).parent / "sample"
TOKEN = "dashboard-query-token"
INGEST_TOKEN = "dashboard-ingest-token"
TRACE_URL = "https://tracing.example/trace/{trace_id}"
ENDPOINTS = {"plain": "POST /cart", "half": "POST /cart", "empty": "GET /cart/<empty>"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COV_CORE_", "COVERAGE_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def copy_sample(dst: Path) -> Path:
    """A private copy of the sample source tree."""
    shutil.copytree(SAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def measure(root: Path, data_file: Path, *names: str) -> Path:
    """coverage.py (branch) measurement of ``run.py NAMES`` in ``root``."""
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--branch", "--source=shop",
         f"--data-file={data_file}", "run.py", *names],
        cwd=root, env=_env(), check=True, capture_output=True, text=True,
    )
    return data_file


def data_hits(data_file: Path, root: Path) -> dict[str, tuple[list[int], list[tuple[int, int]]]]:
    """Lines and arcs per root-relative path."""
    data = CoverageData(basename=str(data_file))
    data.read()
    out = {}
    for name in data.measured_files():
        rel = Path(name).resolve().relative_to(root.resolve()).as_posix()
        out[rel] = (sorted(data.lines(name) or []), sorted(data.arcs(name) or []))
    return out


def static_of(root: Path, rel: str) -> FileStatic:
    """Denominators of one file by coverage.py's parser."""
    text = (root / rel).read_text()
    parser = PythonParser(text=text, filename=str(root / rel),
                          exclude=join_regex(DEFAULT_EXCLUDE))
    parser.parse_source()
    functions = [
        FunctionRange(node.name, node.lineno, node.end_lineno or node.lineno)
        for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)
    ]
    return FileStatic(rel, sha(root / rel), sorted(parser.statements), sorted(parser.arcs()),
                      functions)


def sha(path: Path) -> str:
    """The wire format's file sha."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def part(release: Release, endpoint: str, root: Path,
         files: dict[str, tuple[list[int], list[tuple[int, int]]]], when: float | None = None
         ) -> CoveragePart:
    """One request's coverage part."""
    return CoveragePart(
        release=release, trace_id=os.urandom(16).hex(), span_id=os.urandom(8).hex(),
        endpoint=endpoint, mode="exact", status_class="2xx",
        time_unix_nano=int((when or time.time()) * 1e9), part=0, parts=1,
        files=[FileHits(p, sha(root / p), lines, arcs) for p, (lines, arcs) in files.items()],
    )


def static_part(release: Release, statics: list[FileStatic]) -> StaticPart:
    """A denominators part."""
    return StaticPart(release, os.urandom(16).hex(), os.urandom(8).hex(), time.time_ns(), statics)


@dataclass
class Truth:
    """coverage.py's own verdict per line of one file."""

    covered: set[int]
    missed: set[int]
    partial: set[int]


def truth(root: Path, data_file: Path, rel: str) -> Truth:
    """Covered, missed and partial lines of ``rel`` as coverage.py's HTML report classes them."""
    cov = Coverage(data_file=str(data_file))
    cov.load()
    analysis = cov._analyze(str(root / rel))  # the same analysis coverage html uses
    partial = set(analysis.missing_branch_arcs())
    executed = set(analysis.executed) & set(analysis.statements)
    return Truth(executed - partial, set(analysis.missing), partial)


@dataclass
class Running:
    """A collector with the dashboard, its store and sample source directory."""

    url: str
    store: Any
    source: Path

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, str]:
        """GET with a bearer token; (status, body)."""
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def api(self, path: str) -> Any:
        """The query API's JSON."""
        import json

        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)


@contextmanager
def running_collector(tmp: Path, source: Path | None, **config: Any) -> Iterator[Running]:
    """A real collector on 127.0.0.1 (random port), temp SQLite, dashboard configured."""
    cfg = Config(
        http_port=0, grpc_port=-1, store_url=f"sqlite:///{tmp / 'dashboard.db'}",
        ingest_token=INGEST_TOKEN, query_token=TOKEN, retention_hours=0,
        source_dir=str(source) if source else None, trace_url_template=TRACE_URL, **config,
    ).validate()
    with Collector(cfg) as collector:
        yield Running(f"http://127.0.0.1:{collector.http_port}", collector.store,
                      source or tmp)


BASELINE = Release("shop", "1.0", "prod", "baseline")
CANARY = Release("shop", "1.1", "prod", "canary")
BASELINE_INPUTS = ("plain", "empty")
CANARY_INPUTS = ("half",)


def populate(running: Running, root: Path, scratch: Path) -> dict[str, Path]:
    """Baseline and canary releases from coverage.py measurements; returns the oracle files."""
    statics = [static_of(root, rel) for rel in ("shop/__init__.py", "shop/cart.py")]
    oracles = {}
    for release, inputs in ((BASELINE, BASELINE_INPUTS), (CANARY, CANARY_INPUTS)):
        parts = []
        for name in inputs:
            data = measure(root, scratch / f".coverage.{release.role}.{name}", name)
            parts.append(part(release, ENDPOINTS[name], root, data_hits(data, root),
                              when=time.time() - 7200 * (len(parts) + 1)))
        running.store.ingest(Batch(coverage=parts, static=[static_part(release, statics)]))
        oracles[release.role] = measure(root, scratch / f".coverage.{release.role}", *inputs)
    return oracles
