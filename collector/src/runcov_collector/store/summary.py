"""Per-file covered counts kept beside each all-time hit set, so summaries skip decoding them.

``hits_rel`` and ``hits_ep`` rows carry ``n_lines``/``n_arcs`` (items executed) and
``lines_covered``/``arcs_covered``/``branches_covered`` counted against the denominators whose
payload digest is ``cov_digest`` ("" when the file version had none). ``static_files`` rows
carry their payload's digest and totals. A row is current when its ``cov_digest`` equals the
digest of the release's current file version; readers recompute the (rare) others.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import hitsets
from .dialect import Conn


@dataclass
class Static:
    """Denominators of one file version, parsed."""

    lines: list[int] = field(default_factory=list)
    arcs: list[tuple[int, int]] = field(default_factory=list)
    functions: list[dict[str, Any]] = field(default_factory=list)

    def branch_exits(self) -> set[tuple[int, int]]:
        """Possible exits of branch lines: lines with two or more possible exits (coverage.py)."""
        exits: dict[int, list[tuple[int, int]]] = {}
        for a, b in self.arcs:
            if a > 0:
                exits.setdefault(a, []).append((a, b))
        return {arc for arcs in exits.values() if len(arcs) >= 2 for arc in arcs}


def parse_static(payload: str) -> Static:
    """The denominators a ``static_files`` payload holds."""
    data = json.loads(payload)
    return Static(
        lines=[int(x) for x in data["lines"]],
        arcs=[(int(a), int(b)) for a, b in data["arcs"]],
        functions=list(data["functions"]),
    )


def digest(payload: str) -> str:
    """Short fingerprint of a denominators payload (never empty)."""
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def static_totals(static: Static) -> tuple[int, int, int]:
    """(statements, possible arcs, branch exits) of a file version."""
    return len(set(static.lines)), len(set(static.arcs)), len(static.branch_exits())


Sets = tuple[frozenset[int], frozenset[tuple[int, int]], frozenset[tuple[int, int]]]

# Parsed denominators by digest, shared by all batches of the process: a digest names one
# payload for good, so entries never go stale. Bounded; cleared whole when full.
_SHARED: dict[str, Sets] = {}
_SHARED_MAX = 4096
_SHARED_LOCK = threading.Lock()


class Denominators:
    """Parsed denominators with their sets, looked up by payload digest."""

    def sets(self, key: str, payload: str) -> Sets:
        """(statements, possible arcs, branch exits) of the payload with digest ``key``."""
        have = _SHARED.get(key)
        if have is None:
            data = json.loads(payload)
            arcs = frozenset(map(tuple, data["arcs"]))
            exits: dict[int, int] = {}
            for a, _ in arcs:
                if a > 0:
                    exits[a] = exits.get(a, 0) + 1
            branches = frozenset(arc for arc in arcs if arc[0] > 0 and exits[arc[0]] >= 2)
            have = (frozenset(data["lines"]), arcs, branches)
            with _SHARED_LOCK:
                if len(_SHARED) >= _SHARED_MAX:
                    _SHARED.clear()
                _SHARED[key] = have
        return have


def covered(
    lines: Iterable[Any],
    arcs: Iterable[Any],
    denominators: Sets | None,
) -> tuple[int, int, int]:
    """(lines, arcs, branches) covered, as the query API counts them (see queries.file_object)."""
    if denominators is None:
        line_count = len(lines) if isinstance(lines, (set, frozenset, dict)) else len(set(lines))
        arc_count = len(arcs) if isinstance(arcs, (set, frozenset, dict)) else len(set(arcs))
        return line_count, arc_count, 0
    statements, possible, exits = denominators
    arc_set = arcs if isinstance(arcs, (set, frozenset, dict)) else set(arcs)
    return (
        len(statements.intersection(lines)),
        len(possible.intersection(arc_set)),
        len(exits.intersection(arc_set)),
    )


def current_statics(
    conn: Conn, release_id: int, file_ids: Iterable[int]
) -> dict[int, tuple[str, str]]:
    """file id -> (digest, payload) of the release's current version of each file that has one."""
    rows = conn.select_in(
        "SELECT r.file_id, s.digest, s.payload FROM release_files r JOIN static_files s "
        "ON s.file_id = r.file_id AND s.sha = substr(r.sha_key, 21) "
        "WHERE r.release_id = ? AND r.file_id {in}",
        (release_id,),
        sorted(set(file_ids)),
    )
    return {int(fid): (d, payload) for fid, d, payload in rows}


def summary_values(
    lines: Iterable[Any],
    arcs: Iterable[Any],
    static: tuple[str, str] | None,
    cache: Denominators,
) -> tuple[int, int, int, int, int, str]:
    """(n_lines, n_arcs, lines_covered, arcs_covered, branches_covered, cov_digest) of a row."""
    line_set = lines if isinstance(lines, (set, dict)) else set(lines)
    arc_set = arcs if isinstance(arcs, (set, dict)) else set(arcs)
    if static is None:
        sets = None
        key = ""
    else:
        key = static[0]
        sets = cache.sets(key, static[1])
    lc, ac, bc = covered(line_set, arc_set, sets)
    return len(line_set), len(arc_set), lc, ac, bc, key


_STALE = {
    "hits_rel": (
        "SELECT h.file_id, 0, h.lines, h.arcs FROM hits_rel h",
        "UPDATE hits_rel SET n_lines = ?, n_arcs = ?, lines_covered = ?, arcs_covered = ?, "
        "branches_covered = ?, cov_digest = ? WHERE release_id = ? AND file_id = ?",
    ),
    "hits_ep": (
        "SELECT h.file_id, h.endpoint_id, h.lines, h.arcs FROM hits_ep h",
        "UPDATE hits_ep SET n_lines = ?, n_arcs = ?, lines_covered = ?, arcs_covered = ?, "
        "branches_covered = ?, cov_digest = ? WHERE release_id = ? AND endpoint_id = ? "
        "AND file_id = ?",
    ),
}


def refresh_stale(conn: Conn, release_id: int, file_ids: Iterable[int]) -> int:
    """Recount the release's rows of these files whose counts predate their denominators.

    Returns the number of rows rewritten.
    """
    ids = sorted(set(file_ids))
    if not ids:
        return 0
    cache = Denominators()
    rewritten = 0
    statics: dict[int, tuple[str, str]] | None = None
    for table, (select, update) in _STALE.items():
        rows = conn.select_in(
            select + " JOIN release_files r ON r.release_id = h.release_id "
            "AND r.file_id = h.file_id LEFT JOIN static_files s ON s.file_id = r.file_id "
            "AND s.sha = substr(r.sha_key, 21) WHERE h.release_id = ? "
            "AND h.cov_digest <> COALESCE(s.digest, '') AND h.file_id {in}",
            (release_id,),
            ids,
        )
        if not rows:
            continue
        if statics is None:
            statics = current_statics(conn, release_id, ids)
        updates: list[tuple[Any, ...]] = []
        for fid, eid, lines, arcs in rows:
            values = summary_values(
                hitsets.items(lines, False), hitsets.items(arcs, True), statics.get(int(fid)), cache
            )
            if table == "hits_rel":
                updates.append((*values, release_id, int(fid)))
            else:
                updates.append((*values, release_id, int(eid), int(fid)))
        conn.execute_many(update, sorted(updates, key=lambda u: u[6:]))
        rewritten += len(updates)
    return rewritten


def fill_all(conn: Conn) -> None:
    """Compute every static row's digest and totals and every hit row's counts (migration 2)."""
    rows = conn.query("SELECT file_id, sha, payload FROM static_files")
    conn.execute_many(
        "UPDATE static_files SET digest = ?, lines_total = ?, arcs_total = ?, "
        "branches_total = ? WHERE file_id = ? AND sha = ?",
        [
            (digest(p), *static_totals(parse_static(p)), int(f), s)
            for f, s, p in sorted(rows, key=lambda r: (int(r[0]), r[1]))
        ],
    )
    for (release_id,) in conn.query("SELECT id FROM releases ORDER BY id"):
        files = [
            int(f)
            for (f,) in conn.query(
                "SELECT file_id FROM hits_rel WHERE release_id = ? UNION "
                "SELECT file_id FROM hits_ep WHERE release_id = ?",
                (int(release_id), int(release_id)),
            )
        ]
        refresh_stale(conn, int(release_id), files)
