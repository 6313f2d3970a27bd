"""The store's versioned schema and the migrations that bring a database up to date on open."""

from __future__ import annotations

from collections.abc import Callable

from . import summary
from .database import Database
from .dialect import Conn
from .errors import SchemaChanged
from .select import NO_SPANS

# Schema versions (one line each, what changed):
# 1: releases, endpoints, paths, per-release file shas, static denominators, seen part keys,
#    hit sets per release / endpoint / hour and file, request trace sets and counters, metrics.
# 2: covered counts on all-time hit sets and digest + totals on denominators (summary.py), so
#    summary queries read counts instead of decoding every hit set.
# 3: releases' first_seen/last_seen are span times only (agent metrics used to move them):
#    last_seen is recomputed from what spans left, releases without spans get select.NO_SPANS.
# 4: agent metrics keep one row per run of a cumulative sum (metric_values, keyed by its start
#    time), so a process that restarts its counters adds to what it counted before; rows of
#    counters stored before (no start time) wait in metrics_legacy for their series' next point
#    (ingest._settle_legacy). traces rows carry the hour their trace was last received, and a
#    retention sweep keeps a swept trace's membership (trace_marks) as long as its parts' keys.
SCHEMA_VERSION = 4

# Times are unix nanoseconds, hours are unix hours (seconds // 3600). First-hit keys are
# "<20-digit span time><trace id>" so that the smallest string is the earliest trace (ties:
# smallest trace id). ``sha_key`` is "<20-digit time><sha>": MAX picks the sha seen last.
# endpoint_id 0 / file_id 0 in request counters mean "all". A part key's ``seen_parts.hour`` is the
# hour the part was received (its span time may be far older), so that retention keeps keys for
# as long as the part could be delivered again; ``traces.received`` is the latest such hour of
# the trace, and ``trace_marks`` keeps which endpoints and files a trace touched after its hour
# buckets were swept, for as long as that, so a later part of the trace is not a new request.
_V1 = [
    """CREATE TABLE releases (
        id {id_pk},
        service TEXT NOT NULL,
        version TEXT NOT NULL,
        environment TEXT NOT NULL,
        role TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        UNIQUE (service, version, environment, role))""",
    """CREATE TABLE endpoints (
        id {id_pk},
        release_id BIGINT NOT NULL,
        endpoint TEXT NOT NULL,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        UNIQUE (release_id, endpoint))""",
    """CREATE TABLE paths (
        id {id_pk},
        path TEXT NOT NULL UNIQUE)""",
    """CREATE TABLE release_files (
        release_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        sha_key {key_text} NOT NULL,
        PRIMARY KEY (release_id, file_id)){without_rowid}""",
    """CREATE TABLE static_files (
        file_id BIGINT NOT NULL,
        sha TEXT NOT NULL,
        payload {key_text} NOT NULL,
        PRIMARY KEY (file_id, sha)){without_rowid}""",
    """CREATE TABLE seen_parts (
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        hour BIGINT NOT NULL,
        PRIMARY KEY (trace_id, span_id)){without_rowid}""",
    "CREATE INDEX seen_parts_hour ON seen_parts (hour)",
    # Hit sets (see hitsets.py): covered lines and arcs with hit counts and first traces.
    """CREATE TABLE hits_rel (
        release_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        lines TEXT NOT NULL,
        arcs TEXT NOT NULL,
        PRIMARY KEY (release_id, file_id)){without_rowid}""",
    """CREATE TABLE hits_ep (
        release_id BIGINT NOT NULL,
        endpoint_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        lines TEXT NOT NULL,
        arcs TEXT NOT NULL,
        PRIMARY KEY (release_id, endpoint_id, file_id)){without_rowid}""",
    """CREATE TABLE hits_hour (
        release_id BIGINT NOT NULL,
        hour BIGINT NOT NULL,
        endpoint_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        lines TEXT NOT NULL,
        arcs TEXT NOT NULL,
        PRIMARY KEY (release_id, hour, endpoint_id, file_id)){without_rowid}""",
    "CREATE INDEX hits_hour_by_hour ON hits_hour (hour)",
    """CREATE TABLE traces (
        release_id BIGINT NOT NULL,
        hour BIGINT NOT NULL,
        endpoint_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        trace_id TEXT NOT NULL,
        PRIMARY KEY (release_id, hour, endpoint_id, file_id, trace_id)){without_rowid}""",
    "CREATE INDEX traces_by_trace ON traces (release_id, trace_id)",
    "CREATE INDEX traces_by_hour ON traces (hour)",
    """CREATE TABLE request_counts (
        release_id BIGINT NOT NULL,
        endpoint_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        PRIMARY KEY (release_id, endpoint_id, file_id)){without_rowid}""",
    """CREATE TABLE metrics (
        release_id BIGINT NOT NULL,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        attributes TEXT NOT NULL,
        value {double} NOT NULL,
        time BIGINT NOT NULL,
        PRIMARY KEY (release_id, instance, name, attributes)){without_rowid}""",
]

_COUNTS = (
    " ADD COLUMN n_lines BIGINT NOT NULL DEFAULT 0",
    " ADD COLUMN n_arcs BIGINT NOT NULL DEFAULT 0",
    " ADD COLUMN lines_covered BIGINT NOT NULL DEFAULT 0",
    " ADD COLUMN arcs_covered BIGINT NOT NULL DEFAULT 0",
    " ADD COLUMN branches_covered BIGINT NOT NULL DEFAULT 0",
    # "-" matches no digest and not "" (no denominators): rows start out stale.
    " ADD COLUMN cov_digest TEXT NOT NULL DEFAULT '-'",
)

_V2: list[str | Callable[[Conn], None]] = [
    *(f"ALTER TABLE {table}{column}" for table in ("hits_rel", "hits_ep") for column in _COUNTS),
    "ALTER TABLE static_files ADD COLUMN digest TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE static_files ADD COLUMN lines_total BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE static_files ADD COLUMN arcs_total BIGINT NOT NULL DEFAULT 0",
    "ALTER TABLE static_files ADD COLUMN branches_total BIGINT NOT NULL DEFAULT 0",
    summary.fill_all,
]


def span_times_only(conn: Conn) -> None:
    """Undo what agent metrics did to ``releases.first_seen``/``last_seen`` (migration 3).

    Every span left its time behind: a coverage part in its endpoint's ``last_seen``, a part's
    or denominators' file in the ``sha_key`` time of ``release_files``. The latest of those is
    the release's latest span time; a release with neither never sent a span. Its
    ``first_seen`` stays as it is (a metric older than every span may have moved it earlier;
    what the first span was is not kept).
    """
    latest: dict[int, int] = {}
    for release_id, last in conn.query(
        "SELECT release_id, MAX(last_seen) FROM endpoints GROUP BY release_id"
    ):
        latest[int(release_id)] = int(last)
    for release_id, key in conn.query(
        "SELECT release_id, MAX(substr(sha_key, 1, 20)) FROM release_files GROUP BY release_id"
    ):
        latest[int(release_id)] = max(latest.get(int(release_id), 0), int(key))
    updates = []
    for release_id, first, last in conn.query("SELECT id, first_seen, last_seen FROM releases"):
        span_last = latest.get(int(release_id))
        if span_last is None:
            updates.append((*NO_SPANS, int(release_id)))
        elif span_last != int(last):
            updates.append((min(int(first), span_last), span_last, int(release_id)))
    conn.execute_many(
        "UPDATE releases SET first_seen = ?, last_seen = ? WHERE id = ?",
        sorted(updates, key=lambda u: u[2]),
    )


_V4: list[str | Callable[[Conn], None]] = [
    # A run of a counter is its start_time (0 for gauges, -1 for a run before version 4 whose
    # start is unknown); kind is model.METRIC_KINDS.
    """CREATE TABLE metric_values (
        release_id BIGINT NOT NULL,
        instance TEXT NOT NULL,
        name TEXT NOT NULL,
        attributes TEXT NOT NULL,
        start_time BIGINT NOT NULL,
        kind TEXT NOT NULL,
        value {double} NOT NULL,
        time BIGINT NOT NULL,
        PRIMARY KEY (release_id, instance, name, attributes, start_time)){without_rowid}""",
    # The agent's only gauge; every other metric it sends is a counter.
    "INSERT INTO metric_values (release_id, instance, name, attributes, start_time, kind, value, "
    "time) SELECT release_id, instance, name, attributes, 0, 'gauge', value, time FROM metrics "
    "WHERE name = 'runcov.sample_rate'",
    "DELETE FROM metrics WHERE name = 'runcov.sample_rate'",
    "ALTER TABLE metrics RENAME TO metrics_legacy",
    "ALTER TABLE traces ADD COLUMN received BIGINT NOT NULL DEFAULT 0",
    # The hour a trace was last received is the latest hour its part keys were filed under.
    "UPDATE traces SET received = COALESCE((SELECT MAX(s.hour) FROM seen_parts s "
    "WHERE s.trace_id = traces.trace_id), traces.hour)",
    """CREATE TABLE trace_marks (
        release_id BIGINT NOT NULL,
        trace_id TEXT NOT NULL,
        endpoint_id BIGINT NOT NULL,
        file_id BIGINT NOT NULL,
        received BIGINT NOT NULL,
        PRIMARY KEY (release_id, trace_id, endpoint_id, file_id)){without_rowid}""",
    "CREATE INDEX trace_marks_received ON trace_marks (received)",
]

# MIGRATIONS[n] takes a database at version n to version n + 1: SQL statements, or functions
# run on the migrating connection.
MIGRATIONS: dict[int, list[str | Callable[[Conn], None]]] = {
    0: list(_V1),
    1: _V2,
    2: [span_times_only],
    3: _V4,
}


def current_version(conn: Conn) -> int:
    """The schema version recorded in the database (0 for an empty database)."""
    rows = conn.query("SELECT version FROM schema_version")
    return int(rows[0][0]) if rows else 0


def check_version(conn: Conn, known: int) -> None:
    """Raise ``SchemaChanged`` unless the database's schema is version ``known``."""
    found = current_version(conn)
    if found != known:
        raise SchemaChanged(found, known)


def migrate(db: Database) -> int:
    """Bring the database to ``SCHEMA_VERSION`` in one transaction; return the version found.

    Safe when several collectors open one database at once: PostgreSQL migrations run under an
    advisory lock, SQLite ones under the database's write lock.
    """
    with db.transaction(write=True) as conn:
        db.lock_for_migration(conn)
        conn.query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the store's schema is version {found}, newer than this collector's "
                f"{SCHEMA_VERSION}; upgrade the collector"
            )
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version]:
                if callable(statement):
                    statement(conn)
                else:
                    conn.query(statement)
        if found == 0:
            conn.query("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif found != SCHEMA_VERSION:
            conn.query("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        return found
