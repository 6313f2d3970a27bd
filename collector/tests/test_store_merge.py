"""Merging is idempotent and commutative: any order, split, duplicate or replica, one answer."""

from __future__ import annotations

import random
import sys
import threading
from pathlib import Path
from typing import Any

import coverage
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    MetricPoint,
    Release,
    Selection,
    StaticPart,
)
from runcov_collector.store import NotFound, SqlStore
from runcov_collector.store.dialect import PostgresConn

T0 = 1_764_064_800  # 2025-11-25T10:00:00Z
RELEASES = [Release("shop", "1.0", "prod", "baseline"), Release("shop", "1.1", "prod", "canary")]
ENDPOINTS = ["GET /items/{item_id}", "POST /checkout"]
PATHS = ["shop/views.py", "shop/models.py"]


def part(
    trace: str,
    span: str,
    *,
    at: float = T0,
    files: list[FileHits] | None = None,
    release: Release = RELEASES[0],
    endpoint: str = ENDPOINTS[0],
    mode: str = "exact",
) -> CoveragePart:
    return CoveragePart(
        release=release,
        trace_id=trace,
        span_id=span,
        endpoint=endpoint,
        mode=mode,
        status_class="2xx",
        time_unix_nano=int(at * 1e9),
        part=0,
        parts=1,
        files=files or [],
    )


def statics() -> list[StaticPart]:
    out = []
    for i, release in enumerate(RELEASES):
        out.append(
            StaticPart(
                release,
                f"{900 + i:032x}",
                f"{900 + i:016x}",
                int(T0 * 1e9),
                [
                    FileStatic(path, "0123456789abcdef", list(range(1, 13)), arcs, [])
                    for path, arcs in zip(
                        PATHS,
                        [[(1, 2), (1, 3), (2, 4), (3, 4), (4, -1)], [(5, 6), (5, 7), (5, 8)]],
                    )
                ],
            )
        )
    return out


def answer_of(query: Any, *args: Any, **kwargs: Any) -> Any:
    """A query's answer, or the NotFound it raises (an endpoint the release never saw)."""
    try:
        return query(*args, **kwargs)
    except NotFound as exc:
        return f"NotFound: {exc}"


def snapshot(store: SqlStore) -> dict[str, Any]:
    """Every query answer that depends on the stored coverage."""
    out: dict[str, Any] = {"services": store.services()}
    for service in [s["service"] for s in out["services"]["services"]]:
        out[f"releases {service}"] = store.releases(service)
        for release in out[f"releases {service}"]["releases"]:
            base = {k: release[k] for k in ("version", "environment", "role")}
            selections = [Selection(service, **base)]
            selections += [Selection(service, endpoint=e, **base) for e in ENDPOINTS]
            selections.append(Selection(service, since_unix=T0 + 3600, **base))
            selections.append(
                Selection(service, endpoint=ENDPOINTS[1], until_unix=T0 + 3600, **base)
            )
            for sel in selections:
                key = repr(sel)
                out[f"coverage {key}"] = answer_of(store.coverage, sel, detail=True)
                out[f"endpoints {key}"] = answer_of(store.endpoints, sel)
                out[f"series {key}"] = answer_of(store.series, sel)
    return out


# -- hand-written cases ----------------------------------------------------------------------


def sample_parts() -> list[CoveragePart]:
    parts = []
    for i in range(12):
        trace = f"{i // 2:032x}"  # two parts per request
        files = [FileHits(PATHS[i % 2], "0123456789abcdef", [1, 2 + i % 3, 4], [(1, 2), (2, 4)])]
        parts.append(
            part(
                trace,
                f"{i:016x}",
                at=T0 + 1000 * i,
                files=files,
                release=RELEASES[i % 3 == 0],
                endpoint=ENDPOINTS[i % 4 == 1],
                mode="census" if i == 7 else "exact",
            )
        )
    return parts


def test_same_batch_twice_changes_nothing(store_factory: Any) -> None:
    store = store_factory()
    batch = Batch(coverage=sample_parts(), static=statics())
    store.ingest(batch)
    once = snapshot(store)
    assert store.ingest_counted(batch) == {"parts": 0, "duplicates": 12}
    assert snapshot(store) == once
    assert once["coverage " + repr(Selection("shop", "1.0", "prod", "baseline"))]["totals"][
        "requests"
    ] == len({p.trace_id for p in sample_parts() if p.release == RELEASES[0]})


def test_split_and_reordered_batches_give_the_same_answers(store_factory: Any) -> None:
    whole = store_factory()
    whole.ingest(Batch(coverage=sample_parts(), static=statics()))
    pieces = store_factory(store_factory.fresh_url())
    parts = sample_parts()
    random.Random(7).shuffle(parts)
    pieces.ingest(Batch(coverage=parts[:5]))
    pieces.ingest(Batch(coverage=parts[3:9], static=statics()[1:]))
    pieces.ingest(Batch(coverage=parts[9:] + parts[:2], static=statics()[:1]))
    assert snapshot(pieces) == snapshot(whole)


def test_first_trace_is_earliest_then_smallest_id_in_any_order(store_factory: Any) -> None:
    hits = [FileHits("shop/views.py", "s", [10], [(10, 11)])]
    early = part("c" * 32, "1" * 16, at=T0 + 5, files=hits)
    tie_big = part("f" * 32, "2" * 16, at=T0 + 9, files=hits)
    tie_small = part("0" * 31 + "1", "3" * 16, at=T0 + 9, files=hits)
    later_line = [FileHits("shop/views.py", "s", [12], [])]
    tie_a = part("e" * 32, "4" * 16, at=T0 + 9, files=later_line)
    tie_b = part("d" * 32, "5" * 16, at=T0 + 9, files=later_line)
    answers = []
    for order in (
        [early, tie_big, tie_small, tie_a, tie_b],
        [tie_b, tie_small, tie_a, tie_big, early],
    ):
        store = store_factory(store_factory.fresh_url())
        for p in order:
            store.ingest(Batch(coverage=[p]))
        detail = store.file(Selection("shop"), "shop/views.py")
        answers.append((detail["lines"], detail["arcs"]))
    assert answers[0] == answers[1]
    lines, arcs = answers[0]
    assert lines == [[10, 3, "c" * 32], [12, 2, "d" * 32]]
    assert arcs == [[10, 11, 3, "c" * 32]]


def test_two_stores_on_one_database_ingesting_concurrently(store_factory: Any) -> None:
    """Two replicas (two store objects) share a database and ingest overlapping halves."""
    rng = random.Random(11)
    parts = []
    for i in range(400):
        files = [
            FileHits(path, "0123456789abcdef", sorted(rng.sample(range(1, 40), 8)), [(1, 2)])
            for path in rng.sample([*PATHS, "shop/extra.py"], 2)
        ]
        parts.append(
            part(
                f"{rng.randrange(250):032x}",
                f"{i:016x}",
                at=T0 + rng.randrange(3 * 3600),
                files=files,
                release=rng.choice(RELEASES),
                endpoint=rng.choice(ENDPOINTS),
            )
        )
    reference = store_factory()
    reference.ingest(Batch(coverage=parts, static=statics()))
    expected = snapshot(reference)

    url = store_factory.fresh_url()
    replicas = [store_factory(url), store_factory(url)]
    halves = [parts[:240], parts[160:]]  # parts 160..239 go through both replicas
    errors: list[BaseException] = []

    def run(store: SqlStore, mine: list[CoveragePart], seed: int) -> None:
        try:
            mine = list(mine)
            random.Random(seed).shuffle(mine)
            for start in range(0, len(mine), 20):
                store.ingest(Batch(coverage=mine[start : start + 20]))
            store.ingest(Batch(static=statics()))
        except BaseException as exc:  # surfaced to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(replicas[i], halves[i], i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert snapshot(replicas[0]) == expected
    assert snapshot(replicas[1]) == expected


def test_many_threads_share_one_store(store: SqlStore) -> None:
    parts = sample_parts() * 2
    errors: list[BaseException] = []

    def run(chunk: list[CoveragePart]) -> None:
        try:
            for p in chunk:
                store.ingest(Batch(coverage=[p]))
                # Readers run alongside writers and see the part just committed.
                seen = store.coverage(Selection("shop", p.release.version))["totals"]["requests"]
                assert seen >= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(parts[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    totals = store.coverage(Selection("shop", "1.0"))["totals"]
    assert totals["requests"] == len(
        {p.trace_id for p in sample_parts() if p.release == RELEASES[0]}
    )


def test_metrics_latest_value_is_order_independent(store_factory: Any) -> None:
    points = [
        MetricPoint(RELEASES[0], "i", "runcov.requests.seen", {}, v, int((T0 + t) * 1e9))
        for v, t in ((5, 10), (9, 20), (7, 20), (3, 5))
    ]
    results = []
    for order in (points, points[::-1]):
        store = store_factory(store_factory.fresh_url())
        for p in order:
            store.ingest(Batch(metrics=[p]))
        results.append(store.releases("shop")["releases"][0]["requests_seen"])
    assert results == [9, 9]


def test_large_batch_is_counted_exactly(store: SqlStore) -> None:
    """500 parts x 20 files x 50 lines in one batch (the ingest-rate benchmark's shape)."""
    rng = random.Random(3)
    files = [f"app/module_{i:02d}.py" for i in range(40)]
    parts = []
    for i in range(500):
        hits = []
        for path in rng.sample(files, 20):
            lines = sorted(rng.sample(range(1, 120), 50))
            hits.append(FileHits(path, "0123456789abcdef", lines, list(zip(lines, lines[1:]))))
        parts.append(
            part(f"{i:032x}", f"{i:016x}", at=T0 + i, files=hits, endpoint=ENDPOINTS[i % 2])
        )
    store.ingest(Batch(coverage=parts))
    answer = store.coverage(Selection("shop"), detail=True)
    assert answer["totals"]["requests"] == 500
    expected_hits: dict[tuple[str, int], int] = {}
    for p in parts:
        for fh in p.files:
            for ln in fh.lines:
                expected_hits[(fh.path, ln)] = expected_hits.get((fh.path, ln), 0) + 1
    got = {(f["path"], ln): n for f in answer["files"] for ln, n, _ in f["lines"]}
    assert got == expected_hits
    per_endpoint = store.endpoints(Selection("shop"))["endpoints"]
    assert [e["requests"] for e in per_endpoint] == [250, 250]


# -- branch numbers against coverage.py ------------------------------------------------------

BRANCHY = """\
def f(x):
    if x > 0:
        y = 1
    else:
        y = 2
    for i in range(x):
        if i % 2:
            y += i
    while y > 100:
        y -= 1
    return y if y else -1
"""


def test_branch_numbers_match_coverage_py(store: SqlStore, tmp_path: Path) -> None:
    source = tmp_path / "branchy_mod.py"
    source.write_text(BRANCHY)
    sys.path.insert(0, str(tmp_path))
    try:
        cov = coverage.Coverage(
            branch=True, data_file=None, include=[str(source)], config_file=False
        )
        cov.start()
        try:
            import branchy_mod

            branchy_mod.f(3)
        finally:
            cov.stop()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("branchy_mod", None)
    analysis = cov._analyze(str(source))
    possible = getattr(analysis, "arc_possibilities_set", None) or analysis.arc_possibilities
    data = cov.get_data()
    executed_arcs = sorted(data.arcs(str(source)) or [])
    executed_lines = sorted(data.lines(str(source)) or [])
    store.ingest(
        Batch(
            static=[
                StaticPart(
                    RELEASES[0],
                    "a" * 32,
                    "b" * 16,
                    int(T0 * 1e9),
                    [
                        FileStatic(
                            "branchy_mod.py", "s", sorted(analysis.statements), sorted(possible)
                        )
                    ],
                )
            ],
            coverage=[
                part(
                    "1" * 32,
                    "1" * 16,
                    files=[FileHits("branchy_mod.py", "s", executed_lines, executed_arcs)],
                )
            ],
        )
    )
    got = store.file(Selection("shop"), "branchy_mod.py")
    numbers = analysis.numbers
    assert numbers.n_branches > 0 and numbers.n_missing_branches > 0
    assert got["lines_total"] == numbers.n_statements
    assert got["lines_covered"] == numbers.n_executed
    assert got["branches_total"] == numbers.n_branches
    assert got["branches_covered"] == numbers.n_branches - numbers.n_missing_branches


# -- property: any permutation, duplication and split gives identical answers ----------------

part_data = st.tuples(
    st.integers(0, 5),  # trace
    st.integers(0, 1),  # release
    st.integers(0, 1),  # endpoint
    st.integers(0, 3 * 3600 - 1),  # time offset: three hour buckets
    st.sampled_from(["exact", "exact", "census"]),
    st.lists(
        st.tuples(
            st.sampled_from(PATHS),
            st.lists(st.integers(1, 12), max_size=6),
            st.lists(st.tuples(st.integers(-2, 8), st.integers(-2, 8)), max_size=4),
        ),
        max_size=2,
    ),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.lists(part_data, min_size=1, max_size=10),
    shuffle_seed=st.integers(0, 2**32 - 1),
    duplicates=st.lists(st.integers(0, 9), max_size=5),
    cuts=st.lists(st.integers(0, 15), max_size=4),
)
def test_any_permutation_duplication_and_split_gives_identical_results(
    store_factory: Any,
    data: list[Any],
    shuffle_seed: int,
    duplicates: list[int],
    cuts: list[int],
) -> None:
    parts = []
    for i, (trace, release, endpoint, offset, mode, files) in enumerate(data):
        hits = [
            FileHits(path, "0123456789abcdef", sorted(set(lines)), sorted(set(arcs)))
            for path, lines, arcs in files
        ]
        parts.append(
            part(
                f"{trace:032x}",
                f"{i:016x}",
                at=T0 + offset,
                files=hits,
                release=RELEASES[release],
                endpoint=ENDPOINTS[endpoint],
                mode=mode,
            )
        )
    reference = store_factory(store_factory.fresh_url())
    reference.ingest(Batch(coverage=parts, static=statics()))

    shuffled = parts + [parts[d % len(parts)] for d in duplicates]
    random.Random(shuffle_seed).shuffle(shuffled)
    bounds = sorted({0, len(shuffled), *(c % (len(shuffled) + 1) for c in cuts)})
    other = store_factory(store_factory.fresh_url())
    other.ingest(Batch(static=statics()))
    for lo, hi in zip(bounds, bounds[1:]):
        other.ingest(Batch(coverage=shuffled[lo:hi]))
    assert snapshot(other) == snapshot(reference)


def test_pieces_of_one_file_in_one_part_count_once(store: SqlStore) -> None:
    """A part may carry one file in two pieces (and arcs as lists); hits still count parts."""
    pieces = [
        FileHits("shop/views.py", "s", [1, 2], [[1, 2]]),  # type: ignore[list-item]
        FileHits("shop/views.py", "s", [2, 3], [[1, 2], [2, 3]]),  # type: ignore[list-item]
    ]
    store.ingest(Batch(coverage=[part("a" * 32, "1" * 16, files=pieces)]))
    store.ingest(
        Batch(coverage=[part("b" * 32, "2" * 16, files=[FileHits("shop/views.py", "s", [3], [])])])
    )
    detail = store.file(Selection("shop"), "shop/views.py")
    assert [ln[:2] for ln in detail["lines"]] == [[1, 1], [2, 1], [3, 2]]
    assert [arc[:3] for arc in detail["arcs"]] == [[1, 2, 1], [2, 3, 1]]
    assert detail["requests"] == 2


def test_empty_batch_changes_nothing(store: SqlStore) -> None:
    assert store.ingest_counted(Batch()) == {"parts": 0, "duplicates": 0}
    assert store.services() == {"services": []}


def test_bulk_upsert_path_gives_the_same_answers(
    store_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL sends large upserts through COPY; force it for every statement."""
    row_by_row = store_factory()
    row_by_row.ingest(Batch(coverage=sample_parts(), static=statics()))
    monkeypatch.setattr(PostgresConn, "BULK_THRESHOLD", 1)
    bulk = store_factory(store_factory.fresh_url())
    for p in sample_parts()[::-1]:
        bulk.ingest(Batch(coverage=[p, p]))
    bulk.ingest(Batch(static=statics()))
    assert snapshot(bulk) == snapshot(row_by_row)
