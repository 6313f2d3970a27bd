"""The query API's answers (docs/query-api.md), read from one consistent snapshot of the store."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..model import Release, Selection
from . import agent, hitsets, summary
from .dialect import Conn
from .errors import NotFound
from .merge import NS_PER_HOUR, time_of, trace_of
from .select import Scope, iso, iso_hour, iso_span, require_endpoints, resolve
from .summary import Static

Hits = dict[Any, tuple[int, str]]  # line or (from, to) -> (hits, first key)


def _percent(covered: int, total: int) -> float | None:
    return None if total <= 0 else round(100.0 * covered / total, 1)


def census_only(lines_executed: int, arcs_executed: int) -> bool:
    """Whether coverage that executed these many lines and arcs has no arc data at all.

    Census parts carry the lines a request hit first and no arcs; exact ones carry the arcs of
    every line they executed (an executed line is the end of an arc). Lines without a single
    arc were therefore measured by census only, and how many arcs and branches ran is unknown:
    the API reports those counts as null rather than 0. Coverage that executed arcs, however
    few of them are possible arcs or branch exits, was measured exactly: its counts stand, 0
    included. Nothing executed at all is no census either.
    """
    return lines_executed > 0 and arcs_executed == 0


# -- reading -------------------------------------------------------------------------------


def _slice(scope: Scope) -> tuple[str, str, list[Any]]:
    """Hit-set table, WHERE clause and parameters that hold a scope's coverage."""
    params: list[Any] = [scope.release_id]
    if scope.hours is not None:
        where = "release_id = ? AND hour >= ? AND hour < ?"
        params += list(scope.hours)
        if scope.endpoint_id is not None:
            where += " AND endpoint_id = ?"
            params.append(scope.endpoint_id)
        return "hits_hour", where, params
    if scope.endpoint_id is not None:
        params.append(scope.endpoint_id)
        return "hits_ep", "release_id = ? AND endpoint_id = ?", params
    return "hits_rel", "release_id = ?", params


def load_hits(conn: Conn, scope: Scope, kind: str, file_id: int | None = None) -> dict[int, Hits]:
    """Executed lines (kind "line") or arcs (kind "arc") per file id within the scope."""
    table, where, params = _slice(scope)
    if file_id is not None:
        where += " AND file_id = ?"
        params.append(file_id)
    arcs = kind == "arc"
    column = "arcs" if arcs else "lines"
    out: dict[int, Hits] = {}
    for fid, text in conn.query(f"SELECT file_id, {column} FROM {table} WHERE {where}", params):
        hits = hitsets.decode(text, arcs)
        have = out.get(int(fid))
        out[int(fid)] = hits if have is None else hitsets.merge_into(have, hits)
    return out


def load_requests(conn: Conn, scope: Scope) -> tuple[int, dict[int, int]]:
    """Distinct request traces in the scope: in total, and per file id."""
    if scope.hours is None:
        rows = conn.query(
            "SELECT file_id, requests FROM request_counts WHERE release_id = ? AND endpoint_id = ?",
            (scope.release_id, scope.endpoint_id or 0),
        )
        counts = {int(f): int(n) for f, n in rows}
        return counts.pop(0, 0), counts
    where = "release_id = ? AND hour >= ? AND hour < ?"
    params: list[Any] = [scope.release_id, *scope.hours]
    if scope.endpoint_id is not None:
        where += " AND endpoint_id = ?"
        params.append(scope.endpoint_id)
    total = conn.query(
        f"SELECT COUNT(DISTINCT trace_id) FROM traces WHERE {where} AND file_id = 0", params
    )
    per_file = conn.query(
        f"SELECT file_id, COUNT(DISTINCT trace_id) FROM traces WHERE {where} AND file_id <> 0 "
        "GROUP BY file_id",
        params,
    )
    return int(total[0][0]), {int(f): int(n) for f, n in per_file}


def load_files(conn: Conn, release_id: int) -> dict[int, tuple[str, str]]:
    """The release's files: file id -> (path, sha most recently seen)."""
    rows = conn.query(
        "SELECT p.id, p.path, r.sha_key FROM release_files r JOIN paths p ON p.id = r.file_id "
        "WHERE r.release_id = ?",
        (release_id,),
    )
    return {int(fid): (path, key[20:]) for fid, path, key in rows}


def load_statics(conn: Conn, release_id: int, file_id: int | None = None) -> dict[int, Static]:
    """Denominators of each release file's current sha (files without any are absent)."""
    sql = (
        "SELECT s.file_id, s.payload FROM static_files s JOIN release_files r "
        "ON r.file_id = s.file_id AND s.sha = substr(r.sha_key, 21) WHERE r.release_id = ?"
    )
    params: list[Any] = [release_id]
    if file_id is not None:
        sql += " AND s.file_id = ?"
        params.append(file_id)
    return {int(fid): summary.parse_static(payload) for fid, payload in conn.query(sql, params)}


# -- shaping -------------------------------------------------------------------------------


def counts_object(
    path: str,
    sha: str,
    counts: tuple[int, int, int, int, int, int],
    requests: int,
    census: bool = False,
) -> dict[str, Any]:
    """A file's summary object from (lines covered, total, arcs covered, total, branches ...).

    With ``census`` (``census_only``) the covered arcs and branches are unknown: null.
    """
    lc, lt, ac, at, bc, bt = counts
    return {
        "path": path,
        "sha": sha,
        "lines_covered": lc,
        "lines_total": lt,
        "arcs_covered": None if census else ac,
        "arcs_total": at,
        "branches_covered": None if census else bc,
        "branches_total": bt,
        "line_percent": _percent(lc, lt),
        "branch_percent": None if census else _percent(bc, bt),
        "requests": requests,
    }


def file_object(
    path: str,
    sha: str,
    lines: Hits,
    arcs: Hits,
    static: Static | None,
    requests: int,
    detail: bool,
) -> dict[str, Any]:
    """One file's coverage as the API prints it.

    With denominators, covered counts only lines and arcs the static analysis knows (as
    coverage.py reports them); without, they count everything executed and totals are 0.
    Executed lines without any executed arc (``census_only``) leave arcs and branches null.
    """
    if static is not None:
        statements = set(static.lines)
        possible = set(static.arcs)
        branch_exits = static.branch_exits()
        lines_covered = len(statements.intersection(lines))
        arcs_covered = len(possible.intersection(arcs))
        lines_total, arcs_total = len(statements), len(possible)
        branches_total = len(branch_exits)
        branches_covered = len(branch_exits.intersection(arcs))
    else:
        lines_covered, arcs_covered = len(lines), len(arcs)
        lines_total = arcs_total = branches_total = branches_covered = 0
    obj = counts_object(
        path,
        sha,
        (lines_covered, lines_total, arcs_covered, arcs_total, branches_covered, branches_total),
        requests,
        census_only(len(lines), len(arcs)),
    )
    if detail:
        obj["lines"] = [[ln, n, trace_of(k)] for ln, (n, k) in sorted(lines.items())]
        obj["arcs"] = [[a, b, n, trace_of(k)] for (a, b), (n, k) in sorted(arcs.items())]
        obj["executable_lines"] = sorted(static.lines) if static else []
        obj["possible_arcs"] = [[a, b] for a, b in sorted(static.arcs)] if static else []
        obj["functions"] = list(static.functions) if static else []
    return obj


def totals(files: list[dict[str, Any]], requests: int, census: bool = False) -> dict[str, Any]:
    """Sum file objects; percentages over the files whose denominators are known.

    ``census``: the files executed lines but not a single arc (``census_only`` over all of
    them), so the covered arcs and branches are null. Otherwise they add up what was measured
    exactly; a file measured by census only (null) adds nothing.
    """
    keys = (
        "lines_covered",
        "lines_total",
        "arcs_covered",
        "arcs_total",
        "branches_covered",
        "branches_total",
    )
    sums: dict[str, int | None] = {k: sum(f[k] or 0 for f in files) for k in keys}
    known = [f for f in files if f["lines_total"] > 0]
    lines_known = sum(f["lines_covered"] for f in known)
    lines_total = sums["lines_total"] or 0
    branch_percent = _percent(sums["branches_covered"] or 0, sums["branches_total"] or 0)
    if census:
        sums["arcs_covered"] = sums["branches_covered"] = branch_percent = None
    return {
        "files": len(files),
        **sums,
        "line_percent": _percent(lines_known, lines_total),
        "branch_percent": branch_percent,
        "requests": requests,
    }


def coverage_files(
    conn: Conn,
    scope: Scope,
    detail: bool,
    path_prefix: str | None = None,
    path: str | None = None,
) -> tuple[list[dict[str, Any]], int, bool]:
    """File objects of a scope (all release files, sorted by path), its request count, and
    whether the scope was measured by census only (``census_only`` over those files)."""
    if not detail and path is None and scope.hours is None:
        return summary_files(conn, scope, path_prefix)
    files = load_files(conn, scope.release_id)
    if path is not None:
        files = {fid: v for fid, v in files.items() if v[0] == path}
    if path_prefix:
        files = {fid: v for fid, v in files.items() if v[0].startswith(path_prefix)}
    only = next(iter(files)) if path is not None and len(files) == 1 else None
    lines = load_hits(conn, scope, "line", only)
    arcs = load_hits(conn, scope, "arc", only)
    statics = load_statics(conn, scope.release_id, only)
    requests, per_file = load_requests(conn, scope)
    out = [
        file_object(
            p,
            sha,
            lines.get(fid, {}),
            arcs.get(fid, {}),
            statics.get(fid),
            per_file.get(fid, 0),
            detail,
        )
        for fid, (p, sha) in sorted(files.items(), key=lambda item: item[1][0])
    ]
    census = census_only(
        sum(len(lines.get(fid, ())) for fid in files), sum(len(arcs.get(fid, ())) for fid in files)
    )
    return out, requests, census


def summary_files(
    conn: Conn, scope: Scope, path_prefix: str | None = None
) -> tuple[list[dict[str, Any]], int, bool]:
    """``coverage_files`` without detail over all time, from the stored per-file counts.

    Files whose counts predate their current denominators (see summary.py) are recounted from
    their hit sets. The executed items (``n_lines``/``n_arcs``) do not depend on denominators:
    they are current in every row.
    """
    if scope.endpoint_id is None:
        join, params = "hits_rel h ON h.release_id = r.release_id", [scope.release_id]
    else:
        join = "hits_ep h ON h.release_id = r.release_id AND h.endpoint_id = ?"
        params = [scope.release_id, scope.endpoint_id]
    rows = conn.query(
        "SELECT r.file_id, p.path, r.sha_key, s.digest, s.lines_total, s.arcs_total, "
        "s.branches_total, h.cov_digest, h.lines_covered, h.arcs_covered, h.branches_covered, "
        "h.n_lines, h.n_arcs FROM release_files r JOIN paths p ON p.id = r.file_id "
        "LEFT JOIN static_files s ON s.file_id = r.file_id AND s.sha = substr(r.sha_key, 21) "
        f"LEFT JOIN {join} AND h.file_id = r.file_id WHERE r.release_id = ?",
        [*params[1:], scope.release_id] if scope.endpoint_id is not None else params,
    )
    if path_prefix:
        rows = [row for row in rows if row[1].startswith(path_prefix)]
    requests, per_file = load_requests(conn, scope)
    stale = [
        int(row[0])
        for row in rows
        if row[7] is not None and row[7] != (row[3] if row[3] is not None else "")
    ]
    recounted = _recount(conn, scope, stale) if stale else {}
    out = []
    executed_lines = executed_arcs = 0
    for fid, path, sha_key, digest, lt, at, bt, cov, lc, ac, bc, n_lines, n_arcs in rows:
        fid = int(fid)
        if cov is None:
            lc = ac = bc = n_lines = n_arcs = 0
        executed_lines += int(n_lines)
        executed_arcs += int(n_arcs)
        if fid in recounted:
            out.append(recounted[fid])
            continue
        if digest is None:
            lt = at = bt = 0
        counts = (int(lc), int(lt), int(ac), int(at), int(bc), int(bt))
        census = census_only(int(n_lines), int(n_arcs))
        out.append(counts_object(path, sha_key[20:], counts, per_file.get(fid, 0), census))
    out.sort(key=lambda f: f["path"])
    return out, requests, census_only(executed_lines, executed_arcs)


def _recount(conn: Conn, scope: Scope, file_ids: list[int]) -> dict[int, dict[str, Any]]:
    """File objects of a few files computed from their hit sets and denominators."""
    files = load_files(conn, scope.release_id)
    _, per_file = load_requests(conn, scope)
    few = len(file_ids) <= 20
    if not few:  # many: one pass over the release beats a query per file
        all_lines, all_arcs = load_hits(conn, scope, "line"), load_hits(conn, scope, "arc")
        statics = load_statics(conn, scope.release_id)
    out = {}
    for fid in file_ids:
        if few:
            lines = load_hits(conn, scope, "line", fid).get(fid, {})
            arcs = load_hits(conn, scope, "arc", fid).get(fid, {})
            statics = load_statics(conn, scope.release_id, fid)
        else:
            lines, arcs = all_lines.get(fid, {}), all_arcs.get(fid, {})
        path, sha = files[fid]
        out[fid] = file_object(
            path, sha, lines, arcs, statics.get(fid), per_file.get(fid, 0), False
        )
    return out


# -- the API -------------------------------------------------------------------------------


def services(conn: Conn) -> dict[str, Any]:
    """Every service with its number of releases and when it was last seen.

    ``last_seen`` is the latest span time of its releases: null when they sent only metrics.
    """
    rows = conn.query(
        "SELECT service, COUNT(*), MAX(last_seen) FROM releases GROUP BY service ORDER BY service"
    )
    return {
        "services": [
            {"service": s, "releases": int(n), "last_seen": iso_span(0, int(t))[1]}
            for s, n, t in rows
        ]
    }


def releases(conn: Conn, service: str) -> dict[str, Any]:
    """A service's releases, newest first, with all-time coverage totals and agent counters.

    Releases that sent only agent metrics are listed last, with null ``first_seen`` and
    ``last_seen`` (those are span times) and their counters.
    """
    rows = conn.query(
        "SELECT id, version, environment, role, first_seen, last_seen FROM releases "
        "WHERE service = ?",
        (service,),
    )
    if not rows:
        raise NotFound(f"unknown service {service!r}")
    rows.sort(key=lambda r: (int(r[5]), r[1], r[2], r[3]), reverse=True)
    out = []
    for rid, version, environment, role, first, last in rows:
        release = Release(service=service, version=version, environment=environment, role=role)
        scope = Scope(int(rid), release, int(first), int(last), None, None, None)
        files, requests, census = coverage_files(conn, scope, detail=False)
        sums = totals(files, requests, census)
        entry: dict[str, Any] = {
            "service": service,
            "version": version,
            "environment": environment,
            "role": role,
            "first_seen": iso_span(int(first), int(last))[0],
            "last_seen": iso_span(int(first), int(last))[1],
            "requests": requests,
            "lines_covered": sums["lines_covered"],
            "lines_total": sums["lines_total"],
            "arcs_covered": sums["arcs_covered"],
            "arcs_total": sums["arcs_total"],
            "line_percent": sums["line_percent"],
            "branch_percent": sums["branch_percent"],
        }
        entry.update(agent.totals(conn, int(rid)).release_fields())
        out.append(entry)
    return {"releases": out}


def coverage(
    conn: Conn, sel: Selection, detail: bool = False, path_prefix: str | None = None
) -> dict[str, Any]:
    """Coverage of a selection: totals and one object per file."""
    scope = resolve(conn, sel)
    require_endpoints(scope)
    files, requests, census = coverage_files(conn, scope, detail, path_prefix=path_prefix)
    return {
        "release": scope.release.as_dict(),
        "totals": totals(files, requests, census),
        "files": files,
    }


def file(conn: Conn, sel: Selection, path: str) -> dict[str, Any]:
    """One file of a selection, with detail."""
    scope = resolve(conn, sel)
    require_endpoints(scope)
    files, _, _ = coverage_files(conn, scope, detail=True, path=path)
    if not files:
        raise NotFound(f"no file {path!r} in this release")
    return {"release": scope.release.as_dict(), **files[0]}


_EP_ROWS = (
    "FROM hits_ep h JOIN release_files r ON r.release_id = h.release_id AND r.file_id = h.file_id "
    "LEFT JOIN static_files s ON s.file_id = r.file_id AND s.sha = substr(r.sha_key, 21) "
    "WHERE h.release_id = ?"
)
_CURRENT = "h.cov_digest = COALESCE(s.digest, '')"


def _endpoint_counts(conn: Conn, scope: Scope) -> dict[int, tuple[int, int, bool]]:
    """Covered (lines, arcs, census) per endpoint id, counted as ``coverage`` counts them.

    Against each file's current denominators where it has them (executed lines that are not
    statements and arcs that are not possible do not count), everything executed where not.
    All time, one pass sums the counts stored beside each endpoint's hit sets that were made
    under the current denominators; only the (rare) other rows are recounted from their hit
    sets, as ``summary_files`` does for files. ``census``: the endpoint executed lines and no
    arc (``census_only``), so its covered arcs are unknown.
    """
    counts: dict[int, tuple[int, int]] = {}
    executed: dict[int, tuple[int, int]] = {}
    sets: list[tuple[Any, ...]] = []
    if scope.hours is None:
        stale = 0
        for endpoint_id, lines, arcs, others, n_lines, n_arcs in conn.query(
            f"SELECT h.endpoint_id, SUM(CASE WHEN {_CURRENT} THEN h.lines_covered ELSE 0 END), "
            f"SUM(CASE WHEN {_CURRENT} THEN h.arcs_covered ELSE 0 END), "
            f"SUM(CASE WHEN {_CURRENT} THEN 0 ELSE 1 END), SUM(h.n_lines), SUM(h.n_arcs) "
            f"{_EP_ROWS} GROUP BY h.endpoint_id",
            (scope.release_id,),
        ):
            counts[int(endpoint_id)] = (int(lines), int(arcs))
            executed[int(endpoint_id)] = (int(n_lines), int(n_arcs))
            stale += int(others)
        if stale:
            sets = conn.query(
                f"SELECT h.endpoint_id, h.file_id, h.lines, h.arcs {_EP_ROWS} AND NOT {_CURRENT}",
                (scope.release_id,),
            )
    else:
        sets = conn.query(
            "SELECT endpoint_id, file_id, lines, arcs FROM hits_hour "
            "WHERE release_id = ? AND hour >= ? AND hour < ?",
            (scope.release_id, *scope.hours),
        )
    hit: dict[tuple[int, int], tuple[set[Any], set[Any]]] = {}
    for endpoint_id, file_id, lines, arcs in sets:
        have = hit.setdefault((int(endpoint_id), int(file_id)), (set(), set()))
        have[0].update(hitsets.items(lines, False))
        have[1].update(hitsets.items(arcs, True))
    if hit:
        statics = summary.current_statics(conn, scope.release_id, (f for _, f in hit))
        cache = summary.Denominators()
        for (endpoint_id, file_id), (lines_set, arcs_set) in hit.items():
            static = statics.get(file_id)
            denominators = None if static is None else cache.sets(*static)
            lc, ac, _ = summary.covered(lines_set, arcs_set, denominators)
            have_lines, have_arcs = counts.get(endpoint_id, (0, 0))
            counts[endpoint_id] = (have_lines + lc, have_arcs + ac)
            if scope.hours is not None:  # all time, the executed items were summed above
                n_lines, n_arcs = executed.get(endpoint_id, (0, 0))
                executed[endpoint_id] = (n_lines + len(lines_set), n_arcs + len(arcs_set))
    return {
        endpoint_id: (lines, arcs, census_only(*executed.get(endpoint_id, (0, 0))))
        for endpoint_id, (lines, arcs) in counts.items()
    }


def endpoints(conn: Conn, sel: Selection) -> dict[str, Any]:
    """A release's endpoints with requests and covered line/arc counts in the selection.

    The covered counts are those ``coverage`` gives for the same selection with the endpoint.
    """
    scope = resolve(conn, sel)
    require_endpoints(scope)
    known = conn.query(
        "SELECT id, endpoint, first_seen, last_seen FROM endpoints WHERE release_id = ?",
        (scope.release_id,),
    )
    counts = _endpoint_counts(conn, scope)
    if scope.hours is None:
        rows = conn.query(
            "SELECT endpoint_id, requests FROM request_counts WHERE release_id = ? "
            "AND endpoint_id <> 0 AND file_id = 0",
            (scope.release_id,),
        )
    else:
        rows = conn.query(
            "SELECT endpoint_id, COUNT(DISTINCT trace_id) FROM traces WHERE release_id = ? "
            "AND hour >= ? AND hour < ? AND file_id = 0 GROUP BY endpoint_id",
            (scope.release_id, *scope.hours),
        )
    requests = {int(e): int(n) for e, n in rows}
    out = []
    for eid, name, first, last in sorted(known, key=lambda r: r[1]):
        if scope.endpoint is not None and name != scope.endpoint:
            continue
        if scope.hours is not None and int(eid) not in requests:
            continue
        lines, arcs, census = counts.get(int(eid), (0, 0, False))
        out.append(
            {
                "endpoint": name,
                "requests": requests.get(int(eid), 0),
                "lines_covered": lines,
                "arcs_covered": None if census else arcs,
                "first_seen": iso(int(first)),
                "last_seen": iso(int(last)),
            }
        )
    return {"release": scope.release.as_dict(), "endpoints": out}


def series(conn: Conn, sel: Selection, path: str | None = None) -> dict[str, Any]:
    """Per-hour requests, covered lines/arcs and newly covered lines/arcs of a selection.

    ``new_*`` counts lines and arcs whose first hit (in the release, or in the endpoint when one
    is selected) fell in that hour. Lines and arcs count as ``coverage`` counts them: against
    each file's current denominators where it has them, so a file's ``new_*`` add up to its
    all-time ``lines_covered``/``arcs_covered``. First hits outlive the retention of hourly
    data: an hour whose buckets expired is still listed for its ``new_*``, with ``requests``
    and ``*_covered`` 0. When the selection (all time) executed lines and no arc
    (``census_only``), ``arcs_covered`` and ``new_arcs`` are null in every hour.
    """
    scope = resolve(conn, sel)
    require_endpoints(scope)
    file_id: int | None = None
    if path is not None:
        match = [fid for fid, (p, _) in load_files(conn, scope.release_id).items() if p == path]
        if not match:
            raise NotFound(f"no file {path!r} in this release")
        file_id = match[0]
    where = "release_id = ?"
    params: list[Any] = [scope.release_id]
    if scope.hours is not None:
        where += " AND hour >= ? AND hour < ?"
        params += list(scope.hours)
    if scope.endpoint_id is not None:
        where += " AND endpoint_id = ?"
        params.append(scope.endpoint_id)
    rows: dict[int, dict[str, int]] = {}

    def bucket(hour: int) -> dict[str, int]:
        return rows.setdefault(
            hour,
            {"requests": 0, "lines_covered": 0, "arcs_covered": 0, "new_lines": 0, "new_arcs": 0},
        )

    trace_where = f"{where} AND file_id = ?"
    for hour, n in conn.query(
        f"SELECT hour, COUNT(DISTINCT trace_id) FROM traces WHERE {trace_where} GROUP BY hour",
        [*params, file_id or 0],
    ):
        bucket(int(hour))["requests"] = int(n)
    file_where = where + (" AND file_id = ?" if file_id is not None else "")
    file_params = [*params, file_id] if file_id is not None else params
    covered: dict[tuple[int, int], tuple[set[Any], set[Any]]] = {}
    for hour, fid, lines, arcs in conn.query(
        f"SELECT hour, file_id, lines, arcs FROM hits_hour WHERE {file_where}", file_params
    ):
        have = covered.setdefault((int(hour), int(fid)), (set(), set()))
        have[0].update(hitsets.items(lines, False))
        have[1].update(hitsets.items(arcs, True))
    # Newly covered: first hits from the all-time tables (they outlive expired hours).
    all_time = Scope(
        scope.release_id,
        scope.release,
        scope.first_seen,
        scope.last_seen,
        scope.endpoint,
        scope.endpoint_id,
        None,
    )
    firsts = {kind: load_hits(conn, all_time, kind, file_id) for kind in ("line", "arc")}
    files = {fid for _, fid in covered} | set(firsts["line"]) | set(firsts["arc"])
    statics = summary.current_statics(conn, scope.release_id, files) if files else {}
    cache = summary.Denominators()

    def denominators(fid: int) -> summary.Sets | None:
        static = statics.get(fid)
        return None if static is None else cache.sets(*static)

    for (hour, fid), (lines_set, arcs_set) in covered.items():
        lc, ac, _ = summary.covered(lines_set, arcs_set, denominators(fid))
        entry = bucket(hour)
        entry["lines_covered"] += lc
        entry["arcs_covered"] += ac
    for kind, by_file in firsts.items():
        new: Counter[int] = Counter()
        for fid, hits in by_file.items():
            sets = denominators(fid)
            known = None if sets is None else sets[0] if kind == "line" else sets[1]
            for item, (_, key) in hits.items():
                if known is None or item in known:
                    new[time_of(key) // NS_PER_HOUR] += 1
        for hour, n in new.items():
            if scope.hours is None or scope.hours[0] <= hour < scope.hours[1]:
                bucket(hour)[f"new_{kind}s"] = n
    unknown: dict[str, Any] = {}
    if census_only(sum(map(len, firsts["line"].values())), sum(map(len, firsts["arc"].values()))):
        unknown = {"arcs_covered": None, "new_arcs": None}
    return {
        "release": scope.release.as_dict(),
        "series": [{"hour": iso_hour(h), **rows[h], **unknown} for h in sorted(rows)],
    }


def _covered_by_path(conn: Conn, scope: Scope) -> tuple[dict[str, set[Any]], dict[str, set[Any]]]:
    files = load_files(conn, scope.release_id)
    lines = load_hits(conn, scope, "line")
    arcs = load_hits(conn, scope, "arc")
    by_path_lines = {files[fid][0]: set(hits) for fid, hits in lines.items() if fid in files}
    by_path_arcs = {files[fid][0]: set(hits) for fid, hits in arcs.items() if fid in files}
    return by_path_lines, by_path_arcs


def _endpoint_names(conn: Conn, scope: Scope) -> set[str]:
    if scope.hours is None:
        rows = conn.query(
            "SELECT endpoint FROM endpoints WHERE release_id = ?", (scope.release_id,)
        )
    else:
        rows = conn.query(
            "SELECT DISTINCT e.endpoint FROM traces t JOIN endpoints e ON e.id = t.endpoint_id "
            "WHERE t.release_id = ? AND t.hour >= ? AND t.hour < ?",
            (scope.release_id, *scope.hours),
        )
    names = {r[0] for r in rows}
    if scope.endpoint is not None:
        names &= {scope.endpoint}
    return names


def _arcs_missing_from(
    arcs: set[Any], lines: set[Any], have: set[Any]
) -> tuple[set[Any], int]:
    """Of ``arcs`` (covered by one side, not by the other), those the other side is known not
    to have covered, and how many it may have covered unseen.

    The other side executed ``lines`` and ``have`` arcs. An exact measurement records an arc
    into every line it executes; a line executed with no arc into it was measured by census
    only, which records no arcs. An arc into such a line, or out of one into a line the side
    executed (or out of the function from one), may have run there: it is not a difference.
    An arc from or into a line the side never executed did not run there, whatever measured
    it.
    """
    exact = {to for _, to in have}
    census = lines - exact
    if not census:
        return arcs, 0
    known = set()
    for arc in arcs:
        start, to = arc
        if (to > 0 and to not in lines) or (start > 0 and start not in lines):
            known.add(arc)
        elif to in census or start in census:
            continue
        else:
            known.add(arc)
    return known, len(arcs) - len(known)


def diff(conn: Conn, a: Selection, b: Selection) -> dict[str, Any]:
    """What b covers that a does not (newly covered) and the reverse, per file and endpoint."""
    scope_a, scope_b = resolve(conn, a), resolve(conn, b)
    require_endpoints(scope_a, scope_b)
    lines_a, arcs_a = _covered_by_path(conn, scope_a)
    lines_b, arcs_b = _covered_by_path(conn, scope_b)
    files = []
    for path in sorted(set(lines_a) | set(lines_b) | set(arcs_a) | set(arcs_b)):
        la, lb = lines_a.get(path, set()), lines_b.get(path, set())
        aa, ab = arcs_a.get(path, set()), arcs_b.get(path, set())
        newly, unknown_in_a = _arcs_missing_from(ab - aa, la, aa)
        gone, unknown_in_b = _arcs_missing_from(aa - ab, lb, ab)
        entry = {
            "path": path,
            "newly_covered_lines": sorted(lb - la),
            "no_longer_covered_lines": sorted(la - lb),
            "newly_covered_arcs": [list(x) for x in sorted(newly)],
            "no_longer_covered_arcs": [list(x) for x in sorted(gone)],
            "arcs_not_compared": unknown_in_a + unknown_in_b,
        }
        if any(entry[k] for k in entry if k != "path"):
            files.append(entry)
    ends_a, ends_b = _endpoint_names(conn, scope_a), _endpoint_names(conn, scope_b)
    endpoints_out = [
        {"endpoint": name, "only_in_a": name not in ends_b, "only_in_b": name not in ends_a}
        for name in sorted(ends_a | ends_b)
    ]
    return {
        "a": scope_a.release.as_dict(),
        "b": scope_b.release.as_dict(),
        "files": files,
        "endpoints": endpoints_out,
    }


KEY_GRACE_HOURS = 24
"""How much longer than hourly data part keys are kept, counted from when the part was received:
a retry or a queue delivering a part again after the retention period still finds its key."""


EXPIRE_BATCH_ROWS = 5000
"""Rows of one table a batch of a retention sweep deletes at most (``SqlStore.expire``). Each
batch is a write transaction of its own under the store timeout, so it must take a fraction of
it however large the database is: a few thousand rows, found through an index on the hour."""

# What a sweep deletes, in order: (table, column compared with the cutoff, primary key). Traces
# before marks: a swept trace's mark may raise an older mark past the key cutoff, which then
# stays (as when the marks were all written before any was deleted).
_EXPIRED = (
    ("hits_hour", "hour", "release_id, hour, endpoint_id, file_id"),
    ("traces", "hour", "release_id, hour, endpoint_id, file_id, trace_id"),
    ("trace_marks", "received", "release_id, trace_id, endpoint_id, file_id"),
    ("seen_parts", "hour", "trace_id, span_id"),
)
EXPIRED_TABLES = tuple(table for table, _, _ in _EXPIRED)
"""The tables a retention sweep deletes from, in the order it sweeps them."""

_MARKS = ("release_id", "trace_id", "endpoint_id", "file_id", "received")


def expire_cutoffs(older_than_unix: float) -> tuple[int, int]:
    """The hours a sweep at ``older_than_unix`` deletes before: hour buckets that ended by
    then, and part keys (and marks) received ``KEY_GRACE_HOURS`` before that."""
    cutoff = min(max(0, int(older_than_unix // 3600)), 2**62)  # hours there are, as BIGINT
    return cutoff, max(0, cutoff - KEY_GRACE_HOURS)


def expire_batch(conn: Conn, table: str, older_than_unix: float, rows: int) -> int:
    """Delete at most ``rows`` rows of ``table`` that a sweep at ``older_than_unix`` removes;
    return how many it deleted (0: none left).

    A sweep deletes hour buckets (hits, traces) that ended by ``older_than_unix``, and the keys
    of parts received ``KEY_GRACE_HOURS`` before that. A swept trace whose parts' keys are
    still kept leaves a mark of the endpoints and files it touched (``trace_marks``), kept as
    long as those keys: a part of it that arrives later (the rest of a late request) then adds
    its coverage without counting the request again. The marks are written in the transaction
    that deletes the trace rows, from the rows it deleted (``RETURNING``): a trace is always in
    one of the two.
    """
    column, key = next((c, k) for t, c, k in _EXPIRED if t == table)
    cutoff, keys_before = expire_cutoffs(older_than_unix)
    before = cutoff if column == "hour" and table != "seen_parts" else keys_before
    if conn.dialect.name == "postgresql":
        # By physical row address: a TID scan of the rows the index found. Matched by primary
        # key, the planner hashes the batch and scans the whole table for each batch instead.
        delete = (
            f"DELETE FROM {table} WHERE ctid = ANY "
            f"(ARRAY(SELECT ctid FROM {table} WHERE {column} < ? LIMIT ?))"
        )
    else:  # SQLite looks each key of the batch up in the primary key
        delete = (
            f"DELETE FROM {table} WHERE ({key}) IN "
            f"(SELECT {key} FROM {table} WHERE {column} < ? LIMIT ?)"
        )
    if table != "traces":
        cur = conn.raw.cursor()
        try:
            cur.execute(conn.dialect.sql(delete), (before, rows))
            return max(0, cur.rowcount)
        finally:
            cur.close()
    swept = conn.query(f"{delete} RETURNING {', '.join(_MARKS)}", (before, rows))
    marks: dict[tuple[int, str, int, int], int] = {}
    for release_id, trace_id, endpoint_id, file_id, received in swept:
        if int(received) >= keys_before:
            mark = (int(release_id), str(trace_id), int(endpoint_id), int(file_id))
            marks[mark] = max(marks.get(mark, 0), int(received))
    conn.upsert_many(
        "trace_marks",
        _MARKS,
        [(*mark, received) for mark, received in sorted(marks.items())],
        "ON CONFLICT (release_id, trace_id, endpoint_id, file_id) "
        "DO UPDATE SET received = {greatest}(trace_marks.received, excluded.received)",
    )
    return len(swept)
