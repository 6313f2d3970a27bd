"""Resolve a query's Selection to one stored release and the slice of its data to read."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

from ..model import ROLES, Release, Selection
from .dialect import Conn
from .errors import NotFound

NO_SPANS = (2**62, -1)
"""``releases.(first_seen, last_seen)`` of a release that has sent agent metrics but no span.

An empty interval (first after last) and the identity of the least/greatest merge, so the first
span of the release sets both ends. Such a release is listed with null times and never becomes
the default of a selection while a release matching it sent spans (``resolve``).
"""


def spanned(first_seen: int, last_seen: int) -> bool:
    """True when a release (or a service) has sent at least one span."""
    return int(first_seen) <= int(last_seen)


def iso_span(first_seen: int, last_seen: int) -> tuple[str | None, str | None]:
    """(first_seen, last_seen) as the API prints them: null both for a release without spans."""
    if not spanned(first_seen, last_seen):
        return None, None
    return iso(int(first_seen)), iso(int(last_seen))


def iso(time_unix_nano: int) -> str:
    """ISO-8601 UTC with a ``Z``, to the second, as the query API prints times."""
    moment = datetime.fromtimestamp(time_unix_nano // 1_000_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_hour(hour: int) -> str:
    """The ISO-8601 start of a unix hour bucket."""
    return iso(hour * 3600 * 1_000_000_000)


@dataclass(frozen=True)
class Scope:
    """A resolved selection: which release, and which endpoint and hours of it."""

    release_id: int
    release: Release
    first_seen: int
    last_seen: int
    endpoint: str | None
    endpoint_id: int | None  # -1 when the endpoint was named but never seen
    hours: tuple[int, int] | None  # [from, to) unix hours, or None for all time

    @property
    def cumulative(self) -> bool:
        """True when the answer comes from the all-time tables (no window, no endpoint)."""
        return self.hours is None and self.endpoint is None


def release_label(release: Release) -> str:
    """``shop 1.0 (prod, baseline)``: a release as messages name it."""
    version = release.version or "(no version)"
    environment = release.environment or "no environment"
    return f"{release.service} {version} ({environment}, {release.role})"


def require_endpoints(*scopes: Scope) -> None:
    """Raise ``NotFound`` (HTTP 404) for an endpoint a selection names that none of the scopes
    naming it ever received coverage of: a typo would otherwise read as 0 % covered.

    Known means seen at any time (``endpoints`` rows outlive retention), so a window without
    the endpoint's requests still answers, with zero coverage. A diff checks both sides at
    once: an endpoint only one release has is what it shows.
    """
    by_name: dict[str, list[Scope]] = {}
    for scope in scopes:
        if scope.endpoint is not None:
            by_name.setdefault(scope.endpoint, []).append(scope)
    for name, named in by_name.items():
        if all(scope.endpoint_id == -1 for scope in named):
            releases = " and ".join(dict.fromkeys(release_label(s.release) for s in named))
            raise NotFound(
                f"no endpoint {name!r} in {releases}: it never sent coverage of it "
                "(GET /api/v1/endpoints lists the endpoints of a release)"
            )


def validate(sel: Selection) -> None:
    """Reject selections no release could match (ValueError, HTTP 400)."""
    if not sel.service:
        raise ValueError("service is required")
    if sel.role is not None and sel.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {sel.role!r}")
    for name, value in (("since", sel.since_unix), ("until", sel.until_unix)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a time after 1970")
    if (
        sel.since_unix is not None
        and sel.until_unix is not None
        and sel.until_unix <= sel.since_unix
    ):
        raise ValueError("until must be later than since")
    if sel.endpoint is not None and not sel.endpoint:
        raise ValueError("endpoint must not be empty")


def hour_window(sel: Selection) -> tuple[int, int] | None:
    """The hour buckets a window covers: every bucket that overlaps [since, until)."""
    if sel.since_unix is None and sel.until_unix is None:
        return None
    start = 0 if sel.since_unix is None else int(sel.since_unix // 3600)
    end = 2**62 if sel.until_unix is None else math.ceil(sel.until_unix / 3600)
    return start, end


def resolve(conn: Conn, sel: Selection) -> Scope:
    """Pick the release a selection names, following docs/query-api.md's defaulting rules.

    Releases known only from agent metrics (no span, see ``NO_SPANS``) are candidates only when
    no matching release sent spans: metrics say a process runs, not what it measured, and an idle
    process exports them on a timer.
    Omitted role: ``baseline`` if the service has one (within the other filters), else any.
    Omitted version and environment: the most recently seen among the candidates.
    """
    validate(sel)
    sql = (
        "SELECT id, service, version, environment, role, first_seen, last_seen "
        "FROM releases WHERE service = ?"
    )
    params: list[object] = [sel.service]
    for column, value in (
        ("version", sel.version),
        ("environment", sel.environment),
        ("role", sel.role),
    ):
        if value is not None:
            sql += f" AND {column} = ?"
            params.append(value)
    rows = conn.query(sql, params)
    if any(spanned(row[5], row[6]) for row in rows):
        rows = [row for row in rows if spanned(row[5], row[6])]
    if sel.role is None and any(row[4] == "baseline" for row in rows):
        rows = [row for row in rows if row[4] == "baseline"]
    if not rows:
        wanted = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("service", sel.service),
                ("version", sel.version),
                ("environment", sel.environment),
                ("role", sel.role),
            )
            if v is not None
        )
        raise NotFound(f"no release matches {wanted}")
    best = max(rows, key=lambda r: (int(r[6]), r[2], r[3], r[4]))
    release = Release(service=best[1], version=best[2], environment=best[3], role=best[4])
    endpoint_id: int | None = None
    if sel.endpoint is not None:
        found = conn.query(
            "SELECT id FROM endpoints WHERE release_id = ? AND endpoint = ?",
            (int(best[0]), sel.endpoint),
        )
        endpoint_id = int(found[0][0]) if found else -1
    return Scope(
        release_id=int(best[0]),
        release=release,
        first_seen=int(best[5]),
        last_seen=int(best[6]),
        endpoint=sel.endpoint,
        endpoint_id=endpoint_id,
        hours=hour_window(sel),
    )
