"""Write one batch into the store in one transaction: idempotent, commutative upserts."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Any

from ..model import Batch, CoveragePart, FileStatic, Release
from . import hitsets, summary
from .dialect import Conn
from .hitsets import HitSet
from .merge import Merged, first_key, hour_of, merge_parts
from .select import NO_SPANS


def _release_spans(batch: Batch) -> dict[Release, tuple[int, int]]:
    """(earliest, latest) span time of each release in the batch.

    Only spans (coverage parts and denominators) are release activity. Agent metrics are not:
    every idle process exports them on a timer, so they would make a release that measured
    nothing the most recently seen one. A release known only from metrics gets ``NO_SPANS``
    (an empty interval, which the first span of the release replaces).
    """
    spans: dict[Release, tuple[int, int]] = {}

    def see(release: Release, t: int) -> None:
        t = max(0, t)
        have = spans.get(release)
        spans[release] = (t, t) if have is None else (min(have[0], t), max(have[1], t))

    for part in batch.coverage:
        see(part.release, part.time_unix_nano)
    for static in batch.static:
        see(static.release, static.time_unix_nano)
    for point in batch.metrics:
        spans.setdefault(point.release, NO_SPANS)
    return spans


def _upsert_releases(conn: Conn, spans: dict[Release, tuple[int, int]]) -> dict[Release, int]:
    # One row lock per release, always taken in the same order: on PostgreSQL this serialises
    # concurrent batches of one release (so request counting sees every earlier commit) and
    # cannot deadlock.
    ids: dict[Release, int] = {}
    for release in sorted(spans, key=lambda r: (r.service, r.version, r.environment, r.role)):
        first, last = spans[release]
        rows = conn.query(
            "INSERT INTO releases (service, version, environment, role, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (service, version, environment, role) DO UPDATE "
            "SET first_seen = {least}(releases.first_seen, excluded.first_seen), "
            "last_seen = {greatest}(releases.last_seen, excluded.last_seen) RETURNING id",
            (release.service, release.version, release.environment, release.role, first, last),
        )
        ids[release] = int(rows[0][0])
    return ids


def _new_parts(conn: Conn, parts: list[CoveragePart], received: int) -> list[CoveragePart]:
    """Record the parts' keys; return the parts not stored before (first of each key).

    A key is filed under the hour it was ``received`` (unix ns), not under its span's hour:
    retention forgets keys by that hour, and a part delivered again must still be known then.
    """
    unique: dict[tuple[str, str], CoveragePart] = {}
    for part in parts:
        unique.setdefault((part.trace_id, part.span_id), part)
    keys = sorted(unique)  # a fixed order, so concurrent inserts cannot deadlock
    hour = hour_of(received)
    rows = [(t, s, hour) for t, s in keys]
    fresh = conn.insert_values(
        "INSERT INTO seen_parts (trace_id, span_id, hour)",
        rows,
        "ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING trace_id, span_id",
    )
    return [unique[(t, s)] for t, s in sorted(fresh)]


def _path_ids(conn: Conn, paths: set[str]) -> dict[str, int]:
    if not paths:
        return {}
    ordered = sorted(paths)
    conn.insert_values(
        "INSERT INTO paths (path)", [(p,) for p in ordered], "ON CONFLICT (path) DO NOTHING"
    )
    rows = conn.select_in("SELECT path, id FROM paths WHERE path {in}", (), ordered)
    return {path: int(pid) for path, pid in rows}


def _endpoint_ids(
    conn: Conn, release_ids: dict[Release, int], parts: list[CoveragePart]
) -> dict[tuple[Release, str], int]:
    spans: dict[tuple[Release, str], tuple[int, int]] = {}
    for part in parts:
        key = (part.release, part.endpoint)
        t = max(0, part.time_unix_nano)
        have = spans.get(key)
        spans[key] = (t, t) if have is None else (min(have[0], t), max(have[1], t))
    ids: dict[tuple[Release, str], int] = {}
    for key in sorted(spans, key=lambda k: (release_ids[k[0]], k[1])):
        first, last = spans[key]
        rows = conn.query(
            "INSERT INTO endpoints (release_id, endpoint, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (release_id, endpoint) DO UPDATE "
            "SET first_seen = {least}(endpoints.first_seen, excluded.first_seen), "
            "last_seen = {greatest}(endpoints.last_seen, excluded.last_seen) RETURNING id",
            (release_ids[key[0]], key[1], first, last),
        )
        ids[key] = int(rows[0][0])
    return ids


def _existing_sets(
    conn: Conn, table: str, cols: tuple[str, ...], keys: set[tuple[int, ...]]
) -> dict[tuple[int, ...], tuple[str, str]]:
    """The stored (lines, arcs) encodings of the given keys (first column release, last file)."""
    by_release: dict[int, list[tuple[int, ...]]] = defaultdict(list)
    for key in keys:
        by_release[key[0]].append(key)
    out: dict[tuple[int, ...], tuple[str, str]] = {}
    width = len(cols)
    for release_id, mine in by_release.items():
        sql = f"SELECT {', '.join(cols)}, lines, arcs FROM {table} WHERE release_id = ?"
        params: tuple[Any, ...] = (release_id,)
        if "hour" in cols:
            hours = [k[1] for k in mine]
            sql += " AND hour >= ? AND hour <= ?"
            params += (min(hours), max(hours))
        for row in conn.select_in(sql + " AND file_id {in}", params, sorted({k[-1] for k in mine})):
            key = tuple(int(v) for v in row[:width])
            if key in keys:
                out[key] = (row[width], row[width + 1])
    return out


_COUNT_COLUMNS = (
    "n_lines",
    "n_arcs",
    "lines_covered",
    "arcs_covered",
    "branches_covered",
    "cov_digest",
)


def _statics_of(conn: Conn, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], tuple[str, str]]:
    """(release id, file id) -> (digest, payload) of each file's current denominators."""
    by_release: dict[int, set[int]] = defaultdict(set)
    for release_id, file_id in pairs:
        by_release[release_id].add(file_id)
    out: dict[tuple[int, int], tuple[str, str]] = {}
    for release_id, files in sorted(by_release.items()):
        for file_id, value in summary.current_statics(conn, release_id, files).items():
            out[(release_id, file_id)] = value
    return out


def _write_hits(
    conn: Conn,
    merged: Merged,
    rid: dict[Release, int],
    eid: dict[tuple[Release, str], int],
    fid: dict[str, int],
) -> None:
    """Merge the batch's hit sets into the stored ones at each granularity.

    Read-modify-write is safe: every writer of a release holds its release row (PostgreSQL)
    or the database's write lock (SQLite) until it commits.
    """

    def hour_key(k: Any) -> tuple[int, ...]:
        return (rid[k[0]], k[2], eid[(k[0], k[1])], fid[k[3]])

    def ep_key(k: Any) -> tuple[int, ...]:
        return (rid[k[0]], eid[(k[0], k[1])], fid[k[2]])

    def rel_key(k: Any) -> tuple[int, ...]:
        return (rid[k[0]], fid[k[1]])

    levels: list[tuple[str, tuple[str, ...], Any, Any, Any]] = [
        ("hits_rel", ("release_id", "file_id"), merged.rel_lines, merged.rel_arcs, rel_key),
        (
            "hits_ep",
            ("release_id", "endpoint_id", "file_id"),
            merged.ep_lines,
            merged.ep_arcs,
            ep_key,
        ),
        (
            "hits_hour",
            ("release_id", "hour", "endpoint_id", "file_id"),
            merged.hour_lines,
            merged.hour_arcs,
            hour_key,
        ),
    ]
    cache = summary.Denominators()
    statics: dict[tuple[int, int], tuple[str, str]] | None = None
    for table, cols, lines_by, arcs_by, key_of in levels:
        new: dict[tuple[int, ...], tuple[HitSet, HitSet]] = {}
        for k, hits in lines_by.items():
            new[key_of(k)] = (hits, {})
        for k, hits in arcs_by.items():
            key = key_of(k)
            new[key] = (new.get(key, ({}, {}))[0], hits)
        stored = _existing_sets(conn, table, cols, set(new))
        counted = table != "hits_hour"
        if counted and statics is None:
            statics = _statics_of(conn, {(k[0], k[-1]) for k in new})
        rows = []
        for key, (lines, arcs) in new.items():
            old = stored.get(key)
            if old is not None:
                lines = hitsets.merge_into(hitsets.decode(old[0], False), lines)
                arcs = hitsets.merge_into(hitsets.decode(old[1], True), arcs)
            row = (*key, hitsets.encode(lines, False), hitsets.encode(arcs, True))
            if counted:
                static = statics.get((key[0], key[-1])) if statics else None
                row += summary.summary_values(lines, arcs, static, cache)
            rows.append(row)
        rows.sort()
        names = (*cols, "lines", "arcs", *(_COUNT_COLUMNS if counted else ()))
        updates = ", ".join(f"{n} = excluded.{n}" for n in names[len(cols) :])
        conn.upsert_many(
            table, names, rows, f"ON CONFLICT ({', '.join(cols)}) DO UPDATE SET {updates}"
        )


def _write_traces(
    conn: Conn,
    merged: Merged,
    rid: dict[Release, int],
    eid: dict[tuple[Release, str], int],
    fid: dict[str, int],
    received_hour: int,
) -> None:
    """Record which traces touched which endpoint/file, and count the ones new at each level.

    ``requests`` counts distinct trace ids; the counters for the whole release (endpoint 0,
    file 0), per endpoint, per file and per endpoint and file grow only for a trace not yet
    recorded at that level. Trace rows live as long as the hour they belong to; once it is
    swept, ``trace_marks`` remembers the trace for as long as its parts' keys are kept (from
    the hour a part of it was last received), so that a part arriving after the sweep (a
    late request's other part) does not count the request again.
    """
    rows = sorted(
        (rid[r], h, eid[(r, e)], fid[p] if p else 0, t, received_hour)
        for r, h, e, p, t in merged.traces
    )
    batch: dict[int, dict[str, set[tuple[int, int]]]] = defaultdict(lambda: defaultdict(set))
    for release_id, _hour, endpoint_id, file_id, trace_id, _ in rows:
        batch[release_id][trace_id].add((endpoint_id, file_id))
    counts: dict[tuple[int, int, int], int] = defaultdict(int)
    for release_id, traces in sorted(batch.items()):
        known: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for table in ("traces", "trace_marks"):
            for trace_id, endpoint_id, file_id in conn.select_in(
                f"SELECT trace_id, endpoint_id, file_id FROM {table} "
                "WHERE release_id = ? AND trace_id {in}",
                (release_id,),
                sorted(traces),
            ):
                known[trace_id].add((int(endpoint_id), int(file_id)))
        if known:
            # The trace is received again: everything it left is kept as long as this part's
            # key.
            for table in ("traces", "trace_marks"):
                conn.select_in(
                    f"UPDATE {table} SET received = ? "
                    "WHERE release_id = ? AND received < ? AND trace_id {in}",
                    (received_hour, release_id, received_hour),
                    sorted(known),
                )
        for trace_id, members in traces.items():
            old = known.get(trace_id, set())
            old_endpoints = {e for e, _ in old}
            old_files = {f for _, f in old if f}
            if not old:
                counts[(release_id, 0, 0)] += 1
            for endpoint_id in {e for e, _ in members} - old_endpoints:
                counts[(release_id, endpoint_id, 0)] += 1
            for file_id in {f for _, f in members if f} - old_files:
                counts[(release_id, 0, file_id)] += 1
            for endpoint_id, file_id in members:
                if file_id and (endpoint_id, file_id) not in old:
                    counts[(release_id, endpoint_id, file_id)] += 1
    conn.upsert_many(
        "traces",
        ("release_id", "hour", "endpoint_id", "file_id", "trace_id", "received"),
        rows,
        "ON CONFLICT DO NOTHING",
    )
    conn.execute_many(
        "INSERT INTO request_counts (release_id, endpoint_id, file_id, requests) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (release_id, endpoint_id, file_id) "
        "DO UPDATE SET requests = request_counts.requests + excluded.requests",
        sorted((r, e, f, n) for (r, e, f), n in counts.items()),
    )


def static_payload(fs: FileStatic) -> str:
    """Canonical JSON of one file version's denominators (equal data, equal text)."""
    functions = sorted(
        ({"name": f.name, "start": int(f.start), "end": int(f.end)} for f in fs.functions),
        key=lambda f: (f["start"], f["end"], f["name"]),
    )
    return json.dumps(
        {
            "lines": sorted({int(x) for x in fs.lines}),
            "arcs": sorted({(int(a), int(b)) for a, b in fs.arcs}),
            "functions": functions,
        },
        separators=(",", ":"),
    )


def _write_files(
    conn: Conn,
    batch: Batch,
    new_parts: list[CoveragePart],
    rid: dict[Release, int],
    fid: dict[str, int],
) -> set[tuple[int, int]]:
    """Record file versions and denominators; return the (release id, file id) pairs whose
    version changed or whose denominators were sent."""
    shas: dict[tuple[int, int], str] = {}

    def see(release: Release, path: str, sha: str, t: int) -> None:
        key = (rid[release], fid[path])
        value = first_key(t, sha)
        if value > shas.get(key, ""):
            shas[key] = value

    for part in new_parts:
        for fh in part.files:
            see(part.release, fh.path, fh.sha, part.time_unix_nano)
    statics: dict[tuple[int, str], str] = {}
    parsed: dict[tuple[int, str], summary.Static] = {}
    for static in batch.static:
        for fs in static.files:
            see(static.release, fs.path, fs.sha, static.time_unix_nano)
            payload = static_payload(fs)
            key = (fid[fs.path], fs.sha)
            # Different payloads for one (path, sha): keep the greatest, whatever the order.
            if payload > statics.get(key, ""):
                statics[key] = payload
                parsed[key] = summary.parse_static(payload)
    # Pairs whose stored counts may now be stale: the file version changed, or its
    # denominators arrived in this batch.
    changed = {
        (rid[static.release], fid[fs.path]) for static in batch.static for fs in static.files
    }
    by_release: dict[int, list[int]] = defaultdict(list)
    for release_id, file_id in shas:
        by_release[release_id].append(file_id)
    for release_id, files in sorted(by_release.items()):
        for file_id, stored in conn.select_in(
            "SELECT file_id, sha_key FROM release_files WHERE release_id = ? AND file_id {in}",
            (release_id,),
            sorted(files),
        ):
            new = shas[(release_id, int(file_id))]
            if new > stored and new[20:] != stored[20:]:
                changed.add((release_id, int(file_id)))
    conn.execute_many(
        "INSERT INTO release_files (release_id, file_id, sha_key) VALUES (?, ?, ?) "
        "ON CONFLICT (release_id, file_id) "
        "DO UPDATE SET sha_key = {greatest}(release_files.sha_key, excluded.sha_key)",
        sorted((r, f, k) for (r, f), k in shas.items()),
    )
    conn.execute_many(
        "INSERT INTO static_files (file_id, sha, payload, digest, lines_total, arcs_total, "
        "branches_total) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (file_id, sha) DO UPDATE SET payload = excluded.payload, "
        "digest = excluded.digest, lines_total = excluded.lines_total, "
        "arcs_total = excluded.arcs_total, branches_total = excluded.branches_total "
        "WHERE excluded.payload > static_files.payload",
        sorted(
            (f, s, p, summary.digest(p), *summary.static_totals(parsed[(f, s)]))
            for (f, s), p in statics.items()
        ),
    )
    return changed


SeriesKey = tuple[int, str, str, str]  # release id, instance, name, attributes (JSON)
RunKey = tuple[int, str, str, str, int]  # a series and the start time of its run
RunValue = tuple[str, int, float]  # kind, time, value


def _merge_value(have: RunValue | None, new: RunValue) -> RunValue:
    """Two values of one run: a counter's total is its largest value, otherwise the latest
    value counts (equal times: the larger). The SQL of ``_write_metrics`` does the same."""
    if have is None:
        return new
    kind, time_ns, value = new
    if kind == "counter":
        return kind, max(have[1], time_ns), max(have[2], value)
    if (time_ns, value) > (have[1], have[2]):
        return new
    return kind, have[1], have[2]


def _settle_legacy(conn: Conn, runs: dict[RunKey, RunValue]) -> None:
    """Give the counter values stored before runs were kept (``metrics_legacy``, no start time)
    the run they belong to, when their series sends a value again.

    A run that started no later than the stored value was recorded is the run that recorded
    it: the stored value joins that run (and is superseded by its larger totals). A run that
    started after it is a restart: the stored value is the total of an earlier run and is kept
    beside it (start time -1). Values of series that never send again stay where they are and
    are counted from there.
    """
    if not conn.query("SELECT 1 FROM metrics_legacy LIMIT 1"):
        return
    starts: dict[SeriesKey, list[int]] = defaultdict(list)
    for (release_id, instance, name, attrs, start), (kind, _, _) in runs.items():
        if kind != "gauge":
            starts[(release_id, instance, name, attrs)].append(start)
    settled: list[tuple[int, str, str, str]] = []
    for release_id, instance in sorted({(k[0], k[1]) for k in starts}):
        for name, attrs, value, time_ns in conn.query(
            "SELECT name, attributes, value, time FROM metrics_legacy "
            "WHERE release_id = ? AND instance = ?",
            (release_id, instance),
        ):
            series = (release_id, instance, name, attrs)
            if series not in starts:
                continue
            earlier = [s for s in starts[series] if s <= int(time_ns)]
            start = max(earlier) if earlier else -1
            key = (*series, start)
            kind = runs[key][0] if key in runs else runs[(*series, min(starts[series]))][0]
            runs[key] = _merge_value(runs.get(key), (kind, int(time_ns), float(value)))
            settled.append(series)
    conn.execute_many(
        "DELETE FROM metrics_legacy "
        "WHERE release_id = ? AND instance = ? AND name = ? AND attributes = ?",
        sorted(settled),
    )


def _write_metrics(conn: Conn, batch: Batch, rid: dict[Release, int]) -> None:
    """Keep one value per run of each series (process, name, attributes): see _merge_value.

    A cumulative sum is one run per start time: the values of two processes, and of two runs
    of one process (counters restarted under the same ``service.instance.id``), are separate
    rows that queries add up; a retried or late export of a run changes nothing, as a counter
    run keeps its largest value. Gauges are one row per series, the latest value.
    """
    runs: dict[RunKey, RunValue] = {}
    for point in batch.metrics:
        attrs = json.dumps(point.attributes, sort_keys=True, separators=(",", ":"))
        start = 0 if point.kind == "gauge" else max(0, point.start_time_unix_nano)
        key = (rid[point.release], point.instance, point.name, attrs, start)
        value = (point.kind, max(0, point.time_unix_nano), float(point.value))
        runs[key] = _merge_value(runs.get(key), value)
    if not runs:
        return
    _settle_legacy(conn, runs)
    conn.execute_many(
        "INSERT INTO metric_values (release_id, instance, name, attributes, start_time, kind, "
        "value, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (release_id, instance, name, attributes, start_time) DO UPDATE SET "
        "value = CASE WHEN excluded.kind = 'counter' "
        "THEN {greatest}(metric_values.value, excluded.value) "
        "WHEN excluded.time > metric_values.time OR (excluded.time = metric_values.time "
        "AND excluded.value > metric_values.value) THEN excluded.value "
        "ELSE metric_values.value END, "
        "time = {greatest}(metric_values.time, excluded.time), kind = excluded.kind",
        sorted((*k, kind, v, t) for k, (kind, t, v) in runs.items()),
    )


def ingest_batch(conn: Conn, batch: Batch) -> dict[str, Any]:
    """Apply ``batch`` inside the caller's write transaction; return what it changed."""
    spans = _release_spans(batch)
    if not spans:
        return {"parts": 0, "duplicates": 0}
    rid = _upsert_releases(conn, spans)
    received = batch.received_unix_nano or time.time_ns()
    new_parts = _new_parts(conn, batch.coverage, received)
    paths = {fh.path for part in new_parts for fh in part.files}
    paths.update(fs.path for static in batch.static for fs in static.files)
    fid = _path_ids(conn, paths)
    eid = _endpoint_ids(conn, rid, new_parts)
    # File versions and denominators first: hit rows are counted against them as written.
    changed = _write_files(conn, batch, new_parts, rid, fid)
    if new_parts:
        merged = merge_parts(new_parts)
        _write_hits(conn, merged, rid, eid, fid)
        _write_traces(conn, merged, rid, eid, fid, hour_of(received))
    # Rows this batch did not rewrite but whose file version or denominators it changed.
    by_release: dict[int, set[int]] = defaultdict(set)
    for release_id, file_id in changed:
        by_release[release_id].add(file_id)
    for release_id, files in sorted(by_release.items()):
        summary.refresh_stale(conn, release_id, files)
    _write_metrics(conn, batch, rid)
    return {"parts": len(new_parts), "duplicates": len(batch.coverage) - len(new_parts)}


__all__ = ["ingest_batch", "static_payload"]
