"""``--since``/``--until`` against the store's one-hour resolution (runcov.reports.window)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from runcov.reports.window import Window
from runcov_collector.api import parse_time
from runcov_collector.model import Selection
from runcov_collector.store.select import hour_window

# 2026-11-25 10:37:12 UTC
NOW = datetime(2026, 11, 25, 10, 37, 12, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(("since", "until", "label"), [
    ("1s", None, "since 2026-11-25 10:00 UTC (the hour of 1s ago)"),
    ("90m", None, "since 2026-11-25 09:00 UTC (the hour of 90m ago)"),
    ("2030-01-01", None, "since 2030-01-01"),
    ("2030-01-01T10:30:00Z", None, "since 2030-01-01 10:00 UTC (the hour of 2030-01-01T10:30:00Z)"),
    ("2030-01-01T12:00:00+02:00", None, "since 2030-01-01T12:00:00+02:00"),
    (None, "30m", "until 2026-11-25 11:00 UTC (the end of the hour of 30m ago)"),
    ("7d", "2026-11-25T08:00Z",
     "from 2026-11-18 10:00 UTC (the hour of 7d ago) to 2026-11-25T08:00Z"),
    ("soon", None, "since soon"),  # the collector refuses it, naming it as given
    (None, None, ""),
])
def test_labels_name_the_hours_the_store_counts(
    since: str | None, until: str | None, label: str
) -> None:
    assert Window(since, until, now=NOW).label() == label


@pytest.mark.parametrize(("since", "until"), [
    ("1s", None), ("90m", "30m"), ("2030-01-01T10:30:00Z", "2030-01-01T12:00:01Z"),
    (None, "2d"), ("3w", None),
])
def test_bounds_are_the_collectors_hour_buckets(since: str | None, until: str | None) -> None:
    """The bounds named are those of the hour buckets the collector reads for the same
    values (relative ones sent as the instant they mean)."""
    window = Window(since, until, now=NOW)
    sent = [window.query(v) for v in (since, until)]
    sel = Selection(
        service="shop",
        since_unix=None if sent[0] is None else parse_time(sent[0], "since"),
        until_unix=None if sent[1] is None else parse_time(sent[1], "until"),
    )
    hours = hour_window(sel)
    assert hours is not None
    if since is not None:
        assert window.start == hours[0] * 3600
    if until is not None:
        assert window.end == hours[1] * 3600
    # A relative value is sent as the instant it means at the window's "now".
    if since is not None and since[-1] in "smhdw":
        assert sel.since_unix == pytest.approx(parse_time(since, "since", now=NOW), abs=1e-3)
