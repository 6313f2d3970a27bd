"""Compact encoding of one file's hit set: {line or arc: (hits, first key)} as JSON text.

The store keeps one encoded set per (release, file), (release, endpoint, file) and
(release, hour, endpoint, file) rather than one row per line: a batch then rewrites a few
hundred small rows instead of inserting hundreds of thousands.
"""

from __future__ import annotations

import json
from typing import Any

HitSet = dict[Any, tuple[int, str]]  # line or (from, to) -> (hits, first key)

EMPTY = "[[],[],[],[]]"

# One compact encoder for every call (json.dumps builds a new one per call with separators).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode(hits: HitSet, arcs: bool) -> str:
    """JSON ``[items, hit counts, first-key indexes, first keys]``."""
    items = list(hits)
    pairs = list(hits.values())
    keys = list({k for _, k in pairs})
    index = {k: i for i, k in enumerate(keys)}
    counts = [n for n, _ in pairs]
    firsts = [index[k] for _, k in pairs]
    flat: list[Any] = items
    return _ENCODER.encode([flat, counts, firsts, keys])


def decode(text: str, arcs: bool) -> HitSet:
    """The hit set ``encode`` wrote."""
    items, counts, firsts, keys = json.loads(text)
    if arcs:
        items = [(a, b) for a, b in items]
    return {item: (n, keys[f]) for item, n, f in zip(items, counts, firsts)}


def items(text: str, arcs: bool) -> set[Any]:
    """Only the covered lines or arcs of an encoded set."""
    flat = json.loads(text)[0]
    return {(a, b) for a, b in flat} if arcs else set(flat)


def merge_into(target: HitSet, more: HitSet) -> HitSet:
    """Add ``more`` to ``target`` (hits add up, the smaller first key wins); return target."""
    if not target:
        target.update(more)
        return target
    for item, (n, k) in more.items():
        have = target.get(item)
        if have is None:
            target[item] = (n, k)
        else:
            target[item] = (have[0] + n, have[1] if have[1] <= k else k)
    return target
