"""Fold a batch of coverage parts into per-hour, per-endpoint and per-release hit rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from ..model import CoveragePart, FileHits, Release

NS_PER_HOUR = 3_600_000_000_000


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
    """Everything a batch executed in one (release, endpoint, hour, path), in first-key order.

    ``keys[i]`` is the first key of the part that executed ``items[i]``.
    """

    lines: list[int] = field(default_factory=list)
    line_keys: list[str] = field(default_factory=list)
    arcs: list[Arc] = field(default_factory=list)
    arc_keys: list[str] = field(default_factory=list)


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


def _fold(items: list[Any], keys: list[str]) -> dict[Any, tuple[int, str]]:
    """Hit count and earliest first key per item (``keys`` ascending along ``items``)."""
    hits = Counter(items)
    # Built from the end, so the earliest key of each item is written last and kept.
    first = dict(zip(reversed(items), reversed(keys)))
    return {item: (n, first[item]) for item, n in hits.items()}


def _unique_paths(files: list[FileHits]) -> list[FileHits]:
    """One FileHits per path: a part may carry a file in several pieces."""
    if len(files) < 2 or len({f.path for f in files}) == len(files):
        return files
    merged: dict[str, FileHits] = {}
    for fh in files:
        have = merged.get(fh.path)
        if have is None:
            merged[fh.path] = FileHits(fh.path, fh.sha, list(fh.lines), list(fh.arcs))
        else:
            have.lines = sorted(set(have.lines) | set(fh.lines))
            have.arcs = sorted({(a, b) for a, b in [*have.arcs, *fh.arcs]})
    return list(merged.values())


Rows = dict[Any, tuple[int, str]]


def _roll_up(source: dict[Any, Rows], key_of: Callable[[Any], Any]) -> dict[Any, Rows]:
    """Merge row sets whose keys map to the same coarser key (hits add up, first is the min)."""
    out: dict[Any, Rows] = {}
    for key, items in source.items():
        coarse = key_of(key)
        target = out.get(coarse)
        if target is None:
            out[coarse] = dict(items)
            continue
        get = target.get
        for item, pair in items.items():
            have = get(item)
            if have is None:
                target[item] = pair
            else:
                target[item] = (have[0] + pair[0], have[1] if have[1] <= pair[1] else pair[1])
    return out


def merge_parts(parts: Iterable[CoveragePart]) -> Merged:
    """Fold coverage parts (already deduplicated by part key) into hit rows.

    Hits count parts: a line's hits is the number of parts that contained it (the lines and
    arcs of one FileHits are unique, as the decoder produces them). Census parts add lines like
    exact ones and carry no arcs.
    """
    groups: dict[HourKey, _Group] = {}
    traces: set[tuple[Release, int, str, str, str]] = set()
    ordered = sorted(parts, key=lambda p: (first_key(p.time_unix_nano, p.trace_id), p.span_id))
    for part in ordered:
        key = first_key(part.time_unix_nano, part.trace_id)
        hour = hour_of(part.time_unix_nano)
        release, endpoint = part.release, part.endpoint
        traces.add((release, hour, endpoint, "", part.trace_id))
        census = part.mode == "census"
        for fh in _unique_paths(part.files):
            traces.add((release, hour, endpoint, fh.path, part.trace_id))
            gkey = (release, endpoint, hour, fh.path)
            group = groups.get(gkey)
            if group is None:
                group = groups[gkey] = _Group()
            group.lines.extend(fh.lines)
            group.line_keys.extend(repeat(key, len(fh.lines)))
            if not census and fh.arcs:
                group.arcs.extend(fh.arcs)
                group.arc_keys.extend(repeat(key, len(fh.arcs)))
    hour_lines: dict[HourKey, dict[int, tuple[int, str]]] = {}
    hour_arcs: dict[HourKey, dict[Arc, tuple[int, str]]] = {}
    for gkey, group in groups.items():
        hour_lines[gkey] = _fold(group.lines, group.line_keys)
        arcs = group.arcs
        if arcs and not isinstance(arcs[0], tuple):
            arcs = [(a, b) for a, b in arcs]
        hour_arcs[gkey] = _fold(arcs, group.arc_keys)
    ep_lines = _roll_up(hour_lines, lambda k: (k[0], k[1], k[3]))
    ep_arcs = _roll_up(hour_arcs, lambda k: (k[0], k[1], k[3]))
    rel_lines = _roll_up(ep_lines, lambda k: (k[0], k[2]))
    rel_arcs = _roll_up(ep_arcs, lambda k: (k[0], k[2]))
    return Merged(hour_lines, hour_arcs, ep_lines, ep_arcs, rel_lines, rel_arcs, traces)
