"""Two collector replicas on one PostgreSQL give the same answers as one collector on SQLite.

Each replica receives half of the traffic, and some batches arrive twice (client retries, and
duplicates through two pipelines reaching both replicas). Merging is idempotent and commutative,
so every query must answer exactly what a single collector that saw everything once answers.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from runcov_collector.testing import (
    SpanSpec,
    coverage_span,
    file_hits,
    file_static,
    static_span,
    trace_request,
)

PG_ENV = "RUNCOV_TEST_PG_URL"
HOUR_NS = 3600 * 10**9
pytestmark = pytest.mark.postgres


def _pg_url() -> str:
    url = os.environ.get(PG_ENV, "")
    if url:
        return url
    if os.environ.get("CI") == "1":
        pytest.fail(f"CI=1 but {PG_ENV} is not set: the replica test must run on CI")
    pytest.skip(
        f"TWO-REPLICA POSTGRESQL TEST NOT RUN: {PG_ENV} is unset "
        f"(run `.ci/pg start` and export {PG_ENV}=<the URL it prints>)"
    )


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL server, dropped afterwards."""
    import psycopg

    base = _pg_url()
    schema = f"runcov_r_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


RELEASES = [
    {"service.name": "shop", "service.version": "1.0", "deployment.environment.name": "prod"},
    {
        "service.name": "shop",
        "service.version": "1.1",
        "deployment.environment.name": "prod",
        "runcov.deployment.role": "canary",
    },
]
ENDPOINTS = ["GET /items/{item_id}", "POST /checkout", "job shop.tasks:nightly"]
PATHS = ["shop/views.py", "shop/models.py", "shop/tasks.py"]


def _traffic(seed: int) -> list[tuple[dict[str, Any], list[SpanSpec]]]:
    """Deterministic batches: statics, then multi-part coverage of many requests over hours."""
    rng = random.Random(seed)
    now = time.time_ns()
    batches: list[tuple[dict[str, Any], list[SpanSpec]]] = []
    for resource in RELEASES:
        statics = [
            file_static(p, range(1, 41), [(i, i + 1) for i in range(1, 40)] + [(5, 9), (12, 30)])
            for p in PATHS
        ]
        batches.append((resource, [static_span(statics)]))
    for request in range(60):
        resource = RELEASES[request % 2]
        trace_id = f"{rng.getrandbits(128):032x}"
        endpoint = rng.choice(ENDPOINTS)
        when = now - rng.randrange(0, 6) * HOUR_NS - rng.randrange(0, 10**9)
        parts = rng.choice([1, 1, 2, 3])
        spans = []
        for part in range(parts):
            files = []
            for path in rng.sample(PATHS, rng.randrange(1, 3)):
                lines = sorted(rng.sample(range(1, 41), rng.randrange(1, 12)))
                arcs = sorted({(a, a + 1) for a in lines if a < 40})
                files.append(file_hits(path, lines, arcs))
            spans.append(
                coverage_span(
                    endpoint,
                    files,
                    trace_id=trace_id,
                    span_id=f"{rng.getrandbits(64) | 1:016x}",
                    end_time_unix_nano=when,
                    part=part,
                    parts=parts,
                    mode="exact",
                )
            )
        batches.append((resource, spans))
    return batches


def _answers(client: Any) -> dict[str, Any]:
    """Every query the API offers, for both releases."""
    out: dict[str, Any] = {
        "services": client.query("/api/v1/services"),
        "releases": client.query("/api/v1/releases", service="shop"),
    }
    for version, role in (("1.0", "baseline"), ("1.1", "canary")):
        sel = {"service": "shop", "version": version, "role": role}
        key = f"{version}/{role}"
        out[f"coverage {key}"] = client.query("/api/v1/coverage", **sel, detail=1)
        out[f"endpoints {key}"] = client.query("/api/v1/endpoints", **sel)
        out[f"series {key}"] = client.query("/api/v1/series", **sel)
        for endpoint in ENDPOINTS:
            out[f"coverage {key} {endpoint}"] = client.query(
                "/api/v1/coverage", **sel, endpoint=endpoint, detail=1
            )
        for path in PATHS:
            out[f"file {key} {path}"] = client.query("/api/v1/file", **sel, path=path)
            out[f"series {key} {path}"] = client.query("/api/v1/series", **sel, path=path)
        out[f"window {key}"] = client.query("/api/v1/coverage", **sel, since="3h", detail=1)
    out["diff"] = client.query(
        "/api/v1/diff",
        service="shop",
        a_version="1.0",
        a_role="baseline",
        b_version="1.1",
        b_role="canary",
    )
    return out


def test_two_replicas_on_postgresql_equal_one_collector_on_sqlite(
    pg_url, start_collector, make_client
):
    batches = _traffic(seed=20261125)
    single = make_client(start_collector())
    for resource, spans in batches:
        assert single.send(trace_request(spans, resource)).status_code == 200

    replica_a = make_client(start_collector(store_url=pg_url))
    replica_b = make_client(start_collector(store_url=pg_url))
    rng = random.Random(7)
    deliveries: list[tuple[Any, Any, bool]] = []  # (client, request, as JSON?)
    for index, (resource, spans) in enumerate(batches):
        request = trace_request(spans, resource)
        first, second = (replica_a, replica_b) if index % 2 == 0 else (replica_b, replica_a)
        deliveries.append((first, request, rng.random() < 0.5))
        roll = rng.random()
        if roll < 0.25:  # a duplicate through a second pipeline reaches the other replica
            deliveries.append((second, request, rng.random() < 0.5))
        elif roll < 0.4:  # a client retry to the same replica
            deliveries.append((first, request, False))
        elif roll < 0.5 and len(spans) > 1:  # a retry of only some parts of a request
            deliveries.append((second, trace_request(spans[:1], resource), True))
    rng.shuffle(deliveries)

    def deliver(item: tuple[Any, Any, bool]) -> int:
        client, request, json_body = item
        return int(client.send(request, json_body=json_body).status_code)

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(deliver, deliveries)) == {200}

    expected = _answers(single)
    assert expected["releases"]["releases"][0]["requests"] > 0
    for replica in (replica_a, replica_b):
        got = _answers(replica)
        for key, value in expected.items():
            assert got[key] == value, key
