"""``--since``/``--until``: what the collector's one-hour resolution makes of them.

The collector keeps coverage in hourly buckets (docs/query-api.md): a window covers every hour
that overlaps it, so ``--since 1s`` means the whole current hour, and ``--until`` ends at the
end of its hour. :class:`Window` computes those real bounds, so that the reports name them
(``since 2026-11-25 10:00 UTC (the hour of 1s ago)``) rather than the value as given.

A relative value (``90m``) is resolved here, once, into the ISO-8601 instant sent to the
collector: the bounds named and the bounds queried then come from the same moment.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

# The collector's own syntax (runcov_collector.api.parse_time): anything else is sent as given
# and the collector's answer (400, naming the value) is the error.
_RELATIVE = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_HOUR = 3600


def parse_time(value: str, now: float) -> Optional[float]:
    """Unix seconds of an ISO-8601 (naive means UTC) or relative value; None if neither."""
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def is_relative(value: str) -> bool:
    """Whether ``value`` is a relative time (``90m``, ``7d``)."""
    return _RELATIVE.fullmatch(value.strip()) is not None


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _hour_text(seconds: float) -> str:
    """``2026-11-25 10:00 UTC``."""
    return _utc(seconds).strftime("%Y-%m-%d %H:%M UTC")


def _iso(seconds: float) -> str:
    """``2026-11-25T10:00:00Z``."""
    return _utc(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Window:
    """A ``--since``/``--until`` pair as given, and the hour-aligned bounds it really covers."""

    since: Optional[str] = None
    until: Optional[str] = None
    now: float = field(default_factory=time.time)

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None

    def _unix(self, value: Optional[str]) -> Optional[float]:
        return None if value is None else parse_time(value, self.now)

    @property
    def start(self) -> Optional[float]:
        """The first hour the window covers (unix seconds), None when open or unparseable."""
        since = self._unix(self.since)
        if since is None or not math.isfinite(since):
            return None
        return float(math.floor(since / _HOUR) * _HOUR)

    @property
    def end(self) -> Optional[float]:
        """The end of the last hour the window covers (unix seconds), None when open."""
        until = self._unix(self.until)
        if until is None or not math.isfinite(until):
            return None
        return float(math.ceil(until / _HOUR) * _HOUR)

    def query(self, value: Optional[str]) -> Optional[str]:
        """``value`` as sent to the collector: a relative one as the instant it means now."""
        if value is None or not is_relative(value):
            return value
        seconds = parse_time(value, self.now)
        if seconds is None or seconds < 0:
            return value  # the collector refuses it, naming it as given
        return _utc(seconds).isoformat().replace("+00:00", "Z")

    def label(self) -> str:
        """``since 2030-01-01``, ``since 2026-11-25 10:00 UTC (the hour of 1s ago)``, ``from
        ... to ...``; "" without a window.

        A bound that is already on the hour is named as given; any other, by the hour the
        store rounds it to, with the value given in brackets.
        """
        since = self._bound(self.since, self.start, "the hour of")
        until = self._bound(self.until, self.end, "the end of the hour of")
        if since and until:
            return f"from {since} to {until}"
        if since:
            return f"since {since}"
        return f"until {until}" if until else ""

    def _bound(self, value: Optional[str], aligned: Optional[float], what: str) -> str:
        if value is None:
            return ""
        given = f"{value.strip()} ago" if is_relative(value) else value.strip()
        if aligned is None:
            return given
        if not is_relative(value) and aligned == self._unix(value):
            return given
        return f"{_hour_text(aligned)} ({what} {given})"

    def as_dict(self) -> dict[str, Any]:
        """JSON form: the values as given, and the hour-aligned bounds (null when open)."""
        start, end = self.start, self.end
        return {
            "since": self.since, "until": self.until,
            "start": None if start is None else _iso(start),
            "end": None if end is None else _iso(end),
        }
