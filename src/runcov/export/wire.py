"""The wire format (version 1): encode ``runcov.coverage``/``runcov.static`` payloads, decode them.

Payloads are compact ASCII JSON (non-ASCII is ``\\u``-escaped, so characters and bytes agree).
A request's files are packed into as few payloads as fit in :data:`MAX_PAYLOAD_BYTES`; a file
too large for one payload has its lines, arcs and functions split across several. The union of
the parts is the original. See ``docs/wire-format.md``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "MAX_LINE",
    "MAX_PAYLOAD_BYTES",
    "WIRE_VERSION",
    "clean_arcs",
    "clean_lines",
    "decode",
    "encode_coverage",
    "encode_static",
]

WIRE_VERSION = 1
#: Largest payload (bytes of ``runcov.payload``) in one span.
MAX_PAYLOAD_BYTES = 256 * 1024
#: Line numbers are bounded to ``1 <= |n| <= MAX_LINE``.
MAX_LINE = 10_000_000

_PREFIX = '{"v":' + str(WIRE_VERSION) + ',"files":['
_SUFFIX = "]}"
_LIST_KEYS = ("lines", "arcs", "functions")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def clean_lines(lines: Iterable[int]) -> list[int]:
    """Ascending unique line numbers within the wire bounds."""
    return sorted({n for n in lines if type(n) is int and 1 <= n <= MAX_LINE})


def clean_arcs(arcs: Iterable[Sequence[int]]) -> list[list[int]]:
    """Sorted unique ``[from, to]`` pairs within the wire bounds."""
    bound = MAX_LINE
    pairs = {
        (a, b)
        for a, b in arcs
        if type(a) is int
        and type(b) is int
        and a != 0
        and b != 0
        and -bound <= a <= bound
        and -bound <= b <= bound
    }
    return [[a, b] for a, b in sorted(pairs)]


def _split(entry: dict[str, Any], budget: int) -> Iterator[str]:
    """JSON texts of ``entry`` or of pieces of it, each at most ``budget`` bytes."""
    text = _dumps(entry)
    if len(text) <= budget:
        yield text
        return
    sizes = {k: len(entry.get(k) or ()) for k in _LIST_KEYS}
    if sum(sizes.values()) <= 1:
        return  # a single item larger than a payload cannot be sent (bounded inputs prevent it)
    first = dict(entry)
    second = dict(entry)
    for key in _LIST_KEYS:
        if key in entry:
            items = entry[key]
            half = (len(items) + 1) // 2
            first[key] = items[:half]
            second[key] = items[half:]
    yield from _split(first, budget)
    yield from _split(second, budget)


def _pack(entries: Iterable[dict[str, Any]], limit: int) -> list[str]:
    budget = limit - len(_PREFIX) - len(_SUFFIX)
    payloads: list[str] = []
    current: list[str] = []
    size = 0
    for entry in entries:
        for text in _split(entry, budget):
            extra = len(text) + (1 if current else 0)
            if current and size + extra > budget:
                payloads.append(_PREFIX + ",".join(current) + _SUFFIX)
                current, size = [], 0
                extra = len(text)
            current.append(text)
            size += extra
    if current or not payloads:
        payloads.append(_PREFIX + ",".join(current) + _SUFFIX)
    return payloads


def encode_coverage(
    files: Iterable[Mapping[str, Any]], limit: int = MAX_PAYLOAD_BYTES
) -> list[str]:
    """Payloads of a ``runcov.coverage`` span set; each file is ``{path, sha, lines, arcs}``.

    Lines and arcs are normalized (sorted, unique, bounded). Returns at least one payload.
    """
    entries = (
        {
            "path": f["path"],
            "sha": f["sha"],
            "lines": clean_lines(f.get("lines", ())),
            "arcs": clean_arcs(f.get("arcs", ())),
        }
        for f in files
    )
    return _pack(entries, limit)


def encode_static(
    files: Iterable[Mapping[str, Any]], limit: int = MAX_PAYLOAD_BYTES
) -> list[str]:
    """Payloads of ``runcov.static`` spans; each file is ``{path, sha, lines, arcs, functions}``."""
    entries = (
        {
            "path": f["path"],
            "sha": f["sha"],
            "lines": clean_lines(f.get("lines", ())),
            "arcs": clean_arcs(f.get("arcs", ())),
            "functions": [
                {"name": str(fn["name"]), "start": int(fn["start"]), "end": int(fn["end"])}
                for fn in f.get("functions", ())
            ],
        }
        for f in files
    )
    return _pack(entries, limit)


def decode(payloads: Iterable[str]) -> dict[str, Any]:
    """Merge payloads (the parts of one request, or static parts) into one canonical document.

    Returns ``{"v": 1, "files": [...]}`` with one entry per ``(path, sha)``, lines and arcs
    sorted and unique, functions unique. Raises ``ValueError`` on a malformed payload.
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for payload in payloads:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("v") != WIRE_VERSION:
            raise ValueError(f"not a version {WIRE_VERSION} runcov payload")
        for f in doc.get("files", []):
            key = (f["path"], f["sha"])
            slot = merged.setdefault(key, {"lines": set(), "arcs": set()})
            slot["lines"].update(f.get("lines", ()))
            slot["arcs"].update((a, b) for a, b in f.get("arcs", ()))
            if "functions" in f:
                slot.setdefault("functions", set()).update(
                    (fn["name"], fn["start"], fn["end"]) for fn in f["functions"]
                )
    files = []
    for (path, sha), slot in sorted(merged.items()):
        entry: dict[str, Any] = {
            "path": path,
            "sha": sha,
            "lines": sorted(slot["lines"]),
            "arcs": [list(arc) for arc in sorted(slot["arcs"])],
        }
        if "functions" in slot:
            entry["functions"] = [
                {"name": n, "start": s, "end": e}
                for n, s, e in sorted(slot["functions"], key=lambda t: (t[1], t[0], t[2]))
            ]
        files.append(entry)
    return {"v": WIRE_VERSION, "files": files}
