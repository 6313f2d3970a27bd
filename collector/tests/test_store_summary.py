"""Stored per-file counts: summaries equal a recount from the hit sets, whatever was ingested."""

from __future__ import annotations

import random
from typing import Any

import pytest
from collector.tests.store_versions import to_version_3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    Release,
    Selection,
    StaticPart,
)
from runcov_collector.store import SCHEMA_VERSION, NotFound, SqlStore, hitsets, summary

T0 = 1_764_064_800
RELEASES = [Release("shop", "1.0", "prod", "baseline"), Release("shop", "1.1", "prod", "canary")]
ENDPOINTS = ["GET /items", "POST /checkout"]
PATHS = ["shop/views.py", "shop/models.py", "shop/util.py"]
SHAS = ["aaaa", "bbbb"]
DETAIL_KEYS = ("lines", "arcs", "executable_lines", "possible_arcs", "functions")

# Denominator variants: several payloads may arrive for one (path, sha).
VARIANTS = [
    ([1, 2, 3, 4, 5, 6], [(1, 2), (1, 3), (2, 4), (3, 4), (4, -1), (5, 6)]),
    ([1, 2, 3, 7, 8], [(1, 2), (2, 3), (3, 7), (3, 8), (7, -1), (8, -1)]),
    ([2, 4, 6, 8], [(2, 4), (2, 6), (4, 8), (6, 8), (8, -1)]),
]


def coverage_part(
    n: int, release: int, endpoint: int, offset: int, files: list[FileHits], mode: str = "exact"
) -> CoveragePart:
    return CoveragePart(
        RELEASES[release],
        f"{n % 7:032x}",
        f"{n:016x}",
        ENDPOINTS[endpoint],
        mode,
        "2xx",
        (T0 + offset) * 10**9,
        0,
        1,
        files,
    )


def static_part(n: int, release: int, offset: int, files: list[FileStatic]) -> StaticPart:
    return StaticPart(RELEASES[release], f"{n:032x}", f"{n:016x}", (T0 + offset) * 10**9, files)


def without_detail(answer: dict[str, Any]) -> dict[str, Any]:
    files = [{k: v for k, v in f.items() if k not in DETAIL_KEYS} for f in answer["files"]]
    return {**answer, "files": files}


def selections() -> list[Selection]:
    out = []
    for release in RELEASES:
        base = {"version": release.version, "environment": release.environment}
        out.append(Selection("shop", role=release.role, **base))
        out += [Selection("shop", role=release.role, endpoint=e, **base) for e in ENDPOINTS]
        out.append(Selection("shop", role=release.role, endpoint="GET /never", **base))
    return out


def answer_of(query: Any, *args: Any, **kwargs: Any) -> Any:
    """A query's answer, or the NotFound it raises (an endpoint the release never saw)."""
    try:
        return query(*args, **kwargs)
    except NotFound as exc:
        return f"NotFound: {exc}"


def check_summaries(store: SqlStore) -> None:
    """Stored-count answers equal the answers recomputed from hit sets and denominators."""
    for sel in selections():
        try:
            slow = store.coverage(sel, detail=True)
        except NotFound:  # no such release yet: the summary says so too
            with pytest.raises(NotFound):
                store.coverage(sel)
            continue
        assert store.coverage(sel) == without_detail(slow)
        prefixed = store.coverage(sel, detail=True, path_prefix="shop/v")
        assert store.coverage(sel, path_prefix="shop/v") == without_detail(prefixed)
        # The same endpoints answer from the per-hour sets (a window over all hours).
        everything = Selection(
            sel.service, sel.version, sel.environment, sel.role, sel.endpoint, since_unix=0
        )
        assert store.endpoints(sel) == store.endpoints(everything)
        # Each endpoint's covered counts are those of the coverage of that endpoint.
        for window in (sel, everything):
            for entry in store.endpoints(window)["endpoints"]:
                one = Selection(
                    window.service,
                    window.version,
                    window.environment,
                    window.role,
                    entry["endpoint"],
                    since_unix=window.since_unix,
                )
                sums = store.coverage(one)["totals"]
                assert (entry["lines_covered"], entry["arcs_covered"]) == (
                    sums["lines_covered"],
                    sums["arcs_covered"],
                )


def stored_rows_match_their_hit_sets(store: SqlStore) -> int:
    """Every row's item counts are exact; counts made under current denominators are too.

    Returns how many rows were stale (counted under other denominators).
    """
    stale = 0
    cache = summary.Denominators()
    with store.db.transaction(write=False) as conn:
        for table, key in (("hits_rel", "0"), ("hits_ep", "endpoint_id")):
            rows = conn.query(
                f"SELECT release_id, file_id, {key}, lines, arcs, n_lines, n_arcs, "
                f"lines_covered, arcs_covered, branches_covered, cov_digest FROM {table}"
            )
            for rid, fid, _, lines, arcs, *stored in rows:
                current = summary.current_statics(conn, int(rid), [int(fid)]).get(int(fid))
                want = summary.summary_values(
                    hitsets.items(lines, False), hitsets.items(arcs, True), current, cache
                )
                assert tuple(stored[:2]) == want[:2]
                if stored[5] == want[5]:
                    assert tuple(stored) == want
                else:
                    stale += 1
    return stale


events = st.lists(
    st.one_of(
        st.tuples(
            st.just("cov"),
            st.integers(0, 1),  # release
            st.integers(0, 1),  # endpoint
            st.integers(0, 2 * 3600),  # time offset
            st.sampled_from(["exact", "exact", "census"]),
            st.lists(
                st.tuples(
                    st.sampled_from(PATHS),
                    st.sampled_from(SHAS),
                    st.lists(st.integers(1, 9), max_size=6),
                    st.lists(st.tuples(st.integers(-1, 8), st.integers(-1, 8)), max_size=5),
                ),
                max_size=3,
            ),
        ),
        st.tuples(
            st.just("static"),
            st.integers(0, 1),  # release
            st.integers(0, 2 * 3600),
            st.lists(
                st.tuples(st.sampled_from(PATHS), st.sampled_from(SHAS), st.integers(0, 2)),
                min_size=1,
                max_size=3,
            ),
        ),
    ),
    min_size=1,
    max_size=12,
)


def to_batches(data: list[Any], cuts: list[int]) -> list[Batch]:
    coverage: list[tuple[int, CoveragePart]] = []
    statics: list[tuple[int, StaticPart]] = []
    for i, event in enumerate(data):
        if event[0] == "cov":
            _, release, endpoint, offset, mode, files = event
            hits = [
                FileHits(path, sha, sorted(set(lines)), sorted(set(arcs)))
                for path, sha, lines, arcs in files
            ]
            coverage.append((i, coverage_part(i, release, endpoint, offset, hits, mode)))
        else:
            _, release, offset, files = event
            fs = [
                FileStatic(path, sha, VARIANTS[v][0], VARIANTS[v][1], []) for path, sha, v in files
            ]
            statics.append((i, static_part(i, release, offset, fs)))
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    batches = []
    for lo, hi in zip(bounds, bounds[1:]):
        batches.append(
            Batch(
                coverage=[p for i, p in coverage if lo <= i < hi],
                static=[p for i, p in statics if lo <= i < hi],
            )
        )
    return batches


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=events, cuts=st.lists(st.integers(0, 12), max_size=4))
def test_summaries_equal_a_recount_after_any_ingests(
    store_factory: Any, data: list[Any], cuts: list[int]
) -> None:
    store = store_factory(store_factory.fresh_url())
    for batch in to_batches(data, cuts):
        store.ingest(batch)
        check_summaries(store)
        stored_rows_match_their_hit_sets(store)
    # Replaying everything changes nothing.
    for batch in to_batches(data, cuts):
        store.ingest(batch)
    check_summaries(store)


def test_denominators_sent_by_another_release_are_recounted(store: SqlStore) -> None:
    """Release 1.1 replaces the denominators of a file version 1.0 also runs: 1.0's stored
    counts are stale until its own next batch, and its answers are right meanwhile."""
    hits = [FileHits(PATHS[0], SHAS[0], [1, 2, 7, 8], [(1, 2), (3, 7), (3, 8)])]
    first = [FileStatic(PATHS[0], SHAS[0], VARIANTS[0][0], VARIANTS[0][1], [])]
    second = [FileStatic(PATHS[0], SHAS[0], VARIANTS[1][0], VARIANTS[1][1], [])]
    store.ingest(Batch(static=[static_part(1, 0, 0, first)]))
    store.ingest(Batch(coverage=[coverage_part(2, 0, 0, 10, hits)]))
    assert stored_rows_match_their_hit_sets(store) == 0
    before = store.coverage(Selection("shop", version="1.0"))["totals"]
    assert (before["lines_covered"], before["lines_total"]) == (2, 6)

    # Of two payloads for one file version the greatest is kept: here the second.
    store.ingest(Batch(static=[static_part(3, 1, 20, second)]))
    assert stored_rows_match_their_hit_sets(store) == 2  # 1.0's release and endpoint rows
    check_summaries(store)
    after = store.coverage(Selection("shop", version="1.0"))["totals"]
    assert (after["lines_covered"], after["lines_total"]) == (4, 5)
    assert (after["branches_covered"], after["branches_total"]) == (2, 2)

    # 1.0 sends its (now unchanged) denominators again: its rows are recounted and stored.
    store.ingest(Batch(static=[static_part(4, 0, 30, first)]))
    assert stored_rows_match_their_hit_sets(store) == 0
    assert store.coverage(Selection("shop", version="1.0"))["totals"] == after


def test_migration_from_version_1_fills_the_counts(store_factory: Any) -> None:
    """A version-1 database with data opens at the current version with the same answers."""
    assert SCHEMA_VERSION == 4  # version 3 added no columns: dropping version 2's reaches 1
    rng = random.Random(5)
    store = store_factory()
    statics = [
        FileStatic(path, SHAS[0], VARIANTS[i][0], VARIANTS[i][1], [])
        for i, path in enumerate(PATHS)
    ]
    parts = []
    for n in range(30):
        files = [
            FileHits(
                path,
                SHAS[0],
                sorted(rng.sample(range(1, 10), 4)),
                sorted({(rng.randint(1, 8), rng.randint(-1, 8)) for _ in range(3)}),
            )
            for path in rng.sample(PATHS, 2)
        ]
        parts.append(coverage_part(n, n % 2, n % 3 % 2, n * 300, files))
    store.ingest(Batch(coverage=parts, static=[static_part(99, 0, 0, statics)]))
    answers = {repr(sel): answer_of(store.coverage, sel, detail=True) for sel in selections()}
    summaries = {repr(sel): answer_of(store.coverage, sel) for sel in selections()}
    releases = store.releases("shop")
    endpoints = {repr(sel): answer_of(store.endpoints, sel) for sel in selections()}

    # Take the database back to version 1: the same tables without the count columns.
    to_version_3(store)
    with store.db.transaction(write=True) as conn:
        for table in ("hits_rel", "hits_ep"):
            for column in (
                "n_lines",
                "n_arcs",
                "lines_covered",
                "arcs_covered",
                "branches_covered",
                "cov_digest",
            ):
                conn.query(f"ALTER TABLE {table} DROP COLUMN {column}")
        for column in ("digest", "lines_total", "arcs_total", "branches_total"):
            conn.query(f"ALTER TABLE static_files DROP COLUMN {column}")
        conn.query("UPDATE schema_version SET version = 1")
    store.close()

    upgraded = store_factory()
    assert upgraded.schema_version_found == 1
    assert stored_rows_match_their_hit_sets(upgraded) == 0
    with upgraded.db.transaction(write=False) as conn:
        assert conn.query("SELECT COUNT(*) FROM hits_rel WHERE cov_digest = '-'") == [(0,)]
        assert conn.query("SELECT COUNT(*) FROM static_files WHERE digest = ''") == [(0,)]
    assert {repr(s): answer_of(upgraded.coverage, s, detail=True) for s in selections()} == answers
    assert {repr(s): answer_of(upgraded.coverage, s) for s in selections()} == summaries
    assert {repr(s): answer_of(upgraded.endpoints, s) for s in selections()} == endpoints
    assert upgraded.releases("shop") == releases
    check_summaries(upgraded)
    # And it keeps ingesting.
    upgraded.ingest(Batch(coverage=[coverage_part(500, 0, 0, 50, parts[0].files)]))
    check_summaries(upgraded)
    assert stored_rows_match_their_hit_sets(upgraded) == 0
