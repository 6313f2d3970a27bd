"""Query-string parsing for dashboard pages: release selections, times, paging."""

from __future__ import annotations

from typing import Any, Mapping

from runcov_collector import api
from runcov_collector.model import ROLES, Selection

MAX_TEXT = 1024


class BadParameter(ValueError):
    """A query parameter the page cannot use (rendered as a 400 page)."""


def text(params: Mapping[str, str], name: str) -> str | None:
    """A bounded text parameter, None when absent or empty."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT or "\x00" in value:
        raise BadParameter(f"{name} is too long or contains NUL")
    return value


def parse_time(value: str, name: str, now: float | None = None) -> float:
    """ISO-8601 (``2026-11-25T10:00:00Z``) or relative (``90s``, ``6h``, ``2w`` before now).

    The query API's parser (``api.parse_time``), so a page accepts exactly the times the API
    does and links between the two keep working.
    """
    try:
        return api.parse_time(value, name, now)
    except api.BadParameter as exc:
        raise BadParameter(str(exc)) from exc


def selection(params: Mapping[str, str], prefix: str = "") -> Selection:
    """The release selection of docs/query-api.md; ``prefix`` picks ``a_``/``b_`` variants."""
    service = text(params, "service")
    if not service:
        raise BadParameter("service is required")
    role = text(params, prefix + "role")
    if role is not None and role not in ROLES:
        raise BadParameter(f"role must be one of {', '.join(ROLES)}")
    since = text(params, "since")
    until = text(params, "until")
    return Selection(
        service=service,
        version=params.get(prefix + "version") if prefix + "version" in params else None,
        environment=params.get("environment") if "environment" in params else None,
        role=role,
        endpoint=text(params, "endpoint"),
        since_unix=parse_time(since, "since") if since else None,
        until_unix=parse_time(until, "until") if until else None,
    )


def release_query(release: Mapping[str, Any], **extra: Any) -> dict[str, str]:
    """Query parameters that select exactly ``release`` (plus ``extra`` when not None)."""
    out = {
        "service": str(release["service"]),
        "version": str(release.get("version") or ""),
        "environment": str(release.get("environment") or ""),
        "role": str(release.get("role") or "baseline"),
    }
    for key, value in extra.items():
        if value is not None and value != "":
            out[key] = str(value)
    return out


def int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter clamped to ``[low, high]``."""
    value = params.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise BadParameter(f"{name} must be an integer") from exc
    return max(low, min(high, number))
