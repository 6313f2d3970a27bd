"""Time the collector store's summary queries on a large release (10,000 files by default).

Builds a temporary SQLite store holding one release of ``--files`` files (about 50 executable
lines and 60 possible arcs each, with denominators), covered by requests on a few endpoints,
plus ``--releases - 1`` smaller releases of the same service, then times ``coverage()``
(without detail), ``releases()``, ``endpoints()`` and ``services()``, and the store-level
ingest rate of the coverage parts it wrote.

    python benchmarks/bench_store_queries.py
    python benchmarks/bench_store_queries.py --files 2000 --repeat 3
    python benchmarks/bench_store_queries.py --pg "$RUNCOV_TEST_PG_URL"   # an empty database
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    FunctionRange,
    Release,
    Selection,
    StaticPart,
)
from runcov_collector.store import open_store

T0 = 1_764_000_000 * 1_000_000_000
ENDPOINTS = ["GET /", "GET /items", "POST /cart", "GET /health", "GET /search"]


def file_static(path: str, rng: random.Random, seed: int) -> FileStatic:
    """Denominators of one synthetic file: ~50 statements, sequential and branch arcs."""
    lines = sorted(rng.sample(range(1, 120), 50))
    arcs = [(-1, lines[0])] + [(a, b) for a, b in zip(lines, lines[1:])]
    arcs += [(a, -1) for a in lines[::7]]
    arcs += [(a, c) for a, c in zip(lines[::5], lines[2::5])]
    funcs = [FunctionRange("f", lines[0], lines[-1])]
    return FileStatic(path, f"{seed:04x}:{path}", lines, sorted(set(arcs)), funcs)


def build_release(
    store: Any, release: Release, files: int, requests: int, seed: int
) -> tuple[int, float]:
    """Write one release (statics, then coverage parts); return (parts, ingest seconds)."""
    rng = random.Random(seed)
    statics = [file_static(f"pkg/mod{i // 100}/file{i}.py", rng, seed) for i in range(files)]
    store.ingest(Batch(static=[StaticPart(release, "ab" * 16, "cd" * 8, T0, list(statics))]))
    parts: list[CoveragePart] = []
    # Every file is touched by some request; each request touches ~100 files.
    per_request = max(1, min(files, 100))
    for r in range(requests):
        chosen = [statics[(r * per_request + k) % files] for k in range(per_request)]
        hits = []
        for fs in chosen:
            n = rng.randint(len(fs.lines) // 2, len(fs.lines))
            executed = sorted(rng.sample(fs.lines, n))
            arcs = [a for a in fs.arcs if a[0] in executed or a[0] < 0]
            hits.append(FileHits(fs.path, fs.sha, executed, arcs))
        parts.append(
            CoveragePart(
                release=release,
                trace_id=f"{seed:08x}{r:024x}",
                span_id=f"{r:016x}",
                endpoint=ENDPOINTS[r % len(ENDPOINTS)],
                mode="exact",
                status_class="2xx",
                time_unix_nano=T0 + r * 7_000_000_000,
                part=0,
                parts=1,
                files=hits,
            )
        )
    started = time.perf_counter()
    for start in range(0, len(parts), 20):
        store.ingest(Batch(coverage=parts[start : start + 20]))
    return len(parts), time.perf_counter() - started


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times = []
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    """Build the store, time the queries, print a small table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--releases", type=int, default=3, help="releases of the service in all")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pg", default=None, help="an empty PostgreSQL database URL")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.pg or str(Path(tmp) / "bench.db")
        store = open_store(url)
        big = Release("shop", "2.0", "prod", "baseline")
        requests = max(1, args.files // 100) * 3
        parts, seconds = build_release(store, big, args.files, requests, seed=1)
        for i in range(args.releases - 1):
            build_release(store, Release("shop", f"1.{i}", "prod", "baseline"), 500, 15, i + 2)
        print(f"store: {store.backend}, release of {args.files} files, {parts} coverage parts")
        print(f"ingest: {parts / seconds:8.1f} parts/s ({seconds:.2f} s, 20 parts per batch)")
        sel = Selection("shop", version="2.0")
        rows = [
            ("coverage()", lambda: store.coverage(sel)),
            (
                "coverage(endpoint)",
                lambda: store.coverage(Selection("shop", "2.0", endpoint="GET /")),
            ),
            ("releases()", lambda: store.releases("shop")),
            ("endpoints()", lambda: store.endpoints(sel)),
            ("services()", lambda: store.services()),
        ]
        for name, fn in rows:
            seconds, result = timed(fn, args.repeat)
            extra = ""
            if name == "coverage()":
                t = result["totals"]
                extra = f"files={t['files']} lines {t['lines_covered']}/{t['lines_total']}"
            print(f"{name:20s} {seconds * 1000:9.1f} ms  {extra}")
        store.close()


if __name__ == "__main__":
    main()
