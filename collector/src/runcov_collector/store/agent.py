"""The agents' own metrics of a release (docs/wire-format.md, "Metrics"), as the API shows them.

The store keeps one value per run of each series (``metric_values``: process, metric name,
attributes, start time of the run; ``ingest._write_metrics``: a counter's largest, a gauge's
latest) and, from before
runs were kept, values not yet given a run (``metrics_legacy``). A counter's total for a release
is the sum of every row: processes add up, and so do the runs of one process.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from .. import limits
from ..model import Selection
from .dialect import Conn
from .select import iso, resolve

SEEN = "runcov.requests.seen"
SAMPLED = "runcov.requests.sampled"
DROPPED = "runcov.requests.dropped"
LINES_NEW = "runcov.lines.new"
ARCS_NEW = "runcov.arcs.new"
OVERHEAD = "runcov.overhead"
EXPIRED = "runcov.scopes.expired"
SAMPLE_RATE = "runcov.sample_rate"

ENDPOINT = "runcov.endpoint"
REASON = "runcov.reason"
MODE = "runcov.mode"

DROP_REASONS = (
    "rate_cap",
    "queue_full",
    "tracer_busy",
    "export_failed",
    "internal_error",
    "route_mismatch",
    "census_unclaimed",
    "preparing",
)
"""The agent's values of ``runcov.reason``: always listed, 0 when none was counted."""

MODES = ("exact", "census")

# Counters summed per release and per endpoint (metric name -> response field).
COUNTERS = {
    SEEN: "requests_seen",
    SAMPLED: "requests_sampled",
    DROPPED: "requests_dropped",
    LINES_NEW: "lines_new",
    ARCS_NEW: "arcs_new",
    EXPIRED: "requests_expired",
}

LIVE_NS = 15 * 60 * 10**9
"""A process's sample rate counts as current when it is at most this much older than the
latest one reported for the endpoint (agents report it every ``metrics_interval``, 60 s by
default; a process that stopped keeps its last value for good)."""


# Each value counted as at most limits.MAX_METRIC_VALUE in magnitude: decode refuses larger
# ones, but rows stored before it did may hold any double, and one sum overflowing to infinity
# (on PostgreSQL: an error) would fail every query that reads the release's agent counters.
_BOUND = limits.MAX_METRIC_VALUE
_BOUNDED = f"{{least}}({{greatest}}(value, {-_BOUND}), {_BOUND})"


def _rows(conn: Conn, release_id: int) -> list[tuple[str, str, float]]:
    """(name, attributes JSON, value summed over processes and runs) of the release's sums."""
    rows = conn.query(
        f"SELECT name, attributes, SUM({_BOUNDED}) FROM metric_values "
        "WHERE release_id = ? AND kind <> 'gauge' GROUP BY name, attributes",
        (release_id,),
    )
    rows += conn.query(
        f"SELECT name, attributes, SUM({_BOUNDED}) FROM metrics_legacy "
        "WHERE release_id = ? GROUP BY name, attributes",
        (release_id,),
    )
    return [(str(name), str(attrs), float(value)) for name, attrs, value in rows]


def _attributes(text: str) -> dict[str, str]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _count(value: float) -> int:
    return round(value)


def _seconds(value: float) -> float:
    return round(value, 6)


def _empty_counts() -> dict[str, Any]:
    return {
        **dict.fromkeys(COUNTERS.values(), 0),
        "sampled_by_mode": dict.fromkeys(MODES, 0),
        "dropped_by_reason": dict.fromkeys(DROP_REASONS, 0),
    }


class Totals:
    """A release's agent counters: in total, per endpoint, and the agent's overhead."""

    def __init__(self, rows: list[tuple[str, str, float]]) -> None:
        raw_release: dict[str, Any] = defaultdict(float)
        raw_endpoints: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(float))
        self.overhead = 0.0
        for name, attrs_text, value in rows:
            if name == OVERHEAD:
                self.overhead += value
                continue
            field = COUNTERS.get(name)
            if field is None:
                continue
            attrs = _attributes(attrs_text)
            endpoint = str(attrs.get(ENDPOINT, ""))
            keys: list[Any] = [field]
            if name == SAMPLED:
                keys.append(("sampled_by_mode", str(attrs.get(MODE, ""))))
            elif name == DROPPED:
                keys.append(("dropped_by_reason", str(attrs.get(REASON, ""))))
            for key in keys:
                raw_release[key] += value
                raw_endpoints[endpoint][key] += value
        self.release = self._shape(raw_release)
        # Drops without an endpoint (census_unclaimed: hits outside any request) count only
        # for the release.
        self.endpoints = {e: self._shape(v) for e, v in raw_endpoints.items() if e}

    @staticmethod
    def _shape(raw: dict[Any, float]) -> dict[str, Any]:
        out = _empty_counts()
        for key, value in raw.items():
            if isinstance(key, tuple):
                group, label = key
                out[group][label] = out[group].get(label, 0) + _count(value)
            else:
                out[key] = _count(value)
        return out

    def release_fields(self) -> dict[str, Any]:
        """The fields ``releases`` lists for each release."""
        return {
            "requests_seen": self.release["requests_seen"],
            "requests_sampled": self.release["requests_sampled"],
            "requests_dropped": self.release["requests_dropped"],
            "requests_dropped_by_reason": dict(self.release["dropped_by_reason"]),
            "overhead_seconds": _seconds(self.overhead),
        }


def totals(conn: Conn, release_id: int) -> Totals:
    """The agent counters of one release."""
    return Totals(_rows(conn, release_id))


def _sample_rates(conn: Conn, release_id: int) -> dict[str, dict[str, Any]]:
    """Per endpoint: the latest rate reported, when, and the range over current processes."""
    latest: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for attrs_text, value, time_ns in conn.query(
        "SELECT attributes, value, time FROM metric_values WHERE release_id = ? AND name = ?",
        (release_id, SAMPLE_RATE),
    ):
        endpoint = str(_attributes(str(attrs_text)).get(ENDPOINT, ""))
        latest[endpoint].append((int(time_ns), float(value)))
    out: dict[str, dict[str, Any]] = {}
    for endpoint, points in latest.items():
        newest_time, newest_value = max(points)
        current = [v for t, v in points if t >= newest_time - LIVE_NS]
        out[endpoint] = {
            "rate": newest_value,
            "time": iso(newest_time),
            "min": min(current),
            "max": max(current),
            "processes": len(current),
        }
    return out


def agent(conn: Conn, sel: Selection) -> dict[str, Any]:
    """``GET /api/v1/agent``: what the release's agents counted, dropped and cost."""
    if sel.since_unix is not None or sel.until_unix is not None:
        raise ValueError(
            "since/until do not apply to agent metrics: they are the agents' running totals"
        )
    scope = resolve(conn, sel)
    release_id = scope.release_id
    counted = totals(conn, release_id)
    rates = _sample_rates(conn, release_id)
    ((processes, last),) = conn.query(
        "SELECT COUNT(DISTINCT instance), MAX(time) FROM (SELECT instance, time FROM "
        "metric_values WHERE release_id = ? UNION ALL SELECT instance, time FROM metrics_legacy "
        "WHERE release_id = ?) AS reported",
        (release_id, release_id),
    )
    names = sorted((set(counted.endpoints) | set(rates)) - {""})
    if sel.endpoint is not None:
        names = [n for n in names if n == sel.endpoint]
    endpoints = [
        {
            "endpoint": name,
            **counted.endpoints.get(name, _empty_counts()),
            "sample_rate": rates.get(name),
        }
        for name in names
    ]
    whole = counted.release
    overhead = counted.overhead
    return {
        "release": scope.release.as_dict(),
        "processes": int(processes or 0),
        "last_report": None if last is None else iso(int(last)),
        **whole,
        "overhead_seconds": _seconds(overhead),
        "overhead_per_sampled_request_seconds": (
            round(overhead / whole["requests_sampled"], 9) if whole["requests_sampled"] else None
        ),
        "overhead_per_seen_request_seconds": (
            round(overhead / whole["requests_seen"], 9) if whole["requests_seen"] else None
        ),
        "endpoints": endpoints,
    }
