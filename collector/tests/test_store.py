"""The store's query answers on SQLite and PostgreSQL: shapes, selection, windows, retention."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from runcov_collector import limits
from runcov_collector.model import (
    Batch,
    CoveragePart,
    FileHits,
    FileStatic,
    FunctionRange,
    MetricPoint,
    Release,
    Selection,
    StaticPart,
)
from runcov_collector.store import NotFound, SqlStore, agent, queries

T0 = 1_764_064_800  # 2025-11-25T10:00:00Z
HOUR = 3600
REL = Release("shop", "1.0", "prod", "baseline")
VIEWS_LINES = [1, 3, 4, 11, 12, 13, 14, 16, 20]
VIEWS_ARCS = [(-11, 12), (12, 13), (13, 14), (13, 16), (14, 20), (16, 20), (20, -11)]
PATH_A = [12, 13, 14, 20]
ARCS_A = [(-11, 12), (12, 13), (13, 14), (14, 20), (20, -11)]
PATH_B = [12, 13, 16, 20]
ARCS_B = [(-11, 12), (12, 13), (13, 16), (16, 20), (20, -11)]


def tid(n: int) -> str:
    return f"{n:032x}"


def sid(n: int) -> str:
    return f"{n:016x}"


def part(
    trace: int,
    span: int | None = None,
    *,
    endpoint: str = "GET /items/{item_id}",
    at: float = T0,
    files: list[FileHits] | None = None,
    release: Release = REL,
    mode: str = "exact",
) -> CoveragePart:
    return CoveragePart(
        release=release,
        trace_id=tid(trace),
        span_id=sid(trace if span is None else span),
        endpoint=endpoint,
        mode=mode,
        status_class="2xx",
        time_unix_nano=int(at * 1e9),
        part=0,
        parts=1,
        files=files if files is not None else [],
    )


def views(lines: list[int], arcs: list[tuple[int, int]], sha: str = "3f1c9a0b2d4e6f70") -> FileHits:
    return FileHits("shop/views.py", sha, list(lines), list(arcs))


def views_static(
    release: Release = REL, at: float = T0, sha: str = "3f1c9a0b2d4e6f70"
) -> StaticPart:
    return StaticPart(
        release=release,
        trace_id=tid(999),
        span_id=sid(999),
        time_unix_nano=int(at * 1e9),
        files=[
            FileStatic(
                "shop/views.py", sha, VIEWS_LINES, VIEWS_ARCS, [FunctionRange("checkout", 11, 20)]
            ),
            FileStatic("shop/models.py", "aaaa000011112222", [1, 2, 5, 6], [(-1, 1), (1, 2)], []),
        ],
    )


@pytest.fixture
def shop(store: SqlStore) -> SqlStore:
    """Two requests on one endpoint (the two paths through checkout), one on another."""
    store.ingest(
        Batch(
            static=[views_static()],
            coverage=[
                part(1, at=T0 + 10, files=[views(PATH_A, ARCS_A)]),
                part(2, at=T0 + 20, files=[views(PATH_B, ARCS_B)]),
                part(
                    3,
                    endpoint="POST /checkout",
                    at=T0 + 30,
                    files=[
                        views(PATH_A, ARCS_A),
                        FileHits("shop/models.py", "aaaa000011112222", [1, 2]),
                    ],
                ),
            ],
        )
    )
    return store


def test_empty_store_has_no_services(store: SqlStore) -> None:
    assert store.services() == {"services": []}
    with pytest.raises(NotFound):
        store.releases("shop")
    with pytest.raises(NotFound):
        store.coverage(Selection("shop"))
    assert store.ping() is True


def test_services_and_releases(shop: SqlStore) -> None:
    assert shop.services() == {
        "services": [{"service": "shop", "releases": 1, "last_seen": "2025-11-25T10:00:30Z"}]
    }
    (release,) = shop.releases("shop")["releases"]
    assert release == {
        "service": "shop",
        "version": "1.0",
        "environment": "prod",
        "role": "baseline",
        "first_seen": "2025-11-25T10:00:00Z",
        "last_seen": "2025-11-25T10:00:30Z",
        "requests": 3,
        "lines_covered": 5 + 2,
        "lines_total": 9 + 4,
        "arcs_covered": 7,
        "arcs_total": 7 + 2,
        "line_percent": round(100 * 7 / 13, 1),
        "branch_percent": 100.0,
        "requests_seen": 0,
        "requests_sampled": 0,
        "requests_dropped": 0,
        "requests_dropped_by_reason": dict.fromkeys(agent.DROP_REASONS, 0),
        "overhead_seconds": 0.0,
    }


def test_coverage_shape_and_detail(shop: SqlStore) -> None:
    answer = shop.coverage(Selection("shop"), detail=True)
    assert answer["release"] == REL.as_dict()
    assert answer["totals"] == {
        "files": 2,
        "lines_covered": 7,
        "lines_total": 13,
        "arcs_covered": 7,
        "arcs_total": 9,
        "branches_covered": 2,
        "branches_total": 2,
        "line_percent": 53.8,
        "branch_percent": 100.0,
        "requests": 3,
    }
    models, views_file = answer["files"]
    assert models["path"] == "shop/models.py"
    assert models["lines"] == [[1, 1, tid(3)], [2, 1, tid(3)]]
    assert models["requests"] == 1
    assert views_file["path"] == "shop/views.py"
    assert views_file["sha"] == "3f1c9a0b2d4e6f70"
    assert views_file["requests"] == 3
    assert views_file["lines"] == [
        [12, 3, tid(1)],
        [13, 3, tid(1)],
        [14, 2, tid(1)],
        [16, 1, tid(2)],
        [20, 3, tid(1)],
    ]
    assert views_file["arcs"] == [
        [-11, 12, 3, tid(1)],
        [12, 13, 3, tid(1)],
        [13, 14, 2, tid(1)],
        [13, 16, 1, tid(2)],
        [14, 20, 2, tid(1)],
        [16, 20, 1, tid(2)],
        [20, -11, 3, tid(1)],
    ]
    assert views_file["executable_lines"] == VIEWS_LINES
    assert views_file["possible_arcs"] == [list(a) for a in sorted(VIEWS_ARCS)]
    assert views_file["functions"] == [{"name": "checkout", "start": 11, "end": 20}]
    assert (views_file["branches_covered"], views_file["branches_total"]) == (2, 2)
    assert views_file["line_percent"] == round(100 * 5 / 9, 1)


def test_coverage_without_detail_has_no_line_lists(shop: SqlStore) -> None:
    files = shop.coverage(Selection("shop"))["files"]
    assert all("lines" not in f and "arcs" not in f for f in files)


def test_path_prefix_restricts_files_and_totals(shop: SqlStore) -> None:
    answer = shop.coverage(Selection("shop"), path_prefix="shop/mod")
    assert [f["path"] for f in answer["files"]] == ["shop/models.py"]
    assert answer["totals"]["lines_total"] == 4
    assert answer["totals"]["lines_covered"] == 2


def test_branch_counts_of_one_path(store: SqlStore) -> None:
    store.ingest(Batch(static=[views_static()], coverage=[part(1, files=[views(PATH_A, ARCS_A)])]))
    views_file = store.file(Selection("shop"), "shop/views.py")
    # Line 13 is the only line with two possible exits (14 and 16); one was taken.
    assert (views_file["branches_covered"], views_file["branches_total"]) == (1, 2)
    assert views_file["branch_percent"] == 50.0
    assert (views_file["arcs_covered"], views_file["arcs_total"]) == (5, 7)


def test_missing_denominators_give_zero_totals_and_null_percent(store: SqlStore) -> None:
    store.ingest(Batch(coverage=[part(1, files=[views(PATH_A, ARCS_A)])]))
    (views_file,) = store.coverage(Selection("shop"), detail=True)["files"]
    assert views_file["lines_covered"] == 4
    assert views_file["arcs_covered"] == 5
    assert views_file["lines_total"] == views_file["arcs_total"] == 0
    assert views_file["branches_total"] == 0
    assert views_file["line_percent"] is None and views_file["branch_percent"] is None
    assert views_file["executable_lines"] == [] and views_file["functions"] == []


def test_denominators_follow_the_sha_seen_last(store: SqlStore) -> None:
    old = views_static(at=T0, sha="1111111111111111")
    new = views_static(at=T0 + 100, sha="2222222222222222")
    new.files[0].lines = [11, 12, 13]
    new.files[0].arcs = [(-11, 12), (12, 13), (13, -11)]
    # Newer sha arrives first; the old one must not take over.
    store.ingest(Batch(static=[new]))
    store.ingest(Batch(static=[old]))
    store.ingest(
        Batch(coverage=[part(1, at=T0 + 50, files=[views([12], [], sha="1111111111111111")])])
    )
    views_file = store.file(Selection("shop"), "shop/views.py")
    assert views_file["sha"] == "2222222222222222"
    assert views_file["lines_total"] == 3
    assert views_file["executable_lines"] == [11, 12, 13]


def test_file_query(shop: SqlStore) -> None:
    answer = shop.file(Selection("shop"), "shop/models.py")
    assert answer["release"] == REL.as_dict()
    assert answer["path"] == "shop/models.py"
    assert answer["executable_lines"] == [1, 2, 5, 6]
    assert answer["possible_arcs"] == [[-1, 1], [1, 2]]
    with pytest.raises(NotFound):
        shop.file(Selection("shop"), "shop/nope.py")


def test_file_known_only_from_denominators(store: SqlStore) -> None:
    store.ingest(Batch(static=[views_static()]))
    answer = store.file(Selection("shop"), "shop/models.py")
    assert answer["lines"] == [] and answer["lines_covered"] == 0
    assert answer["lines_total"] == 4 and answer["line_percent"] == 0.0
    assert answer["requests"] == 0


def test_endpoints(shop: SqlStore) -> None:
    answer = shop.endpoints(Selection("shop"))
    assert answer["release"] == REL.as_dict()
    assert answer["endpoints"] == [
        {
            "endpoint": "GET /items/{item_id}",
            "requests": 2,
            "lines_covered": 5,
            "arcs_covered": 7,
            "first_seen": "2025-11-25T10:00:10Z",
            "last_seen": "2025-11-25T10:00:20Z",
        },
        {
            "endpoint": "POST /checkout",
            "requests": 1,
            "lines_covered": 6,
            "arcs_covered": 5,
            "first_seen": "2025-11-25T10:00:30Z",
            "last_seen": "2025-11-25T10:00:30Z",
        },
    ]
    only = shop.endpoints(Selection("shop", endpoint="POST /checkout"))["endpoints"]
    assert [e["endpoint"] for e in only] == ["POST /checkout"]


def test_endpoint_counts_agree_with_coverage_of_the_endpoint(store: SqlStore) -> None:
    """Executed lines and arcs the denominators do not know (line 2 is no statement, (2, 5)
    no possible arc) count neither in the listing nor in the endpoint's coverage."""
    store.ingest(
        Batch(
            static=[views_static()],
            coverage=[
                part(1, at=T0 + 10, files=[views([*PATH_A, 2], [*ARCS_A, (2, 5)])]),
                part(2, at=T0 + 20, files=[FileHits("shop/extra.py", "cccc", [1, 2], [(1, 2)])]),
            ],
        )
    )
    for window in (None, T0):
        sel = Selection("shop", since_unix=window)
        (entry,) = store.endpoints(sel)["endpoints"]
        sums = store.coverage(
            Selection("shop", endpoint=entry["endpoint"], since_unix=window)
        )["totals"]
        # views.py against its denominators, extra.py (none) everything executed.
        assert (entry["lines_covered"], entry["arcs_covered"]) == (4 + 2, 5 + 1)
        assert (sums["lines_covered"], sums["arcs_covered"]) == (4 + 2, 5 + 1)


def test_endpoint_filter_on_coverage(shop: SqlStore) -> None:
    answer = shop.coverage(Selection("shop", endpoint="POST /checkout"), detail=True)
    assert answer["totals"]["requests"] == 1
    models, views_file = answer["files"]
    assert [ln for ln, _, _ in views_file["lines"]] == PATH_A
    assert all(hits == 1 and first == tid(3) for _, hits, first in views_file["lines"])
    assert models["requests"] == 1 and views_file["requests"] == 1
    # Denominators stay the release's: the endpoint covers part of the release's code.
    assert answer["totals"]["lines_total"] == 13


def test_an_endpoint_the_release_never_saw_is_not_found(shop: SqlStore) -> None:
    """A typo must not read as 0 % covered. A known endpoint without requests in a window is
    zero, and a diff may name an endpoint only one of its releases has."""
    message = re.escape(
        "no endpoint 'GET /never' in shop 1.0 (prod, baseline): it never sent coverage of it "
        "(GET /api/v1/endpoints lists the endpoints of a release)"
    )
    never = Selection("shop", endpoint="GET /never")
    for query in (
        lambda: shop.coverage(never),
        lambda: shop.coverage(never, detail=True),
        lambda: shop.coverage(replace(never, since_unix=T0)),
        lambda: shop.endpoints(never),
        lambda: shop.file(never, "shop/views.py"),
        lambda: shop.series(never),
        lambda: shop.diff(never, never),
    ):
        with pytest.raises(NotFound, match=message):
            query()
    quiet = shop.coverage(Selection("shop", endpoint="POST /checkout", since_unix=T0 + HOUR))
    assert (quiet["totals"]["requests"], quiet["totals"]["lines_covered"]) == (0, 0)
    # Agent metrics name endpoints of their own (all of a rate-capped endpoint's requests
    # dropped leaves no coverage): the agent view filters, it does not refuse.
    assert shop.agent(never)["endpoints"] == []
    canary = Release("shop", "1.1", "prod", "canary")
    shop.ingest(Batch(coverage=[part(7, release=canary, endpoint="GET /new",
                                     files=[views(PATH_B, ARCS_B)])]))
    a = Selection("shop", "1.0", endpoint="GET /new")
    b = Selection("shop", "1.1", endpoint="GET /new")
    assert shop.diff(a, b)["endpoints"] == [
        {"endpoint": "GET /new", "only_in_a": False, "only_in_b": True}
    ]


def test_requests_count_distinct_traces_and_hits_count_parts(store: SqlStore) -> None:
    # One request split into two parts (same trace, two spans), plus a second request.
    store.ingest(
        Batch(
            coverage=[
                part(1, 1, files=[views([12, 13], [(12, 13)])]),
                part(1, 2, files=[views([13, 14], [(13, 14)])]),
                part(2, 3, files=[views([12], [])]),
            ]
        )
    )
    answer = store.coverage(Selection("shop"), detail=True)
    assert answer["totals"]["requests"] == 2
    (views_file,) = answer["files"]
    assert views_file["requests"] == 2
    assert views_file["lines"] == [[12, 2, tid(1)], [13, 2, tid(1)], [14, 1, tid(1)]]
    assert store.endpoints(Selection("shop"))["endpoints"][0]["requests"] == 2
    assert store.releases("shop")["releases"][0]["requests"] == 2


def test_request_without_files_still_counts(store: SqlStore) -> None:
    store.ingest(Batch(coverage=[part(1, files=[])]))
    assert store.coverage(Selection("shop"))["totals"]["requests"] == 1
    assert store.endpoints(Selection("shop"))["endpoints"][0]["requests"] == 1


def test_census_parts_add_lines_without_arcs(store: SqlStore) -> None:
    store.ingest(
        Batch(
            coverage=[
                part(1, mode="census", files=[views([12, 13], [(12, 13)])]),
                part(2, files=[views([13, 14], [(13, 14)])]),
            ]
        )
    )
    (views_file,) = store.coverage(Selection("shop"), detail=True)["files"]
    assert views_file["lines"] == [[12, 1, tid(1)], [13, 2, tid(1)], [14, 1, tid(2)]]
    assert views_file["arcs"] == [[13, 14, 1, tid(2)]]


UNKNOWN_ARCS = {"arcs_covered": None, "branches_covered": None, "branch_percent": None}


def _arc_figures(obj: dict) -> dict:
    return {k: obj[k] for k in UNKNOWN_ARCS if k in obj}


def _answers_of(store: SqlStore, sel: Selection) -> list[dict]:
    """Coverage of a selection as each reading path computes it: stored per-file counts (all
    time), hit sets with detail, and hour buckets (a window)."""
    return [
        store.coverage(sel),
        store.coverage(sel, detail=True),
        store.coverage(replace(sel, since_unix=T0 - HOUR)),
    ]


@pytest.mark.parametrize("statics_first", [True, False])
def test_a_census_only_release_has_null_arc_and_branch_figures(
    store: SqlStore, statics_first: bool
) -> None:
    """Census parts carry no arcs: how many arcs and branches ran is unknown, not 0. The
    denominators stay known; a file nothing ran in covered nothing, census or not."""
    rel = Release("shop", "2.0", "prod", "baseline")
    coverage = [
        part(1, release=rel, mode="census", files=[views(PATH_A, [])]),
        part(2, release=rel, mode="census", endpoint="POST /checkout", at=T0 + HOUR,
             files=[views([16], [])]),
    ]
    if statics_first:
        store.ingest(Batch(static=[views_static(rel)], coverage=coverage))
    else:  # counts made before the denominators arrive are recounted
        store.ingest(Batch(coverage=coverage))
        store.ingest(Batch(static=[views_static(rel)]))
    sel = Selection("shop", "2.0")
    for answer in _answers_of(store, sel):
        totals = answer["totals"]
        assert _arc_figures(totals) == UNKNOWN_ARCS
        assert (totals["arcs_total"], totals["branches_total"]) == (7 + 2, 2)
        assert (totals["lines_covered"], totals["line_percent"]) == (5, round(100 * 5 / 13, 1))
        models, views_file = answer["files"]
        assert _arc_figures(views_file) == UNKNOWN_ARCS
        assert (views_file["arcs_total"], views_file["branches_total"]) == (7, 2)
        assert _arc_figures(models) == {"arcs_covered": 0, "branches_covered": 0,
                                        "branch_percent": None}  # no branch line
    (release,) = store.releases("shop")["releases"]
    assert (release["arcs_covered"], release["branch_percent"]) == (None, None)
    assert (release["arcs_total"], release["line_percent"]) == (9, round(100 * 5 / 13, 1))
    for window in (None, T0 - HOUR):
        endpoints = store.endpoints(replace(sel, since_unix=window))["endpoints"]
        assert [(e["endpoint"], e["lines_covered"], e["arcs_covered"]) for e in endpoints] == [
            ("GET /items/{item_id}", 4, None),
            ("POST /checkout", 1, None),
        ]
    for answer in _answers_of(store, replace(sel, endpoint="POST /checkout")):
        assert _arc_figures(answer["totals"]) == UNKNOWN_ARCS
    views_file = store.file(sel, "shop/views.py")
    assert _arc_figures(views_file) == UNKNOWN_ARCS
    assert views_file["arcs"] == [] and len(views_file["possible_arcs"]) == 7
    for series in (store.series(sel), store.series(sel, path="shop/views.py"),
                   store.series(replace(sel, endpoint="POST /checkout"))):
        assert series["series"]
        assert all(b["arcs_covered"] is None and b["new_arcs"] is None for b in series["series"])
        assert all(b["new_lines"] >= 0 for b in series["series"])


def test_an_exact_release_that_covered_no_arc_or_branch_is_zero_not_null(store: SqlStore) -> None:
    """Measured exactly: arcs ran (none of them a possible arc), or the requests ran no
    measured file at all. Nothing is unknown: 0 arcs and 0 % of the branches."""
    ran_other_arcs = Release("shop", "3.0", "prod", "baseline")
    ran_no_file = Release("shop", "4.0", "prod", "baseline")
    store.ingest(
        Batch(
            static=[views_static(ran_other_arcs), views_static(ran_no_file)],
            coverage=[
                part(1, release=ran_other_arcs, files=[views([3, 4], [(3, 4)])]),
                part(2, release=ran_no_file, files=[]),
            ],
        )
    )
    zero = {"arcs_covered": 0, "branches_covered": 0, "branch_percent": 0.0}
    for version in ("3.0", "4.0"):
        sel = Selection("shop", version)
        for answer in _answers_of(store, sel):
            assert _arc_figures(answer["totals"]) == zero, version
            views_file = next(f for f in answer["files"] if f["path"] == "shop/views.py")
            assert _arc_figures(views_file) == zero, version
        (endpoint,) = store.endpoints(sel)["endpoints"]
        assert endpoint["arcs_covered"] == 0
        assert _arc_figures(store.file(sel, "shop/views.py")) == zero
    releases = {r["version"]: r for r in store.releases("shop")["releases"]}
    assert [(releases[v]["arcs_covered"], releases[v]["branch_percent"]) for v in ("3.0", "4.0")] \
        == [(0, 0.0), (0, 0.0)]
    (bucket,) = store.series(Selection("shop", "3.0"))["series"]
    assert (bucket["arcs_covered"], bucket["new_arcs"], bucket["new_lines"]) == (0, 0, 2)


def test_a_release_measured_partly_by_census_counts_what_ran_exactly(store: SqlStore) -> None:
    """An exact endpoint and a census one: the release's arc and branch figures are those of
    the exact measurement; the census endpoint, and a file only it ran, have null ones."""
    store.ingest(
        Batch(
            static=[views_static()],
            coverage=[
                part(1, files=[views(PATH_A, ARCS_A)]),
                part(2, mode="census", endpoint="GET /health",
                     files=[views([16], []), FileHits("shop/models.py", "aaaa000011112222", [1])]),
            ],
        )
    )
    sel = Selection("shop")
    for answer in _answers_of(store, sel):
        assert _arc_figures(answer["totals"]) == {
            "arcs_covered": 5, "branches_covered": 1, "branch_percent": 50.0
        }
        models, views_file = answer["files"]
        assert _arc_figures(models) == {"arcs_covered": None, "branches_covered": None,
                                        "branch_percent": None}
        assert views_file["arcs_covered"] == 5
    endpoints = {e["endpoint"]: e for e in store.endpoints(sel)["endpoints"]}
    assert endpoints["GET /health"]["arcs_covered"] is None
    assert endpoints["GET /items/{item_id}"]["arcs_covered"] == 5
    assert _arc_figures(store.coverage(replace(sel, endpoint="GET /health"))["totals"]) == (
        UNKNOWN_ARCS
    )
    (release,) = store.releases("shop")["releases"]
    assert (release["arcs_covered"], release["branch_percent"]) == (5, 50.0)
    (bucket,) = store.series(sel)["series"]
    assert (bucket["arcs_covered"], bucket["new_arcs"]) == (5, 5)


def test_release_selection_defaults(store: SqlStore) -> None:
    def rel(version: str, role: str = "baseline", environment: str = "prod") -> Release:
        return Release("shop", version, environment, role)

    store.ingest(
        Batch(
            coverage=[
                part(1, at=T0, release=rel("1.0")),
                part(2, at=T0 + 10, release=rel("1.1")),
                part(3, at=T0 + 20, release=rel("1.2", role="canary")),
                part(4, at=T0 + 30, release=rel("0.9", environment="staging")),
                part(5, at=T0 + 5, release=Release("cart", "7", "", "canary")),
            ]
        )
    )

    def pick(**kw: str) -> dict[str, str]:
        return store.coverage(Selection("shop", **kw))["release"]

    # Role defaults to baseline when the service has one; version/environment to the newest.
    assert pick() == rel("0.9", environment="staging").as_dict()
    assert pick(environment="prod") == rel("1.1").as_dict()
    assert pick(environment="prod", role="canary") == rel("1.2", role="canary").as_dict()
    assert pick(version="1.0") == rel("1.0").as_dict()
    # Without a baseline the most recent release of any role is picked.
    assert store.coverage(Selection("cart"))["release"] == {
        "service": "cart",
        "version": "7",
        "environment": "",
        "role": "canary",
    }
    versions = [r["version"] for r in store.releases("shop")["releases"]]
    assert versions == ["0.9", "1.2", "1.1", "1.0"]
    with pytest.raises(NotFound):
        pick(version="2.0")
    with pytest.raises(NotFound):
        store.coverage(Selection("nobody"))


@pytest.mark.parametrize(
    "sel",
    [
        Selection(""),
        Selection("shop", role="production"),
        Selection("shop", since_unix=T0 + 10, until_unix=T0),
        Selection("shop", since_unix=float("nan")),
        Selection("shop", endpoint=""),
    ],
)
def test_bad_selections_raise_value_error(shop: SqlStore, sel: Selection) -> None:
    with pytest.raises(ValueError):
        shop.coverage(sel)


@pytest.fixture
def two_hours(store: SqlStore) -> SqlStore:
    """Traffic at 10:xx and at 12:xx (trace 3 hits line 12 again at noon)."""
    store.ingest(
        Batch(
            static=[views_static()],
            coverage=[
                part(1, at=T0 + 100, files=[views(PATH_A, ARCS_A)]),
                part(
                    2,
                    at=T0 + 200,
                    endpoint="POST /checkout",
                    files=[views([12], [])],
                    mode="census",
                ),
                part(3, at=T0 + 2 * HOUR + 5, files=[views(PATH_B, ARCS_B)]),
                part(4, at=T0 + 2 * HOUR + 9, files=[views([12, 13], [(12, 13)])]),
            ],
        )
    )
    return store


def test_time_window_answers_from_hour_buckets(two_hours: SqlStore) -> None:
    noon = Selection("shop", since_unix=T0 + 2 * HOUR)
    answer = two_hours.coverage(noon, detail=True)
    assert answer["totals"]["requests"] == 2
    (views_file,) = [f for f in answer["files"] if f["path"] == "shop/views.py"]
    assert views_file["lines"] == [
        [12, 2, tid(3)],
        [13, 2, tid(3)],
        [16, 1, tid(3)],
        [20, 1, tid(3)],
    ]
    assert views_file["requests"] == 2
    morning = Selection("shop", since_unix=T0, until_unix=T0 + HOUR)
    (views_file,) = [
        f for f in two_hours.coverage(morning, detail=True)["files"] if f["path"] == "shop/views.py"
    ]
    assert views_file["lines"] == [
        [12, 2, tid(1)],
        [13, 1, tid(1)],
        [14, 1, tid(1)],
        [20, 1, tid(1)],
    ]
    # A window that starts inside an hour includes that whole hour (one-hour resolution).
    late_morning = Selection("shop", since_unix=T0 + 1800, until_unix=T0 + HOUR + 1)
    assert two_hours.coverage(late_morning)["totals"]["requests"] == 2
    empty = Selection("shop", since_unix=T0 + 5 * HOUR)
    assert two_hours.coverage(empty)["totals"]["lines_covered"] == 0


def test_window_and_endpoint_together(two_hours: SqlStore) -> None:
    sel = Selection("shop", endpoint="POST /checkout", since_unix=T0, until_unix=T0 + HOUR)
    answer = two_hours.coverage(sel, detail=True)
    assert answer["totals"]["requests"] == 1
    (views_file,) = [f for f in answer["files"] if f["path"] == "shop/views.py"]
    assert views_file["lines"] == [[12, 1, tid(2)]]
    windowed = two_hours.endpoints(Selection("shop", since_unix=T0 + 2 * HOUR))["endpoints"]
    assert [(e["endpoint"], e["requests"], e["lines_covered"]) for e in windowed] == [
        ("GET /items/{item_id}", 2, 4)
    ]


def test_series(two_hours: SqlStore) -> None:
    answer = two_hours.series(Selection("shop"))
    assert answer["release"] == REL.as_dict()
    assert answer["series"] == [
        {
            "hour": "2025-11-25T10:00:00Z",
            "requests": 2,
            "lines_covered": 4,
            "arcs_covered": 5,
            "new_lines": 4,
            "new_arcs": 5,
        },
        {
            "hour": "2025-11-25T12:00:00Z",
            "requests": 2,
            "lines_covered": 4,
            "arcs_covered": 5,
            "new_lines": 1,
            "new_arcs": 2,
        },
    ]
    # POST /checkout was measured by census only: its arcs are unknown, not 0.
    per_endpoint = two_hours.series(Selection("shop", endpoint="POST /checkout"))["series"]
    assert per_endpoint == [
        {
            "hour": "2025-11-25T10:00:00Z",
            "requests": 1,
            "lines_covered": 1,
            "arcs_covered": None,
            "new_lines": 1,
            "new_arcs": None,
        },
    ]
    windowed = two_hours.series(Selection("shop", since_unix=T0 + HOUR))["series"]
    assert [s["hour"] for s in windowed] == ["2025-11-25T12:00:00Z"]
    by_file = two_hours.series(Selection("shop"), path="shop/views.py")["series"]
    assert [s["requests"] for s in by_file] == [2, 2]
    assert two_hours.series(Selection("shop"), path="shop/models.py")["series"] == []
    with pytest.raises(NotFound):
        two_hours.series(Selection("shop"), path="shop/none.py")


def test_series_counts_against_the_denominators_as_coverage_does(store: SqlStore) -> None:
    """Line 2 is no statement of views.py and (2, 5) no possible arc: neither counts in a bucket
    nor as newly covered; extra.py has no denominators, so everything executed there counts."""
    store.ingest(
        Batch(
            static=[views_static()],
            coverage=[
                part(1, at=T0 + 10, files=[views([*PATH_A, 2], [*ARCS_A, (2, 5)])]),
                part(2, at=T0 + HOUR + 10, files=[views([*PATH_B, 2], [*ARCS_B, (2, 5)])]),
                part(
                    3, at=T0 + HOUR + 20, files=[FileHits("shop/extra.py", "cccc", [1], [(-1, 1)])]
                ),
            ],
        )
    )
    answer = store.series(Selection("shop"))["series"]
    assert [(b["lines_covered"], b["arcs_covered"]) for b in answer] == [(4, 5), (4 + 1, 5 + 1)]
    assert [(b["new_lines"], b["new_arcs"]) for b in answer] == [(4, 5), (1 + 1, 2 + 1)]
    (release,) = store.releases("shop")["releases"]
    assert sum(b["new_lines"] for b in answer) == release["lines_covered"]
    assert sum(b["new_arcs"] for b in answer) == release["arcs_covered"]
    for f in store.coverage(Selection("shop"))["files"]:
        by_file = store.series(Selection("shop"), path=f["path"])["series"]
        assert sum(b["new_lines"] for b in by_file) == f["lines_covered"], f["path"]
        assert sum(b["new_arcs"] for b in by_file) == f["arcs_covered"], f["path"]
    windowed = store.series(Selection("shop", since_unix=T0 + HOUR))["series"]
    assert [(b["lines_covered"], b["new_lines"]) for b in windowed] == [(5, 2)]


def test_diff_between_releases(store: SqlStore) -> None:
    base = Release("shop", "1.0", "prod", "baseline")
    canary = Release("shop", "1.1", "prod", "canary")
    store.ingest(
        Batch(
            coverage=[
                part(1, release=base, files=[views(PATH_A, ARCS_A)]),
                part(2, release=base, endpoint="GET /old", files=[]),
                part(3, release=canary, files=[views(PATH_B, ARCS_B)]),
                part(4, release=canary, endpoint="GET /new", files=[]),
            ]
        )
    )
    answer = store.diff(
        Selection("shop", version="1.0", environment="prod", role="baseline"),
        Selection("shop", version="1.1", environment="prod", role="canary"),
    )
    assert answer["a"] == base.as_dict() and answer["b"] == canary.as_dict()
    assert answer["files"] == [
        {
            "path": "shop/views.py",
            "newly_covered_lines": [16],
            "no_longer_covered_lines": [14],
            "newly_covered_arcs": [[13, 16], [16, 20]],
            "no_longer_covered_arcs": [[13, 14], [14, 20]],
            "arcs_not_compared": 0,
        }
    ]
    assert answer["endpoints"] == [
        {"endpoint": "GET /items/{item_id}", "only_in_a": False, "only_in_b": False},
        {"endpoint": "GET /new", "only_in_a": False, "only_in_b": True},
        {"endpoint": "GET /old", "only_in_a": True, "only_in_b": False},
    ]
    same = store.diff(Selection("shop", version="1.0"), Selection("shop", version="1.0"))
    assert same["files"] == []


def test_agent_metrics_keep_latest_value_per_series(store: SqlStore) -> None:
    def seen(instance: str, value: float, at: float) -> MetricPoint:
        return MetricPoint(
            REL,
            instance,
            "runcov.requests.seen",
            {"runcov.endpoint": "GET /x"},
            value,
            int(at * 1e9),
        )

    store.ingest(Batch(metrics=[seen("a", 10, T0 + 10), seen("b", 4, T0 + 10)]))
    store.ingest(Batch(metrics=[seen("a", 25, T0 + 20)]))
    store.ingest(Batch(metrics=[seen("a", 12, T0 + 15)]))  # late, older point: ignored
    (release,) = store.releases("shop")["releases"]
    assert release["requests_seen"] == 25 + 4
    assert release["requests"] == 0


def test_agent_metrics_neither_make_the_default_release_nor_move_its_times(
    store: SqlStore,
) -> None:
    """An idle process exports its counters on a timer: that is no span, so it neither moves a
    release's last_seen nor makes a release that measured nothing the default."""

    def seen(release: Release, at: float) -> MetricPoint:
        return MetricPoint(release, "idle-1", "runcov.requests.seen", {}, 5, int(at * 1e9))

    old = Release("shop", "2.0", "demo", "baseline")
    idle = Release("shop", "3.0", "demo", "baseline")
    store.ingest(
        Batch(static=[views_static(old, at=T0)], coverage=[part(1, release=old, at=T0 + 10)])
    )
    store.ingest(Batch(metrics=[seen(idle, T0 + HOUR), seen(old, T0 + 2 * HOUR)]))

    assert store.coverage(Selection("shop"))["release"] == old.as_dict()
    assert store.coverage(Selection("shop", environment="demo"))["release"] == old.as_dict()
    listed = [
        (r["version"], r["first_seen"], r["last_seen"], r["requests_seen"])
        for r in store.releases("shop")["releases"]
    ]
    assert listed == [
        ("2.0", "2025-11-25T10:00:00Z", "2025-11-25T10:00:10Z", 5),
        ("3.0", None, None, 5),
    ]
    assert store.services()["services"][0]["last_seen"] == "2025-11-25T10:00:10Z"
    # Named, the metrics-only release is still selectable.
    named = store.coverage(Selection("shop", version="3.0"))
    assert named["release"] == idle.as_dict() and named["totals"]["files"] == 0

    # A baseline known only from metrics does not shadow a canary that sent coverage.
    canary = Release("cart", "1.0", "prod", "canary")
    store.ingest(Batch(coverage=[part(2, release=canary, at=T0)]))
    store.ingest(Batch(metrics=[seen(Release("cart", "1.1", "prod", "baseline"), T0 + HOUR)]))
    assert store.coverage(Selection("cart"))["release"] == canary.as_dict()

    # The release's first span makes it a release like any other.
    store.ingest(Batch(coverage=[part(3, release=idle, at=T0 + 50)]))
    assert store.coverage(Selection("shop"))["release"] == idle.as_dict()
    first = store.releases("shop")["releases"][0]
    assert (first["version"], first["first_seen"], first["last_seen"]) == (
        "3.0",
        "2025-11-25T10:00:50Z",
        "2025-11-25T10:00:50Z",
    )


def test_a_service_known_only_from_metrics(store: SqlStore) -> None:
    store.ingest(
        Batch(metrics=[MetricPoint(REL, "i", "runcov.requests.seen", {}, 3, int(T0 * 1e9))])
    )
    assert store.services() == {"services": [{"service": "shop", "releases": 1, "last_seen": None}]}
    answer = store.coverage(Selection("shop"))
    assert answer["release"] == REL.as_dict() and answer["totals"]["files"] == 0
    (release,) = store.releases("shop")["releases"]
    assert release["first_seen"] is None and release["last_seen"] is None
    assert release["requests_seen"] == 3


def test_expire_drops_hour_buckets_and_keeps_cumulative(two_hours: SqlStore) -> None:
    before = two_hours.coverage(Selection("shop"), detail=True)
    deleted = two_hours.expire(T0 + HOUR)
    assert deleted > 0
    assert two_hours.coverage(Selection("shop"), detail=True) == before
    morning = Selection("shop", since_unix=T0, until_unix=T0 + HOUR)
    assert two_hours.coverage(morning)["totals"]["requests"] == 0
    assert two_hours.coverage(morning)["totals"]["lines_covered"] == 0
    noon = Selection("shop", since_unix=T0 + 2 * HOUR)
    assert two_hours.coverage(noon)["totals"]["requests"] == 2
    # The expired hour keeps only its first hits, which the all-time tables still hold.
    morning_bucket, noon_bucket = two_hours.series(Selection("shop"))["series"]
    assert morning_bucket == {
        "hour": "2025-11-25T10:00:00Z",
        "requests": 0,
        "lines_covered": 0,
        "arcs_covered": 0,
        "new_lines": 4,
        "new_arcs": 5,
    }
    assert (noon_bucket["hour"], noon_bucket["requests"]) == ("2025-11-25T12:00:00Z", 2)
    assert two_hours.expire(T0 + HOUR) == 0


def test_part_keys_outlive_expiry_of_their_hour_by_receive_time(store: SqlStore) -> None:
    """A part whose span time is older than the retention is still known after a sweep: its key
    is filed under the hour it was received, and kept a grace period past the retention."""
    received = T0 + 10 * HOUR
    late = part(1, at=T0, files=[views([12, 13], [])])

    def deliver() -> None:
        store.ingest(Batch(coverage=[late], received_unix_nano=int(received * 1e9)))

    def hits_and_requests() -> tuple[list[list[object]], int]:
        detail = store.file(Selection("shop"), "shop/views.py")
        (release,) = store.releases("shop")["releases"]
        return detail["lines"], release["requests"]

    deliver()
    once = hits_and_requests()
    assert once == ([[12, 1, tid(1)], [13, 1, tid(1)]], 1)
    assert store.expire(received - HOUR) > 0  # a sweep: the span's own hour is gone
    deliver()  # the same part again, e.g. a retry after a lost acknowledgement
    assert hits_and_requests() == once
    # Keys are forgotten only a grace period after they were received.
    store.expire(received + HOUR)
    deliver()
    assert hits_and_requests() == once
    store.expire(received + (queries.KEY_GRACE_HOURS + 1) * HOUR)
    deliver()
    assert hits_and_requests()[1] == 2


def test_expire_accepts_any_cutoff(store: SqlStore) -> None:
    store.ingest(Batch(coverage=[part(1, files=[views([12], [])])]))
    assert store.expire(-1e30) == 0
    assert store.expire(1e30) > 0


def test_a_request_whose_parts_straddle_a_retention_sweep_counts_once(store: SqlStore) -> None:
    """A late request (span time older than the retention) arrives in two parts, in two export
    requests with a sweep between them, and part 1 is delivered again afterwards: the request is
    counted once at every level, and every line once."""
    retention = 2 * HOUR
    received = T0 + 10 * HOUR  # the parts' span time (T0) is far past the retention by then
    first = part(1, 1, at=T0, files=[views([12, 13], [(12, 13)])])
    second = part(1, 2, at=T0, files=[views([14, 20], [(14, 20)])])

    def deliver(p: CoveragePart, at: float) -> None:
        store.ingest(Batch(coverage=[p], received_unix_nano=int(at * 1e9)))

    deliver(first, received)
    # The retention job: everything hourly older than its period before "now" goes.
    assert store.expire(received + 60 - retention) > 0
    deliver(second, received + 120)
    deliver(first, received + 180)  # a retry of part 1 after the sweep

    (release,) = store.releases("shop")["releases"]
    assert release["requests"] == 1
    (endpoint,) = store.endpoints(Selection("shop"))["endpoints"]
    assert endpoint["requests"] == 1
    answer = store.coverage(Selection("shop"), detail=True)
    assert answer["totals"]["requests"] == 1
    (views_file,) = answer["files"]
    assert views_file["requests"] == 1
    assert [hits for _, hits, _ in views_file["lines"]] == [1, 1, 1, 1]
    assert [hits for *_, hits, _ in views_file["arcs"]] == [1, 1]
    by_endpoint = store.coverage(Selection("shop", endpoint="GET /items/{item_id}"))
    assert by_endpoint["totals"]["requests"] == 1
    assert by_endpoint["files"][0]["requests"] == 1
    # Part 2 filled the old hour again; the next sweep empties it, and changes no count.
    assert store.expire(received + 600 - retention) > 0
    (bucket,) = store.series(Selection("shop"))["series"]
    assert (bucket["requests"], bucket["lines_covered"], bucket["new_lines"]) == (0, 0, 4)
    assert store.releases("shop")["releases"][0]["requests"] == 1
    # The trace is remembered as long as its parts' keys (grace period from the last receipt).
    deliver(part(1, 3, at=T0, files=[views([16], [])]), received + 900)
    assert store.releases("shop")["releases"][0]["requests"] == 1
    store.expire(received + 900 + (queries.KEY_GRACE_HOURS + 1) * HOUR)
    with store.db.transaction(write=False) as conn:
        assert conn.query("SELECT COUNT(*) FROM trace_marks") == [(0,)]


def counter(
    instance: str,
    name: str,
    value: float,
    at: float,
    start: float,
    attributes: dict[str, str] | None = None,
    release: Release = REL,
) -> MetricPoint:
    return MetricPoint(
        release,
        instance,
        name,
        attributes or {},
        value,
        int(at * 1e9),
        start_time_unix_nano=int(start * 1e9),
        kind="counter",
    )


def test_agent_counters_add_up_over_processes_and_runs(store: SqlStore) -> None:
    """Each process reports its cumulative totals; a process whose counters start again (a new
    meter provider under the same service.instance.id: the agent stopped and started again in
    one process) begins a new run, whose counts add to the earlier run's instead of replacing
    them. Retries of an earlier run's values change nothing."""
    seen = "runcov.requests.seen"
    store.ingest(
        Batch(metrics=[counter("a", seen, 10, T0 + 10, T0), counter("b", seen, 4, T0 + 10, T0)])
    )
    store.ingest(Batch(metrics=[counter("a", seen, 25, T0 + 20, T0)]))
    # Process a restarts its counters at T0 + 30.
    store.ingest(Batch(metrics=[counter("a", seen, 3, T0 + 40, T0 + 30)]))
    assert store.releases("shop")["releases"][0]["requests_seen"] == 25 + 4 + 3
    # A late retry of the first run, and one whose time the collector clamped to when it
    # received it (the agent's clock ran ahead), so it looks newer than what is stored.
    store.ingest(Batch(metrics=[counter("a", seen, 12, T0 + 15, T0)]))
    store.ingest(Batch(metrics=[counter("a", seen, 20, T0 + 3600, T0)]))
    assert store.releases("shop")["releases"][0]["requests_seen"] == 25 + 4 + 3
    store.ingest(Batch(metrics=[counter("a", seen, 9, T0 + 50, T0 + 30)]))
    assert store.releases("shop")["releases"][0]["requests_seen"] == 25 + 4 + 9


def test_agent_counters_beyond_the_range_of_a_double_sum_do_not_fail_queries(
    store: SqlStore,
) -> None:
    """Values the decoder now refuses (beyond ±2**53) but that a store may hold from before
    (or a run of the legacy table): two of them summed used to overflow to infinity (SQLite:
    OverflowError in round(); PostgreSQL: "value out of range"), and every query reading the
    release's agent counters failed: releases, the agent view, /metrics, the dashboard."""
    seen = "runcov.requests.seen"
    store.ingest(
        Batch(
            metrics=[
                counter("a", seen, 1e308, T0 + 10, T0),
                counter("b", seen, 1e308, T0 + 10, T0),
                counter("c", seen, 8, T0 + 10, T0),
            ]
        )
    )
    (release,) = store.releases("shop")["releases"]
    bound = limits.MAX_METRIC_VALUE
    assert release["requests_seen"] == 2 * bound + 8  # each value counts as the bound
    view = store.agent(Selection("shop"))
    assert view["requests_seen"] == 2 * bound + 8
    assert view["processes"] == 3


def test_agent_view_breaks_counts_down_by_reason_endpoint_and_mode(store: SqlStore) -> None:
    items, checkout = "GET /items/{item_id}", "POST /checkout"

    def ep(endpoint: str, **more: str) -> dict[str, str]:
        return {"runcov.endpoint": endpoint, **more}

    def rate(instance: str, endpoint: str, value: float, at: float) -> MetricPoint:
        return MetricPoint(
            REL, instance, "runcov.sample_rate", ep(endpoint), value, int(at * 1e9), kind="gauge"
        )

    mode, reason = "runcov.mode", "runcov.reason"
    per_process = [
        ("runcov.requests.seen", 100, ep(items)),
        ("runcov.requests.seen", 50, ep(checkout)),
        ("runcov.requests.sampled", 8, ep(items, **{mode: "exact"})),
        ("runcov.requests.sampled", 2, ep(checkout, **{mode: "census"})),
        ("runcov.requests.dropped", 3, ep(items, **{reason: "rate_cap"})),
        ("runcov.requests.dropped", 1, ep(checkout, **{reason: "queue_full"})),
        ("runcov.requests.dropped", 5, ep("", **{reason: "census_unclaimed"})),
        ("runcov.lines.new", 40, ep(items)),
        ("runcov.arcs.new", 45, ep(items)),
        ("runcov.overhead", 0.25, {}),
    ]
    points = [
        counter(instance, name, value, T0 + 60, start, attributes)
        for instance, start in (("a", T0), ("b", T0 + 5))
        for name, value, attributes in per_process
    ]
    points += [
        rate("a", items, 0.02, T0 + 60),
        rate("b", items, 0.05, T0 + 120),
        rate("old", items, 0.9, T0 + 120 - 16 * 60),  # a process gone for 16 minutes
        rate("a", checkout, 0.01, T0 + 60),
    ]
    store.ingest(Batch(metrics=points))
    answer = store.agent(Selection("shop"))
    reasons = dict.fromkeys(agent.DROP_REASONS, 0)
    assert {k: v for k, v in answer.items() if k != "endpoints"} == {
        "release": REL.as_dict(),
        "processes": 3,
        "last_report": "2025-11-25T10:02:00Z",
        "requests_seen": 300,
        "requests_sampled": 20,
        "requests_dropped": 18,
        "sampled_by_mode": {"exact": 16, "census": 4},
        "dropped_by_reason": {**reasons, "rate_cap": 6, "queue_full": 2, "census_unclaimed": 10},
        "lines_new": 80,
        "arcs_new": 90,
        "requests_expired": 0,
        "overhead_seconds": 0.5,
        "overhead_per_sampled_request_seconds": 0.025,
        "overhead_per_seen_request_seconds": round(0.5 / 300, 9),
    }
    assert answer["endpoints"] == [
        {
            "endpoint": items,
            "requests_seen": 200,
            "requests_sampled": 16,
            "requests_dropped": 6,
            "sampled_by_mode": {"exact": 16, "census": 0},
            "dropped_by_reason": {**reasons, "rate_cap": 6},
            "lines_new": 80,
            "arcs_new": 90,
            "requests_expired": 0,
            "sample_rate": {
                "rate": 0.05,
                "time": "2025-11-25T10:02:00Z",
                "min": 0.02,
                "max": 0.05,
                "processes": 2,
            },
        },
        {
            "endpoint": checkout,
            "requests_seen": 100,
            "requests_sampled": 4,
            "requests_dropped": 2,
            "sampled_by_mode": {"exact": 0, "census": 4},
            "dropped_by_reason": {**reasons, "queue_full": 2},
            "lines_new": 0,
            "arcs_new": 0,
            "requests_expired": 0,
            "sample_rate": {
                "rate": 0.01,
                "time": "2025-11-25T10:01:00Z",
                "min": 0.01,
                "max": 0.01,
                "processes": 1,
            },
        },
    ]
    (release,) = store.releases("shop")["releases"]
    assert release["requests_dropped_by_reason"] == answer["dropped_by_reason"]
    assert release["overhead_seconds"] == 0.5
    # One endpoint; release totals stay those of the release.
    only = store.agent(Selection("shop", endpoint=checkout))
    assert [e["endpoint"] for e in only["endpoints"]] == [checkout]
    assert only["requests_seen"] == 300
    with pytest.raises(ValueError, match="since/until do not apply"):
        store.agent(Selection("shop", since_unix=T0))
    with pytest.raises(NotFound):
        store.agent(Selection("cart"))


def test_agent_view_of_a_release_without_metrics(shop: SqlStore) -> None:
    answer = shop.agent(Selection("shop"))
    assert answer["processes"] == 0 and answer["last_report"] is None
    assert answer["requests_seen"] == 0 and answer["endpoints"] == []
    assert answer["overhead_per_sampled_request_seconds"] is None
    assert answer["overhead_per_seen_request_seconds"] is None
