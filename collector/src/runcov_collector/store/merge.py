"""Fold a batch of coverage parts into per-hour, per-endpoint and per-release hit rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..model import CoveragePart, Release

NS_PER_HOUR = 3_600_000_000_000
NS_PER_SECOND = 1_000_000_000


def first_key(time_unix_nano: int, trace_id: str) -> str:
    """The sortable "who hit it first" key: earliest span time, then smallest trace id."""
    return f"{max(0, time_unix_nano):020d}{trace_id}"


def trace_of(key: str) -> str:
    """The trace id inside a ``first_key``."""
    return key[20:]


def time_of(key: str) -> int:
    """The span time (unix ns) inside a ``first_key`` or ``sha_key``."""
    return int(key[:20])


def hour_of(time_unix_nano: int) -> int:
    """The unix hour bucket a span time falls into."""
    return max(0, time_unix_nano) // NS_PER_HOUR


Arc = tuple[int, int]
HourKey = tuple[Release, str, int, str]  # release, endpoint, hour, path
EndpointKey = tuple[Release, str, str]  # release, endpoint, path
ReleaseKey = tuple[Release, str]  # release, path


@dataclass
class _Group:
    """Hits of one (release, endpoint, hour, path) within a batch."""

    line_hits: Counter[int] = field(default_factory=Counter)
    arc_hits: Counter[Arc] = field(default_factory=Counter)
    seen: list[tuple[str, set[int], set[Arc]]] = field(default_factory=list)


@dataclass
class Merged:
    """A batch's coverage folded at the three granularities the store keeps.

    Each mapping goes from a key to ``{line or arc: (hits, first_key)}``.
    """

    hour_lines: dict[HourKey, dict[int, tuple[int, str]]]
    hour_arcs: dict[HourKey, dict[Arc, tuple[int, str]]]
    ep_lines: dict[EndpointKey, dict[int, tuple[int, str]]]
    ep_arcs: dict[EndpointKey, dict[Arc, tuple[int, str]]]
    rel_lines: dict[ReleaseKey, dict[int, tuple[int, str]]]
    rel_arcs: dict[ReleaseKey, dict[Arc, tuple[int, str]]]
    # (release, hour, endpoint, path or "" for the request itself, trace id)
    traces: set[tuple[Release, int, str, str, str]]


def _as_arcs(arcs: Iterable[object]) -> set[Arc]:
    try:
        return set(arcs)  # type: ignore[arg-type]
    except TypeError:  # arcs given as lists
        return {(int(a), int(b)) for a, b in arcs}  # type: ignore[misc]


def _finish(group: _Group) -> tuple[dict[int, tuple[int, str]], dict[Arc, tuple[int, str]]]:
    # Parts were visited in first_key order; applying them newest first leaves each line with
    # the key of the earliest part that contained it.
    line_first: dict[int, str] = {}
    arc_first: dict[Arc, str] = {}
    for key, lines, arcs in reversed(group.seen):
        line_first.update(dict.fromkeys(lines, key))
        arc_first.update(dict.fromkeys(arcs, key))
    lines = {ln: (n, line_first[ln]) for ln, n in group.line_hits.items()}
    arcs_out = {arc: (n, arc_first[arc]) for arc, n in group.arc_hits.items()}
    return lines, arcs_out


Rows = dict[Any, tuple[int, str]]


def _roll_up(source: dict[Any, Rows], key_of: Callable[[Any], Any]) -> dict[Any, Rows]:
    """Merge row sets whose keys map to the same coarser key (hits add up, first is the min)."""
    out: dict[Any, Rows] = {}
    for key, items in source.items():
        target = out.setdefault(key_of(key), {})
        if not target:
            target.update(items)
            continue
        for item, (hits, first) in items.items():
            have = target.get(item)
            if have is None:
                target[item] = (hits, first)
            else:
                target[item] = (have[0] + hits, min(have[1], first))
    return out


def merge_parts(parts: Iterable[CoveragePart]) -> Merged:
    """Fold coverage parts (already deduplicated by part key) into hit rows.

    Hits count parts: a line's hits is the number of parts that contained it. Census parts add
    lines like exact ones (they carry no arcs).
    """
    groups: dict[HourKey, _Group] = {}
    traces: set[tuple[Release, int, str, str, str]] = set()
    ordered = sorted(parts, key=lambda p: (first_key(p.time_unix_nano, p.trace_id), p.span_id))
    for part in ordered:
        key = first_key(part.time_unix_nano, part.trace_id)
        hour = hour_of(part.time_unix_nano)
        traces.add((part.release, hour, part.endpoint, "", part.trace_id))
        per_path: dict[str, tuple[set[int], set[Arc]]] = {}
        for fh in part.files:
            lines = set(fh.lines)
            arcs = _as_arcs(fh.arcs) if part.mode != "census" else set()
            have = per_path.get(fh.path)
            if have is None:
                per_path[fh.path] = (lines, arcs)
            else:
                have[0].update(lines)
                have[1].update(arcs)
        for path, (lines, arcs) in per_path.items():
            traces.add((part.release, hour, part.endpoint, path, part.trace_id))
            gkey = (part.release, part.endpoint, hour, path)
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = _Group()
            group.line_hits.update(lines)
            group.arc_hits.update(arcs)
            group.seen.append((key, lines, arcs))
    hour_lines: dict[HourKey, dict[int, tuple[int, str]]] = {}
    hour_arcs: dict[HourKey, dict[Arc, tuple[int, str]]] = {}
    for gkey, group in groups.items():
        hour_lines[gkey], hour_arcs[gkey] = _finish(group)
    ep_lines = _roll_up(hour_lines, lambda k: (k[0], k[1], k[3]))
    ep_arcs = _roll_up(hour_arcs, lambda k: (k[0], k[1], k[3]))
    rel_lines = _roll_up(ep_lines, lambda k: (k[0], k[2]))
    rel_arcs = _roll_up(ep_arcs, lambda k: (k[0], k[2]))
    return Merged(hour_lines, hour_arcs, ep_lines, ep_arcs, rel_lines, rel_arcs, traces)
