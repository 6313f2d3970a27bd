"""The Prometheus exposition and the retention job."""

from __future__ import annotations

import re
import time

import pytest

from runcov_collector.metrics import CollectorMetrics, Counter, Histogram, Registry
from runcov_collector.testing import (
    coverage_span,
    file_hits,
    file_static,
    static_span,
    trace_request,
)

HOUR_NS = 3600 * 10**9


def test_counter_exposition_escapes_label_values():
    registry = Registry()
    counter = Counter("x_things", "Things seen.", ("kind",))
    registry.register(counter)
    counter.inc(kind='we"ird\\\nname')
    counter.inc(2.5, kind="plain")
    text = registry.render()
    assert text == (
        "# HELP x_things_total Things seen.\n"
        "# TYPE x_things_total counter\n"
        'x_things_total{kind="plain"} 2.5\n'
        'x_things_total{kind="we\\"ird\\\\\\nname"} 1\n'
    )
    with pytest.raises(ValueError, match="counters only go up"):
        counter.inc(-1, kind="plain")
    with pytest.raises(ValueError, match=r"takes labels \('kind',\)"):
        counter.inc(other="x")


def test_histogram_buckets_are_cumulative():
    registry = Registry()
    histogram = Histogram("x_seconds", "Latency.", buckets=(0.1, 1.0))
    registry.register(histogram)
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    lines = registry.render().splitlines()
    assert lines[2:] == [
        'x_seconds_bucket{le="0.1"} 2',
        'x_seconds_bucket{le="1"} 3',
        'x_seconds_bucket{le="+Inf"} 4',
        "x_seconds_sum 3.65",
        "x_seconds_count 4",
    ]


def test_collector_metrics_render_every_family_once():
    metrics = CollectorMetrics()
    metrics.add_gauge("x_gauge", "A gauge.", lambda: [({"a": "1"}, 0.5)])
    text = metrics.render()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    assert 'x_gauge{a="1"} 0.5' in text
    assert "# TYPE runcov_collector_store_ingest_seconds histogram" in text


def test_unlabelled_counters_render_0_before_they_count():
    """A counter without labels has its one series from the start: an alert on its
    ``increase`` sees the first increment, which a series appearing at 1 would hide."""
    registry = Registry()
    counter = Counter("x_sweeps", "Sweeps.")
    registry.register(counter)
    assert registry.render().splitlines()[2:] == ["x_sweeps_total 0"]
    counter.inc()
    assert registry.render().splitlines()[2:] == ["x_sweeps_total 1"]


def test_the_collectors_unlabelled_counters_read_0_from_the_start(start_collector, make_client):
    """No retention sweep ran (retention is off) and nothing was read: each unlabelled counter
    of ``/metrics`` still has its series, at 0."""
    client = make_client(start_collector())
    lines = client.get("/metrics", token=None).text.splitlines()
    for name in (
        "runcov_collector_retention_expired_total",
        "runcov_collector_retention_failures_total",
        "runcov_collector_release_series_read_failures_total",
    ):
        assert f"{name} 0" in lines, name


def _send(client, when_ns, lines):
    span = coverage_span("GET /", [file_hits("shop/views.py", lines)], end_time_unix_nano=when_ns)
    assert client.send(trace_request([span])).status_code == 200


def test_retention_job_expires_old_hourly_data_periodically(
    make_store, start_collector, make_client
):
    store = make_store()
    feeder = make_client(start_collector(store=store))
    now = time.time_ns()
    _send(feeder, now - 100 * 24 * HOUR_NS, [1, 2])
    _send(feeder, now, [3])
    sel = {"service": "shop"}
    assert len(feeder.query("/api/v1/series", **sel)["series"]) == 2

    keeper = make_client(
        start_collector(store=store, retention_hours=24, retention_interval_seconds=0.05)
    )
    deadline = time.monotonic() + 60
    while True:
        text = keeper.get("/metrics", token=None).text
        match = re.search(r"^runcov_collector_retention_expired_total (\S+)$", text, re.M)
        assert match is not None
        value = float(match.group(1))
        if value > 0 or time.monotonic() > deadline:
            break
    assert value > 0
    series = keeper.query("/api/v1/series", **sel)["series"]
    # The expired hour is listed only for its first hits.
    assert [bucket["lines_covered"] for bucket in series] == [0, 1]
    assert [bucket["new_lines"] for bucket in series] == [2, 1]
    # Cumulative coverage is not hourly data: it stays.
    detail = keeper.query("/api/v1/file", **sel, path="shop/views.py")
    assert [line for line, _, _ in detail["lines"]] == [1, 2, 3]


def test_release_gauges_are_cached_between_scrapes(start_collector, make_client):
    client = make_client(start_collector(metrics_cache_seconds=3600))
    assert "runcov_collector_release_line_coverage_ratio{" not in client.get("/metrics").text
    _send(client, time.time_ns(), [1])
    # Within the cache period the release list is not re-read from the store.
    assert "runcov_collector_release_line_coverage_ratio{" not in client.get("/metrics").text


def test_release_ratio_gauges_are_computed_from_the_counts(start_collector, make_client):
    """3 of 7 statements and 1 of 3 branch exits: the exact ratios, not the API's percentages
    (42.9, 33.3) over 100; executed lines of a file without denominators do not count."""
    client = make_client(start_collector(metrics_cache_seconds=0))
    possible = [(1, 2), (1, 3), (1, 4), (2, 5), (3, 5), (4, 5), (5, 6), (6, 7)]
    spans = [
        static_span([file_static("shop/views.py", [1, 2, 3, 4, 5, 6, 7], possible)]),
        coverage_span(
            "GET /",
            [file_hits("shop/views.py", [1, 2, 5], [(1, 2), (2, 5)]), file_hits("x.py", [1, 2])],
        ),
    ]
    assert client.send(trace_request(spans)).status_code == 200
    text = client.get("/metrics", token=None).text

    def gauge(name):
        pattern = rf"^runcov_collector_release_{name}_coverage_ratio{{.*}} (\S+)$"
        match = re.search(pattern, text, re.M)
        assert match is not None, text
        return float(match.group(1))

    assert gauge("line") == 3 / 7
    assert gauge("branch") == 1 / 3


def test_a_census_only_release_has_no_branch_ratio_series(start_collector, make_client):
    """Census sends lines, not arcs: the release's branch coverage is unknown, so its branch
    series is left out (a 0 would page someone). An exact release that took no branch exit
    reads 0; both have line ratios."""
    client = make_client(start_collector(metrics_cache_seconds=0))
    possible = [(-1, 1), (1, 2), (1, 3), (2, 4), (3, 4)]
    for version, mode, arcs in (("census", "census", []), ("exact", "exact", [(-1, 1)])):
        spans = [
            static_span([file_static("shop/views.py", [1, 2, 3, 4], possible)]),
            coverage_span("GET /", [file_hits("shop/views.py", [1], arcs)], mode=mode),
        ]
        resource = {"service.name": "shop", "service.version": version}
        assert client.send(trace_request(spans, resource)).status_code == 200
    text = client.get("/metrics", token=None).text

    def gauges(name):
        pattern = rf'^runcov_collector_release_{name}_coverage_ratio{{.*version="(\w+)".*}} (\S+)$'
        return {v: float(x) for v, x in re.findall(pattern, text, re.M)}

    assert gauges("line") == {"census": 1 / 4, "exact": 1 / 4}
    assert gauges("branch") == {"exact": 0.0}


def test_a_part_delivered_again_after_a_retention_sweep_counts_once(start_collector, make_client):
    collector = start_collector(retention_hours=1, retention_interval_seconds=3600)
    client = make_client(collector)
    span = coverage_span(
        "GET /",
        [file_hits("shop/views.py", [1, 2])],
        trace_id="ab" * 16,
        span_id="cd" * 8,
        end_time_unix_nano=time.time_ns() - 3 * HOUR_NS,  # a late batch
    )
    body = trace_request([span])

    def state():
        detail = client.query("/api/v1/file", service="shop", path="shop/views.py")
        (release,) = client.query("/api/v1/releases", service="shop")["releases"]
        return [hits for _, hits, _ in detail["lines"]], release["requests"]

    assert client.send(body).status_code == 200
    assert client.send(body).status_code == 200
    assert state() == ([1, 1], 1)
    assert collector.expire_once() > 0  # the span's hour is past the retention
    assert client.send(body).status_code == 200
    assert state() == ([1, 1], 1)


def test_parts_counter_tells_duplicates_from_newly_stored_parts(start_collector, make_client):
    """A retried export (or a span sent twice in one request) is counted as duplicate parts,
    not stored again."""
    client = make_client(start_collector())
    first = coverage_span("GET /", [file_hits("shop/views.py", [1])], span_id="01" * 8)
    second = coverage_span("GET /", [file_hits("shop/views.py", [2])], span_id="02" * 8)
    static = static_span([file_static("shop/views.py", [1, 2])], span_id="03" * 8)
    assert client.send(trace_request([first, second, static])).status_code == 200
    assert client.send(trace_request([first, second, static])).status_code == 200
    assert client.send(trace_request([second, second])).status_code == 200
    metrics = client.get("/metrics", token=None).text
    parts = 'runcov_collector_ingest_parts_total{transport="http",kind='
    assert f'{parts}"coverage",result="stored"}} 2' in metrics
    assert f'{parts}"coverage",result="duplicate"}} 4' in metrics
    assert f'{parts}"static",result="stored"}} 2' in metrics


def test_a_late_request_in_two_parts_straddling_a_retention_sweep_counts_once(
    start_collector, make_client
):
    """A late request (span time past the retention) arrives in two export requests with a
    retention sweep between them, then its first part again: one request, every line once."""
    collector = start_collector(retention_hours=1, retention_interval_seconds=3600)
    client = make_client(collector)
    late = time.time_ns() - 3 * HOUR_NS

    def send_part(span_id, index, lines):
        span = coverage_span(
            "GET /items/{item_id}",
            [file_hits("shop/views.py", lines)],
            trace_id="ab" * 16,
            span_id=span_id,
            end_time_unix_nano=late,
            part=index,
            parts=2,
        )
        assert client.send(trace_request([span])).status_code == 200

    send_part("01" * 8, 0, [1, 2])
    assert collector.expire_once() > 0  # the parts' hour is past the retention
    send_part("02" * 8, 1, [3, 4])
    send_part("01" * 8, 0, [1, 2])  # part 1 again, e.g. a retried export

    (release,) = client.query("/api/v1/releases", service="shop")["releases"]
    assert release["requests"] == 1
    (endpoint,) = client.query("/api/v1/endpoints", service="shop")["endpoints"]
    assert endpoint["requests"] == 1
    detail = client.query("/api/v1/file", service="shop", path="shop/views.py")
    assert [(line, hits) for line, hits, _ in detail["lines"]] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert detail["requests"] == 1
